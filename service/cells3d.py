"""Cells around a z-stack's 3-D nuclei (``expand=`` on a stack): each nucleus grown in 3-D.

``objects.expand_cells`` grows 2-D nuclei into cells, as QuPath's cell expansion does; a stack's
nuclei are 3-D, and a nucleus's cytoplasm lies above and below it as well as around it, so the
cells are grown in 3-D: a voxel goes to its nearest nucleus within ``distance`` (in x pixels),
distances measured in the voxel's true proportions (``spacing``: the z-step and the pixel height
in units of the pixel width; scikit-image's ``expand_labels`` with ``spacing=``). A stack whose
file gives no z-step is grown as if its voxels were cubes, and the caller says so.

Growing never needs the whole stack in memory: whatever decides a voxel's cell lies within
``distance`` of it, so slabs of slices are grown with the labels ``floor(distance / z-step)``
slices above and below them, and each slab in blocks of rows and columns with the same margins,
sized (:func:`plan`) so that the distance transform's temporaries (~50 bytes a voxel) stay within
:data:`WORKING_BYTES`; the cells go into an array the caller gives (a stack job's is a memory map
on disk). The cells are those of the whole stack at once (tested against it). A distance that
reaches so many slices and pixels that every block would be mostly margin is refused
(:func:`check_cells`) rather than grown for hours.

:class:`CellSums` counts each cell's voxels and, per measured channel, its cytoplasm's intensity
(the cell less every nucleus), slice by slice, for the columns of the 3-D table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.segmentation import expand_labels

from service.intensity_sums import finite_sums, intensity_columns
from service.measured_channels import admitted_for_bytes, cytoplasm_columns
from service.segment import Cancelled
from service.zstack import VoxelSize

#: Bytes growing the cells holds at once, whatever the stack's size: one block's distance transform.
WORKING_BYTES = 200_000_000
#: Bytes per voxel of a block while it grows, margins included: ``expand_labels`` with ``spacing``
#: peaks at 49 (its distances, nearest-voxel indices and their copies, and the block's cells;
#: measured with ``tracemalloc``, scikit-image 0.26).
BYTES_PER_WORKING_VOXEL = 50
#: A block's rows and columns are never cut below this (tiny blocks would be all margin).
MIN_BLOCK_SIDE = 32
#: Each voxel grown more than this many times over (the margins' share of every block), the
#: cells are refused rather than grown for hours (:func:`check_cells`).
MAX_REGROWN = 16

#: Pixels of a slice counted at once into the cells' sums (:func:`grow_and_measure`): ~25 MB.
SUM_BAND_PIXELS = 1_000_000

#: The columns every row gains: the cell's voxels and its cytoplasm's (the cell less its nucleus).
CELL_COLUMNS = ("cell_volume_voxels", "cytoplasm_volume_voxels")


def spacing_of(voxel: VoxelSize | None) -> tuple[float, float, float]:
    """``(z, y, x)`` voxel proportions in units of the pixel width: what the cells are grown in.
    Without a pixel size, or a z-step, the voxels count as cubes (:func:`unknown_z_step_notice`)."""
    if voxel is None or voxel.z_um is None:
        return (1.0, 1.0, 1.0)
    return (voxel.z_um / voxel.x_um, voxel.y_um / voxel.x_um, 1.0)


def unknown_z_step_notice(voxel: VoxelSize | None, distance: float) -> str | None:
    """What the user is told where the cells were grown in cubic voxels for want of a z-step."""
    if voxel is not None and voxel.z_um is not None:
        return None
    return (f"the file gives no z-step, so the cells were grown {distance:g} px in z as in x and y, as "
            "if the voxels were cubes: a confocal z-step is often several pixel widths, which makes "
            "the cells reach further in z than they should")


def margins(distance: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Slices, rows and columns within ``distance`` of a voxel: where its nearest nucleus may be."""
    return tuple(math.floor(distance / s) for s in spacing)  # type: ignore[return-value]


