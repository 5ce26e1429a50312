"""A ZIP archive written as a stream of byte chunks: each member can be sent as soon as it is added.

The standard library's ``zipfile`` writes to a non-seekable stream already: each member's sizes
and CRC follow its data in a data descriptor, and the central directory comes at the end.
Everything that reads ZIPs (``unzip``, ``zipfile``, browsers, Fiji) reads these. So this module is
only a sink that hands back what ``zipfile`` wrote since the last call — no dependency
(``zipstream-ng`` would add one for the same bytes) and no file on disk.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path


class _Sink:
    """A write-only file object collecting what ``zipfile`` writes (no ``tell``/``seek``: that
    makes ``zipfile`` stream, with data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class ZipStream:
    """``add`` members one by one, each call returning the archive bytes to send now; ``close``
    returns the central directory. Members are stored (PNG/TIFF are compressed already) unless
    ``deflate`` is asked for."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, "w", compression=zipfile.ZIP_STORED)  # type: ignore[arg-type]

    def add(self, name: str, data: bytes, deflate: bool = False) -> bytes:
        self._zip.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if deflate else None)
        return self._sink.take()

    def add_file(self, name: str, path: Path, deflate: bool = False, piece: int = 1 << 20) -> Iterator[bytes]:
        """A member read from ``path`` ``piece`` bytes at a time, yielding the archive bytes as they
        come: a file of any size (a slide's objects GeoJSON: ~1 GB) never sits in memory. Zip64
        extras are written for it, since its size is not told to ``zipfile`` before its data."""
        info = zipfile.ZipInfo.from_file(path, name)
        info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
        with open(path, "rb") as source, self._zip.open(info, "w", force_zip64=True) as member:
            while chunk := source.read(piece):
                member.write(chunk)
                out = self._sink.take()
                if out:
                    yield out
        yield self._sink.take()

    def close(self) -> bytes:
        self._zip.close()
        return self._sink.take()
