"""Export a training checkpoint to one self-contained, self-describing, verified ONNX file.

    python -m model_export export --checkpoint runs/default/best.pt --out models/nuclei-unet.onnx

The graph takes ``image``: float32 ``(N, C, H, W)`` (dynamic N, H, W; H and W multiples
of ``2**depth``) and returns ``logits``: float32 ``(N, classes, H, W)``. The export then
checks itself — ONNX Runtime against PyTorch on random batches of two sizes, failing
above ``--tolerance`` — measures the model's effective context margin on synthetic
images, and writes a :class:`service.model_metadata.ModelMetadata` into
``metadata_props``, sealed with a SHA-256 checksum (``unet.sha256``, see
``model_export.seal``) that the service verifies before it serves the file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model_export.data import synth_nuclei
from model_export.seal import seal_proto
from model_export.unet import UNet, UNetConfig, count_parameters, flops_per_pixel, receptive_field
from service import model_checksum
from service.model_metadata import ModelMetadata, Normalization
from service.objects import ObjectParams
from service.preprocess import prepare

OPSET = 17


class ExportError(RuntimeError):
    """The exported file failed its own checks."""


class _Fp16(nn.Module):
    """float32 in/out around a float16 network: the I/O contract stays the same for the service."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def load_checkpoint(path: Path) -> tuple[UNet, dict]:
    """Checkpoint written by ``model_export.train`` → (model in eval mode, the checkpoint dict)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = UNet(UNetConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def to_onnx_bytes(model: nn.Module, in_channels: int, divisor: int) -> bytes:
    """Trace ``model`` to ONNX (TorchScript exporter: one file, weights inside)."""
    dummy = torch.zeros(1, in_channels, 2 * divisor, 2 * divisor)
    buffer = io.BytesIO()
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (dummy,),
        buffer,
        dynamo=False,
        opset_version=OPSET,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": dims, "logits": dims},
        do_constant_folding=True,
    )
    return buffer.getvalue()


def session(model_bytes: bytes, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def check_against_torch(
    model: nn.Module,
    sess: ort.InferenceSession,
    in_channels: int,
    divisor: int,
    tolerance: float,
    seed: int = 0,
) -> float:
    """Max |ORT − PyTorch| of logits over random batches at two sizes; raises above ``tolerance``."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in [(2, in_channels, 4 * divisor, 6 * divisor), (1, in_channels, 9 * divisor, 5 * divisor)]:
        x = torch.rand(shape, generator=generator) * 2 - 0.5  # roughly the normalised input range
        with torch.no_grad():
            expected = model(x).numpy()
        got = sess.run(["logits"], {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} for input {shape}")
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise ExportError(
                f"ONNX Runtime and PyTorch differ by {diff:.3g} (> {tolerance:g}) at input {shape}"
            )
    return worst


def _probabilities(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` input → ``(K, H, W)`` sigmoid probabilities of every output channel."""
    logits = sess.run(["logits"], {"image": x[None]})[0][0]
    return 1.0 / (1.0 + np.exp(-logits))


def measure_context_margin(
    sess: ort.InferenceSession,
    in_channels: int,
    divisor: int,
    size: int = 512,
    window: int = 64,
    seeds: tuple[int, ...] = (11, 12, 13),
    tolerance: float = 1e-3,
) -> dict:
    """Smallest context halo (px per side) that makes a tile's centre match a whole-image pass.

    For synthetic ``size``² images, the probabilities of a ``window``² region are computed
    once from the whole image and again from a crop holding the region plus ``m`` px of
    real context on every side, for m = 0, divisor, 2·divisor, ... Crops start on the
    ``divisor`` grid of the whole image, as the service's tiles do: a crop shifted off
    that grid sees a different pooling phase and differs (by up to ~0.2 in probability,
    measured) however much context it has. Returns the smallest m from which
    max |Δprob| < ``tolerance`` everywhere (``margin``), the smallest m from which no
    pixel's 0.5-thresholded mask flips (``margin_no_flip``), and the curve.
    """
    norm = Normalization()
    # Window origins on the divisor grid, one central and one off-centre.
    centre = (size - window) // 2 // divisor * divisor
    origins = [(centre, centre), (centre - divisor, centre + divisor)]
    limit = min(min(y, x, size - window - y, size - window - x) for y, x in origins)
    curve: dict[int, tuple[float, int]] = {}
    images = []
    for seed in seeds:
        raw, _ = synth_nuclei(seed, size)
        x = prepare(raw, in_channels, norm)
        images.append((x, _probabilities(sess, x)))
    for m in range(0, limit + 1, divisor):
        worst, flips = 0.0, 0
        for x, full in images:
            for y0, x0 in origins:
                crop = x[:, y0 - m : y0 + window + m, x0 - m : x0 + window + m]
                # Every output channel: the centre map's seeds must not seam either.
                part = _probabilities(sess, np.ascontiguousarray(crop))[:, m : m + window, m : m + window]
                ref = full[:, y0 : y0 + window, x0 : x0 + window]
                worst = max(worst, float(np.abs(part - ref).max()))
                flips += int(((part > 0.5) != (ref > 0.5)).sum())
        curve[m] = (worst, flips)
    ok = [
        m
        for m, (d, _) in curve.items()
        if d < tolerance and all(curve[k][0] < tolerance for k in curve if k > m)
    ]
    no_flip = [m for m, (_, f) in curve.items() if f == 0 and all(curve[k][1] == 0 for k in curve if k > m)]
    return {
        "margin": min(ok) if ok else limit,
        "margin_no_flip": min(no_flip) if no_flip else limit,
        "tolerance": tolerance,
        "curve": {str(m): {"max_abs_prob_diff": round(d, 6), "mask_flips": f} for m, (d, f) in curve.items()},
    }


def build_metadata(
    model: UNet,
    checkpoint: dict,
    margin: int,
    name: str,
    version: str,
    class_names: list[str],
    tile_size: int,
    threshold: float,
    precision: str,
    extra_training: dict,
    split: str = "distance",
) -> ModelMetadata:
    config = model.config
    objects = ObjectParams()  # distance-transform watershed: needs only the foreground
    if config.center:
        objects = replace(objects, center_channel=config.classes)
    if split == "center":
        if not config.center:
            raise ExportError("--split center needs a model trained with the centre output (--center 1)")
        objects = replace(objects, method="center_watershed")
    divisor = config.size_divisor
    overlap = int(math.ceil(2 * margin / 16) * 16)  # both neighbours' halos, on the 16-px grid
    history = checkpoint.get("history", [])
    return ModelMetadata(
        name=name,
        version=version,
        description=(
            f"U-Net (depth {config.depth}, base {config.base_channels}, {config.fusion} fusion, "
            f"{config.upsample} upsampling) for fluorescence nuclei; outputs per-class logits"
            + (" and a nucleus-centre logit" if config.center else "")
            + ", sigmoid gives probabilities."
        ),
        in_channels=config.in_channels,
        classes=config.outputs,
        class_names=[*class_names, "center"] if config.center else class_names,
        output_kind="logits",
        activation="sigmoid",
        foreground_channel=0,
        # How the service splits touching nuclei unless a request says otherwise (split=...).
        objects=objects.as_metadata(),
        normalization=Normalization(),
        size_divisor=divisor,
        receptive_field=receptive_field(config),
        context_margin=margin,
        # Mirror context at the image border bought nothing measurable: on 12 synthetic 520²
        # images, Dice in the 24-px border band was 0.9585 / 0.9569 / 0.9564 with 0 / 32 / 96 px
        # (the model trained on zero-padded crops). Padding only up to the divisor saves ~20%
        # of the compute of a 2048² image.
        border=0,
        tile_size=max(tile_size, overlap + divisor),
        tile_overlap=overlap,
        threshold=threshold,
        # Trained at one nucleus scale (DSB data brought to it): the service resizes to it.
        nucleus_diameter=checkpoint.get("data", {}).get("nucleus_diameter_px"),
        architecture={
            **config.as_dict(),
            "parameters": count_parameters(model),
            "flops_per_pixel": round(flops_per_pixel(model)),
        },
        training={
            "command": checkpoint.get("command", ""),
            # as the ONNX metadata will hold it (JSON: a checkpoint's tuples come back as lists)
            "data": json.loads(json.dumps(checkpoint.get("data", {}))),
            "steps": checkpoint.get("step"),
            "total_steps": checkpoint.get("args", {}).get("steps"),
            "val_dice": checkpoint.get("val_dice"),
            "seconds": history[-1]["seconds"] if history else None,
            **extra_training,
        },
        precision=precision,
    )


def export(
    checkpoint_path: Path,
    out: Path,
    *,
    fp16: bool = False,
    name: str = "nuclei-unet",
    version: str = "1.0.0",
    class_names: list[str] | None = None,
    tile_size: int = 2048,
    threshold: float = 0.5,
    tolerance: float | None = None,
    margin_images: int = 3,
    split: str = "distance",
) -> dict:
    """Export, verify and describe; returns a report (max diff, context margin, metadata)."""
    model, checkpoint = load_checkpoint(Path(checkpoint_path))
    config = model.config
    divisor = config.size_divisor
    names = class_names or (
        ["nucleus"] if config.classes == 1 else [f"class_{i + 1}" for i in range(config.classes)]
    )
    if len(names) != config.classes:
        raise ExportError(f"{len(names)} class names given for a {config.classes}-class model")

    # Margin and the fp32 reference come from the float32 graph.
    fp32_bytes = to_onnx_bytes(model, config.in_channels, divisor)
    fp32_sess = session(fp32_bytes)
    context = measure_context_margin(
        fp32_sess, config.in_channels, divisor, seeds=tuple(range(11, 11 + margin_images))
    )
    if fp16:
        # float16 rounding alone moves logits by ~1e-2; judge the fp16 file by that scale.
        tolerance = 5e-2 if tolerance is None else tolerance
        half = _Fp16(UNet(config)).eval()
        half.model.load_state_dict(model.state_dict())
        half.model.half()
        model_bytes = to_onnx_bytes(half, config.in_channels, divisor)
    else:
        tolerance = 1e-4 if tolerance is None else tolerance
        model_bytes = fp32_bytes
    max_diff = check_against_torch(model, session(model_bytes), config.in_channels, divisor, tolerance)

    metadata = build_metadata(
        model,
        checkpoint,
        context["margin"],
        name,
        version,
        names,
        tile_size,
        threshold,
        "fp16" if fp16 else "fp32",
        {
            "context_margin_no_flip": context["margin_no_flip"],
            "ort_vs_torch_max_abs_diff": max_diff,
            "opset": OPSET,
        },
        split,
    )
    proto = onnx.load_from_string(model_bytes)
    proto.doc_string = metadata.description
    del proto.metadata_props[:]
    for key, value in metadata.to_onnx_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    checksum = seal_proto(proto)  # last: the seal covers the graph, weights and metadata above
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out), save_as_external_data=False)

    # Read the written file back the way the service will.
    written = onnx.load(str(out))
    parsed = ModelMetadata.from_onnx_props({p.key: p.value for p in written.metadata_props})
    if parsed != metadata:
        raise ExportError(f"{out}: metadata did not round-trip")
    try:
        verified = model_checksum.verify(out.read_bytes())
    except model_checksum.ChecksumError as exc:
        raise ExportError(f"{out}: {exc}") from exc
    if verified != checksum:
        raise ExportError(f"{out}: the written file is not sealed")
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "checksum": checksum,
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "context": context,
        "metadata": metadata.model_dump(mode="json"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m model_export export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt written by train")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--fp16", action="store_true", help="float16 weights and compute (GPU serving); I/O stays float32"
    )
    parser.add_argument("--name", default="nuclei-unet")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--class-names", nargs="+", default=None)
    # 2048: on a CPU throughput per pixel does not depend on tile size (FACTS), so the largest
    # tile that keeps per-tile memory modest wastes the least on overlap; typical micrographs
    # run as one pass.
    parser.add_argument("--tile-size", type=int, default=2048, help="recommended tile edge, px")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--tolerance", type=float, default=None, help="max |ORT − torch| (default 1e-4, fp16 5e-2)"
    )
    parser.add_argument(
        "--split",
        choices=["distance", "center"],
        default="distance",
        help="the service's default way to split touching nuclei (center: needs the centre output); "
        "requests may override it",
    )
    args = parser.parse_args(argv)
    report = export(
        args.checkpoint,
        args.out,
        fp16=args.fp16,
        name=args.name,
        version=args.version,
        class_names=args.class_names,
        tile_size=args.tile_size,
        threshold=args.threshold,
        tolerance=args.tolerance,
        split=args.split,
    )
    meta = report["metadata"]
    print(json.dumps({"context_curve": report["context"]["curve"]}))
    print(
        f"wrote {report['out']} ({report['bytes'] / 1e6:.2f} MB): ORT vs PyTorch max |Δlogit| "
        f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:g}); receptive field "
        f"{meta['receptive_field']} px; context margin {meta['context_margin']} px (no mask flip from "
        f"{report['context']['margin_no_flip']} px); tile {meta['tile_size']} overlap {meta['tile_overlap']}"
    )
    return report


if __name__ == "__main__":
    main()
