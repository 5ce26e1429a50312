"""Zeiss AxioVision ZVI files as AxioVision writes them, for tests: an OLE2 compound file
(``tests/compound_files.py``) whose ``Image`` storage holds the image's tags (the scale) and one
``Item(n)`` per plane — a header of typed values (OLE VARIANTs: version, type, description, file
name, width, height, depth, pixel format, count, valid bits, plug-in id, …) then the pixels, and
the plane's tags (channel name; z, channel and time indices) as (value, id, attribute) triples.
A real AxioVision file (pyImSegm's ``sample.zvi``: 4 channels numbered 0, 1, 3, 5) was read the
same way."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from tests.compound_files import write_compound

#: numpy type and samples → AxioVision's pixel format.
PIXEL_FORMATS = {("uint8", 1): 3, ("uint16", 1): 4, ("float32", 1): 6, ("uint8", 3): 1}


def _i4(value: int) -> bytes:
    return struct.pack("<Hi", 3, value)


def _r8(value: float) -> bytes:
    return struct.pack("<Hd", 5, value)


def _bstr(text: str) -> bytes:
    raw = (text + "\0").encode("utf-16-le")
    return struct.pack("<HI", 8, len(raw)) + raw


def _blob(raw: bytes) -> bytes:
    return struct.pack("<HI", 65, len(raw)) + raw


def tags_stream(tags: dict[int, int | float | str]) -> bytes:
    """A ``Tags/Contents`` stream: version, count, then (value, id, attribute) for each tag."""
    out = _i4(0x10000000) + _i4(len(tags))
    for tag, value in tags.items():
        encoded = (_bstr(value) if isinstance(value, str) else _r8(value) if isinstance(value, float)
                   else _i4(value))
        out += encoded + _i4(tag) + _i4(0)
    return out


@dataclass
class Plane:
    """One item: its pixels ``(H, W)`` (or ``(H, W, 3)`` RGB, stored BGR), the indices AxioVision
    gives it (an instrument's channel numbers need not be 0, 1, 2) and its channel's name."""

    pixels: np.ndarray
    c: int = 0
    z: int = 0
    t: int = 0
    name: str | None = None
    extra_tags: dict[int, int | float | str] = field(default_factory=dict)


def zvi_bytes(planes: list[Plane], pixel_um: float | None = 0.2475, z_um: float | None = None,
              unit: int = 76, pixel_format: int | None = None, cut_bytes: int = 0) -> bytes:
    """A ZVI of ``planes`` (items in list order), calibrated ``pixel_um`` µm (unit code ``unit``:
    76 is µm) and ``z_um`` between slices; for broken files, a ``pixel_format`` other than the
    pixels' and each item's pixels ``cut_bytes`` short."""
    first = planes[0].pixels
    height, width = first.shape[:2]
    samples = first.shape[2] if first.ndim == 3 else 1
    pixel_format = pixel_format or PIXEL_FORMATS[(str(first.dtype), samples)]
    streams: dict[str, bytes] = {}
    image_tags: dict[int, int | float | str] = {515: width, 516: height, 518: pixel_format}
    if pixel_um is not None:
        image_tags |= {769: pixel_um, 770: unit, 772: pixel_um, 773: unit}
    if z_um is not None:
        image_tags |= {775: z_um, 776: unit}
    streams["Image/Contents"] = _i4(0x30001003) + _i4(0) + _i4(width) + _i4(height)
    streams["Image/Tags/Contents"] = tags_stream(image_tags)
    for n, plane in enumerate(planes):
        item_height, item_width = plane.pixels.shape[:2]  # each item's header gives its own size
        header = (_i4(0x30001003) + _i4(0) + struct.pack("<H", 0) + struct.pack("<H", 0) + _i4(item_width)
                  + _i4(item_height) + _i4(1) + _i4(pixel_format) + _i4(0) + _i4(16) + _blob(bytes(16))
                  + _blob(bytes(128)))
        pixels = plane.pixels[:, :, ::-1] if samples == 3 else plane.pixels  # RGB → BGR, as stored
        stored = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        streams[f"Image/Item({n})/Contents"] = header + stored[:len(stored) - cut_bytes]
        tags: dict[int, int | float | str] = {2819: plane.z, 2820: plane.c, 2821: plane.t, **plane.extra_tags}
        if plane.name:
            tags[1284] = plane.name
        streams[f"Image/Item({n})/Tags/Contents"] = tags_stream(tags)
    return write_compound(streams)
