"""An upload's container structure, walked and bounded before any decoder sees it.

Decoders spend time on structure, not only on pixels, and some of it grows faster than the
file: Pillow parses each PNG chunk and JPEG marker in Python and joins a JPEG's Exif segments
with ``+=`` (4,000 of them took 28 min of CPU), libpng spends seconds on a chunk that claims
2 GB in a 6 KB file, tifffile parses every tag of every page. Each format's structure is a
simple length-prefixed walk — PNG chunks, JPEG marker segments, the TIFF IFD chain — that this
module does in a few hundred nanoseconds per element and stops at the first limit passed, so
what the decoders are then given is bounded by :class:`Limits`, whatever the upload.

- **PNG**: chunks to ``IEND``. Image data chunks (``IDAT``, APNG ``fdAT``) against
  ``max_png_data_chunks``; every other chunk against ``max_image_segments``; ancillary chunks'
  payload bytes (text, ICC, Exif...) against ``max_metadata_bytes``. A chunk running past the end
  of the file (a truncated PNG), or a length over 2³¹-1, is malformed.
- **JPEG**: marker segments to ``EOI`` (entropy-coded data skipped by a regular expression, in
  C). Every segment against ``max_image_segments``; scans (SOS) also against ``max_jpeg_scans``:
  libjpeg goes over the whole image once per scan, so a 2048² progressive JPEG whose last scan
  is repeated 900 times (126 MB) took 29 s to decode, 0.13 s as written. APPn and COM payload
  bytes against ``max_metadata_bytes``, an Exif split over several APP1 segments counted as
  Pillow joins it (each again with all before).
  Stray bytes between header segments (which Pillow steps through one byte at a time in Python)
  are malformed past :data:`_MAX_JPEG_GAP`.
- **TIFF** (classic and BigTIFF): the top-level IFD chain, loops stopped; pages against
  ``max_tiff_pages``, IFD entries summed over the pages against ``max_tiff_tags``.
- **CZI** (Zeiss ZEN): the file header, the subblock directory and the metadata segment.
  Directory entries against ``max_czi_subblocks`` (each is a tile of one plane, parsed in Python
  by czifile); every entry's dimension count and subblock position checked against the file, so
  a truncated upload is named here, not deep in a decoder; the XML against ``max_metadata_bytes``.
- **LIF** (Leica LAS X): the XML header against ``max_metadata_bytes``, the memory blocks after it
  (one per image, each a small header and the image's raw bytes) against ``max_lif_blocks``,
  walked as liffile walks them (it reads every block's header in Python when it opens the file).
- **ND2** (Nikon NIS-Elements, version 2 and 3 files): the chunk map at the end of the file against
  ``max_nd2_chunks`` (one chunk per frame; the ``nd2`` reader parses the map in Python), each
  chunk's header checked against the file (a truncated upload is named here), the metadata chunks
  the service decodes against ``max_metadata_bytes``, also once inflated where NIS compressed them.
- **DeltaVision**: nothing to walk (a fixed header, then raw planes); :func:`is_dv` recognises it,
  and ``service.dv`` checks the header's sizes against the file before reading a plane.
- **OIB** (Olympus FluoView) and **ZVI** (Zeiss AxioVision): an OLE2 compound file (a FAT file
  system in one file). The header's counts against the file's sectors, the FAT's and the directory's
  sector chains walked with loops stopped, directory entries against ``max_oib_entries`` (olefile
  makes an object of each), the directory's trees checked for entries reached twice and bounded in
  depth (olefile walks them recursively), every stream's declared size against the file's.
- **Imaris** (HDF5): nothing walked here; ``service.ims`` charges every byte its HDF5 reader
  (pyfive) reads of the file's structure to ``max_metadata_bytes`` and inflates each chunk no
  further than its size.
- Other formats (BMP) have no variable structure to walk.

Too much structure is :class:`TooComplex` (HTTP 413, naming the limit and its setting);
structure that is not the format's is :class:`~service.imaging.UndecodableImage` (HTTP 400).
A JPEG or TIFF truncated inside its image data is left to the decoders, which report it.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.imaging import ImageError, UndecodableImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CZI_MAGIC = b"ZISRAWFILE"
#: A LIF's first bytes: the test value 0x70 (uint32 LE); byte 8 is the separator 0x2A.
LIF_TEST_VALUE = b"\x70\x00\x00\x00"

#: PNG chunks that carry pixels; every other chunk is structure or metadata.
_PNG_DATA = frozenset({b"IDAT", b"fdAT"})
_PNG_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_PNG_MAX_LENGTH = 0x7FFFFFFF  # the PNG spec's limit on a chunk's length
_PNG_TYPE = re.compile(rb"[A-Za-z]{4}")
#: Most bytes between two JPEG header segments that are not a marker (libjpeg tolerates
#: "extraneous bytes before marker"; Pillow steps through them in Python one by one).
_MAX_JPEG_GAP = 4096
#: The next JPEG marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, a
#: restart marker (RST0–7, inside the scan) nor another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# JPEG markers without a length: TEM, RST0–7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
_JPEG_SOS, _JPEG_EOI, _JPEG_COM = 0xDA, 0xD9, 0xFE


@dataclass(frozen=True)
class Limits:
    """How much structure an upload may have; the defaults are ``service.settings``'s.

    No file a microscope or a common writer produces comes near them: a PNG has a handful of
    ancillary chunks and at most ~33,000 image data chunks at the upload limit (libpng writes
    8 KiB chunks), a JPEG a few tens of segments (255 APP2 at most for a split ICC profile) and
    at most ~10–20 scans (libjpeg's progressive script writes 10 for colour, 6 for grey), a TIFF
    page ~10–40 tags.
    """

    max_tiff_pages: int = 10_000  # UNET_MAX_TIFF_PAGES
    max_tiff_tags: int = 500_000  # UNET_MAX_TIFF_TAGS
    max_image_segments: int = 1_000  # UNET_MAX_IMAGE_SEGMENTS
    max_png_data_chunks: int = 100_000  # UNET_MAX_PNG_DATA_CHUNKS
    max_metadata_bytes: int = 16 * 1024 * 1024  # UNET_MAX_METADATA_BYTES
    max_jpeg_scans: int = 32  # UNET_MAX_JPEG_SCANS
    max_czi_subblocks: int = 20_000  # UNET_MAX_CZI_SUBBLOCKS
    max_lif_blocks: int = 20_000  # UNET_MAX_LIF_BLOCKS
    max_nd2_chunks: int = 50_000  # UNET_MAX_ND2_CHUNKS
    max_oib_entries: int = 50_000  # UNET_MAX_OIB_ENTRIES


def as_limits(limits: Limits | int) -> Limits:
    """``limits``, or the default limits with ``max_tiff_pages`` = ``limits`` (the older
    signatures took only the page limit)."""
    return limits if isinstance(limits, Limits) else Limits(max_tiff_pages=limits)


class TooComplex(ImageError):
    """More pages, chunks, segments or metadata than the service parses (HTTP 413).

    ``setting`` names the environment variable that sets ``limit``.
    """

    slug = "image-too-complex"
    title = "Image structure too large"

    def __init__(self, what: str, limit: int, setting: str, advice: str = "") -> None:
        self.limit = limit
        self.setting = setting
        super().__init__(f"{what} (the limit, {setting}){advice}")


class TooManyPages(TooComplex):
    """A TIFF with more pages (IFDs) than the service indexes (HTTP 413)."""

    slug = "too-many-pages"
    title = "Too many TIFF pages"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the TIFF has more than {limit:,} pages", limit, "UNET_MAX_TIFF_PAGES", "; send fewer planes"
        )


def mapped(source: bytes | mmap.mmap | Path, what: str) -> tuple[bytes | mmap.mmap, Callable[[], None]]:
    """The bytes of ``source`` and what releases them: a file by path mapped read-only (``what``
    names the format when the file is empty: an empty file cannot be mapped), an upload's bytes or
    map as they are."""
    if not isinstance(source, Path):
        return source, lambda: None
    with open(source, "rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:
            raise UndecodableImage(f"the {what} file is empty") from exc
    return view, view.close


def walk_file(path: Path, walk: Callable[[bytes, Limits], object], limits: Limits) -> None:
    """``walk`` (:func:`count_tiff`, :func:`check_czi`) over a file read by path, on a memory map
    of it: a slide or a movie of gigabytes is bounded without being read into memory."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        walk(view, limits)  # type: ignore[arg-type]  # bytes-like: slices, unpack_from


def check(data: bytes, limits: Limits) -> None:
    """Walk ``data``'s container structure; raise if it is over ``limits`` or malformed.

    Raises:
        TooComplex: too many pages, tags, chunks or segments, or too many metadata bytes.
        UndecodableImage: a chunk or segment that contradicts the format.
    """
    if data[:8] == PNG_SIGNATURE:
        check_png(data, limits)
    elif data[:2] == JPEG_SOI:
        check_jpeg(data, limits)
    elif data[:4] in _TIFF_MAGIC:
        count_tiff(data, limits)
    elif data[:10] == CZI_MAGIC:
        check_czi(data, limits)
    elif is_lif(data):
        check_lif(data, limits)
    elif is_nd2(data):
        check_nd2(data, limits)
    elif is_compound(data):
        check_compound(data, limits)


#: Bytes of a file's start that :func:`is_dv` needs (DeltaVision's ID is at byte 96).
DV_SIGNATURE_BYTES = 98
_DV_LITTLE, _DV_BIG = b"\xa0\xc0", b"\xc0\xa0"
#: The most pixels along a side a header may claim and still be taken for DeltaVision's: the ID
#: sits at byte 96, where another format may hold anything, so the sizes must be sane too.
_DV_MAX_SIDE = 1 << 20


def is_dv(data: bytes) -> bool:
    """Whether ``data`` (at least its first :data:`DV_SIGNATURE_BYTES`) begins as a DeltaVision
    file: DeltaVision's ID at byte 96 in either byte order, and plane sizes and a pixel type that
    DeltaVision writes (a PNG's, a JPEG's or a TIFF's first bytes read as sizes are far out of range;
    a BMP's are excluded by name)."""
    order = dv_byte_order(data)
    if order is None or bytes(data[:2]) == b"BM":
        return False
    width, height, _, mode = struct.unpack_from(order + "4i", data, 0)
    return 0 < width <= _DV_MAX_SIDE and 0 < height <= _DV_MAX_SIDE and 0 <= mode <= 7


def dv_byte_order(data: bytes) -> str | None:
    """``"<"`` or ``">"``: the byte order DeltaVision's ID at byte 96 is written in; None without it."""
    dvid = bytes(data[96:DV_SIGNATURE_BYTES]) if len(data) >= DV_SIGNATURE_BYTES else b""
    return {_DV_LITTLE: "<", _DV_BIG: ">"}.get(dvid)


#: HDF5's signature, at the start of an Imaris file (HDF5 allows it after a user block of 512,
#: 1024... bytes; Imaris writes none, and the service reads only a file that starts with it).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(data: bytes) -> bool:
    """Whether ``data`` starts as an HDF5 file does (an Imaris ``.ims``; ``service.ims`` tells an
    Imaris dataset from other HDF5 files)."""
    return bytes(data[:8]) == HDF5_SIGNATURE


def is_lif(data: bytes) -> bool:
    """Whether ``data`` starts as a Leica LIF (or its ``.lifext``) does."""
    return len(data) >= 9 and data[:4] == LIF_TEST_VALUE and data[8] == _LIF_SEPARATOR


def check_png(data: bytes, limits: Limits) -> None:
    """PNG chunks up to ``IEND`` (anything after it is ignored, as decoders do)."""
    pos, size = len(PNG_SIGNATURE), len(data)
    segments = data_chunks = metadata = 0
    while pos + 8 <= size:
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4 : pos + 8]
        if not _PNG_TYPE.fullmatch(kind):
            raise UndecodableImage(f"malformed PNG: no chunk type at byte {pos + 4} ({kind!r})")
        if pos == len(PNG_SIGNATURE) and kind != b"IHDR":
            raise UndecodableImage(f"malformed PNG: the first chunk is {kind.decode()}, not IHDR")
        if length > _PNG_MAX_LENGTH or pos + 12 + length > size:
            # Also for image data: libpng spends seconds on an IDAT that claims 2 GB in a small
            # file before failing, and a truncated PNG is undecodable anyway.
            raise UndecodableImage(
                f"malformed PNG: the {kind.decode()} chunk at byte {pos} claims {length:,} bytes; "
                f"{max(0, size - pos - 12):,} are left in the file"
            )
        if kind == b"IEND":
            return
        if kind in _PNG_DATA:
            data_chunks += 1
            if data_chunks > limits.max_png_data_chunks:
                raise TooComplex(
                    f"the PNG has more than {limits.max_png_data_chunks:,} image data chunks",
                    limits.max_png_data_chunks, "UNET_MAX_PNG_DATA_CHUNKS",
                )
        else:
            segments += 1
            if segments > limits.max_image_segments:
                raise TooComplex(
                    f"the PNG has more than {limits.max_image_segments:,} chunks besides its image data",
                    limits.max_image_segments, "UNET_MAX_IMAGE_SEGMENTS",
                )
            if kind not in _PNG_CRITICAL:
                metadata += length
                if metadata > limits.max_metadata_bytes:
                    raise TooComplex(
                        f"the PNG's metadata chunks hold more than {limits.max_metadata_bytes:,} bytes",
                        limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
                    )
        pos += 12 + length


