"""What the service says is finished is on disk before it says so (``service.durable``).

A power loss or kernel crash keeps only what was synced: the page cache goes with the machine.
The server here is a real ``python -m service`` whose ``os.fsync`` also writes down the path it
synced (a ``sitecustomize`` on its ``PYTHONPATH``; the real fsync still runs), so each test reads
which files reached the disk, in what order, around what the client was told."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import tifffile

from tests.api import _images as im
from tests.api.test_jobs import finished, wait_until
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

#: Imported by the server process at start-up: its fsync calls, in order, one path a line.
RECORDER = '''
import os

_fsync, _log = os.fsync, os.environ["FSYNC_LOG"]


def _recorded(fd):
    _fsync(fd)
    fd = fd if isinstance(fd, int) else fd.fileno()
    with open(_log, "a") as log:
        log.write(os.readlink(f"/proc/self/fd/{fd}") + "\\n")


os.fsync = _recorded
'''


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the folder holding the recorder, its log, the data root)."""
    folder = tmp_path_factory.mktemp("fsync-recorder")
    (folder / "sitecustomize.py").write_text(RECORDER)
    root = tmp_path_factory.mktemp("durable-data")
    image = synthetic_nuclei(520, 600, seed=3)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, tile=(256, 256), photometric="minisblack")
    (root / "slide.tif").write_bytes(buffer.getvalue())
    return folder, folder / "fsync.log", root


@pytest.fixture(scope="module")
def server(start_server, conv_model: Path, recorded, tmp_path_factory) -> Server:
    folder, log, root = recorded
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return start_server({
        "PYTHONPATH": path, "FSYNC_LOG": str(log),
        "UNET_MODEL_PATH": str(conv_model), "UNET_DATA_ROOT": str(root),
        "UNET_JOBS_DIR": str(tmp_path_factory.mktemp("durable-jobs")),
    }).wait_ready()


def synced(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def first(lines: list[str], ending: str, after: int = -1) -> int:
    """The index of the first line after ``after`` that ends with ``ending``."""
    return next(i for i, line in enumerate(lines) if i > after and line.endswith(ending))


def test_a_stored_uploads_bytes_are_on_disk_before_its_info_and_its_201(server: Server, recorded) -> None:
    r = server.client.post("/uploads", content=im.png(synthetic_nuclei(200, 200, seed=1)),
                           headers={"Content-Type": "image/png"})
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    lines = synced(recorded[1])  # read after the 201: all of it happened before the client knew
    data = first(lines, f"/uploads/{upload_id}/data")
    info = first(lines, ".tmp", after=data)
    assert f"/uploads/{upload_id}/.info.json." in lines[info]
    first(lines, f"/uploads/{upload_id}", after=info)  # the folder: the info's rename itself


def test_a_resumable_uploads_offset_is_answered_once_its_bytes_are_on_disk(server: Server, recorded) -> None:
    data = im.png(synthetic_nuclei(300, 300, seed=2))
    r = server.client.post("/uploads", headers={"Upload-Length": str(len(data)), "Tus-Resumable": "1.0.0"})
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    assert not any(f"/uploads/{upload_id}/data" in line for line in synced(recorded[1]))
    half = len(data) // 2
    r = server.client.patch(f"/uploads/{upload_id}", content=data[:half], headers={
        "Content-Type": "application/offset+octet-stream", "Tus-Resumable": "1.0.0", "Upload-Offset": "0"})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(half)
    # Not complete, so not hashed nor given its info: the sync is the PATCH's own.
    assert any(line.endswith(f"/uploads/{upload_id}/data") for line in synced(recorded[1]))


def test_a_job_is_succeeded_only_once_its_result_is_on_disk(server: Server, recorded) -> None:
    image = im.png(synthetic_nuclei(200, 240, seed=4))
    r = server.client.post("/jobs", params={"output": "labels"}, content=image,
                           headers={"Content-Type": "image/png"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_until(server.client, job_id, finished)["status"] == "succeeded"
    lines = synced(recorded[1])
    result = next(i for i, line in enumerate(lines) if f"/{job_id}/.result." in line)
    last_status = max(i for i, line in enumerate(lines) if f"/{job_id}/.status.json" in line)
    assert result < last_status  # the result first, then the status that says succeeded


def test_a_slide_jobs_store_is_on_disk_before_the_job_is_succeeded(server: Server, recorded) -> None:
    r = server.client.post("/jobs", params={"output": "ome-zarr"}, json={"path": "slide.tif"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_until(server.client, job_id, finished)["status"] == "succeeded"
    lines = synced(recorded[1])
    last_status = max(i for i, line in enumerate(lines) if f"/{job_id}/.status.json" in line)
    before = [line for line in lines[:last_status] if f"/{job_id}/" in line]
    # The store's label chunks and the objects table, written by zarr and the table's writer.
    assert any(f"/{job_id}/result.ome.zarr/labels/nuclei/0/" in line for line in before)
    assert any(line.endswith(f"/{job_id}/objects.csv") for line in before)
    assert not any(line.endswith(f"/{job_id}/input") for line in lines)  # the input: deleted, not synced
