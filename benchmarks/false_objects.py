"""Which objects on background could a contrast test drop? Measured, not built (issue #13).

The service's objects as ``POST /segment`` returns them (estimated scale, default split), each
compared with the truth (a match: IoU ≥ 0.5, as ``model_export evaluate``) and measured on the
input image: its mean probability, and how far its mean intensity stands above its surroundings —
the median of a ring around it (``diameter / 2`` wide, other objects left out), in units of the
ring's standard deviation (``snr``) or of the image's 1–99.8 percentile range (``contrast``).
Two sets: DSB 2018 training images (every ``--every``-th of the training split; matches and false
objects) and synthetic near-empty fields of noise, haze and glow with 0–2 nuclei (seeds
6100000–6100029, as the near-empty tests of ``service.diameter``), where almost every object is
false. Prints, for a few cut-offs of each measure, the true objects it would lose and the false
ones it would drop in each set. The objects are those the model's own settings leave: with a
model that records ``min_confidence`` (2.1.0) the probability rows start from its cut; the table
in docs/benchmarks.md was measured on 2.0.0, which has none (``--model`` a copy without it).

    .venv/bin/python benchmarks/false_objects.py --dsb /work/data/dsb/stage1_train [--every 4]
        [--fields 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from model_export.data import SynthConfig, synth_nuclei
from model_export.dsb import load_set, split_by_series
from model_export.object_metrics import match_ious
from service import pipeline
from service.engine import Engine
from service.objects import params_for_model
from service.preprocess import to_channels

ROOT = Path(__file__).resolve().parents[1]
CUTOFFS = {"snr": (1.5, 2.0, 2.5, 3.0, 4.0), "contrast": (0.1, 0.2, 0.3), "probability": (0.7, 0.8, 0.9)}


def segment(engine: Engine, image: np.ndarray) -> tuple[pipeline.ScaleChoice, pipeline.GridOutputs]:
    md = engine.metadata
    params = params_for_model(md)
    scale = pipeline.choose_scale(image, engine.run, md, None, 8192 * 8192, batch_size=8)
    prediction = pipeline.predict_scaled(image, scale, engine.run, md, batch_size=8)
    return scale, pipeline.on_input_grid(prediction, md, image.shape[:2], md.threshold, params)


def measure(image: np.ndarray, truth: np.ndarray, diameter: float, grid: pipeline.GridOutputs) -> list[dict]:
    """One row per predicted object: its measures and whether it matches a true nucleus."""
    grey = to_channels(image, 1).astype(np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    labels, probability = grid.labels, grid.probability
    assert labels is not None and probability is not None
    count = int(labels.max(initial=0))
    iou = match_ious(truth, labels) if truth.max() > 0 else np.zeros((0, count))
    matched = iou.max(axis=0) >= 0.5 if iou.shape[0] else np.zeros(count, bool)
    low, high = np.percentile(grey, [1, 99.8])
    foreground = labels > 0
    pad = int(max(3, diameter / 2))
    rows = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - pad), min(labels.shape[0], box[0].stop + pad)
        x0, x1 = max(0, box[1].start - pad), min(labels.shape[1], box[1].stop + pad)
        inside = labels[y0:y1, x0:x1] == index
        grown = cv2.dilate(inside.astype(np.uint8), np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)) > 0
        ring = grown & ~foreground[y0:y1, x0:x1]
        if ring.sum() < 5:
            continue  # nothing around it to compare with (a crowded cluster): not measured
        crop = grey[y0:y1, x0:x1]
        above = float(crop[inside].mean() - np.median(crop[ring]))
        rows.append(
            {
                "true": bool(matched[index - 1]),
                "probability": float(probability[y0:y1, x0:x1][inside].mean()),
                "snr": above / (float(crop[ring].std()) + 1e-6),
                "contrast": above / max(float(high - low), 1e-6),
            }
        )
    return rows


def dsb_images(root: Path, every: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    train, _ = split_by_series(load_set(root))
    for index, item in enumerate(train):
        if index % every == 0:
            yield item.image, item.labels


def near_empty_fields(count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for seed in range(6_100_000, 6_100_000 + count):
        yield synth_nuclei(seed, 512, SynthConfig(coverage=(0.0, 0.0)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--every", type=int, default=4, help="every n-th image of the training split")
    parser.add_argument("--fields", type=int, default=30, help="near-empty synthetic fields")
    parser.add_argument("--json", type=Path, default=None, help="also write every object's row here")
    args = parser.parse_args()
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    sets = {
        "DSB training": dsb_images(args.dsb, args.every),
        "near-empty fields": near_empty_fields(args.fields),
    }
    rows: dict[str, list[dict]] = {}
    for name, images in sets.items():
        rows[name], count = [], 0
        for image, truth in images:
            scale, grid = segment(engine, image)
            diameter = scale.diameter or engine.metadata.nucleus_diameter / scale.factor
            rows[name] += measure(image, truth.astype(np.int32), diameter, grid)
            count += 1
        kept = rows[name]
        print(
            f"{name}: {count} images, {sum(r['true'] for r in kept)} true objects, "
            f"{sum(not r['true'] for r in kept)} false (measured ones)",
            flush=True,
        )
    dsb, empty = rows["DSB training"], rows["near-empty fields"]
    print()
    print("| drop objects with | DSB true lost | DSB false dropped | near-empty false dropped |")
    print("|---|---|---|---|")
    for name, cutoffs in CUTOFFS.items():
        for cutoff in cutoffs:
            lost, dropped, emptied = (
                f"{sum(r[name] < cutoff for r in found if r['true'] == truth)} / "
                f"{sum(r['true'] == truth for r in found)}"
                for found, truth in ((dsb, True), (dsb, False), (empty, False))
            )
            print(f"| {name} < {cutoff} | {lost} | {dropped} | {emptied} |")
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
