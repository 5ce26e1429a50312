"""Hostile image files built byte by byte: what an attacker (or a broken writer) sends.

Each builder returns real bytes a decoder sees as the format it claims (valid signature,
correct lengths and CRCs) but whose structure is abusive: many pages, many chunks, many
metadata segments, or a required field missing. Shared by the decode unit tests and the API
regression tests (issue 15).
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import tifffile

# TIFF field types
SHORT, LONG = 3, 4


def _tiff(pages: list[list[tuple[int, int, int]]], pixel: bytes = b"\x00") -> bytes:
    """A little-endian classic TIFF: one IFD per page, chained; each page's entries are
    ``(tag, type, value)`` with count 1, and every page's strip is the one byte ``pixel``."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    strip = len(out)
    out += pixel + b"\x00"  # keep IFDs word-aligned
    previous_next = 4  # where the offset of the next IFD is written
    for entries in pages:
        entries = sorted(entries + [(273, LONG, strip)])
        offset = len(out)
        struct.pack_into("<I", out, previous_next, offset)
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHI", tag, kind, 1)
            out += struct.pack("<HH", value, 0) if kind == SHORT else struct.pack("<I", value)
        previous_next = len(out)
        out += b"\x00\x00\x00\x00"
    return bytes(out)


def _page(width: int = 1, height: int = 1) -> list[tuple[int, int, int]]:
    """A grey 8-bit uncompressed page's tags (strip offset added by :func:`_tiff`)."""
    return [
        (256, SHORT, width), (257, SHORT, height), (258, SHORT, 8), (259, SHORT, 1),
        (262, SHORT, 1), (277, SHORT, 1), (278, SHORT, height), (279, LONG, width * height),
    ]


def tiff_second_page_without_width() -> bytes:
    """Two 1×1 pages; the second IFD lacks ImageWidth (Pillow's page count raised TypeError)."""
    second = [entry for entry in _page() if entry[0] != 256]
    return _tiff([_page(), second])


def tiff_pages_second_without_width() -> bytes:
    """A z-stack of two 8×8 pages written by tifffile, ImageWidth renamed away in the second IFD
    (its page decoded to an (8, 8, 0) plane that failed deep in the pipeline)."""
    out = io.BytesIO()
    tifffile.imwrite(out, np.full((2, 8, 8), 7, np.uint8), photometric="minisblack")
    data = bytearray(out.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for k in range(struct.unpack_from("<H", data, second)[0]):
        if struct.unpack_from("<H", data, second + 2 + 12 * k)[0] == 256:  # ImageWidth → a private tag
            struct.pack_into("<H", data, second + 2 + 12 * k, 0x7FFF)
    return bytes(data)


def tiff_chained_pages(pages: int) -> bytes:
    """``pages`` chained 1×1 pages (issue 15: 30,000 took 20 s, time grows with pages²)."""
    return _tiff([_page()] * pages)


def small_jpeg(size: int = 16) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((size, size), 128, np.uint8))
    assert ok
    return buf.tobytes()


def jpeg_exif_bomb(segments: int, payload: int = 64) -> bytes:
    """A small valid JPEG with ``segments`` APP1 Exif segments after SOI (issue 15: 4,000 took
    28 min of CPU: Pillow appends each to the last with ``+=``)."""
    body = b"Exif\x00\x00" + b"\x00" * payload
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    jpeg = small_jpeg()
    return jpeg[:2] + app1 * segments + jpeg[2:]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def small_png(size: int = 16) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((size, size), 128, np.uint8))
    assert ok
    return buf.tobytes()


def png_chunk_bomb(chunks: int, kind: bytes = b"tEXt", payload: bytes = b"k\x00v") -> bytes:
    """A small valid PNG with ``chunks`` tiny ancillary chunks before its image data (issue 15:
    20 M took over 22 min)."""
    png = small_png()
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return png[:ihdr_end] + png_chunk(kind, payload) * chunks + png[ihdr_end:]


def png_idat_claiming(length: int) -> bytes:
    """A small PNG whose IDAT chunk claims ``length`` bytes (libpng spent ~10 s on 2 GB)."""
    png = bytearray(small_png())
    struct.pack_into(">I", png, png.find(b"IDAT") - 4, length)
    return bytes(png)
