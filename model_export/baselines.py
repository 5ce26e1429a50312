"""Classical nucleus segmentation to score the model against (``evaluate --baseline``).

A baseline is a pure function: decoded image → ``(H, W)`` int32 instance labels. It sees
exactly the image the model sees and is scored by the same code, so the comparison says
whether the network earns its cost over what a microscopist gets from a few library calls.

scikit-image/SciPy only (no PyTorch): ``evaluate`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from service.preprocess import to_channels

#: Seeds closer than this (px) merge: peak_local_max's ``min_distance``.
MIN_DISTANCE = 5
#: Objects smaller than this many pixels are dropped (as the model's default ``min_area``).
MIN_AREA = 15
#: The nucleus diameter (px) the two settings above suit: the median over DSB 2018's 541
#: fluorescence images of each image's median equivalent diameter (16.56; p10 10.3, p90 47.8),
#: the images this baseline was first scored on (issue #13).
REFERENCE_DIAMETER = 16.6


def otsu_watershed(
    image: np.ndarray, min_distance: int = MIN_DISTANCE, min_area: int = MIN_AREA
) -> np.ndarray:
    """Otsu threshold + distance-transform watershed: the textbook fluorescence pipeline.

    1. grey image (RGB(A) → BT.601 luminance, as the service's own conversion; alpha ignored);
    2. foreground = grey > Otsu's threshold (``skimage.filters.threshold_otsu``), holes filled;
    3. the Euclidean distance transform of the foreground, seeded at its local maxima at
       least ``min_distance`` px apart (``skimage.feature.peak_local_max``, one search per
       connected component, peaks at the image border kept), flooded downhill by
       ``skimage.segmentation.watershed`` inside the foreground;
    4. objects under ``min_area`` pixels dropped.

    Args:
        image: ``(H, W)`` or ``(H, W, 3|4)`` as decoded (uint8/uint16/float), bright nuclei
            on a dark field.
        min_distance: smallest distance between two seeds, px.
        min_area: smallest object kept, px.

    Returns:
        ``(H, W)`` int32 labels, 0 = background, 1..N consecutive.
    """
    grey = to_channels(np.asarray(image), 1).astype(np.float32)
    if float(grey.max()) <= float(grey.min()):  # flat: Otsu has no threshold to find
        return np.zeros(grey.shape, np.int32)
    foreground = ndimage.binary_fill_holes(grey > threshold_otsu(grey))
    components, _ = ndimage.label(foreground)
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground)
    return _drop_small(labels, min_area)


def otsu_watershed_sized(image: np.ndarray, diameter: float) -> np.ndarray:
    """:func:`otsu_watershed` with its seed spacing and smallest object scaled to nuclei of
    ``diameter`` px, as a microscopist sets them for each data set by hand.

    Scored with the labels' own diameter it is an oracle of that one setting: the classical method
    at its best scale. At a fixed 5 px, seeds can fall on every bump of a large nucleus's distance
    transform: on 16-bit re-recordings of every eighth DSB training image, F1 0.796 as recorded →
    0.672 enlarged ×3, where scaled 0.807 → 0.829 (``benchmarks/screen_like.py --upscale 3``).
    """
    k = diameter / REFERENCE_DIAMETER
    return otsu_watershed(image, max(1, round(MIN_DISTANCE * k)), max(1, round(MIN_AREA * k * k)))


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects under ``min_area`` px and renumber the rest 1..N: int32."""
    areas = np.bincount(labels.reshape(-1))
    keep = areas >= min_area
    keep[0] = False
    renumber = np.zeros(areas.size, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[labels]


#: ``evaluate --baseline NAME`` → the function.
BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"otsu": otsu_watershed}
#: Baselines that are told the nuclei's diameter (``evaluate`` passes the labels' median).
SIZED_BASELINES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"otsu-sized": otsu_watershed_sized}
