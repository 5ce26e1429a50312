"""Optional API key (X-API-Key or Bearer; health exempt; metrics configurable) and /metrics content."""

from __future__ import annotations

import re

from tests.api import _images as im
from tests.server import Server

PNG = im.png(im.blobs(64, 64))
RAW = {"Content-Type": "image/png"}


def test_api_key_required_on_everything_but_health(auth_server: Server) -> None:
    c = auth_server.client
    missing = c.post("/segment", content=PNG, headers=RAW)
    assert missing.status_code == 401 and missing.headers["content-type"] == "application/problem+json"
    assert "WWW-Authenticate" in missing.headers
    assert c.post("/segment", content=PNG, headers={**RAW, "X-API-Key": "wrong"}).status_code == 401
    assert c.post("/segment", content=PNG, headers={**RAW, "Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/segment", content=PNG, headers={**RAW, "X-API-Key": "s3cret-key"}).status_code == 200
    assert (
        c.post("/segment", content=PNG, headers={**RAW, "Authorization": "Bearer s3cret-key"}).status_code
        == 200
    )
    assert c.get("/v1/model").status_code == 401
    assert c.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2/models/test-conv/ready"):
        assert c.get(path).status_code == 200, path
    # UNET_AUTH_EXEMPT_METRICS=false on this server
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_no_key_configured_means_open_and_metrics_exempt(server: Server) -> None:
    assert server.client.get("/v1/model").status_code == 200
    assert server.client.get("/metrics").status_code == 200


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(m.group(3)), True
    assert found, f"{name}{labels} not in /metrics"
    return total


def metric_or_zero(text: str, name: str, **labels: str) -> float:
    """Like :func:`metric`, but 0 for a labelled series not created yet (nothing counted so far)."""
    try:
        return metric(text, name, **labels)
    except AssertionError:
        return 0.0


def test_metrics_count_requests_tiles_pixels_batches_and_provider(server: Server) -> None:
    before = server.client.get("/metrics").text
    r = server.client.post("/segment", content=PNG, headers=RAW)
    assert r.status_code == 200
    server.client.post("/segment", content=b"junk", headers=RAW)
    text = server.client.get("/metrics").text
    assert metric(text, "unet_http_requests_total", route="/segment", status="200") >= 1
    assert metric(text, "unet_http_requests_total", route="/segment", status="400") >= 1
    assert metric(text, "unet_http_request_duration_seconds_count", route="/segment") >= 2
    tiles = int(r.headers["X-Tiles"])
    assert metric(text, "unet_tiles_total") - metric(before, "unet_tiles_total") >= tiles
    assert metric(text, "unet_pixels_total") - metric(before, "unet_pixels_total") >= 64 * 64
    assert metric(text, "unet_batch_size_count") >= 1
    assert metric(text, "unet_queue_depth") >= 0
    assert metric(text, "unet_active_provider", provider="CPUExecutionProvider") == 1
    assert metric(text, "unet_model_ready") == 1
    assert metric(text, "process_resident_memory_bytes") > 0