def check_jpeg(data: bytes, limits: Limits) -> None:
    """JPEG marker segments up to ``EOI`` (a second image of an MPO file is not walked: its
    offset comes from the first one's metadata, and only the first image is decoded)."""
    pos, size = len(JPEG_SOI), len(data)
    segments = metadata = exif = scans = 0
    while pos < size:
        if data[pos] != 0xFF:
            found = _JPEG_MARKER.search(data, pos, min(size, pos + _MAX_JPEG_GAP + 2))
            if found is None:
                if size - pos <= _MAX_JPEG_GAP:
                    return  # trailing bytes: the decoder judges a truncated stream
                raise UndecodableImage(
                    f"malformed JPEG: more than {_MAX_JPEG_GAP:,} bytes that are not a marker at byte {pos}"
                )
            pos = found.start()
        while pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 1 >= size:
            return
        marker = data[pos + 1]
        segments += 1
        if segments > limits.max_image_segments:
            raise TooComplex(
                f"the JPEG has more than {limits.max_image_segments:,} marker segments",
                limits.max_image_segments, "UNET_MAX_IMAGE_SEGMENTS",
            )
        if marker == _JPEG_EOI:
            return
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            return
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            raise UndecodableImage(f"malformed JPEG: the marker segment at byte {pos} has length {length}")
        if 0xE0 <= marker <= 0xEF or marker == _JPEG_COM:
            metadata += length - 2
            if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
                # Pillow appends each further Exif segment to the ones before with ``+=``:
                # count the bytes it copies, so a split Exif costs what it costs (quadratic).
                metadata += exif
                exif += length - 2
            if metadata > limits.max_metadata_bytes:
                raise TooComplex(
                    f"the JPEG's APPn/COM segments (Exif, XMP, ICC, comments) hold more than "
                    f"{limits.max_metadata_bytes:,} bytes",
                    limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
                )
        pos += 2 + length
        if marker == _JPEG_SOS:
            scans += 1
            if scans > limits.max_jpeg_scans:
                raise TooComplex(
                    f"the JPEG has more than {limits.max_jpeg_scans:,} scans (a progressive JPEG has ~10)",
                    limits.max_jpeg_scans, "UNET_MAX_JPEG_SCANS",
                )
            found = _JPEG_MARKER.search(data, pos)  # skip the scan's entropy-coded data
            if found is None:
                return
            pos = found.start()


