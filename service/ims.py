"""Imaris (``.ims``) files: what Bitplane's Imaris saves, and what Andor's Dragonfly and BC43
spinning-disk confocals (Fusion) write as they acquire.

An Imaris file is HDF5. Its pixels live at ``DataSet/ResolutionLevel 0/TimePoint t/Channel c/Data``
(a ``Z × Y × X`` array, padded to whole chunks; the image's own size is the channel group's
``ImageSizeX/Y/Z``), its description in ``DataSetInfo``: ``Image`` (the size, the extents
``ExtMin0..2``/``ExtMax0..2`` in ``Unit``) and ``Channel c`` (``Name``). Attributes are text stored
as arrays of one-byte strings. Lower resolution levels (Imaris's pyramid) and the thumbnail are not
read: the service segments at the recorded resolution.

Read with **pyfive**, a pure-Python HDF5 reader (NCAS, BSD), rather than h5py: an upload is
anybody's bytes, and libhdf5's parser has a long record of crashes on malformed files, which in a
server process would take down every request in flight; pyfive's mistakes are Python exceptions
(a 400). What it parses is bounded here:

- every byte pyfive reads (superblock, groups, attributes, a dataset's chunk index) is charged to a
  budget of ``UNET_MAX_METADATA_BYTES``, once for the layout and once per dataset opened, so a file
  whose B-tree names one node a million times stops at the budget instead of reading it a million
  times;
- the pixels are not read through pyfive (its gzip filter inflates a chunk whole, whatever it
  holds): a plane's chunks are located by pyfive's index and inflated here, each no further than
  the chunk's own size, which must be at most :data:`MAX_CHUNK_BYTES`;
- the stream pyfive is given has no file descriptor, so pyfive never reopens the file by name (its
  threaded reads need one) and reads nothing but the file's bytes; an HDF5 external link (to
  another file) is not followed but refused.

Refused, with what to do: a dataset stored in HDF5 1.10's newer chunk indexes (pyfive reads the
classic B-tree Imaris writes), filters other than deflate, shuffle and Fletcher-32, an HDF5 file
that is not an Imaris dataset (a BigDataViewer or ilastik ``.h5``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from service import structure
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import (
    Layout,
    MappedStream,
    PixelSize,
    PlaneReader,
    check_series,
    decoder_errors,
    grey_planes_layout,
)

#: The most bytes one chunk of an Imaris dataset may hold once inflated. Imaris writes chunks of
#: a few MiB at most (e.g. 16 × 256 × 256 × 2 bytes = 2 MiB), so this only bounds a hostile file.
MAX_CHUNK_BYTES = 64 * 1024 * 1024
#: The pixel types read, as stored → as the service reads them (one type per file, every plane).
_PIXEL_TYPES = {"u1": np.uint8, "u2": np.uint16, "u4": np.float32, "f4": np.float32}
#: Imaris's length units → µm (Imaris itself works in µm and writes ``um``).
_UNITS_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}
_GZIP, _SHUFFLE, _FLETCHER32 = 1, 2, 3
_RESOLUTION = "DataSet/ResolutionLevel 0"
_METADATA_BYTES = structure.Limits().max_metadata_bytes  # UNET_MAX_METADATA_BYTES' default

WindowReader = Callable[[dict[str, int], int, int, int, int], np.ndarray]
_UNREAD_DESCRIPTION = ("the Imaris file's description (DataSetInfo/Image) could not be read: sizes are in "
                       "pixels (send pixel_size= for µm)")
log = logging.getLogger(__name__)
# pyfive warns on every attribute of a type it does not read ("type not implemented, set to None"):
# on hostile uploads that is chatter in the server's log, and the attributes that matter are
# checked here. Set once, for pyfive's modules alone (catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=UserWarning, module=r"pyfive(\.|$)")


class BudgetExceeded(UndecodableImage):
    """pyfive read more of the file's structure than ``UNET_MAX_METADATA_BYTES`` allows."""


