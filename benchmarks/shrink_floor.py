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

``--gates 0.25,0.5`` also reports each floor applied only to images whose nuclei touch: where at least
that fraction of the whole objects of the estimate's chosen probe (the model's own split at the
model's scale) shares a boundary with another object (``touching``, printed per image).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from diameter_estimate import Case, dsb_cases, synthetic_cases

from model_export.evaluate import predict_labels, score_segmentation
from service import diameter as size_probes
from service.diameter import DiameterEstimate, estimate_diameter
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


def touching_fraction(labels: np.ndarray) -> float:
    """Fraction of the whole objects (not cut by the edge) of ``labels`` that share a 4-neighbour
    boundary with another object (0 without whole objects)."""
    whole = np.setdiff1d(np.unique(labels), np.concatenate([[0], size_probes.edge_ids(labels)]))
    touching: set[int] = set()
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        contact = (a != b) & (a > 0) & (b > 0)
        touching.update(np.unique(a[contact]).tolist())
        touching.update(np.unique(b[contact]).tolist())
    return sum(int(i) in touching for i in whole) / whole.size if whole.size else 0.0


def chosen_probe_touching(engine: Engine, image: np.ndarray, estimate: DiameterEstimate) -> float | None:
    """:func:`touching_fraction` of the probe the estimate was read from, its objects made as the
    estimate makes them (no confidence or contrast cut); None when no probe gave the estimate."""
    metadata = engine.metadata
    chosen = [p for p in estimate.probes if p.objects and p.median_diameter / p.factor == estimate.diameter]
    if not chosen:
        return None
    params = replace(params_for_model(metadata), min_confidence=0.0, min_snr=0.0)
    window = size_probes._probe_input(
        size_probes._Image.of(image, metadata), chosen[-1].factor, metadata, size_probes.PROBE_SIZE
    )
    if window is None:
        return None
    probs = size_probes._probabilities([window], engine.run, metadata, None)[0]
    return touching_fraction(size_probes.probe_objects(probs, metadata, params, metadata.threshold))


def score_floors(engine: Engine, case: Case, floors: list[float]) -> dict:
    group, name, image, truth, _ = case
    metadata = engine.metadata
    params = params_for_model(metadata)
    estimated = estimate_diameter(image, engine.run, metadata, params)
    estimate = estimated.diameter
    row: dict = {"group": group, "image": name, "estimated": estimate}
    shrunk = estimate is not None and estimate > SKIP_RESIZE_RATIO * metadata.nucleus_diameter
    row["shrunk"] = shrunk
    row["touching"] = chosen_probe_touching(engine, image, estimated) if shrunk else None
    for floor in floors:
        if floor != 1.0 and not shrunk:
            row[str(floor)] = row["1.0"]  # the same call as floor 1
            continue
        diameter = estimate if floor == 1.0 else floor_diameter(estimate, metadata.nucleus_diameter, floor)
        answer = predict_labels(engine, image, params, diameter=diameter)
        dice, _, objects = score_segmentation(truth, answer)
        row[str(floor)] = {"f1": objects.f1, "dice": dice, "map": objects.mean_ap}
    return row


def gated(row: dict, floor: float, gate: float) -> dict:
    """The row's scores at ``floor`` where its nuclei touch (``touching`` ≥ ``gate``), else floor 1's."""
    return row[str(floor)] if (row["touching"] or 0.0) >= gate else row["1.0"]


def report(name: str, rows: list[dict], floors: list[float], gate: float = 0.0) -> None:
    if not rows:
        return

    def means(floor: float) -> str:
        return " ".join(f"{s} {np.mean([gated(r, floor, gate)[s] for r in rows]):.4f}" for s in SCORES)

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
    parser.add_argument("--gates", default="", help="touching fractions to gate the floors by (report only)")
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
        touching = "" if row["touching"] is None else f"  touching {row['touching']:.2f}"
        print(f"{row['group']:>22} {row['image']:>10} estimated {estimate:>6}  F1 by floor {f1}{touching}",
              flush=True)
    print()
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["shrunk"]:
            groups[row["group"]].append(row)
    for group, members in sorted(groups.items()):
        report(group, members, floors)
    report("shrunk images", [r for r in rows if r["shrunk"]], floors)
    report("all images", rows, floors)
    for gate in [float(g) for g in args.gates.split(",") if g]:
        shrunk = [r for r in rows if r["shrunk"]]
        applied = sum((r["touching"] or 0.0) >= gate for r in shrunk)
        print(f"\nfloors only where touching >= {gate:g} ({applied} of {len(shrunk)} shrunk images):")
        for group, members in sorted(groups.items()):
            report(group, members, floors, gate)
        report("shrunk images", shrunk, floors, gate)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
