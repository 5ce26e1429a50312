"""OLE2 compound files — a small FAT file system in one file — as two microscope formats use them:
Olympus FluoView's OIB (:mod:`service.oib`) and Zeiss AxioVision's ZVI (:mod:`service.zvi`).

olefile (P. Lagadec, BSD-2; what oletools parses hostile Office documents with) reads the file
from an upload's bytes or from a path, one stream at a time, strictly (a defect it calls incorrect
is an error), its loops bounded by the streams' sizes; :func:`service.structure.check_compound`
has walked the header, the directory and its trees first. :func:`open_planes` and
:func:`admitted_pixels` tell the two formats apart by the streams the file holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service import structure
from service.imaging import UndecodableImage
from service.microscopy import Layout, PlaneReader, container_stream

_METADATA_BYTES = structure.Limits().max_metadata_bytes


def open_planes(
    source: bytes | Path, max_pixels: int, series: int | None = None, metadata_bytes: int = _METADATA_BYTES
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of an OIB or a ZVI (an upload's bytes, or a file) and a reader of its planes by
    coordinates (``{"C": c, "Z": z, "T": t}``), and what closes the file: :func:`service.oib.planes`
    or :func:`service.zvi.planes`, which say what they raise."""
    from service import oib, zvi

    ole = open_file(source)
    try:
        reader = zvi if zvi.is_zvi(ole) else oib
        layout, read = reader.planes(ole, max_pixels, series, metadata_bytes)
    except BaseException:
        ole.close()
        raise
    return layout, read, ole.close


def admitted_pixels(data: bytes, max_pixels: int, metadata_bytes: int = _METADATA_BYTES) -> int:
    """What an upload costs admission: one plane (every plane of an OIB or a ZVI has the size),
    from the file's settings or tags. Raises as :func:`open_planes`."""
    from service import oib, zvi

    ole = open_file(data)
    try:
        reader = zvi if zvi.is_zvi(ole) else oib
        return reader.admitted_pixels(ole, max_pixels, metadata_bytes)
    finally:
        ole.close()


@functools.cache
def _reader() -> type:
    """olefile's reader, with its check that no two streams start at one sector kept in constant
    time: olefile keeps the sectors seen in a list (a TODO of its own), so opening a file of 10,000
    streams took 4.8 s and one of 24,000 took 16 s here, quadratic; a set makes it linear."""
    import olefile  # imported only for compound files

    class PlaneReader(olefile.OleFileIO):  # type: ignore[misc]
        def _check_duplicate_stream(self, first_sect: int, minifat: bool = False) -> None:
            if not minifat and first_sect in (olefile.DIFSECT, olefile.FATSECT, olefile.ENDOFCHAIN,
                                              olefile.FREESECT):
                return  # not a stream's first sector, as olefile skips them
            seen = self.__dict__.setdefault("_first_sectors", (set(), set()))[bool(minifat)]
            if first_sect in seen:
                self._raise_defect(olefile.DEFECT_INCORRECT, "Stream referenced twice")
            seen.add(first_sect)

    return PlaneReader


def open_file(source: bytes | Path) -> Any:
    """The ``olefile.OleFileIO`` of a compound file, strict: a defect olefile calls incorrect or
    worse is an error, not read past."""
    import olefile

    try:
        return _reader()(
            str(source) if isinstance(source, Path) else container_stream(source),
            raise_defects=olefile.DEFECT_INCORRECT,
        )
    except Exception as exc:  # noqa: BLE001 - olefile raises OSError, struct.error, IndexError... on bad bytes
        raise UndecodableImage(f"unreadable compound file (OIB, ZVI): {type(exc).__name__}: {exc}") from exc


def read_stream(ole: Any, path: str, limit: int, what: str | None = None, kind: str = "OIB") -> bytes:
    """The bytes of stream ``path``, refused past ``limit`` before any is read: settings or tags
    (``what`` None) as too much metadata (413), plane ``what`` as malformed (400); ``kind`` names
    the format in messages."""
    try:
        size = ole.get_size(path)
        if size > limit and what is None:
            raise structure.TooComplex(
                f"the {kind}'s settings stream {path} holds {size:,} bytes, more than {limit:,}", limit,
                "UNET_MAX_METADATA_BYTES",
            )
        if size > limit:
            raise UndecodableImage(
                f"malformed {kind}: plane {what} claims {size:,} bytes, more than its pixels need"
            )
        return ole.openstream(path).read()
    except (structure.TooComplex, UndecodableImage):
        raise
    except Exception as exc:  # noqa: BLE001 - olefile: OSError, IndexError... on a broken chain
        raise UndecodableImage(f"unreadable {kind}: stream {path}: {type(exc).__name__}: {exc}") from exc
