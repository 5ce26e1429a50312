"""Images read by region: the one interface the windowed (slide-scale) pipeline reads from.

A slide of 50,000² px cannot be decoded whole. The windowed pipeline (issue 16) asks its
source for one window at a time, on the input's own grid, already reduced to the one plane
the user chose (channel, z, t — ``service.microscopy``'s selection): what a region source
returns is what ``imaging.decode`` would have returned for the same pixels.

- :class:`ArraySource` wraps an image already in memory (``POST /segment``): windows are views.
- Lazy sources over tiled TIFF / OME-TIFF / OME-Zarr files implement the same protocol and
  decode only the chunks a window touches.

Coordinates are ``[y0, y1) × [x0, x1)`` in input pixels, clipped by the caller to the image:
a source never pads (mirroring at the image border is the tiler's job).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

#: Sources whose chunks are taller than this are read as they are (:func:`by_chunk_rows`): a kept
#: block of rows costs its height × the width, and a tile row's input strip is about this tall.
MAX_BLOCK_ROWS = 1024


@runtime_checkable
class RegionSource(Protocol):
    """A 2-D plane (grey ``(H, W)`` or colour ``(H, W, C)``) readable window by window."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(H, W, C)``, as ``imaging.decode`` would give for the whole plane."""
        ...

    @property
    def dtype(self) -> np.dtype:
        """Pixel type of every window (uint8, uint16 or float32)."""
        ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels ``[y0:y1, x0:x1]`` (all channels), a fresh or read-only array."""
        ...


class ArraySource:
    """A decoded image in memory as a :class:`RegionSource` (windows are views, no copies)."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
        self.image = image

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        return self.image[y0:y1, x0:x1]


class RowBlockReader:
    """A lazy source read in whole blocks of rows (its chunk rows), the last block kept.

    Compressed files decode whole chunks: a 64-row read of a slide stored in 512² tiles decodes
    the 512-row chunk row under it, so the slide job's sequential reads (64-row output bands,
    the histogram's 128-row windows on a 32768-px-wide slide, tile rows that overlap the last
    one) decoded most chunk rows several times — 0.72 s of wall time (1.25 CPU-s) per 1024 rows
    in 64-row reads against 0.11–0.17 s (0.2 CPU-s) in whole chunk rows (issue #16). Here each
    block is read once as long as reads move down the image: the block under a read's last row
    is kept for the next read. Full-width reads only go through blocks; others pass through.

    Memory: one block (``block_rows`` × the width) beyond what the reads return. Not thread-safe:
    one reader per thread.
    """

    def __init__(self, source: RegionSource, block_rows: int) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.source = source
        self.block_rows = int(block_rows)
        self._kept: tuple[int, np.ndarray] | None = None  # (block index, its rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        height, width = self.shape[:2]
        if (x0, x1) != (0, width):
            return self.source.read(y0, y1, x0, x1)
        step = self.block_rows
        first, last = y0 // step, (y1 - 1) // step
        out = np.empty((y1 - y0, *self.shape[1:]), self.dtype)
        for block in range(first, last + 1):
            top, bottom = max(y0, block * step), min(y1, (block + 1) * step)
            if self._kept is not None and self._kept[0] == block:
                rows = self._kept[1][top - block * step : bottom - block * step]
            elif block == last:
                # the next read (further down) most likely starts in this block: read all of it,
                # after letting the last one go (one block held, not two)
                self._kept = None
                whole = self.source.read(block * step, min(height, (block + 1) * step), 0, width)
                self._kept = (block, whole)
                rows = whole[top - block * step : bottom - block * step]
            else:
                rows = self.source.read(top, bottom, 0, width)
            out[top - y0 : bottom - y0] = rows
        return out


def by_chunk_rows(source: RegionSource) -> RegionSource:
    """``source`` behind a :class:`RowBlockReader` of its chunk height when it decodes by chunk
    (``chunk_rows``: rows per chunk of a compressed file; None or absent for in-memory and
    uncompressed sources, which read any rows at the cost of those rows), else ``source``."""
    rows = getattr(source, "chunk_rows", None)
    if rows is None or not 1 < rows <= MAX_BLOCK_ROWS:
        return source
    return RowBlockReader(source, rows)


def check_window(shape: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> None:
    """Raise ValueError unless ``[y0, y1) × [x0, x1)`` is a non-empty window inside ``shape``."""
    height, width = shape[:2]
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] is not inside an image of {height}×{width}")
