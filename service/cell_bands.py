"""Cells around nuclei for a label image that arrives as row bands (slides: never whole in memory).

``objects.expand_cells`` grows each nucleus by up to ``distance`` px into the background on the
whole label image (a pixel goes to its nearest nucleus within that distance). Whatever decides a
pixel's cell lies within ``distance`` of it, so a band's cells are exact once the labels
``distance`` rows above and below it are known: :class:`CellBands` holds each band back until
then, and grows its cells in blocks of columns with the same margin at each side (the distance
transform's temporaries, ~28 bytes a pixel, then stay a few tens of MB whatever the slide's width).

What it holds: the bands not yet handed on (``ceil(distance / band height) + 1`` of them, with
whatever the caller attached to each) and the labels of the ``distance`` rows above the oldest.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from service.objects import expand_cells

#: Columns grown at once (plus the margin each side): bounds the distance transform's memory.
COLUMN_BLOCK = 2048

Payload = TypeVar("Payload")


@dataclass(frozen=True)
class CellBand(Generic[Payload]):
    """Rows ``[y0, y0 + h)``: their labels, their cells (``(h, W)`` int32, the nuclei's ids) and
    what the caller gave with them."""

    y0: int
    labels: np.ndarray
    cells: np.ndarray
    payload: Payload


class CellBands(Generic[Payload]):
    """Feed label bands top to bottom with :meth:`push`; each comes back with its cells once the
    rows below it are known (:meth:`finish` hands on the rest at the image's end)."""

    def __init__(self, distance: float, column_block: int = COLUMN_BLOCK) -> None:
        if not distance > 0:
            raise ValueError(f"distance must be positive, got {distance}")
        self.distance = float(distance)
        # a nearest nucleus within the distance lies at most this many rows or columns away
        self.margin = math.floor(self.distance)
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
        cells = self._grow(block)[top : top + height]
        kept = np.concatenate([*above, labels]) if above else labels
        self._above = kept[kept.shape[0] - min(self.margin, kept.shape[0]) :]
        return CellBand(y0, labels, cells, payload)

    def _grow(self, block: np.ndarray) -> np.ndarray:
        """``expand_cells`` of ``block``, computed ``column_block`` columns at a time with the
        margin's columns each side (the same cells as the whole block at once)."""
        width = block.shape[1]
        if width <= self.column_block + 2 * self.margin:
            return expand_cells(block, self.distance)
        cells = np.empty(block.shape, np.int32)
        for x0 in range(0, width, self.column_block):
            x1 = min(width, x0 + self.column_block)
            left, right = max(0, x0 - self.margin), min(width, x1 + self.margin)
            grown = expand_cells(block[:, left:right], self.distance)
            cells[:, x0:x1] = grown[:, x0 - left : x1 - left]
        return cells
