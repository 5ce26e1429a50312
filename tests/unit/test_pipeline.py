"""service.pipeline: the image brought to the model's nucleus scale and the outputs back."""

from __future__ import annotations

import numpy as np
import pytest

from service import pipeline
from service.engine import Engine
from service.objects import ObjectParams
from tests.models import write_conv_model
from tests.unit.test_segment import synthetic_nuclei

CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> Engine:
    """The conv test model, told it was trained at nuclei 20 px across."""
    path = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", nucleus_diameter=20.0)
    return Engine.load(path, providers=CPU, intra_op_threads=1)


@pytest.fixture(scope="module")
def unscaled(tmp_path_factory) -> Engine:
    return Engine.load(write_conv_model(tmp_path_factory.mktemp("m") / "conv.onnx"), providers=CPU)


def never_called(batch: np.ndarray) -> np.ndarray:
    raise AssertionError("the model must not run when the diameter is given")


def test_a_requested_diameter_sets_the_factor_without_probing(scaled) -> None:
    image = synthetic_nuclei(120, 90)
    choice = pipeline.choose_scale(image, never_called, scaled.metadata, 40.0, 10**7)
    assert (choice.source, choice.factor, choice.diameter) == ("request", 0.5, 40.0)


def test_an_enlargement_past_the_pixel_limit_is_capped_with_a_warning(scaled) -> None:
    image = synthetic_nuclei(100, 100)
    choice = pipeline.choose_scale(image, never_called, scaled.metadata, 5.0, 40_000)
    assert choice.factor == pytest.approx(2.0)  # sqrt(40 000 / 10 000), not the ×4 the diameter asks
    assert "pixel limit" in choice.warning


def test_a_model_without_a_diameter_segments_at_the_image_scale(unscaled) -> None:
    image = synthetic_nuclei(64, 64)
    choice = pipeline.choose_scale(image, never_called, unscaled.metadata, None, 10**7)
    assert (choice.source, choice.factor) == ("model-scale", 1.0)
    with pytest.raises(ValueError, match="diameter"):
        pipeline.choose_scale(image, never_called, unscaled.metadata, 30.0, 10**7)


def test_the_estimate_runs_the_model_and_reports_its_source(scaled) -> None:
    calls: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return scaled.run(batch)

    image = synthetic_nuclei(300, 260, seed=4)
    choice = pipeline.choose_scale(image, infer, scaled.metadata, None, 10**7, batch_size=2)
    assert calls, "the estimate must probe the model"
    # bounded probe windows, at most the caller's batch of them at once
    assert all(shape[0] <= 2 and max(shape[2:]) <= 256 + 2 for shape in calls)
    assert choice.source in ("estimated", "model-scale")


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_outputs_come_back_on_the_input_grid_with_consistent_labels(scaled, factor: float) -> None:
    image = synthetic_nuclei(150, 110, seed=2)
    choice = pipeline.ScaleChoice(40.0 if factor < 1 else 10.0, "request", factor)
    prediction = pipeline.predict_scaled(image, choice, scaled.run, scaled.metadata)
    assert prediction.probabilities.shape[1:] == (round(150 * factor), round(110 * factor))
    grid = pipeline.on_input_grid(prediction, scaled.metadata, image.shape, 0.5, ObjectParams())
    assert grid.probability.shape == grid.mask.shape == grid.labels.shape == image.shape
    ids = np.unique(grid.labels[grid.labels > 0])
    assert len(ids) > 0 and np.array_equal(ids, np.arange(1, len(ids) + 1))  # 1..N, no gaps
    assert set(np.unique(grid.mask)) <= {0, 255}


def test_tiling_still_does_not_change_the_result_after_resizing(scaled) -> None:
    image = synthetic_nuclei(300, 240, seed=5)
    choice = pipeline.ScaleChoice(10.0, "request", 2.0)
    tiled = pipeline.predict_scaled(image, choice, scaled.run, scaled.metadata, tile_size=96)
    single = pipeline.predict_scaled(image, choice, scaled.run, scaled.metadata, tile_size=600)
    assert tiled.tiles > 1 and single.tiles == 1
    a = pipeline.on_input_grid(tiled, scaled.metadata, image.shape, 0.5, ObjectParams())
    b = pipeline.on_input_grid(single, scaled.metadata, image.shape, 0.5, ObjectParams())
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)
