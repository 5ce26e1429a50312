"""Bringing an image to the model's nucleus scale and its outputs back (pure numpy/OpenCV).

The model learned nuclei of one size (``ModelMetadata.nucleus_diameter``, px). An image
whose nuclei are ``d`` px across is resized by ``factor = nucleus_diameter / d`` before the
model; its outputs are resized back to the input's grid: probabilities smoothly (linear),
labels by nearest neighbour (ids are never blended).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: A factor within this ratio of 1 is not worth an interpolation: the model was trained
#: on nuclei within ×1.5 of its diameter, so ±10 % costs nothing measurable.
SKIP_RESIZE_RATIO = 1.1


def factor_for(diameter: float, model_diameter: float) -> float:
    """Resize factor that brings nuclei ``diameter`` px across to ``model_diameter`` px (1.0 near 1)."""
    if diameter <= 0 or model_diameter <= 0:
        raise ValueError(f"diameters must be positive, got {diameter} and {model_diameter}")
    factor = model_diameter / diameter
    if abs(math.log(factor)) < math.log(SKIP_RESIZE_RATIO):
        return 1.0
    return factor


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(H, W)`` after resizing by ``factor`` (at least 1 px each)."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize_image(image: np.ndarray, factor: float) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, C)`` image resized by ``factor``.

    Shrinking averages pixels (``INTER_AREA``: no aliasing of small bright spots),
    enlarging interpolates linearly. The dtype is kept.
    """
    if factor == 1.0:
        return image
    h, w = scaled_shape(image.shape[:2], factor)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    source = image
    if image.dtype not in (np.uint8, np.uint16, np.float32):  # OpenCV resizes only these well
        source = image.astype(np.float32)
    if source.ndim == 3 and source.shape[2] > 4:
        out = np.stack(
            [
                cv2.resize(source[:, :, c], (w, h), interpolation=interpolation)
                for c in range(source.shape[2])
            ],
            axis=2,
        )
    else:
        out = cv2.resize(source, (w, h), interpolation=interpolation)
    return out.astype(image.dtype, copy=False)


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(K, h, w)`` float32 maps → ``(K, H, W)`` on the input grid, linear interpolation."""
    if maps.shape[1:] == tuple(shape):
        return maps
    h, w = shape
    interpolation = cv2.INTER_AREA if h < maps.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(m, (w, h), interpolation=interpolation) for m in maps]).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int32 ``(h, w)`` labels → ``(H, W)`` by nearest neighbour (ids kept, never blended).

    An object too small to hit any pixel centre of a coarser grid disappears; the callers
    renumber so ids stay 1..N without gaps.
    """
    if labels.shape == tuple(shape):
        return labels
    h, w = shape
    # Nearest neighbour by index arithmetic at pixel centres: exact for int32 ids, which
    # OpenCV's resize would not take.
    rows = np.minimum(((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def renumber(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in raster order of each object's first pixel (0 stays 0).

    The same numbering ``objects.label_objects`` gives, so ids do not depend on the scale
    the objects were found at.
    """
    flat = labels.reshape(-1)
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]
