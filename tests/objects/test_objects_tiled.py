"""Objects do not depend on tiling: found on the stitched map, with the real default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export.object_metrics import match_ious
from service.engine import Engine
from service.objects import label_prediction, params_for_model
from service.pipeline import surroundings
from service.postprocess import foreground_probability
from service.segment import predict

REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"
pytestmark = pytest.mark.skipif(not REAL_MODEL.is_file(), reason=f"{REAL_MODEL} is missing")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(REAL_MODEL, providers=["CPUExecutionProvider"])


#: Both ways the bundled model splits nuclei (it has the centre output).
SPLITS = ["center", "distance"]


def _labels(engine: Engine, image: np.ndarray, tile_size: int, split: str) -> tuple[np.ndarray, int]:
    md = engine.metadata
    prediction = predict(image, engine.run, md, tile_size=tile_size, batch_size=4)
    mask = foreground_probability(prediction, md) > md.threshold
    params = params_for_model(md, split)
    around = surroundings(prediction, mask, params)  # the model's contrast cut reads its input
    return label_prediction(mask, prediction.probabilities, params, around), prediction.tiles


def _nuclei_image(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    """Bright discs on a dim noisy background, 16-bit, like a fluorescence micrograph."""
    rng = np.random.default_rng(7)
    rows, cols = np.indices(shape)
    image = 200 + rng.normal(0, 20, shape)
    for r, c in centres:
        inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        image[inside] += 3000
    return np.clip(image, 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("tile_size", [96, 128, 160])
def test_a_nucleus_on_a_tile_border_is_one_object(engine: Engine, tile_size: int, split: str) -> None:
    # Nuclei straddling many candidate tile borders (every 16 px multiple is one).
    centres = [(40 + 48 * i, 64 + 32 * i) for i in range(6)]
    image = _nuclei_image((320, 400), centres, radius=11)
    labels, tiles = _labels(engine, image, tile_size, split)
    assert tiles > 1
    ids = [int(labels[r, c]) for r, c in centres]
    assert all(ids) and len(set(ids)) == len(centres)
    assert labels.max() == len(centres)


@pytest.mark.parametrize("split", SPLITS)
def test_tiled_objects_match_a_single_pass(engine: Engine, split: str) -> None:
    from model_export.data import synth_nuclei

    image, _ = synth_nuclei(seed=11, size=(400, 520))
    single, tiles = _labels(engine, image, 1024, split)
    assert tiles == 1
    for tile_size in (128, 256):
        tiled, tiles = _labels(engine, image, tile_size, split)
        assert tiles > 1
        iou = match_ious(single, tiled)
        matched = (iou >= 0.9).any(axis=1).mean()
        assert matched >= 0.99, f"tile {tile_size}: {matched:.4f} of {single.max()} objects matched"
