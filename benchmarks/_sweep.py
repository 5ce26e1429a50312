"""Object settings swept on one prediction per image (``snr_cut.py``, ``split_params.py``).

Each image is segmented once as the service does it (estimated scale, the model's input kept where a
variant's contrast cut needs it); its objects are then made once per variant of the object settings
(``objects.label_prediction``), brought back to the input grid and scored as ``evaluate`` scores.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
from _common import BUNDLED_MODEL

from model_export.data import SynthConfig, synth_nuclei
from model_export.object_metrics import match_ious, score_objects
from service import objects, pipeline, rescale
from service.engine import Engine
from service.objects import ObjectParams

Key = TypeVar("Key")


def add_dsb_options(parser: argparse.ArgumentParser, every: int) -> None:
    """The options every sweep takes: the model, the DSB images and the near-empty fields."""
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "tune", "val"), default="train")
    parser.add_argument("--every", type=int, default=every, help="every n-th image of the subset")
    parser.add_argument("--fields", type=int, default=30, help="near-empty synthetic fields")
    parser.add_argument("--first", type=int, default=6_100_000, help="seed of the first field")


def near_empty_fields(first: int, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(image, labels)`` of ``count`` synthetic fields with almost no nuclei, from seed ``first``
    (6100000–29 are the tuning fields of ``service.diameter``, 6100030–149 ``near_empty.py``'s)."""
    empty = SynthConfig(coverage=(0.0, 0.0))
    for seed in range(first, first + count):
        yield synth_nuclei(seed, 512, empty)


def scores_per_variant(
    engine: Engine, image: np.ndarray, truth: np.ndarray, variants: Mapping[Key, ObjectParams]
) -> dict[Key, dict]:
    """Per variant: one image's F1, precision and recall at IoU 0.5, DSB mAP (``ap``), the objects
    made, the false ones among them (no true nucleus at IoU ≥ 0.5) and the true nuclei found."""
    md = engine.metadata
    keep_input = any(params.min_snr > 0 for params in variants.values())
    scale = pipeline.choose_scale(image, engine.run, md, None, 8192 * 8192)
    prediction = pipeline.predict_scaled(image, scale, engine.run, md, batch_size=4, keep_input=keep_input)
    probabilities = prediction.probabilities
    marked = probabilities[md.foreground_channel] > md.threshold
    around = objects.Surroundings(prediction.input_grey, marked) if keep_input else None
    out = {}
    for key, params in variants.items():
        labels = objects.label_prediction(marked, probabilities, params, around)
        if labels.shape != image.shape[:2]:
            labels = rescale.renumber(rescale.resize_labels(labels, image.shape[:2]))
        scores = score_objects(truth, labels)
        found = int(labels.max(initial=0))
        matched = 0
        if found and truth.max() > 0:
            matched = int((match_ious(truth, labels).max(axis=0) >= 0.5).sum())
        out[key] = {
            "f1": scores.f1, "precision": scores.precision, "recall": scores.recall, "ap": scores.mean_ap,
            "objects": found, "false": found - matched, "true": matched,
        }
    return out
