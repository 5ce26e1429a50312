"""Input preparation shared by training, evaluation and the service.

One normalisation, used identically everywhere: per-image, per-channel percentile
scaling so that 8-bit, 16-bit and float inputs of the same scene give the same
network input. Training (``model_export.data``) and serving (``service.segment``)
both import these functions; nothing else may re-implement them.
"""

from __future__ import annotations

import numpy as np

from service.model_metadata import Normalization

#: Above this many pixels per channel, float images are percentiled on a regular
#: subsample (integer images always use an exact histogram, which is fast).
_FLOAT_PERCENTILE_SAMPLE = 1 << 22
#: Pixels per histogram chunk of an integer channel.
_HISTOGRAM_CHUNK = 1 << 22


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert a decoded image to ``channels`` channels.

    ``image`` is ``(H, W)`` or ``(H, W, C)`` with C in 1..4, channel order RGB(A)
    (alpha is dropped). Returns ``(H, W)`` when ``channels == 1`` else ``(H, W, channels)``;
    the dtype is kept. Colour → gray uses ITU-R BT.601 luminance weights, which after
    percentile scaling equals the single channel for pseudo-coloured (one-hue) images.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image with up to 4 channels, got shape {image.shape}")
    if channels == 1:
        if image.ndim == 2:
            return image
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gray = image.astype(np.float32) @ weights
        if np.issubdtype(image.dtype, np.integer):
            gray = np.rint(gray).astype(image.dtype)
        return gray
    if image.ndim == 2:
        return np.repeat(image[:, :, None], channels, axis=2)
    if image.shape[2] == channels:
        return image
    raise ValueError(f"cannot convert a {image.shape[2]}-channel image to {channels} channels")


def channel_percentiles(channel: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low``-th and ``high``-th percentiles of one ``(H, W)`` channel.

    Integer images use an exact histogram ('lower' interpolation): O(pixels), no sort,
    so an 8192² uint16 image costs tens of milliseconds instead of seconds.
    """
    flat = channel.reshape(-1)
    if flat.size == 0:
        raise ValueError("cannot normalise an empty image")
    if flat.dtype in (np.uint8, np.uint16):
        # in chunks: bincount casts its input to int64, 4× a 16-bit image's size at once
        counts = np.zeros(256 if flat.dtype == np.uint8 else 65536, np.int64)
        for start in range(0, flat.size, _HISTOGRAM_CHUNK):
            part = np.bincount(flat[start : start + _HISTOGRAM_CHUNK], minlength=counts.size)
            counts[: part.size] += part
        return histogram_percentiles(counts, low, high)
    if flat.size > _FLOAT_PERCENTILE_SAMPLE:
        flat = flat[:: float_sample_step(flat.size)]
    return sample_percentiles(flat, low, high)


def grid_subsample(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """Every ``step``-th row and column of ``(H, W)``/``(H, W, C)`` ``image``, a view of at most about
    ``max_pixels`` pixels: image statistics that need not see every pixel, cheap on any size."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / max_pixels)))
    return image[::step, ::step]


def histogram_percentiles(counts: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """:func:`channel_percentiles` of an integer channel from its histogram (``counts[v]``: pixels
    of value ``v``), so a channel read window by window gives the same limits as whole."""
    cumulative = np.cumsum(counts)
    n = cumulative[-1]
    ranks = [int(np.floor(q / 100.0 * (n - 1))) for q in (low, high)]
    lo, hi = (int(np.searchsorted(cumulative, r, side="right")) for r in ranks)
    return float(lo), float(hi)


def float_sample_step(size: int) -> int:
    """Stride of the raster-order subsample a float channel of ``size`` pixels is percentiled on."""
    return 1 if size <= _FLOAT_PERCENTILE_SAMPLE else size // _FLOAT_PERCENTILE_SAMPLE


def sample_percentiles(flat: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """:func:`channel_percentiles` of a float channel's subsample (non-finite values ignored)."""
    flat = flat.astype(np.float64)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(flat, [low, high], method="lower")
    return float(lo), float(hi)


def _planes(image: np.ndarray) -> list[np.ndarray]:
    return [image] if image.ndim == 2 else [image[:, :, c] for c in range(image.shape[2])]


def percentile_limits(image: np.ndarray, norm: Normalization) -> list[tuple[float, float]]:
    """Per channel of an ``(H, W)`` / ``(H, W, C)`` image: the values :func:`normalize` maps to 0 and 1."""
    if norm.method != "percentile":
        raise ValueError(f"unsupported normalisation method {norm.method!r}")
    return [channel_percentiles(plane, norm.low, norm.high) for plane in _planes(image)]


def normalize(
    image: np.ndarray, norm: Normalization, limits: list[tuple[float, float]] | None = None
) -> np.ndarray:
    """Percentile-normalise an ``(H, W)`` or ``(H, W, C)`` image to float32 ``(C, H, W)``.

    Each channel maps its ``norm.low``-th percentile to 0 and ``norm.high``-th to 1,
    then is clipped to ``norm.clip`` (bright objects stay distinguishable above 1,
    lone hot pixels cannot blow up the input). A flat channel becomes all zeros.
    Non-finite values (NaN/inf in float TIFFs) become 0 before scaling.

    ``limits``: the channels' ``(low, high)`` values from :func:`percentile_limits` of a
    larger image this one is a window of, so the window is scaled as the whole image is.
    """
    if limits is None:
        limits = percentile_limits(image, norm)
    planes = _planes(image)
    out = np.empty((len(planes), *planes[0].shape), dtype=np.float32)
    for c, (plane, (lo, hi)) in enumerate(zip(planes, limits, strict=True)):
        target = out[c]
        np.copyto(target, plane, casting="unsafe")
        if not np.issubdtype(plane.dtype, np.integer):
            np.nan_to_num(target, copy=False, nan=lo, posinf=hi, neginf=lo)
        if hi - lo <= 1e-12:
            target.fill(0.0)
            continue
        target -= np.float32(lo)
        target *= np.float32(1.0 / (hi - lo))
        np.clip(target, norm.clip[0], norm.clip[1], out=target)
    return out


def prepare(image: np.ndarray, channels: int, norm: Normalization) -> np.ndarray:
    """Decoded image → the network's input layout: float32 ``(C, H, W)``."""
    return normalize(to_channels(image, channels), norm)
