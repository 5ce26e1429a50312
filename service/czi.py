"""Zeiss CZI files (ZEN's own format) read as uploads: channels, z-slices, time points, pixel size.

A CZI holds its image as *subblocks*: tiles, each one plane (one C, Z, T ...) at a position in
pixels, full resolution or a pyramid level, stored raw or compressed. This module turns that into
the :class:`~service.microscopy.Layout` and plane reader every other format has, so the channel,
plane and pixel-size rules of :mod:`service.microscopy` apply to a CZI unchanged.

- **Container**: czifile (C. Gohlke) parses the file header, the subblock directory and the
  metadata, in pure Python and from memory. Pure Python matters on uploads: Zeiss's own libCZI
  (pylibCZIrw) crashed its process with SIGSEGV on 4 of 200 mutated files, where a parser that
  raises gives the caller a 400. :func:`service.structure.check_czi` bounds the directory first.
- **Pixels**: each full-resolution subblock of the plane is decoded here through imagecodecs
  (zstd, JPEG XR, JPEG, LZW, as ZEN writes them; czifile's release for Python 3.11 predates ZEN's
  zstd) and pasted at its position: a tile scan (mosaic) comes out as one plane, its gaps at the
  plane's dark level (:data:`GAP_PERCENTILE`). Pyramid levels are skipped: the service resamples
  by itself.
- **Scenes** (the positions of a multi-well or multi-position experiment, the regions of a tile
  scan) are the file's images, chosen as ``series=`` like an OME-TIFF's Images: the first is read
  unless the request says, with a notice naming how many there are.
- **What is refused, naming what to do**: other dimensions with more than one index (rotation,
  illumination, phase, view, block), colour subblocks beside other channels, complex or
  camera-raw pixels.
- **Metadata**: channel names (``Information/Image/Dimensions/Channels/Channel/@Name``), scene
  names (``.../Dimensions/S/Scenes/Scene/@Name``), the pixel size
  (``Scaling/Items/Distance[@Id='X'|'Y']/Value``, in metres) and the z-step (``Distance[@Id='Z']``).

Colour subblocks (Bgr24/Bgr48) are stored blue first; planes come out red first, as every other
decoder of the service gives them.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import (
    PLANE_AXES,
    RGB_NAMES,
    Channel,
    Layout,
    PixelSize,
    PlaneReader,
    check_series,
    container_stream,
    first_series_note,
    image_summary,
    stack_z_step,
)

#: CZI dimensions that may index planes; any other with more than one index is refused.
_PLANE_DIMENSIONS = ("C", *PLANE_AXES)
_DIMENSION_NAMES = {
    "R": "rotations", "I": "illuminations", "H": "phases", "V": "views", "B": "blocks",
}
#: Subblock pixel types, as czifile spells them (Gray8, Gray16, Gray32Float, Bgr24, Bgr48) →
#: (numpy dtype, samples). Others (complex, 32/64-bit integer, BGRA, float colour) are not what a
#: microscope's fluorescence channel holds.
_PIXEL_TYPES = {
    "<u1": ("uint8", 1), "<u2": ("uint16", 1), "<f4": ("float32", 1),
    "<3u1": ("uint8", 3), "<3u2": ("uint16", 3),
}
_UNCOMPRESSED, _JPEG, _LZW, _JPEGXR, _ZSTD0, _ZSTD1 = 0, 1, 2, 4, 5, 6

#: A tile scan's gaps (no tile there: a round or polygonal tile region in its bounding box) hold no
#: data. libCZI draws them black, but a fluorescence camera's dark level lies well above 0 (about
#: 100 on sCMOS cameras), and the normalisation's 1st percentile then reads the gaps, not the
#: sample's background: DSB images at 16 bits framed by zeros to 56 % of the plane lost F1 0.884 →
#: 0.850 (every second training image), framed at their own dark level 0.888 → 0.883 (every fourth;
#: issue #13, docs/benchmarks.md, "A constant fill around the field"). A histogram cannot tell gaps
#: from a background set to 0, but the reader knows them: a grey plane's gaps are drawn at its dark
#: level instead, the lowest 1st percentile of its first :data:`GAP_LEVEL_TILES` tiles (the darkest
#: of a few, as one tile may lie all on tissue). Colour (bright-field) planes keep black gaps.
GAP_PERCENTILE = 1.0
GAP_LEVEL_TILES = 4


def is_czi(data: bytes) -> bool:
    return data[:10] == b"ZISRAWFILE"


@dataclass(frozen=True)
class _Tile:
    """One full-resolution subblock: where it goes and how to get its pixels."""

    index: dict[str, int]  # plane coordinates, 0-based: {"C": c, "Z": z, "T": t}
    x: int
    y: int
    width: int
    height: int
    pixel_type: str  # czifile's dtype string, a key of _PIXEL_TYPES
    compression: int
    mosaic: int
    entry: Any  # czifile.DirectoryEntryDV


#: ``(coords, y0, y1, x0, x1)`` → the pixels ``[y0:y1, x0:x1]`` of that plane.
WindowReader = Callable[[dict[str, int], int, int, int, int], np.ndarray]


def open_planes(
    source: bytes | Path, max_pixels: int, scene: int | None = None
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of a CZI (an upload's bytes, or a file) at ``scene`` (0-based among its scenes;
    None: the first, with a notice when there are more) and a reader of its planes by
    coordinates (``{"C": c, "Z": z, "T": t}``, 0 where left out): ``(H, W)`` grey or ``(H, W, 3)``
    RGB, uint8/uint16/float32; and what closes the file when reading is done.

    The caller has walked the file with :func:`service.structure.check_czi`.

    Raises:
        UndecodableImage: what czifile cannot parse, a subblock that does not decode.
        UnsupportedImageType: other dimensions, pixel types or compressions not read.
        ImageTooLarge: a plane over ``max_pixels``.
        SelectionError: ``scene`` is not in the file.
    """
    layout, read_window, _tile, close = open_windows(source, max_pixels, scene)

    def read(coords: dict[str, int]) -> np.ndarray:
        return read_window(coords, 0, layout.height, 0, layout.width)

    return layout, read, close


