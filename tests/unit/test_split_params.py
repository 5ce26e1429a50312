"""benchmarks/split_params.py: one prediction per image, objects made once per split setting, scored
as the service's own labels would be."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_export.data import SynthConfig, synth_nuclei
from model_export.object_metrics import score_objects
from service.api import Segmenter
from service.engine import Engine
from service.settings import Settings
from tests.benchmark_scripts import load_benchmark

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"

split_params = load_benchmark("split_params")


def test_the_models_own_setting_scores_what_the_service_labels_score() -> None:
    # the bundled model on crowded synthetic nuclei: touching ones, so the settings matter
    engine = Engine.load(BUNDLED, providers=["CPUExecutionProvider"], intra_op_threads=1)
    image, truth = synth_nuclei(7, 256, SynthConfig(coverage=(0.45, 0.5)))
    truth = truth.astype(np.int32)
    own = (engine.metadata.objects["seed_prominence"], engine.metadata.objects["smoothing_sigma"])
    grid = split_params.settings([0.1, own[0], 3.0], [own[1], 3.0])
    assert len(grid) == 6 and own in grid
    scores = split_params.scores_per_setting(engine, image, truth, grid)
    assert set(scores) == set(grid)
    with Segmenter(engine, Settings(providers=["CPUExecutionProvider"])) as segmenter:
        labels = segmenter.segment(image, outputs=("labels",), split="distance").labels
    expected = score_objects(truth, labels)
    assert scores[own]["f1"] == expected.f1 and scores[own]["ap"] == expected.mean_ap
    assert scores[own]["objects"] == int(labels.max())
    # a far larger prominence and smoothing merge touching nuclei
    assert scores[(3.0, 3.0)]["objects"] < scores[own]["objects"]


def test_the_summary_means_scores_and_sums_counts() -> None:
    key = (0.25, 1.0)
    rows = [
        {key: {"f1": 0.5, "precision": 1.0, "recall": 0.25, "ap": 0.1, "objects": 3, "false": 1}},
        {key: {"f1": 1.0, "precision": 0.5, "recall": 0.75, "ap": 0.3, "objects": 4, "false": 0}},
    ]
    assert split_params.summary(rows, [key]) == {
        key: {"f1": 0.75, "precision": 0.75, "recall": 0.5, "ap": 0.2, "objects": 7, "false": 1}
    }
