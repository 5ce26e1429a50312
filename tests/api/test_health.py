"""Liveness, readiness (before/after warm-up, broken model), open-inference paths, model info, docs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.objects import ObjectParams
from service.settings import Settings
from tests.api import _images as im
from tests.server import Server

PNG = im.png(im.blobs(64, 64))


def test_live_and_ready(server: Server) -> None:
    assert server.client.get("/livez").json() == {"status": "alive"}
    ready = server.client.get("/readyz").json()
    assert ready["ready"] is True and ready["provider"] == "CPUExecutionProvider"
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}


def test_model_info_and_open_inference_metadata(server: Server) -> None:
    info = server.client.get("/v1/model").json()
    assert info["name"] == "test-conv" and info["file"] == "conv.onnx"
    assert info["provider"] == "CPUExecutionProvider"
    assert info["tiling"] == {"tile_size": 64, "overlap": 24, "source": "model", "max_tile_size": 1024}
    assert info["metadata"]["context_margin"] == 8
    assert info["batching"]["max_batch_pixels"] == Settings.model_fields["max_batch_pixels"].default
    assert info["objects"] == {
        "method": ObjectParams.from_metadata(info["metadata"]["objects"]).method,
        "count_on_every_output": True,
        "min_confidence": 0.0,  # the test model records none: every region counts
        "min_snr": 0.0,
    }
    v2 = server.client.get("/v2/models/test-conv").json()
    assert v2["platform"] == "onnxruntime_onnx" and v2["versions"] == ["0.0.0"]
    assert v2["inputs"][0]["shape"] == [-1, 1, -1, -1]
    assert server.client.get("/v2/models/test-conv/ready").json() == {"name": "test-conv", "ready": True}
    assert server.client.get("/v2/models/other").status_code == 404
    assert server.client.get("/v2/models/other/ready").status_code == 404


def test_readiness_turns_true_only_after_warm_up(start_server, conv_model: Path) -> None:
    srv = start_server({"UNET_MODEL_PATH": str(conv_model), "UNET_WARMUP_DELAY_S": "2"}, module=False)
    r = srv.client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json()["status"] == "loading" and r.json()["ready"] is False
    assert srv.client.get("/v2/health/ready").status_code == 503
    busy = srv.client.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
    assert busy.status_code == 503 and busy.json()["type"] == "/problems/not-ready"
    assert "Retry-After" in busy.headers
    srv.wait_ready(timeout_s=20)
    assert srv.client.post("/segment", content=PNG, headers={"Content-Type": "image/png"}).status_code == 200


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_broken_model_keeps_liveness_and_explains_readiness(
    start_server, tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "model.onnx"
    if problem == "corrupt":
        path.write_bytes(b"\x08\x07 definitely not a protobuf " * 10)
    srv = start_server({"UNET_MODEL_PATH": str(path)})
    deadline = time.monotonic() + 20
    while (body := srv.client.get("/readyz").json())["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert body["status"] == "failed" and body["ready"] is False
    assert ("not found" in body["reason"]) if problem == "missing" else ("cannot load" in body["reason"])
    assert srv.client.get("/readyz").status_code == 503
    r = srv.client.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert srv.client.get("/v1/model").status_code == 503
    time.sleep(0.3)
    assert srv.proc.poll() is None  # no crash loop: the process is still up
    assert srv.client.get("/livez").status_code == 200


def test_openapi_describes_every_route_and_the_raw_body(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    for path in (
        "/segment",
        "/segment/batch",
        "/livez",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v1/model",
        "/metrics",
    ):
        assert path in spec["paths"], path
    seg = spec["paths"]["/segment"]["post"]
    content = seg["requestBody"]["content"]
    assert "multipart/form-data" in content and "image/png" in content and "image/tiff" in content
    assert {"400", "413", "415", "422", "503"} <= set(seg["responses"])
    assert "application/problem+json" in seg["responses"]["413"]["content"]
    assert {p["name"] for p in seg["parameters"]} >= {"threshold", "output", "bits", "tile_size", "overlap"}
    assert "Problem" in spec["components"]["schemas"]
    assert server.client.get("/docs").status_code == 200
