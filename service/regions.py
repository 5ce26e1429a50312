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


def check_window(shape: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> None:
    """Raise ValueError unless ``[y0, y1) × [x0, x1)`` is a non-empty window inside ``shape``."""
    height, width = shape[:2]
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] is not inside an image of {height}×{width}")
