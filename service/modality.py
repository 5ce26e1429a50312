"""Does an image look like fluorescence (bright nuclei on a dark field)? Pure numpy.

The model learned fluorescence micrographs. A colour stain (H&E) or a bright-field image
(dark nuclei on a bright field) gives garbage masks that look like an answer; the service
says so instead (a warning header and field, never a silent 200). Training uses the same
test to sort the DSB 2018 images, so what the service warns about is exactly what the
model never saw.

Measured on DSB 2018 stage-1 train (664 images): its colour H&E images have a mean
inter-channel difference of 0.039–0.34 of their range, the grey ones 0; the bright-field and
H&E ones have their median at 0.44–0.96 of the 1–99.5 percentile range, the 541
fluorescence ones at 0–0.5 (all but two below 0.3). Both tests together sort out the 123
non-fluorescence images and keep the 541 fluorescence ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.preprocess import grid_subsample

Modality = Literal["fluorescence", "colour", "bright-field"]

#: Mean absolute difference between colour channels, as a share of the image's range,
#: above which an RGB image counts as a colour stain rather than grey / one-hue.
COLOUR_DIFFERENCE = 0.04
#: Where the median pixel sits between the 1st and 99.5th percentile: fluorescence images
#: are mostly dark background (median near the bottom), bright-field mostly bright.
BRIGHT_FIELD_MEDIAN = 0.65
#: Statistics are taken on at most this many pixels (a regular subsample): cheap on slides.
_SAMPLE = 1 << 18


@dataclass(frozen=True)
class ModalityCheck:
    """What an image looks like, and why (for the warning text)."""

    modality: Modality
    colour_difference: float  # mean |R-G|, |G-B|, |R-B| / range (0 for grey)
    median_position: float  # (median - p1) / (p99.5 - p1) of the grey image

    @property
    def warning(self) -> str | None:
        """A sentence for the user of ``polarity=bright`` (the default), or None for fluorescence."""
        return self.warning_for("bright")

    def warning_for(self, polarity: str) -> str | None:
        """A sentence for the user, or None: the image looks like what ``polarity`` says it is
        (``bright``: fluorescence; ``dark``: dark nuclei on a bright field, ``service.polarity``)."""
        if polarity == "dark":
            if self.modality == "fluorescence":
                return (
                    "polarity=dark, but the image looks like fluorescence (bright objects on a dark "
                    "background): its dark background was segmented as the signal; drop polarity=dark"
                )
            read = (
                "segmented as dark nuclei on a bright field (polarity=dark, the image's optical density); "
                "the model learned fluorescence nuclei: check the result"
            )
            if self.modality == "bright-field":
                # DSB's bright-field images: the estimate read whole cells (×6.2 the nuclei), and
                # at the true size F1 went 0.12 -> 0.45 (docs/benchmarks.md, "Dark nuclei").
                read += (
                    "; where nuclei sit inside stained cells the size estimate can read the cells: "
                    "if the outlines are cells, give the nuclei's diameter= in px"
                )
            return read
        if self.modality == "colour":
            return (
                "the image is in colour (e.g. an H&E stain), not a fluorescence channel: "
                "the model was trained on fluorescence nuclei and its result is unreliable; "
                "send the nuclear channel alone (channel=...), or polarity=dark where nuclei are "
                "stained dark (H&E)"
            )
        if self.modality == "bright-field":
            return (
                "the image looks like bright field (dark objects on a bright background), "
                "not fluorescence: the model was trained on bright nuclei on a dark field and "
                "its result is unreliable; polarity=dark segments dark nuclei"
            )
        return None


def check_modality(image: np.ndarray) -> ModalityCheck:
    """Classify a decoded ``(H, W)`` or ``(H, W, C)`` image (RGB(A) order; alpha ignored)."""
    sample = grid_subsample(np.asarray(image), _SAMPLE).astype(np.float32)
    colour_difference = 0.0
    if sample.ndim == 3 and sample.shape[2] >= 3:
        rgb = sample[:, :, :3]
        value_range = float(rgb.max() - rgb.min()) or 1.0
        diffs = (
            np.abs(rgb[:, :, 0] - rgb[:, :, 1]).mean()
            + np.abs(rgb[:, :, 1] - rgb[:, :, 2]).mean()
            + np.abs(rgb[:, :, 0] - rgb[:, :, 2]).mean()
        )
        colour_difference = float(diffs / 3 / value_range)
        grey = rgb.mean(axis=2)
    elif sample.ndim == 3:
        grey = sample[:, :, 0]
    else:
        grey = sample
    grey = grey[np.isfinite(grey)]
    if grey.size == 0:
        return ModalityCheck("fluorescence", colour_difference, 0.0)
    p1, median, p995 = np.percentile(grey, [1, 50, 99.5])
    position = float((median - p1) / (p995 - p1)) if p995 > p1 else 0.0
    if colour_difference > COLOUR_DIFFERENCE:
        return ModalityCheck("colour", colour_difference, position)
    if position > BRIGHT_FIELD_MEDIAN:
        return ModalityCheck("bright-field", colour_difference, position)
    return ModalityCheck("fluorescence", colour_difference, position)