def count_tiff(data: bytes, limits: Limits) -> int:
    """Pages (top-level IFDs) of a TIFF, counted along the IFD chain; :class:`TooManyPages`
    past ``limits.max_tiff_pages``, :class:`TooComplex` when their entries (tags) sum past
    ``limits.max_tiff_tags``. Stops at a loop or a chain running off the end (tifffile then
    reports it)."""
    big = data[2:4] in (b"+\x00", b"\x00+")
    order = "<" if data[:2] == b"II" else ">"
    count_fmt, entry, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size, off_size = struct.calcsize(count_fmt), struct.calcsize(off_fmt)
    if len(data) < (16 if big else 8):
        return 0
    offset = struct.unpack_from(order + off_fmt, data, 8 if big else 4)[0]
    wide = order + ("u8" if big else "u4")
    entry_type = np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", wide), ("value", wide)])
    seen: set[int] = set()
    tags = 0
    while offset and offset not in seen and offset + count_size <= len(data):
        seen.add(offset)
        if len(seen) > limits.max_tiff_pages:
            raise TooManyPages(limits.max_tiff_pages)
        entries = struct.unpack_from(order + count_fmt, data, offset)[0]
        nxt = offset + count_size + entries * entry
        if nxt + off_size > len(data):
            break
        tags += entries
        if tags > limits.max_tiff_tags:
            raise TooComplex(
                f"the TIFF's pages have more than {limits.max_tiff_tags:,} tags (IFD entries) in all",
                limits.max_tiff_tags, "UNET_MAX_TIFF_TAGS",
            )
        # a copy of the entries (a slice): a view would pin a memory-mapped file open past an error
        _check_tag_sizes(np.frombuffer(data[offset + count_size : nxt], entry_type), len(data), limits)
        offset = struct.unpack_from(order + off_fmt, data, nxt)[0]
    return len(seen)


