"""Instance matching metrics on hand-made label images with known answers."""

import numpy as np
import pytest

from model_export.object_metrics import match_ious, score_objects


def _labels(shape, boxes):
    out = np.zeros(shape, np.int32)
    for label, (r0, r1, c0, c1) in boxes.items():
        out[r0:r1, c0:c1] = label
    return out


def test_perfect_prediction_scores_one_whatever_the_ids():
    true = _labels((50, 50), {1: (0, 10, 0, 10), 2: (20, 30, 20, 30)})
    pred = _labels((50, 50), {7: (0, 10, 0, 10), 3: (20, 30, 20, 30)})
    scores = score_objects(true, pred)
    assert (scores.precision, scores.recall, scores.f1, scores.mean_f1, scores.mean_ap) == (1, 1, 1, 1, 1)
    assert scores.count_error == 0


def test_merged_pair_counts_one_match_and_one_miss():
    true = _labels((40, 60), {1: (0, 20, 0, 20), 2: (0, 20, 20, 40)})
    pred = _labels((40, 60), {1: (0, 20, 0, 40)})  # both nuclei as one object: IoU 0.5 exactly
    scores = score_objects(true, pred)
    assert scores.f1 == 0.0  # IoU must exceed 0.5
    pred_shifted = _labels((40, 60), {1: (0, 20, 0, 22), 2: (0, 20, 22, 40), 3: (30, 40, 50, 60)})
    scores = score_objects(true, pred_shifted)
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == 1.0
    assert scores.f1 == pytest.approx(0.8) and scores.count_error == 1


def test_iou_matrix_values():
    true = _labels((10, 10), {1: (0, 4, 0, 4)})
    pred = _labels((10, 10), {1: (0, 4, 0, 2), 2: (5, 6, 5, 6)})
    iou = match_ious(true, pred)
    assert iou.shape == (1, 2)
    assert iou[0, 0] == pytest.approx(0.5) and iou[0, 1] == 0


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    assert score_objects(empty, empty).f1 == 1.0
    one = _labels((8, 8), {1: (0, 3, 0, 3)})
    assert score_objects(one, empty).recall == 0.0
    assert score_objects(empty, one).precision == 0.0
    with pytest.raises(ValueError, match="shape"):
        score_objects(one, np.zeros((4, 4), np.int32))
