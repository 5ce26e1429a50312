"""``POST /jobs`` with ``{"path": ...}``: jobs on files under ``UNET_DATA_ROOT`` (a cluster volume),
on real servers with real files in a temporary root. Nothing outside the root is ever read:
``..``, absolute paths and symlinks that lead out are refused before the file is looked at."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.api import _images as im
from tests.api.test_jobs import BIG, finished, running_with_tiles, submit, wait_until
from tests.ome_sets import write_channel_set
from tests.server import Server

SMALL = im.png(im.blobs(96, 128, seed=11))
MAX_UPLOAD_BYTES = 200_000
MAX_PIXELS = 300_000


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``root/`` (the data root) beside ``outside/`` (which must never be readable through it)."""
    top = tmp_path_factory.mktemp("volume")
    root, outside = top / "root", top / "outside"
    (root / "slides" / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "slides" / "cells.png").write_bytes(SMALL)
    (root / "slides" / "sub" / "deep.png").write_bytes(SMALL)
    (outside / "secret.png").write_bytes(SMALL)  # a real image: refusal is not "undecodable"
    (root / "escape.png").symlink_to(outside / "secret.png")  # a file symlink out of the root
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)  # a folder symlink out
    (root / "slides" / "alias.png").symlink_to(root / "slides" / "cells.png")  # inside: allowed
    (root / "notes.png").write_text("lab notes, not an image\n")
    (root / "huge.png").write_bytes(im.png(im.blobs(600, 600, seed=1)))  # 360,000 px > MAX_PIXELS
    noise = np.random.default_rng(2).integers(0, 256, (500, 500), dtype=np.uint8)
    (root / "bulky.png").write_bytes(im.png(noise))  # 250,000 px but ~250 kB: over the byte limit
    os.mkfifo(root / "pipe.png")
    # A multi-file OME-TIFF whose second channel's file is named outside the root: tifffile, asked
    # for the set's series by path, opens whatever file the XML names.
    planes = [im.blobs(96, 128, seed=12), np.full((96, 128), 200, np.uint8)]
    write_channel_set(root / "sets", planes, ["DAPI", "GFP"], ["ok.ome.tif", "../../outside/gfp.ome.tif"])
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("path-jobs")


@pytest.fixture(scope="module")
def server(start_server, conv_model: Path, layout: dict[str, Path], jobs_dir: Path) -> Server:
    return start_server({
        "UNET_MODEL_PATH": str(conv_model),
        "UNET_DATA_ROOT": str(layout["root"]),
        "UNET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "UNET_MAX_PIXELS": str(MAX_PIXELS),
        "UNET_JOBS_DIR": str(jobs_dir),
    }).wait_ready()


def post_path(server: Server, body: object, **params: str):
    return server.client.post("/jobs", json=body, params=params)


@pytest.mark.parametrize("output", ["labels", "objects"])
def test_a_job_on_a_file_under_the_root_answers_what_post_segment_answers(
    server: Server, output: str
) -> None:
    client = server.client
    r = post_path(server, {"path": "slides/cells.png", "output": output})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["Location"] == f"/jobs/{job_id}"
    assert r.json()["options"] == {"path": "slides/cells.png", "output": output}
    status = wait_until(client, job_id, finished)
    assert status["status"] == "succeeded", status
    assert status["tiles_total"] > 0 and status["tiles_done"] == status["tiles_total"]
    job = client.get(status["result_url"])
    direct = client.post("/segment", params={"output": output},
                         files={"file": ("cells.png", SMALL, "image/png")})
    assert job.status_code == direct.status_code == 200
    assert job.content == direct.content
    for header in ("content-type", "content-disposition", "x-object-count", "x-image-pixels"):
        assert job.headers.get(header) == direct.headers.get(header), header
    assert client.delete(f"/jobs/{job_id}").status_code == 204


