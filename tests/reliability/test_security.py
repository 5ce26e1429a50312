"""Security properties of issue 6 that the API suite does not pin: no request names a file or a
model, hostile multipart file names stay inside the ZIP, the HTTP header section is bounded,
the API key is compared in constant time and never logged, limits are on by default."""

from __future__ import annotations

import inspect
import io
import json
import socket
import time
import zipfile
from pathlib import Path

import pytest

from service.routes import deps
from service.settings import Settings
from tests.api import _images as im
from tests.reliability.conftest import assert_problem, rss_mb
from tests.server import Server

PNG = im.png(im.blobs(40, 50))
RAW = {"Content-Type": "image/png"}
#: Words that would let a caller point the server at a file.
PATHLIKE = ("path", "file", "dir", "model", "url", "uri", "location")


def test_no_operation_takes_a_path_like_parameter(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    for route, operations in spec["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                name = param["name"].lower()
                if param["in"] == "path":
                    # the open-inference model NAME, matched against the loaded model's name, a
                    # problem type's slug, looked up in a fixed table: neither is used to open
                    # anything (test below); a job id, refused unless it is 32 hex digits before
                    # any path is built from it (service.jobs; tests/api/test_jobs.py); the name of
                    # a file a finished slide job wrote, served only from inside its result folder
                    # (routes.slide_jobs: first part result.ome.zarr or objects.csv, no '..', resolved
                    # under the job's folder; tests/api/test_slide_jobs.py tries to get out); a stored
                    # upload's id, refused unless it is 32 hex digits before any path is built from it
                    # (service.uploads; tests/unit/test_uploads.py, tests/api/test_stored_uploads.py)
                    assert (name == "name" and route.startswith("/v2/models/{name}")) or (
                        name == "slug" and route == "/problems/{slug}"
                    ) or (name == "job_id" and route.startswith("/jobs/{job_id}")) or (
                        name == "name" and route == "/jobs/{job_id}/files/{name}"
                    ) or (name == "upload_id" and route == "/uploads/{upload_id}"), route
                    continue
                assert not any(word in name for word in PATHLIKE), f"{method.upper()} {route}: {name}"


@pytest.mark.parametrize("route", ["/segment", "/segment/batch"])
@pytest.mark.parametrize("name", ["model_path", "model", "path", "file", "weights", "output_dir"])
def test_a_query_naming_a_file_or_model_is_refused(server: Server, route: str, name: str) -> None:
    field = "files" if route.endswith("batch") else "file"
    r = server.client.post(route, params={name: "/etc/passwd"}, files=[(field, ("a.png", PNG))])
    body = assert_problem(r, 422, "/problems/invalid-options")
    assert name in body["detail"] and "passwd" not in r.text


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2F..%2Fetc%2Fpasswd",
        "/v2/models/%2Fetc%2Fpasswd/ready",
        "/v2/models/conv.onnx",
        "/static/../service/settings.py",
        "/static/%2e%2e/%2e%2e/service/settings.py",
        "/static/..%2f..%2fpyproject.toml",
        "/problems/..%2F..%2Fpyproject.toml",
        "/problems/%2e%2e%2fservice%2fsettings.py",
    ],
)
def test_paths_cannot_reach_files_outside_the_static_folder(server: Server, path: str) -> None:
    r = server.client.get(path)
    assert_problem(r, 404)
    assert "BaseSettings" not in r.text and "[project]" not in r.text


@pytest.mark.parametrize(
    ("filename", "member"),
    [
        ("/etc/passwd", "passwd.png"),
        ("..\\..\\windows\\win.ini", "win.png"),
        ("C:\\temp\\cells.tif", "cells.png"),
        ("../../../../tmp/evil.png", "evil.png"),
        ("a\x00b.png", "a_00b.png"),
        ("....", "image-1.png"),
        ("..", "image-1.png"),
        ("/", "image-1.png"),
        ("manifest.json", "manifest.png"),
        (".hidden.png", "hidden.png"),
    ],
)
def test_batch_file_names_never_leave_the_zip_root(server: Server, filename: str, member: str) -> None:
    r = server.client.post("/segment/batch", files=[("files", (filename, PNG))])
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = archive.namelist()
    assert names == [member, "manifest.json"]
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert json.loads(archive.read("manifest.json"))["files"][0]["output"] == member


def test_an_endless_header_is_cut_off_without_memory_growth(server: Server) -> None:
    """uvicorn's default (httptools) parser buffered headers without bound; ``python -m service``
    uses h11 with a 64 KiB cap (service/__main__.py)."""
    assert server.client.get("/livez", headers={"X-Long": "a" * 30_000}).status_code == 200  # normal use
    before = rss_mb(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Bomb: ")
    sent, started = 0, time.monotonic()
    try:
        while sent < 50_000_000 and time.monotonic() - started < 10:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass  # the server closed the connection: what we want
    finally:
        sock.close()
    assert sent < 5_000_000, f"server accepted {sent / 1e6:.0f} MB of one header"
    assert rss_mb(server) - before < 20


def test_api_key_is_compared_in_constant_time() -> None:
    source = inspect.getsource(deps._check_key)
    assert "hmac.compare_digest(" in source
    assert "==" not in source.replace("is None", "")  # no short-circuit comparison of the key


def test_the_api_key_never_reaches_the_log_or_the_response(auth_server: Server) -> None:
    c = auth_server.client
    wrong = "guess-" + "x" * 20
    for headers in ({"X-API-Key": wrong}, {"Authorization": f"Bearer {wrong}"}, {"X-API-Key": "s3cret-key"}):
        r = c.post("/segment", content=PNG, headers={**RAW, **headers})
        assert "s3cret-key" not in r.text and wrong not in r.text
    time.sleep(0.2)  # the access log line is written after the response
    log = auth_server.log()
    assert "POST /segment 401" in log and "POST /segment 200" in log
    assert "s3cret-key" not in log and wrong not in log


def test_a_hostile_request_id_is_replaced_not_echoed(server: Server) -> None:
    for bad in ("x" * 200, 'a"b', "a b", "{json}", "ü"):
        r = server.client.get("/livez", headers={"X-Request-ID": bad.encode("utf-8")})
        assert r.headers["X-Request-ID"] != bad and len(r.headers["X-Request-ID"]) == 32


def test_limits_are_on_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("UNET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env file either
    s = Settings()
    assert s.max_upload_bytes == 256 * 1024 * 1024
    assert s.max_pixels == 8192 * 8192
    assert s.max_batch_files == 64
    assert s.max_tile_size == 2048
    assert s.max_queue_tiles == 64 and s.max_concurrent_requests == 8
    assert 0 < s.request_timeout_s <= 600
    assert s.api_key is None  # optional: documented in SECURITY.md as the operator's choice
