"""Object measurements for an image that arrives as row bands (slides: never whole in memory).

``objects.measure`` needs the whole label image. Every measurement it reports is a sum or an
extreme over an object's pixels — area, coordinate and intensity sums, bounding box — so it can be
gathered band by band and each object's row written as soon as the object is finished, with the
same numbers ``measure`` gives on the whole image. Memory: one small record per object whose rows
are still arriving (the objects crossing the current band), never a full-size array.

An object is finished when a band arrives that it does not touch and it last appeared more than
:data:`FINISHED_AFTER_ROWS` rows above that band (labels brought back to the input grid by nearest
neighbour can leave an object a gap of a row or two; nuclei are never that tall a gap).

With cells (``expand=``: each band's cells from ``service.cell_bands``) an object also gathers its
cell's area and box and, per measured channel, the sums over its cytoplasm (the cell's pixels
outside every nucleus), as ``objects.measure`` with ``cells``; it stays open while its cell's rows
arrive, which reach up to the expansion distance beyond its nucleus's.

With background rings (``background_ring=``: each band's rings from ``service.cell_bands`` too) an
object gathers its ring's pixels in each measured channel — a median is no sum, so the pixels
themselves, a few hundred to a few thousand per object, until it is finished — and stays open while
its ring's rows arrive: each band showing its ring shows the object. The straight line from a ring
pixel to the nearest pixel of its nucleus runs through pixels nearer that nucleus than any other
(its ring, its cell, or the 2 px gap between), so its ring's rows follow on from the nucleus's
without a gap of more than those 2 px, well within :data:`FINISHED_AFTER_ROWS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from service.background import median_of
from service.intensity_sums import corrected_columns, finite_sums, intensity_columns
from service.measured_channels import (
    background_column,
    channel_columns,
    channel_corrected_columns,
    cytoplasm_columns,
    cytoplasm_corrected_columns,
)
from service.objects import INTENSITY_COLUMNS, ObjectRow, calibrate, ellipse

#: An object not seen for this many rows (and absent from a whole band) is finished.
FINISHED_AFTER_ROWS = 64


@dataclass
class _Sums:
    area: int = 0
    sum_x: int = 0  # coordinate sums and second moments: integers, so bands add up exactly
    sum_y: int = 0
    sum_xx: int = 0
    sum_yy: int = 0
    sum_xy: int = 0
    sum_p: float = 0.0
    x0: int = 1 << 62
    y0: int = 1 << 62
    x1: int = -1
    y1: int = -1  # last row seen + 1
    # The intensity's sum over finite pixels and their count: the segmented channel's, then each
    # measured channel's in key order.
    sum_i: list[float] = field(default_factory=list)
    finite_i: list[int] = field(default_factory=list)
    # The cell (with cells only): its box, its cytoplasm's area and each measured channel's sum
    # over the cytoplasm's finite pixels and their count, in key order.
    cx0: int = 1 << 62
    cy0: int = 1 << 62
    cx1: int = -1
    cy1: int = -1
    cyto_area: int = 0
    cyto_i: list[float] = field(default_factory=list)
    cyto_finite: list[int] = field(default_factory=list)
    # The background ring (with rings only): its pixels so far in each measured channel, in key order.
    ring_pixels: list[list[np.ndarray]] = field(default_factory=list)

    @property
    def top(self) -> int:
        """The object's first row seen (its cell's, which holds the nucleus, where there is one)."""
        return min(self.y0, self.cy0)

    @property
    def bottom(self) -> int:
        """One past the object's last row seen (nucleus or cell)."""
        return max(self.y1, self.cy1)


