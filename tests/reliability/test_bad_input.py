"""Issue 6's bad-input matrix, through a real ``python -m service``: what the API suite
(``tests/api/test_errors.py``) does not already send.

Each input gets its documented answer — a 200 PNG of the input's height × width for every image
the service accepts, or the documented 4xx as problem JSON — and the server is healthy afterwards
(the ``_server_stays_healthy`` fixture, imported from the API suite, checks after every test).

Policy pinned here: a multi-page TIFF or a 3-D stack (ImageJ hyperstack, tifffile ``(Z, H, W)``,
Pillow pages) is a 422 naming its planes unless the request says ``z=`` or ``project=max``; ``z=0``
is its first page (``service/microscopy.py``). Pages whose axes cannot be known are a 415.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.api import _images as im
from tests.reliability.conftest import assert_problem, rss_mb
from tests.server import Server

GRAY = im.blobs(40, 50, seed=4)
GRAY16 = im.blobs(40, 50, seed=4, dtype=np.uint16)


def pil(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def tiff_stack(stack: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, stack, **options)
    return out.getvalue()


def segment(server: Server, name: str, data: bytes, **params):
    return server.client.post("/segment", params=params, files={"file": (name, data)})


#: Accepted images: (name, bytes, expected (H, W)).
ACCEPTED = [
    ("1x1.png", im.png(np.array([[200]], np.uint8)), (1, 1)),
    ("1xN.png", im.png(im.blobs(1, 300)), (1, 300)),
    ("Nx1.png", im.png(np.ascontiguousarray(im.blobs(300, 2)[:, :1])), (300, 1)),
    ("flat.png", im.png(np.full((33, 35), 7, np.uint8)), (33, 35)),
    ("gray16.png", im.png(GRAY16), (40, 50)),
    ("float32.tif", im.tiff(GRAY.astype(np.float32) / 255), (40, 50)),
    ("float32-nan-inf.tif", im.tiff(np.where(GRAY > 128, np.nan, np.where(GRAY > 64, np.inf, 1.0))
                                    .astype(np.float32)), (40, 50)),
    ("int32-negative.tif", pil(Image.fromarray(GRAY.astype(np.int32) - 100), "TIFF"), (40, 50)),
    ("palette.png", pil(Image.fromarray(GRAY).convert("P"), "PNG"), (40, 50)),
    ("palette-transparent.png", pil(Image.fromarray(GRAY).convert("P"), "PNG", transparency=0), (40, 50)),
    ("cmyk.jpg", pil(Image.fromarray(np.dstack([GRAY] * 3)).convert("CMYK"), "JPEG"), (40, 50)),
    ("rgba.png", im.png(np.dstack([GRAY] * 4)), (40, 50)),
    ("rgba16.png", im.png(np.dstack([GRAY16] * 4)), (40, 50)),
    ("gray-alpha.png", pil(Image.fromarray(GRAY).convert("LA"), "PNG"), (40, 50)),
    ("one-bit.png", pil(Image.fromarray(GRAY > 100), "PNG"), (40, 50)),
    ("bmp.bmp", pil(Image.fromarray(GRAY), "BMP"), (40, 50)),
    ("float64.tif", tiff_stack(GRAY.astype(np.float64)), (40, 50)),  # tifffile reads it (MATLAB's default)
]


@pytest.mark.parametrize(("name", "data", "shape"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
@pytest.mark.parametrize("output", ["mask", "labels", "overlay"])
def test_every_accepted_kind_gives_a_png_of_the_input_size(
    server: Server, name: str, data: bytes, shape: tuple[int, int], output: str
) -> None:
    r = segment(server, name, data, output=output)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert im.decode(r.content).shape[:2] == shape
    assert int(r.headers["X-Image-Pixels"]) == shape[0] * shape[1]


@pytest.mark.parametrize(
    ("stack", "first_page"),
    [
        (pil(Image.fromarray(GRAY), "TIFF", save_all=True, append_images=[Image.fromarray(~GRAY)]), GRAY),
        (tiff_stack(np.stack([GRAY, 255 - GRAY, GRAY[::-1]]), imagej=True, metadata={"axes": "ZYX"}), GRAY),
        (tiff_stack(np.stack([GRAY16, 65535 - GRAY16]), photometric="minisblack"), GRAY16),
        (tiff_stack(np.stack([GRAY16] * 5)), GRAY16),
    ],
    ids=["pillow-multipage", "imagej-zstack", "tifffile-zyx", "tifffile-5-pages"],
)
def test_a_stack_needs_a_plane_and_z0_is_its_first_page(
    server: Server, stack: bytes, first_page: np.ndarray
) -> None:
    body = assert_problem(segment(server, "stack.tif", stack), 422, "/problems/choose-plane")
    planes = body["choices"]["planes"]["Z"]
    assert planes > 1 and f"z=0..{planes - 1}" in body["detail"]
    first = segment(server, "first.tif", im.tiff(first_page), output="probability")
    chosen = segment(server, "stack.tif", stack, output="probability", z=0)
    assert chosen.status_code == 200, chosen.text
    assert np.array_equal(im.decode(chosen.content), im.decode(first.content))


def test_pages_whose_axes_cannot_be_known_are_415(server: Server) -> None:
    data = tiff_stack(np.zeros((2, 3, 40, 50), np.uint8), photometric="minisblack")  # axes QQYX
    body = assert_problem(segment(server, "tczyx.tif", data, z=0), 415, "/problems/unsupported-image-type")
    assert "ImageJ or OME" in body["detail"]


def test_float_nan_and_inf_pixels_do_not_poison_the_image(server: Server) -> None:
    clean = GRAY.astype(np.float32)
    dirty = clean.copy()
    dirty[0, :5] = np.nan
    dirty[1, :5] = np.inf
    probs = [
        im.decode(segment(server, "x.tif", im.tiff(a), output="probability").content) for a in (clean, dirty)
    ]
    assert (probs[0] == probs[1]).mean() > 0.9  # a few bad pixels change a few outputs, not all


def _patched_tiff_size(width: int, height: int) -> bytes:
    """A small valid little-endian TIFF whose ImageWidth/ImageLength tags are rewritten."""
    data = bytearray(im.tiff(GRAY))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, value)
    return bytes(data)


def _patched_jpeg_size(width: int, height: int) -> bytes:
    data = bytearray(im.jpeg_rgb(40, 50))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("png-100000x100000", im.png_bomb()),
        ("png-1x2000000000", im.png_bomb(1, 2_000_000_000)),
        ("jpeg-65000x65000", _patched_jpeg_size(65000, 65000)),
        ("tiff-65000x65000", _patched_tiff_size(65000, 65000)),
    ],
)
def test_header_bombs_are_413_before_any_pixel_buffer(server: Server, name: str, data: bytes) -> None:
    server.client.get("/readyz")
    before = rss_mb(server)
    for _ in range(3):
        body = assert_problem(segment(server, f"{name}.img", data), 413, "/problems/image-too-large")
        assert "pixels" in body["detail"]
    grown = rss_mb(server) - before
    # The smallest claim here is 2e9 pixels (2 GB as uint8, 8 GB as float32); the server's
    # resident memory must not notice (allocator noise is a few MB).
    assert grown < 20, f"RSS grew {grown:.1f} MB on a header that claims {name}"


@pytest.mark.parametrize(
    ("name", "data", "type_"),
    [
        ("zero-byte.png", b"", "/problems/undecodable-image"),
        ("random.png", np.random.default_rng(0).bytes(4096), "/problems/undecodable-image"),
        ("truncated.jpg", im.jpeg_rgb(40, 50)[:300], "/problems/undecodable-image"),
        ("truncated.tif", im.tiff(GRAY)[:500], "/problems/undecodable-image"),
        ("animated.gif", im.gif(), "/problems/unsupported-image-type"),
    ],
)
def test_undecodable_multipart_files_are_problems(server: Server, name: str, data: bytes, type_: str) -> None:
    status = 415 if "unsupported" in type_ else 400
    body = assert_problem(segment(server, name, data), status, type_)
    assert body["detail"]


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("/segment", {"threshold": "nan"}),
        ("/segment", {"threshold": "inf"}),
        ("/segment", {"threshold": 0}),
        ("/segment", {"threshold": 1}),
        ("/segment", {"threshold": -0.1}),
        ("/segment", {"tile_size": 0}),
        ("/segment", {"tile_size": 17}),  # the model's overlap (24) does not fit a 17 px tile
        ("/segment", {"tile_size": "1e3"}),
        ("/segment", {"output": ""}),
        ("/segment/batch", {"threshold": 2}),
        ("/segment/batch", {"tile_size": 100_000}),
        ("/segment/batch", {"bits": 12}),
        ("/segment/batch", {"colour": "red"}),
    ],
)
def test_out_of_range_and_unknown_options_are_422_on_both_routes(
    server: Server, route: str, params: dict
) -> None:
    field = "files" if route.endswith("batch") else "file"
    r = server.client.post(route, params=params, files=[(field, ("a.png", im.png(GRAY)))])
    body = assert_problem(r, 422, "/problems/invalid-options")
    # the detail names the option, or at least the value it refuses
    assert any(name in body["detail"] or str(value) in body["detail"] for name, value in params.items())


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"files": [("file", ("a.png", im.png(GRAY))), ("file", ("b.png", im.png(GRAY)))]}, 400),
        ({"data": {f"k{i}": "v" for i in range(20)}, "files": {"file": ("a.png", im.png(GRAY))}}, 400),
        ({"content": b"--x\r\nnot multipart", "headers": {"Content-Type": "multipart/form-data"}}, 400),
        ({"content": b"--x\r\nnot multipart", "headers": {"Content-Type": "multipart/form-data; boundary=y"}},
         400),
        ({"content": b'--y\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG',
          "headers": {"Content-Type": "multipart/form-data; boundary=y"}}, 422),
    ],
    ids=["two-files", "too-many-fields", "no-boundary", "wrong-boundary", "unterminated-part"],
)
def test_malformed_multipart_is_a_4xx_problem(server: Server, kwargs: dict, status: int) -> None:
    assert_problem(server.client.post("/segment", **kwargs), status)


def test_batch_keeps_the_good_files_whatever_is_wrong_with_the_bad_ones(server: Server) -> None:
    files = [
        ("good-1.png", im.png(GRAY), 200, None),
        ("empty.png", b"", 400, "/problems/undecodable-image"),
        ("bomb.png", im.png_bomb(), 413, "/problems/image-too-large"),
        ("good-2.tif", im.tiff(GRAY16), 200, None),
        ("truncated.jpg", im.jpeg_rgb(40, 50)[:300], 400, "/problems/undecodable-image"),
        ("anim.gif", im.gif(), 415, "/problems/unsupported-image-type"),
        ("stack.tif", tiff_stack(np.stack([GRAY] * 3), imagej=True), 422, "/problems/choose-plane"),
    ]
    r = server.client.post("/segment/batch", files=[("files", (n, d)) for n, d, _, _ in files])
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    manifest = json.loads(archive.read("manifest.json"))
    assert (manifest["succeeded"], manifest["failed"]) == (2, 5)
    for entry, (name, _, status, type_) in zip(manifest["files"], files, strict=True):
        assert (entry["file"], entry["status"]) == (name, status)
        if status == 200:
            assert im.decode(archive.read(entry["output"])).shape == (40, 50)
        else:
            assert entry["output"] is None and entry["problem"]["type"] == type_


def test_batch_over_the_file_limit_is_a_problem(server: Server) -> None:
    tiny = cv2.imencode(".png", np.zeros((2, 2), np.uint8))[1].tobytes()
    files = [("files", (f"{k}.png", tiny)) for k in range(65)]  # UNET_MAX_BATCH_FILES default 64
    body = assert_problem(server.client.post("/segment/batch", files=files), 400)
    assert "64" in body["detail"]
