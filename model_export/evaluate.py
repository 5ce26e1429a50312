"""``python -m model_export evaluate``: Dice and IoU of an ONNX model on a folder pair.

    python -m model_export evaluate --model models/nuclei-unet.onnx --images DIR --masks DIR

Runs exactly what the service runs — ``service.imaging.decode`` for the image bytes,
``service.engine.Engine`` for the ONNX session and ``service.segment.predict`` for
normalisation, tiling, stitching and activation — so the numbers are the service's
numbers. Foreground = probability of the model's foreground channel above its
threshold; truth = mask > 0 (binary masks, class masks and instance label images
alike). No PyTorch is imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_export.folders import DataError, pair_folders, read_mask
from model_export.metrics import dice_iou
from service.engine import Engine
from service.imaging import decode
from service.segment import predict

#: No pixel limit worth enforcing offline; the service's own limit applies to uploads.
_MAX_PIXELS = 1 << 31


@dataclass
class ImageScore:
    """Scores of one image: foreground Dice and IoU at the model's threshold."""

    name: str
    height: int
    width: int
    dice: float
    iou: float
    tiles: int
    seconds: float


def evaluate_folder(
    model: Path,
    images: Path,
    masks: Path,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    threads: int = 0,
) -> tuple[list[ImageScore], dict]:
    """Score every image/mask pair; returns per-image scores and a summary.

    The summary holds the mean per-image Dice/IoU and the pooled Dice/IoU (all pixels of
    all images counted together, so large images weigh more).
    """
    engine = Engine.load(model, providers=["CPUExecutionProvider"], intra_op_threads=threads)
    meta = engine.metadata
    scores: list[ImageScore] = []
    inter = pred_sum = truth_sum = 0
    for image_path, mask_path in pair_folders(images, masks):
        image = decode(image_path.read_bytes(), _MAX_PIXELS)
        truth = read_mask(mask_path) > 0
        if image.shape[:2] != truth.shape:
            raise DataError(
                f"{mask_path}: mask is {truth.shape[1]}×{truth.shape[0]} but image {image_path.name} "
                f"is {image.shape[1]}×{image.shape[0]} (width×height)"
            )
        started = time.perf_counter()
        result = predict(image, engine.run, meta, tile_size=tile_size, overlap=overlap, batch_size=batch_size)
        seconds = time.perf_counter() - started
        pred = result.probabilities[meta.foreground_channel] > meta.threshold
        dice, iou = dice_iou(pred, truth)
        scores.append(ImageScore(image_path.stem, *truth.shape, dice, iou, result.tiles, round(seconds, 3)))
        inter += int(np.logical_and(pred, truth).sum())
        pred_sum, truth_sum = pred_sum + int(pred.sum()), truth_sum + int(truth.sum())
    total = pred_sum + truth_sum
    summary = {
        "model": str(model),
        "images": len(scores),
        "providers": engine.providers,
        "mean_dice": float(np.mean([s.dice for s in scores])),
        "mean_iou": float(np.mean([s.iou for s in scores])),
        "pooled_dice": 2 * inter / total if total else 1.0,
        "pooled_iou": inter / (total - inter) if total - inter else 1.0,
        "min_dice": float(min(s.dice for s in scores)),
    }
    return scores, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="ONNX file written by export")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's recommendation")
    parser.add_argument("--overlap", type=int, default=None, help="default: the model's recommendation")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write scores here (JSON)")
    args = parser.parse_args(argv)
    try:
        scores, summary = evaluate_folder(
            args.model, args.images, args.masks, args.tile_size, args.overlap, args.batch_size, args.threads
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(s.name) for s in scores)
    print(f"{'image':<{width}}  {'size':>11}  {'tiles':>5}  {'dice':>6}  {'iou':>6}")
    for s in scores:
        print(f"{s.name:<{width}}  {f'{s.width}×{s.height}':>11}  {s.tiles:>5}  {s.dice:6.4f}  {s.iou:6.4f}")
    print(
        f"{'mean':<{width}}  {'':>11}  {'':>5}  {summary['mean_dice']:6.4f}  {summary['mean_iou']:6.4f}"
        f"   (pooled Dice {summary['pooled_dice']:.4f}, IoU {summary['pooled_iou']:.4f}; "
        f"{summary['images']} images, providers {summary['providers']})"
    )
    if args.json is not None:
        report = {"summary": summary, "images": [asdict(s) for s in scores]}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
