"""Load and overload on real servers (issue 6), beyond the API suite's 503/cancel/drain tests.

- **Load**: 500 images of mixed sizes and types from 32 concurrent clients after a warm-up pass,
  default limits: the only non-200 answer allowed is the deliberate 503 backpressure (with
  Retry-After; the client retries), all 500 are segmented in the end, every 200 is a
  valid mask of exactly the input's size, and the server's resident memory after the run is
  within 10 % of its value after the warm-up (no per-request leak).
- **Overload**: when the service is full, a refused request gets 503 + Retry-After before any of
  its work starts, and the admitted ones finish (asserted on counters, not on wall-clock time).

Small images and the tiny conv model keep the whole module well under a minute here; the long
version is ``benchmarks/soak.py`` (see SECURITY.md, "Release checks").
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.api import _images as im
from tests.api.test_auth_metrics import metric
from tests.reliability.conftest import rss_mb
from tests.server import Server

#: (name, bytes, content type, (H, W)) — sizes from a sliver to a few tiles, 8/16-bit, PNG/TIFF/JPEG.
MIX = [
    ("tiny", im.png(im.blobs(24, 31, seed=1)), "image/png", (24, 31)),
    ("one-row", im.png(im.blobs(1, 200, seed=2)), "image/png", (1, 200)),
    ("tile", im.png(im.blobs(64, 64, seed=3)), "image/png", (64, 64)),
    ("odd", im.png(im.blobs(97, 131, seed=4)), "image/png", (97, 131)),
    ("16-bit", im.tiff(im.blobs(150, 110, seed=5, dtype=np.uint16)), "image/tiff", (150, 110)),
    ("grey-as-rgb-jpeg", im.jpeg_grey_rgb(120, 160), "image/jpeg", (120, 160)),
    ("large", im.png(im.blobs(256, 256, seed=6)), "image/png", (256, 256)),
]


@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float
    problem: str = ""  # why a response is wrong ("" = fine)


def _check(response: httpx.Response, shape: tuple[int, int]) -> str:
    if response.status_code == 503:
        if not response.headers.get("Retry-After", "").isdigit():
            return "503 without Retry-After"
        if response.json().get("type") != "/problems/overloaded":
            return f"503 {response.json().get('type')}"
        return ""
    if response.status_code != 200:
        return f"{response.status_code}: {response.text[:200]}"
    if response.headers["content-type"] != "image/png":
        return f"content-type {response.headers['content-type']}"
    mask = im.decode(response.content)
    if mask.shape != shape or mask.dtype != np.uint8:
        return f"mask {mask.shape} {mask.dtype} for an input of {shape}"
    if not set(np.unique(mask)) <= {0, 255}:
        return "mask values other than 0/255"
    return ""


def hammer(srv: Server, images: int, concurrency: int) -> tuple[list[Outcome], float]:
    """Segment ``images`` of the MIX (round robin) from ``concurrency`` threads, at the server's
    default limits (8 images in progress): a client that gets the 503 backpressure backs off and
    sends the image again, as the batch client does (50 ms here instead of Retry-After's whole
    seconds, so the test stays short). Every attempt is recorded."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lock, results = threading.Lock(), []
    with httpx.Client(base_url=srv.url, timeout=60, limits=limits) as client:

        def one(k: int) -> None:
            kind, body, content_type, shape = MIX[k % len(MIX)]
            for _ in range(400):
                started = time.perf_counter()
                r = client.post("/segment", content=body, headers={"Content-Type": content_type})
                outcome = Outcome(kind, r.status_code, time.perf_counter() - started, _check(r, shape))
                with lock:
                    results.append(outcome)
                if r.status_code != 503:
                    return
                time.sleep(0.05)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(images)))
        return results, time.perf_counter() - started


