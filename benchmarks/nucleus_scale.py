"""Does the model work at any nucleus size? Synthetic nuclei of radius 3–60 px, three ways.

    python benchmarks/nucleus_scale.py [--model models/nuclei-unet.onnx] [--images 3]
        [--seed 9000000] [--radii 3,4,8,15,30,40,60] [--json out.json]

For each radius, synthetic images (``model_export.data.synth_nuclei`` with that typical
radius; the edge is 14 radii, so 3–30 nuclei at the generator's 5–50 % coverage) are
segmented through ``service.pipeline`` as the service does, and scored by object F1 at IoU 0.5:

- ``estimated``: the default — the diameter estimated per image (``service.diameter``);
- ``true``: ``diameter=`` the labels' median equivalent diameter (the best the estimate could
  do), over the nuclei not cut by the image's edge (as the estimate measures them; with all
  of them, the few large nuclei of these small images read up to ×1.5 small);
- ``as is``: no resizing (what the service did before it knew the model's scale).

The estimate's error is reported as the factor between estimated and true diameter.
Where the ``true`` run loses objects is told apart (issue #13): ``F1 model`` scores the
model's objects on its own grid against the truth brought there by nearest neighbour
(what the model and the split lose), so ``F1 true`` − ``F1 model`` is what bringing the
objects back to the input grid loses; ``merged`` counts predicted objects holding most of
two or more true nuclei, ``offset`` is the mean signed difference of equivalent radius of
matched objects on the input grid (px; > 0: masks fatter than the truth).
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
from model_export.object_metrics import match_ious, score_objects
from service import objects, pipeline, postprocess, rescale
from service.engine import Engine
from service.objects import ObjectParams, params_for_model

ROOT = Path(__file__).resolve().parents[1]
RADII = (3, 4, 8, 15, 30, 40, 60)


def model_grid_f1(
    engine: Engine, image: np.ndarray, truth: np.ndarray, params: ObjectParams, diameter: float
) -> float:
    """Object F1 on the model's own grid at ``diameter``, truth brought there by nearest neighbour."""
    meta = engine.metadata
    scale = pipeline.choose_scale(image, engine.run, meta, diameter, 1 << 31)
    prediction = pipeline.predict_scaled(image, scale, engine.run, meta)
    mask = postprocess.foreground_probability(prediction, meta) > meta.threshold
    around = pipeline.surroundings(prediction, mask, params)
    labels = objects.label_prediction(mask, prediction.probabilities, params, around)
    return score_objects(rescale.resize_labels(truth, labels.shape), labels).f1


def merges_and_offset(truth: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
    """(predicted objects holding over half of each of ≥ 2 true ones, mean signed equivalent-radius
    difference of the matched pairs in px)."""
    iou = match_ious(truth, labels)
    true_ids, pred_ids = np.unique(truth), np.unique(labels)
    true_ids, pred_ids = true_ids[true_ids > 0], pred_ids[pred_ids > 0]
    true_area = np.bincount(truth.reshape(-1))[true_ids].astype(np.float64)
    pred_area = np.bincount(labels.reshape(-1))[pred_ids].astype(np.float64)
    # Intersection from IoU: i = IoU·(a + b)/(1 + IoU).
    inter = iou * (true_area[:, None] + pred_area[None, :]) / (1 + iou)
    merged = int(((inter > 0.5 * true_area[:, None]).sum(axis=0) >= 2).sum())
    t, p = np.nonzero(iou > 0.5)
    offset = float(np.mean(np.sqrt(pred_area[p] / np.pi) - np.sqrt(true_area[t] / np.pi))) if t.size else 0.0
    return merged, offset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--images", type=int, default=3, help="images per radius")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=9_000_000, help="image k of radius r: seed + 100 r + k")
    parser.add_argument("--radii", default=",".join(map(str, RADII)))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    params = params_for_model(engine.metadata)
    print(
        f"{engine.metadata.name} {engine.metadata.version}, trained at {engine.metadata.nucleus_diameter} px"
    )
    radii = [int(r) for r in args.radii.split(",")]
    print(
        f"{'radius':>6} {'true d':>7} {'est. d':>7} {'error':>6} "
        f"{'F1 est.':>8} {'F1 true':>8} {'F1 as is':>8} {'F1 model':>8} {'merged':>6} {'offset':>6} "
        f"{'s/img':>6}"
    )
    rows = []
    for radius in radii:
        # ~60 nuclei at 5–50 % coverage: the image edge grows with the radius.
        size = int(min(2048, max(192, 14 * radius)))
        config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
        for k in range(args.images):
            image, truth = synth_nuclei(args.seed + 100 * radius + k, size, config)
            true_d = median_diameter(truth, whole_only=True)
            started = time.perf_counter()
            estimated = predict_labels(engine, image, params)
            seconds = time.perf_counter() - started
            given = predict_labels(engine, image, params, diameter=true_d)
            as_is = predict_labels(engine, image, params, diameter=engine.metadata.nucleus_diameter)
            f1 = [score_segmentation(truth, s)[2].f1 for s in (estimated, given, as_is)]
            f1_model = model_grid_f1(engine, image, truth, params, true_d)
            merged, offset = merges_and_offset(truth, given.labels)
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
                    "f1_model_grid": f1_model,
                    "merged": merged,
                    "offset_px": round(offset, 2),
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"{radius:>6} {true_d:>7.1f} {est_d:>7.1f} {error:>6.2f} {f1[0]:>8.3f} {f1[1]:>8.3f} "
                f"{f1[2]:>8.3f} {f1_model:>8.3f} {merged:>6} {offset:>6.2f} {seconds:>6.2f}"
            )
    keys = ("f1_estimated", "f1_true", "f1_as_is", "f1_model_grid", "merged", "offset_px")
    for radius in radii:
        group = [r for r in rows if r["radius"] == radius]
        means = {key: np.mean([r[key] for r in group]) for key in keys}
        errors = [r["error_factor"] for r in group]
        print(
            f"radius {radius:>2}: mean F1 estimated {means['f1_estimated']:.3f}, "
            f"true {means['f1_true']:.3f}, as is {means['f1_as_is']:.3f}, "
            f"model grid {means['f1_model_grid']:.3f}; merged {means['merged']:.1f}/image, "
            f"offset {means['offset_px']:+.2f} px; estimate within 20 % on "
            f"{sum(e < 1.2 for e in errors)}/{len(group)}, off > ×2 on {sum(not e < 2 for e in errors)}, "
            f"median error ×{np.median(errors):.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
