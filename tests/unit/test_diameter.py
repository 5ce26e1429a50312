"""The nucleus-diameter estimate with the bundled model, on synthetic nuclei of known size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model_export.data import SynthConfig, synth_nuclei
from model_export.dsb import median_diameter
from service.diameter import PROBE_SIZE, estimate_diameter
from service.engine import Engine
from service.objects import params_for_model

REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"


@pytest.fixture(scope="module")
def model() -> Engine:
    return Engine.load(REAL_MODEL, providers=["CPUExecutionProvider"], intra_op_threads=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "radius",
    [
        pytest.param(
            4,
            marks=pytest.mark.xfail(
                strict=True,
                reason="known limit of model 2.0.0: synthetic nuclei of radius 4 px, mostly touching, "
                "come out merged at every scale and the estimate lands ×1.3 high (on the real DSB "
                "validation images the median error is ×1.04); see the model card",
            ),
        ),
        15,
        40,
    ],
)
def test_estimate_is_within_20_percent_of_the_true_diameter(model: Engine, radius: int) -> None:
    config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
    size = max(192, 14 * radius)  # room for a few dozen nuclei
    errors = []
    for k in range(3):
        image, truth = synth_nuclei(9_000_000 + 100 * radius + k, size, config)
        estimate = estimate_diameter(image, model.run, model.metadata, params_for_model(model.metadata))
        assert estimate.diameter is not None
        errors.append(abs(math.log(estimate.diameter / median_diameter(truth))))
    assert math.exp(float(np.median(errors))) < 1.2, f"median error ×{math.exp(float(np.median(errors))):.2f}"


def test_the_probes_stay_bounded_on_a_large_image(model: Engine) -> None:
    shapes: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return model.run(batch)

    image, _ = synth_nuclei(5, (1500, 1300), SynthConfig(radius=(10.0, 10.0)))
    estimate_diameter(image, infer, model.metadata, params_for_model(model.metadata))
    assert shapes and all(max(s[2:]) <= PROBE_SIZE + 16 for s in shapes)  # never the whole image


def test_an_empty_image_has_no_diameter(model: Engine) -> None:
    flat = np.full((300, 300), 100, np.uint16)
    estimate = estimate_diameter(flat, model.run, model.metadata, params_for_model(model.metadata))
    assert estimate.diameter is None
