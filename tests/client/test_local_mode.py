"""``unet-segment`` without ``--url``: the model runs in the client's process (``service.api``)
and writes what a real server (``python -m service``) would have sent, byte for byte."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import roifile

from tests.python_api.conftest import BUNDLED_MODEL, nuclei_image, write_nuclei_tiff
from tests.server import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a user has one: 16-bit TIFFs, an 8-bit PNG in a sub-folder, one broken file."""
    folder = tmp_path_factory.mktemp("images")
    write_nuclei_tiff(folder / "a.tif", size=160, grid=4, seed=1)
    write_nuclei_tiff(folder / "b.tif", size=128, grid=3, seed=2)
    image, _ = nuclei_image(size=144, grid=3, seed=4)
    (folder / "plate2").mkdir()
    assert cv2.imwrite(str(folder / "plate2" / "c.png"), (image >> 8).astype("uint8"))
    (folder / "broken.png").write_bytes(b"not a PNG at all")
    return folder


def unet_segment(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_")}
    return subprocess.run(
        [sys.executable, "-m", "service.client", *args, "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["mask", "objects"])
def test_local_mode_writes_the_same_files_as_a_server(
    kind: str, images: Path, service_url: str, tmp_path: Path
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    by_server = unet_segment(str(images), "--out", str(remote), "--url", service_url, "--output", kind)
    in_process = unet_segment(str(images), "--out", str(local), "--output", kind, "--concurrency", "2")
    # The broken file fails in both modes (exit 1), the others are written.
    assert by_server.returncode == in_process.returncode == 1, by_server.stderr + in_process.stderr
    assert "3 written" in by_server.stderr and "3 written" in in_process.stderr, in_process.stderr

    server_files, local_files = outputs(remote), outputs(local)
    suffix = ".png" if kind == "mask" else ".csv"
    expected = {f"a{suffix}", f"b{suffix}", f"plate2/c{suffix}", "failures.jsonl"}
    if kind == "objects":
        expected.add("summary.csv")  # per-image counts and areas, read back from the tables
    assert set(server_files) == set(local_files) == expected
    for name in expected - {"failures.jsonl"}:
        assert local_files[name] == server_files[name], f"{name} differs between local mode and the server"
    if kind == "mask":
        mask = cv2.imread(str(local / "a.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (160, 160) and set(mask.ravel().tolist()) <= {0, 255} and mask.any()

    # The broken file's report: the status and problem the server answered, in both modes.
    failure = json.loads((local / "failures.jsonl").read_text())
    from_server = json.loads((remote / "failures.jsonl").read_text())
    assert failure["file"].endswith("broken.png") and failure["status"] == 400
    assert {k: failure[k] for k in ("file", "status", "type", "title", "detail")} == {
        k: from_server[k] for k in ("file", "status", "type", "title", "detail")
    }
    assert "not a recognised image" in failure["detail"]


def test_local_mode_resumes_without_loading_work_twice(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = unet_segment(str(images / "a.tif"), str(images / "plate2"), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "2 written, 0 skipped" in first.stderr
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = unet_segment(str(images / "a.tif"), str(images / "plate2"), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "0 written, 2 skipped" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == written  # untouched


def test_local_mode_options_reach_the_pipeline(tmp_path: Path) -> None:
    # A two-channel ImageJ TIFF fails without --channel (the choices are in the report) and is
    # segmented with it, in micrometres from the file's calibration.
    tifffile = pytest.importorskip("tifffile")
    np = pytest.importorskip("numpy")
    nuclei, count = nuclei_image(size=128, grid=3, seed=6)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "cells.tif", np.stack([np.zeros_like(nuclei), nuclei]), imagej=True,
                     resolution=(2.0, 2.0), metadata={"axes": "CYX", "unit": "um"})
    without = unet_segment(str(folder), "--out", str(tmp_path / "o1"), "--output", "objects")
    assert without.returncode == 1
    assert "Choose a channel or plane" in without.stderr and "choose one with channel=" in without.stderr
    chosen = unet_segment(str(folder), "--out", str(tmp_path / "o2"), "--output", "objects", "--channel", "1")
    assert chosen.returncode == 0, chosen.stderr
    table = (tmp_path / "o2" / "cells.csv").read_text().splitlines()
    assert "area_um2" in table[0] and len(table) == 1 + count
    measured = unet_segment(str(folder), "--out", str(tmp_path / "o3"), "--output", "objects",
                            "--channel", "1", "--measure", "0")
    assert measured.returncode == 0, measured.stderr
    rows = (tmp_path / "o3" / "cells.csv").read_text().splitlines()
    assert rows[0].endswith(",mean_intensity_c0,integrated_intensity_c0") and len(rows) == 1 + count
    assert all(row.endswith(",0.0,0.0") for row in rows[1:])  # the first channel is all zeros
    ringed = unet_segment(str(folder), "--out", str(tmp_path / "o4"), "--output", "objects",
                          "--channel", "1", "--measure", "0", "--background-ring", "4")
    assert ringed.returncode == 0, ringed.stderr
    rows = (tmp_path / "o4" / "cells.csv").read_text().splitlines()
    assert rows[0].endswith(",background_c0,mean_intensity_corrected_c0,integrated_intensity_corrected_c0")
    assert all(row.endswith(",0.0,0.0,0.0,0.0,0.0") for row in rows[1:])
    # the folder's summary averages the corrected mean too, as every measured mean
    assert "mean_intensity_corrected_c0" in (tmp_path / "o4" / "summary.csv").read_text().splitlines()[0]


def test_local_mode_segments_each_image_of_a_project_as_a_server_does(
    service_url: str, tmp_path: Path
) -> None:
    # --series all on a LAS X project: each image cut out of the file (service.frames.cut_image)
    # and read alone, in this process as by a server; the tables are the same, byte for byte.
    np = pytest.importorskip("numpy")
    from tests.lif_files import Image, lif_bytes

    fields = [nuclei_image(size=128, grid=3, seed=seed)[0] for seed in (7, 8)]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "session.lif").write_bytes(lif_bytes([
        Image("Series001", np.stack([np.zeros_like(fields[0]), fields[0]]), "CYX", ("Green", "Blue"), 0.5),
        Image("Series002", np.stack([np.zeros_like(fields[1]), fields[1]]), "CYX", ("Green", "Blue"), 0.5),
    ]))
    options = ("--series", "all", "--channel", "Blue", "--output", "objects")
    local = unet_segment(str(folder), "--out", str(tmp_path / "local"), *options)
    remote = unet_segment(str(folder), "--out", str(tmp_path / "remote"), "--url", service_url, *options)
    assert local.returncode == remote.returncode == 0, local.stderr + remote.stderr
    local_files, server_files = outputs(tmp_path / "local"), outputs(tmp_path / "remote")
    assert {"session_s0.csv", "session_s1.csv"} <= set(local_files) and local_files == server_files
    assert "area_um2" in local_files["session_s1.csv"].decode().splitlines()[0]


def test_model_option_is_for_local_mode_only(images: Path, tmp_path: Path) -> None:
    both = unet_segment(str(images), "--out", str(tmp_path / "o"), "--url", "http://127.0.0.1:9",
                        "--model", str(BUNDLED_MODEL))
    assert both.returncode == 2 and "--model is for local mode" in both.stderr
    missing = unet_segment(str(images), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "none.onnx"))
    assert missing.returncode == 2 and "cannot load the model" in missing.stderr


def test_diameter_once_segments_the_batch_at_the_scale_estimated_on_its_first_images(
    images: Path, service_url: str, tmp_path: Path
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    by_server = unet_segment(str(images), "--out", str(remote), "--url", service_url, "--diameter", "once")
    in_process = unet_segment(str(images), "--out", str(local), "--diameter", "once")
    assert by_server.returncode == in_process.returncode == 1, by_server.stderr + in_process.stderr
    # The first three images in output order: a.tif and b.tif estimated, broken.png failed; the
    # median of the two estimates is sent with plate2/c.png.
    said = [re.search(r"nucleus diameter ([\d.]+) px for the batch, estimated on 2 image", p.stderr)
            for p in (by_server, in_process)]
    assert said[0] and said[1], by_server.stderr + in_process.stderr
    assert said[0].group(1) == said[1].group(1)
    diameter = float(said[0].group(1))
    assert "(estimated on a.tif, b.tif)" in by_server.stderr
    # c.png was segmented at that diameter: what `--diameter PX` gives it, in both modes.
    fixed_out = tmp_path / "fixed"
    again = unet_segment(str(images / "plate2"), "--out", str(fixed_out), "--diameter", str(diameter))
    assert again.returncode == 0, again.stderr
    fixed = (fixed_out / "c.png").read_bytes()
    assert (remote / "plate2" / "c.png").read_bytes() == fixed == (local / "plate2" / "c.png").read_bytes()
    for name in ("a.png", "b.png"):  # estimated on their own, as without the option
        assert (remote / name).read_bytes() == (local / name).read_bytes()


def test_every_time_point_of_a_movie_is_segmented_as_that_frame_alone(
    service_url: str, tmp_path: Path
) -> None:
    import numpy as np
    import tifffile

    frames = [nuclei_image(size=128, grid=3, seed=20 + k)[0] for k in range(3)]
    movie = tmp_path / "in" / "movie.tif"
    movie.parent.mkdir()
    tifffile.imwrite(movie, np.stack(frames), imagej=True, metadata={"axes": "TYX"})
    alone = tmp_path / "alone"
    alone.mkdir()
    for k, frame in enumerate(frames):
        tifffile.imwrite(alone / f"movie_t{k}.tif", frame)

    remote, local, expected = tmp_path / "remote", tmp_path / "local", tmp_path / "expected"
    by_server = unet_segment(str(movie.parent), "--out", str(remote), "--url", service_url, "--t", "all")
    in_process = unet_segment(str(movie.parent), "--out", str(local), "--t", "all")
    frame_by_frame = unet_segment(str(alone), "--out", str(expected))
    assert by_server.returncode == in_process.returncode == frame_by_frame.returncode == 0, (
        by_server.stderr + in_process.stderr + frame_by_frame.stderr
    )
    names = {f"movie_t{k}.png" for k in range(3)}
    assert set(outputs(remote)) - {"failures.jsonl"} == names
    assert outputs(remote) == outputs(local)
    for name in names:
        assert outputs(local)[name] == outputs(expected)[name], name
    assert outputs(local)["movie_t0.png"] != outputs(local)["movie_t1.png"]  # each frame its own
    # Each frame is sent as that frame alone (service.frames), yet its ImageJ ROIs are placed at
    # its own time point in the movie, as when the whole movie is sent with t=.
    rois = tmp_path / "rois"
    assert unet_segment(str(movie.parent), "--out", str(rois), "--url", service_url, "--t", "all",
                        "--output", "rois").returncode == 0
    for k in range(3):
        placed = {roi.t_position for roi in roifile.roiread(rois / f"movie_t{k}.zip")}
        assert placed == {k + 1}, (k, placed)  # ImageJ counts frames from 1
