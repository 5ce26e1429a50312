"""Dark nuclei on a bright field (bright field, H&E) turned into what the model learned. Pure numpy.

The model learned fluorescence: bright nuclei on a dark field. In transmitted light (bright
field, haematoxylin-stained sections) nuclei absorb, and come out dark on a bright background;
the model sees nothing there (object F1 0.000 on DSB 2018's 123 such images). ``polarity=dark``
turns such an image into its **optical density**, ``log(white / I)`` (Beer–Lambert's absorbance,
``white`` the bright background's level): stain becomes signal, linear in the amount of stain, and
the background goes to 0, as in fluorescence. Measured on those 123 DSB images
(``benchmarks/polarity.py``; docs/benchmarks.md): object F1 0.000 as sent, 0.526 with the grey
image simply negated, 0.573 as optical density (Otsu + watershed on the same input: 0.462 / 0.437).

``white`` is one level per channel for the whole image (its 99.5th percentile, from a regular
subsample), so that windows of a slide read one by one are turned exactly as the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.preprocess import grid_subsample, to_channels

Polarity = Literal["bright", "dark"]
POLARITIES: tuple[Polarity, ...] = ("bright", "dark")

#: The bright background's level: a high percentile, not the maximum (a hot pixel or a
#: saturated speck would set it), and above the median of any image mostly background.
WHITE_PERCENTILE = 99.5
#: The logarithm's offset, as a share of ``white``: 1/256 is one grey level of an 8-bit image
#: exposed to full range, so a black pixel comes out at ``log(257)`` (≈ 5.5) rather than infinity.
DARK_OFFSET = 1.0 / 256
#: Percentiles are taken on at most this many pixels (a regular subsample): cheap on any image.
_SAMPLE = 1 << 20


@dataclass(frozen=True)
class DarkToBright:
    """Optical density per channel: ``(H, W)`` / ``(H, W, C)`` → float32 of the same shape, ≥ 0."""

    white: tuple[float, ...]  # per model channel, in the image's own units
    channels: int = 1  # the model's input channels: colours are mixed to grey first for 1

    @classmethod
    def of(cls, image: np.ndarray, channels: int = 1) -> DarkToBright:
        """The turn for ``image`` (``(H, W)`` or ``(H, W, C)``, any dtype) as a model of ``channels``
        input channels reads it (``preprocess.to_channels``): the white level of each channel."""
        sample = to_channels(grid_subsample(np.asarray(image), _SAMPLE), channels).astype(np.float32)
        if sample.ndim == 2:
            sample = sample[:, :, None]
        white = []
        for c in range(sample.shape[2]):
            values = sample[:, :, c][np.isfinite(sample[:, :, c])]
            white.append(float(np.percentile(values, WHITE_PERCENTILE)) if values.size else 1.0)
        return cls(tuple(white), channels)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (a window or the whole image, as :meth:`of` saw it) as optical density:
        float32 ``(H, W)`` for one model channel, else ``(H, W, channels)``."""
        values = to_channels(np.asarray(pixels), self.channels).astype(np.float32, copy=False)
        planar = values[:, :, None] if values.ndim == 2 else values
        out = np.empty(planar.shape, np.float32)
        for c, white in enumerate(self.white):
            # A white level of 0 or less (an all-black or negative image) has no bright field:
            # the scale falls back to 1 so that the result is finite (and flat).
            scale = white if white > 0 else 1.0
            offset = np.float32(DARK_OFFSET * scale)
            # Missing values (NaN, ±inf in float files) are background, as the bright path makes them.
            level = np.clip(np.nan_to_num(planar[:, :, c], nan=scale, posinf=scale, neginf=scale), 0, scale)
            out[:, :, c] = np.log((np.float32(scale) + offset) / (level + offset))
        return out[:, :, 0] if values.ndim == 2 else out


class DarkToBrightSource:
    """A region source (``service.regions.RegionSource``) read through :class:`DarkToBright`: every
    window comes out as optical density (float32), with the white level of the whole plane."""

    def __init__(self, source: object, turn: DarkToBright) -> None:
        self.source = source
        self.turn = turn

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)  # type: ignore[attr-defined]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def chunk_rows(self) -> int | None:
        """The wrapped source's (``regions.by_chunk_rows`` reads a compressed file in whole chunk rows)."""
        return getattr(self.source, "chunk_rows", None)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.turn(self.source.read(y0, y1, x0, x1))  # type: ignore[attr-defined]
