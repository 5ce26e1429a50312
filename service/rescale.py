"""Bringing an image to the model's nucleus scale and its outputs back (pure numpy/OpenCV).

The model learned nuclei of one size (``ModelMetadata.nucleus_diameter``, px). An image
whose nuclei are ``d`` px across is resized by ``factor = nucleus_diameter / d`` before the
model; its outputs are resized back to the input's grid: probabilities smoothly (linear),
labels by nearest neighbour (ids are never blended).

The pipeline resamples with :func:`resample_axis`, a separable resampler whose output row
``j`` depends only on the global taps of ``j`` (area averaging when shrinking, linear when
enlarging, OpenCV's pixel-centre mapping): resampling a window of rows gives exactly the rows
of resampling the whole image, so the windowed pipeline (``service.windows``) and the
in-memory one give the same pixels. ``cv2.resize`` of a sub-window does not map like
``cv2.resize`` of the whole image (its grid is fixed by the window's own size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

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
    """``(K, h, w)`` float32 maps → ``(K, H, W)`` on the input grid (:func:`resample_axis`:
    linear when enlarging, area averaging when shrinking)."""
    if maps.shape[1:] == tuple(shape):
        return maps
    rows = resample_axis(maps.astype(np.float32, copy=False), axis_taps(maps.shape[1], shape[0]), 1)
    return resample_axis(rows, axis_taps(maps.shape[2], shape[1]), 2)


@dataclass(frozen=True)
class AxisTaps:
    """How one axis of ``n_in`` pixels is resampled to ``len(index)`` pixels.

    Output pixel ``j`` is ``sum_k weight[j, k] * input[index[j, k]]`` (``(n_out, K)`` arrays;
    unused taps have weight 0 and a valid index). Rows of the output depend on these global
    taps only, never on which window of the input was read.
    """

    n_in: int
    index: np.ndarray  # (n_out, K) int64
    weight: np.ndarray  # (n_out, K) float32

    @property
    def n_out(self) -> int:
        return self.index.shape[0]

    def span(self, start: int, stop: int) -> tuple[int, int]:
        """Input pixels ``[lo, hi)`` that outputs ``[start, stop)`` read."""
        block = self.index[start:stop]
        return int(block.min()), int(block.max()) + 1


@lru_cache(maxsize=16)
def axis_taps(n_in: int, n_out: int) -> AxisTaps:
    """The taps resampling ``n_in`` pixels to ``n_out`` (cached; arrays read-only).

    With ``scale = n_in / n_out`` (the axis's own ratio, as OpenCV takes it):

    - enlarging (``n_out >= n_in``): linear between the two input pixels around the source
      position ``(j + 0.5) * scale - 0.5``, the edge pixel repeated past the border
      (``cv2.INTER_LINEAR``'s mapping);
    - shrinking: the mean of the input over ``[j * scale, (j + 1) * scale)``, each pixel
      weighted by the length it overlaps (``cv2.INTER_AREA``'s definition): small bright spots
      are averaged, never aliased.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    scale = n_in / n_out
    j = np.arange(n_out, dtype=np.float64)
    if n_out >= n_in:
        src = (j + 0.5) * scale - 0.5
        i0 = np.floor(src)
        t = src - i0
        t[src < 0] = 0.0
        i0 = np.clip(i0, 0, n_in - 1).astype(np.int64)
        t[i0 >= n_in - 1] = 0.0
        index = np.stack([i0, np.minimum(i0 + 1, n_in - 1)], axis=1)
        weight = np.stack([1.0 - t, t], axis=1)
    else:
        start, stop = j * scale, (j + 1) * scale
        first = np.floor(start).astype(np.int64)
        taps = math.ceil(scale) + 1
        index = first[:, None] + np.arange(taps)[None, :]
        overlap = np.minimum(index + 1, stop[:, None]) - np.maximum(index, start[:, None])
        weight = np.clip(overlap, 0.0, None)
        weight[index >= n_in] = 0.0
        weight /= weight.sum(axis=1, keepdims=True)
        index = np.minimum(index, n_in - 1)
    index.setflags(write=False)
    weight = weight.astype(np.float32)
    weight.setflags(write=False)
    return AxisTaps(n_in, index, weight)


def resample_axis(
    array: np.ndarray, taps: AxisTaps, axis: int, start: int = 0, stop: int | None = None, offset: int = 0
) -> np.ndarray:
    """Outputs ``[start, stop)`` of resampling ``array`` along ``axis`` with ``taps``, float32.

    ``array`` holds input pixels ``[offset, offset + array.shape[axis])`` of that axis (a window;
    it must include ``taps.span(start, stop)``). Each output is the same float32 sum, in the same
    order, whatever the window: a window's rows equal the whole image's, bit for bit.
    """
    stop = taps.n_out if stop is None else stop
    index = taps.index[start:stop] - offset
    weight = taps.weight[start:stop]
    if index.size and (index.min() < 0 or index.max() >= array.shape[axis]):
        raise ValueError(f"the window does not hold input pixels {taps.span(start, stop)} of axis {axis}")
    shape = [1] * array.ndim
    shape[axis] = stop - start
    source = array.astype(np.float32, copy=False)
    out = np.take(source, index[:, 0], axis=axis)
    out *= weight[:, 0].reshape(shape)
    for k in range(1, index.shape[1]):
        term = np.take(source, index[:, k], axis=axis)
        term *= weight[:, k].reshape(shape)
        out += term
    return out


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An ``(H, W)`` / ``(H, W, C)`` image resampled to ``shape`` with :func:`resample_axis`, in its
    own dtype (:func:`round_to`): what ``pipeline.predict_scaled`` gives the model."""
    if image.shape[:2] == tuple(shape):
        return image
    rows = resample_axis(image, axis_taps(image.shape[0], shape[0]), 0)
    return round_to(resample_axis(rows, axis_taps(image.shape[1], shape[1]), 1), image.dtype)


def round_to(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Resampled float32 ``array`` back in ``dtype``: integers rounded half to even and clipped to
    the type's range (as ``cv2.resize`` rounds), floats kept as float32."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return array.astype(np.float32, copy=False)
    info = np.iinfo(dtype)
    np.rint(array, out=array)
    np.clip(array, info.min, info.max, out=array)
    return array.astype(dtype)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int32 ``(h, w)`` labels → ``(H, W)`` by nearest neighbour (ids kept, never blended).

    An object too small to hit any pixel centre of a coarser grid disappears; the callers
    renumber so ids stay 1..N without gaps.
    """
    if labels.shape == tuple(shape):
        return labels
    rows = nearest_index(labels.shape[0], shape[0])
    cols = nearest_index(labels.shape[1], shape[1])
    return labels[rows[:, None], cols[None, :]]


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out,)`` int64: the input pixel whose centre is nearest each output pixel's centre.

    Nearest neighbour by index arithmetic: exact for int32 ids, which OpenCV's resize would not
    take, and global (a window of output rows reads the same input rows as the whole).
    """
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def first_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, first)``: the sorted distinct values of ``labels`` (0 included where present) and the
    raster index of each one's first pixel, as ``np.unique(labels.reshape(-1), return_index=True)``.

    A value's first pixel starts a run of equal pixels in raster order, so only the run starts
    are sorted: a few per object and row instead of every pixel (the full sort was a tenth of
    the calling thread's work in a 4096² labels request).
    """
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.unique(flat, return_index=True)
    starts = np.flatnonzero(flat[1:] != flat[:-1])
    starts += 1
    starts = np.concatenate([np.zeros(1, starts.dtype), starts])
    ids, first_start = np.unique(flat[starts], return_index=True)
    return ids, starts[first_start]


def renumber(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in raster order of each object's first pixel (0 stays 0).

    The same numbering ``objects.label_objects`` gives, so ids do not depend on the scale
    the objects were found at.
    """
    ids, first = first_pixels(labels)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]