def open_windows(
    source: bytes | Path, max_pixels: int, scene: int | None = None
) -> tuple[Layout, WindowReader, tuple[int, int], Callable[[], None]]:
    """A CZI read by window, for slide jobs (a tile scan of any size, within ``max_pixels``): its
    layout, a reader of ``[y0:y1, x0:x1]`` of a plane that decodes only the subblocks the window
    touches, the largest subblock's (height, width), and what closes the file. The caller has
    walked the file (:func:`service.structure.check_czi`).

    Raises: as :func:`open_planes`.
    """
    import czifile  # imported only for CZI files

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # czifile warns of pending updates, unknown segments
            czi = czifile.CziFile(
                str(source) if isinstance(source, Path) else container_stream(source), multifile=False,
                detectmosaic=False,
            )
    except Exception as exc:  # noqa: BLE001 - czifile raises struct.error, KeyError, ... on bad bytes
        raise UndecodableImage(f"unreadable CZI: {type(exc).__name__}: {exc}") from exc
    try:
        layout, read_window, tile = _planes(czi, max_pixels, scene)
    except BaseException:
        czi.close()
        raise
    return layout, read_window, tile, czi.close


def _planes(czi: Any, max_pixels: int, scene: int | None) -> tuple[Layout, WindowReader, tuple[int, int]]:
    """The layout, the window reader and the largest subblock's (height, width) of an open
    ``czifile.CziFile``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries = list(czi.subblock_directory)
            xml = czi.metadata() or ""
    except Exception as exc:  # noqa: BLE001 - as above
        raise UndecodableImage(f"unreadable CZI: {type(exc).__name__}: {exc}") from exc
    names, pixel_size, notes, scene_names = _metadata(xml)
    tiles, sizes, scenes, scene_index, about = _tiles(entries, scene, scene_names)
    x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
    width = max(t.x + t.width for t in tiles) - x0
    height = max(t.y + t.height for t in tiles) - y0
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)

    dtypes = {_PIXEL_TYPES[t.pixel_type] for t in tiles}
    samples = max(s for _, s in dtypes)
    rgb = samples == 3
    if rgb and (len(dtypes) > 1 or sizes.get("C", 1) > 1):
        raise UnsupportedImageType(
            "the CZI mixes colour (brightfield) subblocks with other channels; export the "
            "fluorescence channel on its own"
        )
    if scenes > 1 and scene is None:
        notes.append(first_series_note(scenes, "scenes (positions)", f"{width}×{height}"))
    if rgb:
        channels = tuple(Channel(i, n) for i, n in enumerate(RGB_NAMES))
    else:
        channels = tuple(
            Channel(c, names[c] if c < len(names) else None) for c in range(sizes.get("C", 1))
        )
    lead = [a for a in ("T", "Z", "C") if sizes.get(a, 1) > 1]
    axes = "".join(lead) + "YX" + ("S" if rgb else "")
    shape = tuple(sizes[a] for a in lead) + (height, width) + ((3,) if rgb else ())
    by_plane: dict[tuple[int, int, int], list[_Tile]] = {}
    for tile in sorted(tiles, key=lambda t: t.mosaic):  # higher mosaic indices on top, as libCZI draws
        by_plane.setdefault(_key(tile.index), []).append(tile)
    # Channels may differ in pixel type (an 8-bit and a 16-bit camera): the layout names the first's.
    first_dtype = _PIXEL_TYPES[by_plane[min(by_plane)][0].pixel_type][0]
    gap_levels: dict[tuple[int, int, int], float] = {}

    def gap_level(key: tuple[int, int, int]) -> float:
        """The plane's dark level (:data:`GAP_PERCENTILE`), once per plane: every window's gaps alike."""
        if key not in gap_levels:
            levels = []
            for tile in by_plane[key][:GAP_LEVEL_TILES]:
                pixels = _decode(tile)
                finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
                if finite.size:
                    levels.append(float(np.percentile(finite, GAP_PERCENTILE, method="lower")))
            gap_levels[key] = min(levels, default=0.0)
        return gap_levels[key]

    def read_window(coords: dict[str, int], top: int, bottom: int, left: int, right: int) -> np.ndarray:
        plane_tiles = by_plane.get(_key(coords))
        if not plane_tiles:
            raise UndecodableImage(f"the CZI has no subblock for plane {_describe(coords)}")
        dtype, tile_samples = _PIXEL_TYPES[plane_tiles[0].pixel_type]
        # Each tile's rectangle on the plane, and the part of it inside the window.
        placed = []
        for tile in plane_tiles:
            ty, tx = tile.y - y0, tile.x - x0
            a, b = max(ty, top), min(ty + tile.height, bottom)
            c, d = max(tx, left), min(tx + tile.width, right)
            if a < b and c < d:
                placed.append((tile, ty, tx, (a, b, c, d)))
        rows, columns = bottom - top, right - left
        shape = (rows, columns, tile_samples) if rgb else (rows, columns)
        if rgb or _covers([r for *_, r in placed], (top, bottom, left, right)):
            window = np.zeros(shape, dtype)
        else:
            window = np.full(shape, gap_level(_key(coords)), dtype)
        for tile, ty, tx, (a, b, c, d) in placed:
            pixels = _decode(tile)
            if pixels.dtype != window.dtype:
                raise UnsupportedImageType(f"the CZI's plane {_describe(coords)} mixes pixel types")
            window[a - top : b - top, c - left : d - left] = pixels[a - ty : b - ty, c - tx : d - tx]
        return window

    pixel_size = stack_z_step(pixel_size, sizes.get("Z", 1))
    layout = Layout(
        format="CZI",
        width=width,
        height=height,
        dtype=first_dtype,
        axes=axes,
        shape=shape,
        channels=channels,
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=pixel_size,
        rgb=rgb,
        warnings=tuple(notes),
        series_count=scenes,
        series=scene_index,
        series_names=scene_names[:scenes] if scenes > 1 else (),
        series_about=about,
    )
    return layout, read_window, (max(t.height for t in tiles), max(t.width for t in tiles))


def _covers(rectangles: list[tuple[int, int, int, int]], window: tuple[int, int, int, int]) -> bool:
    """Whether ``(top, bottom, left, right)`` rectangles, each inside ``window``, cover all of it: on
    the grid of their edges, without a mask of the window's pixels."""
    top, bottom, left, right = window
    ys = sorted({top, bottom, *(r[0] for r in rectangles), *(r[1] for r in rectangles)})
    xs = sorted({left, right, *(r[2] for r in rectangles), *(r[3] for r in rectangles)})
    row, column = {y: i for i, y in enumerate(ys)}, {x: i for i, x in enumerate(xs)}
    cells = np.zeros((len(ys) - 1, len(xs) - 1), bool)
    for a, b, c, d in rectangles:
        cells[row[a] : row[b], column[c] : column[d]] = True
    return bool(cells.all())


