"""benchmarks/shrink_floor.py asks the service to shrink large nuclei only down to a floor × the
model's diameter, by the ``diameter=`` it sends; enlargement and floor 1 stay the service's own."""

from __future__ import annotations

import numpy as np
import pytest

from service.rescale import factor_for
from tests.benchmark_scripts import load_benchmark

MODEL_DIAMETER = 20.0


@pytest.mark.parametrize("estimate", [30.0, 60.0, 140.0])
@pytest.mark.parametrize("floor", [1.25, 1.5])
def test_large_nuclei_come_out_at_the_floor(estimate: float, floor: float) -> None:
    floor_diameter = load_benchmark("shrink_floor").floor_diameter
    diameter = floor_diameter(estimate, MODEL_DIAMETER, floor)
    assert diameter is not None
    model_px = estimate * factor_for(diameter, MODEL_DIAMETER)
    if estimate > floor * MODEL_DIAMETER:
        assert model_px == pytest.approx(floor * MODEL_DIAMETER)
    else:  # between the model's diameter and the floor: not resized at all
        assert factor_for(diameter, MODEL_DIAMETER) == 1.0


def test_floor_one_small_nuclei_and_no_estimate_are_left_to_the_service() -> None:
    floor_diameter = load_benchmark("shrink_floor").floor_diameter
    assert floor_diameter(60.0, MODEL_DIAMETER, 1.0) is None  # floor 1 is the service
    assert floor_diameter(10.0, MODEL_DIAMETER, 1.25) is None  # enlarged as the service does
    assert floor_diameter(21.0, MODEL_DIAMETER, 1.25) is None  # within the skip ratio: not resized
    assert floor_diameter(None, MODEL_DIAMETER, 1.25) is None
    # Just past the skip ratio but under the floor: sent as the model's own diameter (factor 1).
    assert floor_diameter(23.0, MODEL_DIAMETER, 1.25) == MODEL_DIAMETER


def test_touching_counts_whole_objects_that_share_a_boundary() -> None:
    touching_fraction = load_benchmark("shrink_floor").touching_fraction
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:6] = 1
    labels[2:6, 6:10] = 2  # touches 1 (4-neighbours)
    labels[10:14, 2:6] = 3  # alone
    labels[10:14, 7:11] = 4  # one column of background between it and 3: not touching
    labels[0:5, 25:30] = 5  # cut by the edge: not counted itself, but 6 touches it
    labels[5:9, 25:29] = 6
    assert touching_fraction(labels) == pytest.approx(3 / 5)  # 1, 2 and 6 of the whole 1, 2, 3, 4, 6
    diagonal = np.zeros((10, 10), np.int32)
    diagonal[2:4, 2:4], diagonal[4:6, 4:6] = 1, 2  # corners only
    assert touching_fraction(diagonal) == 0.0
    assert touching_fraction(np.zeros((5, 5), np.int32)) == 0.0
