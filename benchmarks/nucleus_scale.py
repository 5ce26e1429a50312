"""Does the model work at any nucleus size? Synthetic nuclei of radius 3–60 px, three ways.

    python benchmarks/nucleus_scale.py [--model models/nuclei-unet.onnx] [--images 3] [--json out.json]

For each radius, synthetic images (``model_export.data.synth_nuclei`` with that typical
radius, large enough to hold ~60 nuclei) are segmented through ``service.pipeline`` as the
service does, and scored by object F1 at IoU 0.5:

- ``estimated``: the default — the diameter estimated per image (``service.diameter``);
- ``true``: ``diameter=`` the labels' median equivalent diameter (the best the estimate could do);
- ``as is``: no resizing (what the service did before it knew the model's scale).

The estimate's error is reported as the factor between estimated and true diameter.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from model_export.data import SynthConfig, synth_nuclei
from model_export.dsb import median_diameter
from model_export.evaluate import predict_labels, score_segmentation
from service.engine import Engine
from service.objects import params_for_model

ROOT = Path(__file__).resolve().parents[1]
RADII = (3, 4, 8, 15, 30, 40, 60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--images", type=int, default=3, help="images per radius")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    params = params_for_model(engine.metadata)
    print(
        f"{engine.metadata.name} {engine.metadata.version}, trained at {engine.metadata.nucleus_diameter} px"
    )
    print(
        f"{'radius':>6} {'true d':>7} {'est. d':>7} {'error':>6} "
        f"{'F1 est.':>8} {'F1 true':>8} {'F1 as is':>8} {'s/img':>6}"
    )
    rows = []
    for radius in RADII:
        # ~60 nuclei at 5–50 % coverage: the image edge grows with the radius.
        size = int(min(2048, max(192, 14 * radius)))
        config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
        for k in range(args.images):
            image, truth = synth_nuclei(9_000_000 + 100 * radius + k, size, config)
            true_d = median_diameter(truth)
            started = time.perf_counter()
            estimated = predict_labels(engine, image, params)
            seconds = time.perf_counter() - started
            given = predict_labels(engine, image, params, diameter=true_d)
            as_is = predict_labels(engine, image, params, diameter=engine.metadata.nucleus_diameter)
            f1 = [score_segmentation(truth, s)[2].f1 for s in (estimated, given, as_is)]
            est_d = estimated.diameter or float("nan")
            error = math.exp(abs(math.log(est_d / true_d))) if estimated.diameter else float("nan")
            rows.append(
                {
                    "radius": radius,
                    "size": size,
                    "true_diameter": round(true_d, 2),
                    "estimated_diameter": None if estimated.diameter is None else round(est_d, 2),
                    "error_factor": round(error, 3),
                    "f1_estimated": f1[0],
                    "f1_true": f1[1],
                    "f1_as_is": f1[2],
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"{radius:>6} {true_d:>7.1f} {est_d:>7.1f} {error:>6.2f} {f1[0]:>8.3f} {f1[1]:>8.3f} "
                f"{f1[2]:>8.3f} {seconds:>6.2f}"
            )
    for radius in RADII:
        group = [r for r in rows if r["radius"] == radius]
        means = {key: np.mean([r[key] for r in group]) for key in ("f1_estimated", "f1_true", "f1_as_is")}
        print(
            f"radius {radius:>2}: mean F1 estimated {means['f1_estimated']:.3f}, "
            f"true {means['f1_true']:.3f}, as is {means['f1_as_is']:.3f}; "
            f"estimate within 20 % on {sum(r['error_factor'] < 1.2 for r in group)}/{len(group)}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
