"""The distance watershed's settings (``seed_prominence``, ``smoothing_sigma``) on real DSB images.

``service.objects`` splits touching nuclei at the peaks of the mask's distance transform, smoothed
by a Gaussian of ``smoothing_sigma`` px, each peak rising at least ``seed_prominence`` px above the
saddle to its neighbour. Both were chosen on 24 synthetic images for an early synthetic-only model
(h = 0.25, σ = 1); merged neighbours are the largest kind of miss on DSB (models/README.md, "Touching
nuclei merge"). This measures them on real images: each image is segmented once as the service
does it (estimated scale, the model's own settings otherwise, its cuts included), and its objects
are made once per setting from that one prediction, brought back to the input grid and scored as
``evaluate`` scores (mean over images of object F1, precision, recall at IoU 0.5 and the DSB mAP over
IoU 0.5–0.95). Near-empty synthetic fields (``--fields`` from seed ``--first``) count the false
objects a setting makes where there are almost no nuclei. ``--out`` keeps every image's scores.

    .venv/bin/python benchmarks/split_params.py --dsb DIR/stage1_train --subset train --out split.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
from _sweep import add_dsb_options, near_empty_fields, scores_per_variant

from model_export import dsb
from model_export.evaluate import model_subset
from service.engine import Engine
from service.objects import params_for_model

PROMINENCES = (0.1, 0.25, 0.5, 1.0)
SIGMAS = (0.5, 1.0, 1.5, 2.0)


def settings(prominences: Iterable[float], sigmas: Iterable[float]) -> list[tuple[float, float]]:
    return list(itertools.product(prominences, sigmas))


def scores_per_setting(
    engine: Engine, image: np.ndarray, truth: np.ndarray, grid: list[tuple[float, float]]
) -> dict[tuple[float, float], dict]:
    """Per ``(seed_prominence, smoothing_sigma)``: one image's scores and false objects
    (``_sweep.scores_per_variant``), the distance split and the model's settings otherwise."""
    params = params_for_model(engine.metadata, "distance")
    variants = {
        (prominence, sigma): replace(params, seed_prominence=prominence, smoothing_sigma=sigma)
        for prominence, sigma in grid
    }
    return scores_per_variant(engine, image, truth, variants)


def summary(rows: list[dict], grid: list[tuple[float, float]]) -> dict[tuple[float, float], dict]:
    """Means over images of the scores, sums of the counts."""
    return {
        key: {
            **{k: float(np.mean([r[key][k] for r in rows])) for k in ("f1", "precision", "recall", "ap")},
            **{k: int(sum(r[key][k] for r in rows)) for k in ("objects", "false")},
        }
        for key in grid
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dsb_options(parser, every=1)
    parser.add_argument("--prominence", type=float, nargs="+", default=PROMINENCES)
    parser.add_argument("--sigma", type=float, nargs="+", default=SIGMAS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON of every image's scores and the summaries")
    args = parser.parse_args(argv)
    grid = settings(args.prominence, args.sigma)
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    items = model_subset(dsb.load_set(args.dsb), args.subset, engine.metadata, args.model)[:: args.every]
    rows = [scores_per_setting(engine, i.image, i.labels.astype(np.int32), grid) for i in items]
    fields = [
        scores_per_setting(engine, image, truth.astype(np.int32), grid)
        for image, truth in near_empty_fields(args.first, args.fields)
    ]
    on_dsb, on_fields = summary(rows, grid), summary(fields, grid)
    print(f"DSB {args.subset}, every {args.every}: {len(rows)} images; {args.fields} near-empty fields")
    print("| h | σ | F1 | precision | recall | mAP | objects | near-empty false objects |")
    print("|---|---|---|---|---|---|---|---|")
    for key in grid:
        s = on_dsb[key]
        print(
            f"| {key[0]} | {key[1]} | {s['f1']:.4f} | {s['precision']:.4f} | {s['recall']:.4f} "
            f"| {s['ap']:.4f} | {s['objects']} | {on_fields[key]['false']} |"
        )
    if args.out:
        name = "{}/{}".format
        report = {
            "model": str(args.model), "subset": args.subset, "every": args.every,
            "dsb": {name(*k): v for k, v in on_dsb.items()},
            "near_empty": {name(*k): v for k, v in on_fields.items()},
            "images": [
                {"id": i.id, "series": i.series, **{name(*k): v for k, v in r.items()}}
                for i, r in zip(items, rows, strict=True)
            ],
        }
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
