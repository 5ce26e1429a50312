"""Choose a model's confidence cut (``min_confidence``) on DSB images: one model pass per image.

The cut drops an object whose mean foreground probability is under it (``service.objects``). It
changes only the objects, not the mask or the nucleus scale (the size estimate's probes run
without it), so each image is segmented once and its objects made once per cut; the scores are
``evaluate``'s (object F1, precision and recall at IoU 0.5, mean over images; foreground Dice).

The rule used for 2.1.0 and 2.2.0, printed at the end: the cut with the largest F1 gain over no
cut that loses at most 0.001 of recall. Choose on ``--subset train``; the validation split is for
reporting.

    .venv/bin/python benchmarks/confidence_cut.py --model M.onnx --dsb DIR/stage1_train \\
        [--subset train] [--cuts 0,0.7,0.75,0.8,0.85] [--every 1]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.evaluate import model_subset, predict
from model_export.metrics import dice_iou
from model_export.object_metrics import score_objects
from service.engine import Engine
from service.objects import ObjectParams, params_for_model

RECALL_LOSS = 0.001  # the most recall a cut may cost


def scores_per_cut(engine: Engine, image: np.ndarray, truth: np.ndarray, cuts: list[float]) -> dict:
    """Dice of the mask and, per cut, (F1, precision, recall) of the objects of one image."""
    md = engine.metadata
    base = params_for_model(md)
    prediction = predict(engine, image, batch_size=4)  # once; the objects at every cut
    out: dict = {"cuts": {}}
    for cut in cuts:
        params: ObjectParams = replace(base, min_confidence=cut)
        answer = prediction.segmentation(params)
        assert answer.labels is not None
        objects = score_objects(truth, answer.labels)
        out["cuts"][cut] = (objects.f1, objects.precision, objects.recall)
    out["dice"] = dice_iou(answer.foreground, truth > 0)[0]  # the mask is the same at every cut
    return out


def choose(table: dict[float, tuple[float, float, float]]) -> float:
    """The rule: the largest F1 gain over no cut (0) losing at most ``RECALL_LOSS`` of recall."""
    f1_none, _, recall_none = table[0.0]
    allowed = [
        c for c, (f1, _, recall) in table.items() if recall >= recall_none - RECALL_LOSS and f1 > f1_none
    ]
    return max(allowed, key=lambda c: table[c][0], default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "tune", "val"), default="train")
    parser.add_argument("--cuts", default="0,0.7,0.75,0.8,0.85", help="comma-separated; 0 = no cut")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument("--json", type=Path, help="also write the per-cut means here")
    args = parser.parse_args()
    cuts = sorted({0.0, *(float(c) for c in args.cuts.split(","))})

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"])
    items = model_subset(dsb.load_set(args.dsb), args.subset, engine.metadata, args.model)
    items = items[:: args.every]
    rows = [scores_per_cut(engine, item.image, item.labels, cuts) for item in items]
    table = {c: tuple(float(np.mean([r["cuts"][c][k] for r in rows])) for k in range(3)) for c in cuts}
    dice = float(np.mean([r["dice"] for r in rows]))
    print(f"{args.model} on {len(rows)} DSB {args.subset} images: mask Dice {dice:.4f} (every cut)")
    print(f"{'cut':>5}  {'F1':>6}  {'precision':>9}  {'recall':>6}")
    for cut, (f1, precision, recall) in table.items():
        print(f"{cut:5.2f}  {f1:6.4f}  {precision:9.4f}  {recall:6.4f}")
    chosen = choose(table)
    print(f"rule (largest F1 gain, recall -{RECALL_LOSS} at most): cut {chosen:g}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(rows), "dice": dice, "cuts": table, "chosen": chosen}))


if __name__ == "__main__":
    main()
