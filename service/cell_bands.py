"""Cells and background rings around nuclei for a label image that arrives as row bands (slides:
never whole in memory).

``objects.expand_cells`` grows each nucleus by up to ``distance`` px into the background on the
whole label image (a pixel goes to its nearest nucleus within that distance), and
``background.ring_labels`` gives each nucleus the background pixels at a band of distances beyond
(``background_ring=``). Whatever decides a pixel's cell or ring lies within the farthest of those
distances (the reach) of it, so a band's cells and rings are exact once the labels that many rows
above and below it are known: :class:`CellBands` holds each band back until then, and grows them in
blocks of columns with the same margin at each side (the distance transform's temporaries, ~28
bytes a pixel, then stay a few tens of MB whatever the slide's width).

What it holds: the bands not yet handed on (``ceil(reach / band height) + 1`` of them, with
whatever the caller attached to each) and the labels of the ``reach`` rows above the oldest.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from service.background import RING_GAP_PX, ring_labels
from service.objects import expand_cells

#: Columns grown at once (plus the margin each side): bounds the distance transform's memory.
COLUMN_BLOCK = 2048

Payload = TypeVar("Payload")


@dataclass(frozen=True)
class CellBand(Generic[Payload]):
    """Rows ``[y0, y0 + h)``: their labels, their cells and background rings (``(h, W)`` int32, the
    nuclei's ids; None where not asked for) and what the caller gave with them."""

    y0: int
    labels: np.ndarray
    cells: np.ndarray | None
    payload: Payload
    rings: np.ndarray | None = None


class CellBands(Generic[Payload]):
    """Feed label bands top to bottom with :meth:`push`; each comes back with its cells (grown by
    ``distance``; None: no cells) and its background rings (``ring_width`` px wide beyond the cells,
    as ``background.ring_labels``; None: no rings) once the rows below it are known (:meth:`finish`
    hands on the rest at the image's end)."""

    def __init__(
        self, distance: float | None, column_block: int = COLUMN_BLOCK, ring_width: float | None = None
    ) -> None:
        if distance is None and ring_width is None:
            raise ValueError("neither cells nor rings asked for")
        for name, value in (("distance", distance), ("ring width", ring_width)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.distance = None if distance is None else float(distance)
        self.ring_width = None if ring_width is None else float(ring_width)
        reach = self.distance or 0.0
        if self.ring_width is not None:
            reach += RING_GAP_PX + self.ring_width
        # a nearest nucleus within the reach lies at most this many rows or columns away
        self.margin = math.floor(reach)
        self.column_block = max(1, int(column_block))
        self._pending: deque[tuple[int, np.ndarray, Payload]] = deque()
        self._above = np.zeros((0, 0), np.int32)  # labels of the rows just above the oldest pending
        self._next_row = 0

    @property
    def held_rows(self) -> int:
        """Label rows held now (the pending bands' and the margin above them)."""
        return self._above.shape[0] + sum(labels.shape[0] for _, labels, _ in self._pending)

    def push(self, y0: int, labels: np.ndarray, payload: Payload) -> Iterator[CellBand[Payload]]:
        """Take the band of rows ``y0 ..`` (``labels`` ``(h, W)`` int); yields the bands whose
        cells are now decided, in order."""
        if y0 != self._next_row:
            raise ValueError(f"bands must arrive in order without gaps: expected row {self._next_row}, "
                             f"got {y0}")
        if self._pending and labels.shape[1] != self._pending[0][1].shape[1]:
            raise ValueError(f"a band {labels.shape[1]} px wide after bands {self._pending[0][1].shape[1]} "
                             "px wide")
        self._next_row = y0 + labels.shape[0]
        self._pending.append((y0, labels, payload))
        while self._pending:
            first_y0, first, _ = self._pending[0]
            if self._next_row - (first_y0 + first.shape[0]) < self.margin:
                break  # the rows below the oldest band are not all here yet
            yield self._hand_on()

    def finish(self) -> Iterator[CellBand[Payload]]:
        """The bands still held, with their cells (the image has no more rows below them)."""
        while self._pending:
            yield self._hand_on()

    def _hand_on(self) -> CellBand[Payload]:
        y0, labels, payload = self._pending.popleft()
        height = labels.shape[0]
        above = [self._above] if self._above.shape[0] else []
        below, need = [], self.margin
        for _, rows, _ in self._pending:
            if need <= 0:
                break
            below.append(rows[:need])
            need -= below[-1].shape[0]
        block = np.concatenate([*above, labels, *below]) if above or below else labels
        top = self._above.shape[0]
        cells, rings = (None if grown is None else grown[top : top + height] for grown in self._grow(block))
        kept = np.concatenate([*above, labels]) if above else labels
        self._above = kept[kept.shape[0] - min(self.margin, kept.shape[0]) :]
        return CellBand(y0, labels, cells, payload, rings)

    def _grow(self, block: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The cells (``expand_cells``) and rings (``ring_labels``) of ``block``, computed
        ``column_block`` columns at a time with the margin's columns each side (the same as the
        whole block at once)."""
        width = block.shape[1]
        if width <= self.column_block + 2 * self.margin:
            return self._grow_all(block)
        out = tuple(None if wanted is None else np.empty(block.shape, np.int32)
                    for wanted in (self.distance, self.ring_width))
        for x0 in range(0, width, self.column_block):
            x1 = min(width, x0 + self.column_block)
            left, right = max(0, x0 - self.margin), min(width, x1 + self.margin)
            for whole, grown in zip(out, self._grow_all(block[:, left:right]), strict=True):
                if whole is not None:
                    whole[:, x0:x1] = grown[:, x0 - left : x1 - left]
        return out

    def _grow_all(self, block: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        cells = None if self.distance is None else expand_cells(block, self.distance)
        rings = None if self.ring_width is None else ring_labels(block, self.ring_width, self.distance or 0.0)
        return cells, rings
