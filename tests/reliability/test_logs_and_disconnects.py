"""Logs a client cannot forge, and clients that hang up: against real ``python -m service`` processes.

A request path arrives percent-decoded, so ``GET /livez%0A<a log line>`` carries a real line feed
to the access line; headers may carry obs-text bytes that decode to C1 controls. Neither may
produce a stand-alone line or a raw control byte in the log, in the plain or the JSON format.
A client that sends half a body and disconnects is a 499 at INFO, not a 500 with a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from service.log import PlainFormatter, escape
from tests.api import _images as im
from tests.api.test_auth_metrics import metric_or_zero as _count
from tests.server import Server, wait_until

#: What an attacker wants to see as its own line in the log.
FORGED = "2026-11-30 12:00:00,000 INFO service.access [-] GET /admin 200 1.0ms"
#: The forged line, percent-encoded behind a line feed, a carriage return and an ANSI colour code.
ATTACK_TARGET = "/livez%0A" + FORGED.replace(" ", "%20") + "%0D%1B[31mred%1B[0m%7F"
#: Control bytes that must never reach a log file (everything but the line feeds between records).
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes, return the raw answer (the server closes or answers one request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _attack(srv: Server, request_id: str) -> bytes:
    # A User-Agent with obs-text: 0x85 decodes (latin-1) to NEL, which str.splitlines splits on.
    head = (
        f"GET {ATTACK_TARGET} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
        "Connection: close\r\nUser-Agent: evil\x85agent\r\n\r\n"
    )
    return _raw(srv.port, head.encode("latin-1"))


def _wait_for(srv: Server, needle: str) -> str:
    """The server's log once ``needle`` is in it (each record is flushed as it is written)."""
    deadline = time.monotonic() + 60
    while needle not in (text := srv.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert needle in text, text[-3000:]
    return text


@pytest.fixture(scope="module")
def plain_server(start_server, conv_model: Path) -> Server:
    """The default log format (plain lines), as ``python -m service`` runs out of the box."""
    return start_server({"UNET_MODEL_PATH": str(conv_model)}).wait_ready()


def test_a_percent_encoded_line_feed_cannot_forge_a_plain_log_line(plain_server: Server) -> None:
    request_id = uuid.uuid4().hex
    answer = _attack(plain_server, request_id)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    text = _wait_for(plain_server, f"[{request_id}]")
    raw = plain_server.log_path.read_bytes()
    assert not RAW_CONTROL.search(raw), RAW_CONTROL.search(raw)
    for line in text.split("\n"):
        assert not line.startswith(FORGED[:30]), f"forged line in the log: {line!r}"
    (access,) = [line for line in text.split("\n") if f"[{request_id}]" in line]
    # The whole path is on the access line, escaped (and so readable and reversible).
    assert "GET /livez\\n" + FORGED + "\\r\\x1b[31mred\\x1b[0m\\x7f 404" in access


def test_json_logs_stay_one_valid_object_per_line_with_the_exact_path(server: Server) -> None:
    request_id = uuid.uuid4().hex
    _attack(server, request_id)
    _wait_for(server, request_id)
    raw = server.log_path.read_bytes()
    assert not RAW_CONTROL.search(raw), RAW_CONTROL.search(raw)
    records = [json.loads(line) for line in raw.decode().split("\n") if request_id in line]
    (access,) = [r for r in records if r["logger"] == "service.access"]
    assert access["path"] == "/livez\n" + FORGED + "\r\x1b[31mred\x1b[0m\x7f"
    assert access["user_agent"] == "evil\x85agent"
    assert access["status"] == 404


def test_a_traceback_quoting_a_line_feed_stays_inside_its_record() -> None:
    logger = logging.getLogger("tests.forge")
    formatter = PlainFormatter()
    try:
        raise ValueError("bad file name 'x\n" + FORGED + "'")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed on %s", ("a\x1bb",), exc_info=sys.exc_info()
        )
        record.request_id = "-"
        text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("failed on a\\x1bb")
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert any(FORGED in line for line in rest)
    assert not RAW_CONTROL.search(text.encode())


def test_escape_is_reversible_and_leaves_printable_text_alone() -> None:
    text = "C:\\models\\x.onnx\n\t\x1b\x85\u2028 µm ünïcödé"
    escaped = escape(text)
    assert "\n" not in escaped and "\x1b" not in escaped and "\u2028" not in escaped
    assert escaped.encode("latin-1", "backslashreplace").decode("unicode_escape") == text
    assert escape("plain text, µm and ü") == "plain text, µm and ü"


def _half_body(srv: Server, request_id: str, multipart: bool) -> None:
    body = im.png(im.blobs(128, 128, seed=5))
    if multipart:
        boundary = "b0undary"
        content_type = f"multipart/form-data; boundary={boundary}"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n"
        ).encode() + body + f"\r\n--{boundary}--\r\n".encode()
    else:
        content_type = "image/png"
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
        sock.sendall(head + body[: len(body) // 2])
    # Closed with half the declared body sent: the server sees the disconnect mid-upload.


@pytest.mark.parametrize("multipart", [False, True], ids=["raw-body", "multipart"])
def test_a_client_gone_mid_upload_is_a_499_at_info_without_traceback(server: Server, multipart: bool) -> None:
    before = server.client.get("/metrics").text
    request_id = uuid.uuid4().hex
    _half_body(server, request_id, multipart)
    _wait_for(server, request_id)
    records = [json.loads(line) for line in server.log().split("\n") if request_id in line]
    assert [(r["level"], r.get("status")) for r in records] == [("INFO", 499)], records
    assert not any("exc" in r for r in records)
    after = server.client.get("/metrics").text
    assert _count(after, "unet_http_requests_total", route="/segment", status="499") == (
        _count(before, "unet_http_requests_total", route="/segment", status="499") + 1
    )
    assert _count(after, "unet_http_requests_total", route="/segment", status="500") == _count(
        before, "unet_http_requests_total", route="/segment", status="500"
    )
    assert _count(after, "unet_client_disconnects_total", route="/segment", stage="upload") == (
        _count(before, "unet_client_disconnects_total", route="/segment", stage="upload") + 1
    )


def test_a_client_gone_while_segmenting_is_a_499_at_info_without_traceback(slow_server: Server) -> None:
    before = slow_server.client.get("/metrics").text
    log_start = len(slow_server.log())
    body = im.png(im.blobs(512, 512, seed=11))  # 64 tiles on the slow model
    request_id = uuid.uuid4().hex
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", slow_server.port), timeout=60)
    sock.sendall(head + body)
    # Wait until its tiles are being computed, then hang up.
    tiles_before = _count(before, "unet_tiles_total")
    get = slow_server.client.get
    wait_until(lambda: _count(get("/metrics").text, "unet_tiles_total") > tiles_before, "a tile run")
    sock.close()
    text = _wait_for(slow_server, request_id)
    lines = [line for line in text.split("\n") if request_id in line]
    assert len(lines) == 1 and " INFO service.access " in lines[0] and " 499 " in lines[0], lines
    assert "Traceback" not in text[log_start:] and " ERROR " not in text[log_start:]
    after = slow_server.client.get("/metrics").text
    assert _count(after, "unet_client_disconnects_total", route="/segment", stage="processing") == (
        _count(before, "unet_client_disconnects_total", route="/segment", stage="processing") + 1
    )
