"""API tests run against REAL servers: ``python -m service`` / uvicorn subprocesses on loopback ports.

Each server gets its settings through ``UNET_*`` environment variables, exactly as a deployment
does, and a tiny ONNX model from ``tests/models.py`` so a request takes milliseconds. Servers
are session-scoped where tests only read from them; tests that kill or starve a server start
their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api._images import write_slow_model
from tests.models import write_conv_model
from tests.server import Server

#: Limits of the main test server: small so that 413s are cheap to provoke.
MAX_UPLOAD_BYTES = 3_000_000
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="session")
def conv_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mini U-Net: tile 64, overlap 24, margin 8, divisor 2 — tiles, padding and blending all matter."""
    return write_conv_model(tmp_path_factory.mktemp("models") / "conv.onnx", seed=1)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A heavy conv stack: ~12 ms per tile on one core, so requests last long enough to interrupt."""
    return write_slow_model(tmp_path_factory.mktemp("models") / "slow.onnx")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: ``start_server(env, module=True)`` → a live :class:`Server`, stopped at session end."""
    servers: list[Server] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(env: dict[str, str], module: bool = True) -> Server:
        server = Server(env, logs / f"server-{len(servers)}.log", module=module)
        servers.append(server)
        return server.wait_live()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server, conv_model: Path) -> Server:
    """The main server: ``python -m service``, no API key, small upload and pixel limits."""
    return start_server(
        {
            "UNET_MODEL_PATH": str(conv_model),
            "UNET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            "UNET_MAX_PIXELS": str(MAX_PIXELS),
            "UNET_MAX_TILE_SIZE": "1024",
            "UNET_LOG_JSON": "true",
        }
    ).wait_ready()


@pytest.fixture(scope="session")
def slow_server(start_server, slow_model: Path) -> Server:
    """The slow model, one tile per run and a queue of ONE tile: easy to overload, and a request
    lasts long enough (~12 ms per tile) to be cancelled mid-way. Started with ``uvicorn service.app:app``.
    No prediction cache: its tests wait for a request's tiles to run, whatever was sent before."""
    return start_server(
        {
            "UNET_MODEL_PATH": str(slow_model),
            "UNET_MAX_BATCH_SIZE": "1",
            "UNET_MAX_QUEUE_TILES": "1",
            "UNET_MAX_CONCURRENT_REQUESTS": "64",
            "UNET_PREDICTION_CACHE_MB": "0",
        },
        module=False,
    ).wait_ready()


@pytest.fixture(scope="session")
def auth_server(start_server, conv_model: Path) -> Server:
    return start_server(
        {
            "UNET_MODEL_PATH": str(conv_model),
            "UNET_API_KEY": "s3cret-key",
            "UNET_AUTH_EXEMPT_METRICS": "false",
        }
    ).wait_ready()


@pytest.fixture(autouse=True)
def _server_stays_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the main server, it still answers and is ready."""
    yield
    if "server" in request.fixturenames:
        srv: Server = request.getfixturevalue("server")
        assert srv.proc.poll() is None, srv.log()
        assert srv.client.get("/readyz").status_code == 200
