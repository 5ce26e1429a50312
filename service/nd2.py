"""Nikon ND2 files (as NIS-Elements writes them: format version 3) read as uploads: channels,
z-slices, time points, pixel size, and the positions of a multi-point experiment as ``series=``.

An ND2 is a run of chunks: metadata (the frame's size and pixel type, the experiment's loops, the
channels and the calibration) and one chunk per frame, a frame being every channel of one time
point, position and z-slice, interleaved pixel by pixel. This module turns the chosen position into
the :class:`~service.microscopy.Layout` and plane reader every other format has, so the channel,
plane and pixel-size rules of :mod:`service.microscopy` apply unchanged.

- **Metadata**: the ``nd2`` package (T. Lambert, BSD-3; what napari and bioio read ND2 with)
  decodes NIS's binary "CLX lite" records (and version 2's XML ones, a path no test here takes):
  the experiment's loops, the channels' names, the calibration. It is given the file only after
  :func:`service.structure.check_nd2` has walked and bounded the chunk map and the metadata.
- **Pixels**: read here, by the frame's chunk (:func:`service.structure.nd2_chunks`), as a strided
  view of the upload's bytes or of a map of the file: one channel of one frame is copied, whatever
  the file's size. ``nd2`` reads frames too, but gives a frame missing from a truncated file as
  zeros (here: an error naming it) and inflates a compressed frame whole, whatever it claims
  (here: at most the frame's size).
- **Positions**: the XY positions of a multi-point acquisition (NIS's "ND Acquisition" XY loop,
  a well plate's fields) are the file's images, chosen with ``series=`` and named by their names
  in NIS where it has them (``A1``, ``#2``); the first is read unless the request says, with a
  notice naming how many there are.
- **Channels** by their names in NIS (``DAPI``, ``FITC``, ``Cy5``: the optical configurations the
  channels were acquired with); indices always work.
- **Pixel size**: the image's calibration (µm per pixel, NIS's ``dCalibration``, where it says the
  image is calibrated); the z-step from the z loop.
- **What is refused, naming what to do**: lossy-compressed frames, custom loops, several colour
  channels, or frames whose components are neither one per channel nor three for colour.
"""

from __future__ import annotations

import mmap
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service import structure
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType, supported_dtype
from service.microscopy import (
    PLANE_AXES,
    RGB_NAMES,
    Channel,
    Layout,
    PixelSize,
    PlaneReader,
    SelectionError,
    check_series,
    first_series_note,
    image_summary,
)

#: NIS's loops (``nd2``'s loop type names) → the axes the service reads them as.
_LOOP_AXES = {"TimeLoop": "T", "NETimeLoop": "T", "XYPosLoop": "P", "ZStackLoop": "Z"}
_FRAME_PREFIX = b"ImageDataSeq|"
_STAMP_BYTES = 8  # each frame's data starts with its acquisition time (a double, ms)
#: The metadata bound of :class:`service.structure.Limits` where a caller gives none.
_METADATA_BYTES = structure.Limits().max_metadata_bytes



class Frame(NamedTuple):
    """How each frame's pixels lie: ``components`` per pixel (channels × samples), rows
    ``row_bytes`` apart, zlib-compressed or not."""

    height: int
    width: int
    components: int
    dtype: np.dtype
    row_bytes: int
    compressed: bool

    @property
    def nbytes(self) -> int:
        """The bytes a frame's rows span (the last without its padding)."""
        return (self.height - 1) * self.row_bytes + self.width * self.components * self.dtype.itemsize


