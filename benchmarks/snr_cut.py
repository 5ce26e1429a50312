"""Choose the contrast cut (``min_snr``, ``service.objects``) on DSB images and near-empty fields.

The cut drops a connected region of the mask at the model's scale whose mean normalised model
input (over the pixels the model marked) stands less than ``min_snr`` ring standard deviations
above the median of a ring around it (``snr_ring`` px; other marked pixels left out); regions with
under 5 ring pixels (inside a crowded cluster) are kept. Each image is segmented once and its
objects made once per cut, as the service makes them (``objects.label_prediction`` with the model's
settings, its confidence cut included, and the cut), then brought back to the input grid and
scored as ``evaluate`` scores (object F1, precision and recall at IoU 0.5, mean over images), with
the false objects (no true nucleus at IoU ≥ 0.5) and the true nuclei found, summed. The rule used
for 2.3.0 is the confidence cut's: on the training images, the largest F1 gain over no cut that
loses at most 0.001 of recall. Two sets: DSB images of ``--subset`` (every ``--every``-th) and
synthetic near-empty fields (``--fields`` from seed ``--first``; 6100000–29 are the tuning fields
of ``service.diameter``, 6100030–149 those of ``benchmarks/near_empty.py``).

    .venv/bin/python benchmarks/snr_cut.py --dsb DIR/stage1_train [--subset train] [--every 2]
        [--fields 30] [--first 6100000]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from _sweep import add_dsb_options, near_empty_fields, scores_per_variant

from model_export import dsb
from model_export.evaluate import model_subset
from service.engine import Engine
from service.objects import params_for_model

CUTS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0)


def scores_per_cut(engine: Engine, image: np.ndarray, truth: np.ndarray) -> dict[float, dict]:
    """Per cut: one image's scores (``_sweep.scores_per_variant``), the model's settings otherwise."""
    params = params_for_model(engine.metadata)
    return scores_per_variant(engine, image, truth, {cut: replace(params, min_snr=cut) for cut in CUTS})


def run(engine: Engine, images: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[dict[float, dict]]:
    return [scores_per_cut(engine, image, truth.astype(np.int32)) for image, truth in images]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dsb_options(parser, every=2)
    args = parser.parse_args()
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    md = engine.metadata
    items = model_subset(dsb.load_set(args.dsb), args.subset, md, args.model)[:: args.every]
    rows = run(engine, ((item.image, item.labels) for item in items))
    ring = params_for_model(md).snr_ring
    print(f"DSB {args.subset}, every {args.every}: {len(rows)} images; ring {ring} px")
    print("| min snr | F1 | precision | recall | false objects | true found |\n|---|---|---|---|---|---|")
    for cut in CUTS:
        f1, precision, recall = (np.mean([r[cut][k] for r in rows]) for k in ("f1", "precision", "recall"))
        false, true = (sum(r[cut][k] for r in rows) for k in ("false", "true"))
        print(f"| {cut} | {f1:.4f} | {precision:.4f} | {recall:.4f} | {false} | {true} |", flush=True)
    fields = run(engine, near_empty_fields(args.first, args.fields))
    print(f"\n{args.fields} near-empty fields from seed {args.first}")
    print("| min snr | false objects | per field: mean / max | true found |\n|---|---|---|---|")
    for cut in CUTS:
        false = [r[cut]["false"] for r in fields]
        true = sum(r[cut]["true"] for r in fields)
        print(f"| {cut} | {sum(false)} | {np.mean(false):.1f} / {max(false)} | {true} |", flush=True)


if __name__ == "__main__":
    main()
