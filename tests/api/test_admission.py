"""Admission by work on real servers: pixels in flight against a small budget (UNET_ADMISSION_*).

The slow model (~20 ms per 64² tile) makes a large image last seconds: long enough to hold the
large lane while other requests arrive. Every assertion is on behaviour — status codes, what
the metrics counted, which tiles were computed — never on how long something took.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api import _images as im
from tests.api._images import write_slow_model
from tests.api.test_auth_metrics import metric
from tests.server import Server

RAW = {"Content-Type": "image/png"}
#: A small budget: one 256² image in the large lane, 64² images in the small lane.
BUDGET = {
    "UNET_ADMISSION_PIXELS": str(256 * 256),
    "UNET_ADMISSION_SMALL_PIXELS": str(64 * 64),
    "UNET_ADMISSION_SMALL_LANE_PIXELS": str(2 * 64 * 64),
    "UNET_MAX_BATCH_SIZE": "4",
}
#: Over the budget: admitted only alone. ~440 tiles of the slow model: many seconds of work.
HUGE = im.png(im.blobs(1024, 1024, seed=21))
OVERSIZE = im.png(im.blobs(384, 384, seed=22))
SMALL = im.png(im.blobs(64, 48, seed=23))


def metrics(srv: Server) -> str:
    return srv.client.get("/metrics").text


def post(srv: Server, body: bytes) -> httpx.Response:
    return httpx.post(f"{srv.url}/segment", content=body, headers=RAW, timeout=600)


@pytest.fixture(scope="module")
def no_wait_server(start_server, slow_model: Path) -> Server:
    """Refuses at once whatever does not fit (UNET_ADMISSION_MAX_WAIT_S=0)."""
    return start_server(
        {"UNET_MODEL_PATH": str(slow_model), "UNET_ADMISSION_MAX_WAIT_S": "0", **BUDGET}
    ).wait_ready()


@pytest.fixture(scope="module")
def waiting_server(start_server, slow_model: Path) -> Server:
    """Lets requests wait for room as long as they need (and the wait estimate is generous). Its
    tests send one image several times and count the model's tiles: no prediction cache."""
    return start_server(
        {"UNET_MODEL_PATH": str(slow_model), "UNET_ADMISSION_MAX_WAIT_S": "600",
         "UNET_PREDICTION_CACHE_MB": "0", **BUDGET}
    ).wait_ready()


