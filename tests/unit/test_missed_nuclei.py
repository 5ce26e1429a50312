"""benchmarks/missed_nuclei.py sorts each labelled nucleus by what the objects made of it: found,
split, merged with a neighbour, too loose or tight, or not marked."""

from __future__ import annotations

import numpy as np

from tests.benchmark_scripts import load_benchmark


def _box(labels: np.ndarray, y: int, x: int, value: int, size: int = 10) -> None:
    labels[y : y + size, x : x + size] = value


def test_each_kind_of_miss_is_told_apart() -> None:
    missed = load_benchmark("missed_nuclei")
    truth = np.zeros((60, 120), np.int32)
    predicted = np.zeros_like(truth)
    _box(truth, 5, 5, 1)  # found: the same box
    _box(predicted, 5, 5, 1)
    _box(truth, 5, 30, 2)  # split: two halves
    predicted[5:15, 30:35], predicted[5:15, 35:40] = 2, 3
    _box(truth, 5, 60, 3)  # merged with nucleus 4 beside it: one object over both
    _box(truth, 5, 70, 4)
    predicted[5:15, 60:80] = 4
    _box(truth, 30, 5, 5)  # loose: one object covering it, three times its size
    predicted[28:45, 3:20] = 5
    _box(truth, 30, 60, 6)  # unmarked: only a corner touched
    predicted[30:33, 60:63] = 6
    counts = missed.miss_kinds(truth, predicted)
    assert counts == {"found": 1, "split": 1, "merged": 2, "loose": 1, "unmarked": 1}
    # no objects at all: every nucleus unmarked; no nuclei: nothing to count
    assert missed.miss_kinds(truth, np.zeros_like(truth))["unmarked"] == 6
    assert sum(missed.miss_kinds(np.zeros_like(truth), predicted).values()) == 0
