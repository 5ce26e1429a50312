"""DeltaVision files as softWoRx writes them, for tests: the 1024-byte header (MRC layout with
DeltaVision's ID, wavelengths, time points and sequence), an extended header of per-section
records, then every section raw in the file's sequence order. A real softWoRx file (mrc's
``toxo.dv``: 2 waves × 17 z, 0.13262 µm) was read the same way."""

from __future__ import annotations

import struct

import numpy as np

MODES = {np.dtype(np.uint8): 0, np.dtype(np.int16): 1, np.dtype(np.float32): 2, np.dtype(np.uint16): 6,
         np.dtype(np.int32): 7, np.dtype(np.complex64): 4}
#: ``img_seq`` → the sections' order, slowest axis first (Priism's ZTW, WZT, ZWT).
ORDERS = {0: "CTZ", 1: "TZC", 2: "TCZ"}


def dv_bytes(stack: np.ndarray, pixel_um: float = 0.13262, z_um: float = 0.3,
             wavelengths: tuple[int, ...] = (525, 632), sequence: int = 0, byte_order: str = "<",
             extended_bytes: int = 0) -> bytes:
    """A DeltaVision file of ``stack`` ``(T, C, Z, Y, X)`` (any of the pixel types in :data:`MODES`)."""
    times, waves, depth, height, width = stack.shape
    header = bytearray(1024)

    def put(fmt: str, offset: int, *values: object) -> None:
        struct.pack_into(byte_order + fmt, header, offset, *values)

    put("4i", 0, width, height, times * waves * depth, MODES[stack.dtype])
    put("3i", 28, width, height, depth)  # mx, my, mz: the sampling
    put("3f", 40, pixel_um, pixel_um, z_um)
    put("3f", 52, 90.0, 90.0, 90.0)
    put("3i", 64, 1, 2, 3)
    put("i", 92, extended_bytes)
    put("h", 96, -16224)  # the DeltaVision ID, 0xC0A0
    put("2h", 180, times, sequence)
    put("h", 196, waves)
    put("5h", 198, *(list(wavelengths) + [0] * 5)[:5])
    order = ORDERS[sequence]
    axes = {"T": 0, "C": 1, "Z": 2}
    sections = np.transpose(stack, [axes[a] for a in order] + [3, 4]).reshape(-1, height, width)
    stored = sections.astype(stack.dtype.newbyteorder(byte_order))
    return bytes(header) + bytes(extended_bytes) + stored.tobytes()
