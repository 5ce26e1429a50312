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
    """Refuse an OME-TIFF whose OME-XML describes more planes than the bound, over all its Images
    together: each ``Pixels``' ``SizeZ × SizeC × SizeT`` planes × how many of its keyframe its
    ``SizeX × SizeY`` would fill (tifffile sizes a series by the whole over the first page its
    ``TiffData`` give: a 1×1 page there for a 20000² image asked for 6.4 GB; :func:`_keyframe_pixels`
    finds it as tifffile does), or each ``TiffData``'s ``PlaneCount`` where larger."""
    if not tif.is_ome:
        return
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return  # tifffile reads no OME series from it either
    own_uuid, own_name = root.get("UUID"), tif.filehandle.name.lower()
    smallest: list[int] = []  # the file's smallest page, worked out once where needed
    planes = 0
    for pixels in (e for e in root.iter() if e.tag.endswith("Pixels")):
        size = {axis: _count(pixels.get(f"Size{axis}")) for axis in "XYZCT"}
        datas = [e for e in pixels if e.tag.endswith("TiffData")]
        keyframe = _keyframe_pixels(tif, datas, own_uuid, own_name, smallest)
        described = size["Z"] * size["C"] * size["T"] * max(1, size["X"] * size["Y"] // keyframe)
        for data in datas:
            described = max(described, _count(data.get("PlaneCount", data.get("NumPlanes"))))
        planes += described
        check(planes, max_pages, "the OME-XML")


def _keyframe_pixels(tif: Any, datas: list[ET.Element], own_uuid: str | None, own_name: str,
                     smallest: list[int]) -> int:
    """Pixels of the page tifffile takes as an Image's keyframe: the first of its ``TiffData`` that
    lies in this file (no UUID, the file's own UUID, or its name in any case, as tifffile matches
    them) at an IFD the file has. Where the first that gives a page lies in another file of a set
    (read by path), the file's smallest page stands for it."""
    for data in datas:
        uuid = next((e for e in data if e.tag.endswith("UUID")), None)
        elsewhere = uuid is not None and (uuid.text or "").strip() != (own_uuid or "") and (
            (uuid.get("FileName") or "").lower() != own_name)
        if elsewhere:
            break
        try:
            page = tif.pages[_index(data.get("IFD"))]
        except Exception:  # noqa: BLE001 - an IFD past the file's pages: tifffile skips it too
            continue
        return max(1, int(page.imagewidth) * int(page.imagelength))
    else:
        return 1 if not datas else max(1, _smallest_page(tif, smallest))
    return max(1, _smallest_page(tif, smallest))


def _smallest_page(tif: Any, cache: list[int]) -> int:
    if not cache:
        cache.append(min((int(p.imagewidth) * int(p.imagelength) for p in tif.pages), default=1))
    return cache[0]


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
