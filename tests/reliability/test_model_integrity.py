"""Model integrity on a real ``python -m service``: a damaged model file keeps the service not-ready
with the reason; the bundled model verifies and serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service import model_checksum
from service.settings import DEFAULT_MODEL_PATH
from tests.server import Server
from tests.unit.test_model_checksum import flip_weight_bits


def _settled_readiness(srv: Server) -> tuple[int, dict]:
    """``/readyz`` once the load has finished one way or the other."""
    deadline = time.monotonic() + 180
    while True:
        r = srv.client.get("/readyz")
        if r.json()["status"] != "loading" or time.monotonic() > deadline:
            return r.status_code, r.json()
        time.sleep(0.1)


def test_flipped_weight_bits_keep_the_service_not_ready_with_the_reason(start_server, tmp_path: Path) -> None:
    bad = flip_weight_bits(DEFAULT_MODEL_PATH, tmp_path / "nuclei-unet.onnx")
    srv = start_server({"UNET_MODEL_PATH": str(bad)})
    status, body = _settled_readiness(srv)
    assert status == 503, body
    assert body["status"] == "failed" and body["ready"] is False
    assert "checksum mismatch" in body["reason"]
    assert model_checksum.digest(bad.read_bytes()) in body["reason"]
    r = srv.client.post("/segment", content=b"\x89PNG", headers={"Content-Type": "image/png"})
    assert r.status_code == 503 and r.json()["type"] == "/problems/not-ready"
    assert "checksum mismatch" in r.json()["detail"]
    assert srv.client.get("/livez").status_code == 200  # alive: no restart loop, the reason is visible


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_bundled_model_passes_even_when_a_seal_is_required(start_server, precision: str) -> None:
    # auto serves the bundled int8 copy on this CPU: it is sealed too.
    srv = start_server({"UNET_REQUIRE_MODEL_CHECKSUM": "true", "UNET_PRECISION": precision})
    status, body = _settled_readiness(srv)
    assert status == 200, body
    info = srv.client.get("/v1/model").json()
    served = DEFAULT_MODEL_PATH.parent / info["file"]
    on_cpu = info["provider"] == "CPUExecutionProvider"
    assert info["precision"] == ("int8" if precision == "auto" and on_cpu else "fp32")
    assert info["checksum"] == model_checksum.digest(served.read_bytes())
    assert "verified" in srv.log()
