"""Backpressure (503 + Retry-After), client-disconnect cancellation and SIGTERM drain on real servers."""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.api import _images as im
from tests.api.test_auth_metrics import metric, metric_or_zero
from tests.server import Server, wait_until

RAW = {"Content-Type": "image/png"}
#: 64 tiles of 64 px: about 0.8 s on the slow model.
SLOW_IMAGE = im.png(im.blobs(512, 512, seed=11))
#: Four times SLOW_IMAGE's tiles: a request left at its first tiles still has most of its work ahead.
BIG_SLOW_IMAGE = im.png(im.blobs(1024, 1024, seed=11))


def test_admitted_requests_are_never_refused_by_the_tile_queue(slow_server: Server) -> None:
    """``slow_server`` asks for a tile queue of ONE tile; eight concurrent requests used to overflow
    it half-way through and lose their computed tiles. Admission now bounds the work in flight and
    the queue holds what admitted requests submit, so every one finishes."""
    # Eight images: one image sent by all eight at once would run the model once (the prediction
    # cache), and this test counts the tiles each answer ran.
    bodies = [im.png(im.blobs(256, 256, seed=200 + k)) for k in range(8)]
    before = slow_server.client.get("/metrics").text

    def post(k: int) -> httpx.Response:
        return httpx.post(f"{slow_server.url}/segment", content=bodies[k], headers=RAW, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    for r in responses:
        assert im.decode(r.content).shape == (256, 256)
    after = slow_server.client.get("/metrics").text
    refused = {"name": "unet_rejected_requests_total", "reason": "tile_queue_full"}
    assert metric(after, **refused) == metric(before, **refused)
    tiles = sum(int(r.headers["X-Tiles"]) for r in responses)
    assert metric(after, "unet_tiles_total") - metric(before, "unet_tiles_total") == tiles
    assert slow_server.client.get("/readyz").status_code == 200


def _raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_a_disconnected_client_stops_its_remaining_tiles(slow_server: Server) -> None:
    # Ordered by events, not by the clock: the client leaves once the server has run the request's
    # first tiles (a fixed 0.4 s let a fast CPU finish 55 of 64 tiles first), and the tiles are
    # counted once the server has recorded the request as cancelled. What a whole request needs is
    # measured on the same image (the slow server keeps no prediction cache).
    whole = httpx.post(f"{slow_server.url}/segment", content=BIG_SLOW_IMAGE, headers=RAW, timeout=120)
    assert whole.status_code == 200, whole.text[:200]
    needed = int(whole.headers["X-Tiles"])

    def metrics() -> str:
        return slow_server.client.get("/metrics").text

    before = metrics()
    sock = _raw_request(slow_server.port, BIG_SLOW_IMAGE)
    tiles_before = metric(before, "unet_tiles_total")
    wait_until(lambda: metric(metrics(), "unet_tiles_total") > tiles_before, "a tile run")
    sock.close()
    cancelled = {"name": "unet_images_total", "outcome": "cancelled"}
    cancelled_before = metric_or_zero(before, **cancelled)
    wait_until(lambda: metric_or_zero(metrics(), **cancelled) > cancelled_before, "the request cancelled")
    after = metrics()
    tiles = metric(after, "unet_tiles_total") - tiles_before
    assert 0 < tiles < needed / 2, f"{tiles} of {needed} tiles run for a request abandoned at its first tiles"
    assert metric_or_zero(after, "unet_http_requests_total", route="/segment", status="499") > metric_or_zero(
        before, "unet_http_requests_total", route="/segment", status="499"
    )


def test_sigterm_drains_in_flight_requests_then_exits(start_server, slow_model: Path) -> None:
    srv = start_server(
        {"UNET_MODEL_PATH": str(slow_model), "UNET_MAX_BATCH_SIZE": "1", "UNET_DRAIN_TIMEOUT_S": "20"}
    ).wait_ready()
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, f"{srv.url}/segment", content=SLOW_IMAGE, headers=RAW, timeout=60)
        time.sleep(0.4)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:  # new work is refused: the listening socket is closed (or readiness is off)
            late = httpx.get(f"{srv.url}/readyz", timeout=2)
            assert late.status_code == 503
        except httpx.TransportError:
            pass
        response = in_flight.result(30)
    assert response.status_code == 200
    assert im.decode(response.content).shape == (512, 512)
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "killed by SIGTERM"
    assert srv.proc.wait(20) in (0, -signal.SIGTERM)
    assert "POST /segment 200" in srv.log()
