"""What becomes of the labelled nuclei a model misses on DSB images (issue #13; one model pass per image).

A labelled nucleus is *found* when one object matches it at IoU > 0.5 (as F1 counts it). A missed
one is, in this order:

- **split**: two or more objects each cover at least 20 % of it;
- **merged**: the object covering most of it (at least half) also has 20 % or more of its own
  area on another labelled nucleus: one object for two or more nuclei;
- **loose**: that object covers at least half of it but matches nothing else: too large, too
  small or shifted for IoU 0.5;
- **unmarked**: no object covers half of it.

Merges and unmarked nuclei want different cures (the map where nuclei meet against sensitivity),
so this is what a training change aimed at either is checked against.

    .venv/bin/python benchmarks/missed_nuclei.py --dsb DIR/stage1_train --model M.onnx [--model ...]
        [--subset train|tune|val] [--every 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.evaluate import held_out_ids, model_subset_in_series_order, predict_labels, tuning_ids
from model_export.object_metrics import match_ious
from service.engine import Engine
from service.objects import params_for_model

KINDS = ("found", "split", "merged", "loose", "unmarked")
#: Share of a nucleus (split) or of an object (merged) that counts as a real overlap, not a rim.
PART = 0.2


def miss_kinds(truth: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Count the labelled nuclei of ``truth`` by what ``predicted`` (instance labels) made of them."""
    counts = dict.fromkeys(KINDS, 0)
    n_true, n_pred = int(truth.max(initial=0)), int(predicted.max(initial=0))
    if n_true == 0:
        return counts
    both = (truth > 0) & (predicted > 0)
    overlap = np.zeros((n_true + 1, n_pred + 1))
    np.add.at(overlap, (truth[both], predicted[both]), 1)
    true_area = np.bincount(truth.ravel(), minlength=n_true + 1)
    pred_area = np.bincount(predicted.ravel(), minlength=n_pred + 1)
    matched = (match_ious(truth, predicted) > 0.5).any(axis=1) if n_pred else np.zeros(n_true, bool)
    for k in range(1, n_true + 1):
        if true_area[k] == 0:
            continue
        if matched[k - 1]:
            counts["found"] += 1
            continue
        cover = overlap[k, 1:] / true_area[k]
        if (cover >= PART).sum() >= 2:
            counts["split"] += 1
            continue
        best = int(np.argmax(cover)) + 1 if n_pred else 0
        if not best or cover[best - 1] < 0.5:
            counts["unmarked"] += 1
            continue
        on_nuclei = overlap[1:, best] / pred_area[best]
        counts["merged" if (on_nuclei >= PART).sum() >= 2 else "loose"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsb", type=Path, required=True)
    parser.add_argument("--model", type=Path, action="append", required=True, help="repeat to compare")
    parser.add_argument("--subset", choices=["train", "tune", "val"], default="train")
    parser.add_argument("--every", type=int, default=4, help="every n-th image of the subset")
    args = parser.parse_args()
    engines = [Engine.load(p, providers=["CPUExecutionProvider"], intra_op_threads=2) for p in args.model]
    held = [(held_out_ids(e.metadata), tuning_ids(e.metadata)) for e in engines]
    if any(h != held[0] for h in held):
        parser.error("these models held out different DSB images: compare them one --model at a time")
    items = dsb.load_set(args.dsb)
    chosen = model_subset_in_series_order(items, args.subset, engines[0].metadata, args.model[0])
    chosen = chosen[:: args.every]
    print(f"{len(chosen)} DSB {args.subset} images (every {args.every})")
    print("| model | nuclei | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    for engine in engines:
        params = params_for_model(engine.metadata)
        totals = dict.fromkeys(KINDS, 0)
        for item in chosen:
            answer = predict_labels(engine, item.image, params)
            assert answer.labels is not None
            for kind, n in miss_kinds(item.labels, answer.labels).items():
                totals[kind] += n
        nuclei = sum(totals.values())
        shares = " | ".join(f"{totals[k]} ({totals[k] / max(nuclei, 1):.3f})" for k in KINDS)
        print(f"| {engine.metadata.version} | {nuclei} | {shares} |")


if __name__ == "__main__":
    main()
