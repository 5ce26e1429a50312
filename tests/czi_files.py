"""Real Zeiss CZI files for the tests, written by Zeiss's own libCZI (pylibCZIrw), and libCZI's
reading of them: the reference :mod:`service.czi` is checked against, never the service's own
reading.

libCZI writes random GUIDs (file header) and retiling ids (subblock metadata); they are fixed
here, so the same call gives the same bytes (the fuzz corpus needs that).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: ZEN's "zstd1" with the low and high bytes of 16-bit pixels split, as ZEN writes it by default.
ZSTD1 = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"
ZSTD0 = "zstd0:ExplicitLevel=1"
_GUIDS = slice(48, 80)  # the file header's primary and file GUIDs
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Tile:
    """One subblock: ``pixels`` (H, W) grey or (H, W, 3) colour given blue first, as CZI stores
    it; its plane (c, z, t), its position and its scene."""

    pixels: np.ndarray
    c: int = 0
    z: int = 0
    t: int = 0
    x: int = 0
    y: int = 0
    scene: int = 0


def czi_bytes(
    tiles: list[Tile],
    channel_names: dict[int, str] | None = None,
    pixel_size_m: float | None = None,
    compression: str | None = None,
    z_step_m: float | None = None,
) -> bytes:
    """The CZI libCZI writes for ``tiles`` (pixel size and z-step in metres, as ZEN's Scaling holds
    them)."""
    from pylibCZIrw import czi as pyczi

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.czi"
        with pyczi.create_czi(str(path), exist_ok=True, compression_options=compression) as writer:
            for tile in tiles:
                pixels = tile.pixels if tile.pixels.ndim == 3 else tile.pixels[:, :, None]
                plane = {"C": tile.c, "Z": tile.z, "T": tile.t}
                assert writer.write(np.ascontiguousarray(pixels), location=(tile.x, tile.y), plane=plane,
                                    scene=tile.scene)
            scale = pixel_size_m or 0.0
            writer.write_metadata(document_name="test", channel_names=channel_names, scale_x=scale,
                                  scale_y=scale, scale_z=z_step_m or 0.0)
        data = bytearray(path.read_bytes())
    data[_GUIDS] = bytes(_GUIDS.stop - _GUIDS.start)
    return _UUID.sub(b"00000000-0000-4000-8000-000000000000", bytes(data))


def libczi_plane(data: bytes, c: int = 0, z: int = 0, t: int = 0) -> np.ndarray:
    """The plane as libCZI composes it over the whole image (mosaic tiles in place, gaps black):
    (H, W) grey, or (H, W, 3) colour **red first** (libCZI gives blue first)."""
    from pylibCZIrw import czi as pyczi

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.czi"
        path.write_bytes(data)
        with pyczi.open_czi(str(path)) as reader:
            plane = reader.read(plane={"C": c, "Z": z, "T": t})
    return plane[:, :, 0] if plane.shape[2] == 1 else plane[:, :, ::-1]


def libczi_scene(data: bytes, scene: int, c: int = 0) -> np.ndarray:
    """Scene ``scene``'s plane of channel ``c`` as libCZI reads it (its own bounding box), grey."""
    from pylibCZIrw import czi as pyczi

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.czi"
        path.write_bytes(data)
        with pyczi.open_czi(str(path)) as reader:
            return reader.read(plane={"C": c}, scene=scene)[:, :, 0]
