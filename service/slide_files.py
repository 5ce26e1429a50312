"""Slide-scale files read window by window: tiled TIFF / OME-TIFF / BigTIFF, OME-Zarr, CZI, LIF, ND2, OIB,
DeltaVision.

A slide of 50,000² px cannot be decoded whole (issue 16). :func:`open_slide` opens a file by
*path*, reads only its header and metadata, checks the request's plane choice exactly as an
upload's (:func:`service.microscopy.resolve`: same options, same 422 with the choices listed),
and returns a :class:`SlideSource` — a :class:`~service.regions.RegionSource` whose
``read(y0, y1, x0, x1)`` decodes only the chunks (TIFF tiles or strips, Zarr chunks) that the
window touches. :func:`overview` gives a small whole-plane view (a pyramid level when the file
has one, else a strided sample read window by window) for the normalisation percentiles.

How each layout is read:

- **Tiled or compressed TIFF**: tifffile's Zarr store (``TiffPageSeries.aszarr``) exposes every
  tile or strip as a chunk; ``zarr`` fetches and decodes the chunks of a window only.
- **Uncompressed contiguous TIFF** (ImageJ and many writers store one strip of the whole plane):
  Zarr would see one chunk of the whole image, so the window is read from a memory map of the
  file's pixel data instead, mapped for that one read and unmapped after it (pages touched by
  earlier windows do not stay in the process).
- **OME-Zarr** (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3, also bioformats2raw's layout): level 0 of
  the first multiscale image, its axes and ``coordinateTransformations`` scale.
- **CZI** (a Zeiss tile scan, an Axioscan slide): :func:`service.czi.open_windows` decodes the
  full-resolution subblocks a window touches, placed as the file says; pyramid subblocks are
  not read (one level), and the directory is walked and bounded first
  (``UNET_MAX_CZI_SUBBLOCKS``).
- **LIF** (a Leica project's image: a merged tile scan, a large z-stack): each image is one raw
  array in the file (:func:`service.lif.open_stored`), read from a memory map as an uncompressed
  TIFF is; the memory blocks are walked and bounded first (``UNET_MAX_LIF_BLOCKS``).
- **ND2** (a Nikon large image stitched in NIS-Elements, a position of a plate, a large z-stack):
  each frame (one time point, position and z-slice, its channels interleaved) is one raw array in
  the file (:func:`service.nd2.open_stored`), read from a memory map of that frame alone; the
  chunk map is walked and bounded first (``UNET_MAX_ND2_CHUNKS``). Compressed frames are refused
  (a window would inflate its whole frame).
- **OIB** (an Olympus FluoView z-stack or time-lapse larger than an upload): each plane is a TIFF
  of its own in the compound file, decoded whole when a window first touches it and kept until
  another plane is read (:class:`_WholePlanes`): a stack job reads one plane at a time. Planes are
  at most :data:`MAX_CHUNK_BYTES` / 2 pixels (4096², FluoView's largest scan): a chunk that large.

What is refused, before any pixel is read: a plane over ``UNET_MAX_SLIDE_PIXELS``
(:class:`SlideTooLarge`, 413); chunks over :data:`MAX_CHUNK_BYTES` decoded (a compressed
single-strip image: any window would decode it whole); ``project=`` (a projection reads every
z-plane of every window; choose ``z=``). The TIFF's IFD chain is walked and bounded
(``UNET_MAX_TIFF_PAGES``/``TAGS``, :mod:`service.structure`) before tifffile parses it.

Windows are ``[y0, y1) × [x0, x1)`` on level 0 (the input grid), as ``(h, w)`` or, when a colour
image is kept whole, ``(h, w, S)``; uint8, uint16 or float32 like ``imaging.decode``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service import bounded_codecs, imaging, microscopy, structure, tiff_sets
from service.imaging import ImageError, ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import Channel, Layout, PixelSize, PlaneReader, Selection, SelectionError
from service.regions import RegionSource, check_window

#: Largest decoded chunk (tile, strip, Zarr chunk) a slide may have: each window decodes whole
#: chunks, and Zarr decodes up to ``async.concurrency`` (10) at once, so this bounds a read's
#: memory at ~10 × 32 MiB. Tiles are ~0.1–4 MiB; only an image stored as a few huge compressed
#: strips comes near (a 32768² 8-bit image in one zlib strip is 1 GiB).
MAX_CHUNK_BYTES = 32 * 1024 * 1024
#: A file's first bytes read to tell its format (an ND2's signature runs to byte 48).
_HEAD_BYTES = 128

#: Input pixels read per overview window (bounded memory whatever the slide's size).
_OVERVIEW_WINDOW = 2048

#: NGFF axis names → the letters microscopy's layouts use.
_NGFF_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
#: The most images of one OME-Zarr group offered with ``series=`` (bioformats2raw's numbered
#: images, a well's fields): each is a group to open.
MAX_ZARR_IMAGES = 1_000

#: Threads tifffile's tile store decodes a window's tiles in (imagecodecs releases the GIL). Its
#: default on a 2-core machine is 1, serial. Reading 134 MP of the 32768² zlib slide in 1024-row
#: windows: 1.14 s wall / 1.09 CPU-s with 1, 0.52 / 0.82 with 2, 0.38 / 0.66 with 4 (fewer CPU-s
#: too: the serial path decodes on zarr's event-loop thread while the caller waits). A slide job
#: reads every pixel three times (limits, tiles, objects' intensity).
DECODE_THREADS = 4


class SlideTooLarge(ImageTooLarge):
    """The slide's plane has more pixels than ``UNET_MAX_SLIDE_PIXELS`` (HTTP 413)."""

    def __init__(self, pixels: int, limit: int, width: int, height: int) -> None:
        super().__init__(pixels, limit, width, height)
        self.args = (
            f"slide has {width}×{height} = {pixels:,} pixels; the slide limit is {limit:,} "
            "(UNET_MAX_SLIDE_PIXELS)",
        )


# --- levels: one resolution's array, indexed like numpy ---------------------------------------


