"""The bundled int8 model against the bundled fp32 one, through the service's own pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export.data import SynthConfig, synth_nuclei
from model_export.evaluate import predict_labels
from service.engine import Engine, int8_path
from service.objects import params_for_model

MODELS = Path(__file__).resolve().parents[2] / "models"
FP32 = MODELS / "nuclei-unet.onnx"


@pytest.fixture(scope="module")
def engines() -> tuple[Engine, Engine]:
    load = lambda path: Engine.load(path, providers=["CPUExecutionProvider"], intra_op_threads=2)  # noqa: E731
    return load(FP32), load(int8_path(FP32))


def test_the_int8_copy_describes_the_same_model(engines: tuple[Engine, Engine]) -> None:
    fp32, int8 = engines
    assert int8.metadata.precision == "int8" and fp32.metadata.precision == "fp32"
    assert int8.metadata.model_copy(update={"precision": "fp32", "quantization": {}}) == fp32.metadata
    assert int8.metadata.quantization["source"]["file"] == FP32.name
    # Made from the bundled fp32 file as it is now (a stale copy would be refused).
    served = Engine.load_with_precision(FP32, "int8", ["CPUExecutionProvider"], intra_op_threads=1)
    assert served.path == int8_path(FP32)


@pytest.mark.parametrize("seed", [6_000_001, 6_000_002])
def test_int8_masks_and_objects_agree_with_fp32_on_synthetic_nuclei(
    engines: tuple[Engine, Engine], seed: int
) -> None:
    fp32, int8 = engines
    image, _ = synth_nuclei(seed, 384, SynthConfig(radius=(6.0, 14.0)))
    params = params_for_model(fp32.metadata)
    # The same diameter for both, so the masks differ by the weights only (each model's own
    # estimate is compared on the DSB validation split in the model card).
    a = predict_labels(fp32, image, params)
    b = predict_labels(int8, image, params, diameter=a.diameter)
    assert a.labels is not None and b.labels is not None
    assert float(np.mean(a.foreground == b.foreground)) >= 0.99  # the shipping bar
    count_a, count_b = int(a.labels.max()), int(b.labels.max())
    assert count_a > 5 and abs(count_a - count_b) <= max(1, count_a // 20)
