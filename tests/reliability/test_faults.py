"""Faults the API suite does not provoke: CUDA asked for but unavailable (CPU fallback visible in
readiness and metrics), and a request past UNET_REQUEST_TIMEOUT_S (a clear 503, not a hang)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from service.model_metadata import ModelMetadata
from service.tiling import plan_tiles
from tests.api import _images as im
from tests.api.test_auth_metrics import metric
from tests.reliability.conftest import assert_problem

RAW = {"Content-Type": "image/png"}


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="this onnxruntime build has no CUDA provider to fail over from",
)
def test_cuda_unavailable_falls_back_to_cpu_visibly(start_server, conv_model: Path, healthy) -> None:
    # Where a GPU does work there is nothing to fall back from. ORT itself falls back silently,
    # so ask which providers the session really got (FACTS.md).
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(conv_model), providers=["CUDAExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)
    if "CUDAExecutionProvider" in session.get_providers():
        pytest.skip("CUDA works on this machine")
    srv = start_server({"UNET_MODEL_PATH": str(conv_model), "UNET_PROVIDERS": "cuda,cpu"}).wait_ready()
    ready = srv.client.get("/readyz").json()
    assert ready["ready"] is True and ready["provider"] == "CPUExecutionProvider"
    assert srv.client.get("/v1/model").json()["provider"] == "CPUExecutionProvider"
    text = srv.client.get("/metrics").text
    assert metric(text, "unet_active_provider", provider="CPUExecutionProvider") == 1
    assert 'unet_active_provider{provider="CUDAExecutionProvider"} 1' not in text
    assert metric(text, "unet_model_info", provider="CPUExecutionProvider") == 1
    healthy(srv)
    log = srv.log()
    assert log.count("CUDAExecutionProvider requested but not usable") == 1  # said once, clearly
    assert "libcublas" not in log  # not ORT's native noise


@pytest.mark.parametrize("route", ["/segment", "/segment/batch"])
def test_a_request_past_the_timeout_is_a_503_problem_not_a_hang(
    start_server, slow_model: Path, route: str, healthy
) -> None:
    srv = start_server(
        {"UNET_MODEL_PATH": str(slow_model), "UNET_REQUEST_TIMEOUT_S": "0.3", "UNET_MAX_BATCH_SIZE": "1"}
    ).wait_ready()
    # Hundreds of slow tiles, one at a time: far past the 0.3 s timeout however fast the machine.
    side = 1024
    body = im.png(im.blobs(side, side, seed=11))
    md = ModelMetadata.from_onnx_props({p.key: p.value for p in onnx.load(str(slow_model)).metadata_props})
    rows, cols = plan_tiles(
        side, side, md.tile_size, md.tile_overlap, md.context_margin, md.size_divisor, md.border
    ).grid
    all_tiles = rows * cols
    before = srv.client.get("/metrics").text
    if route == "/segment":
        r = srv.client.post(route, content=body, headers=RAW)
        problem = assert_problem(r, 503, "/problems/timeout")
        assert "UNET_REQUEST_TIMEOUT_S" in problem["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        images = 1
    else:
        # The batch streams: the timeout applies to each image, and each one's problem is in the manifest.
        r = srv.client.post(route, files=[("files", ("a.png", body)), ("files", ("b.png", body))])
        assert r.status_code == 200
        manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
        for entry in manifest["files"]:
            assert entry["status"] == 503 and entry["problem"]["type"] == "/problems/timeout"
            assert "UNET_REQUEST_TIMEOUT_S" in entry["problem"]["detail"]
        images = 2
    time.sleep(0.3)
    after = srv.client.get("/metrics").text
    tiles = metric(after, "unet_tiles_total") - metric(before, "unet_tiles_total")
    # Answered because of the timeout, not after the work: most tiles were never computed.
    assert tiles < all_tiles * images / 2, "the abandoned images' remaining tiles were still computed"
    healthy(srv)  # small images finish within the timeout: the server serves on
