"""Zeiss AxioVision ZVI files read as uploads: channels, z-slices, time points and pixel size.

AxioVision (Zeiss's imaging software before ZEN) saved its acquisitions as ZVI: an OLE2 compound
file (:mod:`service.compound`, as Olympus's OIB) whose ``Image`` storage holds one ``Item(n)`` per
plane. Each item's ``Contents`` stream is a header of typed values (OLE VARIANTs: version, type,
width, height, depth, pixel format, …) followed by the plane's pixels, which are the stream's last
width × height × bytes; its ``Tags/Contents`` is a list of (value, id, attribute) VARIANT triples:
the channel name (1284) and the plane's z, channel and time indices (2819, 2820, 2821). The image's
own ``Tags/Contents`` gives the scale (769 / 772 / 775 µm per pixel along x / y / z where the unit
tags 770 / 773 / 776 say 76, µm).

Channel indices are the instrument's (a real file numbers its four channels 0, 1, 3 and 5), so the
axes are ranked: the n-th distinct index is channel n. Read from the tags as Bio-Formats and slideio
read them (learned from their sources, not copied); checked against a real file (pyImSegm's
``sample.zvi``: DIC, DAPI, eGFP, Alexa 594 at 0.2475 µm, 648×488, 16-bit), whose four planes read
equal to slideio's.

Bounded: every tags stream against ``UNET_MAX_METADATA_BYTES``, and all of them together (they are
read when the file is opened); a plane's stream against what its pixels need (plus a header of at
most :data:`_MAX_ITEM_HEADER` bytes). Refused with what to do: mosaics (tiles of a tile scan), other
axes, pixel formats other than grey 8/16-bit, float and 8/16-bit colour.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np

from service import compound, structure
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import (
    PLANE_AXES,
    RGB_NAMES,
    Channel,
    Layout,
    PixelSize,
    PlaneReader,
    SelectionError,
    check_series,
)

_METADATA_BYTES = structure.Limits().max_metadata_bytes
_ITEM = re.compile(r"Item\((\d{1,9})\)")
#: Bytes an item's header may take before its pixels (a real file's: 324).
_MAX_ITEM_HEADER = 1 << 16
#: Tag ids (AxioVision's ZVI format description).
_CHANNEL_NAME, _INDEX_Z, _INDEX_C, _INDEX_T, _TILE_INDEX = 1284, 2819, 2820, 2821, 2822
_OTHER_INDICES = {2817: "U", 2818: "V", 2827: "scene"}
_SCALE = {"x": (769, 770), "y": (772, 773), "z": (775, 776)}
_MICROMETRE_UNIT = 76
#: Pixel formats → (numpy type of one sample, samples stored, colour stored as BGR).
_PIXEL_FORMATS = {1: ("u1", 3, True), 2: ("u1", 4, True), 3: ("u1", 1, False), 4: ("<u2", 1, False),
                  6: ("<f4", 1, False), 8: ("<u2", 3, True)}


def is_zvi(ole: Any) -> bool:
    """Whether an open compound file is a ZVI (an ``Image`` storage with its ``Contents``)."""
    return bool(ole.exists("Image/Contents")) and not ole.exists("OibInfo.txt")


def admitted_pixels(ole: Any, max_pixels: int, metadata_bytes: int = _METADATA_BYTES) -> int:
    """What an open ZVI costs admission: one plane (the first item's width × height)."""
    items = _item_numbers(ole)
    if not items:
        raise UndecodableImage("malformed ZVI: its Image storage holds no planes (Item(n))")
    width, height, _ = _item_header(ole, items[0])
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    return width * height


def planes(ole: Any, max_pixels: int, series: int | None, metadata_bytes: int) -> tuple[Layout, PlaneReader]:
    """An open ZVI's layout and plane reader (``{"C": c, "Z": z, "T": t}`` → ``(H, W)`` uint8 /
    uint16 / float32, or ``(H, W, 3)`` for colour). Raises as :func:`service.compound.open_planes`
    says; a plane the file lacks is a SelectionError naming it."""
    check_series(1, (), series)
    items = _item_numbers(ole)
    if not items:
        raise UndecodableImage("malformed ZVI: its Image storage holds no planes (Item(n))")
    width, height, pixel_format = _item_header(ole, items[0])
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"malformed ZVI: a plane of {width}×{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    if pixel_format not in _PIXEL_FORMATS:
        raise UnsupportedImageType(
            f"ZVI pixel format {pixel_format} is not read (grey 8/16-bit, float and 8/16-bit colour "
            "are); export the image as TIFF from AxioVision or ZEN"
        )
    stored, samples, bgr = _PIXEL_FORMATS[pixel_format]
    sample_type = np.dtype(stored)
    plane_bytes = width * height * samples * sample_type.itemsize

    budget = metadata_bytes
    indices: dict[int, tuple[int, int, int]] = {}
    names: dict[int, str] = {}
    for item in items:
        path = f"Image/Item({item})/Tags/Contents"
        raw = compound.read_stream(ole, path, budget, kind="ZVI") if ole.exists(path) else b""
        budget -= len(raw)  # the tags of all planes together, too, under the metadata limit
        tags = _tags(raw)
        for tag, axis in _OTHER_INDICES.items():
            if _int(tags.get(tag)) > 0:
                raise UnsupportedImageType(
                    f"ZVI images with a {axis} axis are not read; export TIFF from ZEN"
                )
        if _int(tags.get(_TILE_INDEX)) > 0:
            raise UnsupportedImageType("ZVI mosaics (tiles of a tile scan) are not read; export the stitched "
                                       "image as TIFF from AxioVision or ZEN")
        key = (_int(tags.get(_INDEX_C)), _int(tags.get(_INDEX_Z)), _int(tags.get(_INDEX_T)))
        indices[item] = key
        name = tags.get(_CHANNEL_NAME)
        if isinstance(name, str) and name.strip("\0 ") and key[0] not in names:
            names[key[0]] = name.strip("\0 ")
    ranks = [sorted({key[k] for key in indices.values()}) for k in range(3)]
    rank_of = [{value: n for n, value in enumerate(values)} for values in ranks]
    where: dict[tuple[int, int, int], int] = {}
    for item, key in indices.items():
        dense = tuple(rank_of[k][key[k]] for k in range(3))
        if dense in where:
            raise UndecodableImage(f"malformed ZVI: planes Item({where[dense]}) and Item({item}) are both "
                                   f"channel {key[0]}, z {key[1]}, t {key[2]}")
        where[dense] = item  # type: ignore[index]
    sizes = {"C": len(ranks[0]), "Z": len(ranks[1]), "T": len(ranks[2])}
    if samples > 1 and sizes["C"] > 1:
        raise UnsupportedImageType("ZVI files of several colour channels are not read; export TIFF")

    def read(coords: dict[str, int]) -> np.ndarray:
        key = (int(coords.get("C", 0)), int(coords.get("Z", 0)), int(coords.get("T", 0)))
        item = where.get(key)
        if item is None:
            raise SelectionError(
                f"the ZVI holds no plane at channel {key[0]}, z {key[1]}, t {key[2]}",
                ("channel", "z", "t"), {"planes": {a: n for a, n in sizes.items() if n > 1 and a != "C"}},
            )
        data = compound.read_stream(ole, f"Image/Item({item})/Contents", plane_bytes + _MAX_ITEM_HEADER,
                                    f"Item({item})", kind="ZVI")
        if len(data) < plane_bytes:
            raise UndecodableImage(f"malformed ZVI: plane Item({item}) holds {len(data):,} bytes, its "
                                   f"{width}×{height} pixels need {plane_bytes:,}")
        if _header_values(data, item) != (width, height, pixel_format):
            raise UndecodableImage(f"malformed ZVI: plane Item({item}) differs in size or pixel format "
                                   f"from Item({items[0]}) ({width}×{height}, format {pixel_format})")
        pixels = np.frombuffer(data, sample_type, width * height * samples, len(data) - plane_bytes)
        image = pixels.reshape(height, width, samples) if samples > 1 else pixels.reshape(height, width)
        if bgr:
            image = image[:, :, 2::-1]  # BGR(A) → RGB, alpha dropped
        native = np.float32 if sample_type.kind == "f" else sample_type.newbyteorder("=")
        return np.ascontiguousarray(image.astype(native))  # a copy: nothing keeps the stream's bytes

    notes: list[str] = []
    pixel_size = _pixel_size(ole, sizes["Z"], metadata_bytes, notes)
    lead = [a for a in ("T", "Z", "C") if sizes[a] > 1]
    rgb = samples > 1
    channels = (tuple(Channel(i, n) for i, n in enumerate(RGB_NAMES)) if rgb else
                tuple(Channel(c, names.get(ranks[0][c])) for c in range(sizes["C"])))
    layout = Layout(
        format="ZVI",
        width=width,
        height=height,
        dtype="float32" if sample_type.kind == "f" else str(sample_type.newbyteorder("=")),
        axes="".join(lead) + "YX" + ("S" if rgb else ""),
        shape=tuple(sizes[a] for a in lead) + (height, width) + ((3,) if rgb else ()),
        channels=channels,
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=pixel_size,
        rgb=rgb,
        warnings=tuple(notes),
    )
    return layout, read


def _item_numbers(ole: Any) -> list[int]:
    numbers = set()
    for parts in ole.listdir(streams=True, storages=False):
        if len(parts) == 3 and parts[0] == "Image" and parts[2] == "Contents":
            match = _ITEM.fullmatch(parts[1])
            if match:
                numbers.add(int(match.group(1)))
    return sorted(numbers)


def _item_header(ole: Any, item: int) -> tuple[int, int, int]:
    """(width, height, pixel format) from an item's header: its first ten typed values."""
    path = f"Image/Item({item})/Contents"
    try:
        with ole.openstream(path) as stream:
            head = stream.read(_MAX_ITEM_HEADER)
    except Exception as exc:  # noqa: BLE001 - olefile: OSError, IndexError... on a broken chain
        raise UndecodableImage(f"unreadable ZVI: stream {path}: {type(exc).__name__}: {exc}") from exc
    return _header_values(head, item)


def _header_values(head: bytes, item: int) -> tuple[int, int, int]:
    values = [value for _, value in _variants(head[:_MAX_ITEM_HEADER], 10)]
    if len(values) < 8 or not all(isinstance(values[k], int) for k in (4, 5, 7)):
        raise UndecodableImage(f"malformed ZVI: the header of plane Item({item}) is unreadable")
    return values[4], values[5], values[7]


def _pixel_size(ole: Any, depth: int, metadata_bytes: int, notes: list[str]) -> PixelSize | None:
    if not ole.exists("Image/Tags/Contents"):
        notes.append("the ZVI does not give its pixel size: sizes are in pixels")
        return None
    tags = _tags(compound.read_stream(ole, "Image/Tags/Contents", metadata_bytes, kind="ZVI"))
    scale: dict[str, float | None] = {}
    for axis, (value_tag, unit_tag) in _SCALE.items():
        value = tags.get(value_tag)
        good = isinstance(value, float | int) and math.isfinite(value) and value > 0
        scale[axis] = float(value) if good and _int(tags.get(unit_tag)) == _MICROMETRE_UNIT else None
    if scale["x"] is None and scale["y"] is None:
        notes.append("the ZVI does not give its pixel size in µm: sizes are in pixels")
        return None
    x, y = scale["x"] or scale["y"], scale["y"] or scale["x"]
    return PixelSize(x, y, "zvi", scale["z"] if depth > 1 else None)  # type: ignore[arg-type]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tags(data: bytes) -> dict[int, Any]:
    """A ``Tags/Contents`` stream as {id: value}: a version, a count, then (value, id, attribute)."""
    values = _variants(data, 3 * 100_000 + 2)
    out: dict[int, Any] = {}
    for k in range(2, len(values) - 2, 3):
        tag = values[k + 1][1]
        if isinstance(tag, int):
            out[tag] = values[k][1]
    return out


_FIXED = {2: "<h", 3: "<i", 4: "<f", 5: "<d", 6: "<q", 7: "<d", 10: "<i", 11: "<h", 16: "<b", 17: "<B",
          18: "<H", 19: "<I", 20: "<q", 21: "<Q", 22: "<i", 23: "<I"}


def _variants(data: bytes, limit: int) -> list[tuple[int, Any]]:
    """Up to ``limit`` OLE VARIANTs (a 2-byte type, then the value) from the start of ``data``;
    stops at a type it does not know, or where the data ends."""
    out: list[tuple[int, Any]] = []
    at = 0
    while len(out) < limit and at + 2 <= len(data):
        kind = struct.unpack_from("<H", data, at)[0]
        at += 2
        if kind in (0, 1):
            out.append((kind, None))
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            size = struct.calcsize(fmt)
            if at + size > len(data):
                break
            value = struct.unpack_from(fmt, data, at)[0]
            out.append((kind, bool(value) if kind == 11 else value))
            at += size
        elif kind in (8, 65):  # BSTR (UTF-16LE) and BLOB: a byte count, then the bytes
            if at + 4 > len(data):
                break
            size = struct.unpack_from("<I", data, at)[0]
            at += 4
            if at + size > len(data):
                break
            raw = data[at:at + size]
            out.append((kind, raw.decode("utf-16-le", "replace") if kind == 8 else bytes(raw)))
            at += size
        elif kind == 72:  # a CLSID
            out.append((kind, bytes(data[at:at + 16])))
            at += 16
        else:
            break
    return out