def open_planes(
    source: bytes | Path, max_pixels: int, series: int | None = None, metadata_bytes: int = _METADATA_BYTES
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of an ND2 (an upload's bytes, or a file) at position ``series`` (0-based among
    the experiment's XY positions; None: the first, with a notice when there are more) and a reader
    of its planes by coordinates (``{"C": c, "Z": z, "T": t}``, 0 where left out): ``(H, W)`` grey
    or ``(H, W, 3)`` RGB, uint8 / uint16 / float32; and what closes the file.

    The caller has walked the file with :func:`service.structure.check_nd2`. ``metadata_bytes``:
    the most the metadata decoder may inflate, in all (``UNET_MAX_METADATA_BYTES``).

    Raises:
        UndecodableImage: what the metadata decoder cannot parse; a frame the file lacks or cuts short.
        UnsupportedImageType: lossy frames, custom loops, several colour channels.
        ImageTooLarge: a plane over ``max_pixels``.
        SelectionError: ``series`` is not in the file, or a frame the acquisition never wrote.
    """
    view, close = _mapped(source)
    try:
        layout, read, _about = _planes(view, max_pixels, series, metadata_bytes)
    except BaseException:
        close()
        raise
    return layout, read, close


class Stored(NamedTuple):
    """Where position ``position``'s frames lie in the file, for reading windows from a map of it
    (slide and stack jobs by path): each ``frame`` (rows ``row_bytes`` apart, components
    interleaved) at its offset, the loops (axis letter, count) outermost first."""

    frame: Frame
    loops: tuple[tuple[str, int], ...]
    position: int
    offsets: dict[int, tuple[int, int]]  # frame index → (offset of its pixels, bytes there)

    def where(self, coords: dict[str, int]) -> int:
        """The offset of the pixels of the frame at ``coords`` (``{"T": t, "Z": z}``, 0 where left
        out) at this position.

        Raises:
            UndecodableImage: the file has no such frame, or too few bytes for it.
        """
        index = _frame_index(self.loops, {**coords, "P": self.position})
        offset, available = self.offsets.get(index, (0, -1))
        if available < self.frame.nbytes:
            raise UndecodableImage(
                f"the ND2 holds no whole frame {index + 1} (an acquisition stopped early, or a file cut "
                "short)"
            )
        return offset


def open_stored(
    path: Path, max_pixels: int, series: int | None = None, metadata_bytes: int = _METADATA_BYTES
) -> tuple[Layout, Stored]:
    """The layout of position ``series`` of the ND2 at ``path`` and where its frames lie. The file
    is closed on return.

    Raises: as :func:`open_planes`; UnsupportedImageType for compressed frames (not read by region).
    """
    view, close = _mapped(path)
    try:
        layout, _read, about = _planes(view, max_pixels, series, metadata_bytes)
    finally:
        close()
    if about.frame.compressed:
        raise UnsupportedImageType(
            "this ND2's frames are compressed, so a window cannot be read without its whole frame; "
            "send it as an upload, or save it uncompressed from NIS-Elements"
        )
    offsets = {index: (start + _STAMP_BYTES, length - _STAMP_BYTES)
               for index, (start, length) in about.frames.items()}
    return layout, Stored(about.frame, about.loops, layout.series, offsets)


def admitted_pixels(data: bytes, max_pixels: int, metadata_bytes: int = _METADATA_BYTES) -> int:
    """What an upload costs admission: one plane (every position of an ND2 has the same size), or,
    where frames are compressed, a whole frame: a plane is read by inflating its frame, every
    channel of it.

    Raises:
        ImageTooLarge: the plane is over ``max_pixels``.
        UndecodableImage / UnsupportedImageType: as :func:`open_planes`.
    """
    frame = _about(data, metadata_bytes).frame
    plane = frame.width * frame.height
    if plane > max_pixels:
        raise ImageTooLarge(plane, max_pixels, frame.width, frame.height)
    return plane * frame.components if frame.compressed else plane


def _mapped(source: bytes | Path) -> tuple[Any, Callable[[], None]]:
    """The file's bytes (an upload's as given; a file by path mapped) and what releases them."""
    if not isinstance(source, Path):
        return source, lambda: None
    with open(source, "rb") as handle:
        view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return view, view.close


class _About(NamedTuple):
    """What the metadata says: the frame, the loops outermost first (axis letter, count), the
    channels' names, the positions' names, the calibration; and where each frame's chunk lies (by
    its index: where its data starts, how many bytes)."""

    frame: Frame
    loops: tuple[tuple[str, int], ...]
    channel_names: tuple[str, ...]
    position_names: tuple[str, ...]
    pixel_size: PixelSize | None
    frames: dict[int, tuple[int, int]]


def _about(data: Any, metadata_bytes: int) -> _About:
    import nd2  # imported only for ND2 files

    _bound_inflation()
    chunks = structure.nd2_chunks(data)
    borrowed = _Borrowed(data)
    _inflation.left, _inflation.limit = metadata_bytes, metadata_bytes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "failed to load frame times" and the like: not read here
            handle = nd2.ND2File(borrowed)
            try:
                attributes = handle.attributes
                experiment = list(handle.experiment)
                channels = list(handle.metadata.channels or ())
                voxel = handle.voxel_size()
            finally:
                handle.close()
    except structure.TooComplex:
        raise
    except Exception as exc:  # noqa: BLE001 - nd2 raises KeyError, ValueError, UnboundLocalError... on bad bytes
        raise UndecodableImage(f"unreadable ND2: {type(exc).__name__}: {exc}") from exc
    finally:
        del _inflation.left, _inflation.limit
        borrowed.close()  # a map of the file is closed after this: no view of it may outlive the read

    if attributes.compressionType == "lossy":
        raise UnsupportedImageType(
            "the ND2's frames are lossy-compressed; export the image from NIS-Elements as TIFF "
            "(File → Export), or acquire without lossy compression"
        )
    bits = attributes.bitsPerComponentInMemory
    if bits not in (8, 16, 32):
        raise UnsupportedImageType(f"the ND2 holds {bits}-bit pixels; the service reads 8, 16 and 32-bit")
    dtype = np.dtype("float32" if bits == 32 else f"uint{bits}")
    width, height, components = attributes.widthPx or 0, attributes.heightPx, attributes.componentCount
    row_bytes = attributes.widthBytes or width * components * dtype.itemsize
    if width <= 0 or height <= 0 or components <= 0 or row_bytes < width * components * dtype.itemsize:
        raise UndecodableImage(
            f"malformed ND2: frames of {width}×{height} px, {components} components, {row_bytes} bytes a row"
        )
    frame = Frame(height, width, components, dtype, row_bytes, attributes.compressionType == "lossless")

    loops = []
    for loop in experiment:
        axis = _LOOP_AXES.get(loop.type)
        if axis is None:
            raise UnsupportedImageType(
                f"the ND2's experiment has a {loop.type} of {loop.count}; the service reads time points, "
                "XY positions and z-slices: export the frames to segment as TIFF from NIS-Elements"
            )
        if any(axis == seen for seen, _count in loops):
            raise UnsupportedImageType(
                f"the ND2's experiment nests two loops over {axis}; export the frames to segment as TIFF"
            )
        loops.append((axis, int(loop.count)))
    positions: tuple[str, ...] = ()
    for loop in experiment:
        if loop.type == "XYPosLoop":
            positions = tuple(point.name or "" for point in loop.parameters.points)

    names = tuple(channel.channel.name or "" for channel in channels)
    calibrated = bool(channels) and all(channels[0].volume.axesCalibrated[:2])
    z_um = next((abs(loop.parameters.stepUm) for loop in experiment if loop.type == "ZStackLoop"), None)
    pixel_size = None
    if calibrated and voxel.x > 0 and voxel.y > 0:
        pixel_size = PixelSize(voxel.x, voxel.y, "nd2", z_um or None)
    frames = {int(name[len(_FRAME_PREFIX) : -1]): place for name, place in chunks.items()
              if name.startswith(_FRAME_PREFIX) and name[len(_FRAME_PREFIX) : -1].isdigit()}
    return _About(frame, tuple(loops), names, positions, pixel_size, frames)


#: What the metadata decoder may still inflate, on this thread, while it decodes one file.
_inflation = threading.local()


class _BoundedZlib:
    """zlib as nd2's metadata decoder sees it. NIS may compress a run of metadata records, and the
    decoder inflates such a run wherever it stands — inside a level, inside a byte array, inside
    another compressed run — whole, whatever it holds; here each inflation stops at what the file
    may still inflate (:data:`_inflation`), and going past it is :class:`~service.structure.TooComplex`.
    (The structure walk can bound only a chunk's first run: the others are found by decoding.)"""

    error = zlib.error

    @staticmethod
    def decompress(data: bytes, *args: Any, **kwargs: Any) -> bytes:
        left = getattr(_inflation, "left", None)
        if left is None:  # not while the service decodes a file: nd2's own behaviour
            return zlib.decompress(data, *args, **kwargs)
        out = zlib.decompressobj().decompress(data, left + 1)
        if len(out) > left:
            limit = _inflation.limit
            raise structure.TooComplex(
                f"the ND2's metadata inflates to more than {limit:,} bytes", limit, "UNET_MAX_METADATA_BYTES"
            )
        _inflation.left = left - len(out)
        return out


def _bound_inflation() -> None:
    """Have nd2's metadata decoder inflate through :class:`_BoundedZlib` (idempotent: done before
    each decode, so no decode can come first)."""
    from nd2._parse import _clx_lite  # the decoder of NIS's binary records; nd2 <0.13

    _clx_lite.zlib = _BoundedZlib  # type: ignore[assignment]


class _Borrowed:
    """The upload's bytes as the file ``nd2`` reads, which it may close without closing them (a
    stored upload's map belongs to its caller)."""

    def __init__(self, data: Any) -> None:
        self._view = memoryview(data)
        self._at = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._at + size)
        chunk = bytes(self._view[self._at : end])
        self._at = max(self._at, end)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._at, 2: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def close(self) -> None:
        self._view.release()
        self.closed = True


