"""DeltaVision (``.dv``) files as softWoRx and the OMX write them: wide-field and deconvolved stacks.

DeltaVision microscopes (GE / Cytiva DeltaVision Elite, OMX) save Priism's image format: a
1024-byte header (the MRC layout with DeltaVision's fields), an extended header of per-section
records, then every section — one plane of one wavelength, z-slice and time point — stored raw,
one after another, in one of three orders. This module reads the header's fields at their
documented offsets and each plane by its position; nothing else is parsed.

Why not a library: ``mrc`` (Talley Lambert's reader, BSD) maps a file by *path*; the service reads
uploads as bytes, and the header is 1024 bytes at fixed offsets.

What a file gives: sizes (``n_sections`` = waves × z × time points), the pixel type, the pixel size
and z-step in µm (``dx``, ``dy``, ``dz``), the number of time points and waves, the sequence order,
and up to five emission wavelengths, which name the channels (``525 nm``: softWoRx shows channels by
wavelength). Refused: complex pixels (Fourier transforms), a header whose sizes contradict each
other or the file (a truncated upload is a 400 naming it).
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service import structure
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import Layout, PixelSize, PlaneReader, check_series, grey_planes_layout

HEADER_BYTES = 1024
#: Pixel types (the header's ``mode``) → numpy type and what the service reads it as. Signed
#: integers become float32 whatever a plane holds, so every plane of a file has one type.
_PIXEL_TYPES = {0: ("u1", np.uint8), 1: ("i2", np.float32), 2: ("f4", np.float32), 5: ("i2", np.float32),
                6: ("u2", np.uint16), 7: ("i4", np.float32)}
_COMPLEX = {3, 4}
#: Sections' order (``img_seq``), slowest axis first: 0 is Priism's ZTW (Z fastest, then time,
#: then wavelength), 1 WZT, 2 ZWT.
_ORDERS = {0: "CTZ", 1: "TZC", 2: "TCZ"}



class Header:
    """The fields of a DeltaVision header the service uses, read at their offsets."""

    def __init__(self, head: bytes) -> None:
        if len(head) < HEADER_BYTES or not structure.is_dv(head):
            raise UndecodableImage(f"not a DeltaVision file, or its {HEADER_BYTES}-byte header is cut short")
        order = structure.dv_byte_order(head) or "<"  # is_dv found the ID
        self.byte_order = order

        def i32(offset: int) -> int:
            return int(struct.unpack_from(order + "i", head, offset)[0])

        def i16(offset: int) -> int:
            return int(struct.unpack_from(order + "h", head, offset)[0])

        def f32(offset: int) -> float:
            # The shortest decimal of the float32 (0.3, not 0.30000001192092896): what softWoRx was given.
            return float(str(np.float32(struct.unpack_from(order + "f", head, offset)[0])))

        self.width, self.height, self.sections, self.mode = i32(0), i32(4), i32(8), i32(12)
        self.dx, self.dy, self.dz = f32(40), f32(44), f32(48)
        self.extended_bytes = i32(92)
        self.times, self.sequence = i16(180), i16(182)
        self.waves = i16(196)
        self.wavelengths = [i16(198 + 2 * k) for k in range(5)]


def open_planes(
    source: bytes | Path, max_pixels: int, series: int | None = None
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of a DeltaVision file (an upload's bytes or memory map, or a file by path, mapped;
    ``series``: 0 or None, a file holds one image) and a reader of its planes by coordinates
    (``{"C": c, "Z": z, "T": t}``, 0 where left out): ``(H, W)`` uint8 / uint16 / float32; and what
    closes the file.

    Raises:
        UndecodableImage: a header that contradicts itself or the file (sizes, a file cut short).
        UnsupportedImageType: complex pixels, an unknown pixel type.
        ImageTooLarge: a plane over ``max_pixels``.
        SelectionError: ``series`` is not 0.
    """
    check_series(1, (), series)
    view, close = structure.mapped(source, "DeltaVision")
    try:
        layout, read = _planes(view, max_pixels)
    except BaseException:
        close()
        raise
    return layout, read, close


def plane_pixels(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a DeltaVision file's planes, from its header (admission)."""
    header = Header(data[:HEADER_BYTES])
    return header.width, header.height


def _planes(data: bytes | mmap.mmap, max_pixels: int) -> tuple[Layout, PlaneReader]:
    header = Header(data[:HEADER_BYTES])
    if header.mode in _COMPLEX:
        raise UnsupportedImageType(
            "the DeltaVision file holds complex pixels (a Fourier transform), not an image"
        )
    if header.mode not in _PIXEL_TYPES:
        raise UnsupportedImageType(f"DeltaVision pixel type {header.mode} is not one the service reads")
    width, height = header.width, header.height
    if width <= 0 or height <= 0 or header.sections <= 0:
        raise UndecodableImage(
            f"malformed DeltaVision header: {width}×{height} px, {header.sections} sections"
        )
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    waves, times = max(header.waves, 1), max(header.times, 1)
    if not 1 <= waves <= 5 or header.sections % (waves * times):
        raise UndecodableImage(
            f"malformed DeltaVision header: {header.sections} sections are not {waves} wavelengths × "
            f"{times} time points × z-slices"
        )
    depth = header.sections // (waves * times)
    stored, dtype = _PIXEL_TYPES[header.mode]
    stored_type = np.dtype(header.byte_order + stored)
    plane_bytes = width * height * stored_type.itemsize
    start = HEADER_BYTES + header.extended_bytes
    if header.extended_bytes < 0 or start + header.sections * plane_bytes > len(data):
        raise UndecodableImage(
            f"the DeltaVision file is cut short: its header describes {header.sections} planes of "
            f"{width}×{height} ({start + header.sections * plane_bytes:,} bytes), the file has {len(data):,}"
        )
    sizes = {"C": waves, "Z": depth, "T": times}
    order = _ORDERS.get(header.sequence, "CTZ")
    shape = tuple(sizes[a] for a in order)

    def read(coords: dict[str, int]) -> np.ndarray:
        index = int(np.ravel_multi_index(tuple(int(coords.get(a, 0)) for a in order), shape))
        plane = np.frombuffer(data, stored_type, width * height, start + index * plane_bytes)
        return plane.reshape(height, width).astype(dtype)  # a copy: nothing keeps the file's bytes

    pixel_size, notes = _pixel_size(header, depth)
    names = _channel_names(header.wavelengths[:waves])
    return grey_planes_layout("DeltaVision", width, height, dtype, sizes, names, pixel_size, notes), read


def _pixel_size(header: Header, depth: int) -> tuple[PixelSize | None, list[str]]:
    def positive(value: float) -> float | None:
        return value if math.isfinite(value) and value > 0 else None

    x, y = positive(header.dx), positive(header.dy)
    if x is None and y is None:
        return None, ["the DeltaVision file does not give its pixel size: sizes are in pixels"]
    z = positive(header.dz) if depth > 1 else None
    return PixelSize(x or y, y or x, "dv", z), []  # type: ignore[arg-type]


def _channel_names(wavelengths: list[int]) -> list[str | None]:
    """``525 nm`` for each wave's emission wavelength, as softWoRx shows channels; None for a wave
    without one, and for waves sharing one (a name must choose one channel)."""
    names = [f"{w} nm" if w > 0 else None for w in wavelengths]
    return [n if n is None or names.count(n) == 1 else None for n in names]
