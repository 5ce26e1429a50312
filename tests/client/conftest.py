"""A stand-in for the segmentation service: stdlib HTTP on loopback, scripted per test.

It speaks the service's contract (``POST /segment?output=KIND`` with raw image bytes → PNG, RFC 9457
problem JSON on errors; GET and DELETE where a test scripts a job's life) and records every request,
so tests can pin exactly what the client sent.
"""

from __future__ import annotations

import http.server
import json
import struct
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(width: int, height: int, value: int = 0) -> bytes:
    """A valid 8-bit grey PNG of the given size, every pixel ``value`` (stdlib only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([value]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    return struct.unpack(">II", data[16:24])


def write_png(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(width, height, value=128))
    return path


@dataclass
class Request:
    server: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    method: str = "POST"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncate_to: int | None = None  # send only this many body bytes, then drop the connection
    delay_s: float = 0.0


def problem(status: int, title: str, detail: str) -> Reply:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return Reply(status, {"Content-Type": "application/problem+json"}, body.encode())


def segment_like_the_service(request: Request) -> Reply:
    """A mask of the upload's size for a PNG; 415 problem JSON for anything else."""
    if not request.body.startswith(PNG_SIGNATURE):
        return problem(415, "Unsupported Media Type", "the body is not a PNG, TIFF, JPEG or BMP image")
    width, height = png_size(request.body)
    headers = {"X-Object-Count": "2", "X-Image-Pixels": str(width * height)}
    output = request.query.get("output", ["mask"])[0]
    if output == "objects":  # two objects, areas = width and height (px)
        table = f"id,centroid_x,centroid_y,area\n1,1.0,1.0,{width}\n2,3.0,3.0,{height}\n"
        return Reply(200, {**headers, "Content-Type": "text/csv"}, table.encode())
    if output == "geojson":  # two squares, sides 2 and 4 px; only the first carries its measurement
        def square(side: int, area: int | None) -> dict:
            ring = [[0, 0], [side, 0], [side, side], [0, side], [0, 0]]
            measurements = {"Area px^2": area} if area is not None else {}
            return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"objectType": "detection", "measurements": measurements}}

        collection = {"type": "FeatureCollection", "features": [square(2, 4), square(4, None)]}
        body = json.dumps(collection).encode()
        return Reply(200, {**headers, "Content-Type": "application/geo+json"}, body)
    if output == "labels" and width * height > 400:  # stands in for "past 65535 objects"
        return Reply(200, {**headers, "Content-Type": "image/tiff"}, b"II*\x00 a 32-bit label TIFF")
    return Reply(200, {**headers, "Content-Type": "image/png"}, png_bytes(width, height, 255))


class StandIn:
    """One stand-in server; ``behaviour(request) -> Reply`` may be swapped by the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Request] = []
        self.behaviour: Callable[[Request], Reply] = segment_like_the_service
        self._lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real service

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer()

            def do_GET(self) -> None:  # noqa: N802 - polling a job, fetching its result
                self._answer()

            def do_DELETE(self) -> None:  # noqa: N802 - deleting a job
                self._answer()

            def _answer(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request(standin.name, url.path, urllib.parse.parse_qs(url.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body, self.command)
                with standin._lock:
                    standin.requests.append(request)
                reply = standin.behaviour(request)
                if reply.delay_s:
                    threading.Event().wait(reply.delay_s)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    if reply.truncate_to is None:
                        self.wfile.write(reply.body)
                    else:
                        self.wfile.write(reply.body[: reply.truncate_to])
                        self.close_connection = True
                except OSError:
                    self.close_connection = True  # the client gave up (its timeout): fine

            def log_message(self, *args: object) -> None:
                pass  # keep test output clean

        return Handler

    def close(self) -> None:
        """Stop serving; the port then refuses connections (idempotent)."""
        if self._thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def standin() -> Iterator[Callable[[str], StandIn]]:
    """Factory: ``standin("a")`` starts a server; all are shut down after the test."""
    servers: list[StandIn] = []

    def start(name: str = "server") -> StandIn:
        servers.append(StandIn(name))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real service (``python -m service``) on the bundled model, one per test module."""
    from tests.python_api.conftest import BUNDLED_MODEL
    from tests.server import Server

    logs = tmp_path_factory.mktemp("service")
    server = Server({"UNET_MODEL_PATH": str(BUNDLED_MODEL), "UNET_INTRA_OP_THREADS": "2"}, logs / "log")
    try:
        yield server.wait_ready(120).url
    finally:
        server.stop()
