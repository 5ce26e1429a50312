"""Nuclei in 3-D from a z-stack: slice by slice, stitched, against the counts users had before.

Synthetic stacks (``model_export.synth_stack``) of four kinds — the default (20 nuclei, 2 px per
slice), dense (35), coarse z (3 px per slice) and fine z (1 px per slice, 40 slices) — segmented
as ``Segmenter.segment_stack`` does (every slice at the diameter estimated on the middle one), then:

- **per slice**: the 2-D objects of all slices together, what ``--z all`` counted before;
- **max projection**: the objects of ``project=max``, one 2-D image;
- **stitched** at each ``min_iou``: 3-D object F1 at IoU 0.5 (3-D IoU, one to one), precision,
  recall, count error, DSB-style mAP over IoU 0.5–0.95.

Seeds 100–102 of each kind chose the default ``min_iou`` (rule: ``docs/benchmarks.md``, "Nuclei in
3-D from a z-stack"); 200–202 are the report.

    .venv/bin/python benchmarks/zstack.py [--seeds 200,201,202] [--iou 0.1,0.25,0.4,0.5,0.7]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_export.object_metrics import score_objects  # noqa: E402
from model_export.synth_stack import StackConfig, synth_stack  # noqa: E402
from service import zstack  # noqa: E402
from service.api import Segmenter  # noqa: E402

KINDS = {
    "default": StackConfig(),
    "dense": replace(StackConfig(), nuclei=35),
    "coarse z": replace(StackConfig(), z_step=3.0),
    "fine z": replace(StackConfig(), z_step=1.0, depth=40),
}


def slice_labels(segmenter: Segmenter, image: np.ndarray) -> tuple[list[np.ndarray], float | None]:
    """Each slice's 2-D labels, all at the middle slice's estimated diameter (as segment_stack)."""
    depth = image.shape[0]
    middle = segmenter.segment(image, axes="ZYX", z=depth // 2, outputs=("labels",))
    diameter = middle.diameter or segmenter.metadata.nucleus_diameter
    out = []
    for z in range(depth):
        result = middle if z == depth // 2 else segmenter.segment(
            image, axes="ZYX", z=z, diameter=diameter, outputs=("labels",))
        assert result.labels is not None
        out.append(result.labels)
    return out, middle.diameter


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="200,201,202")
    parser.add_argument("--iou", default="0.1,0.25,0.4,0.5,0.7")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    thresholds = [float(s) for s in args.iou.split(",")]
    segmenter = Segmenter.load()
    print("| kind | seed | true nuclei | per-slice objects | max-projection objects | diameter px | "
          + " | ".join(f"F1 / count error @ {t:g}" for t in thresholds) + " |")
    print("|---" * (6 + len(thresholds)) + "|")
    summary: dict[float, list[tuple[float, float, float, float]]] = {t: [] for t in thresholds}
    for name, config in KINDS.items():
        for seed in seeds:
            image, truth = synth_stack(seed, config)
            true_count = len(np.unique(truth[truth > 0]))
            slices, diameter = slice_labels(segmenter, image)
            per_slice = sum(int(s.max(initial=0)) for s in slices)
            projected = segmenter.segment(image, axes="ZYX", project="max", outputs=("labels",)).object_count
            cells = []
            for t in thresholds:
                stitched = np.stack(list(zstack.stitch(slices, t)))
                scores = score_objects(truth, stitched)
                summary[t].append((scores.f1, scores.precision, scores.recall, scores.mean_ap))
                cells.append(f"{scores.f1:.3f} / {scores.count_error:+d}")
            shown = diameter if diameter is None else round(diameter, 1)
            print(f"| {name} | {seed} | {true_count} | {per_slice} | {projected} | {shown} | "
                  + " | ".join(cells) + " |", flush=True)
    print()
    print("| min_iou | mean F1@0.5 | precision | recall | mAP 0.5–0.95 |")
    print("|---|---|---|---|---|")
    for t in thresholds:
        f1, p, r, ap = np.mean(summary[t], axis=0)
        print(f"| {t:g} | {f1:.4f} | {p:.4f} | {r:.4f} | {ap:.4f} |")


if __name__ == "__main__":
    main()