def grow_cells(
    read: Callable[[int, int], np.ndarray],
    out: np.ndarray,
    distance: float,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    working_bytes: int = WORKING_BYTES,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Write each voxel's cell into ``out``: the id of the nucleus it goes to (0: no cell).

    Args:
        read: ``read(z0, z1)`` gives the stack's labels of slices ``[z0, z1)``, ``(z1 - z0, H, W)``
            int (a memory map's slice will do); called once per slab.
        out: ``(depth, H, W)`` int32, the stack's shape (a memory map keeps the cells on disk:
            only the block being grown is in memory).
        distance: how far (in x pixels) a nucleus grows into the background, > 0.
        spacing: ``(z, y, x)`` voxel proportions (:func:`spacing_of`).
        working_bytes: what the growing may hold at once (:func:`plan`).
        should_stop: asked before each block; True raises ``segment.Cancelled``.
    """
    if not distance > 0:
        raise ValueError(f"distance must be positive, got {distance}")
    if any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    depth, height, width = shape = out.shape
    chosen = plan(shape, distance, spacing, working_bytes)
    (mz, my, mx), rows, cols, slab = chosen.margins, chosen.rows, chosen.cols, chosen.slices
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        lo, hi = max(0, z0 - mz), min(depth, z1 + mz)
        labels = read(lo, hi)
        if labels.shape != (hi - lo, height, width):
            raise ValueError(f"read({lo}, {hi}) gave {labels.shape}; expected {(hi - lo, height, width)}")
        for y0 in range(0, height, rows):
            y1 = min(height, y0 + rows)
            top, bottom = max(0, y0 - my), min(height, y1 + my)
            for x0 in range(0, width, cols):
                if should_stop():
                    raise Cancelled(f"stopped while growing the cells, at slice {z0} of {depth}")
                x1 = min(width, x0 + cols)
                left, right = max(0, x0 - mx), min(width, x1 + mx)
                block = np.asarray(labels[:, top:bottom, left:right])
                grown = expand_labels(block, distance=distance, spacing=spacing)
                core = grown[z0 - lo : z1 - lo, y0 - top : y1 - top, x0 - left : x1 - left]
                out[z0:z1, y0:y1, x0:x1] = core


@dataclass(frozen=True)
class GrowPlan:
    """How :func:`grow_cells` cuts a stack: slabs of ``slices`` slices, each grown in blocks of
    ``rows`` × ``cols`` pixels, with ``margins`` (slices, rows, columns) of labels around each."""


    shape: tuple[int, int, int]
    margins: tuple[int, int, int]
    rows: int
    cols: int
    slices: int

    @property
    def block_voxels(self) -> int:
        """Voxels of the largest block, margins included: what one ``expand_labels`` call grows."""
        (depth, height, width), (mz, my, mx) = self.shape, self.margins
        slab = min(depth, self.slices + 2 * mz)
        return slab * min(height, self.rows + 2 * my) * min(width, self.cols + 2 * mx)

    @property
    def held_bytes(self) -> int:
        """What the growing holds at once: the largest block's working set."""
        return BYTES_PER_WORKING_VOXEL * self.block_voxels

    @property
    def regrown(self) -> float:
        """How many times over each voxel is grown: a block's voxels with their margins, per voxel
        of its core (1: the stack at once)."""
        return self.block_voxels / (min(self.shape[0], self.slices) * self.rows * self.cols)


def plan(
    shape: tuple[int, int, int], distance: float, spacing: tuple[float, float, float],
    working_bytes: int = WORKING_BYTES,
) -> GrowPlan:
    """Of the ways to cut the stack whose blocks fit ``working_bytes``, the one that grows the
    fewest voxels more than once (:attr:`GrowPlan.regrown`): where the z margins are wide, a
    thick slab of smaller blocks wastes less than thin slabs of whole slices (each slab grows its
    margins' slices again). Never below :data:`MIN_BLOCK_SIDE` rows or columns, nor one slice: a
    budget too small for those (a ``distance`` of many z-steps) is exceeded rather than refused
    here, and :attr:`GrowPlan.held_bytes` says by how much (:func:`check_cells` refuses it)."""
    depth, height, width = shape
    mz, my, mx = margins(distance, spacing)
    best: GrowPlan | None = None
    for slices in range(1, depth + 1):
        thick = min(depth, slices + 2 * mz)
        rows, cols = _side(working_bytes // (BYTES_PER_WORKING_VOXEL * thick), height, width, my, mx)
        candidate = GrowPlan(shape, (mz, my, mx), rows, cols, slices)
        if candidate.held_bytes > working_bytes and best is not None:
            break  # thicker slabs only hold more
        if best is None or candidate.regrown < best.regrown:
            best = candidate
    assert best is not None
    return best


def _side(area: int, height: int, width: int, my: int, mx: int) -> tuple[int, int]:
    """Rows and columns of a block whose rows and columns with their margins cover at most
    ``area`` pixels: whole slices, else whole rows of columns, else a square."""
    if height * width <= area:
        return height, width
    if width <= height and width * (MIN_BLOCK_SIDE + 2 * my) <= area:
        return min(height, area // width - 2 * my), width  # bands of whole rows
    if height < width and height * (MIN_BLOCK_SIDE + 2 * mx) <= area:
        return height, min(width, area // height - 2 * mx)
    side = max(MIN_BLOCK_SIDE, math.isqrt(area) - 2 * max(my, mx))
    return min(height, side), min(width, side)


class CellSums:
    """Per-cell sums over a stack, slice by slice: the cell's voxels, its cytoplasm's, and per
    measured channel (``channel_keys``) the cytoplasm's intensity. A few numbers per nucleus."""

    def __init__(self, channel_keys: Sequence[str] = ()) -> None:
        self.channel_keys = tuple(channel_keys)
        self._cell = np.zeros(0, np.int64)
        self._cytoplasm = np.zeros(0, np.int64)
        self._sums = [np.zeros(0, np.float64) for _ in self.channel_keys]
        self._finite = [np.zeros(0, np.int64) for _ in self.channel_keys]

    def add(self, nuclei: np.ndarray, cells: np.ndarray, channels: Sequence[np.ndarray] = ()) -> None:
        """One slice: its stitched nuclei, its cells (the same ids) and the measured channels'
        pixels (one per ``channel_keys``), all ``(H, W)``."""
        if cells.shape != nuclei.shape or len(channels) != len(self.channel_keys) or any(
            c.shape != nuclei.shape for c in channels
        ):
            raise ValueError(
                f"a slice's cells {cells.shape} and channels {[c.shape for c in channels]} (for "
                f"{list(self.channel_keys)}) must match its nuclei {nuclei.shape}"
            )
        top = int(cells.max(initial=0))
        if top == 0:
            return
        self._grow(top + 1)
        flat = cells.ravel()
        self._cell[: top + 1] += np.bincount(flat, minlength=top + 1)
        # A cell's cytoplasm: its voxels outside every nucleus (its own, and no other's).
        where = np.flatnonzero((nuclei.ravel() == 0) & (flat > 0))
        ids = flat[where]
        area = np.bincount(ids, minlength=top + 1)
        self._cytoplasm[: top + 1] += area
        for k, pixels in enumerate(channels):
            sums, finite = finite_sums(ids, np.asarray(pixels).ravel()[where], top + 1)
            self._sums[k][: top + 1] += sums
            self._finite[k][: top + 1] += area if finite is None else finite

    def _grow(self, size: int) -> None:
        if self._cell.size >= size:
            return
        def grown(values: np.ndarray) -> np.ndarray:
            out = np.zeros(max(size, 2 * values.size), values.dtype)
            out[: values.size] = values
            return out
        self._cell, self._cytoplasm = grown(self._cell), grown(self._cytoplasm)
        self._sums = [grown(s) for s in self._sums]
        self._finite = [grown(f) for f in self._finite]

    def extend(self, rows: Sequence[dict[str, float | int | None]], voxel: VoxelSize | None) -> None:
        """Add each nucleus's cell columns (:meth:`columns`) to its row of the 3-D table (by ``id``)."""
        per_voxel = voxel_um3(voxel)
        for row in rows:
            row.update(self.columns(int(row["id"]), per_voxel))  # type: ignore[arg-type]

    def columns(self, nucleus: int, voxel_um3: float | None = None) -> list[tuple[str, float | int | None]]:
        """The cell columns of the nucleus numbered ``nucleus``: :data:`CELL_COLUMNS`,
        ``cell_volume_um3`` with a voxel volume (µm³), then per measured channel its cytoplasm's
        mean and integrated intensity (the mean None without a cytoplasm voxel)."""
        cell = int(self._cell[nucleus]) if nucleus < self._cell.size else 0
        cytoplasm = int(self._cytoplasm[nucleus]) if nucleus < self._cytoplasm.size else 0
        values: list[tuple[str, float | int | None]] = [(CELL_COLUMNS[0], cell), (CELL_COLUMNS[1], cytoplasm)]
        if voxel_um3 is not None:
            values.append(("cell_volume_um3", round(cell * voxel_um3, 3)))
        for key, sums, finite in zip(self.channel_keys, self._sums, self._finite, strict=True):
            total = float(sums[nucleus]) if nucleus < sums.size else 0.0
            count = int(finite[nucleus]) if nucleus < finite.size else 0
            values += intensity_columns(cytoplasm_columns(key), total, count, 3)
        return values


class CellsTooFar(ValueError):
    """Cells that reach too far for this stack (:func:`check_cells`); the message says how far fits."""


def check_cells(shape: tuple[int, int, int], distance: float | None, voxel: VoxelSize | None) -> None:
    """Raise :class:`CellsTooFar` where growing cells ``distance`` px on a stack of ``shape`` would
    hold more than :data:`WORKING_BYTES` at once or grow each voxel more than :data:`MAX_REGROWN`
    times over: its blocks would be mostly margin (a distance of tens of z-steps)."""
    if distance is None:
        return
    spacing = spacing_of(voxel)

    def fits(d: float) -> bool:
        chosen = plan(shape, d, spacing)
        return chosen.held_bytes <= WORKING_BYTES and chosen.regrown <= MAX_REGROWN

    if fits(distance):
        return
    low, high = 0, math.ceil(distance) - 1  # the largest whole distance that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    fitting = f"at most expand={low} fits" if low >= 1 else "no expand fits"
    steps = "" if voxel is not None and voxel.z_um is not None else " (the file gives no z-step: cubes)"
    raise CellsTooFar(
        f"cells grown by {distance:g} px reach {margins(distance, spacing)[0]} slices up and down{steps} "
        f"on a stack of {shape[0]} × {shape[1]} × {shape[2]} voxels: their blocks would be mostly margin, "
        f"holding over {WORKING_BYTES // 10**6} MB at once or growing each voxel over {MAX_REGROWN} times; "
        f"{fitting} on this stack"
    )


def admitted_pixels(shape: tuple[int, int, int], distance: float, voxel: VoxelSize | None) -> int:
    """Pixels of admission's budget that growing a stack's cells holds while it runs."""
    return admitted_for_bytes(plan(shape, distance, spacing_of(voxel)).held_bytes)


def grow_and_measure(
    nuclei: Callable[[int, int], np.ndarray],
    out: np.ndarray,
    distance: float,
    voxel: VoxelSize | None,
    channel_keys: Sequence[str] = (),
    channels: Callable[[int], Sequence[np.ndarray]] = lambda z: (),
    should_stop: Callable[[], bool] = lambda: False,
) -> CellSums:
    """A stack's cells into ``out`` (:func:`grow_cells` of its stitched ``nuclei``, in the voxel's
    proportions), then counted slice by slice with the measured channels' pixels ``channels(z)``
    (one per ``channel_keys``): their sums, for :meth:`CellSums.extend`. What a stack job, the
    Python API and ``unet-segment --stitch-z`` all do. Each slice is counted in bands of rows of
    at most :data:`SUM_BAND_PIXELS` (the sums' temporaries, ~25 bytes a pixel, would be GBs on a
    slide-sized slice)."""
    grow_cells(nuclei, out, distance, spacing_of(voxel), should_stop=should_stop)
    sums = CellSums(channel_keys)
    depth, height, width = out.shape
    rows = max(1, SUM_BAND_PIXELS // width)
    for z in range(depth):
        slice_nuclei, slice_channels = nuclei(z, z + 1)[0], channels(z)
        for y0 in range(0, height, rows):
            band = slice(y0, min(height, y0 + rows))
            sums.add(np.asarray(slice_nuclei[band]), np.asarray(out[z, band]),
                     [np.asarray(c[band]) for c in slice_channels])
    return sums


def voxel_um3(voxel: VoxelSize | None) -> float | None:
    """A voxel's volume in µm³ where the pixel size and the z-step are known."""
    if voxel is None or voxel.z_um is None:
        return None
    return voxel.x_um * voxel.y_um * voxel.z_um