def _planes(
    data: Any, max_pixels: int, series: int | None, metadata_bytes: int
) -> tuple[Layout, PlaneReader, _About]:
    about = _about(data, metadata_bytes)
    frame = about.frame
    sizes = dict(about.loops)
    channel_count = max(len(about.channel_names), 1)
    rgb = channel_count == 1 and frame.components == 3
    if not rgb and frame.components != channel_count:
        raise UnsupportedImageType(
            f"the ND2's frames hold {frame.components} components in {channel_count} channels; the service "
            "reads grey channels, or one colour (RGB) image: export the channels as TIFF from NIS-Elements"
        )
    if frame.width * frame.height > max_pixels:
        raise ImageTooLarge(frame.width * frame.height, max_pixels, frame.width, frame.height)

    positions = sizes.get("P", 1)
    given = about.position_names
    names = tuple((given[p] if p < len(given) else "") or f"#{p + 1}" for p in range(positions))
    plane_sizes = {a: sizes[a] for a in ("Z", "T") if a in sizes}
    summary = image_summary(frame.width, frame.height, {"C": 1 if rgb else channel_count, **plane_sizes}, rgb)
    about_each = (summary,) * positions if positions > 1 else ()
    position = check_series(positions, names if positions > 1 else (), series, about_each)

    notes: list[str] = []
    if positions > 1 and series is None:
        notes.append(first_series_note(positions, "XY positions", names[0]))
    if about.pixel_size is None:
        notes.append("the ND2 does not give its pixel size (not calibrated in NIS): sizes are in pixels")
    expected = int(np.prod([count for _axis, count in about.loops], dtype=np.int64))
    written = len(about.frames)
    if written < expected:
        notes.append(f"the acquisition stopped after {written} of {expected} frames (the ND2 holds no more)")

    if rgb:
        channels = tuple(Channel(i, n) for i, n in enumerate(RGB_NAMES))
    else:
        channels = tuple(Channel(c, about.channel_names[c] or None if c < len(about.channel_names) else None)
                         for c in range(channel_count))
    lead = [a for a in ("T", "Z") if sizes.get(a, 1) > 1] + (["C"] if len(channels) > 1 and not rgb else [])
    shape_of = {**sizes, "C": len(channels)}
    axes = "".join(lead) + "YX" + ("S" if rgb else "")
    shape = tuple(shape_of[a] for a in lead) + (frame.height, frame.width) + ((3,) if rgb else ())

    def read(coords: dict[str, int]) -> np.ndarray:
        at = {**coords, "P": position}
        index = _frame_index(about.loops, at)
        chunk = about.frames.get(index)
        if chunk is None:
            place = ", ".join(f"{a.lower()}={at.get(a, 0)}" for a, _n in about.loops if a != "P")
            raise SelectionError(
                f"the ND2 holds no frame at {place or 'this position'} (frame {index + 1} of {expected}: the "
                f"acquisition stopped after {written})",
                tuple(a.lower() for a in ("Z", "T") if a in layout.planes), layout.choices(),
            )
        pixels = _frame_pixels(data, chunk, frame)
        plane = pixels if rgb else pixels[:, :, int(coords.get("C", 0))]
        return supported_dtype(np.array(plane, copy=True), "ND2")

    layout = Layout(
        format="ND2",
        width=frame.width,
        height=frame.height,
        dtype=str(frame.dtype),
        axes=axes,
        shape=shape,
        channels=channels,
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=about.pixel_size,
        rgb=rgb,
        warnings=tuple(notes),
        series_count=positions,
        series=position,
        series_names=names if positions > 1 else (),
        series_about=about_each,
    )
    return layout, read, about


