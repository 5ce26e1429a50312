"""``python -m model_export quantize``: an int8 copy of an exported model for CPU serving.

    python -m model_export quantize --model models/nuclei-unet.onnx --dsb DIR/stage1_train [--check]

ONNX Runtime static quantisation in the QDQ format: activations uint8 (per tensor, asymmetric),
weights int8 per output channel, ranges calibrated (min/max) on the model's own kind of input.
Measured on this project's 2-core AVX-512 CPU (FACTS.md): 1.64–1.67× the fp32 speed; int8
activations (s8/s8) gave no speed-up and dynamic quantisation was slower, so neither is offered.

Calibration data is what the service feeds the model: DSB 2018 *training* images (never the
``training.data.val_ids`` the model's metadata records, so ``--check`` stays a held-out test)
brought to the model's nucleus scale from their labels' median diameter, plus synthetic
images from ``model_export.data.synth_nuclei``, each normalised by the model's own
normalisation (``service.preprocess.prepare``) and centre-cropped to ``--max-edge``.

The int8 file keeps the fp32 model's metadata (it describes itself the same way) with
``precision`` ``int8`` and a ``quantization`` entry saying how it was made; it is written
beside the fp32 file as ``<stem>.int8.onnx`` (:func:`service.engine.int8_path`), where the
service finds it. ``--check`` then runs both models through the service's pipeline on the DSB
validation split and reports pixel agreement of the masks and object F1@0.5 for each
(:func:`compare_dsb`); it exits non-zero when the shipping bars fail (agreement < 99 %,
F1 drop > 0.01).

PyTorch is not needed: only the synthetic generator's module imports it, and only when
synthetic calibration images are asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from model_export import dsb
from model_export.evaluate import held_out_ids, model_subset, predict_labels, score_segmentation, tuning_ids
from model_export.folders import DataError
from model_export.seal import seal_proto
from service import model_checksum, rescale
from service.engine import Engine, int8_path
from service.modality import check_modality
from service.model_metadata import ModelMetadata
from service.objects import params_for_model
from service.preprocess import prepare

#: The shipping bars: masks equal to fp32's on at least this share of pixels (pooled over the
#: validation images), and object F1@0.5 at most this much below fp32's.
MIN_AGREEMENT = 0.99
MAX_F1_DROP = 0.01

#: Seeds of the synthetic calibration images: apart from training's (0…) and validation's
#: (1000003…) streams and from `synth`'s default held-out set (2000003…).
SYNTH_SEED = 4_000_003


class QuantizeError(RuntimeError):
    """The model cannot be quantised as asked (no metadata, an int8 model given, ...)."""


def read_metadata(path: Path) -> ModelMetadata:
    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_onnx_props({p.key: p.value for p in proto.metadata_props})


# --- calibration data ------------------------------------------------------------------


def model_input(
    image: np.ndarray, diameter: float | None, metadata: ModelMetadata, max_edge: int
) -> np.ndarray:
    """A raw image as the model sees it: ``(1, C, h, w)`` float32, h and w multiples of the divisor.

    Resized so nuclei of ``diameter`` px come out at the model's ``nucleus_diameter`` (as the
    service does; None or a model without a diameter: as it is), normalised over the whole
    image, then centre-cropped to at most ``max_edge`` and zero-padded to the size divisor.
    """
    if diameter and metadata.nucleus_diameter:
        image = rescale.resize_image(image, rescale.factor_for(diameter, metadata.nucleus_diameter))
    chw = prepare(image, metadata.in_channels, metadata.normalization)
    _, h, w = chw.shape
    top, left = max(0, (h - max_edge) // 2), max(0, (w - max_edge) // 2)
    chw = chw[:, top : top + max_edge, left : left + max_edge]
    d = metadata.size_divisor
    pad_h, pad_w = -chw.shape[1] % d, -chw.shape[2] % d
    return np.pad(chw, ((0, 0), (0, pad_h), (0, pad_w)))[None].astype(np.float32)


@dataclass
class CalibrationSet:
    """The model inputs to calibrate on and where they came from (recorded in the int8 file)."""

    inputs: list[np.ndarray]
    dsb_ids: list[str]
    synthetic_seeds: list[int]
    max_edge: int


def calibration_set(
    metadata: ModelMetadata,
    dsb_root: Path | None,
    dsb_images: int = 24,
    synthetic_images: int = 8,
    max_edge: int = 512,
    seed: int = 0,
) -> CalibrationSet:
    """``dsb_images`` fluorescence training images of the DSB set plus ``synthetic_images`` synthetic ones.

    DSB images are drawn in a reproducible order (a hash of ``seed`` and the id) from those not
    in the model's validation (or tuning) ids; bright-field and H&E images are skipped as in training.
    A model trained without ``--dsb`` records no validation ids: then any DSB image may be drawn.
    """
    inputs: list[np.ndarray] = []
    ids: list[str] = []
    if dsb_root is not None and dsb_images > 0:
        held = set(held_out_ids(metadata) or ()) | set(tuning_ids(metadata) or ())
        samples = [s for s in dsb.find_samples(dsb_root) if s.id not in held]
        samples.sort(key=lambda s: hashlib.sha256(f"{seed}:{s.id}".encode()).hexdigest())
        for sample in samples:
            if len(ids) == dsb_images:
                break
            image, labels = dsb.read_sample(sample)
            if check_modality(image).modality != "fluorescence":
                continue
            inputs.append(model_input(image, dsb.median_diameter(labels) or None, metadata, max_edge))
            ids.append(sample.id)
        if len(ids) < dsb_images:
            raise DataError(f"{dsb_root}: only {len(ids)} fluorescence training images, {dsb_images} asked")
    seeds = [SYNTH_SEED + i for i in range(synthetic_images)]
    if seeds:
        # The generator lives beside the PyTorch datasets: import it only when asked, since
        # PyTorch in the same process slows ONNX Runtime down (FACTS.md) for --check.
        from model_export.data import synth_nuclei
    for s in seeds:
        image, labels = synth_nuclei(s, max_edge)
        inputs.append(model_input(image, dsb.median_diameter(labels) or None, metadata, max_edge))
    if not inputs:
        raise QuantizeError("no calibration images: give --dsb and/or --synthetic > 0")
    return CalibrationSet(inputs, ids, seeds, max_edge)


class _Reader(CalibrationDataReader):
    """Feeds the calibration inputs to ORT's calibrator one at a time."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter({input_name: x} for x in inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


