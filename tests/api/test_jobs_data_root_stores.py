"""``POST /jobs?output=ome-zarr`` with ``{"path": "scans/a.ome.zarr"}``: OME-Zarr folders under
``UNET_DATA_ROOT`` as slides, on real servers with real stores (written by ``ome-zarr``) in a
temporary root. A store is read chunk file by chunk file, so every entry of it is held to the
root's rules: a chunk symlinked out of the root, a FIFO among the chunks, a store swapped after
submission — none is read."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service.settings import DEFAULT_MODEL_PATH
from tests.api import _images as im
from tests.api.test_jobs import BIG, finished, running_with_tiles, submit, wait_until
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

CHUNK = 128
#: A chunk of level 0 (ome-zarr names it s0) of a 2-D store (NGFF 0.4, Zarr v2: "/"-separated keys).
A_CHUNK = "s0/0/0"


def write_store(path: Path, image: np.ndarray) -> None:
    """An NGFF 0.4 OME-Zarr (Zarr v2, as bioformats2raw writes), 128² chunks, a two-level pyramid."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    write_image(image, zarr.open_group(path, mode="w", zarr_format=2), fmt=FormatV04(),
                scale_factors=(2,), axes="yx", storage_options={"chunks": (CHUNK, CHUNK)})


def write_tiff(path: Path, image: np.ndarray) -> None:
    tifffile.imwrite(path, image, tile=(CHUNK, CHUNK), compression="zlib", photometric="minisblack")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(300, 420, seed=7)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> dict[str, Path]:
    """``root/`` (the data root) beside ``outside/``; stores in ``root/scans`` good and bad."""
    top = tmp_path_factory.mktemp("volume")
    root, outside, scans = top / "root", top / "outside", top / "root" / "scans"
    scans.mkdir(parents=True)
    outside.mkdir()
    write_store(scans / "a.ome.zarr", image)
    write_tiff(scans / "a.tif", image)
    assert (scans / "a.ome.zarr" / A_CHUNK).is_file()

    # Symlinks inside a store to files inside the root: followed, like the path's own.
    shutil.copytree(scans / "a.ome.zarr", scans / "linked.ome.zarr")
    os.unlink(scans / "linked.ome.zarr" / A_CHUNK)
    os.symlink(scans / "a.ome.zarr" / A_CHUNK, scans / "linked.ome.zarr" / A_CHUNK)

    # A chunk symlinked to a file outside the root (the same bytes: a refusal is not "undecodable").
    write_store(outside / "secret.ome.zarr", image)
    shutil.copytree(scans / "a.ome.zarr", scans / "leaky.ome.zarr")
    os.unlink(scans / "leaky.ome.zarr" / A_CHUNK)
    os.symlink(outside / "secret.ome.zarr" / A_CHUNK, scans / "leaky.ome.zarr" / A_CHUNK)
    # The store's metadata linked out (what the "is it a store?" look reads first).
    shutil.copytree(scans / "a.ome.zarr", scans / "marker.ome.zarr")
    os.unlink(scans / "marker.ome.zarr" / ".zattrs")
    os.symlink(outside / "secret.ome.zarr" / ".zattrs", scans / "marker.ome.zarr" / ".zattrs")
    # A whole level linked out, and the whole store.
    shutil.copytree(scans / "a.ome.zarr", scans / "level.ome.zarr")
    shutil.rmtree(scans / "level.ome.zarr" / "s0")
    os.symlink(outside / "secret.ome.zarr" / "s0", scans / "level.ome.zarr" / "s0", target_is_directory=True)
    os.symlink(outside / "secret.ome.zarr", root / "escape.ome.zarr", target_is_directory=True)

    # A FIFO for a chunk (opening it would block the reader), and a dangling chunk link.
    shutil.copytree(scans / "a.ome.zarr", scans / "fifo.ome.zarr")
    os.unlink(scans / "fifo.ome.zarr" / A_CHUNK)
    os.mkfifo(scans / "fifo.ome.zarr" / A_CHUNK)
    shutil.copytree(scans / "a.ome.zarr", scans / "dangling.ome.zarr")
    os.unlink(scans / "dangling.ome.zarr" / A_CHUNK)
    os.symlink(scans / "nowhere", scans / "dangling.ome.zarr" / A_CHUNK)

    # Folders that are no store.
    (scans / "plain").mkdir()
    (scans / "plain" / "cells.png").write_bytes(im.png(im.blobs(64, 64, seed=3)))
    (scans / "empty.zarr").mkdir()
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store-jobs")


@pytest.fixture(scope="module")
def server(start_server, conv_model: Path, layout: dict[str, Path], jobs_dir: Path) -> Server:
    return start_server({
        "UNET_MODEL_PATH": str(conv_model),
        "UNET_DATA_ROOT": str(layout["root"]),
        "UNET_JOBS_DIR": str(jobs_dir),
    }).wait_ready()


@pytest.fixture(scope="module")
def model_server(start_server, layout: dict[str, Path], jobs_dir: Path) -> Server:
    """The bundled model (hundreds of real nuclei rather than the test model's few blobs)."""
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("the bundled model is not here")
    return start_server({
        "UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH),
        "UNET_DATA_ROOT": str(layout["root"]),
        "UNET_JOBS_DIR": str(jobs_dir),
    }).wait_ready()


def slide_job(server: Server, path: str, **options: object):
    return server.client.post("/jobs", json={"path": path, "output": "ome-zarr", **options})


def job_labels(server: Server, job_id: str, tmp_path: Path) -> tuple[np.ndarray, str]:
    """The job's labels (level 0) and objects table, from its files.zip."""
    import zarr

    folder = tmp_path / job_id
    zipfile.ZipFile(io.BytesIO(server.client.get(f"/jobs/{job_id}/files.zip").content)).extractall(folder)
    labels = zarr.open_array(folder / "result.ome.zarr" / "labels" / "nuclei" / "0", mode="r")[:]
    return labels, (folder / "objects.csv").read_text()


