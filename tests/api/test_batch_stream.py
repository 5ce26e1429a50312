"""``POST /segment/batch`` streams its ZIP: each finished image reaches the client at once, the
timeout applies per image, failures land in the manifest (written last), a client that leaves
stops the work. Real servers on the slow model; assertions on bytes, manifests and metrics."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.api import _images as im
from tests.api.test_auth_metrics import metric
from tests.server import Server

SMALL_A = im.png(im.blobs(64, 48, seed=31))
SMALL_C = im.png(im.blobs(40, 72, seed=33))
#: ~440 tiles of the slow model: seconds of work.
HUGE = im.png(im.blobs(1024, 1024, seed=32))
#: Nine times HUGE's tiles, for a 3 s timeout: HUGE itself once finished inside it (in a
#: clean-clone CI run of this 4-image batch).
PAST_THE_TIMEOUT = im.png(im.blobs(3072, 3072, seed=32))


def files(*named: tuple[str, bytes]) -> list:
    return [("files", (name, body, "image/png")) for name, body in named]


def count(text: str, name: str, **labels: str) -> float:
    """A counter's value, 0 before its first event (labelled children appear when first used)."""
    try:
        return metric(text, name, **labels)
    except AssertionError:
        return 0.0


def in_flight(srv: Server) -> float:
    return metric(srv.client.get("/metrics").text, "unet_admission_pixels_in_flight")


@pytest.fixture(scope="module")
def batch_server(start_server, slow_model: Path) -> Server:
    # Its tests send the same images again and need the model to run on them (to be stopped
    # part-way): no prediction cache.
    return start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_PREDICTION_CACHE_MB": "0"}).wait_ready()


@pytest.fixture(scope="module")
def short_timeout_server(start_server, slow_model: Path) -> Server:
    return start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_REQUEST_TIMEOUT_S": "3"}).wait_ready()


def test_each_finished_image_reaches_the_client_while_the_next_is_worked_on(batch_server: Server) -> None:
    srv = batch_server
    with srv.client.stream("POST", "/segment/batch", files=files(("a.png", SMALL_A), ("big.png", HUGE))) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        chunks = r.iter_bytes()
        received = next(chunks)
        # The first image's ZIP member is here while the huge one is still being segmented.
        assert received.startswith(b"PK\x03\x04") and b"a.png" in received
        assert in_flight(srv) >= 1024 * 1024
        received += b"".join(chunks)
    with zipfile.ZipFile(io.BytesIO(received)) as archive:
        assert archive.namelist() == ["a.png", "big.png", "manifest.json"], "the manifest comes last"
        assert im.decode(archive.read("a.png")).shape == (64, 48)
        assert im.decode(archive.read("big.png")).shape == (1024, 1024)
        manifest = json.loads(archive.read("manifest.json"))
    assert [(e["file"], e["status"]) for e in manifest["files"]] == [("a.png", 200), ("big.png", 200)]


def test_the_timeout_applies_per_image_and_finished_ones_are_delivered(short_timeout_server: Server) -> None:
    srv = short_timeout_server
    bad = b"not an image at all"
    batch = files(("a.png", SMALL_A), ("big.png", PAST_THE_TIMEOUT), ("bad.png", bad), ("c.png", SMALL_C))
    r = srv.client.post("/segment/batch", files=batch)
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.namelist() == ["a.png", "c.png", "manifest.json"]
        manifest = json.loads(archive.read("manifest.json"))
    statuses = {e["file"]: e["status"] for e in manifest["files"]}
    assert statuses == {"a.png": 200, "big.png": 503, "bad.png": 400, "c.png": 200}
    big = next(e for e in manifest["files"] if e["file"] == "big.png")
    assert big["output"] is None and big["problem"]["type"] == "/problems/timeout"
    assert (manifest["succeeded"], manifest["failed"]) == (2, 2)


def test_a_batch_the_service_has_no_room_for_is_refused_before_anything_runs(
    start_server, slow_model: Path
) -> None:
    srv = start_server({
        "UNET_MODEL_PATH": str(slow_model),
        "UNET_ADMISSION_PIXELS": str(128 * 128),
        "UNET_ADMISSION_SMALL_PIXELS": str(64 * 64),
        "UNET_ADMISSION_MAX_WAIT_S": "0",
    }).wait_ready()
    with (
        httpx.Client(base_url=srv.url, timeout=600) as other,
        other.stream("POST", "/segment/batch", files=files(("big.png", HUGE))) as first,
    ):
        assert first.status_code == 200
        for _ in range(600):  # the huge image holds the large lane
            if in_flight(srv) >= 1024 * 1024:
                break
            time.sleep(0.05)
        before = srv.client.get("/metrics").text
        refused = srv.client.post("/segment/batch", files=files(("x.png", HUGE), ("a.png", SMALL_A)))
        after = srv.client.get("/metrics").text
    assert refused.status_code == 503 and refused.json()["type"] == "/problems/overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    # Nothing of it was admitted (so not one of its tiles ran): it was refused at the door.
    assert metric(after, "unet_admitted_requests_total") == metric(before, "unet_admitted_requests_total")
    assert metric(after, "unet_rejected_requests_total", reason="wait_estimate") - metric(
        before, "unet_rejected_requests_total", reason="wait_estimate") == 1


def test_a_client_that_leaves_mid_batch_stops_the_work(batch_server: Server) -> None:
    srv = batch_server
    before = srv.client.get("/metrics").text
    with srv.client.stream("POST", "/segment/batch", files=files(("a.png", SMALL_A), ("big.png", HUGE))) as r:
        next(r.iter_bytes())
        assert in_flight(srv) >= 1024 * 1024
    # The connection is closed: the huge image's remaining tiles are dropped, its pixels freed.
    for _ in range(600):
        if in_flight(srv) == 0:
            break
        time.sleep(0.05)
    after = srv.client.get("/metrics").text
    assert in_flight(srv) == 0
    assert count(after, "unet_images_total", outcome="cancelled") - count(
        before, "unet_images_total", outcome="cancelled") == 1
    assert count(after, "unet_images_total", outcome="ok") - count(
        before, "unet_images_total", outcome="ok") == 1


pytestmark = pytest.mark.timeout(300)