def _relative_ids(labels: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """``(base, n, rel)``: a band's ids as ``id - base + 1`` (0 elsewhere), ``n`` the bincount
    length they need; None for a band without objects. Ids in a band are a narrow range (they are
    given out in raster order): counted over ``rel`` with bincount (one pass, no sort), boxes from
    find_objects."""
    top = int(labels.max(initial=0))
    if top <= 0:
        return None
    base = int(labels[labels > 0].min())
    rel = labels.astype(np.int64) - (base - 1)
    rel[labels <= 0] = 0
    return base, top - base + 2, rel


def _add_channel_sums(
    totals: list[float], counts: list[int], per_channel: Sequence[tuple[np.ndarray, np.ndarray | None]],
    k: int, pixels: int,
) -> tuple[list[float], list[int]]:
    """``totals`` / ``counts`` (one per channel; empty before an object's first band) with object
    ``k``'s sums over its finite pixels in this band added (``finite_sums``' pairs; a None count:
    all ``pixels`` are finite)."""
    if not totals:
        totals, counts = [0.0] * len(per_channel), [0] * len(per_channel)
    for c, (sums, finite) in enumerate(per_channel):
        totals[c] += float(sums[k])
        counts[c] += pixels if finite is None else int(finite[k])
    return totals, counts


class ObjectStream:
    """Accumulates per-object sums over row bands; yields each object's row once it is finished.

    Feed bands top to bottom with :meth:`add`; :meth:`finish` returns the objects still open.
    Rows come out ordered by object id within each call. ``pixel_size_um``: ``(x, y)`` µm per
    pixel, to add the micrometre fields (as ``objects.measure``). ``channel_keys``: the channels
    measured besides (``measure=``; each band then brings their rows, in this order), whose
    columns ``measured_channels.channel_columns`` names. ``cell_distance``: the cells' expansion
    (``expand=``; each band then brings its cells), for the cell and cytoplasm columns.
    ``background``: each band brings each object's background ring (``background_ring=``), for the
    measured channels' background and corrected columns.
    """

    def __init__(
        self,
        pixel_size_um: tuple[float, float] | None = None,
        channel_keys: Sequence[str] = (),
        cell_distance: float | None = None,
        background: bool = False,
    ) -> None:
        self.pixel_size_um = pixel_size_um
        self.channel_keys = tuple(channel_keys)
        # A cell needs no wider margin than its nucleus: the straight line from a cell pixel to the
        # nearest pixel of its nucleus runs through the same cell (every point on it is nearer that
        # nucleus still), so a cell's rows follow on from its nucleus's without a gap.
        self.cells = cell_distance is not None
        self.background = background
        self._open: dict[int, _Sums] = {}
        self._next_row = 0
        self._width = 0
        self.finished = 0

    def add(
        self,
        y0: int,
        labels: np.ndarray,
        intensity: np.ndarray,
        probability: np.ndarray,
        channels: Sequence[np.ndarray] = (),
        cells: np.ndarray | None = None,
        rings: np.ndarray | None = None,
    ) -> list[ObjectRow]:
        """Take the band of rows ``y0 ..`` (``labels`` int, ``intensity`` grey, ``probability``
        float, all ``(h, W)``; ``channels``: the measured channels' rows, one per
        ``channel_keys``; ``cells``: the band's cells, with ``cell_distance``; ``rings``: its
        background rings, with ``background``); the rows of the objects this band shows to be
        finished."""
        if y0 != self._next_row:
            raise ValueError(
                f"bands must arrive in order without gaps: expected row {self._next_row}, got {y0}"
            )
        if not labels.shape == intensity.shape[:2] == probability.shape:
            raise ValueError(
                f"labels {labels.shape}, intensity {intensity.shape} and probability "
                f"{probability.shape} differ"
            )
        if len(channels) != len(self.channel_keys) or any(c.shape != labels.shape for c in channels):
            raise ValueError(
                f"the band brings {[c.shape for c in channels]} for the measured channels "
                f"{list(self.channel_keys)}; each must be {labels.shape}"
            )
        if self.cells != (cells is not None) or (cells is not None and cells.shape != labels.shape):
            raise ValueError(f"a stream {'with' if self.cells else 'without'} cells got cells "
                             f"{None if cells is None else cells.shape} for labels {labels.shape}")
        if self.background != (rings is not None) or (rings is not None and rings.shape != labels.shape):
            raise ValueError(f"a stream {'with' if self.background else 'without'} rings got rings "
                             f"{None if rings is None else rings.shape} for labels {labels.shape}")
        height, width = labels.shape
        self._next_row, self._width = y0 + height, width
        seen: set[int] = set()
        relative = _relative_ids(labels)
        if relative is not None:
            base, n, rel = relative
            flat = rel.ravel()
            where = np.flatnonzero(flat)  # nuclei cover a fraction of a slide: sum their pixels only
            ids = flat[where]
            rows, cols = np.divmod(where, width)
            area = np.bincount(ids, minlength=n)
            ys = rows + y0
            sum_x = np.bincount(ids, weights=cols, minlength=n)
            sum_y = np.bincount(ids, weights=ys, minlength=n)
            sum_xx = np.bincount(ids, weights=cols * cols, minlength=n)
            sum_yy = np.bincount(ids, weights=ys * ys, minlength=n)
            sum_xy = np.bincount(ids, weights=cols * ys, minlength=n)
            sum_p = np.bincount(ids, weights=probability.ravel()[where].astype(np.float64), minlength=n)
            sum_i = [finite_sums(ids, values.ravel()[where], n) for values in (intensity, *channels)]
            boxes = ndimage.find_objects(rel)
            for k in np.flatnonzero(area[1:]) + 1:
                object_id = int(k) + base - 1
                box_y, box_x = boxes[k - 1]
                sums = self._open.setdefault(object_id, _Sums())
                sums.area += int(area[k])
                sums.sum_x += int(sum_x[k])
                sums.sum_y += int(sum_y[k])
                sums.sum_xx += int(sum_xx[k])
                sums.sum_yy += int(sum_yy[k])
                sums.sum_xy += int(sum_xy[k])
                sums.sum_p += float(sum_p[k])
                sums.sum_i, sums.finite_i = _add_channel_sums(sums.sum_i, sums.finite_i, sum_i, k,
                                                              int(area[k]))
                sums.x0 = min(sums.x0, box_x.start)
                sums.x1 = max(sums.x1, box_x.stop)
                sums.y0 = min(sums.y0, y0 + box_y.start)
                sums.y1 = max(sums.y1, y0 + box_y.stop)
                seen.add(object_id)
        if cells is not None:
            seen |= self._add_cells(y0, labels, cells, channels)
        if rings is not None:
            seen |= self._add_rings(y0, rings, channels)
        done = [
            object_id for object_id, sums in self._open.items()
            if object_id not in seen and sums.bottom <= y0 - FINISHED_AFTER_ROWS
        ]
        return list(self._rows(sorted(done)))

    def _add_cells(
        self, y0: int, labels: np.ndarray, cells: np.ndarray, channels: Sequence[np.ndarray]
    ) -> set[int]:
        """Add the band's cells to their objects' sums; the ids it shows."""
        relative = _relative_ids(cells)
        if relative is None:
            return set()
        base, n, rel = relative
        # the cytoplasm: a cell's pixels outside every nucleus
        cyto = np.where(labels.ravel() > 0, 0, rel.ravel())
        where = np.flatnonzero(cyto)
        ids = cyto[where]
        cyto_area = np.bincount(ids, minlength=n)
        cyto_i = [finite_sums(ids, values.ravel()[where], n) for values in channels]
        shown = set()
        for k, object_id, (box_y, box_x), sums in self._shown(rel, base):
            sums.cx0, sums.cx1 = min(sums.cx0, box_x.start), max(sums.cx1, box_x.stop)
            sums.cy0, sums.cy1 = min(sums.cy0, y0 + box_y.start), max(sums.cy1, y0 + box_y.stop)
            sums.cyto_area += int(cyto_area[k])
            sums.cyto_i, sums.cyto_finite = _add_channel_sums(sums.cyto_i, sums.cyto_finite, cyto_i, k,
                                                              int(cyto_area[k]))
            shown.add(object_id)
        return shown

    def _shown(self, rel: np.ndarray, base: int) -> Iterator[tuple[int, int, tuple[slice, slice], _Sums]]:
        """Each object a band's relative ids (``_relative_ids``) show: its index there, its id, its
        box in the band and its sums (opened here if it is new)."""
        for k, box in enumerate(ndimage.find_objects(rel), start=1):
            if box is not None:
                object_id = k + base - 1
                yield k, object_id, box, self._open.setdefault(object_id, _Sums())

    def _add_rings(self, y0: int, rings: np.ndarray, channels: Sequence[np.ndarray]) -> set[int]:
        """Keep the band's ring pixels of each measured channel with their objects; the ids it shows."""
        relative = _relative_ids(rings)
        if relative is None:
            return set()
        base, n, rel = relative
        flat = rel.ravel()
        where = np.flatnonzero(flat)
        order = np.argsort(flat[where], kind="stable")
        where = where[order]  # grouped by object
        counts = np.bincount(flat[where], minlength=n)
        ends = np.cumsum(counts)
        pieces = [values.ravel()[where] for values in channels]
        shown = set()
        for k, object_id, _, sums in self._shown(rel, base):
            start = ends[k] - counts[k]
            if not sums.ring_pixels:
                sums.ring_pixels = [[] for _ in channels]
            for kept, values in zip(sums.ring_pixels, pieces, strict=True):
                kept.append(values[start : ends[k]])
            shown.add(object_id)
        return shown

    @property
    def first_open_row(self) -> int:
        """The top row of the highest object still open, its cell's with cells (the next row when
        none is): no row above it belongs to an object not yet handed out."""
        return min((sums.top for sums in self._open.values()), default=self._next_row)

    def finish(self) -> list[ObjectRow]:
        """The rows of every object still open (the image has no more rows)."""
        return list(self._rows(sorted(self._open), last=True))

    def _extra_values(self, sums: _Sums) -> tuple[tuple[str, float | None], ...]:
        """The cell's columns and the measured channels', in ``measured_channels.extra_columns``'
        order."""
        values: list[tuple[str, float | None]] = []
        if self.cells:
            cell_area = sums.area + sums.cyto_area
            values += [("cell_area", cell_area), ("cytoplasm_area", sums.cyto_area)]
            if self.pixel_size_um is not None:
                px, py = self.pixel_size_um
                values.append(("cell_area_um2", round(cell_area * px * py, 6)))
        for c, key in enumerate(self.channel_keys):
            values += intensity_columns(channel_columns(key), sums.sum_i[c + 1], sums.finite_i[c + 1])
            if self.cells:
                total, finite = (sums.cyto_i[c], sums.cyto_finite[c]) if sums.cyto_i else (0.0, 0)
                values += intensity_columns(cytoplasm_columns(key), total, finite)
            if self.background:
                ring = median_of(np.concatenate(sums.ring_pixels[c])) if sums.ring_pixels else math.nan
                values.append((background_column(key), round(ring, 4) if math.isfinite(ring) else None))
                values += corrected_columns(channel_corrected_columns(key), sums.sum_i[c + 1],
                                            sums.finite_i[c + 1], ring)
                if self.cells:
                    values += corrected_columns(cytoplasm_corrected_columns(key), total, finite, ring)
        return tuple(values)

    def _rows(self, ids: list[int], last: bool = False) -> Iterator[ObjectRow]:
        """The rows of objects ``ids``; ``last``: the image has no more rows, so an object reaching
        the last one touches its bottom edge (one finished before cannot: rows came below it)."""
        for object_id in ids:
            sums = self._open.pop(object_id)
            n = float(sums.area)
            row = ObjectRow(
                id=object_id,
                centroid_x=round(sums.sum_x / n, 2),
                centroid_y=round(sums.sum_y / n, 2),
                area=sums.area,
                bbox_x=sums.x0,
                bbox_y=sums.y0,
                bbox_width=sums.x1 - sums.x0,
                bbox_height=sums.y1 - sums.y0,
                **dict(intensity_columns(INTENSITY_COLUMNS, sums.sum_i[0], sums.finite_i[0])),
                mean_confidence=round(sums.sum_p / n, 4),
                **ellipse(sums.area, sums.sum_x, sums.sum_y, sums.sum_xx, sums.sum_yy, sums.sum_xy),
                touches_border=int(sums.x0 == 0 or sums.y0 == 0 or sums.x1 == self._width
                                   or (last and sums.y1 == self._next_row)),
                extra_values=self._extra_values(sums),
                cell_box=((sums.cx0, sums.cy0, sums.cx1 - sums.cx0, sums.cy1 - sums.cy0)
                          if self.cells else None),
            )
            self.finished += 1
            yield row if self.pixel_size_um is None else calibrate(row, self.pixel_size_um)
