"""A segmentation as the file a user keeps: mask / probability / label images, object tables,
GeoJSON, ImageJ ROI sets.

One encoder for the HTTP routes (``POST /segment``) and the in-process API and batch CLI
(``service.api``, ``unet-segment`` without ``--url``), so the same image and options give the
same bytes either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from service import background, imaging, objects, postprocess
from service.measured_channels import channel_keys
from service.microscopy import Plane
from service.preprocess import to_channels

#: What can be encoded, as ``POST /segment?output=`` names it.
KINDS = ("mask", "probability", "labels", "overlay", "objects", "geojson", "rois")

#: The kinds that can carry cells around the objects (``expand=``).
CELL_KINDS = ("objects", "geojson", "rois")
#: Largest ``expand=`` (px): a cell ten nucleus diameters across is no cell any more.
MAX_EXPAND_PX = 500
#: The kinds whose table can give each measured channel's local background (``background_ring=``).
BACKGROUND_KINDS = ("objects", "geojson")

#: The arrays each kind is drawn from (names of ``service.api.Segmentation`` fields).
NEEDS: dict[str, frozenset[str]] = {
    "mask": frozenset({"mask"}),
    "probability": frozenset({"probability"}),
    "labels": frozenset({"labels"}),
    "overlay": frozenset({"mask", "labels"}),
    "objects": frozenset({"labels", "probability"}),
    "geojson": frozenset({"labels", "probability"}),
    "rois": frozenset({"labels", "probability"}),
}


def object_rows(
    labels: np.ndarray,
    image: np.ndarray,
    probability: np.ndarray,
    plane: Plane | None,
    cells: np.ndarray | None = None,
    rings: np.ndarray | None = None,
) -> list[objects.ObjectRow]:
    """One measured row per object; in µm too when the plane's pixel size is known, and in each
    channel the plane carries for measuring (``measure=``, columns named by :func:`measured_keys`).

    ``image``: the plane segmented, ``(H, W)`` or ``(H, W, C)`` (intensities are taken from
    its grey version); ``probability``: foreground probability on the same grid; ``cells``: each
    object's cell (``expand=``, ``objects.expand_cells``) for the cell and cytoplasm columns;
    ``rings``: each object's background ring (``background.ring_labels``) for each measured
    channel's local background and corrected intensities.
    """
    size = plane.pixel_size if plane is not None else None
    um = (size.x_um, size.y_um) if size is not None else None
    channels = [] if plane is None else [
        (key, measured.image) for key, measured in zip(measured_keys(plane), plane.measured, strict=True)
    ]
    return objects.measure(
        labels, to_channels(image, 1), probability, pixel_size_um=um, channels=channels, cells=cells,
        rings=rings,
    )


def cells_and_rings(
    labels: np.ndarray, expand: float | None, background_ring: float | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each object's cell (``expand``: ``objects.expand_cells``) and background ring
    (``background_ring``: ``background.ring_labels``), None where not asked for. With cells the
    ring lies beyond them: a cytoplasmic marker's background is outside the cell."""
    cells = None if expand is None else objects.expand_cells(labels, expand)
    if background_ring is None:
        return cells, None
    return cells, background.ring_labels(labels, background_ring, expand or 0.0)


def measured_keys(plane: Plane | None) -> list[str]:
    """The column names (``measured_channels.channel_key``) of the channels ``plane`` is measured in."""
    if plane is None:
        return []
    return channel_keys([(m.channel.index, m.channel.name) for m in plane.measured])


def encode(
    kind: str,
    image: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    plane: Plane | None = None,
    warnings: Sequence[str] = (),
    bits: int = 8,
    json_table: bool = False,
    expand: float | None = None,
    background_ring: float | None = None,
) -> tuple[bytes, str]:
    """``(body, media type)`` of output ``kind`` (one of :data:`KINDS`).

    Args:
        image: the plane segmented (the overlay is drawn on it; intensities in the table).
        probability: ``(H, W)`` float32 foreground probability; mask: ``(H, W)`` uint8 0/255;
            labels: ``(H, W)`` int labels. Only those in ``NEEDS[kind]`` are required.
        plane: what was segmented: its pixel size adds µm columns; GeoJSON carries it and
            ``warnings`` in its properties; ROIs are placed at its channel / z / t.
        bits: 8 or 16, for ``probability``.
        json_table: ``objects`` as a JSON array instead of CSV.
        expand: ``objects`` / ``geojson`` / ``rois``: each object's cell, the object grown by up to
            this many px (``objects.expand_cells``): the cell and cytoplasm columns, QuPath cells
            with their nuclei in the GeoJSON, a cell ROI after each nucleus's.
        background_ring: ``objects`` / ``geojson`` of a plane with measured channels: each
            object's local background in each of them, the median of a ring this many px wide
            around the object, or around its cell with ``expand`` (``service.background``), and
            its intensities less that background.

    Raises:
        ValueError: an unknown ``kind``, or an array it needs is None.
    """
    if kind not in NEEDS:
        raise ValueError(f"output must be one of {', '.join(KINDS)}, got {kind!r}")
    if expand is not None and kind not in CELL_KINDS:
        raise ValueError(f"expand gives cells to output {' / '.join(CELL_KINDS)}, not {kind}")
    if background_ring is not None and (kind not in BACKGROUND_KINDS or not measured_keys(plane)):
        raise ValueError(f"background_ring measures the background of the channels measured (measure=) in "
                         f"output {' / '.join(BACKGROUND_KINDS)}; this is output {kind} of "
                         f"{len(measured_keys(plane))} measured channels")
    given = {"probability": probability, "mask": mask, "labels": labels}
    missing = sorted(name for name in NEEDS[kind] if given[name] is None)
    if missing:
        raise ValueError(f"output {kind} needs {' and '.join(missing)}, which this result does not hold")
    if kind == "probability":
        assert probability is not None
        return imaging.encode_png(postprocess.probability_png_array(probability, bits)), "image/png"
    if kind == "mask":
        assert mask is not None
        return imaging.encode_png(mask), "image/png"
    assert labels is not None
    if kind == "overlay":
        assert mask is not None
        return imaging.encode_png(postprocess.overlay(image, mask, labels=labels)), "image/png"
    if kind == "labels":
        return objects.encode_labels(labels)  # 16-bit PNG; 32-bit TIFF past 65535 objects
    assert probability is not None
    cells, rings = cells_and_rings(labels, expand, background_ring)
    rows = object_rows(labels, image, probability, plane, cells, rings)
    calibrated = plane is not None and plane.pixel_size is not None
    if kind == "rois":
        position = plane.position() if plane is not None else None
        return objects.to_imagej_rois(labels, rows, position, cells=cells), "application/zip"
    if kind == "geojson":
        properties = {**(plane.describe() if plane else {}), "warnings": list(warnings)}
        collection = objects.to_geojson(labels, rows, properties=properties, cells=cells)
        return json.dumps(collection).encode(), "application/geo+json"
    keys, with_cells, with_background = measured_keys(plane), cells is not None, rings is not None
    if json_table:
        table = objects.row_dicts(rows, calibrated, keys, with_cells, with_background)
        return json.dumps(table).encode(), "application/json"
    csv_text = objects.rows_to_csv(rows, calibrated, keys, with_cells, with_background)
    return csv_text.encode(), "text/csv; charset=utf-8"