#: Bytes per value of each TIFF field type (1 BYTE ... 18 IFD8); other types are read as bytes.
_TIFF_TYPE_BYTES = np.array([1, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 1, 1, 8, 8, 8], dtype=np.uint64)


def _check_tag_sizes(entries: np.ndarray, file_size: int, limits: Limits) -> None:
    """No one tag's value past ``limits.max_metadata_bytes``: tifffile reads a page's tag values
    when it parses the page (a 700 MB ImageDescription, read by path where no upload limit bounds
    the file, took 2.9 GB; a hostile-input audit). Pixel offsets and byte counts are tags too: a
    slide's 40,000 tile offsets are 320 kB. A value said to lie past the file's end is left out:
    tifffile skips such a tag (a camera's corrupt count) and reads the image."""
    if not len(entries):
        return
    kinds = entries["type"].astype(np.int64)
    per_value = np.where((kinds > 0) & (kinds < len(_TIFF_TYPE_BYTES)),
                         _TIFF_TYPE_BYTES[np.clip(kinds, 0, len(_TIFF_TYPE_BYTES) - 1)], 1)
    with np.errstate(over="ignore"):
        sizes = entries["count"].astype(np.uint64) * per_value  # u64: a count of 2^32 x 8 does not wrap
    # in floats: a count near 2^64 must not wrap into a value that fits
    in_file = entries["value"].astype(np.float64) + sizes.astype(np.float64) <= float(file_size)
    sizes = np.where(in_file, sizes, np.uint64(0))
    largest = int(sizes.max())
    if largest > limits.max_metadata_bytes:
        tag = int(entries["tag"][int(sizes.argmax())])
        raise TooComplex(
            f"the TIFF's tag {tag} holds {largest:,} bytes, more than {limits.max_metadata_bytes:,}",
            limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
        )


