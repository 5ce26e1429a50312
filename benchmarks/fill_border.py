"""A field surrounded by a constant fill: does the fill move the answer? (issue #13)

Stitched tile scans (ZEN's tile regions, slide scanners' fluorescence scans) and registered images
hold areas outside the acquisition filled with one constant, mostly 0, while the camera's own dark
level lies well above it (100 here). The per-image normalisation maps the 1st percentile to 0: with
more than 1 % fill that is the fill, not the camera's dark level, so the background comes out above
0 (docs/benchmarks.md, "A constant fill around the field", measured what that costs). Each DSB image
is re-recorded as a 16-bit camera would (``screen_like.variants``' ``16-bit``: ``100 + 12 × grey``)
and segmented as it is and placed inside a canvas ``--canvas`` × its size each way, filled with
``--fill``; the canvas's objects on the image's area are scored against the
labels, as ``evaluate`` scores (object F1 at IoU 0.5, Dice, mAP), with the service's pipeline
(estimated scale, the model's own object settings).

A third variant holds the same kind of histogram without a fill: the image *masked*, every pixel
farther than 3 px from a labelled nucleus set to ``--fill`` (a file thresholded before it was sent).
Its zeros are the image's background, not a margin around it; a rule that takes the lowest value
for a fill must not cost it much.

    .venv/bin/python benchmarks/fill_border.py --dsb DIR/stage1_train --subset train [--every 2]

To compare a normalisation change, run it in a checkout with the change and in one without
(``PYTHONPATH=`` that checkout: the editable install points at one of them only).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from screen_like import variants

from model_export import dsb
from model_export.evaluate import predict_labels, score_segmentation
from service.engine import Engine
from service.objects import params_for_model

ROOT = Path(__file__).resolve().parents[1]
MASK_REACH = 3  # px of background kept around each nucleus in the masked variant


def in_canvas(image: np.ndarray, canvas: float, fill: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` centred in a ``canvas`` × larger array of ``fill``, and its top-left corner there."""
    h, w = image.shape[:2]
    big = np.full((round(h * canvas), round(w * canvas)), fill, image.dtype)
    top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    big[top : top + h, left : left + w] = image
    return big, (top, left)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "val"), default="train")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--canvas", type=float, default=1.5, help="canvas side ÷ image side")
    parser.add_argument("--fill", type=int, default=0)
    args = parser.parse_args()

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"])
    params = params_for_model(engine.metadata)
    train, val = dsb.split_by_series(dsb.load_set(args.dsb))
    items = (train if args.subset == "train" else val)[:: args.every]
    scores: dict[str, list[tuple[float, float, float]]] = {
        "as recorded": [],
        "in a filled canvas": [],
        "masked": [],
    }
    for item in items:
        _, image, _ = next(variants(item))  # the 16-bit re-recording, brightness unchanged
        plain = predict_labels(engine, image, params)
        big, (top, left) = in_canvas(image, args.canvas, args.fill)
        framed = predict_labels(engine, big, params)
        masked = image.copy()
        masked[ndimage.distance_transform_edt(item.labels == 0) > MASK_REACH] = args.fill
        h, w = image.shape
        row = []  # F1 of each variant
        window = (slice(top, top + h), slice(left, left + w))
        cropped = replace(framed, foreground=framed.foreground[window], labels=framed.labels[window])
        answers = (plain, cropped, predict_labels(engine, masked, params))
        for name, answer in zip(scores, answers, strict=True):
            dice, _, objects = score_segmentation(item.labels, answer)
            assert objects is not None
            scores[name].append((objects.f1, dice, objects.mean_ap))
            row.append(f"{objects.f1:.3f}")
        print(f"{item.series:>22} {item.id[:8]}  F1 {' / '.join(row)}", flush=True)
    print(f"\n{len(items)} images; canvas ×{args.canvas:g}, fill and mask value {args.fill}:")
    for name, values in scores.items():
        f1, dice, mean_ap = np.mean(values, axis=0)
        print(f"{name:>20}: F1 {f1:.4f}  Dice {dice:.4f}  mAP {mean_ap:.4f}")


if __name__ == "__main__":
    main()
