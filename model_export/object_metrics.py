"""Instance-level metrics: one-to-one matching of predicted and true objects by IoU.

Pure numpy; used by ``evaluate`` and the model card. For IoU thresholds ≥ 0.5 a
true object can overlap at most one prediction by more than half of their union,
so matching is unique without an assignment solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


@dataclass(frozen=True)
class ObjectScores:
    true_objects: int
    predicted_objects: int
    precision: float  # at IoU 0.5
    recall: float  # at IoU 0.5
    f1: float  # at IoU 0.5
    mean_f1: float  # F1 averaged over IoU 0.5, 0.55, ..., 0.95
    mean_ap: float  # Data Science Bowl 2018 score: mean of TP / (TP + FP + FN) over the same IoUs
    count_error: int  # predicted - true


def match_ious(true_labels: np.ndarray, predicted_labels: np.ndarray) -> np.ndarray:
    """IoU of every (true, predicted) pair that overlaps: ``(n_true, n_pred)`` float64 dense matrix.

    Labels are ``(H, W)`` int arrays, 0 = background; ids need not be consecutive.
    """
    if true_labels.shape != predicted_labels.shape:
        raise ValueError(f"label images differ in shape: {true_labels.shape} vs {predicted_labels.shape}")
    _, true_ids = np.unique(true_labels, return_inverse=True)
    _, pred_ids = np.unique(predicted_labels, return_inverse=True)
    true_ids = true_ids.reshape(-1)
    pred_ids = pred_ids.reshape(-1)
    # Index 0 is background only when a background pixel exists; shift so 0 means background.
    if true_labels.min() > 0:
        true_ids = true_ids + 1
    if predicted_labels.min() > 0:
        pred_ids = pred_ids + 1
    n_true, n_pred = int(true_ids.max()) + 1, int(pred_ids.max()) + 1
    joint = np.bincount(true_ids * n_pred + pred_ids, minlength=n_true * n_pred).reshape(n_true, n_pred)
    intersection = joint[1:, 1:].astype(np.float64)
    true_area = joint[1:, :].sum(axis=1, keepdims=True)
    pred_area = joint[:, 1:].sum(axis=0, keepdims=True)
    union = true_area + pred_area - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def score_objects(true_labels: np.ndarray, predicted_labels: np.ndarray) -> ObjectScores:
    """Precision/recall/F1 at IoU 0.5, mean F1 and DSB mean AP over IoU 0.5–0.95, count error."""
    iou = match_ious(true_labels, predicted_labels)
    n_true, n_pred = iou.shape
    f1s, aps = [], []
    precision = recall = f1 = 0.0
    for threshold in IOU_THRESHOLDS:
        tp = int((iou > threshold).sum())  # unique matches for threshold >= 0.5
        fp, fn = n_pred - tp, n_true - tp
        f1_t = 2 * tp / (2 * tp + fp + fn) if (n_true + n_pred) else 1.0
        f1s.append(f1_t)
        aps.append(tp / (tp + fp + fn) if (tp + fp + fn) else 1.0)
        if threshold == 0.5:
            precision = tp / n_pred if n_pred else float(n_true == 0)
            recall = tp / n_true if n_true else float(n_pred == 0)
            f1 = f1_t
    return ObjectScores(
        true_objects=n_true,
        predicted_objects=n_pred,
        precision=precision,
        recall=recall,
        f1=f1,
        mean_f1=float(np.mean(f1s)),
        mean_ap=float(np.mean(aps)),
        count_error=n_pred - n_true,
    )
