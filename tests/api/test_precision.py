"""UNET_PRECISION: which file a real server serves — the model or its int8 copy — and that it says so."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from model_export.quantize import CalibrationSet, model_input, quantize, read_metadata
from service.engine import int8_path
from tests.api._images import blobs, decode, png
from tests.models import write_conv_model
from tests.server import Server


def _quantise(fp32: Path) -> None:
    """Write the int8 copy of a test model beside it, calibrated on three blob images."""
    metadata = read_metadata(fp32)
    inputs = [model_input(blobs(96, 96, seed=s), None, metadata, 96) for s in range(3)]
    quantize(fp32, int8_path(fp32), CalibrationSet(inputs, [], [], 96))


@pytest.fixture(scope="module")
def with_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mini U-Net with its int8 copy beside it (``conv.onnx`` + ``conv.int8.onnx``)."""
    fp32 = write_conv_model(tmp_path_factory.mktemp("with-int8") / "conv.onnx", seed=1)
    _quantise(fp32)
    return fp32


@pytest.fixture(scope="module")
def without_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same mini U-Net alone in its folder."""
    return write_conv_model(tmp_path_factory.mktemp("fp32-only") / "conv.onnx", seed=1)


@pytest.fixture(scope="module")
def stale_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model replaced after its int8 copy was made: the copy beside it is stale."""
    fp32 = write_conv_model(tmp_path_factory.mktemp("stale") / "conv.onnx", seed=1)
    _quantise(fp32)
    write_conv_model(fp32, seed=2)  # re-exported under the same name, other weights
    return fp32


def _verdict(server: Server) -> httpx.Response:
    """/readyz once the background load has finished (ready or failed)."""
    deadline = time.monotonic() + 60
    while (r := server.client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    return r


def _served(server: Server) -> tuple[dict, dict]:
    """(GET /v1/model, GET /readyz) of a ready server."""
    return server.client.get("/v1/model").json(), server.client.get("/readyz").json()


def test_auto_serves_the_int8_copy_on_the_cpu_and_reports_it(start_server, with_int8: Path) -> None:
    server = start_server({"UNET_MODEL_PATH": str(with_int8)}).wait_ready()
    info, ready = _served(server)
    assert info["precision"] == ready["precision"] == "int8"
    assert info["file"] == "conv.int8.onnx" and info["provider"] == "CPUExecutionProvider"
    assert info["metadata"]["quantization"]["weights"].startswith("int8")
    assert 'file="conv.int8.onnx"' in server.client.get("/metrics").text
    image = blobs(120, 90, seed=7)
    r = server.client.post("/segment", files={"file": ("b.png", png(image), "image/png")})
    assert r.status_code == 200
    assert decode(r.content).shape == image.shape


def test_fp32_setting_serves_the_model_named_even_beside_an_int8_copy(start_server, with_int8: Path) -> None:
    server = start_server({"UNET_MODEL_PATH": str(with_int8), "UNET_PRECISION": "fp32"}).wait_ready()
    info, ready = _served(server)
    assert info["precision"] == ready["precision"] == "fp32"
    assert info["file"] == "conv.onnx"
    assert info["metadata"]["quantization"] == {}


def test_auto_without_an_int8_copy_serves_fp32(start_server, without_int8: Path) -> None:
    info, ready = _served(start_server({"UNET_MODEL_PATH": str(without_int8)}).wait_ready())
    assert info["precision"] == ready["precision"] == "fp32"
    assert info["file"] == "conv.onnx"


def test_int8_setting_without_an_int8_copy_is_not_ready_and_says_how_to_make_one(
    start_server, without_int8: Path
) -> None:
    r = _verdict(start_server({"UNET_MODEL_PATH": str(without_int8), "UNET_PRECISION": "int8"}))
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "failed" and body["precision"] is None
    assert "conv.int8.onnx" in body["reason"] and "model_export quantize" in body["reason"]


def test_int8_setting_runs_on_the_cpu_even_when_a_gpu_provider_is_listed(
    start_server, with_int8: Path
) -> None:
    env = {"UNET_MODEL_PATH": str(with_int8), "UNET_PRECISION": "int8", "UNET_PROVIDERS": "cuda,cpu"}
    server = start_server(env).wait_ready()
    info, _ = _served(server)
    assert info["precision"] == "int8" and info["providers"] == ["CPUExecutionProvider"]
    assert "CPU only" in server.log()


def test_int8_and_fp32_servers_give_nearly_the_same_mask(start_server, with_int8: Path) -> None:
    int8 = start_server({"UNET_MODEL_PATH": str(with_int8)}).wait_ready()
    fp32 = start_server({"UNET_MODEL_PATH": str(with_int8), "UNET_PRECISION": "fp32"}).wait_ready()
    body = png(blobs(160, 200, seed=3))
    masks = [
        decode(s.client.post("/segment", content=body, headers={"Content-Type": "image/png"}).content)
        for s in (int8, fp32)
    ]
    assert masks[0].shape == masks[1].shape == (160, 200)
    assert float(np.mean(masks[0] == masks[1])) >= 0.98


def test_a_stale_int8_copy_is_never_served(start_server, stale_int8: Path) -> None:
    auto = start_server({"UNET_MODEL_PATH": str(stale_int8)}).wait_ready()
    info, ready = _served(auto)
    assert info["precision"] == ready["precision"] == "fp32" and info["file"] == "conv.onnx"
    assert "stale copy" in auto.log()
    r = _verdict(start_server({"UNET_MODEL_PATH": str(stale_int8), "UNET_PRECISION": "int8"}))
    assert r.status_code == 503 and r.json()["status"] == "failed"
    assert "stale copy" in r.json()["reason"] and "model_export quantize" in r.json()["reason"]
