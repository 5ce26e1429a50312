"""Zarr chunk codecs that decode no more than a chunk may hold.

An OME-Zarr store read by path (a slide or stack job under ``UNET_DATA_ROOT``) is decoded chunk by
chunk by numcodecs, which zarr calls for Zarr v2 and v3 arrays alike. numcodecs inflates a
gzip or zlib chunk whole before zarr compares its size with the array's chunk shape, allocates
what a Blosc, LZ4 or Zstandard header claims, and Zarr decodes several chunks at once: four gzip
chunks of 1.5 MB that inflate to 1.5 GB each took the server to 11.9 GB for one slide job (found
by a hostile-input audit), where a container's memory limit would have killed every request and
job in flight with it. TIFF tiles are not concerned: tifffile decodes each into a buffer of the
tile's size.

:func:`install` replaces the decoders of numcodecs' ``Zlib``, ``GZip``, ``Zstd``, ``Blosc``,
``LZ4``, ``BZ2`` and ``LZMA`` with ones that stop past ``limit`` bytes (the largest chunk a window
may decode, ``slide_files.MAX_CHUNK_BYTES``; the service refuses arrays declaring larger chunks)
and raise :class:`ChunkTooLarge`: the window's read turns it into a 400. Streams are inflated
with a bound on their output (zlib, bz2, lzma's decompressor objects; Zstandard through
imagecodecs into a buffer of the limit); Blosc and LZ4 say their decoded size in a header, read
first. Encoding is untouched. It is process-wide (numcodecs' classes are shared by every Zarr
array): a chunk the service reads or writes is never near the limit, and no other part of the
process decodes Zarr.
"""

from __future__ import annotations

import bz2
import lzma
import threading
import zlib
from typing import Any

from service.imaging import UndecodableImage


class ChunkTooLarge(UndecodableImage):
    """A compressed chunk that decodes past the limit (HTTP 400)."""


_limit: int | None = None
_originals: dict[type, Any] = {}  # Blosc's and LZ4's own decoders, called once the size is checked
_lock = threading.Lock()


def install(limit: int) -> None:
    """Bound numcodecs' decoders at ``limit`` bytes a chunk; again with the same limit: nothing."""
    global _limit
    with _lock:
        if _limit != limit:
            _patch(limit)
            _limit = limit


def _too_large(codec: str, limit: int) -> ChunkTooLarge:
    return ChunkTooLarge(
        f"a {codec} chunk decodes to more than {limit:,} bytes, more than a chunk of the store may hold "
        "(a decompression bomb, or not a chunk of this array)"
    )


def _inflate(new_decompressor: Any, data: bytes, limit: int, codec: str, streams: bool) -> bytes:
    """``data`` through a decompressor from ``new_decompressor()`` (a new one for each stream that
    follows, where ``streams``: gzip members, bz2 and xz streams), never more than ``limit`` bytes
    out; a stream cut short is an error, as it is to the decoder replaced."""
    out = bytearray()
    rest = data
    while True:
        decompressor = new_decompressor()
        out += decompressor.decompress(rest, limit + 1 - len(out))  # at least 1: 0 would be no bound
        if len(out) > limit:
            raise _too_large(codec, limit)
        if not decompressor.eof:
            raise UndecodableImage(f"a {codec} chunk of the store is cut short")
        rest = decompressor.unused_data
        if not (rest and streams) or not rest.strip(b"\x00"):  # zero padding, as gzip allows
            return bytes(out)


def _zlib_decompressor(codec: Any) -> Any:
    return zlib.decompressobj()


def _gzip_decompressor(codec: Any) -> Any:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)  # a gzip member's header and trailer


def _lzma_decompressor(codec: Any) -> Any:
    """As numcodecs' LZMA decodes: its container format, and its filters where the stream is raw."""
    fmt = getattr(codec, "format", lzma.FORMAT_AUTO)
    filters = getattr(codec, "filters", None) if fmt == lzma.FORMAT_RAW else None
    return lzma.LZMADecompressor(format=fmt, filters=filters)


def _zstd_content_size(data: bytes) -> int | None:
    """The decoded size a Zstandard frame's header gives (RFC 8878, 3.1.1.1), None where it gives
    none or ``data`` is no frame."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if field == 0 or len(data) < start + field:
        return None
    size = int.from_bytes(data[start:start + field], "little")
    return size + 256 if field == 2 else size


def _lz4_size(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


def _patch(limit: int) -> None:
    import importlib

    import imagecodecs
    from numcodecs.compat import ensure_bytes, ndarray_copy

    def streamed(codec: str, new_decompressor: Any, streams: bool = True) -> Any:
        """``new_decompressor(the codec)``: a decompressor with the codec's own settings."""
        def decode(self: Any, buf: Any, out: Any = None) -> Any:
            decoded = _inflate(lambda: new_decompressor(self), ensure_bytes(buf), limit, codec, streams)
            return ndarray_copy(decoded, out)

        return decode

    def zstd_decode(self: Any, buf: Any, out: Any = None) -> Any:
        data = ensure_bytes(buf)
        size = _zstd_content_size(data)
        if size is not None and size > limit:
            raise _too_large("Zstandard", limit)
        try:
            # into a buffer of the size the frame says where it says one (a buffer of the limit for
            # every chunk made reading a store ~30% slower), else of the limit
            decoded = imagecodecs.zstd_decode(data, out=size if size else limit)
        except imagecodecs.ZstdError as exc:
            if "too small" in str(exc):
                raise _too_large("Zstandard", limit) from exc
            raise
        return ndarray_copy(decoded, out)

    def sized(cls: type, codec: str, decoded_size: Any) -> Any:
        original = _originals.setdefault(cls, cls.decode)  # type: ignore[attr-defined]

        def decode(self: Any, buf: Any, out: Any = None) -> Any:
            data = ensure_bytes(buf)
            if decoded_size(data) > limit:
                raise _too_large(codec, limit)
            return original(self, data, out)

        return decode

    def blosc_size(data: bytes) -> int:
        module = importlib.import_module("numcodecs.blosc")
        sizes = getattr(module, "cbuffer_sizes", None) or module._cbuffer_sizes  # renamed across releases
        return int(sizes(data)[0])

    decoders = {
        ("numcodecs.zlib", "Zlib"): lambda cls: streamed("zlib", _zlib_decompressor, streams=False),
        ("numcodecs.gzip", "GZip"): lambda cls: streamed("gzip", _gzip_decompressor),
        ("numcodecs.bz2", "BZ2"): lambda cls: streamed("bz2", lambda codec: bz2.BZ2Decompressor()),
        ("numcodecs.lzma", "LZMA"): lambda cls: streamed("LZMA", _lzma_decompressor),
        ("numcodecs.zstd", "Zstd"): lambda cls: zstd_decode,
        ("numcodecs.blosc", "Blosc"): lambda cls: sized(cls, "Blosc", blosc_size),
        # numcodecs' LZ4 chunk starts with its decoded size (4 bytes, little-endian)
        ("numcodecs.lz4", "LZ4"): lambda cls: sized(cls, "LZ4", _lz4_size),
    }
    for (module_name, class_name), bounded in decoders.items():
        try:  # a codec this numcodecs build lacks decodes nothing here either
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        cls.decode = bounded(cls)
