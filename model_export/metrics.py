"""Foreground overlap metrics (numpy only): shared by training and evaluation."""

from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean ``(H, W)`` masks; both 1.0 when both masks are empty."""
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum()) + float(truth.sum())
    union = total - inter
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)
