"""How many planes a TIFF's own metadata may describe before tifffile sizes a series by it.

tifffile lays out an OME-TIFF, a Micro-Manager stack and an NDTiff dataset from what their
metadata say (OME ``Size*`` and ``TiffData PlaneCount``, the stack's summary and index map, the
NDTiff index's coordinates), allocating a list of one entry per plane described before it reads
a page. A few bytes changed ask for billions: a 13 kB OME-TIFF with ``PlaneCount="300000000"``
took 4.9 GB on one ``POST /probe``, an NDTiff index entry at ``z: 1e8`` 23 s and 5 GB (found by a
hostile-input audit). The pages a file holds are bounded by ``UNET_MAX_TIFF_PAGES`` already; the
planes described may be more (an acquisition stopped early keeps the frames it planned), so the
bound is :data:`EXTENT_FACTOR` times that: a list of 100 × 10,000 entries is 8 MB.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from service import structure

#: How many planes a file's metadata may describe per page the service reads (``UNET_MAX_TIFF_PAGES``).
EXTENT_FACTOR = 100


def check(planes: int, max_pages: int, what: str) -> None:
    """Refuse ``planes`` described (by ``what``: "the OME-XML") past :data:`EXTENT_FACTOR` ×
    ``max_pages``.

    Raises:
        structure.TooComplex: past the bound (``UNET_MAX_TIFF_PAGES``).
    """
    if planes > EXTENT_FACTOR * max_pages:
        raise structure.TooComplex(
            f"{what} describes {planes:,} planes, more than {EXTENT_FACTOR} × {max_pages:,}", max_pages,
            "UNET_MAX_TIFF_PAGES", "; send fewer planes",
        )


def spans(columns: Iterable[Iterable[int]]) -> int:
    """The planes a grid holding these coordinates has: the product, over its axes, of each one's
    highest less its lowest coordinate plus one (as tifffile and ``ndtiff_pages`` lay one out)."""
    total = 1
    for values in columns:
        listed = list(values)
        if listed:
            total *= max(listed) - min(listed) + 1
    return total


def check_ome(tif: Any, max_pages: int) -> None:
    """Refuse an OME-TIFF whose OME-XML describes more planes than the bound: per ``Pixels``, its
    ``SizeZ × SizeC × SizeT`` planes (× how many of its first page its ``SizeX × SizeY`` would
    fill: tifffile sizes the series by the whole over that page), and each ``TiffData``'s
    ``PlaneCount``."""
    if not tif.is_ome:
        return
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return  # tifffile reads no OME series from it either
    for pixels in (e for e in root.iter() if e.tag.endswith("Pixels")):
        size = {axis: _count(pixels.get(f"Size{axis}")) for axis in "XYZCT"}
        datas = [e for e in pixels if e.tag.endswith("TiffData")]
        page = _first_page(tif, datas[0]) if datas else None
        fill = 1 if page is None else size["X"] * size["Y"] // max(1, page)
        planes = size["Z"] * size["C"] * size["T"] * max(1, fill)
        for data in datas:
            planes = max(planes, _count(data.get("PlaneCount", data.get("NumPlanes"))))
        check(planes, max_pages, "the OME-XML")


def _first_page(tif: Any, data: ET.Element) -> int | None:
    """Pixels of the page a ``TiffData`` starts at, in this file; None where it lies in another file
    of a set, or is not there (tifffile then skips or pads it, within the planes counted)."""
    own = tif.filehandle.name
    if any(e.tag.endswith("UUID") and e.get("FileName") not in (None, own) for e in data):
        return None
    try:
        page = tif.pages[_index(data.get("IFD"))]
    except Exception:  # noqa: BLE001 - an IFD past the file's pages, or one tifffile cannot parse
        return None
    return int(page.imagewidth) * int(page.imagelength)


def _count(text: str | None) -> int:
    """A size as tifffile reads it (``int``), 1 where absent or not a number (tifffile then fails
    on it, or reads none)."""
    try:
        return max(int(text or 1), 1)
    except (TypeError, ValueError):
        return 1


def _index(text: str | None) -> int:
    """An IFD index as tifffile reads it, 0 where absent or not a number."""
    try:
        return max(int(text or 0), 0)
    except (TypeError, ValueError):
        return 0
