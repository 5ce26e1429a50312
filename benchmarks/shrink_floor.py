"""Should images of large nuclei be shrunk all the way to the model's diameter? (issue #13)

    python benchmarks/shrink_floor.py --dsb DIR/stage1_train --subset train [--every 1] [--floors 1.25,1.5]
    python benchmarks/shrink_floor.py --synthetic [--seed 9000000] [--radii 30,40,60] [--images 3]

The service resizes every image so that its nuclei come out at the model's ``nucleus_diameter``
(``service.rescale.factor_for``). Shrinking ×0.4 averages away the 1–2 px dark gaps between
touching large nuclei, and it also averages away noise. A *floor* ``k`` shrinks nuclei only down
to ``k`` × the model's diameter (nuclei between 1 and ``k`` × it are not resized); enlargement is
unchanged. Each image's diameter is estimated once, as the service does, and every floor segments
it with that estimate (``diameter=``), so only the floor differs. Floor 1 is the service.

Prints per DSB series (or synthetic radius) the mean F1 at IoU 0.5, Dice and mAP 0.5–0.95 of the
images the estimate shrinks (over ×1.1 the model's diameter, the service's skip ratio) for each
floor, and the same over every image. Scored as ``model_export evaluate``. Choose on
``--subset train`` and synthetic seeds; ``val`` is for reporting.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from diameter_estimate import Case, dsb_cases, synthetic_cases

from model_export.evaluate import predict_labels, score_segmentation
from service.diameter import estimate_diameter
from service.engine import Engine
from service.objects import params_for_model
from service.rescale import SKIP_RESIZE_RATIO

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("f1", "dice", "map")


def floor_diameter(estimate: float | None, model_diameter: float, floor: float) -> float | None:
    """The ``diameter=`` that makes the service shrink nuclei of ``estimate`` px only down to
    ``floor`` × ``model_diameter`` (None: the service's own choice, for floor 1 or no shrink)."""
    if floor == 1.0 or estimate is None or estimate <= SKIP_RESIZE_RATIO * model_diameter:
        return None
    if estimate <= floor * model_diameter:
        return model_diameter  # factor 1: not resized
    return estimate / floor


def score_floors(engine: Engine, case: Case, floors: list[float]) -> dict:
    group, name, image, truth, _ = case
    metadata = engine.metadata
    params = params_for_model(metadata)
    estimate = estimate_diameter(image, engine.run, metadata, params).diameter
    row: dict = {"group": group, "image": name, "estimated": estimate}
    shrunk = estimate is not None and estimate > SKIP_RESIZE_RATIO * metadata.nucleus_diameter
    row["shrunk"] = shrunk
    for floor in floors:
        if floor != 1.0 and not shrunk:
            row[str(floor)] = row["1.0"]  # the same call as floor 1
            continue
        diameter = estimate if floor == 1.0 else floor_diameter(estimate, metadata.nucleus_diameter, floor)
        answer = predict_labels(engine, image, params, diameter=diameter)
        dice, _, objects = score_segmentation(truth, answer)
        row[str(floor)] = {"f1": objects.f1, "dice": dice, "map": objects.mean_ap}
    return row


def report(name: str, rows: list[dict], floors: list[float]) -> None:
    if not rows:
        return

    def means(floor: float) -> str:
        return " ".join(f"{s} {np.mean([r[str(floor)][s] for r in rows]):.4f}" for s in SCORES)

    cells = [f"floor {floor:g}: {means(floor)}" for floor in floors]
    print(f"{name:>24} {len(rows):>4}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dsb", type=Path, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "val"), default="train")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument("--upscale", type=float, default=1.0, help="enlarge each DSB image (linear) first")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images instead of --dsb")
    parser.add_argument("--seed", type=int, default=9_000_000, help="image k of radius r: seed + 100 r + k")
    parser.add_argument("--radii", default="30,40,60")
    parser.add_argument("--images", type=int, default=3, help="synthetic images per radius")
    parser.add_argument("--floors", default="1.25,1.5", help="floors besides 1 (the service)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if (args.dsb is None) == (not args.synthetic):
        parser.error("give --dsb PATH or --synthetic")
    floors = [1.0] + [float(f) for f in args.floors.split(",") if float(f) != 1.0]

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    if not engine.metadata.nucleus_diameter:
        parser.error("the model records no nucleus diameter: the service never resizes its images")
    cases = (
        synthetic_cases(args.seed, [int(r) for r in args.radii.split(",")], args.images)
        if args.synthetic
        else dsb_cases(args.dsb, args.subset, args.every, args.upscale)
    )
    rows = []
    for case in cases:
        row = score_floors(engine, case, floors)
        rows.append(row)
        f1 = " ".join(f"{row[str(f)]['f1']:.3f}" for f in floors)
        estimate = "none" if row["estimated"] is None else f"{row['estimated']:.1f}"
        print(f"{row['group']:>22} {row['image']:>10} estimated {estimate:>6}  F1 by floor {f1}", flush=True)
    print()
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["shrunk"]:
            groups[row["group"]].append(row)
    for group, members in sorted(groups.items()):
        report(group, members, floors)
    report("shrunk images", [r for r in rows if r["shrunk"]], floors)
    report("all images", rows, floors)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