class _ChargedStream(MappedStream):
    """The file's bytes (an upload, or a map of a file by path) as the raw stream pyfive reads, every
    byte read charged to :attr:`allowance`. No ``fileno``: pyfive would otherwise read by file name,
    in threads, outside the budget."""

    def __init__(self, view: bytes | mmap.mmap, allowance: int) -> None:
        super().__init__(view)  # type: ignore[arg-type]  # slicing is all it does with the view
        self.allowance = allowance

    def read(self, size: int | None = -1) -> bytes:
        """At most what the file still holds, charged before it is copied: io's own ``read`` would
        first allocate the size asked for (a local heap claiming 2⁶⁰ bytes was a MemoryError)."""
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        chunk = bytes(self._view[self._position:max(end, self._position)])
        self._charge(len(chunk))
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(memoryview(buffer).nbytes)
        with memoryview(buffer).cast("B") as target:
            target[:len(chunk)] = chunk
        return len(chunk)

    def _charge(self, count: int) -> None:
        self.allowance -= count
        if self.allowance < 0:
            raise BudgetExceeded(
                "the Imaris file's HDF5 structure reads more than UNET_MAX_METADATA_BYTES allows "
                "(a malformed or hostile file)"
            )

    def fileno(self) -> int:
        raise OSError("no file descriptor: every read goes through the budget")


