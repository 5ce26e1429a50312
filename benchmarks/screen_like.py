"""Nuclei of different brightness in one 16-bit image: does the model still find them? (issue #13)

16-bit screens and time-lapse movies hold nuclei whose brightness differs by far more than DSB's
crops do: mitotic and G2 nuclei among G1 ones, weakly stained or slightly defocused ones. Each DSB
image (its grey level; background = the median outside the labels) is re-recorded as a 16-bit
camera would, ``100 + 12 × grey``, and the signal above background of some of its nuclei is changed:

- ``16-bit``: none (the same image in a 16-bit container);
- ``bright``: 5 % of the nuclei (at least one) ×4;
- ``dim``: half of them ×0.3.

A nucleus's light is blurred past its annotation, so the change covers its rim too: each pixel
within :data:`RIM_REACH` px of a nucleus (its nearest one) changes with it. Until 2026-12-02 only
the annotated pixels changed, which left every dimmed nucleus inside a ring of its former
brightness: the model outlined the ring (dim nuclei too large or found as partial objects) and the
size estimate read the dim images ×1.07 larger. Numbers measured before then are not comparable.

The model goes through the service's pipeline (estimated scale, its own object settings), Otsu +
watershed as ``evaluate --baseline otsu`` and ``otsu-sized`` (told each image's labelled nucleus
size: the classical method at its best scale); all are scored as ``evaluate`` scores (object F1 at IoU
0.5, foreground Dice), and the model's recall is split between the changed nuclei and the others.
Which nuclei change is drawn per image from its id: every run and model sees the same images.

    .venv/bin/python benchmarks/screen_like.py --dsb DIR/stage1_train [--subset train] [--every 4]

Choose on ``--subset train``, report ``val`` (2.3.1's contrast cut was chosen so: ``--cuts`` below);
a model trained with ``--tune-fraction`` has ``--subset tune`` to choose on instead. The subsets are
the model's own (its metadata), in the order ``split_by_series`` lists them.

``--diagnose`` looks at where the dim images' nuclei go instead (model only): found with the
object cuts as shipped, without the contrast cut, without both cuts, and at the diameter estimated
on the same image before dimming; the best IoU of each missed dim nucleus; the estimate's change.

``--upscale 3`` enlarges each image once its brightness has changed (linearly; the labels by
nearest neighbour): nuclei of 30–80 px, as time-lapse movies at high magnification record them;
the service then estimates the scale and shrinks them back. Enlarging first and changing after
would dim only the inner third of each rim (see :func:`cases`).

``--cuts 0,1,1.5,2,2.5`` sweeps the contrast cut (``min_snr``) instead, on the 16-bit and dim images:
one prediction per image, its objects at each cut; F1, objects, dim and other nuclei found (how
2.3.1's cut was chosen, models/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.evaluate import (
    Segmentation,
    baseline_segmenter,
    model_subset_in_series_order,
    predict,
    predict_labels,
    score_segmentation,
)
from model_export.object_metrics import match_ious
from service.engine import Engine
from service.objects import ObjectParams, params_for_model

ROOT = Path(__file__).resolve().parents[1]
OFFSET, GAIN = 100, 12  # a camera's dark level and a 12-bit range in 16 bits
#: How far past its annotation a nucleus's own light is changed with it, px (the measurement is
#: with the constant, shared with training's per-nucleus dimming).
RIM_REACH = dsb.RIM_REACH


def grey(image: np.ndarray) -> np.ndarray:
    return image[:, :, :3].astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)


def variants(item: dsb.DsbImage) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 16-bit image, ids of the nuclei whose brightness changed) for one DSB image."""
    rng = np.random.default_rng(int(item.id[:8], 16))
    g = grey(item.image)
    outside = item.labels == 0
    background = float(np.median(g[outside])) if outside.any() else float(g.min())
    signal = g - background  # what lies below the background stays as it was recorded
    ids = np.unique(item.labels[item.labels > 0])
    owner = dsb.light_owner(item.labels, RIM_REACH)

    def recorded(gain_of: np.ndarray) -> np.ndarray:
        s = signal.copy()
        for factor in np.unique(gain_of[gain_of != 1]):
            s[np.isin(owner, ids[gain_of == factor])] *= factor
        return np.clip(OFFSET + (background + s) * GAIN, 0, 65535).astype(np.uint16)

    plain = np.ones(len(ids))
    yield "16-bit", recorded(plain), ids[:0]
    bright = plain.copy()
    bright[rng.choice(len(ids), max(1, round(0.05 * len(ids))), replace=False)] = 4.0
    yield "bright", recorded(bright), ids[bright != 1]
    dim = plain.copy()
    dim[rng.choice(len(ids), len(ids) // 2, replace=False)] = 0.3
    yield "dim", recorded(dim), ids[dim != 1]


def cases(
    items: list[dsb.DsbImage], upscale: float = 1.0
) -> Iterator[tuple[dsb.DsbImage, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """Per DSB image: the image with its labels enlarged ``upscale`` × (labels by nearest neighbour)
    and its :func:`variants`, enlarged linearly. The variants are made at the recorded scale and
    then enlarged, so that a nucleus's rim changes as far out as its light is blurred: changed
    after enlarging, :data:`RIM_REACH` would reach only a third as far at ×3 and leave each dim
    nucleus inside a ring of its former brightness (the flaw "A correction" in docs/benchmarks.md
    describes)."""
    for item in items:
        made = list(variants(item))
        if upscale == 1:
            yield item, made
            continue
        big = dsb.enlarged(item, upscale)
        yield big, [(name, dsb.enlarged_image(image, upscale), changed) for name, image, changed in made]


def found(truth: np.ndarray, labels: np.ndarray) -> dict[int, bool]:
    """Per true nucleus id: matched by a predicted object at IoU ≥ 0.5."""
    ids = np.unique(truth[truth > 0])
    if labels.max(initial=0) == 0:
        return {int(i): False for i in ids}
    best = match_ious(truth.astype(np.int32), labels).max(axis=1)
    return {int(i): bool(b >= 0.5) for i, b in zip(ids, best, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=["train", "tune", "val"], default="train")
    parser.add_argument("--every", type=int, default=4, help="every n-th image of the subset")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--diagnose", action="store_true", help="where the dim nuclei go (see above)")
    parser.add_argument("--cuts", help="comma-separated min_snr values to sweep (see above)")
    parser.add_argument("--upscale", type=float, default=1.0, help="enlarge each DSB image first (see above)")
    args = parser.parse_args()

    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    items = dsb.load_set(args.dsb)
    items = model_subset_in_series_order(items, args.subset, engine.metadata, args.model)[:: args.every]
    params = params_for_model(engine.metadata)
    if args.diagnose:
        diagnose(engine, params, items, args.upscale, f"{args.subset}, every {args.every}")
        return
    if args.cuts:
        sweep_contrast_cut(engine, params, items, args.upscale, [float(c) for c in args.cuts.split(",")])
        return
    otsu = baseline_segmenter("otsu")
    segmenters: dict[str, Callable[[np.ndarray, dsb.DsbImage], Segmentation]] = {
        "model": lambda image, _: predict_labels(engine, image, params),
        "otsu": lambda image, _: otsu(image),
        # Told the labels' diameter: the classical method at the nuclei's own scale.
        "otsu-sized": lambda image, item: baseline_segmenter("otsu-sized", item.diameter)(image),
    }
    scores: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    recall: dict[tuple[str, bool], list[bool]] = defaultdict(list)
    for item, made in cases(items, args.upscale):
        for variant, image, changed in made:
            changed_ids = set(changed.tolist())
            for who, segment in segmenters.items():
                answer = segment(image, item)
                dice, _, objects = score_segmentation(item.labels, answer)
                assert objects is not None and answer.labels is not None
                scores[(variant, who)].append((objects.f1, dice))
                if who == "model":
                    for nucleus, hit in found(item.labels, answer.labels).items():
                        recall[(variant, nucleus in changed_ids)].append(hit)
    name = f"{args.model.name} {engine.metadata.version}"
    scale = f", enlarged ×{args.upscale:g}" if args.upscale != 1 else ""
    print(f"{name}, {len(items)} DSB {args.subset} images (every {args.every}){scale}")
    print(
        "| image | model F1 | model Dice | Otsu F1 | Otsu Dice | Otsu sized F1 | Otsu sized Dice "
        "| recall (pooled): changed / other nuclei |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant in ("16-bit", "bright", "dim"):
        m, o = np.array(scores[(variant, "model")]), np.array(scores[(variant, "otsu")])
        sized = np.array(scores[(variant, "otsu-sized")])
        changed, others = recall[(variant, True)], recall[(variant, False)]
        split = f"{np.mean(changed):.3f} ({len(changed)}) / " if changed else "– / "
        print(
            f"| {variant} | {m[:, 0].mean():.4f} | {m[:, 1].mean():.4f} | {o[:, 0].mean():.4f} | "
            f"{o[:, 1].mean():.4f} | {sized[:, 0].mean():.4f} | {sized[:, 1].mean():.4f} | "
            f"{split}{np.mean(others):.3f} ({len(others)}) |"
        )


def sweep_contrast_cut(
    engine: Engine, params: ObjectParams, items: list[dsb.DsbImage], upscale: float, cuts: list[float]
) -> None:
    """The 16-bit and dim images' objects at each ``min_snr`` in ``cuts``, from one prediction each."""
    md = engine.metadata
    f1: dict[tuple[str, float], list[float]] = defaultdict(list)
    objects: dict[tuple[str, float], int] = defaultdict(int)
    recall: dict[tuple[str, float, bool], list[bool]] = defaultdict(list)
    for item, made in cases(items, upscale):
        for variant, image, changed in made:
            if variant == "bright":
                continue
            prediction = predict(engine, image, keep_input=True)  # once; the objects at every cut
            dimmed = set(changed.tolist())
            for cut in cuts:
                answer = prediction.segmentation(dataclasses.replace(params, min_snr=cut))
                assert answer.labels is not None
                f1[(variant, cut)].append(score_segmentation(item.labels, answer)[2].f1)  # type: ignore[union-attr]
                objects[(variant, cut)] += int(answer.labels.max())
                for nucleus, hit in found(item.labels, answer.labels).items():
                    recall[(variant, cut, nucleus in dimmed)].append(hit)
    print(f"{md.version}, {len(items)} DSB images: objects at each min_snr")
    print("| image | min_snr | F1 | objects | dim nuclei found | the others found |")
    print("|---|---|---|---|---|---|")
    for variant in ("16-bit", "dim"):
        for cut in cuts:
            dim = recall[(variant, cut, True)]
            print(
                f"| {variant} | {cut:g} | {np.mean(f1[(variant, cut)]):.4f} | {objects[(variant, cut)]} | "
                f"{f'{np.mean(dim):.3f}' if dim else '–'} | {np.mean(recall[(variant, cut, False)]):.3f} |"
            )


def diagnose(
    engine: Engine, params: ObjectParams, items: list[dsb.DsbImage], upscale: float, which: str
) -> None:
    """Dim images only: recall of dim / other nuclei under four settings, what the missed dim
    nuclei overlap, and how much the scale estimate moved when half the nuclei dimmed."""
    settings = {
        "as shipped": (params, False),
        "no contrast cut": (dataclasses.replace(params, min_snr=0.0), False),
        "no cuts": (dataclasses.replace(params, min_snr=0.0, min_confidence=0.0), False),
        "at the undimmed image's estimate": (params, True),
    }
    recall: dict[tuple[str, bool], list[bool]] = defaultdict(list)
    f1: dict[str, list[float]] = defaultdict(list)
    missed_iou: list[float] = []
    ratios: list[float] = []
    for item, made in cases(items, upscale):
        (_, plain, _), _, (_, image, changed) = made
        undimmed = predict_labels(engine, plain, None).diameter
        dimmed = set(changed.tolist())
        for name, (p, pinned) in settings.items():
            answer = predict_labels(engine, image, p, diameter=undimmed if pinned else None)
            assert answer.labels is not None
            f1[name].append(score_segmentation(item.labels, answer)[2].f1)  # type: ignore[union-attr]
            for nucleus, hit in found(item.labels, answer.labels).items():
                recall[(name, nucleus in dimmed)].append(hit)
            if name != "as shipped":
                continue
            if undimmed and answer.diameter:
                ratios.append(answer.diameter / undimmed)
            ids = np.unique(item.labels[item.labels > 0])
            best = (
                match_ious(item.labels.astype(np.int32), answer.labels).max(axis=1)
                if answer.labels.max(initial=0) > 0
                else np.zeros(len(ids))
            )
            missed_iou += [float(b) for i, b in zip(ids, best, strict=True) if i in dimmed and b < 0.5]
    print(f"{engine.metadata.version}, dim images of {len(items)} DSB images ({which})")
    print("| setting | F1 | dim nuclei found | other nuclei found |")
    print("|---|---|---|---|")
    for name in settings:
        print(
            f"| {name} | {np.mean(f1[name]):.4f} | {np.mean(recall[(name, True)]):.3f} | "
            f"{np.mean(recall[(name, False)]):.3f} |"
        )
    bins = [0.0, 0.01, 0.2, 0.35, 0.5]
    counts = np.histogram(missed_iou, bins=bins)[0]
    print(
        f"missed dim nuclei ({len(missed_iou)}) by their best IoU with an object: "
        + ", ".join(f"[{a:g}, {b:g}) {c}" for a, b, c in zip(bins[:-1], bins[1:], counts, strict=True))
    )
    r = np.array(ratios)
    print(
        f"estimate on the dim image / on the undimmed one: median ×{np.median(r):.3f}, "
        f"p10 ×{np.percentile(r, 10):.3f}, p90 ×{np.percentile(r, 90):.3f} ({len(r)} images)"
    )


if __name__ == "__main__":
    main()
