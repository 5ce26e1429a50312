"""The objects table streamed to a CSV file as a slide's bands finalise their objects.

A slide of a million nuclei is not measured at once: the windowed pipeline (issue 16) finalises
the objects of each band once no later band can touch them, and hands their rows here. The file
has exactly the columns and formatting of ``POST /segment?output=objects`` as CSV
(:func:`service.objects.rows_to_csv`), so a streamed table and an in-memory one are the same
bytes for the same rows; rows appear in the order given (the pipeline's, by band).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from service.objects import ObjectRow, row_dicts, table_fields


class ObjectTableWriter:
    """Appends :class:`~service.objects.ObjectRow` rows to a CSV file, header first.

    ``calibrated``: write the micrometre columns (the rows must carry them: ``objects.measure``
    with a pixel size, or ``objects.calibrate``); ``channel_keys``: the measured channels' columns
    (the rows carry their values); ``cells``: the cell and cytoplasm columns (``expand=``);
    ``background``: the measured channels' background and corrected columns (``background_ring=``). Each
    :meth:`write` is flushed, so a reader (or a job's progress) sees every finalised band, and a
    crash loses no written row.
    """

    def __init__(
        self,
        path: str | Path,
        calibrated: bool = False,
        channel_keys: Sequence[str] = (),
        cells: bool = False,
        background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.calibrated = calibrated
        self.channel_keys = tuple(channel_keys)
        self.cells = cells
        self.background = background
        self.rows_written = 0
        self._file: TextIO = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        fields = table_fields(calibrated, self.channel_keys, cells, background)
        self._writer = csv.DictWriter(self._file, fieldnames=fields, lineterminator="\n")
        self._writer.writeheader()
        self._file.flush()

    def write(self, rows: Iterable[ObjectRow]) -> int:
        """Append ``rows``; returns how many."""
        batch = list(rows)
        if self.calibrated and any(row.area_um2 is None for row in batch):
            raise ValueError("a calibrated table needs rows with their micrometre fields (objects.calibrate)")
        rows = row_dicts(batch, self.calibrated, self.channel_keys, self.cells, self.background)
        self._writer.writerows(rows)
        self._file.flush()
        self.rows_written += len(batch)
        return len(batch)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ObjectTableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
