"""Object measurements for an image that arrives as row bands (slides: never whole in memory).

``objects.measure`` needs the whole label image. Every measurement it reports is a sum or an
extreme over an object's pixels — area, coordinate and intensity sums, bounding box — so it can be
gathered band by band and each object's row written as soon as the object is finished, with the
same numbers ``measure`` gives on the whole image. Memory: one small record per object whose rows
are still arriving (the objects crossing the current band), never a full-size array.

An object is finished when a band arrives that it does not touch and it last appeared more than
:data:`FINISHED_AFTER_ROWS` rows above that band (labels brought back to the input grid by nearest
neighbour can leave an object a gap of a row or two; nuclei are never that tall a gap).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from service.intensity_sums import finite_sums, intensity_columns
from service.measured_channels import channel_columns
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


class ObjectStream:
    """Accumulates per-object sums over row bands; yields each object's row once it is finished.

    Feed bands top to bottom with :meth:`add`; :meth:`finish` returns the objects still open.
    Rows come out ordered by object id within each call. ``pixel_size_um``: ``(x, y)`` µm per
    pixel, to add the micrometre fields (as ``objects.measure``). ``channel_keys``: the channels
    measured besides (``measure=``; each band then brings their rows, in this order), whose
    columns ``measured_channels.channel_columns`` names.
    """

    def __init__(
        self, pixel_size_um: tuple[float, float] | None = None, channel_keys: Sequence[str] = ()
    ) -> None:
        self.pixel_size_um = pixel_size_um
        self.channel_keys = tuple(channel_keys)
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
    ) -> list[ObjectRow]:
        """Take the band of rows ``y0 ..`` (``labels`` int, ``intensity`` grey, ``probability``
        float, all ``(h, W)``; ``channels``: the measured channels' rows, one per
        ``channel_keys``); the rows of the objects this band shows to be finished."""
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
        height, width = labels.shape
        self._next_row, self._width = y0 + height, width
        seen: set[int] = set()
        top = int(labels.max(initial=0))
        if top > 0:
            # Ids in a band are a narrow range (they are given out in raster order): count over
            # ``id - base`` with bincount (one pass, no sort) and take the boxes from find_objects.
            base = int(labels[labels > 0].min())
            rel = labels.astype(np.int64) - (base - 1)
            rel[labels <= 0] = 0
            flat = rel.ravel()
            where = np.flatnonzero(flat)  # nuclei cover a fraction of a slide: sum their pixels only
            ids = flat[where]
            rows, cols = np.divmod(where, width)
            n = top - base + 2
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
                if not sums.sum_i:
                    sums.sum_i, sums.finite_i = [0.0] * len(sum_i), [0] * len(sum_i)
                for c, (totals, finite) in enumerate(sum_i):
                    sums.sum_i[c] += float(totals[k])
                    sums.finite_i[c] += int(area[k] if finite is None else finite[k])
                sums.x0 = min(sums.x0, box_x.start)
                sums.x1 = max(sums.x1, box_x.stop)
                sums.y0 = min(sums.y0, y0 + box_y.start)
                sums.y1 = max(sums.y1, y0 + box_y.stop)
                seen.add(object_id)
        done = [
            object_id for object_id, sums in self._open.items()
            if object_id not in seen and sums.y1 <= y0 - FINISHED_AFTER_ROWS
        ]
        return list(self._rows(sorted(done)))

    @property
    def first_open_row(self) -> int:
        """The top row of the highest object still open (the next row when none is): no row
        above it belongs to an object not yet handed out."""
        return min((sums.y0 for sums in self._open.values()), default=self._next_row)

    def finish(self) -> list[ObjectRow]:
        """The rows of every object still open (the image has no more rows)."""
        return list(self._rows(sorted(self._open), last=True))

    def _channel_values(self, sums: _Sums) -> tuple[tuple[str, float | None], ...]:
        values: list[tuple[str, float | None]] = []
        for key, total, finite in zip(self.channel_keys, sums.sum_i[1:], sums.finite_i[1:], strict=True):
            values += intensity_columns(channel_columns(key), total, finite)
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
                extra_values=self._channel_values(sums),
            )
            self.finished += 1
            yield row if self.pixel_size_um is None else calibrate(row, self.pixel_size_um)