def test_an_ome_zarr_folder_under_the_root_is_segmented_like_the_same_pixels_in_a_tiff(
    model_server: Server, image: np.ndarray, tmp_path: Path
) -> None:
    server = model_server
    client = server.client
    results = {}
    for path in ("scans/a.ome.zarr", "scans/a.tif", "scans/linked.ome.zarr"):
        r = slide_job(server, path)
        assert r.status_code == 202, (path, r.text)
        assert r.json()["options"]["path"] == path
        status = wait_until(client, r.json()["id"], finished)
        assert status["status"] == "succeeded", status
        summary = client.get(status["result_url"]).json()
        assert (summary["height"], summary["width"]) == image.shape
        results[path] = (summary["objects"], *job_labels(server, r.json()["id"], tmp_path))
    objects, labels, table = results["scans/a.ome.zarr"]
    assert objects > 20 and labels.max() == objects and table.count("\n") == objects + 1
    for other in ("scans/a.tif", "scans/linked.ome.zarr"):  # the same pixels: the same objects
        assert results[other][0] == objects
        np.testing.assert_array_equal(results[other][1], labels)
        assert results[other][2] == table


def test_folders_are_read_only_as_zarr_stores_and_only_by_slide_jobs(server: Server, jobs_dir: Path) -> None:
    before = sorted(jobs_dir.iterdir())
    for output in ("labels", "objects"):  # one image in memory: a file only, as before
        r = server.client.post("/jobs", json={"path": "scans/a.ome.zarr", "output": output})
        assert r.status_code == 400 and r.json()["type"] == "/problems/not-a-file", r.text
    for path in ("scans/plain", "scans/empty.zarr", "scans"):
        r = slide_job(server, path)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["type"] == "/problems/not-a-zarr-store"
        assert path in r.json()["detail"] and "zarr.json" in r.json()["detail"]
    page = server.client.get("/problems/not-a-zarr-store")
    assert page.status_code == 200 and "Not a Zarr store" in page.text
    assert sorted(jobs_dir.iterdir()) == before  # no job folder was made


@pytest.mark.parametrize(("path", "status", "slug", "named"), [
    ("scans/leaky.ome.zarr", 403, "path-outside-data-root", f"scans/leaky.ome.zarr/{A_CHUNK}"),
    ("scans/marker.ome.zarr", 403, "path-outside-data-root", "scans/marker.ome.zarr/.zattrs"),
    ("scans/level.ome.zarr", 403, "path-outside-data-root", "scans/level.ome.zarr/s0"),
    ("escape.ome.zarr", 403, "path-outside-data-root", "escape.ome.zarr"),
    ("../outside/secret.ome.zarr", 403, "path-outside-data-root", "../outside/secret.ome.zarr"),
    ("scans/fifo.ome.zarr", 400, "not-a-file", f"scans/fifo.ome.zarr/{A_CHUNK}"),
    ("scans/dangling.ome.zarr", 404, "data-file-not-found", f"scans/dangling.ome.zarr/{A_CHUNK}"),
])
def test_a_store_with_an_entry_leading_outside_the_root_or_no_regular_file_is_refused(
    server: Server, layout: dict[str, Path], jobs_dir: Path, path: str, status: int, slug: str, named: str
) -> None:
    before = sorted(jobs_dir.iterdir())
    r = slide_job(server, path)
    assert r.status_code == status, r.text
    assert r.json()["type"] == f"/problems/{slug}"
    assert r.json()["detail"].startswith(named + ":"), r.json()["detail"]
    assert str(layout["outside"]) not in r.text and str(layout["root"]) not in r.text
    assert sorted(jobs_dir.iterdir()) == before


@pytest.mark.parametrize("swap", ["replaced", "chunk-symlinked-out"])
def test_a_store_changed_after_submission_is_not_read(
    start_server, slow_model: Path, tmp_path: Path, image: np.ndarray, swap: str
) -> None:
    """One worker busy with a long upload job; the store job waits in the queue while its store
    changes; when it starts, it fails with the problem instead of reading what is there now."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_store(root / "a.ome.zarr", image)
    write_store(outside / "secret.ome.zarr", image)
    server = start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_DATA_ROOT": str(root),
                           "UNET_MAX_BATCH_SIZE": "1", "UNET_JOBS_DIR": str(tmp_path / "jobs")}).wait_ready()
    client = server.client
    busy = submit(client, BIG)
    wait_until(client, busy, running_with_tiles)
    r = slide_job(server, "a.ome.zarr")
    assert r.status_code == 202, r.text
    queued = r.json()["id"]
    if swap == "replaced":  # another store (a new folder inode) at the same name
        write_store(root / "b.ome.zarr", image)
        os.rename(root / "a.ome.zarr", root / "old.ome.zarr")
        os.rename(root / "b.ome.zarr", root / "a.ome.zarr")
        expected = (409, "data-file-changed")
    else:  # the same folder, one chunk now a link out of the root
        os.unlink(root / "a.ome.zarr" / A_CHUNK)
        os.symlink(outside / "secret.ome.zarr" / A_CHUNK, root / "a.ome.zarr" / A_CHUNK)
        expected = (403, "path-outside-data-root")
    assert client.delete(f"/jobs/{busy}").status_code == 200
    status = wait_until(client, queued, finished)
    assert status["status"] == "failed", status
    problem = status["problem"]
    assert (problem["status"], problem["type"]) == (expected[0], f"/problems/{expected[1]}")
    assert status["tiles_done"] == 0
