"""Tile size and overlap for one image: the caller's option, else the setting, else the model's.

The one place the three sources meet, shared by the HTTP routes (``Runtime.tiling``, which turns
a :class:`TilingError` into a 422) and the Python API (``service.api``), so a request and an API
call with the same options tile an image the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.model_metadata import ModelMetadata
from service.settings import Settings


@dataclass(frozen=True)
class Tiling:
    tile_size: int
    overlap: int
    source: str  # where the values came from: request | settings | model


class TilingError(ValueError):
    """A tile size or overlap outside what the settings allow; ``param`` names the option."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def resolve(
    settings: Settings, metadata: ModelMetadata, tile_size: int | None = None, overlap: int | None = None
) -> Tiling:
    """Tile edge and overlap in pixels: ``tile_size``/``overlap`` if given, else the settings'
    (``UNET_TILE_SIZE``, ``UNET_TILE_OVERLAP``), else the model's metadata.

    Raises:
        TilingError: tile size outside ``max(16, size divisor)..max_tile_size``, or an overlap
            not below half the tile.
    """
    s = settings
    # The model's recommendation yields to the operator's cap (a 2048-px model on a server
    # capped at 1024 runs 1024-px tiles); an explicit request or setting is checked instead.
    tile = tile_size or s.tile_size or min(metadata.tile_size, s.max_tile_size)
    if overlap is not None:
        ovl = overlap
    elif s.tile_overlap is not None:
        ovl = s.tile_overlap
    else:
        ovl = metadata.tile_overlap
    low = max(16, metadata.size_divisor)
    if not low <= tile <= s.max_tile_size:
        raise TilingError(
            f"tile_size {tile} is outside {low}..{s.max_tile_size} (UNET_MAX_TILE_SIZE)", "tile_size"
        )
    if not 0 <= 2 * ovl < tile:
        raise TilingError(f"overlap {ovl} must be ≥ 0 and less than half the tile size {tile}", "overlap")
    source = (
        "request"
        if tile_size or overlap is not None
        else ("settings" if s.tile_size or s.tile_overlap is not None else "model")
    )
    return Tiling(tile_size=tile, overlap=ovl, source=source)
