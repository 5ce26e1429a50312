"""Flip averaging at test time: does it buy quality on DSB images? Measured, not built (issue #13).

Each batch of tiles is run as it is and mirrored left-right, top-bottom and both (four passes);
the four answers are mirrored back and their probabilities averaged before stitching, as
nnU-Net's mirroring and Cellpose's ``augment`` do. The nucleus scale is estimated as the service
estimates it (plain passes), so the comparison sees the segmentation only. Scores are
``evaluate``'s (object F1, precision and recall at IoU 0.5, mean over images; foreground Dice;
DSB mAP) for plain and flip-averaged prediction on the same images, in one run.

    .venv/bin/python benchmarks/flip_average.py --dsb DIR/stage1_train [--subset train] [--every 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.evaluate import Segmentation, model_subset, score_dsb, summarise_dsb
from service import pipeline
from service.engine import Engine
from service.objects import params_for_model

ROOT = Path(__file__).resolve().parents[1]
Run = Callable[[np.ndarray], np.ndarray]

# Each mirror is its own inverse; on (N, C, H, W) batches the last two axes are the image's.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def flip_averaged(run: Run) -> Run:
    """``run`` on each mirror of the batch, mirrored back, probabilities averaged."""

    def averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for axes in MIRRORS:
            mirrored = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
            out = run(mirrored)
            out = np.flip(out, axes) if axes else out
            total = out.astype(np.float64) if total is None else total + out
        return (total / len(MIRRORS)).astype(np.float32)

    return averaged


def segmenter(engine: Engine, averaged: bool) -> Callable[[np.ndarray], Segmentation]:
    md = engine.metadata
    params = params_for_model(md)
    predict_run = flip_averaged(engine.run) if averaged else engine.run

    def segment(image: np.ndarray) -> Segmentation:
        scale = pipeline.choose_scale(image, engine.run, md, None, 8192 * 8192)
        result = pipeline.predict_scaled(image, scale, predict_run, md, batch_size=4)
        grid = pipeline.on_input_grid(result, md, image.shape[:2], md.threshold, params)
        return Segmentation(grid.mask > 0, grid.labels, result.tiles, scale.diameter, scale.factor)

    return segment


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", default="train", choices=("train", "tune", "val", "all"))
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    args = parser.parse_args()
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    chosen = model_subset(dsb.load_set(args.dsb), args.subset, engine.metadata, args.model)[:: args.every]
    print(f"{len(chosen)} images of --subset {args.subset}", flush=True)
    print("| prediction | F1@0.5 | precision | recall | Dice | mAP | objects | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, averaged in (("plain", False), ("flip-averaged (4 passes)", True)):
        started = time.perf_counter()
        overall = summarise_dsb(score_dsb(chosen, segmenter(engine, averaged)))["overall"]
        print(
            f"| {name} | {overall['mean_f1']:.4f} | {overall['mean_precision']:.4f} | "
            f"{overall['mean_recall']:.4f} | {overall['mean_dice']:.4f} | {overall['mean_ap']:.4f} | "
            f"{overall['predicted_objects']} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