def send_raw(srv: Server, target: str, body: bytes) -> socket.socket:
    """A request whose connection the test closes when it likes (a client that leaves)."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


@contextmanager
def holding_the_large_lane(
    srv: Server, body: bytes = HUGE, target: str = "/segment", pixels: int = 1024 * 1024
) -> Iterator[None]:
    """An image of ``pixels`` admitted and working (seen in the in-flight gauge) for the block's
    duration; its client then disconnects, so its remaining tiles are dropped."""
    sock = send_raw(srv, target, body)
    try:
        for _ in range(600):
            if metric(metrics(srv), "unet_admission_pixels_in_flight", lane="large") >= pixels:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the holding image was never admitted")
        yield
        # Still working when the block ends: what the block observed happened beside it.
        assert metric(metrics(srv), "unet_admission_pixels_in_flight", lane="large") >= pixels
    finally:
        sock.close()
        for _ in range(600):  # the disconnect is noticed and the budget freed
            if metric(metrics(srv), "unet_admission_pixels_in_flight", lane="large") == 0:
                break
            time.sleep(0.05)


def test_oversize_requests_are_refused_up_front_before_any_tile_is_computed(no_wait_server: Server) -> None:
    srv = no_wait_server
    with holding_the_large_lane(srv):
        before = metrics(srv)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(srv, OVERSIZE), range(4)))
        during = metrics(srv)
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "/problems/overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    # Not one of their tiles reached the model, and nothing of theirs was admitted.
    assert metric(during, "unet_admitted_requests_total", lane="large") == metric(
        before, "unet_admitted_requests_total", lane="large")
    assert metric(during, "unet_rejected_requests_total", reason="wait_estimate") - metric(
        before, "unet_rejected_requests_total", reason="wait_estimate") == 4
    # Once the huge image has gone, the same request is admitted and finishes.
    r = srv.client.post("/segment", content=OVERSIZE, headers=RAW)
    assert r.status_code == 200 and im.decode(r.content).shape == (384, 384)


def test_concurrent_oversize_requests_all_finish_one_at_a_time(waiting_server: Server) -> None:
    """Four images each larger than the whole budget, sent at once: each is admitted alone, in turn,
    and every one finishes (nothing admitted is abandoned half-way)."""
    srv = waiting_server
    before = metrics(srv)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(srv, OVERSIZE), range(4)))
    after = metrics(srv)
    assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
    tiles = sum(int(r.headers["X-Tiles"]) for r in answers)
    assert metric(after, "unet_tiles_total") - metric(before, "unet_tiles_total") == tiles
    assert metric(after, "unet_admitted_requests_total", lane="large") - metric(
        before, "unet_admitted_requests_total", lane="large") == 4
    waits = "unet_admission_wait_seconds_count"
    assert metric(after, waits) - metric(before, waits) == 4
    assert metric(after, "unet_admission_pixels_in_flight", lane="large") == 0


def test_small_images_pass_a_huge_one_and_a_queued_large_one(waiting_server: Server) -> None:
    srv = waiting_server
    with ThreadPoolExecutor(1) as pool:
        with holding_the_large_lane(srv):
            queued = pool.submit(post, srv, OVERSIZE)
            for _ in range(600):
                if metric(metrics(srv), "unet_admission_queued_requests", lane="large") == 1:
                    break
                time.sleep(0.05)
            # Behind a running huge image and a waiting large one, small images are served at once.
            for _ in range(3):
                r = srv.client.post("/segment", content=SMALL, headers=RAW)
                assert r.status_code == 200 and im.decode(r.content).shape == (64, 48)
            assert not queued.done(), "the large request is still waiting for the huge one"
        assert queued.result().status_code == 200, "... and is admitted once the huge one has gone"


def test_a_client_that_leaves_while_queued_leaves_the_queue(waiting_server: Server) -> None:
    srv = waiting_server
    before = metrics(srv)
    with holding_the_large_lane(srv):
        sock = send_raw(srv, "/segment", OVERSIZE)
        for _ in range(600):
            if metric(metrics(srv), "unet_admission_queued_requests", lane="large") == 1:
                break
            time.sleep(0.05)
        sock.close()
        for _ in range(600):
            if metric(metrics(srv), "unet_admission_queued_requests", lane="large") == 0:
                break
            time.sleep(0.05)
        during = metrics(srv)
    assert metric(during, "unet_admission_queued_requests", lane="large") == 0
    admitted = {"name": "unet_admitted_requests_total", "lane": "large"}
    assert metric(during, **admitted) - metric(before, **admitted) == 1, "only the holding image ran"
    gone = {"name": "unet_http_requests_total", "route": "/segment", "status": "499"}
    assert metric(during, **gone) - (metric(before, **gone) if 'status="499"' in before else 0) == 1


def test_previews_and_probes_go_through_admission(no_wait_server: Server) -> None:
    srv = no_wait_server
    with holding_the_large_lane(srv):
        before = metrics(srv)
        preview = srv.client.post("/ui/preview", content=OVERSIZE, headers=RAW)
        probe = srv.client.post("/probe", content=OVERSIZE, headers=RAW)
        small_preview = srv.client.post("/ui/preview", content=SMALL, headers=RAW)
        after = metrics(srv)
    assert preview.status_code == 503 and preview.json()["type"] == "/problems/overloaded"
    assert probe.status_code == 503 and "Retry-After" in probe.headers
    assert small_preview.status_code == 200, "a small preview uses the small lane"
    assert metric(after, "unet_rejected_requests_total", reason="wait_estimate") - metric(
        before, "unet_rejected_requests_total", reason="wait_estimate") == 2


def test_an_enlarged_image_grows_its_charge_before_any_tile_runs(
    start_server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A slow model trained at nuclei 20 px across; the large lane holds 1 Mi px and a 1000² image
    (diameter=20: not resized) is working. A 100² image fits beside it as uploaded, but at
    nuclei 5 px across it is enlarged ×4 to 400²: its charge must grow before its tiles run, it
    does not fit, and with no waiting allowed it is refused — 503, counted as a wait timeout."""
    model = write_slow_model(tmp_path_factory.mktemp("m") / "slow20.onnx", nucleus_diameter=20.0)
    srv = start_server({
        "UNET_MODEL_PATH": str(model),
        "UNET_ADMISSION_PIXELS": str(1024 * 1024),
        "UNET_ADMISSION_SMALL_PIXELS": str(64 * 64),
        "UNET_ADMISSION_MAX_WAIT_S": "0",
    }).wait_ready()
    holder = im.png(im.blobs(1000, 1000, seed=24))
    small_upload = im.png(im.blobs(100, 100, seed=25))
    with holding_the_large_lane(srv, holder, "/segment?diameter=20", 1000 * 1000):
        before = metrics(srv)
        as_sent = srv.client.post("/segment", params={"diameter": 20}, content=small_upload, headers=RAW)
        enlarged = srv.client.post("/segment", params={"diameter": 5}, content=small_upload, headers=RAW)
        after = metrics(srv)
    assert as_sent.status_code == 200, "as uploaded, it fits beside the 1000² image"
    assert enlarged.status_code == 503 and enlarged.json()["type"] == "/problems/overloaded"
    assert "160,000 pixels at its nucleus scale" in enlarged.json()["detail"]
    timeouts = {"name": "unet_rejected_requests_total", "reason": "wait_timeout"}
    assert metric(after, **timeouts) - metric(before, **timeouts) == 1
    r = srv.client.post("/segment", params={"diameter": 5}, content=small_upload, headers=RAW)
    assert r.status_code == 200 and float(r.headers["X-Scale-Factor"]) == pytest.approx(4.0)


def test_v1_model_reports_the_admission_budget_and_state(no_wait_server: Server) -> None:
    info = no_wait_server.client.get("/v1/model").json()["admission"]
    assert info["budget_pixels"] == 256 * 256 and info["small_pixels"] == 64 * 64
    assert info["max_wait_s"] == 0
    assert set(info["in_flight_pixels"]) == {"small", "large"}
    assert info["throughput_mps"] > 0


pytestmark = pytest.mark.timeout(300)
