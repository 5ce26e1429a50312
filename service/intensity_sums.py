"""Intensity sums over objects' pixels that leave non-finite pixels out.

Every table of objects (2-D: ``service.objects``; a slide's, band by band: ``service.object_stream``;
3-D: ``service.zstack``) gives each object's mean and integrated intensity. A float image's NaN or
inf pixels (a ratio image, NaN padding after registration) would make them NaN, which neither CSV
readers nor JSON take (``NaN`` is no JSON): they are left out, and a mean over no finite pixel is
None (an empty cell, JSON null).
"""

from __future__ import annotations

import numpy as np


def finite_sums(ids: np.ndarray, values: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-id sums of ``values`` over its finite ones (float64, ``length`` ids), and how many of
    them each id has — None when all are finite (every pixel counts: the area). A float image's
    NaN or inf pixels (a ratio image, NaN padding after registration) are left out of intensities
    instead of making them NaN, which no table or JSON reader takes."""
    weights = values.astype(np.float64)
    finite = None if values.dtype.kind in "biu" else np.isfinite(weights)
    if finite is None or finite.all():
        return np.bincount(ids, weights=weights, minlength=length), None
    kept = ids[finite]
    return np.bincount(kept, weights=weights[finite], minlength=length), np.bincount(kept, minlength=length)


def mean_of(total: float, count: float, digits: int = 4) -> float | None:
    """``total / count`` rounded to ``digits`` as the tables give intensities; None without a pixel
    to count."""
    return round(float(total) / float(count), digits) if count else None


def intensity_columns(
    columns: tuple[str, str], total: float, count: float, digits: int = 4
) -> list[tuple[str, float | None]]:
    """An object's mean and integrated intensity as ``(column, value)`` pairs, from the sum over its
    finite pixels (``total``) and their ``count``: what every table writes per channel measured."""
    mean_column, sum_column = columns
    return [(mean_column, mean_of(total, count, digits)), (sum_column, round(float(total), digits))]


def corrected_columns(
    columns: tuple[str, str], total: float, count: float, background: float, digits: int = 4
) -> list[tuple[str, float | None]]:
    """An object's mean and integrated intensity less its local ``background`` (NaN: none could be
    measured, and both are None): the mean less it, and the sum less ``count`` × it over the same
    finite pixels (corrected total fluorescence). A mean over no pixel stays None."""
    mean_column, sum_column = columns
    if not np.isfinite(background):
        return [(mean_column, None), (sum_column, None)]
    mean = round(float(total) / float(count) - background, digits) if count else None
    return [(mean_column, mean), (sum_column, round(float(total) - float(count) * background, digits))]