def _frame_index(loops: tuple[tuple[str, int], ...], coords: dict[str, int]) -> int:
    """The frame (``ImageDataSeq|N``) at ``coords``: the loops' indices raveled, the innermost
    fastest, as NIS numbers them."""
    index = 0
    for axis, count in loops:
        index = index * count + int(coords.get(axis, 0))
    return index


def _frame_pixels(data: Any, chunk: tuple[int, int], frame: Frame) -> np.ndarray:
    """One frame's pixels ``(H, W, components)``: a view of ``data`` (uncompressed), or its rows
    inflated (at most the frame's bytes: a chunk claiming more is not inflated further)."""
    start, length = chunk
    if frame.compressed:
        inflater = zlib.decompressobj()
        try:
            buffer: Any = inflater.decompress(bytes(memoryview(data)[start + _STAMP_BYTES : start + length]),
                                              frame.height * frame.row_bytes)
        except zlib.error as exc:
            raise UndecodableImage(f"corrupt ND2 frame: {exc}") from exc
        offset, available = 0, len(buffer)
    else:
        buffer, offset, available = data, start + _STAMP_BYTES, length - _STAMP_BYTES
    if available < frame.nbytes:
        raise UndecodableImage(
            f"truncated ND2: a frame holds {max(available, 0):,} bytes of the {frame.nbytes:,} its size needs"
        )
    itemsize = frame.dtype.itemsize
    return np.ndarray(
        (frame.height, frame.width, frame.components), frame.dtype, buffer=buffer, offset=offset,
        strides=(frame.row_bytes, frame.components * itemsize, itemsize),
    )