# CZI (ZISRAW) layout: every segment starts with a 32-byte header (16-byte id, allocated and used
# sizes); the file header's data holds the directory's and the metadata's positions at these offsets.
_CZI_SEGMENT_HEADER = 32
_CZI_DIRECTORY_AT, _CZI_METADATA_AT = 32 + 52, 32 + 60
_CZI_ENTRY_FIXED, _CZI_DIMENSION_ENTRY = 32, 20
#: More dimensions than a subblock can have (X Y C Z T R I H V B S M and the sample axis).
_CZI_MAX_DIMENSIONS = 16


def check_czi(data: bytes, limits: Limits) -> int:
    """Subblocks in a CZI's directory, walked entry by entry; :class:`TooComplex` past
    ``limits.max_czi_subblocks`` or metadata past ``limits.max_metadata_bytes``,
    :class:`~service.imaging.UndecodableImage` for a directory or subblock outside the file.

    czifile would otherwise scan the whole file for subblocks when the directory is missing, and
    parse every entry in Python whatever their number.
    """
    size = len(data)
    if size < _CZI_METADATA_AT + 8:
        raise UndecodableImage(f"truncated CZI: {size} bytes, shorter than its file header")
    directory, metadata = struct.unpack_from("<qq", data, _CZI_DIRECTORY_AT)
    _czi_segment(data, directory, b"ZISRAWDIRECTORY", "subblock directory")
    count = struct.unpack_from("<i", data, directory + _CZI_SEGMENT_HEADER)[0]
    if count < 0:
        raise UndecodableImage(f"malformed CZI: the directory claims {count} subblocks")
    if count > limits.max_czi_subblocks:
        raise TooComplex(
            f"the CZI has {count:,} subblocks, more than {limits.max_czi_subblocks:,}",
            limits.max_czi_subblocks, "UNET_MAX_CZI_SUBBLOCKS", "; export the planes you need",
        )
    pos = directory + _CZI_SEGMENT_HEADER + 128
    for index in range(count):
        if pos + _CZI_ENTRY_FIXED > size:
            raise UndecodableImage(f"truncated CZI: its directory ends inside entry {index} of {count}")
        schema = data[pos : pos + 2]
        block_at = struct.unpack_from("<q", data, pos + 6)[0]
        dimensions = struct.unpack_from("<i", data, pos + 28)[0]
        if schema != b"DV" or not 0 < dimensions <= _CZI_MAX_DIMENSIONS:
            raise UndecodableImage(f"malformed CZI: directory entry {index} is not a subblock entry")
        if not 0 < block_at < size - _CZI_SEGMENT_HEADER:
            raise UndecodableImage(
                f"truncated CZI: subblock {index} of {count} lies past the end of the file ({size:,} bytes)"
            )
        pos += _CZI_ENTRY_FIXED + dimensions * _CZI_DIMENSION_ENTRY
    if pos > size:
        raise UndecodableImage("truncated CZI: the file ends inside its subblock directory")
    if metadata:
        _czi_segment(data, metadata, b"ZISRAWMETADATA", "metadata")
        xml_size = struct.unpack_from("<i", data, metadata + _CZI_SEGMENT_HEADER)[0]
        if xml_size > limits.max_metadata_bytes:
            raise TooComplex(
                f"the CZI's metadata has {xml_size:,} bytes, more than {limits.max_metadata_bytes:,}",
                limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
            )
        if xml_size < 0 or metadata + _CZI_SEGMENT_HEADER + 256 + xml_size > size:
            raise UndecodableImage("truncated CZI: the file ends inside its metadata")
    return count


# LIF layout ("Leica Image File Formats" 3.2): the header is <test value 0x70, size, 0x2A, XML
# length in UTF-16 units> then the XML; each memory block <0x70, size, 0x2A, block size (uint64 in
# version 2, uint32 in version 1), 0x2A, id length in UTF-16 units>, its id, then its bytes.
_LIF_SEPARATOR = 0x2A
_LIF_HEADER = struct.Struct("<IIBI")
_LIF_BLOCK = {2: struct.Struct("<IIBQBI"), 1: struct.Struct("<IIBIBI")}
_LIF_VERSION = re.compile(r'<LMSDataContainer\w*Header[^>]*?\sVersion="(\d+)"')