class _MappedArray:
    """An uncompressed contiguous TIFF series, mapped from the file for each read only.

    A long-lived ``np.memmap`` keeps every page a read touched counted in the process's RSS
    until unmapped; mapping per read keeps a whole-slide pass at one window's pages.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.chunks = shape  # for the chunk bound: not applicable (reads are by byte range)

    def __getitem__(self, index: tuple) -> np.ndarray:
        with open(self.path, "rb") as handle:
            mapped = np.memmap(handle, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
            try:
                return np.array(mapped[index])  # a copy: the map goes away below
            finally:
                mapped._mmap.close()  # type: ignore[attr-defined]  # unmap now, not at GC


class _MergedAxes:
    """A level array whose OME Modulo sub-axes (FLIM lifetime bins after C: tifffile's ``CH``) are
    indexed as one axis with the one they divide, as :func:`service.microscopy.modulo_merged`
    offers them (channel ``k`` = C ``k // bins``, bin ``k % bins``)."""

    def __init__(self, inner: Any, groups: list[tuple[int, ...]]) -> None:
        self.inner, self.groups = inner, groups
        self.shape = tuple(math.prod(inner.shape[d] for d in group) for group in groups)
        chunks = getattr(inner, "chunks", inner.shape)
        self.chunks = tuple(chunks[g[0]] if len(g) == 1 else 1 for g in groups)
        self.dtype = inner.dtype

    def __getitem__(self, index: tuple) -> np.ndarray:
        expanded: list[Any] = []
        for group, value in zip(self.groups, index, strict=True):
            if len(group) == 1:
                expanded.append(value)
            else:
                sizes = [self.inner.shape[d] for d in group]
                expanded += [int(i) for i in np.unravel_index(int(value), sizes)]
        return self.inner[tuple(expanded)]


def _merge_modulo(axes: str, levels: list[_Level]) -> tuple[str, list[_Level]]:
    """``axes`` and ``levels`` with each OME Modulo sub-axis (H, E, A, P right after C, Z or T)
    folded into the one it divides, as the layout offers them; unchanged where there is none."""
    groups = microscopy.modulo_groups(axes)
    if len(groups) == len(axes):
        return axes, levels
    merged = "".join(axes[group[0]] for group in groups)
    return merged, [_Level(_MergedAxes(lv.array, groups), lv.height, lv.width) for lv in levels]


class _Nd2Frames:
    """An ND2's frames at one position as one array: its loops but positions (``T``, ``Z`` in the
    file's order), then Y, X and the frame's interleaved components (channels, or colour samples);
    each read maps the one frame it lies in, for that read only."""

    def __init__(self, path: Path, stored: Any) -> None:
        self.path, self.stored = path, stored
        frame = stored.frame
        self.lead = tuple(axis for axis, _count in stored.loops if axis != "P")
        counts = dict(stored.loops)
        self.shape = tuple(counts[a] for a in self.lead) + (frame.height, frame.width, frame.components)
        self.dtype = frame.dtype
        self.chunks = self.shape  # read by byte range, as _MappedArray

    def __getitem__(self, index: tuple) -> np.ndarray:
        *lead, rows, columns, component = index
        frame = self.stored.frame
        offset = self.stored.where(dict(zip(self.lead, lead, strict=True)))
        itemsize = frame.dtype.itemsize
        with open(self.path, "rb") as handle:
            mapped = np.memmap(handle, dtype=np.uint8, mode="r", offset=offset, shape=(frame.nbytes,))
            try:
                pixels = np.ndarray((frame.height, frame.width, frame.components), frame.dtype, buffer=mapped,
                                    strides=(frame.row_bytes, frame.components * itemsize, itemsize))
                window = np.array(pixels[rows, columns, component])  # a copy: the map goes away below
                del pixels
                return window
            finally:
                mapped._mmap.close()  # type: ignore[attr-defined]  # unmap now, not at GC


class _WholePlanes:
    """A file whose planes are stored one blob each (an OIB's TIFF per plane) as one array over its
    plane axes (``T``, ``Z``, ``C`` as the layout has them), then Y, X: a read decodes the plane it
    lies in through ``read`` and keeps it, so the windows of one plane decode it once."""

    def __init__(self, layout: Layout, read: PlaneReader) -> None:
        self.lead = tuple(axis for axis in layout.axes if axis in "TZC")
        self.shape = tuple(layout.shape[: len(self.lead)]) + (layout.height, layout.width)
        self.dtype = np.dtype(layout.dtype)
        self.chunks = self.shape  # one chunk: the whole plane is decoded by any read of it
        self._read = read
        self._kept: tuple[tuple[int, ...], np.ndarray] | None = None
        self._lock = threading.Lock()  # one file handle: its reads seek

    def __getitem__(self, index: tuple) -> np.ndarray:
        *lead, rows, columns = index
        key = tuple(int(i) for i in lead)
        with self._lock:
            if self._kept is None or self._kept[0] != key:
                self._kept = (key, self._read(dict(zip(self.lead, key, strict=True))))
            return np.array(self._kept[1][rows, columns])


class _BlueFirstArray(_MappedArray):
    """A colour image stored blue first (a LIF's), its samples read red first."""

    def __getitem__(self, index: tuple) -> np.ndarray:
        *lead, sample = index
        if isinstance(sample, int):
            return super().__getitem__((*lead, self.shape[-1] - 1 - sample))
        return super().__getitem__(index)[..., ::-1]


@dataclass(frozen=True)
class _Level:
    array: Any  # zarr.Array or _MappedArray, axes as the slide's
    height: int
    width: int


# --- the source -------------------------------------------------------------------------------


class SlideSource:
    """One plane of a slide file as a :class:`~service.regions.RegionSource`.

    ``plane``: what was chosen (channel, z, t, pixel size, layout, warnings), as
    ``microscopy.select`` describes an upload's plane, with an empty image.
    ``levels``: ``(H, W)`` of each resolution the file holds, level 0 first.
    """

    def __init__(
        self,
        levels: list[_Level],
        axes: str,
        fixed: dict[str, int],
        sample: int | None,
        plane: microscopy.Plane,
        close: Callable[[], None],
        absent: Callable[[dict[str, int]], bool] | None = None,
    ) -> None:
        """``absent``: whether the plane at these coordinates is missing from the file (a page of
        a multi-file set whose file is not there), which a read would fill with zeros."""
        if absent is not None and absent(fixed):
            raise UndecodableImage(
                f"the plane asked for ({', '.join(f'{a.lower()}={i}' for a, i in sorted(fixed.items()))}) "
                "is not in the files: the file of the set holding it is not beside this one, or the "
                "file's index places it past the end of a file (cut short?); it is missing, not read as zeros"
            )
        self._levels = levels
        self._axes = axes
        self._fixed = fixed
        self._sample = sample
        self._close = close
        self._absent = absent
        self.plane = plane
        stored = np.dtype(levels[0].array.dtype)
        self._dtype = window_dtype(stored)
        extra = ()
        if "S" in axes and sample is None:
            extra = (int(levels[0].array.shape[axes.index("S")]),)
        self._shape = (levels[0].height, levels[0].width, *extra)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def levels(self) -> list[tuple[int, int]]:
        return [(level.height, level.width) for level in self._levels]

    @property
    def pixel_size(self) -> PixelSize | None:
        return self.plane.pixel_size

    @property
    def chunk_rows(self) -> int | None:
        """Rows per chunk of level 0 when a read decodes whole chunks (tiles, strips, Zarr
        chunks); None for an uncompressed contiguous series (read by byte range)."""
        array = self._levels[0].array
        if isinstance(getattr(array, "inner", array), (_MappedArray, _Nd2Frames)):
            return None
        return int(array.chunks[self._axes.index("Y")])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels ``[y0:y1, x0:x1]`` of level 0; decodes only the chunks they lie in."""
        return self.read_level(0, y0, y1, x0, x1)

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels ``[y0:y1, x0:x1]`` of pyramid ``level`` (coordinates on that level)."""
        lv = self._levels[level]
        check_window((lv.height, lv.width), y0, y1, x0, x1)
        index = []
        for axis in self._axes:
            if axis == "Y":
                index.append(slice(y0, y1))
            elif axis == "X":
                index.append(slice(x0, x1))
            elif axis == "S":
                index.append(slice(None) if self._sample is None else self._sample)
            else:
                index.append(self._fixed.get(axis, 0))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                window = np.asarray(lv.array[tuple(index)])
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec errors, truncated tiles
            raise UndecodableImage(
                f"cannot decode the slide's window [{y0}:{y1}, {x0}:{x1}]: {imaging.reason(exc)}"
            ) from exc
        kept = [a for a in self._axes if a in "YXS" and not (a == "S" and self._sample is not None)]
        if kept != ["Y", "X"] and kept != ["Y", "X", "S"]:
            window = np.moveaxis(window, [kept.index(a) for a in "YXS" if a in kept], range(len(kept)))
        return _convert(window, self._dtype)

    def of_channel(self, channel: microscopy.Channel) -> SlideSource:
        """The same plane (z, t, level arrays) in ``channel``, e.g. one measured (``measure=``):
        its own pages along C, or its sample of colour pixels. Closing it closes nothing."""
        fixed, sample = dict(self._fixed), self._sample
        if "S" in self._axes:
            sample = channel.index
        else:
            fixed["C"] = channel.index
        return SlideSource(self._levels, self._axes, fixed, sample, self.plane, lambda: None, self._absent)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def window_dtype(stored: np.dtype) -> np.dtype:
    """The dtype windows are given in: uint8/uint16/float32 kept, bool → uint8 (0/255), anything
    else → float32. Fixed per file (``imaging.supported_dtype`` looks at the pixels' range,
    which differs from window to window)."""
    if stored in (np.uint8, np.uint16, np.float32):
        return np.dtype(stored)
    if stored == np.dtype(bool):
        return np.dtype(np.uint8)
    if np.issubdtype(stored, np.integer) or np.issubdtype(stored, np.floating):
        return np.dtype(np.float32)
    raise UnsupportedImageType(f"slide pixel type {stored} is not supported")


def _convert(window: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if window.dtype == bool:
        return window.astype(np.uint8) * np.uint8(255)
    return np.ascontiguousarray(window, dtype=dtype)


# --- opening ----------------------------------------------------------------------------------


def is_slide_path(path: str | Path) -> bool:
    """Whether ``path`` looks like something :func:`open_slide` reads (a TIFF, a CZI, a LIF, an
    ND2, an OIB, a DeltaVision file or a Zarr folder)."""
    p = Path(path)
    if p.is_dir():
        return any((p / name).exists() for name in (".zattrs", ".zgroup", "zarr.json"))
    if p.suffix.lower() == ".oif":  # FluoView's settings file, its planes in the folder beside it
        return p.is_file()
    try:
        with open(p, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
            return (microscopy.is_tiff(head) or head[:10] == structure.CZI_MAGIC or structure.is_lif(head)
                    or structure.is_nd2(head) or structure.is_compound(head) or structure.is_dv(head)
                    or structure.is_hdf5(head))
    except OSError:
        return False


def open_slide(
    path: str | Path,
    selection: Selection | None = None,
    *,
    max_pixels: int,
    limits: structure.Limits | int,
    model_channels: int = 1,
) -> SlideSource:
    """Open a slide file by path for reading the chosen plane window by window.

    ``max_pixels``: the slide limit (``UNET_MAX_SLIDE_PIXELS``) on level 0's width × height.
    ``limits``: bounds on a TIFF's structure (pages, tags), checked before tifffile parses it.

    Raises:
        SelectionError: several channels/planes and no choice, a choice the file lacks, or
            ``project=`` (not offered for slides).
        imaging.ImageError subclasses: undecodable, unsupported layout, too large, too many pages.
    """
    selection = selection or Selection()
    p = Path(path)
    if p.is_dir():
        return _open_zarr(p, selection, max_pixels, model_channels, structure.as_limits(limits))
    if p.suffix.lower() == ".oif":
        return _open_oif(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    try:
        with open(p, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as exc:
        raise UndecodableImage(f"cannot open the slide file: {exc.strerror}") from exc
    if head[:10] == structure.CZI_MAGIC:
        return _open_czi(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    if structure.is_lif(head):
        return _open_lif(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    if structure.is_nd2(head):
        return _open_nd2(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    if structure.is_compound(head):
        return _open_oib(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    if structure.is_dv(head):
        return _open_dv(p, selection, max_pixels, model_channels)
    if structure.is_hdf5(head):
        return _open_ims(p, selection, max_pixels, structure.as_limits(limits), model_channels)
    if head.lstrip().startswith(b"<") and imaging.is_ome_xml(_read_head(p, imaging.OME_XML_HEAD)):
        raise UnsupportedImageType(
            "this is an OME companion file: it describes a multi-file OME-TIFF set and holds no pixels; "
            "name one of the set's TIFFs beside it (each is read with the set's metadata)"
        )
    if not microscopy.is_tiff(head):
        raise UnsupportedImageType(
            "slides are read from TIFF (OME-TIFF, BigTIFF, tiled or not), OME-Zarr, CZI, LIF, ND2, OIB, "
            "ZVI, DeltaVision or Imaris; this file is none"
        )
    return _open_tiff(p, selection, max_pixels, structure.as_limits(limits), model_channels)


def _read_head(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _open_tiff(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    tif = tiff_sets.open_by_path(path, limits)
    stores: list[Any] = []

    def close() -> None:
        for store in stores:
            store.close()
        tif.close()

    try:
        try:
            layout, series, absent = microscopy.tiff_image(tif, max_pixels, selection.series, limits)
        except ImageTooLarge as exc:
            raise SlideTooLarge(exc.pixels, exc.limit, exc.width, exc.height) from exc
        with microscopy.decoder_errors():  # tifffile on a hostile header: a 400, as for an upload
            axes = "".join("Z" if a in ("I", "Q") else a for a in series.axes)
            if tif.is_lsm and "S" in series.keyframe.axes:
                axes = axes.replace("C", "S")  # ZEN's channels are the samples of a page: the layout's too
            levels = [_tiff_level(tif, path, series, i, stores) for i in range(len(series.levels))]
            if tif.is_ome:
                axes, levels = _merge_modulo(axes, levels)
        return _source(levels, axes, layout, selection, model_channels, close, absent)
    except BaseException:
        close()
        raise


def _tiff_level(tif: Any, path: Path, base: Any, index: int, stores: list[Any]) -> _Level:
    import zarr

    series = base.levels[index]
    height, width = (int(series.shape[series.axes.index(a)]) for a in "YX")
    keyframe = series.keyframe
    # Mapped from ``path`` only where every page is the file's own: a series may gather the pages
    # of files beside it (a Micro-Manager position's), whose offsets mean nothing in this one.
    own_pages = all(page is None or page.parent is tif for page in series.pages)
    if own_pages and series.dataoffset is not None and keyframe.is_memmappable:
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        array: Any = _MappedArray(path, int(series.dataoffset), tuple(series.shape), dtype)
    else:
        # read_only: a series of pages in files beside this one (a Micro-Manager position's) has its
        # first page in a file tifffile has closed, which it asks whether it is writable otherwise.
        store = base.aszarr(level=index, maxworkers=DECODE_THREADS, read_only=True)
        stores.append(store)
        array = zarr.open_array(store, mode="r")
        _check_chunks(array, "TIFF " + ("tile" if keyframe.is_tiled else "strip"))
    return _Level(array, height, width)


#: Zarr filters that decode to Python objects or text, never to a microscope's pixels.
_OBJECT_FILTERS = frozenset({"categorize", "vlen-utf8", "vlen-bytes", "vlen-array", "json2", "msgpack2",
                             "pickle"})


def _check_filters(array: Any) -> None:
    """Refuse a Zarr array whose filters decode a chunk to objects or to a wider type than the
    array's: zarr applies them after the decompressor, whose output :mod:`service.bounded_codecs`
    bounds, and an ``astype`` filter to ``<U20000`` made one 16 kB chunk 1.4 GB (a re-audit)."""
    itemsize = np.dtype(array.dtype).itemsize
    metadata = array.metadata
    codecs = [*(getattr(metadata, "filters", None) or ()), *(getattr(metadata, "codecs", None) or ())]
    for codec in codecs:
        try:
            config = codec.get_config() if hasattr(codec, "get_config") else codec.to_dict()
        except Exception:  # noqa: BLE001 - a codec that describes nothing more: its name alone
            config = {}
        config = {**config, **(config.get("configuration") or {})} if isinstance(config, dict) else {}
        name = str(config.get("id") or config.get("name") or type(codec).__name__).lower()
        wide = None
        for key in ("decode_dtype", "dtype", "astype"):
            try:
                kind = np.dtype(config[key]) if key in config else None
            except TypeError:
                kind = np.dtype(object)
            if kind is not None and (kind.kind in "OUSV" or kind.itemsize > itemsize):
                wide = kind
        if name.rpartition(".")[2] in _OBJECT_FILTERS or wide is not None:
            raise UnsupportedImageType(
                f"the OME-Zarr's chunks pass through the filter {name!r}, which decodes them to "
                + (f"{wide}, wider than" if wide is not None else "objects, not")
                + f" its pixels ({array.dtype}): not read; save the image again without it"
            )


def _check_chunks(array: Any, kind: str) -> None:
    size = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    if size > MAX_CHUNK_BYTES:
        raise UnsupportedImageType(
            f"the slide stores its pixels in chunks ({kind}s) of {'×'.join(map(str, array.chunks))} = "
            f"{size / 2**20:.0f} MiB decoded, over the {MAX_CHUNK_BYTES // 2**20} MiB a window may decode "
            "at once; re-save it tiled (e.g. 512² tiles: `bfconvert -tilex 512 -tiley 512`, "
            "`vips tiffsave --tile`, or tifffile's tile=)"
        )


def _source(
    levels: list[_Level],
    axes: str,
    layout: Layout,
    selection: Selection,
    model_channels: int,
    close: Callable[[], None],
    absent: Callable[[dict[str, int]], bool] | None = None,
) -> SlideSource:
    """The chosen plane of a file whose level arrays have ``axes`` (C, Z, T, Y, X, S letters);
    ``absent``: whether a plane has no page (:class:`SlideSource`)."""
    for name, value in (("project", selection.project), ("measure_project", selection.measure_project)):
        if value is not None:
            raise SelectionError(
                f"{name}={value} is not offered for slides (it reads every z-plane of every window); "
                "choose one plane with z=",
                (name,),
                layout.choices(),
            )
    if layout.rgb:
        # Grey saved as RGB or a colour composite? Decided on a few windows, not the whole slide.
        whole = SlideSource(levels, axes, {}, None, _bare_plane(layout), lambda: None)
        layout = microscopy.with_colour(layout, _sample(whole))
    choice = microscopy.resolve(layout, selection, model_channels)
    fixed = dict(choice.coords)
    if choice.z is not None:
        fixed["Z"] = choice.z
    sample = choice.channel.index if choice.samples and choice.channel is not None else None
    measured = tuple(microscopy.Measured(c, np.empty((0, 0), np.uint8)) for c in choice.measured)
    return SlideSource(levels, axes, fixed, sample, choice.plane(np.empty((0, 0), np.uint8), measured), close,
                       absent)


def _sample(source: SlideSource, grid: int = 4, size: int = 256) -> np.ndarray:
    """``grid``² windows of ``size``² spread evenly over level 0, side by side in one array
    (decodes ~``grid``² tiles, whatever the slide's size)."""
    height, width = source.shape[:2]
    h, w = min(size, height), min(size, width)
    ys = np.linspace(0, height - h, grid).astype(int)
    xs = np.linspace(0, width - w, grid).astype(int)
    return np.concatenate([source.read(y, y + h, x, x + w) for y in ys for x in xs], axis=1)


def _bare_plane(layout: Layout) -> microscopy.Plane:
    return microscopy.Plane(image=np.empty((0, 0), np.uint8), layout=layout)


# --- CZI -------------------------------------------------------------------------------------


class _WindowedArray:
    """A file's planes indexed like the numpy array of its layout's axes (an int for each of T, Z,
    C; slices for Y and X; the colour samples), each read decoding only the pieces the window
    touches: a CZI's subblocks (:func:`service.czi.open_windows`), an Imaris file's chunks
    (:func:`service.ims.open_windows`, whose chunks hold ``depth`` z-slices, all inflated to read
    one)."""

    def __init__(
        self, layout: Layout, read_window: Callable[..., np.ndarray], tile: tuple[int, int], depth: int = 1
    ) -> None:
        self.axes, self.shape, self.dtype = layout.axes, layout.shape, np.dtype(layout.dtype)
        per_axis = {"Y": tile[0], "X": tile[1], "Z": depth}
        self.chunks = tuple(n if a == "S" else per_axis.get(a, 1)
                            for a, n in zip(layout.axes, layout.shape, strict=True))
        self._read = read_window

    def __getitem__(self, index: tuple) -> np.ndarray:
        coords: dict[str, int] = {}
        rows = columns = slice(None)
        sample: int | slice = slice(None)
        for axis, size, value in zip(self.axes, self.shape, index, strict=True):
            if axis == "Y":
                rows = slice(*value.indices(size)[:2])
            elif axis == "X":
                columns = slice(*value.indices(size)[:2])
            elif axis == "S":
                sample = value
            else:
                coords[axis] = int(value)
        window = self._read(coords, rows.start, rows.stop, columns.start, columns.stop)
        return window[..., sample] if window.ndim == 3 else window


def _open_czi(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    from service import czi

    structure.walk_file(path, structure.check_czi, limits)  # bounded before czifile parses it

    def opened() -> tuple[Layout, Callable[..., np.ndarray], tuple[int, int], int, Callable[[], None]]:
        layout, read_window, tile, close = czi.open_windows(path, max_pixels, selection.series)
        return layout, read_window, tile, 1, close

    return _by_window(opened, "CZI subblock", selection, model_channels)


def _by_window(
    opened: Callable[[], tuple[Layout, Callable[..., np.ndarray], tuple[int, int], int, Callable[[], None]]],
    kind: str,
    selection: Selection,
    model_channels: int,
) -> SlideSource:
    """A file read window by window (:class:`_WindowedArray`), opened by ``opened()``: its layout,
    window reader, pieces' (rows, columns), z-depth and what closes it; a plane over the slide limit
    is :class:`SlideTooLarge`, a piece over :data:`MAX_CHUNK_BYTES` refused (``kind`` names it)."""
    try:
        layout, read_window, tile, depth, close = opened()
    except ImageTooLarge as exc:
        raise SlideTooLarge(exc.pixels, exc.limit, exc.width, exc.height) from exc
    try:
        array = _WindowedArray(layout, read_window, tile, depth)
        _check_chunks(array, kind)
        return _source([_Level(array, layout.height, layout.width)], layout.axes, layout, selection,
                       model_channels, close)
    except BaseException:
        close()
        raise


# --- LIF -------------------------------------------------------------------------------------


def _open_lif(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    """A Leica LIF project's image (a merged tile scan, a large z-stack) read window by window
    from a memory map of the file: its pixels are one raw array per image, so a window reads only
    its own rows' bytes."""
    from service import lif

    structure.walk_file(path, structure.check_lif, limits)  # bounded before liffile parses it
    try:
        layout, stored = lif.open_stored(path, max_pixels, selection.series)
    except ImageTooLarge as exc:
        raise SlideTooLarge(exc.pixels, exc.limit, exc.width, exc.height) from exc
    if not stored.mappable:
        raise UnsupportedImageType(
            "this LIF image's rows are padded in the file, so it is not read by region; send it as an upload"
        )
    kind = _BlueFirstArray if stored.bgr else _MappedArray
    array = kind(path, stored.offset, stored.shape, stored.dtype)
    levels = [_Level(array, layout.height, layout.width)]
    return _source(levels, stored.axes, layout, selection, model_channels, lambda: None)


# --- ND2 -------------------------------------------------------------------------------------


def _open_nd2(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    """A Nikon ND2's position (a stitched large image, a z-stack) read window by window: each
    window maps only the frame it lies in, and reads only its own rows of it."""
    from service import nd2

    structure.walk_file(path, structure.check_nd2, limits)  # bounded before nd2 parses it
    try:
        layout, stored = nd2.open_stored(path, max_pixels, selection.series, limits.max_metadata_bytes)
    except ImageTooLarge as exc:
        raise SlideTooLarge(exc.pixels, exc.limit, exc.width, exc.height) from exc
    array = _Nd2Frames(path, stored)
    axes = "".join(array.lead) + "YX" + ("S" if layout.rgb else "C")
    levels = [_Level(array, layout.height, layout.width)]
    return _source(levels, axes, layout, selection, model_channels, lambda: None)


# --- OME-Zarr ---------------------------------------------------------------------------------


def _open_zarr(
    path: Path, selection: Selection, max_pixels: int, model_channels: int,
    limits: structure.Limits = structure.Limits(),
) -> SlideSource:
    import zarr

    bounded_codecs.install(MAX_CHUNK_BYTES)  # a chunk inflates no further than a chunk may hold
    notes: list[str] = []
    try:
        root = zarr.open_group(_metadata_bounded_store(path, limits.max_metadata_bytes), mode="r")
        images = _zarr_images(root)
        image_names = tuple(name for name, _, _ in images)
        index = microscopy.check_series(len(images), image_names, selection.series)
        _, group, which = images[index]
        attrs = group.attrs.asdict()
        meta = attrs.get("ome", attrs)  # NGFF 0.5 nests its keys under "ome"
        multiscale = meta["multiscales"][which]
        if "coordinateSystems" in multiscale:
            raise UnsupportedImageType(
                "this OME-Zarr describes its scales in coordinateSystems (NGFF 0.6, a version still in "
                "development); the service reads NGFF 0.1-0.5: write the image as OME-Zarr 0.4 or 0.5"
            )
        version = str(meta.get("version") or multiscale.get("version") or "?")
        axes_meta = [a if isinstance(a, dict) else {"name": a} for a in multiscale.get("axes", [])]
        datasets = multiscale["datasets"]
        arrays = [group[d["path"]] for d in datasets]
    except (UnsupportedImageType, SelectionError, structure.TooComplex, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - missing keys, bad JSON, missing arrays
        raise UndecodableImage(_store_relative(f"unreadable OME-Zarr metadata: {type(exc).__name__}: {exc}",
                                               path)) from exc

    # What the metadata says, read as it stands: a value of the wrong kind (an empty datasets list,
    # omero channels that are no list, a scale of text) is the file's fault, a 400, not a 500.
    with _zarr_metadata_errors(path):
        if len(images) > 1 and selection.series is None:
            notes.append(microscopy.first_series_note(len(images), "images", image_names[0] or "0"))
        base = arrays[0]
        if not axes_meta and base.ndim in (2, 5):  # NGFF 0.1/0.2: always TCZYX (or YX)
            axes_meta = [{"name": n} for n in ("tczyx" if base.ndim == 5 else "yx")]
        if len(axes_meta) != base.ndim:
            raise UndecodableImage(
                f"the OME-Zarr axes ({len(axes_meta)}) do not match its {base.ndim}-D arrays"
            )
        names = [str(a.get("name", "")).lower() for a in axes_meta]
        axes = ""
        for name, size in zip(names, base.shape, strict=True):
            letter = _NGFF_AXES.get(name)
            if letter is None:
                if size > 1:
                    raise UnsupportedImageType(
                        f"the OME-Zarr has an axis {name!r} of size {size}; the service reads t, c, z, y, x"
                    )
                letter = "?"
            axes += letter
        if "Y" not in axes or "X" not in axes:
            raise UnsupportedImageType(f"the OME-Zarr's axes {names} have no y and x")
        height, width = int(base.shape[axes.index("Y")]), int(base.shape[axes.index("X")])
        if width * height > max_pixels:
            raise SlideTooLarge(width * height, max_pixels, width, height)
        for array in arrays:
            if array.ndim != base.ndim:
                raise UndecodableImage("the OME-Zarr's resolution levels differ in dimensions")
            _check_chunks(array, "Zarr chunk")
            _check_filters(array)

        sizes = {a: int(n) for a, n in zip(axes, base.shape, strict=True) if a != "?"}
        n_channels = sizes.get("C", 1)
        omero = meta.get("omero") or attrs.get("omero") or {}
        labels = [c.get("label") if isinstance(c, dict) else None for c in omero.get("channels", [])]
        # a label 0 is a name
        labels = [str(label).strip() or None if label is not None else None for label in labels]
        channels = tuple(Channel(i, labels[i] if i < len(labels) else None) for i in range(n_channels))
        layout = Layout(
            format=f"OME-Zarr {version}",
            width=width,
            height=height,
            dtype=str(base.dtype),
            axes="".join(a for a in "TCZ" if sizes.get(a, 1) > 1) + "YX",
            shape=tuple(sizes[a] for a in "TCZ" if sizes.get(a, 1) > 1) + (height, width),
            channels=channels,
            planes={a: sizes[a] for a in microscopy.PLANE_AXES if sizes.get(a, 1) > 1},
            pixel_size=microscopy.stack_z_step(
                _ngff_pixel_size(multiscale, datasets[0], axes_meta, axes, notes), sizes.get("Z", 1)
            ),
            warnings=tuple(notes),
            series_count=len(images),
            series=index,
            series_names=image_names if len(images) > 1 else (),
        )
        levels = [
            _Level(a, int(a.shape[axes.index("Y")]), int(a.shape[axes.index("X")])) for a in arrays
        ]
    return _source(levels, axes, layout, selection, model_channels, lambda: None)


#: The files in which a Zarr store keeps its JSON metadata (v2 and v3), which zarr reads whole.
_ZARR_METADATA_FILES = frozenset({".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json"})


def _metadata_bounded_store(path: Path, limit: int) -> Any:
    """A read-only store of the folder whose metadata files are refused past ``limit`` bytes
    (``UNET_MAX_METADATA_BYTES``) before zarr reads and parses one: a 400 MB ``.zattrs`` took 1.3 GB
    (a hostile-input audit). Chunks are read as zarr reads them (their decoding is bounded by
    :mod:`service.bounded_codecs`)."""
    from zarr.storage import LocalStore

    class MetadataBounded(LocalStore):
        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            if key.rsplit("/", 1)[-1] in _ZARR_METADATA_FILES:
                try:
                    size = os.stat(self.root / key).st_size
                except OSError:
                    size = 0  # absent: zarr looks for v2 and v3 files alike
                if size > limit:
                    raise structure.TooComplex(
                        f"the store's {key} has {size:,} bytes, more than {limit:,}", limit,
                        "UNET_MAX_METADATA_BYTES",
                    )
            return await super().get(key, prototype, byte_range)

    return MetadataBounded(path, read_only=True)


@contextlib.contextmanager
def _zarr_metadata_errors(path: Path) -> Iterator[None]:
    """Errors of metadata values of the wrong kind as :class:`UndecodableImage`; the service's own
    refusals (and a MemoryError) as they are."""
    try:
        yield
    except (ImageError, SelectionError, MemoryError):
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, ArithmeticError) as exc:
        raise UndecodableImage(_store_relative(f"unreadable OME-Zarr metadata: {type(exc).__name__}: {exc}",
                                               path)) from exc


def _store_relative(text: str, path: Path) -> str:
    """``text`` naming the store's files from the store's own name on, never the server's folders
    above it: zarr's errors give a ``file:///srv/data/...`` URL (a re-audit found them in details)."""
    above = str(path.resolve().parent)
    for prefix in (f"file://{above}/", f"{above}/"):
        text = text.replace(prefix, "")
    return text


def _ngff_pixel_size(
    multiscale: dict, dataset: dict, axes_meta: list[dict], axes: str, notes: list[str]
) -> PixelSize | None:
    """µm per pixel of level 0 from its ``scale`` transform (× the multiscale's own, if any)."""
    scale = [1.0] * len(axes)
    found = False
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                scale = [s * float(v) for s, v in zip(scale, t["scale"], strict=True)]
                found = True
    if not found:
        return None
    um = []
    for letter in "XY":
        meta = axes_meta[axes.index(letter)]
        unit = meta.get("unit")
        if unit is None:
            notes.append("the OME-Zarr's x/y axes have no unit; its scale is not taken as a pixel size")
            return None
        factor = microscopy.unit_um(str(unit))
        if factor is None:
            notes.append(f"the OME-Zarr axis unit {unit!r} is not a length; no pixel size")
            return None
        value = scale[axes.index(letter)] * factor
        if not (math.isfinite(value) and value > 0):
            return None
        um.append(value)
    return PixelSize(um[0], um[1], "ome-zarr", z_um=_ngff_z_step(scale, axes_meta, axes))


def _ngff_z_step(scale: list[float], axes_meta: list[dict], axes: str) -> float | None:
    """µm between z-slices from the z axis's scale, where the store has a z axis with a length unit."""
    if "Z" not in axes:
        return None
    factor = microscopy.unit_um(str(axes_meta[axes.index("Z")].get("unit")))
    value = scale[axes.index("Z")] * factor if factor is not None else math.nan
    return value if math.isfinite(value) and value > 0 else None


def _zarr_images(root: Any) -> list[tuple[str | None, Any, int]]:
    """The images of an OME-Zarr group, as ``series=`` counts them: ``(name, group, index of its
    multiscale)``. An image's group holds its multiscales (usually one); bioformats2raw writes each
    image of the file it converted at ``0/``, ``1/`` … beside a marker; an HCS well lists its fields.

    Raises:
        UnsupportedImageType: a plate (its fields are named by path: ``plate.zarr/A/1/0``) or a
            group that is no image.
    """
    attrs = root.attrs.asdict()
    meta = attrs.get("ome", attrs)
    if "multiscales" in meta:
        multiscales = meta["multiscales"]
        return [(m.get("name") if isinstance(m, dict) and len(multiscales) > 1 else None, root, k)
                for k, m in enumerate(multiscales)]
    if "plate" in meta:
        plate = meta["plate"] if isinstance(meta["plate"], dict) else {}
        wells = [w.get("path") for w in plate.get("wells", []) if isinstance(w, dict) and w.get("path")]
        example = f"{wells[0]}/0" if wells else "A/1/0"
        raise UnsupportedImageType(
            f"this OME-Zarr is an HCS plate of {len(wells)} well{'s' if len(wells) != 1 else ''}; a slide "
            f"job reads one field of a well: name its folder, e.g. '{example}' under the plate"
        )
    if "well" in meta:
        well = meta["well"] if isinstance(meta["well"], dict) else {}
        fields = [f.get("path") for f in well.get("images", []) if isinstance(f, dict) and f.get("path")]
        return [(str(field), root[str(field)], 0) for field in fields[:MAX_ZARR_IMAGES]]
    if "bioformats2raw.layout" in meta:
        images = []
        while str(len(images)) in root and len(images) < MAX_ZARR_IMAGES:
            group = root[str(len(images))]
            inner = group.attrs.asdict()
            inner_meta = inner.get("ome", inner)
            named = (inner_meta.get("multiscales") or [{}])[0]
            images.append((named.get("name") if isinstance(named, dict) else None, group, 0))
        if images:
            return images
    raise UnsupportedImageType(
        "this Zarr store has no OME-NGFF 'multiscales' metadata; slides are read from OME-Zarr images"
    )


# --- overview ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """A small whole-plane view. ``image``: ``(h, w)`` or ``(h, w, S)`` in the source's dtype;
    ``scale``: input (level-0) pixels per overview pixel along (y, x); ``level``: the pyramid
    level it was taken from (0: a strided sample of the full resolution)."""

    image: np.ndarray
    scale: tuple[float, float]
    level: int


def overview(source: RegionSource, max_pixels: int, use_pyramid: bool = True) -> Overview:
    """The whole plane downsampled to at most ``max_pixels`` pixels, read window by window.

    From the largest pyramid level that fits when the source has levels (``use_pyramid``), else
    every ``f``-th pixel of every ``f``-th row of the finest level that was available (a strided
    sample keeps the pixel value distribution that the percentile normalisation measures; a
    pyramid level is usually a mean, which pulls the high percentiles of sparse bright nuclei
    down). Memory: the output plus one window of :data:`_OVERVIEW_WINDOW`² input pixels.
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    levels = source.levels if isinstance(source, SlideSource) and use_pyramid else [source.shape[:2]]
    level = next((i for i, (h, w) in enumerate(levels) if h * w <= max_pixels), len(levels) - 1)
    height, width = levels[level]
    if level > 0:
        assert isinstance(source, SlideSource)

        def read(y0: int, y1: int, x0: int, x1: int, _level: int = level) -> np.ndarray:
            return source.read_level(_level, y0, y1, x0, x1)
    else:
        read = source.read
    step = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / step) * math.ceil(width / step) > max_pixels:
        step += 1
    span = step * max(1, _OVERVIEW_WINDOW // step)  # a multiple of step: samples at 0, step, 2·step...
    out_h, out_w = math.ceil(height / step), math.ceil(width / step)
    out = np.empty((out_h, out_w, *source.shape[2:]), source.dtype)
    for y0 in range(0, height, span):
        for x0 in range(0, width, span):
            window = read(y0, min(y0 + span, height), x0, min(x0 + span, width))[::step, ::step]
            out[y0 // step : y0 // step + window.shape[0], x0 // step : x0 // step + window.shape[1]] = window
    h0, w0 = source.shape[:2]
    return Overview(out, (h0 / out_h, w0 / out_w), level)


# --- OIB and DeltaVision: planes read whole, one at a time ---------------------------------------

#: The largest OIB or DeltaVision plane read by path: each is read whole (a chunk of up to 4 bytes a
#: pixel).
OIB_MAX_PLANE_PIXELS = MAX_CHUNK_BYTES // 2


def _open_oib(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    """An Olympus OIB's or a Zeiss ZVI's planes (a z-stack or a time-lapse larger than an upload)
    read plane by plane from the file: a window decodes the plane (an OIB's TIFF, a ZVI item's
    pixels), kept for the next window of it."""
    from service import compound

    structure.walk_file(path, structure.check_compound, limits)  # bounded before olefile parses it
    return _whole_planes(
        "compound file",
        lambda limit: compound.open_planes(path, limit, selection.series, limits.max_metadata_bytes),
        selection, max_pixels, model_channels,
    )


def _open_oif(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    """An Olympus OIF (FluoView's folder format: the ``.oif`` and its ``.oif.files`` folder) read
    plane by plane, each plane's TIFF from the folder."""
    from service import oib

    return _whole_planes("OIF", lambda limit: oib.open_oif(path, limit, selection.series, limits),
                         selection, max_pixels, model_channels)


def _open_dv(path: Path, selection: Selection, max_pixels: int, model_channels: int) -> SlideSource:
    """A DeltaVision stack (z-slices, wavelengths, time points larger than an upload) read plane by
    plane from a memory map of the file: a window copies its plane out of the map, kept for the
    next window of it. The header's sizes are checked against the file when it is opened."""
    from service import dv

    return _whole_planes("DeltaVision file", lambda limit: dv.open_planes(path, limit, selection.series),
                         selection, max_pixels, model_channels)


def _open_ims(
    path: Path, selection: Selection, max_pixels: int, limits: structure.Limits, model_channels: int
) -> SlideSource:
    """An Imaris file (a stitched image, a volume or a time-lapse larger than an upload) read window
    by window from a memory map of the file: a window inflates only the chunks it touches, so a plane
    may be of any size within the slide limit."""
    from service import ims

    def opened() -> tuple[Layout, Callable[..., np.ndarray], tuple[int, int], int, Callable[[], None]]:
        layout, read_window, (depth, rows, columns), close = ims.open_windows(
            path, max_pixels, selection.series, limits.max_metadata_bytes)
        return layout, read_window, (rows, columns), depth, close

    return _by_window(opened, "Imaris chunk", selection, model_channels)


def _whole_planes(
    what: str,
    open_planes: Callable[[int], tuple[Layout, PlaneReader, Callable[[], None]]],
    selection: Selection,
    max_pixels: int,
    model_channels: int,
) -> SlideSource:
    """A file whose planes are read whole, one at a time (:class:`_WholePlanes`), opened by
    ``open_planes(plane pixel limit)``: planes over :data:`OIB_MAX_PLANE_PIXELS` are refused (as
    one chunk that large), over ``max_pixels`` as a slide too large."""
    try:
        layout, read, close = open_planes(min(max_pixels, OIB_MAX_PLANE_PIXELS))
    except ImageTooLarge as exc:
        if exc.pixels > max_pixels:
            raise SlideTooLarge(exc.pixels, max_pixels, exc.width, exc.height) from exc
        raise UnsupportedImageType(
            f"this {what}'s planes are {exc.width}×{exc.height}: read by path, its planes are decoded "
            f"whole, at most {OIB_MAX_PLANE_PIXELS:,} pixels each; send it as an upload"
        ) from exc
    try:
        array = _WholePlanes(layout, read)
        levels = [_Level(array, layout.height, layout.width)]
        return _source(levels, "".join(array.lead) + "YX", layout, selection, model_channels, close)
    except BaseException:
        close()
        raise
