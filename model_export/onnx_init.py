"""Start training from an exported ONNX model: the bundled one, or any file ``export`` wrote.

A user who wants to fine-tune the shipped model on their own labelled images has its ONNX file,
not our training checkpoint. Export folds each BatchNorm into the convolution before it (the graph
holds one weight and one bias per conv–BN pair), so the batch statistics are gone: the weights go
back into the U-Net with each BatchNorm set to the identity plus the folded bias (running mean 0,
variance 1 − eps, scale 1) and **frozen** — it keeps using those statistics while training, as
fine-tuning with small batches commonly does (Detectron's FrozenBatchNorm), instead of renormalising
every activation by batch statistics the weights were never trained with. The network then starts
out computing exactly what the ONNX file computes; that is checked against ONNX Runtime before
training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from torch import nn

from model_export.export import ExportError, check_against_torch, session
from model_export.unet import UNet, UNetConfig
from service.model_checksum import CHECKSUM_KEY
from service.model_metadata import MetadataError, ModelMetadata

#: The ONNX file must reproduce through the unfolded network within this (max |Δ logit|).
TOLERANCE = 1e-3


class InitError(ValueError):
    """The ONNX file cannot start this training run (wrong precision, architecture or graph)."""


def _metadata(proto: onnx.ModelProto) -> ModelMetadata:
    """The file's metadata, as the service reads it; refused unless it can start training."""
    try:
        metadata = ModelMetadata.from_onnx_props({p.key: p.value for p in proto.metadata_props})
    except MetadataError as exc:
        raise InitError(str(exc)) from exc
    if not metadata.architecture:
        raise InitError("the file records no unet.architecture: only files `export` wrote can start training")
    if metadata.precision != "fp32":
        raise InitError(f"the file is {metadata.precision}; start from the fp32 file (weights as trained)")
    return metadata


def _conv_bn_pairs(model: UNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every conv followed by a BatchNorm, in the order the forward pass runs them."""
    modules = list(model.modules())
    return [
        (a, b)
        for a, b in zip(modules, modules[1:], strict=False)
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)
    ]


def load_into(model: UNet, path: Path) -> dict:
    """Put the weights of the ONNX file at ``path`` into ``model`` (same architecture), freeze its
    BatchNorms, and check the result against ONNX Runtime. Returns what the run should record."""
    try:
        proto = onnx.load(str(path))
    except (OSError, DecodeError) as exc:
        raise InitError(f"cannot read it as ONNX: {exc}") from exc
    metadata = _metadata(proto)
    recorded = {k: v for k, v in metadata.architecture.items() if k in UNetConfig().as_dict()}
    expected = {k: v for k, v in model.config.as_dict().items() if k in recorded}
    if recorded != expected:
        raise InitError(f"architecture {recorded} differs from this run's {expected}")
    if any(node.op_type == "BatchNormalization" for node in proto.graph.node):
        raise InitError("the graph keeps its BatchNorms unfolded; start from a file `export` wrote")
    weights = {init.name: numpy_helper.to_array(init).copy() for init in proto.graph.initializer}
    own = dict(model.named_parameters())
    conv_bn = _conv_bn_pairs(model)
    folded = {id(p) for pair in conv_bn for module in pair for p in module.parameters()}
    by_name = {name for name, p in own.items() if id(p) not in folded}
    pairs = iter(conv_bn)
    loaded: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w_name, b_name = node.input[1], node.input[2] if len(node.input) > 2 else None
        if w_name in by_name:  # a layer without BatchNorm keeps its name: the head, the upsampling
            own[w_name].data.copy_(torch.from_numpy(weights[w_name]))
            loaded.add(w_name)
            if b_name is not None:
                own[b_name].data.copy_(torch.from_numpy(weights[b_name]))
                loaded.add(b_name)
            continue
        conv, bn = next(pairs, (None, None))
        if conv is None or bn is None or b_name is None or tuple(conv.weight.shape) != weights[w_name].shape:
            raise InitError(f"graph node {node.name or w_name} does not match the U-Net's next conv–BN layer")
        conv.weight.data.copy_(torch.from_numpy(weights[w_name]))
        bn.weight.data.fill_(1.0)
        bn.bias.data.copy_(torch.from_numpy(weights[b_name]))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    if next(pairs, None) is not None or loaded != by_name:
        raise InitError("the graph holds fewer layers than the U-Net")
    model.freeze_batchnorm()
    model.eval()
    divisor = model.config.size_divisor
    try:
        worst = check_against_torch(
            model, session(path.read_bytes()), model.config.in_channels, divisor, tolerance=TOLERANCE
        )
    except ExportError as exc:
        raise InitError(f"the unfolded network does not reproduce the file: {exc}") from exc
    model.train()
    seal = next((p.value for p in proto.metadata_props if p.key == CHECKSUM_KEY), None)
    return {
        "onnx": str(path),
        "name": metadata.name,
        "version": metadata.version,
        "sha256": None if seal is None else json.loads(seal),
        "max_abs_diff": float(worst),
        "batchnorm": "frozen (folded into the convolutions by export)",
    }
