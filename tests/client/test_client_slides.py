"""``unet-segment --output ome-zarr``: slides through ``POST /jobs?output=ome-zarr`` on a real
server (uploaded, or by path under ``--data-root``) and in local mode, on real tiled OME-TIFFs.
Each run leaves ``NAME.ome.zarr/`` and ``NAME.objects.csv``, the same bytes in both modes; a rerun
skips them; a download cut short or damaged leaves nothing a rerun would take for a result."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service import client
from service.settings import DEFAULT_MODEL_PATH
from tests.api._images import write_slow_model
from tests.client.conftest import Reply, Request, png_bytes
from tests.client.test_client_jobs import POLL_LIMIT_S, counts, ctrl_c_reaches_python, job_folders
from tests.models import write_conv_model
from tests.server import REPO, Server
from tests.unit.test_segment import synthetic_nuclei

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not here"),
]

#: The service's settings in both modes (tests.server's defaults, spelled out for local mode).
SETTINGS = {"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_PROVIDERS": "cpu", "UNET_INTRA_OP_THREADS": "1"}
SLIDE = "a/s1.ome.tif"


def write_slide(path: Path, image: np.ndarray) -> None:
    """A tiled (256²), compressed OME-TIFF with its pixel size, as scanners export them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib", photometric="minisblack",
                     metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65}, ome=True)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def unet_segment(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The client as a user runs it, with the service's settings in its environment (local mode)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNET_")}, **SETTINGS}
    return subprocess.run([sys.executable, "-m", "service.client", *map(str, args), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    return synthetic_nuclei(1200, 1500, seed=16)


@pytest.fixture(scope="module")
def slides(slide_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared volume's folder: one slide in a sub-folder, a corrupt TIFF and a PNG (no slide)."""
    root = tmp_path_factory.mktemp("volume") / "slides"
    write_slide(root / SLIDE, slide_image)
    (root / "broken.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then garbage
    (root / "flat.png").write_bytes(png_bytes(64, 64, 128))
    return root


@pytest.fixture(scope="module")
def server(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("slide-service")
    service = Server({**SETTINGS, "UNET_DATA_ROOT": str(slides)}, logs / "service.log")
    try:
        yield service.wait_ready(180)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def by_server(server: Server, slides: Path, tmp_path_factory: pytest.TempPathFactory,
              ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("by-server")
    return out, unet_segment(slides, "--out", out, "--url", server.url, "--output", "ome-zarr", "--geojson")


@pytest.fixture(scope="module")
def locally(slides: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("locally")
    return out, unet_segment(slides, "--out", out, "--output", "ome-zarr", "--geojson")


def test_server_mode_writes_a_store_ome_zarr_reads_with_the_labels_local_mode_writes(
    server: Server, by_server, locally
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    remote, run = by_server
    local, local_run = locally
    # The slide is written, the two files that are no slide fail: exit 1 in both modes.
    assert run.returncode == local_run.returncode == 1, run.stderr + local_run.stderr
    assert "1 written, 0 skipped (already there), 2 failed" in run.stderr, run.stderr
    assert "1 written, 0 skipped (already there), 2 failed" in local_run.stderr, local_run.stderr

    store, table = remote / "a" / "s1.ome.zarr", remote / "a" / "s1.objects.csv"
    nodes = list(Reader(parse_url(str(store)))())
    assert nodes[0].data[0].shape == (1200, 1500) and len(nodes[0].data) > 1  # a pyramid
    (labels_node,) = [n for n in Reader(parse_url(str(store / "labels" / "nuclei")))()
                      if n.load(Label) and "/labels/nuclei" in str(n.zarr)]
    labels = np.asarray(labels_node.data[0])
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert labels.dtype == np.uint32 and len(rows) > 300
    assert {int(r["id"]) for r in rows} == set(np.unique(labels).tolist()) - {0}
    assert "area_um2" in rows[0]  # the file's calibration reached the table

    # Local mode: the same labels, and indeed the same bytes in every file (zarr chunks, metadata, table).
    import zarr

    local_labels = zarr.open(str(local / "a" / "s1.ome.zarr" / "labels" / "nuclei"), mode="r")["0"][:]
    np.testing.assert_array_equal(local_labels, labels)
    remote_files, local_files = files_under(remote), files_under(local)
    assert set(remote_files) == set(local_files)
    for name in set(remote_files) - {"failures.jsonl"}:
        assert remote_files[name] == local_files[name], f"{name} differs between the modes"

    # --geojson: the outlines beside the store, one feature per row of the table, byte-identical in
    # both modes (compared with every other file above; named here so that its absence fails).
    outlines = remote / "a" / "s1.objects.geojson"
    assert outlines.read_bytes() == (local / "a" / "s1.objects.geojson").read_bytes()
    features = json.loads(outlines.read_text())["features"]
    assert len(features) == len(rows) and {int(f["id"]) for f in features} == {int(r["id"]) for r in rows}

    # The folder summary counts the table's objects; no staging folder is left behind.
    (summary,) = csv.DictReader(io.StringIO((remote / "summary.csv").read_text()))
    assert summary["output"] == "a/s1.ome.zarr" and int(summary["count"]) == len(rows)
    assert not list(remote.rglob("*.part")), "a staging folder was left behind"

    # Each bad file is one line of the report, with the status the server gave, alike in both modes.
    def report(folder: Path) -> dict[str, tuple[int, str]]:
        lines = [json.loads(line) for line in (folder / "failures.jsonl").read_text().splitlines()]
        return {Path(r["file"]).name: (r["status"], r["type"]) for r in lines}

    assert report(remote) == report(local) == {
        "broken.tif": (400, "/problems/undecodable-image"),
        "flat.png": (415, "/problems/unsupported-image-type"),
    }
    assert job_folders(server) == [], "every job was deleted once its files were here"


def test_a_rerun_skips_a_finished_store_and_overwrite_redoes_it(
    server: Server, slides: Path, by_server, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(by_server[0] / "a", out)  # an earlier run's results for slides/a
    store = out / "s1.ome.zarr"
    before, written = counts(server), files_under(out)
    again = unet_segment(slides / "a", "--out", out, "--url", server.url, "--output", "ome-zarr")
    assert again.returncode == 0 and "0 written, 1 skipped" in again.stderr, again.stderr
    assert counts(server) == before, "nothing was sent"

    outlines = out / "s1.objects.geojson"
    with_outlines = unet_segment(slides / "a", "--out", out, "--url", server.url, "--output", "ome-zarr",
                                 "--geojson")
    assert with_outlines.returncode == 0 and "0 written, 1 skipped" in with_outlines.stderr
    assert counts(server) == before, "store, table and outlines are there: nothing was sent"

    # Redone without --geojson: the earlier outlines would describe the old store, so they go.
    zattrs = (store / ".zattrs").stat().st_ino
    redo = unet_segment(slides / "a", "--out", out, "--url", server.url, "--output", "ome-zarr",
                        "--overwrite")
    assert redo.returncode == 0 and "1 written, 0 skipped" in redo.stderr, redo.stderr
    after = counts(server)
    assert after[1] - before[1] == 1 and after[2] - before[2] == 1, "one job, deleted"
    assert (store / ".zattrs").stat().st_ino != zattrs, "the store was replaced"
    written.pop(outlines.name)
    assert files_under(out) == written | {"summary.csv": (out / "summary.csv").read_bytes()}
    assert sorted(p.name for p in out.iterdir()) == ["s1.objects.csv", "s1.ome.zarr", "summary.csv"]

    # A store without outlines is not done for a run that asks for them: it is redone, not skipped.
    resumed = unet_segment(slides / "a", "--out", out, "--url", server.url, "--output", "ome-zarr",
                           "--geojson")
    assert resumed.returncode == 0 and "1 written, 0 skipped" in resumed.stderr, resumed.stderr
    assert outlines.read_bytes() == (by_server[0] / "a" / outlines.name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [
        "s1.objects.csv", "s1.objects.geojson", "s1.ome.zarr", "summary.csv"]


def test_data_root_sends_paths_and_refuses_a_file_outside_it_before_any_request(
    server: Server, slides: Path, by_server, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    by_path = unet_segment(slides / "a", "--out", out, "--url", server.url, "--output", "ome-zarr",
                           "--data-root", slides)
    assert by_path.returncode == 0, by_path.stderr
    uploaded, _ = by_server
    assert files_under(out / "s1.ome.zarr") == files_under(uploaded / "a" / "s1.ome.zarr")

    outside = tmp_path / "elsewhere" / "s2.ome.tif"
    outside.parent.mkdir()
    outside.write_bytes((slides / SLIDE).read_bytes())
    before = counts(server)
    refused = unet_segment(slides / "a", outside, "--out", tmp_path / "o2", "--url", server.url,
                           "--output", "ome-zarr", "--data-root", slides)
    assert refused.returncode == client.EXIT_USAGE
    assert f"{outside} is not under --data-root" in refused.stderr, refused.stderr
    assert counts(server) == before and not (tmp_path / "o2").exists()


def test_an_ome_zarr_store_is_a_slide_locally_and_by_path_on_a_server_but_is_never_uploaded(
    by_server, locally, slide_image: np.ndarray, slides: Path, server: Server, tmp_path: Path
) -> None:
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    # Under the server's data root (by_server and locally, which read the whole root, are done).
    folder = slides / "stores"
    store = folder / "b" / "s1.ome.zarr"  # NGFF 0.4, as bioformats2raw writes; chunks 256²
    write_image(slide_image, zarr.open_group(store, mode="w", zarr_format=2), fmt=FormatV04(),
                scale_factors=(), axes="yx", storage_options={"chunks": (256, 256)})
    out = tmp_path / "out"
    run = unet_segment(folder, "--out", out, "--output", "ome-zarr")
    assert run.returncode == 0 and "1 written" in run.stderr, run.stderr
    layout = [f"b/s1.ome.zarr/{name}" for name in files_under(locally[0] / "a" / "s1.ome.zarr")]
    assert sorted(files_under(out)) == sorted(["summary.csv", "b/s1.objects.csv", *layout]), \
        "the store was one input (its own files not searched for images), written in the same layout"
    from_tiff = zarr.open(str(locally[0] / "a" / "s1.ome.zarr" / "labels" / "nuclei"), mode="r")["0"][:]
    from_zarr = zarr.open(str(out / "b" / "s1.ome.zarr" / "labels" / "nuclei"), mode="r")["0"][:]
    np.testing.assert_array_equal(from_zarr, from_tiff)  # the same pixels, the same objects

    # Server mode with --data-root: the store's path is sent ({"path": "stores/b/s1.ome.zarr"}) and
    # the server reads it where it is; the same files as local mode's.
    before = counts(server)
    by_path = unet_segment(folder, "--out", tmp_path / "by-path", "--url", server.url, "--output", "ome-zarr",
                           "--data-root", slides)
    assert by_path.returncode == 0 and "1 written" in by_path.stderr, by_path.stderr
    assert counts(server)[1] - before[1] == 1, "one job"
    assert files_under(tmp_path / "by-path" / "b") == files_under(out / "b")

    # Without --data-root a store could only be uploaded, and an upload is one file: refused up front.
    before = counts(server)
    refused = unet_segment(folder, "--out", tmp_path / "o2", "--url", server.url, "--output", "ome-zarr")
    assert refused.returncode == client.EXIT_USAGE and "cannot be uploaded" in refused.stderr, refused.stderr
    assert "--data-root" in refused.stderr
    assert counts(server) == before


def test_ctrl_c_in_local_mode_stops_the_slide_and_leaves_no_store(tmp_path: Path) -> None:
    slow = write_slow_model(tmp_path / "slow.onnx")  # seconds per tile: the slide is caught mid-way
    write_slide(tmp_path / "in" / "s.ome.tif", synthetic_nuclei(600, 700, seed=5))
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNET_")}, **SETTINGS}
    args = [tmp_path / "in", "--out", out, "--output", "ome-zarr", "--model", slow, "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "service.client", *map(str, args)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_python)
    try:
        deadline = time.monotonic() + POLL_LIMIT_S
        while not list(out.glob(".s.ome.zarr.*.part")):  # the slide is being segmented
            assert proc.poll() is None and time.monotonic() < deadline, "the slide never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=POLL_LIMIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == client.EXIT_INTERRUPTED, stderr
    assert "interrupted" in stderr
    assert sorted(p.name for p in out.iterdir()) == [], "no store, no table, no staging folder"


# --- a scripted server: downloads that break ----------------------------------------------------------


def slide_job_server(archive: bytes, summary: dict) -> tuple[list[Reply], Callable[[Request], Reply]]:
    """A stand-in's behaviour for one slide job: accepted, succeeded, its result and files.zip
    (``files[0]`` is what each GET of it answers; a test swaps it)."""
    files = [Reply(200, {"Content-Type": "application/zip"}, archive)]

    def behaviour(request: Request) -> Reply:
        if request.method == "POST" and request.path == "/jobs":
            return Reply(202, {"Location": "/jobs/j1", "Content-Type": "application/json"}, b'{"id": "j1"}')
        if request.method == "DELETE":
            return Reply(204)
        if request.path == "/jobs/j1":
            status = {"id": "j1", "status": "succeeded", "tiles_done": 4, "tiles_total": 4}
            return Reply(200, {"Content-Type": "application/json"}, json.dumps(status).encode())
        if request.path == "/jobs/j1/result":
            return Reply(200, {"Content-Type": "application/json"}, json.dumps(summary).encode())
        if request.path == "/jobs/j1/files.zip":
            return files[0]
        return Reply(404)

    return files, behaviour


def zip_of(folder: Path, names: tuple[str, str]) -> bytes:
    """A slide job's files.zip, made from a real job's files (``names``: store, table)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        store, table = names
        for path in sorted((folder / store).rglob("*")):
            if path.is_file():
                archive.write(path, f"result.ome.zarr/{path.relative_to(folder / store).as_posix()}")
        archive.write(folder / table, "objects.csv")
    return buffer.getvalue()


def test_a_download_cut_short_or_damaged_leaves_no_store_and_a_rerun_redoes_it(
    standin, slides: Path, locally, tmp_path: Path
) -> None:
    source, _ = locally
    archive = zip_of(source / "a", ("s1.ome.zarr", "s1.objects.csv"))
    summary = {"width": 1500, "height": 1200, "objects": 7, "store_url": "/jobs/j1/files/result.ome.zarr",
               "objects_url": "/jobs/j1/files/objects.csv", "zip_url": "/jobs/j1/files.zip"}
    files, behaviour = slide_job_server(archive, summary)
    server = standin("slides")
    server.behaviour = behaviour
    out = tmp_path / "out"

    def run(*extra: str) -> int:
        return client.main([str(slides / "a"), "--out", str(out), "--url", server.url, "--output", "ome-zarr",
                            "--no-progress", "--retries", "1", "--data-root", str(slides), *extra])

    # Cut short (the connection drops halfway), on both tries: a failure, and no store.
    files[0] = Reply(200, {"Content-Type": "application/zip"}, archive, truncate_to=len(archive) // 2)
    assert run() == client.EXIT_FAILED
    assert sorted(files_under(out)) == ["failures.jsonl", "summary.csv"]  # no table, no store, no staging
    assert len((out / "summary.csv").read_text().splitlines()) == 1  # the header: no slide done
    (record,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert "GET /jobs/j1/files.zip" in record["error"], record
    downloads = [r for r in server.requests if r.path == "/jobs/j1/files.zip"]
    assert len(downloads) == 2, "a broken download is tried again, whole"
    assert [r.method for r in server.requests].count("DELETE") == 1, "the job is deleted even so"
    posted = server.requests[0]
    assert json.loads(posted.body) == {"path": "a/s1.ome.tif"} and posted.query["output"] == ["ome-zarr"]

    # Damaged in transit (one byte of a chunk flipped): the member's CRC-32 catches it.
    middle = archive.index(b"result.ome.zarr/0/0.0") + 200
    files[0] = Reply(200, {"Content-Type": "application/zip"},
                     archive[:middle] + bytes([archive[middle] ^ 0xFF]) + archive[middle + 1:])
    assert run() == client.EXIT_FAILED
    assert "CRC" in (out / "failures.jsonl").read_text() and not list(out.rglob("*.zarr"))

    # Whole: the rerun does the slide (nothing was taken for a result) and writes the job's files.
    files[0] = Reply(200, {"Content-Type": "application/zip"}, archive)
    assert run() == client.EXIT_OK
    assert files_under(out / "s1.ome.zarr") == files_under(source / "a" / "s1.ome.zarr")
    assert (out / "s1.objects.csv").read_bytes() == (source / "a" / "s1.objects.csv").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["s1.objects.csv", "s1.ome.zarr", "summary.csv"]


def test_an_archive_member_outside_the_result_is_refused(standin, slides: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("objects.csv", "id,area\n")
        archive.writestr("result.ome.zarr/../../escaped.txt", "x")
    summary = {"width": 10, "height": 10, "objects": 0, "store_url": "/jobs/j1/files/result.ome.zarr",
               "objects_url": "/jobs/j1/files/objects.csv", "zip_url": "/jobs/j1/files.zip"}
    server = standin("hostile")
    server.behaviour = slide_job_server(buffer.getvalue(), summary)[1]
    out = tmp_path / "out"
    code = client.main([str(slides / SLIDE), "--out", str(out), "--url", server.url, "--output", "ome-zarr",
                        "--no-progress", "--retries", "0"])
    assert code == client.EXIT_FAILED
    assert "not a file of its result" in (out / "failures.jsonl").read_text()
    assert not list(tmp_path.rglob("escaped.txt")) and not list(out.rglob("*.zarr"))


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "store"), [
    ("x.ome.tif", "x.ome.zarr"), ("x.OME.TIFF", "x.ome.zarr"), ("x.tif", "x.ome.zarr"),
    ("x.y.tif", "x.y.ome.zarr"),
])
def test_a_slide_is_written_to_its_name_with_ome_zarr(name: str, store: str, tmp_path: Path) -> None:
    kind = client.OUTPUT_KINDS["ome-zarr"]
    (job,) = client.plan_jobs([(tmp_path / name, Path("sub") / name)], tmp_path / "out", kind)
    assert job.target == tmp_path / "out" / "sub" / store
    assert kind.table(job.target) == tmp_path / "out" / "sub" / store.replace(".ome.zarr", ".objects.csv")


def test_two_slides_that_would_share_a_store_are_a_usage_error(tmp_path: Path) -> None:
    kind = client.OUTPUT_KINDS["ome-zarr"]
    with pytest.raises(client.UsageError, match="would both be written"):
        client.plan_jobs([(tmp_path / "s.tif", Path("s.tif")), (tmp_path / "s.ome.tif", Path("s.ome.tif"))],
                         tmp_path / "out", kind)


@pytest.mark.parametrize("args", [
    ["--output", "ome-zarr"],  # local mode reads the files where they are
    ["--output", "labels", "--url", "http://h"],  # slide jobs only
])
def test_data_root_is_for_slide_jobs_on_a_server(args: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        client.parse_config(["x.tif", "--out", str(tmp_path), "--data-root", str(tmp_path), *args])
    assert exc.value.code == client.EXIT_USAGE
    config = client.parse_config(["x.tif", "--out", str(tmp_path), "--data-root", str(tmp_path),
                                  "--output", "ome-zarr", "--url", "http://h"])
    assert config.data_root == tmp_path


def test_local_mode_refuses_an_option_the_model_lacks_before_any_slide(slides: Path, tmp_path: Path) -> None:
    conv = write_conv_model(tmp_path / "conv.onnx")  # no nucleus-centre output: split=center is a 422
    out = tmp_path / "out"
    run = unet_segment(slides / "a", "--out", out, "--output", "ome-zarr", "--model", conv,
                       "--split", "center")
    assert run.returncode == client.EXIT_USAGE and "needs a model with a nucleus-centre output" in run.stderr
    assert not out.exists()


def test_expand_gives_a_slides_cells_in_local_mode(slide_image: np.ndarray, tmp_path: Path) -> None:
    """--expand with --output ome-zarr (refused before this option reached slides): the store gains
    labels/cells, the table the cell columns, the GeoJSON QuPath cells."""
    write_slide(tmp_path / "in" / "s.ome.tif", slide_image[:500, :600])
    run = unet_segment(tmp_path / "in", "--out", tmp_path / "out", "--output", "ome-zarr", "--geojson",
                       "--expand", "5", "--diameter", "20")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "s.objects.csv").read_text())))
    assert len(rows) > 20 and all(int(r["cell_area"]) >= int(r["area"]) for r in rows)
    assert sum(int(r["cytoplasm_area"]) for r in rows) > 0
    assert (tmp_path / "out" / "s.ome.zarr" / "labels" / "cells" / "0").is_dir()
    features = json.loads((tmp_path / "out" / "s.objects.geojson").read_text())["features"]
    assert len(features) == len(rows) and features[0]["properties"]["objectType"] == "cell"


def test_background_ring_reaches_a_slide_in_local_mode(slide_image: np.ndarray, tmp_path: Path) -> None:
    """--measure with --background-ring and --output ome-zarr: the slide's table gains each measured
    channel's background around each nucleus and its intensities less it."""
    write_slide(tmp_path / "in" / "s.ome.tif", slide_image[:500, :600])
    run = unet_segment(tmp_path / "in", "--out", tmp_path / "out", "--output", "ome-zarr", "--measure", "0",
                       "--background-ring", "5", "--diameter", "20")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "s.objects.csv").read_text())))
    assert len(rows) > 20 and list(rows[0])[-3:] == [
        "background_c0", "mean_intensity_corrected_c0", "integrated_intensity_corrected_c0"]
    ringed = [r for r in rows if r["background_c0"]]
    assert len(ringed) > 20
    for row in ringed:
        corrected = float(row["mean_intensity_c0"]) - float(row["background_c0"])
        assert float(row["mean_intensity_corrected_c0"]) == pytest.approx(corrected, abs=1e-3)
        assert corrected > 0  # nuclei brighter than their surroundings
