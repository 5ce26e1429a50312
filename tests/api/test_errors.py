"""Bad input → the documented 4xx as RFC 9457 problem JSON, never a 500; the server stays healthy
(checked after every test by the ``_server_stays_healthy`` fixture)."""

from __future__ import annotations

import httpx
import pytest

from tests.api import _images as im
from tests.api.conftest import MAX_UPLOAD_BYTES, Server

PNG = im.png(im.blobs(64, 64))


def assert_problem(r: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    assert body["title"] and "detail" in body
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert body["instance"] == f"urn:request:{body['request_id']}"
    if type_:
        assert body["type"] == type_
    return body


@pytest.mark.parametrize(
    ("body", "content_type", "status", "type_"),
    [
        (b"", "image/png", 400, "/problems/undecodable-image"),
        (b"hello, I am text", "image/png", 400, "/problems/undecodable-image"),
        (PNG[: len(PNG) // 2], "image/png", 400, "/problems/undecodable-image"),
        (im.png_bomb(), "image/png", 413, "/problems/image-too-large"),
        (im.gif(), "image/gif", 415, "/problems/unsupported-image-type"),
        (PNG, "text/plain", 415, "/problems/unsupported-media-type"),
    ],
)
def test_bad_raw_bodies(server: Server, body: bytes, content_type: str, status: int, type_: str) -> None:
    r = server.client.post("/segment", content=body, headers={"Content-Type": content_type})
    assert_problem(r, status, type_)


def test_decompression_bomb_is_refused_from_the_header(server: Server) -> None:
    body = assert_problem(server.client.post("/segment", files={"file": ("bomb.png", im.png_bomb())}), 413)
    assert "100000" in body["detail"] or "10,000,000,000" in body["detail"]


def test_multipart_text_file_and_missing_file(server: Server) -> None:
    r = server.client.post("/segment", files={"file": ("x.png", b"not an image", "image/png")})
    assert_problem(r, 400)
    r = server.client.post("/segment", files={"other": ("x.png", PNG, "image/png")})
    assert_problem(r, 422)
    r = server.client.post("/segment", data={"file": "just a string"}, files={"x": ("x.png", PNG)})
    assert_problem(r, 422)  # 'file' is a text field, not a file
    r = server.client.post("/segment", data={"file": "just a string"})  # url-encoded form
    assert_problem(r, 415)


@pytest.mark.parametrize(
    "params",
    [
        {"treshold": 0.3},  # misspelt
        {"threshold": 1.5},
        {"threshold": "abc"},
        {"output": "jpeg"},
        {"bits": 12},
        {"tile_size": 100_000},
        {"tile_size": 8},
        {"tile_size": 64, "overlap": 40},
        {"overlap": -1},
    ],
)
def test_bad_options_are_422_naming_the_option(server: Server, params: dict) -> None:
    r = server.client.post("/segment", params=params, content=PNG, headers={"Content-Type": "image/png"})
    body = assert_problem(r, 422, "/problems/invalid-options")
    assert any(name in body["detail"] for name in params)


@pytest.mark.parametrize("route", ["/segment", "/segment/batch"])
def test_an_option_given_twice_is_422_not_one_of_its_values(server: Server, route: str) -> None:
    field = "files" if route.endswith("batch") else "file"
    twice = [("channel", "0"), ("channel", "1")]
    r = server.client.post(route, params=twice, files=[(field, ("a.png", PNG))])
    body = assert_problem(r, 422, "/problems/invalid-options")
    assert "channel" in body["detail"] and "more than once" in body["detail"]


def test_body_over_the_limit_by_content_length(server: Server) -> None:
    big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    assert_problem(server.client.post("/segment", content=big, headers={"Content-Type": "image/png"}), 413)


def test_body_over_the_limit_while_streaming(server: Server) -> None:
    def chunks():  # no Content-Length: chunked transfer encoding
        for _ in range(MAX_UPLOAD_BYTES // 65536 + 2):
            yield b"\0" * 65536

    r = server.client.post("/segment", content=chunks(), headers={"Content-Type": "image/png"})
    assert_problem(r, 413)


def test_image_over_the_pixel_limit(server: Server) -> None:
    wide = im.png(im.blobs(1000, 2100))  # 2.1 MP > 2 MP limit, small file
    assert_problem(
        server.client.post("/segment", content=wide, headers={"Content-Type": "image/png"}),
        413,
        "/problems/image-too-large",
    )


def test_unknown_route_and_wrong_method_are_problems(server: Server) -> None:
    assert_problem(server.client.get("/nope"), 404)
    assert_problem(server.client.get("/segment"), 405)


def test_batch_without_files_and_with_a_raw_body(server: Server) -> None:
    assert_problem(server.client.post("/segment/batch", files={"file": ("a.png", PNG)}), 422)
    assert_problem(
        server.client.post("/segment/batch", content=PNG, headers={"Content-Type": "image/png"}), 415
    )
