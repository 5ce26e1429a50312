"""End to end: the real service (``python -m service``) on loopback, the real client, real PNGs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import write_png

REPO = Path(__file__).resolve().parents[2]
SIZES = {"a.png": (64, 48), "b.png": (100, 37), "sub/c.png": (31, 90)}  # name → (width, height)


def _missing_pieces() -> str | None:
    """Why the service can't be started from this tree yet (None once it can)."""
    missing = [p for p in ("service/app.py", "service/__main__.py") if not (REPO / p).exists()]
    try:
        from tests.models import write_conv_model  # noqa: F401
    except ImportError:
        missing.append("tests.models.write_conv_model")
    return f"service not built yet: missing {', '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[str]:
    if reason := _missing_pieces():
        pytest.skip(reason)
    from tests.models import write_conv_model

    model = write_conv_model(tmp_path / "conv.onnx")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_")}
    env.update(UNET_MODEL_PATH=str(model), UNET_HOST="127.0.0.1", UNET_PORT=str(port), UNET_PROVIDERS="cpu")
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_folder_of_pngs_comes_back_as_masks_of_the_same_sizes(service_url: str, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    images, out = tmp_path / "in", tmp_path / "out"
    for name, (width, height) in SIZES.items():
        write_png(images / name, width, height)
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(out), "--url", service_url,
         "--no-progress", "--concurrency", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 written" in proc.stderr
    for name, (width, height) in SIZES.items():
        mask = cv2.imdecode(np.frombuffer((out / name).read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask is not None, f"{name}: not a decodable PNG"
        assert mask.shape[:2] == (height, width), name
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.png", "b.png", "c.png"]
