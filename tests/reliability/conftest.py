"""Reliability and security tests (issue 6) against REAL servers, reusing the API suite's fixtures.

The server processes, tiny models and the "server still healthy after every test" check come
from ``tests/api/conftest.py`` (imported, not copied: one definition of how a test server runs).
Session-scoped fixtures are per conftest directory, so this suite starts its own main server.
What lives here is only what the API suite does not need: the server's memory, and problem
assertions shared by the modules below.
"""

from __future__ import annotations

import psutil
import pytest

from tests.api.conftest import (  # noqa: F401 - fixtures re-exported for this directory
    _server_stays_healthy,
    auth_server,
    conv_model,
    server,
    slow_model,
    slow_server,
    start_server,
)
from tests.api.test_errors import assert_problem  # noqa: F401 - shared by the modules here
from tests.server import Server


def rss_mb(srv: Server) -> float:
    """Resident memory of the server process, MB."""
    return psutil.Process(srv.proc.pid).memory_info().rss / 1e6


@pytest.fixture
def healthy():
    """``healthy(server)``: the process is up, ready, and still segments a small image."""
    from tests.api import _images as im

    small = im.png(im.blobs(48, 40, seed=99))

    def check(srv: Server) -> None:
        assert srv.proc.poll() is None, srv.log()
        assert srv.client.get("/livez").status_code == 200
        assert srv.client.get("/readyz").status_code == 200
        r = srv.client.post("/segment", content=small, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text

    return check