def check_lif(data: bytes, limits: Limits) -> int:
    """Memory blocks in a LIF, walked header by header as liffile walks them (to the end of the
    file or the first bytes that are not a block's header); :class:`TooComplex` past
    ``limits.max_lif_blocks`` or an XML header past ``limits.max_metadata_bytes``,
    :class:`~service.imaging.UndecodableImage` for a header that runs past the end of the file.
    """
    size = len(data)
    if size < _LIF_HEADER.size:
        raise UndecodableImage(f"truncated LIF: {size} bytes, shorter than its header")
    _test, _size, _separator, units = _LIF_HEADER.unpack_from(data, 0)
    xml_bytes = 2 * units
    if xml_bytes > limits.max_metadata_bytes:
        raise TooComplex(
            f"the LIF's XML header has {xml_bytes:,} bytes, more than {limits.max_metadata_bytes:,}",
            limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
        )
    pos = _LIF_HEADER.size + xml_bytes
    if pos > size:
        raise UndecodableImage("truncated LIF: the file ends inside its XML header")
    head = bytes(data[_LIF_HEADER.size : _LIF_HEADER.size + min(xml_bytes, 400)])
    found = _LIF_VERSION.search(head.decode("utf-16-le", "replace"))
    block = _LIF_BLOCK[1] if found and found.group(1) == "1" else _LIF_BLOCK[2]
    count = 0
    while pos + block.size <= size:
        test, _size, first, length, second, id_units = block.unpack_from(data, pos)
        if test != 0x70 or first != _LIF_SEPARATOR or second != _LIF_SEPARATOR:
            break  # liffile stops here too: what follows is not read
        count += 1
        if count > limits.max_lif_blocks:
            raise TooComplex(
                f"the LIF has more than {limits.max_lif_blocks:,} memory blocks",
                limits.max_lif_blocks, "UNET_MAX_LIF_BLOCKS", "; export the images you need",
            )
        pos += block.size + 2 * id_units + length
        if pos > size:
            raise UndecodableImage(
                f"truncated LIF: memory block {count} runs past the end of the file ({size:,} bytes)"
            )
    return count


def _czi_segment(data: bytes, at: int, sid: bytes, what: str) -> None:
    if not 0 < at <= len(data) - _CZI_SEGMENT_HEADER - 8:
        raise UndecodableImage(
            f"the CZI's {what} is not in the file (position {at:,} of {len(data):,} bytes): a truncated "
            "upload, or a file ZEN did not finish writing"
        )
    found = data[at : at + 16].rstrip(b"\x00")
    if found != sid:
        raise UndecodableImage(f"malformed CZI: no {what} segment at byte {at:,} ({found[:16]!r})")


# ND2 layout (NIS-Elements version 2 and 3 files, as the `nd2` reader and Nikon's SDK read them):
# chunks of <magic 0x0ABECEDA, name length (uint32), data length (uint64)>, the name, the data; the
# first is the signature chunk, the last the chunk map (each chunk's name, ending "!", then its offset
# and size as two uint64), closed by ND2_MAP_SIGNATURE and the map's offset: the file's last 40 bytes.
#: The signature chunk's header: the chunk magic 0x0ABECEDA, a 32-byte name, 64 bytes of data.
_ND2_HEADER = struct.pack("<IIQ", 0x0ABECEDA, 32, 64)
_ND2_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
_ND2_MAP_NAME = b"ND2 FILEMAP SIGNATURE NAME 0001!"
_ND2_MAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
_ND2_CHUNK = struct.Struct("<IIQ")
_ND2_ENTRY = struct.Struct("<QQ")
_ND2_MAX_NAME = 256  # NIS's chunk names are tens of bytes ("ImageDataSeq|1234!")
#: The metadata chunks the reader decodes (version 3 names, then version 2's).
ND2_METADATA = (
    b"ImageAttributesLV!", b"ImageMetadataLV!", b"ImageMetadataSeqLV|0!", b"ImageTextInfoLV!",
    b"ImageAttributes!", b"ImageMetadata!", b"ImageMetadataSeq|0!", b"ImageTextInfo!",
)
_CLX_COMPRESSED = 76  # a CLX lite record of this type is zlib's stream of the records


def is_nd2(data: bytes) -> bool:
    """Whether ``data`` starts as a current (version 2 or 3) Nikon ND2 does: the signature chunk's
    header (its first 16 bytes, all a stored upload's first-bytes check sees), then its name."""
    return data[:16] == _ND2_HEADER and (len(data) < 48 or data[16:48] == _ND2_SIGNATURE)


def check_nd2(data: bytes, limits: Limits) -> int:
    """Chunks in an ND2, walked through its chunk map as the ``nd2`` reader walks it:
    :class:`TooComplex` past ``limits.max_nd2_chunks`` chunks or metadata past
    ``limits.max_metadata_bytes`` (inflated, where compressed), :class:`~service.imaging.UndecodableImage`
    for a map or a chunk that is not in the file."""
    return len(nd2_chunks(data, limits))


