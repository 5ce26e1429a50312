"""imaging: decode real bytes of every supported kind, reject bad ones, encode PNG."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from service import imaging
from service.imaging import (
    ImageTooLarge,
    UndecodableImage,
    UnsupportedImageType,
    check_pixels,
    decode,
    encode_png,
    probe,
    to_display_rgb,
)

LIMIT = 10_000_000
RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (37, 53), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
FLOAT = RNG.normal(size=(37, 53)).astype(np.float32)


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width×height, with a tiny IDAT: a 'bomb'."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("fmt", "array", "options"),
    [
        ("PNG", GRAY8, {}),
        ("PNG", GRAY16, {}),
        ("PNG", RGB8, {}),
        ("TIFF", GRAY8, {}),
        ("TIFF", GRAY16, {}),
        ("TIFF", FLOAT, {}),
        ("TIFF", RGB8, {"compression": "tiff_lzw"}),
        ("BMP", RGB8, {}),
        ("BMP", GRAY8, {}),
    ],
    ids=["png8", "png16", "png-rgb", "tif8", "tif16", "tif-float", "tif-rgb-lzw", "bmp-rgb", "bmp-gray"],
)
def test_lossless_round_trip(fmt, array, options):
    data = pil_bytes(Image.fromarray(array), fmt, **options)
    decoded = decode(data, LIMIT)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)  # also pins RGB (not BGR) channel order


def test_rgba_png_keeps_alpha_in_rgba_order():
    rgba = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode(pil_bytes(Image.fromarray(rgba), "PNG"), LIMIT), rgba)


def test_palette_png_and_bmp_are_expanded_to_rgb():
    palette_image = Image.fromarray(RGB8).convert("P")
    expected = np.asarray(palette_image.convert("RGB"))
    for fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(decode(pil_bytes(palette_image, fmt), LIMIT), expected)
    with_alpha = decode(pil_bytes(palette_image, "PNG", transparency=0), LIMIT)
    assert with_alpha.shape == (37, 53, 4)


def test_one_bit_png_is_0_or_255():
    decoded = decode(pil_bytes(Image.fromarray(GRAY8 > 127), "PNG"), LIMIT)
    np.testing.assert_array_equal(decoded, np.where(GRAY8 > 127, 255, 0).astype(np.uint8))


def test_jpeg_and_cmyk_jpeg():
    # a smooth colour image (JPEG's chroma subsampling would blur per-pixel noise)
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.dstack([xx * 255 // 159, yy * 255 // 119, 255 - xx * 255 // 159]).astype(np.uint8)
    data = pil_bytes(Image.fromarray(rgb), "JPEG", quality=95)
    decoded = decode(data, LIMIT)
    assert decoded.shape == (120, 160, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).mean() < 2  # RGB order, not BGR
    cmyk = pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert probe(cmyk).mode == "CMYK"
    reference = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))
    decoded = decode(cmyk, LIMIT)
    assert decoded.shape == (120, 160, 3)
    assert np.abs(decoded.astype(int) - reference).max() <= 2


def test_multipage_tiff_decodes_the_first_page():
    pages = [Image.fromarray(GRAY16), Image.fromarray(GRAY16[::-1].copy())]
    data = pil_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert probe(data).pages == 2
    np.testing.assert_array_equal(decode(data, LIMIT), GRAY16)


def test_float_tiff_with_nan_decodes():
    data = FLOAT.copy()
    data[0, 0] = np.nan
    decoded = decode(pil_bytes(Image.fromarray(data), "TIFF"), LIMIT)
    assert decoded.dtype == np.float32 and np.isnan(decoded[0, 0])


def test_probe_reads_the_header():
    info = probe(pil_bytes(Image.fromarray(GRAY16), "PNG"))
    assert (info.format, info.width, info.height, info.pages, info.dtype) == ("PNG", 53, 37, 1, "uint16")


def test_header_bomb_is_rejected_before_allocation():
    bomb = png_header_only(100_000, 100_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge) as caught:
            decode(bomb, 100_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.pixels == 10**10 and caught.value.limit == 100_000_000
    assert peak < 5_000_000  # a decoded image would need 10 GB
    with pytest.raises(ImageTooLarge):
        check_pixels(probe(bomb), 10**9)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is text named .png", bytes(RNG.integers(0, 256, 4096, dtype=np.uint8))],
    ids=["empty", "text", "random"],
)
def test_garbage_is_undecodable(data):
    with pytest.raises(UndecodableImage):
        decode(data, LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_files_are_undecodable(fmt):
    big = np.asarray(Image.fromarray(RGB8).resize((256, 256)))
    data = pil_bytes(Image.fromarray(big), fmt)
    with pytest.raises(UndecodableImage) as caught:
        decode(data[: len(data) * 2 // 3], LIMIT)
    assert fmt in str(caught.value) or "truncated" in str(caught.value) or "cannot" in str(caught.value)


def test_other_formats_are_unsupported():
    with pytest.raises(UnsupportedImageType, match="GIF"):
        decode(pil_bytes(Image.fromarray(RGB8).convert("P"), "GIF"), LIMIT)


def test_errors_form_a_hierarchy_of_value_errors():
    for cls in (UndecodableImage, UnsupportedImageType, ImageTooLarge):
        assert issubclass(cls, imaging.ImageError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("array", [GRAY8, GRAY16, RGB8, GRAY8[:, :, None]], ids=["u8", "u16", "rgb", "hw1"])
def test_encode_png_round_trips(array):
    data = encode_png(array)
    decoded = decode(data, LIMIT)
    np.testing.assert_array_equal(decoded, array.reshape(decoded.shape))
    # other readers see the same pixels (and RGB, not BGR)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array.reshape(decoded.shape))


def test_encode_png_rejects_float():
    with pytest.raises(TypeError):
        encode_png(FLOAT)


def test_display_rgb_stretches_dim_16_bit():
    dim = (GRAY16 // 64).astype(np.uint16)  # uses only the bottom 10 bits
    rgb = to_display_rgb(dim)
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8
    assert rgb.max() == 255 and rgb.min() == 0
    assert np.array_equal(rgb[..., 0], rgb[..., 1])
    assert to_display_rgb(FLOAT).dtype == np.uint8
    assert to_display_rgb(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)


def test_opencv_log_is_silenced():
    assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT


def _rle8_bmp(width: int = 64, height: int = 32, bit_count: int = 8) -> bytes:
    """A palette BMP with RLE8-compressed rows (two runs per row), written byte by byte."""
    rows = b"".join(bytes([width // 2, y % 4, width // 2, (y + 1) % 4]) + b"\x00\x00" for y in range(height))
    rows += b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes([min(255, 60 * i)] * 3 + [0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bit_count, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def test_an_rle_compressed_bmp_is_decoded_by_opencv() -> None:
    image = imaging.decode(_rle8_bmp(), 10**6)
    assert image.shape[:2] == (32, 64)
    assert len(np.unique(image)) == 4  # the four palette entries the runs use


def test_a_bmp_opencv_refuses_is_refused_not_left_to_pillows_python_decoder() -> None:
    # RLE8 compression declared on a 4-bit image: Pillow's pure-Python RLE decoder reads it,
    # OpenCV refuses it. A crafted one within the pixel limit would hold a thread for minutes.
    odd = _rle8_bmp(bit_count=4)
    Image.open(io.BytesIO(odd)).load()  # Pillow would have decoded it
    with pytest.raises(UndecodableImage, match="BMP"):
        imaging.decode(odd, 10**6)