def test_options_may_come_in_the_query_string_but_not_in_both_places(server: Server) -> None:
    client = server.client
    r = post_path(server, {"path": "slides/sub/deep.png"}, output="mask", threshold="0.3")
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"path": "slides/sub/deep.png", "output": "mask", "threshold": "0.3"}
    status = wait_until(client, r.json()["id"], finished)
    job = client.get(status["result_url"]).content
    direct = client.post("/segment", params={"output": "mask", "threshold": "0.3"}, content=SMALL,
                         headers={"Content-Type": "image/png"})
    assert job == direct.content

    both = post_path(server, {"path": "slides/cells.png", "output": "labels"}, threshold="0.3")
    assert both.status_code == 422 and both.json()["type"] == "/problems/invalid-options"
    assert "both" in both.json()["detail"]


def test_a_symlink_inside_the_root_to_a_file_inside_it_is_followed(server: Server) -> None:
    r = post_path(server, {"path": "slides/./sub/../alias.png", "output": "mask"})
    assert r.status_code == 202, r.text
    assert wait_until(server.client, r.json()["id"], finished)["status"] == "succeeded"


@pytest.mark.parametrize("path", [
    "../outside/secret.png",
    "slides/../../outside/secret.png",
    "slides/sub/../../../outside/secret.png",
    "escape.png",  # a symlink in the root to a file outside it
    "elsewhere/secret.png",  # a folder symlink out of the root
    "..",
    ".",
    "",
])
def test_paths_that_lead_outside_the_root_are_refused(
    server: Server, layout: dict[str, Path], jobs_dir: Path, path: str
) -> None:
    before = sorted(jobs_dir.iterdir())
    r = post_path(server, {"path": path})
    if path == "":
        assert r.status_code == 422 and r.json()["type"] == "/problems/invalid-options"
    else:
        assert r.status_code == 403, r.text
        assert r.json()["type"] == "/problems/path-outside-data-root"
        assert str(layout["outside"]) not in r.text and str(layout["root"]) not in r.text
    assert sorted(jobs_dir.iterdir()) == before  # no job folder was made


def test_a_slide_whose_set_names_a_file_outside_the_root_is_refused_at_submission(
    server: Server, layout: dict[str, Path], jobs_dir: Path
) -> None:
    """Slide jobs (and stack jobs on z-stacks) read a TIFF by path, where tifffile opens the other
    files of a multi-file OME-TIFF by the names its XML gives (``service.tiff_sets``)."""
    assert (layout["outside"] / "gfp.ome.tif").is_file()
    before = sorted(jobs_dir.iterdir())
    r = post_path(server, {"path": "sets/ok.ome.tif", "output": "ome-zarr", "channel": "DAPI"})
    assert r.status_code == 415, r.text
    assert r.json()["type"] == "/problems/unsupported-image-type"
    assert "outside its own folder" in r.json()["detail"] and str(layout["outside"]) not in r.text
    assert sorted(jobs_dir.iterdir()) == before


def test_absolute_paths_are_refused_even_inside_the_root(server: Server, layout: dict[str, Path]) -> None:
    for path in (str(layout["outside"] / "secret.png"), str(layout["root"] / "slides" / "cells.png"),
                 "/etc/passwd", "//etc/passwd"):
        r = post_path(server, {"path": path})
        assert r.status_code == 403, (path, r.text)
        assert r.json()["type"] == "/problems/path-outside-data-root"
        assert "relative" in r.json()["detail"]


def test_missing_files_folders_and_special_files_are_refused(server: Server) -> None:
    cases = {
        "slides/missing.png": (404, "data-file-not-found"),
        "slides/cells.png/inner.png": (404, "data-file-not-found"),  # a file used as a folder
        "slides": (400, "not-a-file"),
        "pipe.png": (400, "not-a-file"),  # a FIFO: opening it would block the worker
        # a name longer than the file system takes: was a 503 "the data root cannot be read"
        "slides/" + "b" * 300 + ".tif": (404, "data-file-not-found"),
    }
    for path, (status, slug) in cases.items():
        r = post_path(server, {"path": path})
        assert r.status_code == status, (path, r.text)
        assert r.json()["type"] == f"/problems/{slug}", path
        assert path in r.json()["detail"]


