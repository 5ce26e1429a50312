"""Does DSB leave dim nuclei unlabelled? Blobs outside every mask, against the dim labelled nuclei
(issue #13; no model, a few seconds per hundred images).

The hypothesis: if DSB's annotators skipped dim nuclei, training teaches "dim = background", and a
16-bit screen's dim nuclei go unmarked (``benchmarks/screen_like.py``). This counts, on the DSB
images (the training side of the series split by default), two things in the same units:

- every labelled nucleus's contrast: the mean of the image's white top-hat inside its mask;
- blobs no mask covers: connected parts of the top-hat above a share of the image's median
  labelled contrast, outside the masks dilated by 3 px, between 1/4 and 4 times a median
  nucleus's area, whose centroid lies inside them (rings of halo around a bright nucleus
  are not blobs).

Contrast is relative to the image's median labelled nucleus, in bands (``model_export.contrast``,
the measure training's ``--dim-weight`` uses). The top-hat is taken on
the image normalised as the service does (1st percentile → 0, 99.8th → 1), lightly smoothed
(σ = diameter / 8), with a disc of 1.5 × the image's median nucleus diameter, so that haze
broader than a nucleus is not counted. A blob's contrast is the mean over its thresholded part,
so it reads a little high against a nucleus's whole-mask mean; the blobs are candidates, not
nuclei: look at them with ``--montage``.

``--model`` (repeatable) adds, per contrast band, the share of the labelled nuclei each model
finds (IoU > 0.5, one to one, as F1), segmented as the service does (estimated scale, the model's
own object settings): does the model miss DSB's own dim nuclei as it misses the dimmed ones?

    .venv/bin/python benchmarks/unlabelled_blobs.py --dsb DIR/stage1_train [--subset train|val|all]
        [--every 1] [--model models/nuclei-unet.onnx ...] [--montage blobs.png --band 0.25,0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage as ndi

from model_export import dsb
from model_export.contrast import normalised, nucleus_means, top_hat
from model_export.evaluate import predict_labels
from model_export.object_metrics import match_ious
from service.engine import Engine
from service.objects import params_for_model

#: Contrast bands, relative to the image's median labelled nucleus.
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, np.inf))
#: The lowest band's blobs are not searched for: below a quarter of a nucleus's contrast the
#: top-hat is mostly texture and noise.
BLOB_FLOOR = 0.25


class Blob(NamedTuple):  # not a dataclass: the tests load this script without registering it
    id: str
    series: str
    contrast: float  # relative to the image's median labelled nucleus
    centre: tuple[int, int]
    diameter: float  # the image's median nucleus diameter, px


def image_contrasts(item: dsb.DsbImage) -> tuple[np.ndarray, list[Blob]]:
    """(relative contrast of every labelled nucleus, the blobs outside the masks) of one image."""
    diameter = max(item.diameter, 4.0)
    hat = top_hat(item.image, diameter)
    labels = item.labels
    means = nucleus_means(hat, labels)[1:]
    means = means[np.isfinite(means)]
    if means.size == 0:
        return means, []
    median = float(np.median(means))
    candidate = (hat > BLOB_FLOOR * median) & ~ndi.binary_dilation(labels > 0, iterations=3)
    parts, _ = ndi.label(candidate)
    nucleus_area = np.pi * (diameter / 2) ** 2
    blobs = []
    for index, box in enumerate(ndi.find_objects(parts), start=1):
        inside = parts[box] == index
        area = int(inside.sum())
        if not 0.25 * nucleus_area <= area <= 4 * nucleus_area:
            continue
        ys, xs = np.nonzero(inside)
        cy, cx = int(ys.mean()), int(xs.mean())
        if not inside[cy, cx]:  # a ring around a nucleus: its halo, not a blob
            continue
        contrast = float(hat[box][inside].mean()) / median
        blobs.append(Blob(item.id, item.series, contrast, (cy + box[0].start, cx + box[1].start), diameter))
    return means / median, blobs


def found_by(engine: Engine, item: dsb.DsbImage) -> np.ndarray:
    """Per labelled nucleus (ascending id, as :func:`image_contrasts`), whether ``engine`` found it."""
    answer = predict_labels(engine, item.image, params_for_model(engine.metadata))
    assert answer.labels is not None
    return (match_ious(item.labels, answer.labels) > 0.5).any(axis=1)


def montage(items: dict[str, dsb.DsbImage], blobs: list[Blob], path: Path, count: int = 30) -> None:
    """Crops around ``count`` random blobs (red cross), the masks' outlines in green."""
    rng = np.random.default_rng(0)
    tiles = []
    for blob in [blobs[i] for i in rng.choice(len(blobs), min(count, len(blobs)), replace=False)]:
        item = items[blob.id]
        rgb = np.dstack([np.clip(normalised(item.image), 0, 1)] * 3)
        mask = (item.labels > 0).astype(np.uint8)
        rgb[mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)] = (0, 1, 0)
        half = int(max(24, 1.5 * blob.diameter))
        padded = np.pad(rgb, ((half, half), (half, half), (0, 0)))
        cy, cx = blob.centre
        crop = (padded[cy : cy + 2 * half, cx : cx + 2 * half] * 255).astype(np.uint8)
        crop = cv2.resize(crop, (128, 128), interpolation=cv2.INTER_NEAREST)
        cv2.drawMarker(crop, (64, 64), (255, 0, 0), cv2.MARKER_CROSS, 8, 1)
        tiles.append(crop)
    while len(tiles) % 6:
        tiles.append(np.zeros((128, 128, 3), np.uint8))
    grid = np.vstack([np.hstack(tiles[i : i + 6]) for i in range(0, len(tiles), 6)])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsb", type=Path, required=True, help="the stage1_train folder")
    parser.add_argument(
        "--subset",
        choices=("train", "val", "all"),
        default="train",
        help="the side of the series split (model_export.dsb.split_by_series)",
    )
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="also: the share each model finds"
    )
    parser.add_argument("--montage", type=Path, help="write crops around random blobs of --band here")
    parser.add_argument("--band", default="0.25,0.5", help="the contrast band the montage draws from")
    args = parser.parse_args()
    items = dsb.load_set(args.dsb)
    train, val = dsb.split_by_series(items)
    chosen = {"train": train, "val": val, "all": items}[args.subset][:: args.every]
    engines = [Engine.load(m, providers=["CPUExecutionProvider"], intra_op_threads=2) for m in args.model]
    labelled, blobs = [], []
    found: list[list[np.ndarray]] = [[] for _ in engines]
    for item in chosen:
        contrasts, outside = image_contrasts(item)
        labelled.append(contrasts)
        blobs += outside
        for engine, hits in zip(engines, found, strict=True):
            hits.append(found_by(engine, item))
    nuclei = np.concatenate(labelled)
    blob_contrast = np.array([b.contrast for b in blobs])
    print(
        f"{len(chosen)} DSB {args.subset} images, {nuclei.size} labelled nuclei, "
        f"{len(blobs)} blobs outside the masks"
    )
    hit_rates = [np.concatenate(hits) for hits in found]
    models = "".join(f" found by {e.metadata.version} |" for e in engines)
    print(f"| contrast (× the image's median nucleus) | labelled nuclei | blobs outside every mask |{models}")
    print("|---|---|---|" + "---|" * len(engines))
    for low, high in BANDS:
        band = (nuclei >= low) & (nuclei < high)
        in_band = int(band.sum())
        rates = "".join(f" {hits[band].mean():.3f} |" if in_band else " – |" for hits in hit_rates)
        blob_count = (
            "–" if high <= BLOB_FLOOR else str(int(((blob_contrast >= low) & (blob_contrast < high)).sum()))
        )
        print(f"| {low:g}–{high:g} | {in_band} ({in_band / nuclei.size:.1%}) | {blob_count} |{rates}")
    by_series: dict[str, int] = {}
    for blob in blobs:
        by_series[blob.series] = by_series.get(blob.series, 0) + 1
    top = sorted(by_series.items(), key=lambda kv: -kv[1])[:5]
    print("series with most blobs: " + ", ".join(f"{name} {n}" for name, n in top))
    if args.montage:
        low, high = (float(v) for v in args.band.split(","))
        shown = [b for b in blobs if low <= b.contrast < high]
        montage({i.id: i for i in chosen}, shown, args.montage)
        print(f"montage of {min(30, len(shown))} of {len(shown)} blobs in {low:g}–{high:g}: {args.montage}")


if __name__ == "__main__":
    main()
