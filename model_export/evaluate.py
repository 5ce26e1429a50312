"""``python -m model_export evaluate``: Dice and IoU of an ONNX model on a folder pair.

    python -m model_export evaluate --model models/nuclei-unet.onnx --images DIR --masks DIR

Runs exactly what the service runs — ``service.imaging.decode`` for the image bytes,
``service.engine.Engine`` for the ONNX session and ``service.segment.predict`` for
normalisation, tiling, stitching and activation — so the numbers are the service's
numbers. Foreground = probability of the model's foreground channel above its
threshold; truth = mask > 0 (binary masks, class masks and instance label images
alike). No PyTorch is imported here.

Where a mask is an instance label image (more than one distinct non-zero value), the
objects the service would return (``service.objects.label_objects`` with the model's
``objects`` metadata, on the stitched map) are matched one-to-one to the true objects:
precision, recall and F1 at IoU 0.5, mean F1 and the DSB mean AP over IoU 0.5–0.95, and
the count error. ``--no-objects`` skips this (e.g. for multi-class index masks).
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
from model_export.object_metrics import ObjectScores, score_objects
from service.engine import Engine
from service.imaging import decode
from service.objects import SPLIT_METHODS, label_prediction, params_for_model
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
    objects: ObjectScores | None = None


def evaluate_folder(
    model: Path,
    images: Path,
    masks: Path,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    threads: int = 0,
    score_instances: bool = True,
    split: str | None = None,
) -> tuple[list[ImageScore], dict]:
    """Score every image/mask pair; returns per-image scores and a summary.

    The summary holds the mean per-image Dice/IoU and the pooled Dice/IoU (all pixels of
    all images counted together, so large images weigh more). ``split`` picks how objects
    are split, as the service's request option does (None: the model's own method).
    """
    engine = Engine.load(model, providers=["CPUExecutionProvider"], intra_op_threads=threads)
    meta = engine.metadata
    try:
        object_params = params_for_model(meta, split)
    except ValueError as exc:
        raise DataError(f"{model}: {exc}") from exc
    scores: list[ImageScore] = []
    inter = pred_sum = truth_sum = 0
    for image_path, mask_path in pair_folders(images, masks):
        image = decode(image_path.read_bytes(), _MAX_PIXELS)
        true_labels = read_mask(mask_path)
        truth = true_labels > 0
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
        object_scores = None
        if score_instances and len(np.unique(true_labels)) > 2:
            labels = label_prediction(pred, result.probabilities, object_params)
            object_scores = score_objects(true_labels, labels)
        scores.append(
            ImageScore(
                image_path.stem, *truth.shape, dice, iou, result.tiles, round(seconds, 3), object_scores
            )
        )
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
    with_objects = [s.objects for s in scores if s.objects is not None]
    if with_objects:
        summary["objects"] = {
            "images": len(with_objects),
            "method": object_params.as_metadata(),
            **{
                f"mean_{key}": float(np.mean([getattr(o, key) for o in with_objects]))
                for key in ("precision", "recall", "f1", "mean_f1", "mean_ap")
            },
            "mean_abs_count_error": float(np.mean([abs(o.count_error) for o in with_objects])),
            "true_objects": int(sum(o.true_objects for o in with_objects)),
            "predicted_objects": int(sum(o.predicted_objects for o in with_objects)),
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
    parser.add_argument(
        "--split",
        choices=list(SPLIT_METHODS),
        default=None,
        help="how touching nuclei are split (as the service's ?split=); default: the model's method",
    )
    parser.add_argument(
        "--no-objects", action="store_true", help="skip object metrics even where masks are label images"
    )
    args = parser.parse_args(argv)
    try:
        scores, summary = evaluate_folder(
            args.model,
            args.images,
            args.masks,
            args.tile_size,
            args.overlap,
            args.batch_size,
            args.threads,
            score_instances=not args.no_objects,
            split=args.split,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(s.name) for s in scores)
    header = f"{'image':<{width}}  {'size':>11}  {'tiles':>5}  {'dice':>6}  {'iou':>6}"
    print(header + (f"  {'obj F1':>6}  {'count':>9}" if "objects" in summary else ""))
    for s in scores:
        obj = (
            f"  {s.objects.f1:6.4f}  {s.objects.predicted_objects:>4}/{s.objects.true_objects:<4}"
            if s.objects
            else ""
        )
        size = f"{s.width}×{s.height}"
        print(f"{s.name:<{width}}  {size:>11}  {s.tiles:>5}  {s.dice:6.4f}  {s.iou:6.4f}{obj}")
    print(
        f"{'mean':<{width}}  {'':>11}  {'':>5}  {summary['mean_dice']:6.4f}  {summary['mean_iou']:6.4f}"
        f"   (pooled Dice {summary['pooled_dice']:.4f}, IoU {summary['pooled_iou']:.4f}; "
        f"{summary['images']} images, providers {summary['providers']})"
    )
    if "objects" in summary:
        o = summary["objects"]
        print(
            f"objects ({o['images']} label images, {o['method']['method']}): F1@0.5 {o['mean_f1']:.4f}, "
            f"precision {o['mean_precision']:.4f}, recall {o['mean_recall']:.4f}, "
            f"mean F1@0.5:0.95 {o['mean_mean_f1']:.4f}, DSB mAP {o['mean_mean_ap']:.4f}, "
            f"|count error| {o['mean_abs_count_error']:.1f} ({o['predicted_objects']}/{o['true_objects']})"
        )
    if args.json is not None:
        report = {"summary": summary, "images": [asdict(s) for s in scores]}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
