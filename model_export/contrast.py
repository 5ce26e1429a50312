"""How bright each labelled nucleus stands out of its surroundings, relative to its image's others.

One measure, shared by the benchmark that counts DSB's dim nuclei (``benchmarks/unlabelled_blobs.py``)
and by training's ``--dim-weight`` (a loss that weighs dim nuclei more), so that "dim" means the same
in both: a nucleus's contrast is the mean of the image's white top-hat inside its mask, divided by the
median over the image's labelled nuclei.

The top-hat is taken on the grey image stretched as the service stretches it (1st percentile → 0,
99.8th → 1), lightly smoothed (σ = diameter / 8), with a disc of 1.5 × the image's median nucleus
diameter: haze and uneven background broader than a nucleus drop out, a nucleus's own signal stays.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

#: Nuclei below this share of their image's median contrast count as dim for ``--dim-weight``:
#: 2.3.1 found 11.5 % of DSB's own labelled nuclei below 0.25 and 51.6 % between 0.25 and 0.5,
#: against 87-89 % above (docs/benchmarks.md, "DSB's own dim nuclei").
DIM_BELOW = 0.5


def normalised(image: np.ndarray) -> np.ndarray:
    """The grey image stretched as the service stretches it (1st percentile → 0, 99.8th → 1)."""
    grey = image[:, :, :3].mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    low, high = np.percentile(grey, [1, 99.8])
    return (grey - low) / max(high - low, 1e-6)


def top_hat(image: np.ndarray, diameter: float) -> np.ndarray:
    """White top-hat of the stretched image with a disc 1.5 × ``diameter`` (px) across."""
    smooth = cv2.GaussianBlur(
        np.clip(normalised(image), 0, None).astype(np.float32), (0, 0), max(diameter / 8, 0.7)
    )
    size = int(1.5 * diameter) | 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.morphologyEx(smooth, cv2.MORPH_TOPHAT, disc)


def nucleus_means(hat: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of ``hat`` inside each label id ``0..labels.max()``; NaN for 0 (background) and absent ids."""
    count = int(labels.max(initial=0))
    means = np.full(count + 1, np.nan)
    if count:
        means[1:] = ndi.mean(hat, labels, index=np.arange(1, count + 1))
    return means


def relative_contrasts(means: np.ndarray) -> np.ndarray:
    """:func:`nucleus_means` over their median: 1 for the image's typical nucleus.

    NaN stays NaN; all NaN when the median nucleus has no contrast (nothing to compare with).
    """
    present = means[np.isfinite(means)]
    median = float(np.median(present)) if present.size else 0.0
    if median <= 0:
        return np.full(means.shape, np.nan)
    return means / median


def dim_weights(relative: np.ndarray, gain: float, below: float = DIM_BELOW) -> np.ndarray:
    """Loss weight per label id: ``1 + gain × (1 - c / below)`` for contrast ``c < below``, else 1.

    A nucleus with no contrast at all weighs ``1 + gain``; one at ``below`` or brighter, 1. NaN
    (background, absent ids) weighs 1.
    """
    shortfall = np.clip(1 - np.nan_to_num(relative, nan=below) / below, 0, 1)
    return (1 + gain * shortfall).astype(np.float32)


def nucleus_dim_weights(image: np.ndarray, labels: np.ndarray, diameter: float, gain: float) -> np.ndarray:
    """Loss weight per label id of one raw image with nuclei ``diameter`` px across (``--dim-weight``)."""
    hat = top_hat(image, max(diameter, 4.0))
    return dim_weights(relative_contrasts(nucleus_means(hat, labels)), gain)