def nd2_chunks(data: bytes, limits: Limits | None = None) -> dict[bytes, tuple[int, int]]:
    """Each chunk of an ND2 by name: where its data starts and how many bytes it holds, every one
    checked to lie in the file. ``limits`` bound the walk (None: a file already walked)."""
    size = len(data)
    if size < 112 + 40:
        raise UndecodableImage(f"truncated ND2: {size} bytes, shorter than its header and chunk map")
    signature, map_at = struct.unpack_from("<32sQ", data, size - 40)
    if signature != _ND2_MAP_SIGNATURE:
        raise UndecodableImage(
            "truncated ND2: the file does not end with its chunk map (an upload cut short, or a file "
            "NIS-Elements did not finish writing)"
        )
    start, length = _nd2_chunk(data, map_at, "chunk map")
    if limits is not None and length > limits.max_nd2_chunks * (_ND2_MAX_NAME + _ND2_ENTRY.size) + 40:
        raise _too_many_nd2_chunks(limits)  # more bytes than that many entries take: not copied
    entries = bytes(data[start : start + length])
    chunks: dict[bytes, tuple[int, int]] = {}
    metadata = count = 0
    pos = 0
    while True:
        end = entries.find(b"!", pos, pos + _ND2_MAX_NAME)
        if end < 0:
            raise UndecodableImage(f"malformed ND2 chunk map: no chunk name at byte {pos:,} of the map")
        name = entries[pos : end + 1]
        if name == _ND2_MAP_SIGNATURE:
            break
        if end + 1 + _ND2_ENTRY.size > len(entries):
            raise UndecodableImage("malformed ND2 chunk map: it ends inside an entry")
        offset, _size = _ND2_ENTRY.unpack_from(entries, end + 1)
        pos = end + 1 + _ND2_ENTRY.size
        count += 1  # entries, not names: a map naming one chunk a million times is walked as long
        if limits is not None and count > limits.max_nd2_chunks:
            raise _too_many_nd2_chunks(limits)
        where = name.decode("ascii", "replace")
        chunks[name] = _nd2_chunk(data, offset, f"chunk {where}")
        if limits is not None and name in ND2_METADATA:
            metadata += _nd2_metadata_bytes(data, *chunks[name], limits.max_metadata_bytes, metadata)
    return chunks


def _too_many_nd2_chunks(limits: Limits) -> TooComplex:
    return TooComplex(
        f"the ND2 has more than {limits.max_nd2_chunks:,} chunks (one per frame)",
        limits.max_nd2_chunks, "UNET_MAX_ND2_CHUNKS", "; export the frames you need",
    )


def _nd2_chunk(data: bytes, at: int, what: str) -> tuple[int, int]:
    size = len(data)
    if not 0 <= at <= size - _ND2_CHUNK.size:
        raise UndecodableImage(f"truncated ND2: its {what} is not in the file (byte {at:,} of {size:,})")
    magic, name_length, length = _ND2_CHUNK.unpack_from(data, at)
    start = at + _ND2_CHUNK.size + name_length
    if magic != 0x0ABECEDA:
        raise UndecodableImage(f"malformed ND2: no chunk at byte {at:,} ({what})")
    if start + length > size:
        raise UndecodableImage(
            f"truncated ND2: its {what} runs past the end of the file ({size:,} bytes)"
        )
    return start, length


def _nd2_metadata_bytes(data: bytes, start: int, length: int, limit: int, used: int) -> int:
    """A metadata chunk's bytes as decoded (inflated, where NIS compressed it), ``used`` of ``limit``
    already decoded."""
    left = limit - used
    decoded = length
    if length and data[start] == _CLX_COMPRESSED and length <= left:
        # <type, name length 0> then 10 bytes before zlib's stream, as the reader skips them.
        inflater = zlib.decompressobj()
        try:
            decoded = len(inflater.decompress(bytes(data[start + 12 : start + length]), left + 1))
        except zlib.error as exc:
            raise UndecodableImage(f"malformed ND2 metadata: {exc}") from exc
    if decoded > left:
        raise TooComplex(
            f"the ND2's metadata holds more than {limit:,} bytes", limit, "UNET_MAX_METADATA_BYTES",
        )
    return decoded


# OLE2 compound files ([MS-CFB], the container of Olympus OIB): a 512-byte header (version 3; 4096
# in version 4, whose sectors are 4096 bytes), then sectors; sector n at byte (n + 1) × sector size.
# The FAT (its sectors listed by the header's DIFAT array and DIFAT sectors) chains each stream's
# sectors; the directory is a chain of 128-byte entries whose storages hold their children as a
# binary tree through sibling ids.
COMPOUND_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_CFB_HEADER = struct.Struct("<8s16sHHHHH6sIIIIIIIII")
_CFB_HEADER_DIFAT = 109
_CFB_ENTRY = 128
_CFB_END, _CFB_FREE = 0xFFFFFFFE, 0xFFFFFFFF
_CFB_MAX_REGULAR = 0xFFFFFFFA
#: How deep the directory's trees may nest, storages within storages included: FluoView writes
#: balanced trees two storages deep (~15 levels for 10,000 planes); olefile walks them recursively.
CFB_MAX_TREE_DEPTH = 100


def is_compound(data: bytes) -> bool:
    """Whether ``data`` starts as an OLE2 compound file does (an Olympus OIB; also a Zeiss ZVI or an
    old Microsoft Office document)."""
    return data[:8] == COMPOUND_SIGNATURE