def test_the_upload_limits_apply_to_files_on_the_volume(server: Server, layout: dict[str, Path]) -> None:
    assert (layout["root"] / "bulky.png").stat().st_size > MAX_UPLOAD_BYTES
    bulky = post_path(server, {"path": "bulky.png"})
    assert bulky.status_code == 413 and bulky.json()["type"] == "/problems/file-too-large"
    huge = post_path(server, {"path": "huge.png"})
    assert huge.status_code == 413 and huge.json()["type"] == "/problems/image-too-large"
    notes = post_path(server, {"path": "notes.png"})
    assert notes.status_code in (400, 415) and notes.json()["type"] in (
        "/problems/undecodable-image", "/problems/unsupported-image-type")


def test_malformed_bodies_and_options_are_4xx_problems(server: Server) -> None:
    client = server.client
    bad_json = client.post("/jobs", content=b'{"path": ', headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["type"] == "/problems/bad-request"
    for body, field in (
        (["slides/cells.png"], "body"),
        ({"path": 3}, "path"),
        ({"file": "slides/cells.png"}, "path"),
        ({"path": "slides/cells.png", "treshold": 0.3}, "treshold"),
        ({"path": "slides/cells.png", "threshold": 3}, "threshold"),
        ({"path": "slides/cells.png", "output": "jpeg"}, "output"),
    ):
        r = post_path(server, body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["type"] == "/problems/invalid-options"
        assert any(field in error["loc"] for error in r.json()["errors"]), (body, r.json())
    too_long = client.post("/jobs", content=b'{"path": "' + b"a" * 70_000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert too_long.status_code == 413


def test_without_a_data_root_path_jobs_are_off(start_server, conv_model: Path) -> None:
    server = start_server({"UNET_MODEL_PATH": str(conv_model)}).wait_ready()
    r = server.client.post("/jobs", json={"path": "slides/cells.png"})
    assert r.status_code == 403
    assert r.json()["type"] == "/problems/data-root-off"
    assert "UNET_DATA_ROOT" in r.json()["detail"]
    assert server.client.get("/problems/data-root-off").status_code == 200


@pytest.mark.parametrize("swap", ["replaced", "symlinked-out", "fifo"])
def test_a_file_swapped_after_submission_is_not_read(
    start_server, slow_model: Path, tmp_path: Path, swap: str
) -> None:
    """One worker busy with a long upload job; the path job waits in the queue while its file is
    swapped; when it runs, it fails with data-file-changed instead of reading the new file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "cells.png").write_bytes(SMALL)
    (outside / "secret.png").write_bytes(im.png(im.blobs(96, 128, seed=99)))
    server = start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_DATA_ROOT": str(root),
                           "UNET_MAX_BATCH_SIZE": "1", "UNET_JOBS_DIR": str(tmp_path / "jobs")}).wait_ready()
    client = server.client
    busy = submit(client, BIG)
    wait_until(client, busy, running_with_tiles)
    r = client.post("/jobs", json={"path": "cells.png"})
    assert r.status_code == 202, r.text
    queued = r.json()["id"]
    if swap == "replaced":
        (root / "new.png").write_bytes(im.png(im.blobs(96, 128, seed=98)))
        os.replace(root / "new.png", root / "cells.png")  # a new inode at the same name
    elif swap == "symlinked-out":
        (root / "cells.png").unlink()
        (root / "cells.png").symlink_to(outside / "secret.png")
    else:  # opening a FIFO would wait for a writer: the worker must not hang on it
        (root / "cells.png").unlink()
        os.mkfifo(root / "cells.png")
    assert client.delete(f"/jobs/{busy}").status_code == 200
    status = wait_until(client, queued, finished)
    assert status["status"] == "failed", status
    assert status["problem"]["type"] == "/problems/data-file-changed"
    assert status["problem"]["status"] == 409
    answer = client.get(f"/jobs/{queued}/result")
    assert answer.status_code == 409 and answer.json()["type"] == "/problems/data-file-changed"
