"""A z-stack's 3-D nuclei written to a folder as its slices are segmented: a stack job's result.

:class:`StackFiles` links each slice as it comes (``zstack.Linker``) and keeps the stitched
slice in a scratch file beside the results, so the stack is never held in memory. Once the last
slice is in, :meth:`StackFiles.finish` writes

- ``labels3d.tif``: the labels as an ImageJ ZYX hyperstack (uint16, or float32 past 65,535
  nuclei; calibrated when the pixel size is known), what Fiji and napari open as a 3-D label
  image; the pixel type depends on the count, known only at the end, hence the scratch file;
- ``objects3d.csv``: one row per nucleus (``zstack.StackTable.rows``),
- with cells (``expand=PX``) ``cells3d.tif``: each nucleus's cell grown in 3-D (``service.cells3d``),
  the same hyperstack layout and ids, and the cell and cytoplasm columns in the table; the
  measured channels' slices then wait on disk too, for the cytoplasm's intensities,

the same files ``unet-segment --stitch-z`` writes beside a stack's slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import cells3d, zstack

LABELS_NAME = "labels3d.tif"
TABLE_NAME = "objects3d.csv"
CELLS_NAME = "cells3d.tif"
RESULT_FILES = (LABELS_NAME, TABLE_NAME, CELLS_NAME)
#: The stitched slices until the count is known: 4 bytes per voxel, deleted by ``finish``.
_SCRATCH_NAME = ".labels3d.scratch.npy"
#: With cells, each measured channel's slices until the cytoplasm is known (their own pixel type).
_CHANNEL_SCRATCH = ".channel{}.scratch.npy"
#: With cells, the cells grown block by block until they are counted and written: 4 bytes per voxel.
_CELLS_SCRATCH = ".cells3d.scratch.npy"


@dataclass(frozen=True)
class StackSummary:
    depth: int
    height: int
    width: int
    objects: int
    reaching_ends: int  # nuclei that touch the first or last slice: perhaps cut by the stack's ends


class StackFiles:
    """Slices in, top to bottom (:meth:`add`), the files out (:meth:`finish`).

    Memory: the slice before (the linker's) and a few numbers per nucleus; the rest is on disk.
    With cells (``expand``), :meth:`finish` grows them block by block into a scratch file
    (``cells3d.grow_cells``: its ``cells3d.WORKING_BYTES``, 200 MB, whatever the stack's size).
    """

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, int, int],
        min_iou: float = zstack.DEFAULT_MIN_IOU,
        channel_keys: Sequence[str] = (),
        expand: float | None = None,
    ):
        self.folder = Path(folder)
        self.shape = shape
        self.expand = expand
        self._linker = zstack.Linker(min_iou, channel_keys)
        self._scratch: np.memmap | None = np.lib.format.open_memmap(
            self.folder / _SCRATCH_NAME, mode="w+", dtype=np.int32, shape=shape
        )
        self._channels: list[np.memmap] = []  # with cells: the measured channels' slices
        self._added = 0

    def add(
        self, labels: np.ndarray, image: np.ndarray | None = None, channels: Sequence[np.ndarray] = ()
    ) -> None:
        """The next slice's 2-D labels as segmented, its grey pixels (for intensities) and the
        measured channels' pixels (one per ``channel_keys``)."""
        if self._scratch is None or self._added >= self.shape[0]:
            raise ValueError(f"the stack has {self.shape[0]} slices; a slice more was added")
        if labels.shape != self.shape[1:]:
            raise ValueError(f"slice z={self._added} is {labels.shape}; the stack's are {self.shape[1:]}")
        self._scratch[self._added] = self._linker.add(labels, image, channels)[1]
        if self.expand is not None:
            if not self._channels:  # their pixel type is known with the first slice
                self._channels = [
                    np.lib.format.open_memmap(self.folder / _CHANNEL_SCRATCH.format(k), mode="w+",
                                              dtype=c.dtype, shape=self.shape)
                    for k, c in enumerate(channels)
                ]
            for scratch, pixels in zip(self._channels, channels, strict=True):
                scratch[self._added] = pixels
        self._added += 1

    def finish(
        self, voxel: zstack.VoxelSize | None, should_stop: Callable[[], bool] = lambda: False
    ) -> StackSummary:
        """Write ``labels3d.tif`` and ``objects3d.csv`` (and ``cells3d.tif``) and delete the
        scratch files. Every slice must have been added; ``should_stop`` is asked between the
        cells' blocks (``segment.Cancelled``). The files are written in place: nobody reads them
        before the job that writes them has succeeded (its ``/files`` answer 409 until then), and a
        failed job removes them (:meth:`discard`), as a slide job removes its store."""
        scratch = self._scratch
        if scratch is None or self._added != self.shape[0]:
            raise ValueError(f"{self._added} of the stack's {self.shape[0]} slices were added")
        count = self._linker.count
        labels_path = str(self.folder / LABELS_NAME)
        zstack.write_labels_tiff(labels_path, lambda: iter(scratch), self.shape, count, voxel)
        rows = self._linker.table.rows(voxel)
        if self.expand is not None:
            # The cells go to disk block by block (only the block growing is in memory), then are
            # counted and written slice by slice.
            cells = np.lib.format.open_memmap(self.folder / _CELLS_SCRATCH, mode="w+", dtype=np.int32,
                                              shape=self.shape)

            def nuclei(z0: int, z1: int) -> np.ndarray:
                return scratch[z0:z1]

            channels, keys = self._channels, self._linker.table.channel_keys
            sums = cells3d.grow_and_measure(nuclei, cells, self.expand, voxel, keys,
                                            lambda z: [c[z] for c in channels], should_stop)
            cells_path = str(self.folder / CELLS_NAME)
            zstack.write_labels_tiff(cells_path, lambda: iter(cells), self.shape, count, voxel)
            sums.extend(rows, voxel)
            del cells
        (self.folder / TABLE_NAME).write_text(zstack.rows_to_csv(rows), encoding="utf-8")
        self._drop_scratch()
        depth, height, width = self.shape
        ends = sum(int(row["touches_stack_end"]) for row in rows)
        return StackSummary(depth, height, width, count, ends)

    def discard(self) -> None:
        """Remove whatever was written: a stopped or failed stack leaves no partial file."""
        self._drop_scratch()
        for name in RESULT_FILES:
            (self.folder / name).unlink(missing_ok=True)

    def _drop_scratch(self) -> None:
        self._scratch = None  # the mapping closes with its last reference (unlinked files stay mapped)
        (self.folder / _SCRATCH_NAME).unlink(missing_ok=True)
        (self.folder / _CELLS_SCRATCH).unlink(missing_ok=True)
        for k in range(len(self._channels)):
            (self.folder / _CHANNEL_SCRATCH.format(k)).unlink(missing_ok=True)
        self._channels = []