def check_compound(data: bytes, limits: Limits) -> int:
    """Directory entries of an OLE2 compound file, walked as olefile reads them: :class:`TooComplex`
    past ``limits.max_oib_entries``; :class:`~service.imaging.UndecodableImage` for a header,
    chain or tree that is not the format's (a loop, a sector outside the file, an entry reached twice,
    a tree deeper than :data:`CFB_MAX_TREE_DEPTH`) or a stream larger than the file."""
    size = len(data)
    if size < 512:
        raise UndecodableImage(f"truncated compound file (OIB): {size} bytes, shorter than its header")
    (_sig, _clsid, _minor, major, order, sector_shift, mini_shift, _reserved, _dir_sectors, fat_sectors,
     dir_start, _transaction, cutoff, _minifat_start, minifat_sectors, difat_start,
     difat_sectors) = _CFB_HEADER.unpack_from(data, 0)
    if order != 0xFFFE or (major, sector_shift) not in ((3, 9), (4, 12)) or mini_shift != 6 or cutoff != 4096:
        raise UndecodableImage(
            f"malformed compound file (OIB): version {major}, byte order {order:#x}, sectors of "
            f"2^{sector_shift} bytes, mini sectors of 2^{mini_shift}, cut-off {cutoff}"
        )
    sector = 1 << sector_shift
    sectors = max(0, -(-(size - sector) // sector))  # the last one may be short, as olefile allows
    if max(fat_sectors, difat_sectors, minifat_sectors) > sectors:
        raise UndecodableImage(
            f"malformed compound file (OIB): its header counts {fat_sectors:,} FAT, {difat_sectors:,} "
            f"DIFAT and {minifat_sectors:,} mini FAT sectors in a file of {sectors:,}"
        )
    per_sector = sector // 4

    def sector_ints(at: int) -> tuple[int, ...]:
        if at >= sectors:
            raise UndecodableImage(f"malformed compound file (OIB): sector {at:,} is not in the file")
        start = (at + 1) * sector
        return struct.unpack_from(f"<{per_sector}I", bytes(data[start:start + sector]).ljust(sector, b"\0"))

    fat_ids = list(struct.unpack_from(f"<{_CFB_HEADER_DIFAT}I", data, _CFB_HEADER.size))
    seen: set[int] = set()
    at = difat_start
    for _ in range(difat_sectors):
        if at in seen or at > _CFB_MAX_REGULAR:
            raise UndecodableImage("malformed compound file (OIB): a loop or a gap in its DIFAT chain")
        seen.add(at)
        *ids, at = sector_ints(at)
        fat_ids += ids
    fat_ids = fat_ids[:fat_sectors]

    def next_sector(at: int) -> int:
        """The FAT's entry for sector ``at``, read where it lies (the FAT is not copied)."""
        holder = fat_ids[at // per_sector] if at // per_sector < len(fat_ids) else sectors
        where = (holder + 1) * sector + at % per_sector * 4
        if holder >= sectors or where + 4 > size:
            raise UndecodableImage(f"malformed compound file (OIB): the FAT does not cover sector {at:,}")
        return struct.unpack_from("<I", data, where)[0]

    entries = 0
    seen = set()
    at = dir_start
    directory = bytearray()
    while at != _CFB_END:
        if at in seen or at >= sectors:
            raise UndecodableImage("malformed compound file (OIB): a loop or a gap in its directory chain")
        seen.add(at)
        entries += sector // _CFB_ENTRY
        if entries > limits.max_oib_entries:
            raise TooComplex(
                f"the OIB has more than {limits.max_oib_entries:,} directory entries (a few per plane)",
                limits.max_oib_entries, "UNET_MAX_OIB_ENTRIES", "; export the planes you need as TIFF",
            )
        directory += data[(at + 1) * sector:(at + 2) * sector]
        at = next_sector(at)
    _check_compound_tree(bytes(directory).ljust(entries * _CFB_ENTRY, b"\0"), entries, size, major)
    return entries


def _check_compound_tree(directory: bytes, entries: int, size: int, major: int) -> None:
    """The directory's trees from the root entry: each entry reached once, depth bounded, every
    stream's size within the file."""
    if entries == 0:
        raise UndecodableImage("malformed compound file (OIB): no directory")
    reached = {0}
    pending = [(0, 0)]  # (entry, depth)
    while pending:
        index, depth = pending.pop()
        base = index * _CFB_ENTRY
        kind = directory[base + 66]
        left, right, child = struct.unpack_from("<III", directory, base + 68)
        # Version 3 sizes are 32-bit: old writers leave junk in the high word, which olefile ignores.
        stream_size = struct.unpack_from("<Q" if major == 4 else "<I", directory, base + 120)[0]
        if kind in (2, 5) and stream_size > size:
            raise UndecodableImage(
                f"malformed compound file (OIB): entry {index} claims {stream_size:,} bytes in a file of "
                f"{size:,}"
            )
        links = (left, right, child) if index else (child,)  # the root has no siblings
        for link in links:
            if link == _CFB_FREE:
                continue
            if link >= entries or link in reached:
                raise UndecodableImage(
                    f"malformed compound file (OIB): entry {index} links to entry {link}, "
                    + ("reached twice" if link in reached else "not in the directory")
                )
            if depth + 1 > CFB_MAX_TREE_DEPTH:
                raise UndecodableImage(
                    "malformed compound file (OIB): its directory nests deeper than "
                    f"{CFB_MAX_TREE_DEPTH} levels"
                )
            reached.add(link)
            pending.append((link, depth + 1))
