"""A contrast cut on connected regions at the model's scale: measured, not built (issue #13).

``benchmarks/false_objects.py`` measures each object's ``snr`` on the input image. This script
measures the form the service could build beside its confidence cut: per connected region of the
hole-filled mask at the model's scale (the grid objects are found on, in every path), its mean
normalised model input over the pixels the model marked, minus the median of a ring around it
(half the model's nucleus diameter wide, other foreground left out), in units of the ring's
standard deviation. Regions with under 5 ring pixels (inside a crowded cluster) are kept. For each
cut the regions under it are removed from the mask before the objects are made as the service
makes them (``objects.label_prediction`` with the model's settings, its confidence cut included),
then brought back to the input grid and scored as ``evaluate`` scores (object F1, precision and
recall at IoU 0.5, mean over images), with the false objects (no true nucleus at IoU ≥ 0.5) and
the true nuclei found, summed. Two sets: DSB images of ``--subset`` (every ``--every``-th) and
synthetic near-empty fields (``--fields`` from seed ``--first``; 6100000–29 are the tuning fields
of ``service.diameter``, 6100030–149 those of ``benchmarks/near_empty.py``).

    .venv/bin/python benchmarks/snr_cut.py --dsb DIR/stage1_train [--subset train] [--every 2]
        [--fields 30] [--first 6100000]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from model_export import dsb
from model_export.data import SynthConfig, synth_nuclei
from model_export.evaluate import held_out_ids, select_subset
from model_export.object_metrics import match_ious, score_objects
from service import objects, pipeline, rescale
from service.engine import Engine
from service.objects import params_for_model
from service.preprocess import prepare, to_channels

ROOT = Path(__file__).resolve().parents[1]
CUTS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0)
MIN_RING = 5  # ring pixels a region needs to be measured


def region_snr(grey: np.ndarray, marked: np.ndarray, ring_px: int) -> tuple[np.ndarray, np.ndarray]:
    """``(regions, snr)``: the hole-filled mask's 8-connected regions and each one's snr
    (``inf`` for the background id 0 and for regions without ``MIN_RING`` ring pixels)."""
    filled = objects.fill_holes(marked)
    count, regions, stats, _ = cv2.connectedComponentsWithStats(
        filled.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    snr = np.full(count, np.inf)
    kernel = np.ones((2 * ring_px + 1, 2 * ring_px + 1), np.uint8)
    height, width = marked.shape
    for region in range(1, count):
        left, top, w, h = (int(v) for v in stats[region, :4])
        y0, y1 = max(0, top - ring_px), min(height, top + h + ring_px)
        x0, x1 = max(0, left - ring_px), min(width, left + w + ring_px)
        inside = regions[y0:y1, x0:x1] == region
        ring = (cv2.dilate(inside.astype(np.uint8), kernel) > 0) & ~filled[y0:y1, x0:x1]
        if ring.sum() < MIN_RING:
            continue
        crop = grey[y0:y1, x0:x1]
        around = crop[ring]
        snr[region] = (crop[inside & marked[y0:y1, x0:x1]].mean() - np.median(around)) / (around.std() + 1e-6)
    return regions, snr


def scores_per_cut(engine: Engine, image: np.ndarray, truth: np.ndarray) -> dict[float, tuple]:
    """Per cut: (F1, precision, recall, false objects, true nuclei found) of one image."""
    md = engine.metadata
    params = params_for_model(md)
    scale = pipeline.choose_scale(image, engine.run, md, params, md.threshold, None, 8192 * 8192)
    probabilities = pipeline.predict_scaled(image, scale, engine.run, md, batch_size=4).probabilities
    model_image = image
    if scale.factor != 1.0:  # the model's input, as pipeline.predict_scaled resizes it
        shape = rescale.scaled_shape(image.shape[:2], scale.factor)
        model_image = rescale.resample_image(to_channels(image, md.in_channels), shape)
    grey = prepare(model_image, md.in_channels, md.normalization).mean(axis=0)
    marked = probabilities[md.foreground_channel] > md.threshold
    regions, snr = region_snr(grey, marked, int(round(md.nucleus_diameter / 2)))
    out = {}
    for cut in CUTS:
        kept = marked & (snr[regions] >= cut) if cut > 0 else marked
        labels = objects.label_prediction(kept, probabilities, params)
        if labels.shape != image.shape[:2]:
            labels = rescale.renumber(rescale.resize_labels(labels, image.shape[:2]))
        scores = score_objects(truth, labels)
        found = int(labels.max(initial=0))
        matched = 0
        if found and truth.max() > 0:
            matched = int((match_ious(truth, labels).max(axis=0) >= 0.5).sum())
        out[cut] = (scores.f1, scores.precision, scores.recall, found - matched, matched)
    return out


def run(engine: Engine, images: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[dict[float, tuple]]:
    return [scores_per_cut(engine, image, truth.astype(np.int32)) for image, truth in images]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "val"), default="train")
    parser.add_argument("--every", type=int, default=2, help="every n-th image of the subset")
    parser.add_argument("--fields", type=int, default=30, help="near-empty synthetic fields")
    parser.add_argument("--first", type=int, default=6_100_000, help="seed of the first field")
    args = parser.parse_args()
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    md = engine.metadata
    items = select_subset(dsb.load_set(args.dsb), args.subset, held_out_ids(md), args.model)[:: args.every]
    rows = run(engine, ((item.image, item.labels) for item in items))
    ring = round(md.nucleus_diameter / 2)
    print(f"DSB {args.subset}, every {args.every}: {len(rows)} images; ring {ring} px")
    print("| min snr | F1 | precision | recall | false objects | true found |\n|---|---|---|---|---|---|")
    for cut in CUTS:
        f1, precision, recall = (np.mean([r[cut][k] for r in rows]) for k in range(3))
        false, true = (sum(r[cut][k] for r in rows) for k in (3, 4))
        print(f"| {cut} | {f1:.4f} | {precision:.4f} | {recall:.4f} | {false} | {true} |", flush=True)
    seeds = range(args.first, args.first + args.fields)
    fields = run(engine, (synth_nuclei(seed, 512, SynthConfig(coverage=(0.0, 0.0))) for seed in seeds))
    print(f"\n{args.fields} near-empty fields from seed {args.first}")
    print("| min snr | false objects | per field: mean / max | true found |\n|---|---|---|---|")
    for cut in CUTS:
        false = [r[cut][3] for r in fields]
        true = sum(r[cut][4] for r in fields)
        print(f"| {cut} | {sum(false)} | {np.mean(false):.1f} / {max(false)} | {true} |", flush=True)


if __name__ == "__main__":
    main()
