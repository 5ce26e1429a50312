"""Stored uploads on a real server: a file stored once (``POST /uploads``), past the per-request
upload limit, then named by ``upload=<id>`` on ``/probe``, ``/ui/preview``, ``/segment`` and
``/jobs`` — answering exactly what the same file sent as the body would have.

The file is a Leica LIF project a few times the server's upload limit (``tests/lif_files.py``): the
case users meet on the web page, a LAS X session of gigabytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.api import _images as im
from tests.api.test_jobs import finished, wait_until
from tests.api.test_lif import alone, labels_of
from tests.lif_files import Image, lif_bytes
from tests.server import Server

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=31, dtype=np.uint16)
FIELD = im.blobs(H, W, seed=32, dtype=np.uint16)
#: Filler images make the project larger than one request may be, as a session of many
#: acquisitions is; the nuclei are in its first image's second channel and in its last image.
FILLER = [Image(f"Series{k:03d}", im.blobs(H, W, seed=40 + k, dtype=np.uint16), "YX", luts=("Gray",))
          for k in range(2, 14)]
PROJECT = lif_bytes([
    Image("Series001", np.stack([FIELD, NUCLEI]), "CYX", luts=("Green", "Blue"), pixel_um=0.5),
    *FILLER,
    Image("Series099", FIELD, "YX", luts=("Gray",), pixel_um=0.5, folder="Position 2"),
])
LAST = len(FILLER) + 1
MAX_UPLOAD_BYTES = 100_000
MAX_STORED_BYTES = 2 * len(PROJECT)
JOBS_MAX_BYTES = 3 * len(PROJECT)


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stored-uploads")


@pytest.fixture(scope="module")
def server(start_server, conv_model: Path, jobs_dir: Path) -> Server:
    assert len(PROJECT) > 2 * MAX_UPLOAD_BYTES  # the point: a file no request may carry
    return start_server({
        "UNET_MODEL_PATH": str(conv_model),
        "UNET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "UNET_MAX_STORED_UPLOAD_BYTES": str(MAX_STORED_BYTES),
        "UNET_JOBS_MAX_BYTES": str(JOBS_MAX_BYTES),
        "UNET_JOBS_DIR": str(jobs_dir),
    }).wait_ready()


def store(server: Server, data: bytes, name: str = "session.lif") -> dict:
    r = server.client.post("/uploads", content=data, headers={
        "Content-Type": "application/octet-stream", "Content-Disposition": f'attachment; filename="{name}"'})
    assert r.status_code == 201, r.text
    return r.json()


def stored_files(jobs_dir: Path) -> list[Path]:
    return sorted(p for p in (jobs_dir / "uploads").glob("*/*") if p.is_file())


def test_a_project_past_the_upload_limit_is_stored_once_and_segmented_image_by_image(server: Server) -> None:
    client = server.client
    refused = client.post("/segment", params={"series": 1}, content=PROJECT,
                          headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code == 413 and "POST /uploads" in refused.json()["detail"]

    stored = store(server, PROJECT)
    assert stored["size"] == len(PROJECT)
    assert stored["sha256"] == hashlib.sha256(PROJECT).hexdigest()
    assert stored["filename"] == "session.lif" and stored["url"] == f"/uploads/{stored['id']}"
    assert client.get(stored["url"]).json() == stored

    probe = client.post("/probe", params={"upload": stored["id"], "series": LAST})
    assert probe.status_code == 200, probe.text
    assert probe.json()["format"] == "LIF" and probe.json()["series"]["count"] == LAST + 1
    assert probe.json()["series"]["names"][LAST] == "Position 2/Series099"

    labels, count = labels_of(client.post("/segment", params={
        "upload": stored["id"], "series": LAST, "output": "labels"}))
    expected, expected_count = alone(server, FIELD)
    assert count == expected_count > 0
    np.testing.assert_array_equal(labels, expected)

    r = client.post("/segment", params={"upload": stored["id"], "series": 0, "channel": "blue",
                                        "output": "labels"})
    labels, count = labels_of(r)
    np.testing.assert_array_equal(labels, alone(server, NUCLEI)[0])
    # outputs are named after the stored file, as after an upload's
    assert r.headers["Content-Disposition"] == 'attachment; filename="session_labels.png"'
    assert client.delete(stored["url"]).status_code == 204


def test_the_preview_and_a_job_read_the_stored_file(server: Server) -> None:
    client = server.client
    stored = store(server, PROJECT)
    preview = client.post("/ui/preview", params={"upload": stored["id"], "series": LAST})
    assert preview.status_code == 200, preview.text
    assert (int(preview.headers["X-Image-Width"]), int(preview.headers["X-Image-Height"])) == (W, H)

    r = client.post("/jobs", params={"upload": stored["id"], "series": LAST, "output": "objects"})
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"upload": stored["id"], "series": str(LAST), "output": "objects"}
    job_id = r.json()["id"]
    status = wait_until(client, job_id, finished)
    assert status["status"] == "succeeded", status
    job = client.get(status["result_url"])
    direct = client.post("/segment", params={"upload": stored["id"], "series": LAST, "output": "objects"})
    assert job.status_code == direct.status_code == 200
    assert job.content == direct.content
    assert job.headers["Content-Disposition"] == 'attachment; filename="session_objects.csv"'

    # an open choice fails the job with the 422 POST /segment gives, listing the project's images
    r = client.post("/jobs", params={"upload": stored["id"], "output": "labels"})
    assert r.status_code == 202, r.text
    status = wait_until(client, r.json()["id"], finished)
    assert status["status"] == "failed" and status["problem"]["type"] == "/problems/choose-plane"
    assert len(status["problem"]["choices"]["series"]) == LAST + 1
    for job in (job_id, r.json()["id"]):
        assert client.delete(f"/jobs/{job}").status_code == 204
    assert client.delete(stored["url"]).status_code == 204


def test_a_stored_file_and_the_same_bytes_sent_share_the_prediction_cache(server: Server) -> None:
    client = server.client
    tiff = im.tiff(FIELD)
    assert len(tiff) < MAX_UPLOAD_BYTES
    stored = store(server, tiff, "field.tif")
    first = client.post("/segment", params={"upload": stored["id"], "threshold": "0.41"})
    again = client.post("/segment", params={"threshold": "0.41"}, content=tiff,
                        headers={"Content-Type": "image/tiff"})
    assert first.headers["X-Prediction-Cache"] == "miss"
    assert again.headers["X-Prediction-Cache"] == "hit"
    assert first.content == again.content
    assert client.delete(stored["url"]).status_code == 204


def test_requests_that_name_a_stored_upload_wrongly_get_a_clear_4xx(server: Server, jobs_dir: Path) -> None:
    client = server.client
    missing = "0" * 32
    for path in ("/segment", "/probe", "/ui/preview", "/jobs"):
        r = client.post(path, params={"upload": missing})
        assert r.status_code == 404 and r.json()["type"] == "/problems/upload-not-found", (path, r.text)
        malformed = client.post(path, params={"upload": "../../etc/passwd"})
        assert malformed.status_code == 422, (path, malformed.text)
    for odd in ("%2e%2e", "%2e%2e%2fjobs", "A" * 32, "0" * 33, ".." + "0" * 30):  # not our ids: no path
        assert client.get(f"/uploads/{odd}").status_code == 404, odd
        assert client.delete(f"/uploads/{odd}").status_code == 404, odd
    stored = store(server, im.tiff(FIELD), "field.tif")
    both = client.post("/segment", params={"upload": stored["id"]}, content=im.png(FIELD),
                       headers={"Content-Type": "image/png"})
    assert both.status_code == 400 and "upload=" in both.json()["detail"]
    batch = client.post("/segment/batch", params={"upload": stored["id"]},
                        files=[("files", ("a.png", im.png(FIELD), "image/png"))])
    assert batch.status_code == 422
    assert client.delete(stored["url"]).status_code == 204
    assert client.get(stored["url"]).status_code == 404
    assert client.post("/segment", params={"upload": stored["id"]}).status_code == 404
    assert client.delete(stored["url"]).status_code == 404
    assert not (jobs_dir / "uploads" / stored["id"]).exists()


def test_what_cannot_be_stored_is_refused_and_leaves_nothing(server: Server, jobs_dir: Path) -> None:
    client = server.client
    before = stored_files(jobs_dir)
    text = client.post("/uploads", content=b"lab notes, not an image\n" * 100,
                       headers={"Content-Type": "application/octet-stream"})
    assert text.status_code == 415 and "LIF" in text.json()["detail"]
    empty = client.post("/uploads", content=b"", headers={"Content-Type": "application/octet-stream"})
    assert empty.status_code == 400
    oversized = PROJECT + bytes(MAX_STORED_BYTES)
    raw = {"Content-Type": "application/octet-stream"}
    declared = client.post("/uploads", content=oversized, headers=raw)
    assert declared.status_code == 413 and "UNET_MAX_STORED_UPLOAD_BYTES" in declared.json()["detail"]

    def chunks():  # no Content-Length: refused as the bytes pass the limit
        for k in range(0, len(oversized), 65536):
            yield oversized[k:k + 65536]

    streamed = client.post("/uploads", content=chunks(), headers=raw)
    assert streamed.status_code == 413
    assert stored_files(jobs_dir) == before


def test_stored_uploads_share_the_jobs_folder_budget(server: Server) -> None:
    client = server.client
    first, second = store(server, PROJECT), store(server, PROJECT)
    full = client.post("/uploads", content=PROJECT, headers={"Content-Type": "application/octet-stream"})
    assert full.status_code == 507 and full.json()["type"] == "/problems/insufficient-storage"
    assert "Retry-After" in full.headers
    for stored in (first, second):
        assert client.delete(stored["url"]).status_code == 204
    third = store(server, PROJECT)  # room again
    assert client.delete(third["url"]).status_code == 204
