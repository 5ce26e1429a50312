"""Overlap-tile inference geometry: plan, pad, cut, blend, stitch. Pure numpy, no I/O.

The U-Net paper's overlap-tile strategy, with MONAI-style explicit parameters:

1. :func:`plan_tiles` mirror-pads the image by ``margin`` on every side (so border
   pixels see mirrored context, as in the U-Net paper) and up to sizes the model accepts
   (multiples of ``divisor``), then places ``ny × nx`` equal tiles:

   - ``n = ceil(length / tile_size)`` tiles per axis (``tile_size >= length`` → one tile,
     i.e. a single whole-image pass). ``tile_size`` is thus the most *image* pixels a
     tile is responsible for; the window the model sees is about
     ``tile_size + overlap`` (more when the image does not divide evenly).
   - the tile edge is shrunk to the smallest multiple of ``divisor`` for which ``n``
     tiles cover the padded image with at least ``overlap`` pixels between neighbours
     (e.g. 2048² at tile_size 1024, margin 32, overlap 64 → 2×2 tiles of 1088²: 1.13×
     the pixels of the bare image, instead of 3×3 tiles of 1024² = 2.25×);
   - tile starts are multiples of ``divisor``, so every tile's pooling grid coincides
     with that of a single whole-image pass (a shifted grid alone changes a U-Net's
     output, even far from any edge).

2. :func:`blend_weights` gives each tile a separable weight map: 0 within ``margin``
   of an edge that faces another tile (there the output lacks context), a linear ramp
   across the rest of the overlap, 1 elsewhere — including edges on the padded border,
   where the mirrored context is the same as in a single pass. Ramps of neighbours are
   complementary (they sum to exactly 1 where the overlap is the planned minimum), so
   the total weight of every pixel is ≥ 1: no division by a near-zero sum (the
   instability MONAI avoids by clamping its Gaussian).

3. :class:`Stitcher` blends tile outputs, in raster order, into a full-size accumulator as
   a running weighted mean, ``mean += w / W * (x - mean)``, which is exact wherever the
   tiles agree: an identity model reproduces its input bit for bit. ``W``, the weight of
   the tiles so far, comes from per-axis sums (:meth:`TilePlan.total_weight_so_far`: the
   weights are separable and the tiles a grid), not from a second full-size buffer.

Memory: the padded input, one batch of tiles, and the ``(K, H, W)`` float32 accumulator;
tiles are cut lazily (:func:`iter_tile_batches`), never all at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis; ``starts`` are in padded coordinates.

    ``padded = pad_before + length + pad_after`` is a multiple of the divisor.
    """

    length: int
    tile: int
    starts: tuple[int, ...]
    pad_before: int
    pad_after: int

    @property
    def padded(self) -> int:
        return self.pad_before + self.length + self.pad_after


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go; every number is in pixels.

    Attributes:
        height, width: the image.
        tile_size, overlap, margin, divisor: the parameters as resolved (``overlap`` is
            the minimum overlap actually enforced: at least ``2 * margin``).
        rows, cols: per-axis plans (tile edge, tile starts in padded coordinates, padding).
    """

    height: int
    width: int
    tile_size: int
    overlap: int
    margin: int
    divisor: int
    rows: AxisPlan
    cols: AxisPlan

    @property
    def tile_h(self) -> int:
        return self.rows.tile

    @property
    def tile_w(self) -> int:
        return self.cols.tile

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows.padded, self.cols.padded

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles per column and per row: ``(ny, nx)``."""
        return len(self.rows.starts), len(self.cols.starts)

    @property
    def n_tiles(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def ramp(self) -> int:
        """Width of the linear blending ramp inside each overlap."""
        return max(0, self.overlap - 2 * self.margin)

    def tile_origin(self, index: int) -> tuple[int, int]:
        """Top-left corner ``(y, x)`` of tile ``index`` (raster order) in padded coordinates."""
        iy, ix = divmod(index, len(self.cols.starts))
        return self.rows.starts[iy], self.cols.starts[ix]

    def tile_weights(self, index: int) -> np.ndarray:
        """The ``(tile_h, tile_w)`` float32 blending weights of tile ``index`` (cached, read-only)."""
        iy, ix = divmod(index, len(self.cols.starts))
        ny, nx = self.grid
        return blend_weights(
            self.tile_h, self.tile_w, self.margin, self.ramp,
            top=iy > 0, bottom=iy < ny - 1, left=ix > 0, right=ix < nx - 1,
        )

    def total_weight_so_far(self, index: int) -> np.ndarray:
        """``(tile_h, tile_w)`` float32: the summed weights of tiles ``0 … index`` (raster order)
        over tile ``index``'s footprint — what a running-mean stitcher divides by.

        The weights are separable and the tiles a grid, so the sum is ``before(y) · total(x) +
        profile(y) · upto(x)`` from per-axis sums (:func:`axis_weight_sums`): the tile rows above
        in full, and this tile row up to this tile. No full-size weight accumulator (a float32 per
        pixel: half the band stitcher's buffer with one channel).
        """
        iy, ix = divmod(index, len(self.cols.starts))
        rows, cols = axis_weight_sums(self.rows, self.margin, self.ramp), axis_weight_sums(
            self.cols, self.margin, self.ramp
        )
        x = self.cols.starts[ix]
        total = np.multiply.outer(rows.before[iy], cols.total[x : x + self.tile_w])
        total += np.multiply.outer(rows.profiles[iy], cols.upto[ix])
        return total

    @property
    def compute_ratio(self) -> float:
        """Pixels the model runs on ÷ image pixels (1.0 = a bare pass without padding)."""
        return self.n_tiles * self.tile_h * self.tile_w / (self.height * self.width)


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def plan_axis(
    length: int, tile_size: int, overlap: int, margin: int, divisor: int, border: int | None = None
) -> AxisPlan:
    """Plan one axis of ``length`` pixels (see the module docstring for the rules).

    ``border``: mirrored context before the first and after the last image pixel;
    ``None`` → ``margin``.
    """
    border = margin if border is None else border
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    if tile_size < 1 or divisor < 1 or margin < 0 or overlap < 0 or border < 0:
        raise ValueError(
            f"invalid tiling parameters: tile_size={tile_size}, overlap={overlap}, "
            f"margin={margin}, divisor={divisor}"
        )
    needed = length + 2 * border  # image plus mirrored context on both sides
    padded = _round_up(needed, divisor)
    n = 1 if length <= tile_size else math.ceil(length / tile_size)
    if n > 1:
        tile = _round_up(math.ceil((padded + (n - 1) * overlap) / n), divisor)
        while tile < padded:
            steps = (padded - tile) // divisor  # total travel of the tile, in divisor units
            if tile - divisor * math.ceil(steps / (n - 1)) >= overlap:
                break
            tile += divisor  # rounding starts to the divisor grid cost some overlap: grow
        if tile < padded:
            # a coarse divisor can leave fewer divisor steps than tiles: drop duplicates
            n = min(n, steps + 1)
            starts = tuple(divisor * (i * steps // (n - 1)) for i in range(n))
            return AxisPlan(length, tile, starts, border, padded - length - border)
    # one tile: a single pass over the whole (padded) axis
    return AxisPlan(length, padded, (0,), border, padded - length - border)


def plan_tiles(
    height: int,
    width: int,
    tile_size: int,
    overlap: int,
    margin: int,
    divisor: int,
    border: int | None = None,
) -> TilePlan:
    """Plan the tiles for an image of ``height × width`` pixels.

    Args:
        height, width: image size, ≥ 1.
        tile_size: most image pixels per tile along each axis; ``>= max(height, width)``
            gives one tile (a single pass).
        overlap: minimum overlap between neighbouring tiles; raised to ``2 * margin`` so
            both tiles have full context somewhere inside it.
        margin: context halo (``ModelMetadata.context_margin``): mirror padding at the
            image border and the zero-weight band at tile edges that face another tile.
        divisor: tile edges and starts are multiples of it (``ModelMetadata.size_divisor``).
        border: mirror padding at the image border; ``None`` → ``margin`` (U-Net paper).
            0 lets the model's own zero padding handle the border, as in a bare pass
            of the unpadded image: saves ``4 · margin / side`` of the compute.
    """
    overlap = max(int(overlap), 2 * int(margin))
    rows = plan_axis(int(height), int(tile_size), overlap, int(margin), int(divisor), border)
    cols = plan_axis(int(width), int(tile_size), overlap, int(margin), int(divisor), border)
    return TilePlan(int(height), int(width), int(tile_size), overlap, int(margin), int(divisor), rows, cols)


def pad_image(chw: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Mirror-pad a ``(C, H, W)`` image to ``(C, *plan.padded_shape)`` (same dtype).

    Reflection without repeating the edge pixel (numpy ``reflect``, as in the U-Net
    paper); pads longer than the image reflect repeatedly, and a 1-pixel axis repeats.
    """
    if chw.ndim != 3 or chw.shape[1:] != (plan.height, plan.width):
        raise ValueError(f"expected a (C, {plan.height}, {plan.width}) image, got {chw.shape}")
    pads = ((0, 0), (plan.rows.pad_before, plan.rows.pad_after), (plan.cols.pad_before, plan.cols.pad_after))
    return np.pad(chw, pads, mode="reflect")


def iter_tile_batches(
    padded: np.ndarray, plan: TilePlan, batch_size: int
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield ``(tile_indices, batch)``: at most ``batch_size`` tiles as ``(n, C, th, tw)`` float32.

    Tiles are cut lazily, in raster order; each batch is a fresh array (a dynamic
    batcher may still hold the previous one).
    """
    if padded.ndim != 3 or padded.shape[1:] != plan.padded_shape:
        raise ValueError(f"expected a (C, {plan.padded_shape[0]}, {plan.padded_shape[1]}) array")
    batch_size = max(1, int(batch_size))
    th, tw = plan.tile_h, plan.tile_w
    for first in range(0, plan.n_tiles, batch_size):
        indices = list(range(first, min(first + batch_size, plan.n_tiles)))
        batch = np.empty((len(indices), padded.shape[0], th, tw), dtype=np.float32)
        for slot, index in enumerate(indices):
            y, x = plan.tile_origin(index)
            batch[slot] = padded[:, y : y + th, x : x + tw]
        yield indices, batch


def blend_profile(length: int, margin: int, ramp: int, before: bool, after: bool) -> np.ndarray:
    """1-D weights ``(length,)`` float32 along one tile axis.

    ``before``/``after``: whether that end faces another tile. Such an end gets zeros
    over ``margin`` pixels, then a linear ramp over ``ramp`` pixels with values
    ``(k + 0.5) / ramp`` (a neighbour's mirrored ramp adds up to exactly 1).
    """
    w = np.ones(length, dtype=np.float64)
    up = (np.arange(ramp) + 0.5) / ramp if ramp else np.zeros(0)
    rise = np.concatenate([np.zeros(margin), up, np.ones(max(0, length - margin - ramp))])[:length]
    if before:
        w = np.minimum(w, rise)
    if after:
        w = np.minimum(w, rise[::-1])
    return w.astype(np.float32)


@lru_cache(maxsize=64)
def blend_weights(
    tile_h: int,
    tile_w: int,
    margin: int,
    ramp: int,
    top: bool = False,
    bottom: bool = False,
    left: bool = False,
    right: bool = False,
) -> np.ndarray:
    """Separable ``(tile_h, tile_w)`` float32 weights; flags say which edges face another tile.

    Computed once per (shape, margin, ramp, edge pattern) and cached; at most nine edge
    patterns occur per plan. The returned array is read-only (it is shared).
    """
    wy = blend_profile(tile_h, margin, ramp, top, bottom)
    wx = blend_profile(tile_w, margin, ramp, left, right)
    weights = np.outer(wy, wx).astype(np.float32)
    weights.setflags(write=False)
    return weights


@dataclass(frozen=True)
class AxisWeightSums:
    """Per tile ``k`` of an axis, over its own span (float32, ``(tile,)`` each): its blending
    ``profiles[k]``, and the profiles summed over the tiles ``before[k]`` it and ``upto[k]``
    including it, in tile order; ``total``: every tile's profile summed over the padded axis."""

    profiles: tuple[np.ndarray, ...]
    before: tuple[np.ndarray, ...]
    upto: tuple[np.ndarray, ...]
    total: np.ndarray


@lru_cache(maxsize=16)
def axis_weight_sums(axis: AxisPlan, margin: int, ramp: int) -> AxisWeightSums:
    """The per-axis sums :meth:`TilePlan.total_weight_so_far` combines (computed once per axis)."""
    n = len(axis.starts)
    profiles = tuple(blend_profile(axis.tile, margin, ramp, k > 0, k < n - 1) for k in range(n))
    running = np.zeros(axis.padded, dtype=np.float32)
    before, upto = [], []
    for start, profile in zip(axis.starts, profiles, strict=True):
        span = slice(start, start + axis.tile)
        before.append(running[span].copy())
        running[span] += profile
        upto.append(running[span].copy())
    for array in (*profiles, *before, *upto, running):
        array.setflags(write=False)
    return AxisWeightSums(profiles, tuple(before), tuple(upto), running)


def total_weight(plan: TilePlan) -> np.ndarray:
    """The ``(H, W)`` float32 sum of all tiles' weights over the image (diagnostics, tests).

    Computed from the per-axis sums the stitchers use (no tile is materialised).
    """

    def on_image(axis: AxisPlan) -> np.ndarray:
        total = axis_weight_sums(axis, plan.margin, plan.ramp).total
        return total[axis.pad_before : axis.pad_before + axis.length]

    return np.outer(on_image(plan.rows), on_image(plan.cols)).astype(np.float32)


class Stitcher:
    """Blend tile outputs into a full-size ``(K, H, W)`` float32 result.

    ``add`` tiles in raster order (each once); ``result`` returns the weighted mean of all
    tile outputs covering each pixel, cropped to the image.
    """

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.channels = channels
        self.mean = np.zeros((channels, plan.height, plan.width), dtype=np.float32)
        self.added = 0

    def add(self, index: int, output: np.ndarray) -> None:
        """Blend the ``(K, tile_h, tile_w)`` output of tile ``index`` (the next in raster order)."""
        plan = self.plan
        if index != self.added:
            raise ValueError(f"tiles must come in raster order: expected tile {self.added}, got {index}")
        if output.shape != (self.channels, plan.tile_h, plan.tile_w):
            raise ValueError(
                f"tile output has shape {output.shape}; expected {(self.channels, plan.tile_h, plan.tile_w)}"
            )
        y, x = plan.tile_origin(index)
        top, left = plan.rows.pad_before, plan.cols.pad_before
        # the part of the tile that lies on the image (not on the mirrored padding)
        y0, y1 = max(y, top), min(y + plan.tile_h, top + plan.height)
        x0, x1 = max(x, left), min(x + plan.tile_w, left + plan.width)
        self.added += 1
        if y0 >= y1 or x0 >= x1:
            return
        share = _share(plan, index, (y0 - y, y1 - y), (x0 - x, x1 - x))
        out = output[:, y0 - y : y1 - y, x0 - x : x1 - x]
        image = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        mean = self.mean[(slice(None), *image)]
        delta = out - mean
        delta *= share
        mean += delta

    def result(self) -> np.ndarray:
        """The stitched ``(K, H, W)`` float32 array (a view of the accumulator, not a copy)."""
        if self.added < self.plan.n_tiles:
            raise RuntimeError(f"only {self.added} of {self.plan.n_tiles} tiles were added")
        return self.mean


def _share(plan: TilePlan, index: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Tile ``index``'s share in the running mean over its ``rows`` × ``cols`` (tile coordinates):
    its weight over the weight of every tile so far; 0 where neither it nor earlier tiles count.
    The one computation both stitchers make, so their results agree bit for bit."""
    w = plan.tile_weights(index)[rows[0] : rows[1], cols[0] : cols[1]]
    total = plan.total_weight_so_far(index)[rows[0] : rows[1], cols[0] : cols[1]]
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Positions on an axis of ``length`` pixels for ``index`` (may lie outside ``[0, length)``),
    mirrored as :func:`pad_image` mirrors: ``numpy.pad(mode="reflect")``, the edge pixel not
    repeated, pads longer than the axis reflecting again; a 1-pixel axis repeats its pixel.

    What lets a window of the padded image be read from the unpadded one (``service.windows``).
    """
    index = np.asarray(index, dtype=np.int64)
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded < length, folded, period - folded)


class BandStitcher:
    """:class:`Stitcher`'s running weighted mean over a band of rows instead of the whole image.

    Tiles are added in raster order (index 0, 1, 2, …). The accumulators are one buffer of a
    tile's height across the image, holding the rows the current tile row covers that are still
    open; once a tile row is complete, :meth:`add` returns the rows no later tile touches, as
    ``(y0, (K, h, W) float32)`` in image coordinates — a view of the buffer, valid until the next
    :meth:`add` (which moves the open rows to the top of the buffer). Every value equals
    :class:`Stitcher`'s for the same plan and tiles, bit for bit: each pixel sees the same tiles
    in the same order and the same float32 operations.

    Memory: ``K × tile_h × W`` float32, whatever the image's height.
    """

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.channels = channels
        self.added = 0
        self.top = 0  # image row held in the buffer's first row
        self.valid = 0  # buffer rows in use (open rows, plus handed-back ones until the next add)
        self._handed = 0  # rows handed back by the last add, dropped at the next one
        rows = min(plan.tile_h, plan.height)
        self.mean = np.zeros((channels, rows, plan.width), dtype=np.float32)

    def _image_rows(self, tile_row: int) -> tuple[int, int]:
        """Image rows ``[y0, y1)`` tile row ``tile_row`` covers (clipped to the image)."""
        plan = self.plan
        start = plan.rows.starts[tile_row] - plan.rows.pad_before
        return max(0, start), max(0, min(plan.height, start + plan.tile_h))

    def _drop_handed(self) -> None:
        """Move the open rows below the rows handed back last time to the top of the buffer."""
        h = self._handed
        if h == 0:
            return
        keep = self.valid - h
        self.mean[:, :keep] = self.mean[:, h : self.valid]
        self.top += h
        self.valid = keep
        self._handed = 0

    def _open(self, tile_row: int) -> None:
        """Open the image rows down to the last one of ``tile_row`` (new rows start at zero)."""
        _, y1 = self._image_rows(tile_row)
        need = y1 - self.top
        if need <= self.valid:
            return
        if need > self.mean.shape[1]:  # not for plans from plan_tiles; kept for safety
            grow = need - self.mean.shape[1]
            self.mean = np.concatenate(
                [self.mean, np.empty((self.channels, grow, self.plan.width), np.float32)], axis=1
            )
        self.mean[:, self.valid : need] = 0.0
        self.valid = need

    def add(self, index: int, output: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Blend the ``(K, tile_h, tile_w)`` output of tile ``index`` (the next in raster order).

        Returns ``(y0, rows)`` when the tile completes a tile row and image rows are finished:
        ``rows`` ``(K, h, W)`` float32, image rows ``[y0, y0 + h)``, a view of the buffer valid
        until the next call (callers may change it in place); else None.
        """
        plan = self.plan
        if index != self.added:
            raise ValueError(f"tiles must come in raster order: expected tile {self.added}, got {index}")
        if output.shape != (self.channels, plan.tile_h, plan.tile_w):
            raise ValueError(
                f"tile output has shape {output.shape}; expected {(self.channels, plan.tile_h, plan.tile_w)}"
            )
        self._drop_handed()
        ny, nx = plan.grid
        tile_row, tile_col = divmod(index, nx)
        if tile_col == 0:
            self._open(tile_row)
        y, x = plan.tile_origin(index)
        top, left = plan.rows.pad_before, plan.cols.pad_before
        y0, y1 = max(y, top), min(y + plan.tile_h, top + plan.height)
        x0, x1 = max(x, left), min(x + plan.tile_w, left + plan.width)
        self.added += 1
        if y0 < y1 and x0 < x1:
            # exactly Stitcher.add's arithmetic, on rows counted from self.top
            share = _share(plan, index, (y0 - y, y1 - y), (x0 - x, x1 - x))
            out = output[:, y0 - y : y1 - y, x0 - x : x1 - x]
            rows = slice(y0 - top - self.top, y1 - top - self.top)
            cols = slice(x0 - left, x1 - left)
            mean = self.mean[:, rows, cols]
            delta = out - mean
            delta *= share
            mean += delta
        if tile_col < nx - 1:
            return None
        # the tile row is complete: rows above the next tile row's first image row are final
        done = plan.height if tile_row == ny - 1 else self._image_rows(tile_row + 1)[0]
        h = max(0, min(done, self.top + self.valid) - self.top)
        if h == 0:
            return None
        self._handed = h
        return self.top, self.mean[:, :h]

    @property
    def complete(self) -> bool:
        """Every tile added and every image row handed back."""
        return self.added == self.plan.n_tiles and self.top + self._handed == self.plan.height
