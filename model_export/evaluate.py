"""``python -m model_export evaluate``: how well an ONNX model segments, against truth and a baseline.

    python -m model_export evaluate --model models/nuclei-unet.onnx --images DIR --masks DIR
    python -m model_export evaluate --model M.onnx --dsb stage1_train [--subset val|train|tune|all]
        [--baseline otsu] [--json scores.json]

Runs exactly what the service runs — ``service.engine.Engine`` for the ONNX session and
``service.pipeline`` for the nucleus scale (estimated per image unless ``--diameter``),
normalisation, tiling, stitching, activation and objects — so the numbers are the
service's numbers. Foreground = probability of the model's foreground channel above its threshold;
truth = mask > 0 (binary masks, class masks and instance label images alike). No PyTorch
is imported here.

Where the truth is an instance label image (more than one distinct non-zero value), the
predicted objects are matched one-to-one to the true ones: precision, recall and F1 at
IoU 0.5, mean F1 and the DSB mean AP over IoU 0.5–0.95, and the count error.
``--no-objects`` skips this (e.g. for multi-class index masks).

``--dsb DIR`` reads the DSB 2018 layout (``<id>/images/<id>.png``, one PNG per nucleus in
``<id>/masks/``; fluorescence images only, see ``model_export.dsb``) and reports per
acquisition series and per image size besides the overall means. ``--subset val`` scores
the images the model's training held out (``training.data.val_ids`` in its metadata),
``tune`` those it held out for choosing between recipes (``training.data.tune_ids``, from
``train --tune-fraction``), ``train`` the other fluorescence images (the ones it trained on),
``all`` every one. ``--baseline otsu`` scores a
classical Otsu + watershed pipeline (``model_export.baselines``) on the same images with
the same scoring, side by side; ``--baseline otsu-sized`` the same pipeline with its seed
spacing and smallest object set for each image's nuclei (the labels' median diameter): the
classical method at its best scale, where a fixed 5 px suits only DSB's own sizes.

One function turns an image into the model's answer (:func:`predict_labels`); scoring
(:func:`score_segmentation`) only ever sees that answer, whoever produced it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.baselines import BASELINES, SIZED_BASELINES
from model_export.folders import DataError, pair_folders, read_mask
from model_export.metrics import dice_iou
from model_export.object_metrics import ObjectScores, score_objects
from service import pipeline, segment
from service.engine import Engine
from service.imaging import decode
from service.model_metadata import ModelMetadata
from service.objects import SPLIT_METHODS, ObjectParams, params_for_model
from service.polarity import DarkToBright, Polarity

#: No pixel limit worth enforcing offline; the service's own limit applies to uploads.
_MAX_PIXELS = 1 << 31

#: ``--subset`` choices for ``--dsb``.
SUBSETS = ("val", "train", "tune", "all")

#: The name the model's scores go under, next to the baselines' names.
MODEL = "model"
#: ``--baseline`` choices: the classical pipelines, plain and told the nuclei's size.
KNOWN_BASELINES = (*BASELINES, *SIZED_BASELINES)


# --- predicting -----------------------------------------------------------------------


@dataclass
class Segmentation:
    """One image's answer, all that scoring sees.

    foreground: ``(H, W)`` bool mask (the model: probability above its threshold).
    labels: ``(H, W)`` int32 objects, 0 = background; None where objects were not asked for.
    tiles: model tiles run for the image (0 for a baseline).
    diameter: the nucleus diameter used to bring the image to the model's scale (estimated
    or given), input px; None for a baseline or a model without a trained diameter.
    scale_factor: the resize the model ran at (model px per input px; 1 for a baseline).
    """

    foreground: np.ndarray
    labels: np.ndarray | None
    tiles: int = 0
    diameter: float | None = None  # nucleus diameter the model was run at, input px (None: not resized)
    scale_factor: float = 1.0


#: A decoded image → its :class:`Segmentation` (the model or a baseline).
Segmenter = Callable[[np.ndarray], Segmentation]


@dataclass(frozen=True)
class ModelPrediction:
    """The model's prediction for one image at the scale chosen for it, before objects: the
    objects at any settings come from it without running the model again (cut sweeps)."""

    metadata: ModelMetadata
    shape: tuple[int, int]  # the image's (H, W)
    scale: pipeline.ScaleChoice
    result: segment.Prediction

    def segmentation(self, object_params: ObjectParams | None) -> Segmentation:
        """The answer with ``object_params``' objects (None: none, ``labels`` None), on the image's grid."""
        md, scale = self.metadata, self.scale
        grid = pipeline.on_input_grid(self.result, md, self.shape, md.threshold, object_params)
        return Segmentation(grid.mask > 0, grid.labels, self.result.tiles, scale.diameter, scale.factor)


def predict(
    engine: Engine,
    image: np.ndarray,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    diameter: float | None = None,
    polarity: Polarity = "bright",
    keep_input: bool | None = None,
) -> ModelPrediction:
    """The model's prediction for one decoded image, as the service computes it.

    The one place evaluation runs the model, through ``service.pipeline`` exactly as the
    service: the nucleus scale (``diameter`` if given, else estimated per image) and tiled
    prediction at that scale (tiling from the arguments, else the model's metadata).

    Args:
        engine: the loaded model.
        image: ``(H, W)`` or ``(H, W, C)`` as decoded (uint8/uint16/float32).
        tile_size, overlap, batch_size: tiling overrides, as ``service.segment.predict``.
        diameter: typical nucleus diameter in px (the service's ``diameter=``); None: estimated.
        polarity: ``dark``: the image turned into optical density first, as the service's
            ``polarity=dark`` turns it (``service.polarity``).
        keep_input: keep the model input the contrast cut needs (``segment.predict``; None: when
            the model records a cut). True to sweep ``min_snr`` on a model that records none.
    """
    meta = engine.metadata
    if polarity == "dark":
        image = DarkToBright.of(image, meta.in_channels)(image)
    scale = pipeline.choose_scale(image, engine.run, meta, diameter, _MAX_PIXELS)
    result = pipeline.predict_scaled(
        image, scale, engine.run, meta, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        keep_input=keep_input,
    )
    return ModelPrediction(meta, image.shape[:2], scale, result)


def predict_labels(
    engine: Engine,
    image: np.ndarray,
    object_params: ObjectParams | None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    diameter: float | None = None,
    polarity: Polarity = "bright",
) -> Segmentation:
    """The model's answer for one decoded image, as the service computes it: :func:`predict`, then
    the objects the service would return (``object_params``, from ``params_for_model``; None skips
    them and ``labels`` is None), everything back on the image's grid."""
    prediction = predict(engine, image, tile_size, overlap, batch_size, diameter, polarity)
    return prediction.segmentation(object_params)


def baseline_segmenter(name: str, diameter: float | None = None) -> Segmenter:
    """A :data:`Segmenter` running the baseline ``name`` of :data:`BASELINES` (or of
    :data:`SIZED_BASELINES`, told the nuclei's ``diameter`` in px); foreground = its objects."""
    if name in SIZED_BASELINES:
        if diameter is None:
            raise ValueError(f"the baseline {name!r} needs the nuclei's diameter")
        function: Callable[[np.ndarray], np.ndarray] = functools.partial(
            SIZED_BASELINES[name], diameter=diameter
        )
    else:
        function = BASELINES[name]

    def segment(image: np.ndarray) -> Segmentation:
        labels = function(image)
        return Segmentation(labels > 0, labels)

    return segment


# --- scoring ---------------------------------------------------------------------------


def score_segmentation(
    true_labels: np.ndarray, segmentation: Segmentation, instances: bool = True
) -> tuple[float, float, ObjectScores | None]:
    """(Dice, IoU, object scores) of one answer against the truth.

    ``true_labels``: ``(H, W)`` int labels, foreground = > 0. Objects are scored when
    ``instances`` (the truth is an instance label image) and the answer has labels; else
    the object scores are None.
    """
    dice, iou = dice_iou(segmentation.foreground, true_labels > 0)
    objects = None
    if instances and segmentation.labels is not None:
        objects = score_objects(true_labels, segmentation.labels)
    return dice, iou, objects


# --- image/mask folder pairs -------------------------------------------------------------


@dataclass
class ImageScore:
    """Scores of one image: foreground Dice and IoU at the model's threshold."""

    name: str
    height: int
    width: int
    dice: float
    iou: float
    tiles: int
    seconds: float
    objects: ObjectScores | None = None


def _load_engine(model: Path, threads: int, split: str | None) -> tuple[Engine, ObjectParams]:
    engine = Engine.load(model, providers=["CPUExecutionProvider"], intra_op_threads=threads)
    try:
        return engine, params_for_model(engine.metadata, split)
    except ValueError as exc:
        raise DataError(f"{model}: {exc}") from exc


def evaluate_folder(
    model: Path,
    images: Path,
    masks: Path,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    threads: int = 0,
    score_instances: bool = True,
    split: str | None = None,
    diameter: float | None = None,
) -> tuple[list[ImageScore], dict]:
    """Score every image/mask pair; returns per-image scores and a summary.

    The summary holds the mean per-image Dice/IoU and the pooled Dice/IoU (all pixels of
    all images counted together, so large images weigh more). ``split`` picks how objects
    are split, as the service's request option does (None: the model's own method).
    """
    engine, object_params = _load_engine(model, threads, split)
    scores: list[ImageScore] = []
    inter = pred_sum = truth_sum = 0
    for image_path, mask_path in pair_folders(images, masks):
        image = decode(image_path.read_bytes(), _MAX_PIXELS)
        true_labels = read_mask(mask_path)
        truth = true_labels > 0
        if image.shape[:2] != truth.shape:
            raise DataError(
                f"{mask_path}: mask is {truth.shape[1]}×{truth.shape[0]} but image {image_path.name} "
                f"is {image.shape[1]}×{image.shape[0]} (width×height)"
            )
        instances = score_instances and len(np.unique(true_labels)) > 2
        started = time.perf_counter()
        answer = predict_labels(
            engine, image, object_params if instances else None, tile_size, overlap, batch_size, diameter
        )
        seconds = time.perf_counter() - started
        dice, iou, object_scores = score_segmentation(true_labels, answer, instances)
        scores.append(
            ImageScore(
                image_path.stem, *truth.shape, dice, iou, answer.tiles, round(seconds, 3), object_scores
            )
        )
        pred = answer.foreground
        inter += int(np.logical_and(pred, truth).sum())
        pred_sum, truth_sum = pred_sum + int(pred.sum()), truth_sum + int(truth.sum())
    total = pred_sum + truth_sum
    summary = {
        "model": str(model),
        "images": len(scores),
        "providers": engine.providers,
        "mean_dice": float(np.mean([s.dice for s in scores])),
        "mean_iou": float(np.mean([s.iou for s in scores])),
        "pooled_dice": 2 * inter / total if total else 1.0,
        "pooled_iou": inter / (total - inter) if total - inter else 1.0,
        "min_dice": float(min(s.dice for s in scores)),
    }
    with_objects = [s.objects for s in scores if s.objects is not None]
    if with_objects:
        summary["objects"] = {
            "images": len(with_objects),
            "method": object_params.as_metadata(),
            **{
                f"mean_{key}": float(np.mean([getattr(o, key) for o in with_objects]))
                for key in ("precision", "recall", "f1", "mean_f1", "mean_ap")
            },
            "mean_abs_count_error": float(np.mean([abs(o.count_error) for o in with_objects])),
            "true_objects": int(sum(o.true_objects for o in with_objects)),
            "predicted_objects": int(sum(o.predicted_objects for o in with_objects)),
        }
    return scores, summary


def print_folder_report(scores: list[ImageScore], summary: dict) -> None:
    width = max(len(s.name) for s in scores)
    header = f"{'image':<{width}}  {'size':>11}  {'tiles':>5}  {'dice':>6}  {'iou':>6}"
    print(header + (f"  {'obj F1':>6}  {'count':>9}" if "objects" in summary else ""))
    for s in scores:
        obj = (
            f"  {s.objects.f1:6.4f}  {s.objects.predicted_objects:>4}/{s.objects.true_objects:<4}"
            if s.objects
            else ""
        )
        size = f"{s.width}×{s.height}"
        print(f"{s.name:<{width}}  {size:>11}  {s.tiles:>5}  {s.dice:6.4f}  {s.iou:6.4f}{obj}")
    print(
        f"{'mean':<{width}}  {'':>11}  {'':>5}  {summary['mean_dice']:6.4f}  {summary['mean_iou']:6.4f}"
        f"   (pooled Dice {summary['pooled_dice']:.4f}, IoU {summary['pooled_iou']:.4f}; "
        f"{summary['images']} images, providers {summary['providers']})"
    )
    if "objects" in summary:
        o = summary["objects"]
        print(
            f"objects ({o['images']} label images, {o['method']['method']}): F1@0.5 {o['mean_f1']:.4f}, "
            f"precision {o['mean_precision']:.4f}, recall {o['mean_recall']:.4f}, "
            f"mean F1@0.5:0.95 {o['mean_mean_f1']:.4f}, DSB mAP {o['mean_mean_ap']:.4f}, "
            f"|count error| {o['mean_abs_count_error']:.1f} ({o['predicted_objects']}/{o['true_objects']})"
        )


# --- the DSB 2018 layout -----------------------------------------------------------------


@dataclass
class DsbScore:
    """One DSB image scored by one method. ``size`` is ``"<height>x<width>"``, as in ``series``."""

    id: str
    series: str
    size: str
    dice: float
    iou: float
    f1: float  # objects at IoU 0.5
    precision: float
    recall: float
    ap: float  # the DSB 2018 score: mean over IoU 0.5–0.95 of TP / (TP + FP + FN)
    mean_f1: float  # F1 averaged over IoU 0.5–0.95
    true_objects: int
    predicted_objects: int
    seconds: float
    true_diameter: float = 0.0  # median equivalent diameter of the true nuclei, px
    used_diameter: float | None = None  # the diameter the model was run at (None: baselines)


def held_out_ids(metadata: ModelMetadata) -> list[str] | None:
    """The DSB ids the model's training held out for validation (``training.data.val_ids``), or None."""
    data = metadata.training.get("data")
    ids = data.get("val_ids") if isinstance(data, dict) else None
    return [str(i) for i in ids] if ids else None


def tuning_ids(metadata: ModelMetadata) -> list[str] | None:
    """The DSB ids the model's training held out for choosing between recipes
    (``training.data.tune_ids``, ``train --tune-fraction``), or None."""
    data = metadata.training.get("data")
    ids = data.get("tune_ids") if isinstance(data, dict) else None
    return [str(i) for i in ids] if ids else None


def check_subset(
    subset: str, val_ids: Sequence[str] | None, model: Path, tune_ids: Sequence[str] | None = None
) -> None:
    """Raise :class:`DataError` where ``subset`` cannot be chosen for this model (before any reading)."""
    if subset not in SUBSETS:
        raise DataError(f"--subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if subset != "all" and not val_ids:
        raise DataError(
            f"{model}: its metadata records no held-out DSB images (training.data.val_ids), so "
            f"--subset {subset} is undefined: it was not trained with --dsb. Use --subset all."
        )
    if subset == "tune" and not tune_ids:
        raise DataError(
            f"{model}: its metadata records no tuning images (training.data.tune_ids): it was "
            "trained without --tune-fraction, so --subset tune is undefined"
        )


def select_subset(
    items: Sequence[dsb.DsbImage],
    subset: str,
    val_ids: Sequence[str] | None,
    model: Path,
    tune_ids: Sequence[str] | None = None,
) -> list[dsb.DsbImage]:
    """The items of ``subset``: ``val`` = ``val_ids``, ``tune`` = ``tune_ids``, ``train`` = the
    others (what the model trained on), ``all``.

    ``val``, ``tune`` and ``train`` need the model's ``val_ids`` (a model not trained on the DSB
    layout has none), ``tune`` its ``tune_ids``; ``val`` or ``tune`` with none of their images in
    the folder is an error too (another folder?).
    """
    check_subset(subset, val_ids, model, tune_ids)
    if subset == "all":
        return list(items)
    held = {"val": set(val_ids or ()), "tune": set(tune_ids or ())}
    if subset == "train":
        return [i for i in items if i.id not in held["val"] and i.id not in held["tune"]]
    chosen = [i for i in items if i.id in held[subset]]
    if not chosen:
        purpose = "for validation" if subset == "val" else "for tuning"
        raise DataError(
            f"none of the {len(held[subset])} images {model} held out {purpose} are among the "
            f"{len(items)} fluorescence images read: is --dsb the folder it was trained on?"
        )
    return chosen


def model_subset(
    items: Sequence[dsb.DsbImage], subset: str, metadata: ModelMetadata, model: Path
) -> list[dsb.DsbImage]:
    """:func:`select_subset` with the held-out ids the model's own metadata records."""
    return select_subset(items, subset, held_out_ids(metadata), model, tuning_ids(metadata))


def model_subset_in_series_order(
    items: Sequence[dsb.DsbImage], subset: str, metadata: ModelMetadata, model: Path
) -> list[dsb.DsbImage]:
    """:func:`model_subset` in the order ``dsb.split_by_series`` lists the images (its training
    side, then its validation side, each by image size, then series hash): the order the
    benchmarks' ``--every`` has always sampled, so that their published rows stay reproducible."""
    chosen = {item.id for item in model_subset(items, subset, metadata, model)}
    train, val = dsb.split_by_series(list(items))
    return [item for item in train + val if item.id in chosen]


def score_dsb(items: Sequence[dsb.DsbImage], segmenter: Segmenter) -> list[DsbScore]:
    """Run ``segmenter`` on every item and score it against the item's labels."""
    return score_dsb_each(items, lambda _: segmenter)


def score_dsb_each(
    items: Sequence[dsb.DsbImage], segmenter_for: Callable[[dsb.DsbImage], Segmenter]
) -> list[DsbScore]:
    """:func:`score_dsb` with a segmenter per item: a sized baseline is told each image's diameter."""
    rows = []
    for item in items:
        started = time.perf_counter()
        answer = segmenter_for(item)(item.image)
        seconds = time.perf_counter() - started
        dice, iou, objects = score_segmentation(item.labels, answer)  # DSB truth: always instances
        if objects is None:
            raise ValueError("a segmenter for DSB scoring must return labels")
        h, w = item.labels.shape
        rows.append(
            DsbScore(
                item.id, item.series, f"{h}x{w}", dice, iou, objects.f1, objects.precision, objects.recall,
                objects.mean_ap, objects.mean_f1, objects.true_objects, objects.predicted_objects,
                round(seconds, 4), round(item.diameter, 2),
                None if answer.diameter is None else round(answer.diameter, 2),
            )
        )
    return rows


def summarise_group(rows: Sequence[DsbScore]) -> dict:
    """Means over images (each image weighs the same) and object totals."""
    summary: dict = {"images": len(rows)}
    for key in ("f1", "dice", "ap", "precision", "recall", "iou", "mean_f1"):
        summary[f"mean_{key}"] = float(np.mean([getattr(r, key) for r in rows]))
    summary["true_objects"] = int(sum(r.true_objects for r in rows))
    summary["predicted_objects"] = int(sum(r.predicted_objects for r in rows))
    summary["seconds"] = round(float(sum(r.seconds for r in rows)), 2)
    scaled = [r for r in rows if r.used_diameter and r.true_diameter]
    if scaled:
        # How far the diameter the model ran at was from the truth (log ratio, as a factor).
        errors = np.abs(np.log([r.used_diameter / r.true_diameter for r in scaled]))
        summary["diameter_error_median"] = round(float(np.exp(np.median(errors))), 3)
        summary["diameter_within_20pct"] = round(float(np.mean(errors < np.log(1.2))), 3)
    return summary


def summarise_dsb(rows: Sequence[DsbScore]) -> dict:
    """``{"overall": ..., "by_size": {size: ...}, "by_series": {series: ...}}`` (groups sorted by name)."""
    by_size: dict[str, list[DsbScore]] = {}
    by_series: dict[str, list[DsbScore]] = {}
    for row in rows:
        by_size.setdefault(row.size, []).append(row)
        by_series.setdefault(row.series, []).append(row)
    return {
        "overall": summarise_group(rows),
        "by_size": {k: summarise_group(v) for k, v in sorted(by_size.items(), key=_size_key)},
        "by_series": {k: summarise_group(v) for k, v in sorted(by_series.items(), key=_size_key)},
    }


def _size_key(entry: tuple[str, object]) -> tuple[int, int, str]:
    """Sort ``"HxW[/...]"`` names by pixel count, then name."""
    h, _, rest = entry[0].partition("x")
    w = rest.split("/")[0]
    return (int(h) * int(w), int(h), entry[0]) if h.isdigit() and w.isdigit() else (0, 0, entry[0])


def evaluate_dsb(
    model: Path,
    dsb_dir: Path,
    subset: str = "val",
    baselines: Sequence[str] = (),
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    threads: int = 0,
    split: str | None = None,
    diameter: float | None = None,
) -> dict:
    """Score the model (and ``baselines``) on a DSB-layout folder's fluorescence images.

    Returns the report: what was scored (folder, subset, model, object method) and, per
    method (``"model"`` and each baseline), ``overall`` / ``by_size`` / ``by_series``
    summaries and the per-image ``images`` rows (:class:`DsbScore` as dicts).
    """
    unknown = [b for b in baselines if b not in KNOWN_BASELINES]
    if unknown:
        raise DataError(f"unknown baseline {unknown[0]!r}; known: {', '.join(KNOWN_BASELINES)}")
    engine, object_params = _load_engine(model, threads, split)
    meta = engine.metadata
    val_ids = held_out_ids(meta)
    check_subset(subset, val_ids, model, tuning_ids(meta))  # before a minute of reading
    items = dsb.load_set(dsb_dir)
    chosen = model_subset(items, subset, meta, model)
    if not chosen:
        raise DataError(f"{dsb_dir}: no fluorescence images in --subset {subset}")
    print(
        f"{dsb_dir}: {len(items)} fluorescence images in {len({i.series for i in items})} series; "
        f"scoring --subset {subset}: {len(chosen)} images",
        file=sys.stderr,
    )

    def model_segmenter(image: np.ndarray) -> Segmentation:
        return predict_labels(engine, image, object_params, tile_size, overlap, batch_size, diameter)

    # Per image: a sized baseline is told the labels' median diameter (the model never is).
    segmenters: dict[str, Callable[[dsb.DsbImage], Segmenter]] = {MODEL: lambda _: model_segmenter}
    for name in baselines:
        segmenters[name] = lambda item, name=name: baseline_segmenter(name, item.diameter)
    methods = {}
    for name, segmenter_for in segmenters.items():
        rows = score_dsb_each(chosen, segmenter_for)
        methods[name] = {**summarise_dsb(rows), "images": [asdict(r) for r in rows]}
    present = {i.id for i in items}
    return {
        "dsb": str(dsb_dir),
        "subset": subset,
        "images": len(chosen),
        "fluorescence_images": len(items),
        "missing_val_ids": sorted(set(val_ids or ()) - present),
        "model": {
            "path": str(model),
            "name": meta.name,
            "version": meta.version,
            "objects": object_params.as_metadata(),
            "providers": engine.providers,
        },
        "methods": methods,
    }


def print_dsb_report(report: dict) -> None:
    """Per-size and per-series tables (F1@0.5 and Dice of every method side by side), then overall."""
    methods = report["methods"]
    names = list(methods)
    model = report["model"]
    print(
        f"{report['dsb']} --subset {report['subset']}: {report['images']} of "
        f"{report['fluorescence_images']} fluorescence images; model {model['name']} {model['version']} "
        f"({model['objects']['method']}, {', '.join(model['providers'])})"
    )
    if report["missing_val_ids"]:
        print(f"warning: {len(report['missing_val_ids'])} of the model's held-out ids are not in this folder")
    for group, title in (("by_size", "size"), ("by_series", "series")):
        width = max(len(title), *(len(k) for k in methods[names[0]][group]))
        columns = [f"{n} F1" for n in names] + [f"{n} Dice" for n in names]
        print()
        print(f"{title:<{width}}  {'images':>6}  " + "  ".join(f"{c:>10}" for c in columns))
        for key, first in methods[names[0]][group].items():
            f1s = [methods[n][group][key]["mean_f1"] for n in names]
            dices = [methods[n][group][key]["mean_dice"] for n in names]
            print(f"{key:<{width}}  {first['images']:>6}  " + "  ".join(f"{v:>10.3f}" for v in f1s + dices))
    print()
    for name in names:
        o = methods[name]["overall"]
        print(
            f"{name:>8}: object F1@0.5 {o['mean_f1']:.3f} (precision {o['mean_precision']:.3f}, "
            f"recall {o['mean_recall']:.3f}), Dice {o['mean_dice']:.3f}, DSB mAP {o['mean_ap']:.3f}, "
            f"objects {o['predicted_objects']}/{o['true_objects']}, {o['seconds']:.1f} s "
            f"({o['images']} images)"
        )
        if "diameter_error_median" in o:
            print(
                f"{'':>8}  nucleus diameter used vs true: median error ×{o['diameter_error_median']:.2f}, "
                f"within 20 % on {100 * o['diameter_within_20pct']:.0f} % of images"
            )


# --- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="ONNX file written by export")
    parser.add_argument("--images", type=Path, default=None, help="image folder (with --masks)")
    parser.add_argument("--masks", type=Path, default=None, help="mask folder, files paired by stem")
    parser.add_argument(
        "--dsb", type=Path, default=None, help="a DSB 2018 stage1_train folder (instead of --images/--masks)"
    )
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default=None,
        help="with --dsb: the model's held-out images (val, default), its tuning images (tune), "
        "the ones it trained on (train), or all",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        choices=list(KNOWN_BASELINES),
        default=[],
        help="with --dsb: also score this classical pipeline on the same images (repeatable)",
    )
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's recommendation")
    parser.add_argument("--overlap", type=int, default=None, help="default: the model's recommendation")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write scores here (JSON)")
    parser.add_argument(
        "--split",
        choices=list(SPLIT_METHODS),
        default=None,
        help="how touching nuclei are split (as the service's ?split=); default: the model's method",
    )
    parser.add_argument(
        "--no-objects", action="store_true", help="skip object metrics even where masks are label images"
    )
    parser.add_argument(
        "--diameter",
        type=float,
        default=None,
        help="nucleus diameter in px for every image (as the service's ?diameter=); default: estimated",
    )
    args = parser.parse_args(argv)
    if args.dsb is not None:
        if args.images is not None or args.masks is not None:
            parser.error("--dsb replaces --images/--masks: give one or the other")
        if args.no_objects:
            parser.error("--no-objects does not apply to --dsb (its masks are nuclei)")
    else:
        if args.images is None or args.masks is None:
            parser.error("give --images and --masks, or --dsb")
        if args.subset is not None or args.baseline:
            parser.error("--subset and --baseline need --dsb")
    try:
        if args.dsb is not None:
            report = evaluate_dsb(
                args.model,
                args.dsb,
                args.subset or "val",
                tuple(dict.fromkeys(args.baseline)),
                args.tile_size,
                args.overlap,
                args.batch_size,
                args.threads,
                args.split,
                args.diameter,
            )
        else:
            scores, summary = evaluate_folder(
                args.model,
                args.images,
                args.masks,
                args.tile_size,
                args.overlap,
                args.batch_size,
                args.threads,
                score_instances=not args.no_objects,
                split=args.split,
                diameter=args.diameter,
            )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dsb is not None:
        print_dsb_report(report)
    else:
        print_folder_report(scores, summary)
        report = {"summary": summary, "images": [asdict(s) for s in scores]}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