def open_planes(
    source: bytes | mmap.mmap | Path, max_pixels: int, series: int | None = None,
    metadata_bytes: int = _METADATA_BYTES,
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of an Imaris file (an upload's bytes or memory map, or a file by path, mapped;
    ``series``: 0 or None, a file holds one image) and a reader of its planes by coordinates
    (``{"C": c, "Z": z, "T": t}``, 0 where left out): ``(H, W)`` uint8 / uint16 / float32; and what
    closes the file.

    Raises:
        UndecodableImage: HDF5 structure that contradicts itself or the file, or past the budget.
        UnsupportedImageType: an HDF5 file that is not Imaris's, a storage or filter not read.
        ImageTooLarge: a plane over ``max_pixels``.
        SelectionError: ``series`` is not 0.
    """
    layout, read, _, _, close = _opened(source, max_pixels, series, metadata_bytes)
    return layout, read, close


def open_windows(
    path: Path, max_pixels: int, series: int | None = None, metadata_bytes: int = _METADATA_BYTES
) -> tuple[Layout, WindowReader, tuple[int, int, int], Callable[[], None]]:
    """An Imaris file by path read window by window (slide jobs: a stitched image of any size within
    ``max_pixels``): its layout, a reader of ``[y0:y1, x0:x1]`` of a plane by coordinates that
    inflates only the chunks the window touches, the chunks' shape (Z, Y, X) and what closes the
    file.

    Raises: as :func:`open_planes`.
    """
    layout, _, window, chunks, close = _opened(path, max_pixels, series, metadata_bytes)
    return layout, window, chunks, close


def _opened(
    source: bytes | mmap.mmap | Path, max_pixels: int, series: int | None, metadata_bytes: int
) -> tuple[Layout, PlaneReader, WindowReader, tuple[int, int, int], Callable[[], None]]:
    """:func:`_planes` of ``source`` (mapped where it is a path) and what closes it."""
    check_series(1, (), series)
    view, close = structure.mapped(source, "Imaris")
    try:
        with decoder_errors():  # pyfive raises AssertionError, KeyError, struct.error... on bad bytes
            return (*_planes(view, max_pixels, metadata_bytes), close)
    except BaseException:
        close()
        raise


def admitted_pixels(data: bytes | mmap.mmap, max_pixels: int, metadata_bytes: int) -> int:
    """Pixels of an Imaris file's plane, from its description (admission)."""
    with decoder_errors():
        dataset = _Dataset(data, metadata_bytes)
        width, height, _ = dataset.size(dataset.description("DataSetInfo/Image") or {})
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    return width * height


class _Dataset:
    """An Imaris file opened with pyfive over a charged stream."""

    def __init__(self, view: bytes | mmap.mmap, metadata_bytes: int) -> None:
        import pyfive  # imported here: only Imaris files need it

        self.view, self.metadata_bytes = view, metadata_bytes
        end = _declared_end(view)
        if end is not None and end > len(view):
            raise UndecodableImage(
                f"the Imaris file is cut short: its HDF5 superblock says it ends at byte {end:,}, the file "
                f"has {len(view):,}"
            )
        self.stream = _ChargedStream(view, metadata_bytes)
        with _unsupported_storage():
            self.file = pyfive.File(self.stream)
        if _text(self.file.attrs.get("ImarisDataSet")) != "ImarisDataSet" or _RESOLUTION not in self.file:
            raise UnsupportedImageType(
                "this HDF5 file is not an Imaris dataset (no ImarisDataSet attribute or no "
                f"{_RESOLUTION}); the service reads Imaris .ims files: save the image as TIFF or OME-TIFF"
            )

    def group_attrs(self, path: str) -> dict[str, Any]:
        with _links_followed(path):
            return dict(self.file[path].attrs) if path in self.file else {}

    def description(self, path: str) -> dict[str, Any] | None:
        """A ``DataSetInfo`` group's attributes; None where pyfive cannot read them. pyfive 1.3 reads
        the attribute-info message of a group whose attributes HDF5 keeps in dense storage (many
        attributes, newer file formats) in its longest form before looking at its flags, and fails
        where the message ends its header (ImarisWriter's own example file): the image is still read
        from ``DataSet``, without its calibration or channel names, and says so."""
        try:
            return self.group_attrs(path)
        except (BudgetExceeded, MemoryError):
            raise
        except Exception:  # noqa: BLE001 - see the docstring; the pixels' groups are read apart
            log.debug("Imaris description %s not read", path, exc_info=True)
            return None

    def size(self, info: dict[str, Any]) -> tuple[int, int, int]:
        """``(width, height, depth)`` of the image: the first channel's ``ImageSize*``, else
        ``DataSetInfo/Image``'s ``X``/``Y``/``Z`` (``info``: its attributes, read by the caller)."""
        first = self.group_attrs(f"{_RESOLUTION}/TimePoint 0/Channel 0")
        sizes = []
        for own, described in (("ImageSizeX", "X"), ("ImageSizeY", "Y"), ("ImageSizeZ", "Z")):
            value = _integer(first.get(own))
            sizes.append(value if value is not None else _integer(info.get(described)))
        if any(s is None or s <= 0 for s in sizes):
            raise UndecodableImage(f"the Imaris file does not give its image size (X, Y, Z: {sizes})")
        return sizes[0], sizes[1], sizes[2]  # type: ignore[return-value]

    def counted(self, path: str, prefix: str) -> int:
        """How many ``<prefix> 0``, ``<prefix> 1``... groups ``path`` holds (Imaris numbers them
        from 0 without gaps)."""
        with _links_followed(path):
            names = set(self.file[path].keys())
        count = 0
        while f"{prefix} {count}" in names:
            count += 1
        if count == 0 or count != sum(1 for n in names if n.startswith(prefix + " ")):
            raise UndecodableImage(f"the Imaris file's {path} does not number its {prefix} groups from 0")
        return count

    def data(self, t: int, c: int) -> Any:
        """The pyfive dataset of time point ``t``, channel ``c``, its chunk index read under a budget
        of its own."""
        self.stream.allowance = self.metadata_bytes
        path = f"{_RESOLUTION}/TimePoint {t}/Channel {c}/Data"
        with _unsupported_storage(), _links_followed(path):  # looking a dataset up opens it
            if path not in self.file:
                raise UndecodableImage(f"the Imaris file lacks {path}")
            return self.file[path]


@contextlib.contextmanager
def _links_followed(path: str) -> Iterator[None]:
    """pyfive asserts that every link it meets is a hard or soft link: an external link (to another
    file) fails that assertion, as do bad bytes. Either way the groups on the way cannot be read."""
    try:
        yield
    except AssertionError as exc:
        raise UnsupportedImageType(
            f"the Imaris file's {path} cannot be read: it links to other files (HDF5 external links: "
            "BigDataProcessor keeps each channel's pixels in an .h5 file beside the .ims), which the "
            "service does not follow, or it is malformed; save it from Imaris or Fiji as one file"
        ) from exc


@contextlib.contextmanager
def _unsupported_storage() -> Iterator[None]:
    """pyfive's RuntimeError (not a RecursionError) names an HDF5 feature it does not read: newer
    chunk indexes (HDF5 1.10's, where a file was written with ``libver="latest"``), virtual
    datasets. That is a 415 saying what to do, not a broken file."""
    try:
        yield
    except RecursionError:
        raise
    except RuntimeError as exc:
        raise UnsupportedImageType(
            f"this HDF5 file uses storage the service does not read ({exc}): save it as TIFF or OME-TIFF"
        ) from exc


def _declared_end(view: bytes | mmap.mmap) -> int | None:
    """Where the HDF5 superblock at the file's start says the file ends (its base address plus its
    end-of-file address), None where it cannot tell. Versions 0 and 1 keep the addresses after 24
    and 28 bytes of fixed fields, versions 2 and 3 after 12; each address is ``size of offsets``
    bytes."""
    head = bytes(view[:64])
    if len(head) < 16:
        return None
    version = head[8]
    if version in (0, 1):
        width, start = head[13], 24 if version == 0 else 28
    elif version in (2, 3):
        width, start = head[9], 12
    else:
        return None
    if width not in (2, 4, 8) or len(head) < start + 3 * width:
        return None
    base = int.from_bytes(head[start:start + width], "little")
    eof = int.from_bytes(head[start + 2 * width:start + 3 * width], "little")
    return base + eof


def _planes(
    view: bytes | mmap.mmap, max_pixels: int, metadata_bytes: int
) -> tuple[Layout, PlaneReader, WindowReader, tuple[int, int, int]]:
    """The layout, a plane reader, a window reader and the first dataset's chunk shape (Z, Y, X;
    contiguous storage: one slice of 256 rows, the rows a window's band is aligned to)."""
    dataset = _Dataset(view, metadata_bytes)
    image_info = dataset.description("DataSetInfo/Image")  # None: pyfive could not read it
    width, height, depth = dataset.size(image_info or {})
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    times = dataset.counted(_RESOLUTION, "TimePoint")
    channels = dataset.counted(f"{_RESOLUTION}/TimePoint 0", "Channel")
    first = dataset.data(0, 0)
    stored = _stored_type(first)
    dtype = _PIXEL_TYPES[stored.kind + str(stored.itemsize)]
    lock = threading.Lock()  # pyfive's stream has one position; windows may read from threads
    opened: dict[tuple[int, int], _Plane] = {}

    def window(coords: dict[str, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t, c, z = (int(coords.get(a, 0)) for a in ("T", "C", "Z"))
        with lock, decoder_errors():  # opening a dataset reads its chunk index through the stream
            if (t, c) not in opened:
                opened[(t, c)] = _Plane(view, dataset.data(t, c), (depth, height, width), stored)
            plane = opened[(t, c)]
        with decoder_errors():  # the chunks are read from the file's bytes, not the stream
            return plane.window(z, y0, y1, x0, x1).astype(dtype, copy=False)

    def read(coords: dict[str, int]) -> np.ndarray:
        return window(coords, 0, height, 0, width)

    opened[(0, 0)] = _Plane(view, first, (depth, height, width), stored)
    chunks = opened[(0, 0)].chunks if opened[(0, 0)].layout == 2 else (1, min(256, height), width)

    sizes = {"C": channels, "Z": depth, "T": times}
    if image_info is None:
        pixel_size, notes = None, [_UNREAD_DESCRIPTION]
    else:
        pixel_size, notes = _pixel_size(image_info, width, height, depth)
    names = _channel_names([dataset.description(f"DataSetInfo/Channel {c}") or {} for c in range(channels)])
    layout = grey_planes_layout("Imaris", width, height, dtype, sizes, names, pixel_size, notes)
    return layout, read, window, chunks


def _stored_type(data: Any) -> np.dtype:
    stored = np.dtype(data.dtype)
    if stored.kind + str(stored.itemsize) not in _PIXEL_TYPES:
        raise UnsupportedImageType(f"Imaris pixel type {stored} is not one the service reads")
    return stored


class _Plane:
    """One time point and channel's ``Z × Y × X`` dataset, read one z-slice at a time: contiguous
    storage straight from the file's bytes, chunked storage chunk by chunk, each inflated here."""

    def __init__(
        self, view: bytes | mmap.mmap, data: Any, size: tuple[int, int, int], stored: np.dtype
    ) -> None:
        depth, height, width = size
        shape = tuple(int(s) for s in data.shape)
        if len(shape) != 3 or shape[0] < depth or shape[1] < height or shape[2] < width:
            raise UndecodableImage(
                f"an Imaris dataset of shape {shape} cannot hold the image's {depth}×{height}×{width}"
            )
        if np.dtype(data.dtype) != stored:
            raise UndecodableImage("the Imaris file's channels or time points are of different pixel types")
        self.view, self.data, self.size, self.shape = view, data, size, shape
        self.stored = stored
        self.layout = data.id.layout_class
        if self.layout == 2:
            self.chunks = tuple(int(c) for c in data.chunks)
            if len(self.chunks) != 3 or min(self.chunks) <= 0:
                raise UndecodableImage(f"an Imaris dataset's chunks are {self.chunks}")
            if math.prod(self.chunks) * stored.itemsize > MAX_CHUNK_BYTES:
                raise UnsupportedImageType(
                    f"an Imaris dataset's chunks of {self.chunks} hold more than {MAX_CHUNK_BYTES:,} bytes"
                )
            self.pipeline = list(data.id.filter_pipeline or [])
            unknown = [f.get("filter_id") for f in self.pipeline
                       if f.get("filter_id") not in (_GZIP, _SHUFFLE, _FLETCHER32)]
            if unknown:
                raise UnsupportedImageType(
                    f"this Imaris file is compressed with HDF5 filter {unknown[0]} (the service reads "
                    "deflate, shuffle and Fletcher-32: Imaris's own); save it from Imaris with its default "
                    "compression, or as TIFF"
                )
        elif self.layout != 1:
            raise UnsupportedImageType(f"an Imaris dataset in HDF5 storage class {self.layout} is not read")

    def window(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``[y0:y1, x0:x1]`` of slice ``z`` (within the image)."""
        depth, height, width = self.size
        if not 0 <= z < depth:
            raise UndecodableImage(f"z={z} is outside the Imaris image's {depth} slices")
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise UndecodableImage(f"the window [{y0}:{y1}, {x0}:{x1}] is outside the Imaris image")
        if self.layout == 1:
            return self._contiguous(z, y0, y1, x0, x1)
        return self._chunked(z, y0, y1, x0, x1)

    def _contiguous(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        _, rows, columns = self.shape
        plane_bytes = rows * columns * self.stored.itemsize
        start = int(self.data.id.data_offset) + z * plane_bytes
        if start < 0 or start + plane_bytes > len(self.view):
            raise UndecodableImage("the Imaris file is cut short: a plane lies past its end")
        row_bytes = columns * self.stored.itemsize
        band = np.frombuffer(self.view, self.stored, (y1 - y0) * columns, start + y0 * row_bytes)
        return band.reshape(y1 - y0, columns)[:, x0:x1].copy()  # a copy: nothing keeps the file's bytes

    def _chunked(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Only the chunks the window touches are inflated, one at a time."""
        deep, tall, wide = self.chunks
        top = z - z % deep
        window = np.zeros((y1 - y0, x1 - x0), self.stored)  # a chunk never written is HDF5's fill, 0
        for y in range(y0 - y0 % tall, y1, tall):
            for x in range(x0 - x0 % wide, x1, wide):
                try:
                    info = self.data.id.get_chunk_info_by_coord((top, y, x))
                except KeyError:
                    continue
                block = self._inflate(info).reshape(deep, tall, wide)[z - top]
                rows, columns = slice(max(y0, y), min(y1, y + tall)), slice(max(x0, x), min(x1, x + wide))
                window[rows.start - y0:rows.stop - y0, columns.start - x0:columns.stop - x0] = (
                    block[rows.start - y:rows.stop - y, columns.start - x:columns.stop - x])
        return window

    def _inflate(self, info: Any) -> np.ndarray:
        """One chunk's samples: its stored bytes through the filters not masked out for it, last
        first, deflate inflated no further than the chunk's size."""
        expected = math.prod(self.chunks) * self.stored.itemsize
        start, length = int(info.byte_offset), int(info.size)
        if start < 0 or length < 0 or start + length > len(self.view):
            raise UndecodableImage("the Imaris file is cut short: a chunk lies past its end")
        buffer = bytes(self.view[start:start + length])
        for position in reversed(range(len(self.pipeline))):
            if int(info.filter_mask) >> position & 1:
                continue
            filter_id = self.pipeline[position]["filter_id"]
            buffer = _undo_filter(filter_id, buffer, expected, self.stored.itemsize)
        if len(buffer) != expected:
            raise UndecodableImage(f"an Imaris chunk holds {len(buffer):,} bytes, not {expected:,}")
        return np.frombuffer(buffer, self.stored)


def _undo_filter(filter_id: int, buffer: bytes, expected: int, itemsize: int) -> bytes:
    if filter_id == _GZIP:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(buffer, expected)
        except zlib.error as exc:
            raise UndecodableImage(f"an Imaris chunk does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:  # more than the chunk holds: a bomb or a broken file
            raise UndecodableImage(f"an Imaris chunk inflates past its {expected:,} bytes")
        return out
    if filter_id == _SHUFFLE:
        if itemsize == 1 or len(buffer) % itemsize:
            return buffer
        return np.frombuffer(buffer, np.uint8).reshape(itemsize, -1).T.tobytes()
    return buffer[:-4]  # Fletcher-32: the checksum's four bytes at the end


def _pixel_size(
    info: dict[str, Any], width: int, height: int, depth: int
) -> tuple[PixelSize | None, list[str]]:
    """µm per pixel from the extents (Imaris's voxel size is ``(ExtMax − ExtMin) / size``)."""
    unit = (_text(info.get("Unit")) or "um").strip()
    scale = _UNITS_UM.get(unit, _UNITS_UM.get(unit.casefold()))
    if scale is None:
        return None, [f"the Imaris file gives its extents in {unit!r}, a unit the service does not know: "
                      "sizes are in pixels"]

    def step(axis: int, count: int) -> float | None:
        low, high = _number(info.get(f"ExtMin{axis}")), _number(info.get(f"ExtMax{axis}"))
        if low is None or high is None:
            return None
        value = abs(high - low) / count * scale
        return float(f"{value:.6g}") if math.isfinite(value) and value > 0 else None

    x, y = step(0, width), step(1, height)
    if x is None and y is None:
        return None, ["the Imaris file does not give its extents: sizes are in pixels"]
    z = step(2, depth) if depth > 1 else None
    return PixelSize(x or y, y or x, "ims", z), []  # type: ignore[arg-type]


def _channel_names(described: list[dict[str, Any]]) -> list[str | None]:
    """Each channel's ``Name`` as Imaris shows it; None where it has none, and for names two
    channels share (a name must choose one channel)."""
    names = [(_text(d.get("Name")) or "").strip() or None for d in described]
    return [n if n is None or names.count(n) == 1 else None for n in names]


def _text(value: Any) -> str | None:
    """An attribute as text: Imaris writes an array of one-byte strings (``[b'5', b'1', b'2']``)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            return _decoded(b"".join(value.reshape(-1).tolist()))
        if value.dtype.kind in "iuf" and value.size == 1:
            return str(value.reshape(-1)[0])
        return None
    if isinstance(value, bytes):
        return _decoded(value)
    return str(value)


def _decoded(raw: bytes) -> str:
    """Text up to its first NUL (Imaris ends some values with one: ``b'0.100000000\\x00'``), as UTF-8,
    else as Latin-1 (Imaris on Windows writes names in the system's code page)."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _number(value: Any) -> float | None:
    text = _text(value)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) and number == int(number) else None