def _key(coords: dict[str, int]) -> tuple[int, int, int]:
    return coords.get("C", 0), coords.get("Z", 0), coords.get("T", 0)


def _describe(coords: dict[str, int]) -> str:
    return ", ".join(f"{a.lower()}={coords.get(a, 0)}" for a in _PLANE_DIMENSIONS)


def _tiles(
    entries: list[Any], scene: int | None, scene_names: tuple[str | None, ...]
) -> tuple[list[_Tile], dict[str, int], int, int, tuple[str | None, ...]]:
    """The full-resolution subblocks of ``scene`` (None: the first), their plane indices made
    0-based, each plane axis's size, the number of scenes, the index of the one read, and each
    scene's :func:`~service.microscopy.image_summary` (where there are several)."""
    full: list[tuple[Any, dict[str, Any]]] = []
    for entry in entries:
        dims = {d.dimension: d for d in entry.dimension_entries}
        if "X" not in dims or "Y" not in dims:
            raise UndecodableImage("malformed CZI: a subblock without an X or Y extent")
        x, y = dims["X"], dims["Y"]
        if x.stored_size != x.size or y.stored_size != y.size or entry.pyramid_type:
            continue  # a pyramid level: a downsampled copy of full-resolution tiles
        if x.size <= 0 or y.size <= 0:
            raise UndecodableImage("malformed CZI: a subblock of empty size")
        full.append((entry, dims))
    if not full:
        raise UndecodableImage("the CZI has no full-resolution subblock")
    scene_starts = sorted({dims["S"].start for _, dims in full if "S" in dims})
    scenes = max(1, len(scene_starts))
    about = tuple(_scene_summary(full, start) for start in scene_starts) if scenes > 1 else ()
    scene_index = check_series(scenes, scene_names, scene, about)
    if scenes > 1:
        chosen = scene_starts[scene_index]
        full = [(entry, dims) for entry, dims in full if "S" in dims and dims["S"].start == chosen]
    starts: dict[str, list[int]] = {}
    for _, dims in full:
        for name, dim in dims.items():
            if name not in ("X", "Y", "M", "S"):
                starts.setdefault(name, []).append(dim.start)
    firsts = {name: sorted(set(values)) for name, values in starts.items()}
    for name, values in firsts.items():
        if name in _PLANE_DIMENSIONS or len(values) == 1:
            continue
        what = _DIMENSION_NAMES.get(name, f"indices along {name!r}")
        raise UnsupportedImageType(
            f"the CZI holds {len(values)} {what}; the service reads scenes, C, Z, T, Y, X: export the "
            "planes to segment as a TIFF"
        )
    sizes = {name: len(values) for name, values in firsts.items() if name in _PLANE_DIMENSIONS}
    for name, values in firsts.items():
        if name in _PLANE_DIMENSIONS and values != list(range(values[0], values[0] + len(values))):
            raise UnsupportedImageType(f"the CZI's {name} indices have gaps ({values[:8]}...)")
    tiles = []
    for entry, dims in full:
        if entry.dtype not in _PIXEL_TYPES:
            raise UnsupportedImageType(
                f"CZI pixel type {entry.pixel_type} is not read; the service reads Gray8, Gray16, "
                "Gray32Float, Bgr24 and Bgr48"
            )
        tiles.append(_Tile(
            index={a: dims[a].start - firsts[a][0] for a in _PLANE_DIMENSIONS if a in dims},
            x=dims["X"].start, y=dims["Y"].start, width=dims["X"].size, height=dims["Y"].size,
            pixel_type=entry.dtype, compression=entry.compression,
            mosaic=dims["M"].start if "M" in dims else 0, entry=entry,
        ))
    return tiles, sizes, scenes, scene_index, about


