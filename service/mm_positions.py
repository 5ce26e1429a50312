"""A Micro-Manager acquisition's stage positions, offered as the file's images (``series=``).

Read by *path*, one file of a multi-position Micro-Manager acquisition is the whole acquisition to
tifffile: an MMStack file (``NAME_MMStack_Pos1.ome.tif``, one per position as Micro-Manager writes
them) gathers the other positions' files beside it, an NDTiff dataset reads its ``NDTiff.index``,
and either gives one series with a position axis, R. The service reads C, Z, T, Y and X, and
refused every such file. Here each position becomes an image of its own, as an OME-TIFF's Images
or a CZI's scenes are: chosen with ``series=``, named by its label in the acquisition
(``1-Pos_000_001``, ``Pos2``). An MMStack file read without ``series=`` is read at its own position,
the plane it gives when it is uploaded alone (tifffile then sees only its own pages); an NDTiff
file, which may hold many positions, at its first.

From bytes tifffile opens no other file, so an MMStack upload is its own position; an NDTiff
upload's positions, laid out from its pages (:mod:`service.ndtiff_pages`), are split here too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from service import extent as extent_of
from service import ndtiff_pages, structure, tiff_vendors

#: The attribute of a position's series (``TiffPageSeries.attr``) that holds its index in the
#: acquisition.
POSITION = "micro-manager position"

#: The largest NDTiff index read for names here. By path, ``service.tiff_sets`` has already
#: refused an index over ``UNET_MAX_METADATA_BYTES`` before tifffile read it; this bound is for
#: readers without that check (the client cutting a local file's frames): the setting's default.
MAX_INDEX_BYTES = structure.Limits().max_metadata_bytes


def split(series: Any, tif: Any) -> list[Any]:
    """``series`` as one series per stage position where it has an R axis of more than one
    position, each holding that position's pages (missing ones stay None) with the other axes in
    their order; else ``[series]``."""
    import tifffile

    axes, shape = series.get_axes(False), tuple(int(n) for n in series.get_shape(False))
    page_axes = series.keyframe.axes
    lead_axes = axes[: len(axes) - len(page_axes)]
    if "R" not in lead_axes or not axes.endswith(page_axes):
        return [series]
    lead_shape = shape[: len(lead_axes)]
    pages = list(series.pages)
    at = lead_axes.index("R")
    count = lead_shape[at]
    if count < 2 or int(np.prod(lead_shape)) != len(pages):
        return [series]
    names = _names(series, tif, count)
    grid = np.arange(len(pages)).reshape(lead_shape)
    kept_axes = lead_axes[:at] + lead_axes[at + 1:]
    kept_shape = lead_shape[:at] + lead_shape[at + 1:]
    positions = []
    for k in range(count):
        chosen = [pages[int(i)] for i in np.take(grid, k, axis=at).ravel()]
        if all(page is None for page in chosen):
            chosen[0] = series.keyframe  # tifffile needs one page to describe it; read() sees None below
            missing = True
        else:
            missing = False
        position = tifffile.TiffPageSeries(
            chosen, shape=kept_shape + shape[len(lead_axes):], dtype=series.dtype,
            axes=kept_axes + page_axes, parent=tif, name=names[k], kind=series.kind,
            multifile=series.is_multifile, attr={**series.attr, POSITION: k},
        )
        if missing:
            position._pages[0] = None  # noqa: SLF001 - a position whose files are all absent
        positions.append(position)
    return positions


def check_extent(tif: Any, max_pages: int) -> None:
    """Refuse a Micro-Manager stack whose summary and index map describe more planes than
    :mod:`service.extent` allows. tifffile sizes its series from them (channels × slices ×
    frames × positions, each the larger of the summary's count and the index map's highest index)
    and allocates a list of that many pages before it reads one: a byte flipped in
    either asked for billions (found by fuzzing: a MemoryError, or many seconds of allocating).
    The pages a file holds are bounded by ``max_pages`` already; the extent may be larger, as an
    acquisition stopped early keeps the frames it planned in its summary.

    Raises:
        structure.TooComplex: past the bound (``UNET_MAX_TIFF_PAGES``).
    """
    index_map, summary = _index_map(tif), tiff_vendors.micromanager_summary(tif)
    if index_map is None:
        return
    extent = 1
    for column, key in enumerate(("Channels", "Slices", "Frames", "Positions")):
        highest = int(index_map[:, column].max()) + 1 if index_map.shape[0] else 1
        try:
            declared = int(summary.get(key, 1) or 1)
        except (TypeError, ValueError, OverflowError):
            declared = 1
        extent *= max(highest, declared, 1)
    extent_of.check(extent, max_pages, "the Micro-Manager stack's metadata (summary and index map)")


def own_image(tif: Any, images: list[Any]) -> int | None:
    """The index in ``images`` (:func:`service.microscopy.image_series`) of the stage position
    the file itself holds, where its positions were split; None otherwise."""
    if not any(POSITION in image.attr for image in images):
        return None
    own = _own_position(tif)
    return next((i for i, image in enumerate(images) if own is not None and image.attr.get(POSITION) == own),
                None)


def alone_note(tif: Any, series: Any) -> str | None:
    """The notice that a Micro-Manager stack read alone (an upload: tifffile opens no file beside
    it) is one stage position of several, which lie in other files; None otherwise."""
    if series.kind != "mmstack" or POSITION in series.attr:
        return None
    try:
        count = int(tiff_vendors.micromanager_summary(tif).get("Positions", 1) or 1)
    except (TypeError, ValueError, OverflowError):  # not a number
        return None
    own = _own_position(tif)
    if count < 2 or own is None:
        return None
    label = next(iter(_names(series, tif, count)[own:own + 1]), None)
    named = f" ({label})" if label else ""
    return (f"this file is stage position {own}{named} of a Micro-Manager acquisition of {count}; the "
            "others are in their own files: send each, or read them by path (series= chooses one)")


def position_note(count: int, index: int, name: str | None) -> str:
    """The notice that a file of an acquisition of ``count`` positions was read at its own."""
    label = f" ({name})" if name else ""
    return (f"the acquisition holds {count} stage positions, in this file and the files beside it; "
            f"this file's, series={index}{label}, is segmented: series=0..{count - 1} chooses another")


def _own_position(tif: Any) -> int | None:
    """The stage position an MMStack file holds (each file one position, as Micro-Manager writes
    them), from its own index map; None for a file of several (an NDTiff's) or none."""
    index_map = _index_map(tif)
    if index_map is None:
        return None
    held = np.unique(index_map[:, 3])
    return int(held[0]) if held.size == 1 else None


def _index_map(tif: Any) -> np.ndarray | None:
    """An MMStack file's index map (channel, slice, frame, position, offset of each page), None
    where it has none tifffile could read."""
    index_map = tiff_vendors.micromanager_metadata(tif).get("IndexMap")
    if not isinstance(index_map, np.ndarray) or index_map.ndim != 2 or index_map.shape[1] < 4:
        return None
    return index_map


def _names(series: Any, tif: Any, count: int) -> list[str | None]:
    """Each position's label: an MMStack summary's position list (``StagePositions`` in Micro-Manager
    2, ``InitialPositionList`` in 1.4), in the order of the R index; an NDTiff's position values in
    the order tifffile numbers them (first seen in the index). None where the file gives none."""
    laid_out = series.attr.get(ndtiff_pages.NAMES)
    if laid_out is not None:  # an NDTiff upload's pages named them
        labels = list(laid_out.get("R", []))
    elif series.kind == "ndtiff":
        labels = _ndtiff_values(tif, "position")
    else:
        labels = []
        summary = tiff_vendors.micromanager_summary(tif)
        listed = summary.get("StagePositions") or summary.get("InitialPositionList")
        if isinstance(listed, list):
            labels = [str(p.get("Label") or "").strip() or None if isinstance(p, dict) else None
                      for p in listed]
    return labels if len(labels) == count else [None] * count


def ndtiff_channel_names(tif: Any, series: Any, count: int) -> list[str | None]:
    """An NDTiff dataset's channel names, as its pages (an upload's,
    :mod:`service.ndtiff_pages`) or its index (by path, in tifffile's order) give them
    (``channel`` values that are names), where there are ``count``; else empty."""
    laid_out = series.attr.get(ndtiff_pages.NAMES)
    names = list(laid_out.get("C", [])) if laid_out is not None else _ndtiff_values(tif, "channel")
    return names if len(names) == count else []


def _ndtiff_values(tif: Any, axis: str) -> list[str | None]:
    """The names an NDTiff index gives the indices of ``axis``, in the order tifffile numbers them
    (each name when first seen). Empty where there is no index, it is larger than
    :data:`MAX_INDEX_BYTES`, or its first entry does not name this axis's index (tifffile then
    numbers them as given)."""
    import tifffile

    if not tif.filehandle.is_file:
        return []
    index = os.path.join(tif.filehandle.dirname, "NDTiff.index")
    try:
        if os.path.getsize(index) > MAX_INDEX_BYTES:
            return []
        values: list[str | None] = []
        for number, entry in enumerate(tifffile.read_ndtiff_index(index)):
            value = entry[0].get(axis)
            if number == 0 and not isinstance(value, str):
                return []
            if isinstance(value, str) and value not in values:
                values.append(value)
    except Exception:  # noqa: BLE001 - a broken index: tifffile read no series from it either
        return []
    return values
