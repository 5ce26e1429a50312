"""A slide's objects as one GeoJSON FeatureCollection, written object by object (issue 16).

``output=geojson`` builds the whole collection in memory from the whole label image
(``objects.to_geojson``); a slide has neither. Here each object's outline is traced as soon as the
objects table finishes it (``service.object_stream``), from the label rows still held
(:class:`LabelRows`: the rows from the top of the earliest object still open down to the last
band, a few bands of the slide's width), and its Feature — the same one ``to_geojson`` writes,
what QuPath imports as a detection — goes straight to the file (:class:`GeoJsonWriter`). With
cells (``expand=``) each Feature is the QuPath cell ``to_geojson`` writes with cells: the cell's
outline from the cell rows held alike, the nucleus's as its ``nucleusGeometry``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from service import objects
from service.objects import ObjectRow


class LabelRows:
    """The label rows an object's outline may still need, held as one ``(h, W)`` block."""

    def __init__(self) -> None:
        self.top = 0  # image row of the block's first row
        self._rows: np.ndarray | None = None

    @property
    def held(self) -> int:
        return 0 if self._rows is None else int(self._rows.shape[0])

    def append(self, y0: int, labels: np.ndarray) -> None:
        """Add the band of rows ``[y0, y0 + h)``: the next rows, in order."""
        if self._rows is None:
            self.top, self._rows = y0, labels.copy()
            return
        expected = self.top + self._rows.shape[0]
        if y0 != expected:
            raise ValueError(f"rows must come in order: expected row {expected}, got {y0}")
        self._rows = np.concatenate([self._rows, labels])

    def drop_above(self, row: int) -> None:
        """Forget the rows above image row ``row`` (no object still to be outlined reaches them)."""
        if self._rows is None or row <= self.top:
            return
        keep = self._rows[row - self.top :]
        # a copy: the block must not keep the dropped rows' memory alive
        self._rows = keep.copy() if keep.shape[0] else None
        self.top = row if self._rows is not None else self.top

    def outline(self, row: ObjectRow) -> list[list[float]]:
        """The object's outer ring (``objects.outline``) from its bounding box's rows."""
        return self.outline_in(row.id, (row.bbox_x, row.bbox_y, row.bbox_width, row.bbox_height))

    def outline_in(self, object_id: int, box: tuple[int, int, int, int]) -> list[list[float]]:
        """The outer ring of the pixels ``object_id`` within ``box`` ``(x, y, width, height)``
        (an object's cell: its ``cell_box``, in rows of cells)."""
        x, y, width, height = box
        top = y - self.top
        if self._rows is None or top < 0 or top + height > self._rows.shape[0]:
            raise ValueError(f"object {object_id}'s rows are no longer held")
        crop = self._rows[top : top + height, x : x + width]
        return objects.outline(crop == object_id, y, x)


class GeoJsonWriter:
    """Writes a FeatureCollection feature by feature: ``{"type": ..., "features": [...],
    "properties": {...}}``, the collection's properties last (they are known at the end: the
    job's warnings). Valid JSON only once :meth:`close` ran; callers write it under its final name
    only then, or delete it."""

    def __init__(self, path: str | Path, classification: str = "Nucleus") -> None:
        self.path = Path(path)
        self.classification = classification
        self.count = 0
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write('{"type": "FeatureCollection", "features": [')

    def write(self, rows: Iterable[tuple[ObjectRow, list[list[float]]]]) -> None:
        """One detection per ``(row, outline)``, classified as the writer's ``classification``."""
        self._write(objects.feature(row, ring, self.classification) for row, ring in rows)

    def write_cells(self, rows: Iterable[tuple[ObjectRow, list[list[float]], list[list[float]]]]) -> None:
        """One QuPath cell per ``(row, cell outline, nucleus outline)``, as ``objects.to_geojson``
        with cells writes it."""
        self._write(objects.feature(row, cell, "Cell", nucleus_ring=nucleus) for row, cell, nucleus in rows)

    def _write(self, features: Iterable[dict]) -> None:
        assert self._file is not None, "the collection is closed"
        for feature in features:
            self._file.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature))
            self.count += 1

    def close(self, properties: Mapping[str, object] | None = None) -> None:
        if self._file is None:
            return
        tail = "\n]" if self.count else "]"
        if properties:
            tail += ', "properties": ' + json.dumps(dict(properties))
        self._file.write(tail + "}\n")
        self._file.close()
        self._file = None

    def abandon(self) -> None:
        """Close without finishing (a failed job): the partial file is the caller's to delete."""
        if self._file is not None:
            self._file.close()
            self._file = None
