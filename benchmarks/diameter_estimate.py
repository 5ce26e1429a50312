"""How far off is the nucleus-diameter estimate? The estimate alone, no segmentation scored.

    python benchmarks/diameter_estimate.py --dsb /work/data/dsb/stage1_train [--subset val]
        [--every 1] [--upscale 1] [--json out.json]
    python benchmarks/diameter_estimate.py --synthetic [--seed 9000000] [--radii 3,4,8,15,30,40,60]
        [--images 3]

Runs ``service.diameter.estimate_diameter`` as the service does (the model's split and
threshold) and compares it with the truth: for DSB images the labels' median equivalent
diameter (as ``model_export evaluate`` does, × ``--upscale`` for enlarged copies), for
synthetic ones (``model_export.data.synth_nuclei``, edge 14 radii as in ``nucleus_scale.py``)
the median over the nuclei not cut by the image's edge. Prints per image and per group (DSB
series, synthetic radius) the factor estimate / truth, then the summary the model card quotes:
median error (|log ratio| as a factor), share within 20 %, images off by more than ×2, images
without an estimate. A few minutes for the 105 validation images on 2 cores, against ~4 min for
``evaluate`` and far longer for ``nucleus_scale.py``: the quick check for a change to the estimate
(issue #13). Choose on ``--subset train`` and synthetic seeds; ``val`` is for reporting.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model_export.data import SynthConfig, synth_nuclei
from model_export.dsb import enlarged, load_set, median_diameter, split_by_series
from service.diameter import PROBE_SIZE, estimate_diameter
from service.engine import Engine
from service.objects import params_for_model

ROOT = Path(__file__).resolve().parents[1]

#: (group, name, image, its instance labels, true diameter px)
Case = tuple[str, str, np.ndarray, np.ndarray, float]


def dsb_cases(root: Path, subset: str, every: int, upscale: float) -> Iterator[Case]:
    train, val = split_by_series(load_set(root))
    for index, item in enumerate(train if subset == "train" else val):
        if index % every:
            continue
        if upscale != 1:
            item = enlarged(item, upscale)
        yield item.series, item.id[:8], item.image, item.labels, item.diameter


def synthetic_cases(seed: int, radii: list[int], images: int) -> Iterator[Case]:
    for radius in radii:
        config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
        size = int(min(2048, max(192, 14 * radius)))
        for k in range(images):
            image, truth = synth_nuclei(seed + 100 * radius + k, size, config)
            yield (
                f"radius {radius}",
                str(seed + 100 * radius + k),
                image,
                truth,
                median_diameter(truth, whole_only=True),
            )


def summary(ratios: list[float | None]) -> str:
    """Median ratio and error, share within 20 %, count off by > ×2, count without an estimate."""
    found = np.array([r for r in ratios if r is not None], np.float64)
    if found.size == 0:
        return f"no estimate on {len(ratios)}"
    logs = np.log(found)
    errors = np.abs(logs)
    within = int(np.sum(errors < math.log(1.2)))
    return (
        f"median ratio ×{math.exp(float(np.median(logs))):.3f}, "
        f"median error ×{math.exp(float(np.median(errors))):.3f}, "
        f"within 20 % {100 * within / found.size:.0f} % ({within}/{found.size}), "
        f"off by > ×2 {int(np.sum(errors > math.log(2)))}, no estimate {len(ratios) - found.size}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dsb", type=Path, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=("train", "val"), default="val")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument("--upscale", type=float, default=1.0, help="enlarge each DSB image (linear) first")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images instead of --dsb")
    parser.add_argument("--seed", type=int, default=9_000_000, help="image k of radius r: seed + 100 r + k")
    parser.add_argument("--radii", default="3,4,8,15,30,40,60")
    parser.add_argument("--images", type=int, default=3, help="synthetic images per radius")
    parser.add_argument(
        "--probe-size", type=int, default=PROBE_SIZE, help="edge of each probe window, model px"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if (args.dsb is None) == (not args.synthetic):
        parser.error("give --dsb PATH or --synthetic")

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    params = params_for_model(engine.metadata)
    cases = (
        synthetic_cases(args.seed, [int(r) for r in args.radii.split(",")], args.images)
        if args.synthetic
        else dsb_cases(args.dsb, args.subset, args.every, args.upscale)
    )
    rows = []
    groups: dict[str, list[float | None]] = defaultdict(list)
    for group, name, image, _, truth in cases:
        estimate = estimate_diameter(
            image, engine.run, engine.metadata, params, probe_size=args.probe_size
        ).diameter
        ratio = None if estimate is None or truth <= 0 else estimate / truth
        groups[group].append(ratio)
        rows.append(
            {"group": group, "image": name, "true": round(truth, 2), "estimated": estimate, "ratio": ratio}
        )
        shown = "none" if estimate is None else f"{estimate:7.1f}  ×{ratio:.2f}"
        print(f"{group:>22} {name:>10} true {truth:7.1f}  estimated {shown}", flush=True)
    print()
    for group, ratios in groups.items():
        print(f"{group:>22}: {summary(ratios)}")
    print(f"{'all':>22}: {summary([r['ratio'] for r in rows])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