# --- quantising --------------------------------------------------------------------------


class _DropPreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Silence ORT's advice to pre-process: its symbolic shape inference fails on our dynamic
    H/W ("Incomplete symbolic shape inference"), and what it would do is done already (the
    exporter folds batch norm into the convolutions; the graph is Conv/Relu/MaxPool/
    ConvTranspose/Concat)."""
    root, advice = logging.getLogger(), _DropPreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize(model: Path, out: Path, calibration: CalibrationSet) -> dict:
    """Write the int8 QDQ copy of ``model`` to ``out`` with the fp32 metadata + quantisation details.

    Returns a report: sizes in bytes, the quantisation entry, seconds taken.
    """
    model, out = Path(model), Path(out)
    metadata = read_metadata(model)
    if metadata.precision != "fp32":
        raise QuantizeError(f"{model}: quantise the fp32 model, not a {metadata.precision} one")
    input_name = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _without_preprocessing_advice():
        # The calibrator writes an augmented copy of the model beside its temporary files.
        raw = Path(tmp) / "int8.onnx"
        quantize_static(
            str(model),
            str(raw),
            _Reader(input_name, calibration.inputs),
            quant_format=QuantFormat.QDQ,
            # u8 activations / s8 per-channel weights: the combination that runs faster on
            # AVX-512 VNNI CPUs (s8/s8 measured no faster than fp32).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(raw))
    quantization = {
        "method": "onnxruntime static quantisation, QDQ",
        "activations": "uint8, per tensor",
        "weights": "int8, per output channel",
        "calibration": {
            "method": "MinMax",
            "dsb_train_ids": calibration.dsb_ids,
            "synthetic_seeds": calibration.synthetic_seeds,
            "max_edge": calibration.max_edge,
        },
        "onnxruntime": ort.__version__,
        # The seal digest (the file less its own seal entry): sealing the fp32 file later keeps it.
        "source": {"file": model.name, "sha256": model_checksum.digest(model.read_bytes())},
    }
    int8_meta = metadata.model_copy(update={"precision": "int8", "quantization": quantization})
    proto.doc_string = int8_meta.description
    del proto.metadata_props[:]
    for key, value in int8_meta.to_onnx_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    seal_proto(proto)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    if read_metadata(out) != int8_meta:
        raise QuantizeError(f"{out}: metadata did not round-trip")
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "fp32_bytes": model.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
        "quantization": quantization,
    }


# --- checking against fp32 ----------------------------------------------------------------


@dataclass
class Agreement:
    """fp32 vs int8 on one image: masks and scores, each model at its own estimated scale."""

    id: str
    pixels: int
    equal_pixels: int
    f1_fp32: float
    f1_int8: float
    dice_fp32: float
    dice_int8: float
    diameter_fp32: float | None
    diameter_int8: float | None
    seconds_fp32: float
    seconds_int8: float

    @property
    def agreement(self) -> float:
        return self.equal_pixels / self.pixels


def compare_dsb(
    fp32: Path, int8: Path, dsb_root: Path, subset: str = "val", threads: int = 0
) -> tuple[list[Agreement], dict]:
    """Both models through the service's pipeline (``evaluate.predict_labels``) on a DSB subset.

    Each model estimates the nucleus scale itself, as the service would with it; the masks are
    compared on the input grid, and each model is scored against the truth as ``evaluate`` does.
    """
    engines = {
        name: Engine.load(path, providers=["CPUExecutionProvider"], intra_op_threads=threads)
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    items = model_subset(dsb.load_set(dsb_root), subset, engines["fp32"].metadata, fp32)
    rows = []
    for item in items:
        results = {}
        for name, engine in engines.items():
            started = time.perf_counter()
            answer = predict_labels(engine, item.image, params_for_model(engine.metadata))
            seconds = time.perf_counter() - started
            dice, _, objects = score_segmentation(item.labels, answer)
            assert objects is not None  # DSB truth is always instances
            results[name] = (answer, dice, objects.f1, seconds)
        a, b = results["fp32"], results["int8"]
        rows.append(
            Agreement(
                item.id,
                a[0].foreground.size,
                int((a[0].foreground == b[0].foreground).sum()),
                a[2],
                b[2],
                a[1],
                b[1],
                a[0].diameter,
                b[0].diameter,
                a[3],
                b[3],
            )
        )
    pixels = sum(r.pixels for r in rows)
    f1 = {name: float(np.mean([getattr(r, f"f1_{name}") for r in rows])) for name in engines}
    summary = {
        "images": len(rows),
        "subset": subset,
        "pooled_agreement": sum(r.equal_pixels for r in rows) / pixels,
        "mean_agreement": float(np.mean([r.agreement for r in rows])),
        "min_agreement": min(r.agreement for r in rows),
        "f1": f1,
        "f1_drop": f1["fp32"] - f1["int8"],
        "dice": {name: float(np.mean([getattr(r, f"dice_{name}") for r in rows])) for name in engines},
        "seconds": {name: float(sum(getattr(r, f"seconds_{name}") for r in rows)) for name in engines},
        "same_scale_images": sum(
            1
            for r in rows
            if r.diameter_fp32 == r.diameter_int8
            or (r.diameter_fp32 and r.diameter_int8 and abs(r.diameter_int8 / r.diameter_fp32 - 1) < 0.02)
        ),
    }
    summary["passes"] = summary["pooled_agreement"] >= MIN_AGREEMENT and summary["f1_drop"] <= MAX_F1_DROP
    return rows, summary


def print_comparison(rows: list[Agreement], summary: dict) -> None:
    worst = sorted(rows, key=lambda r: r.agreement)[:5]
    for r in worst:
        print(
            f"  {r.id[:12]}  agreement {r.agreement:.4f}  F1 {r.f1_fp32:.3f} → {r.f1_int8:.3f}  "
            f"diameter {r.diameter_fp32} → {r.diameter_int8}"
        )
    s = summary
    print(
        f"{s['subset']} ({s['images']} images): masks equal on {100 * s['pooled_agreement']:.2f} % of pixels "
        f"(mean per image {100 * s['mean_agreement']:.2f} %, worst {100 * s['min_agreement']:.2f} %); "
        f"object F1@0.5 fp32 {s['f1']['fp32']:.4f}, int8 {s['f1']['int8']:.4f} (drop {s['f1_drop']:+.4f}); "
        f"Dice {s['dice']['fp32']:.4f} / {s['dice']['int8']:.4f}; "
        f"same scale on {s['same_scale_images']} images; "
        f"pipeline seconds fp32 {s['seconds']['fp32']:.1f}, int8 {s['seconds']['int8']:.1f}"
    )
    verdict = "PASS" if s["passes"] else "FAIL"
    print(f"{verdict}: bars agreement ≥ {100 * MIN_AGREEMENT:g} %, F1 drop ≤ {MAX_F1_DROP}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export quantize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="the fp32 .onnx written by export")
    parser.add_argument("--out", type=Path, default=None, help="default: <model stem>.int8.onnx beside it")
    parser.add_argument(
        "--dsb", type=Path, default=None, help="DSB 2018 stage1_train folder (calibration, --check)"
    )
    parser.add_argument("--dsb-images", type=int, default=24, help="DSB training images to calibrate on")
    parser.add_argument("--synthetic", type=int, default=8, help="synthetic images to calibrate on")
    parser.add_argument("--max-edge", type=int, default=512, help="calibration crops are at most this, px")
    parser.add_argument(
        "--check", action="store_true", help="compare with fp32 on the DSB validation split (needs --dsb)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.check and args.dsb is None:
        parser.error("--check needs --dsb")
    try:
        metadata = read_metadata(args.model)
        out = args.out or int8_path(args.model)
        calibration = calibration_set(
            metadata, args.dsb, args.dsb_images if args.dsb else 0, args.synthetic, args.max_edge
        )
        report = quantize(args.model, out, calibration)
        print(
            f"wrote {report['out']} ({report['bytes'] / 1e6:.2f} MB, "
            f"fp32 {report['fp32_bytes'] / 1e6:.2f} MB) "
            f"in {report['seconds']} s, calibrated on {len(calibration.dsb_ids)} DSB training + "
            f"{len(calibration.synthetic_seeds)} synthetic images"
        )
        if args.check:
            rows, summary = compare_dsb(args.model, out, args.dsb)
            print_comparison(rows, summary)
            report["check"] = summary
    except (DataError, QuantizeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report.get("check", {}).get("passes", True) else 1


if __name__ == "__main__":
    sys.exit(main())
