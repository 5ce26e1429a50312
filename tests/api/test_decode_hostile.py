"""Issue 15's hostile files against a real server: a 4xx problem on every route that decodes,
never a 500, and /livez answering while they are being processed.

The bytes are built in tests/hostile_images.py, each just over its limit (and small), so the
limits are proven to hold at the defaults, with the setting named in the problem's detail.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile

import httpx
import pytest

from tests import hostile_images as hostile
from tests.api import _images as im
from tests.api.test_errors import assert_problem
from tests.server import Server

#: name → (bytes, status, problem type, setting named in the detail) — over the default limits.
HOSTILE = {
    "chained-pages.tif": (hostile.tiff_chained_pages(10_001), 413, "/problems/too-many-pages",
                          "UNET_MAX_TIFF_PAGES"),
    "exif-bomb.jpg": (hostile.jpeg_exif_bomb(300, payload=1000), 413, "/problems/image-too-complex",
                      "UNET_MAX_METADATA_BYTES"),
    "chunk-bomb.png": (hostile.png_chunk_bomb(1_000), 413, "/problems/image-too-complex",
                       "UNET_MAX_IMAGE_SEGMENTS"),
    "idat-claims-2gb.png": (hostile.png_idat_claiming(0x7FFFFFFF), 400, "/problems/undecodable-image",
                            "IDAT chunk"),
}


def _segment(server: Server, name: str, data: bytes, **params) -> httpx.Response:
    return server.client.post("/segment", files={"file": (name, data)}, params=params)


def _probe(server: Server, name: str, data: bytes, **params) -> httpx.Response:
    return server.client.post("/probe", files={"file": (name, data)}, params=params)


def _preview(server: Server, name: str, data: bytes, **params) -> httpx.Response:
    return server.client.post("/ui/preview", content=data, params=params)


ROUTES = {"segment": _segment, "probe": _probe, "preview": _preview}


def test_the_hostile_files_are_what_they_claim() -> None:
    """Each starts as its format and is just over one default limit (so the tests prove the limit)."""
    assert HOSTILE["chained-pages.tif"][0][:4] == b"II*\x00"
    assert HOSTILE["exif-bomb.jpg"][0].count(b"Exif\x00\x00") == 300
    assert HOSTILE["chunk-bomb.png"][0].count(b"tEXt") == 1_000  # + IHDR = 1,001 chunks
    for name, (data, *_rest) in HOSTILE.items():
        assert len(data) < 1_500_000, name


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_4xx_problems_naming_the_limit(server: Server, route: str, name: str) -> None:
    data, status, type_, named = HOSTILE[name]
    body = assert_problem(ROUTES[route](server, name, data), status, type_)
    assert named in body["detail"]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_page_without_a_width_is_a_400_not_a_500(server: Server, route: str) -> None:
    data = hostile.tiff_pages_second_without_width()
    if route == "probe":  # reads the first page only: it describes the stack
        assert _probe(server, "nowidth.tif", data).json()["planes"] == {"Z": 2}
        return
    body = assert_problem(ROUTES[route](server, "nowidth.tif", data, z=1), 400, "/problems/undecodable-image")
    assert "page 1" in body["detail"]
    assert ROUTES[route](server, "nowidth.tif", data, z=0).status_code == 200


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_pillows_page_count_error_is_not_a_500(server: Server, route: str) -> None:
    """Pillow's n_frames raised TypeError on this file (a 2-page TIFF, second IFD without width)."""
    r = ROUTES[route](server, "nowidth-1x1.tif", hostile.tiff_second_page_without_width())
    assert r.status_code < 500, r.text


def test_one_hostile_file_does_not_fail_the_batch(server: Server) -> None:
    good = im.png(im.blobs(40, 50))
    files = [("good-1.png", good)] + [(name, data) for name, (data, *_) in HOSTILE.items()] + [
        ("nowidth.tif", hostile.tiff_pages_second_without_width()), ("good-2.png", good)]
    r = server.client.post("/segment/batch", files=[("files", f) for f in files], params={"z": 1})
    assert r.status_code == 200, r.text
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    got = {e["file"]: (e["status"], (e["problem"] or {}).get("type")) for e in manifest["files"]}
    # z=1 is outside a single-plane PNG: a 422 per file, not a failed batch
    assert got["good-1.png"][0] == got["good-2.png"][0] == 422
    for name, (_, status, type_, _) in HOSTILE.items():
        assert got[name] == (status, type_), name
    assert got["nowidth.tif"] == (400, "/problems/undecodable-image")
    r = server.client.post("/segment/batch", files=[("files", f) for f in files])
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    assert [e["status"] for e in manifest["files"]] == [200, 413, 413, 413, 400, 422, 200]


def test_livez_answers_while_hostile_uploads_are_processed(server: Server) -> None:
    """Four clients send the hostile files over and over; /livez is asked meanwhile and must
    answer 200 every time, with at least some answers arriving while uploads are in flight."""
    in_flight = 0
    lock = threading.Lock()
    statuses: list[int] = []

    def attack(name: str) -> None:
        nonlocal in_flight
        data = HOSTILE[name][0]
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for _ in range(6):
                with lock:
                    in_flight += 1
                try:
                    statuses.append(client.post("/segment", files={"file": (name, data)}).status_code)
                finally:
                    with lock:
                        in_flight -= 1

    threads = [threading.Thread(target=attack, args=(name,)) for name in HOSTILE]
    for thread in threads:
        thread.start()
    live: list[tuple[int, bool]] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        while any(t.is_alive() for t in threads):
            with lock:
                busy_before = in_flight > 0
            status = client.get("/livez").status_code
            with lock:
                live.append((status, busy_before and in_flight > 0))
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) == [400, 413] and len(statuses) == 6 * len(HOSTILE)
    assert live and all(status == 200 for status, _ in live), live
    assert any(during for _, during in live), "no /livez answer overlapped an upload"


def test_the_tiny_images_in_this_module_still_segment(server: Server) -> None:
    """The small valid files the hostile ones are built from are accepted: the limits are not
    what refuses them."""
    assert _segment(server, "ok.png", hostile.small_png(32)).status_code == 200
    assert _segment(server, "ok.jpg", hostile.small_jpeg(32)).status_code == 200
    assert _probe(server, "ok.tif", hostile.tiff_chained_pages(3)).json()["planes"] == {"Z": 3}
    preview = _preview(server, "ok.png", hostile.small_png(32))
    assert im.decode(preview.content).shape[:2] == (32, 32)