def test_500_mixed_requests_at_concurrency_32_only_backpressure_no_leak(
    start_server, conv_model: Path, healthy
) -> None:
    srv = start_server({"UNET_MODEL_PATH": str(conv_model), "UNET_LOG_LEVEL": "WARNING"}).wait_ready()
    warm, _ = hammer(srv, 250, 32)  # allocator arenas, ORT buffers, thread pools reach their size
    assert not [o for o in warm if o.problem]
    time.sleep(0.5)
    rss_warm = rss_mb(srv)

    results, wall = hammer(srv, 500, 32)
    time.sleep(0.5)
    rss_after = rss_mb(srv)

    wrong = [o for o in results if o.problem]
    assert not wrong, wrong[:5]
    ok = [o for o in results if o.status == 200]
    rejected = len(results) - len(ok)
    assert len(ok) == 500, "every image is segmented in the end"
    assert {o.kind for o in ok} == {m[0] for m in MIX}
    latencies = sorted(o.seconds for o in ok)
    print(
        f"\nload: 500 images, concurrency 32, {wall:.1f} s = {500 / wall:.0f} images/s; "
        f"{len(ok)} × 200, {rejected} × 503 (retried); "
        f"200 latency p50 {1000 * statistics.median(latencies):.0f} ms, "
        f"p99 {1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms; "
        f"RSS after warm-up {rss_warm:.1f} MB, after the run {rss_after:.1f} MB"
    )
    assert rss_after <= 1.10 * rss_warm, f"RSS {rss_warm:.1f} → {rss_after:.1f} MB after 500 requests"
    healthy(srv)


def test_when_full_the_refused_requests_compute_nothing_and_the_admitted_finish(
    start_server, slow_model: Path, healthy
) -> None:
    """Two requests at a time (UNET_MAX_CONCURRENT_REQUESTS=2) and no waiting
    (UNET_ADMISSION_MAX_WAIT_S=0) on the slow model, 16 clients at once: each answer is a 200 or a
    503 overloaded with Retry-After, and the tiles the model ran are exactly those of the 200s —
    a refused request was turned away before any of its work started. (Latency figures belong
    to benchmarks/load.py: wall-clock limits failed on a loaded machine.)"""
    srv = start_server({
        "UNET_MODEL_PATH": str(slow_model),
        "UNET_MAX_CONCURRENT_REQUESTS": "2",
        "UNET_ADMISSION_MAX_WAIT_S": "0",
        "UNET_MAX_BATCH_SIZE": "4",
    }).wait_ready()
    # Sixteen clients, sixteen images: one image sent at once by several would run the model once
    # (the prediction cache), and this test counts the tiles each answer ran.
    bodies = [im.png(im.blobs(256, 256, seed=800 + k)) for k in range(16)]
    headers = {"Content-Type": "image/png"}
    before = srv.client.get("/metrics").text

    def post(k: int) -> httpx.Response:
        return httpx.post(f"{srv.url}/segment", content=bodies[k], headers=headers, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(16)))
    after = srv.client.get("/metrics").text
    accepted = [r for r in answers if r.status_code == 200]
    rejected = [r for r in answers if r.status_code == 503]
    assert len(accepted) + len(rejected) == 16, [r.status_code for r in answers]
    assert len(accepted) >= 2 and rejected
    for r in rejected:
        assert r.headers["Retry-After"].isdigit() and r.json()["type"] == "/problems/overloaded"
    for r in accepted:
        assert im.decode(r.content).shape == (256, 256)
    tiles = sum(int(r.headers["X-Tiles"]) for r in accepted)
    assert metric(after, "unet_tiles_total") - metric(before, "unet_tiles_total") == tiles
    refusals = sum(
        metric(after, "unet_rejected_requests_total", reason=reason)
        - metric(before, "unet_rejected_requests_total", reason=reason)
        for reason in ("queue_full", "wait_estimate", "wait_timeout")
    )
    assert refusals == len(rejected)
    healthy(srv)


pytestmark = pytest.mark.timeout(180)