def _scene_summary(full: list[tuple[Any, dict[str, Any]]], start: int) -> str:
    """One scene's extent and planes, from its full-resolution subblocks' directory entries."""
    mine = [dims for _, dims in full if "S" in dims and dims["S"].start == start]
    width = max(d["X"].start + d["X"].size for d in mine) - min(d["X"].start for d in mine)
    height = max(d["Y"].start + d["Y"].size for d in mine) - min(d["Y"].start for d in mine)
    sizes = {a: len({d[a].start for d in mine if a in d}) for a in _PLANE_DIMENSIONS}
    return image_summary(width, height, sizes)


def _decode(tile: _Tile) -> np.ndarray:
    """One subblock's pixels, ``(height, width)`` or ``(height, width, 3)`` red first."""
    import imagecodecs

    dtype, samples = _PIXEL_TYPES[tile.pixel_type]
    expected = tile.width * tile.height * samples * np.dtype(dtype).itemsize
    try:
        raw = tile.entry.data_segment().data(raw=True)
        if tile.compression == _UNCOMPRESSED:
            buffer = raw
        elif tile.compression == _ZSTD0:
            buffer = imagecodecs.zstd_decode(raw, out=expected)
        elif tile.compression == _ZSTD1:
            buffer = _zstd1(raw, expected, np.dtype(dtype).itemsize)
        elif tile.compression in (_JPEGXR, _JPEG, _LZW):
            decode = {_JPEGXR: imagecodecs.jpegxr_decode, _JPEG: imagecodecs.jpeg8_decode,
                      _LZW: imagecodecs.lzw_decode}[tile.compression]
            decoded = decode(raw)
            if tile.compression == _JPEGXR:
                # ZEN's JPEG XR colour decodes red first; raw, zstd and JPEG subblocks hold blue
                # first (czifile's reading of ZEN's files; only grey JPEG XR is tested here).
                return _shaped(np.asarray(decoded), tile, dtype, samples)
            buffer = decoded.tobytes() if isinstance(decoded, np.ndarray) else decoded
        else:
            raise UnsupportedImageType(
                f"CZI compression {tile.compression} (camera raw or unknown) is not read; save the "
                "file uncompressed, zstd or JPEG XR"
            )
    except (UndecodableImage, UnsupportedImageType):
        raise
    except Exception as exc:  # noqa: BLE001 - codecs raise their own errors on corrupt data
        raise UndecodableImage(f"cannot decode a subblock of the CZI: {type(exc).__name__}: {exc}") from exc
    if len(buffer) < expected:
        raise UndecodableImage(f"a subblock of the CZI holds {len(buffer):,} bytes, not {expected:,}")
    little = np.dtype(dtype).newbyteorder("<")
    pixels = np.frombuffer(buffer, little, count=expected // little.itemsize)
    pixels = _shaped(pixels, tile, dtype, samples)
    return pixels[:, :, ::-1] if samples == 3 else pixels


def _shaped(pixels: np.ndarray, tile: _Tile, dtype: str, samples: int) -> np.ndarray:
    shape = (tile.height, tile.width, samples) if samples > 1 else (tile.height, tile.width)
    if pixels.size != math.prod(shape):
        raise UndecodableImage(f"a subblock of the CZI decodes to {pixels.shape}, not {shape}")
    return pixels.reshape(shape).astype(dtype, copy=False)


def _zstd1(raw: bytes, expected: int, itemsize: int) -> bytes:
    """ZEN's "zstd1": a header (its own size first; chunk 1 says whether the bytes of 16-bit pixels
    were split, all low bytes then all high bytes, which compresses better), then a zstd frame."""
    import imagecodecs

    header = raw[0] if raw else 0
    if header < 1 or header > len(raw):
        raise UndecodableImage("malformed zstd1 subblock header in the CZI")
    hilo = header >= 3 and raw[1] == 1 and bool(raw[2] & 1)
    buffer = imagecodecs.zstd_decode(raw[header:], out=expected)
    if not hilo or itemsize != 2:
        return bytes(buffer)
    split = np.frombuffer(buffer, np.uint8, count=expected)
    joined = np.empty(expected, np.uint8)
    joined[0::2], joined[1::2] = split[: expected // 2], split[expected // 2 :]
    return joined.tobytes()


def _channel_names(root: ET.Element) -> list[str | None]:
    """Each channel's name as ZEN shows it: its ``Name`` in the image's channels; where that is
    missing or empty, the display settings' name for it (``DAPI``, ``GFP``: paired by order, and
    only when both list as many channels), else its dye (``Fluor``); else none, and the channel is
    offered by index. Never its ``Id`` (``Channel:0``, or a GUID): real ZEN and libCZI files carry
    channels with an Id and no Name, which read as if "Channel:0" were a name."""
    channels = list(root.iterfind(".//Information/Image/Dimensions/Channels/Channel"))
    displayed = root.iterfind(".//DisplaySetting/Channels/Channel")
    shown = [(c.get("Name") or "").strip() or None for c in displayed]
    names: list[str | None] = []
    for k, channel in enumerate(channels):
        name = (channel.get("Name") or "").strip() or None
        if name is None and len(shown) == len(channels):
            name = shown[k]
        names.append(name or (channel.findtext("Fluor") or "").strip() or None)
    return names


def _metadata(xml: str) -> tuple[list[str | None], PixelSize | None, list[str], tuple[str | None, ...]]:
    """Channel names, the pixel size and the scenes' names from the CZI's XML; notes on what
    could not be read."""
    notes: list[str] = []
    if not xml.strip():
        return [], None, ["the CZI has no metadata: no channel names or pixel size"], ()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        note = f"the CZI's metadata is not readable XML ({exc}): no channel names or pixel size"
        return [], None, [note], ()
    names = _channel_names(root)
    lengths: dict[str, float] = {}
    for distance in root.iterfind(".//Scaling/Items/Distance"):
        axis, value = distance.get("Id"), distance.findtext("Value")
        try:
            metres = float(value) if value is not None else math.nan
        except ValueError:
            metres = math.nan
        if axis in ("X", "Y", "Z") and math.isfinite(metres) and metres > 0:
            lengths[axis] = metres * 1e6
    pixel_size = None
    if "X" in lengths:
        pixel_size = PixelSize(lengths["X"], lengths.get("Y", lengths["X"]), "czi", lengths.get("Z"))
    else:
        notes.append("the CZI does not give its pixel size (Scaling): sizes are in pixels")
    scene_names = tuple(
        scene.get("Name") or None
        for scene in root.iterfind(".//Information/Image/Dimensions/S/Scenes/Scene")
    )
    return names, pixel_size, notes, scene_names
