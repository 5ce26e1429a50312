"""Tiny ONNX models for tests, built with ``onnx.helper`` (no PyTorch needed).

Both carry valid :class:`service.model_metadata.ModelMetadata` props, so the service
loads them exactly like an exported U-Net:

- :func:`write_identity_model`: output = input (``classes == in_channels``). Through the
  tiler, the stitched result must equal the normalised input *exactly*.
- :func:`write_conv_model`: a seeded random conv net with a U-Net shape (two 3×3 convs,
  a 2×2 max-pool, two 3×3 convs, ×2 nearest upsample, skip concat, 3×3 + 1×1 head).
  Receptive field 17 px (radius 8), so it shows seams if the tiler gives a tile too
  little context, and height/width must be even (``size_divisor == 2``), so it fails if
  the tiler does not pad.

Signatures are kept simple on purpose: the API tests use them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_export.seal import seal_proto
from service.model_metadata import ModelMetadata

#: ONNX opset / IR version understood by every onnxruntime we support (≥ 1.20).
OPSET = 17
IR_VERSION = 9


def test_metadata(**overrides: Any) -> ModelMetadata:
    """Valid metadata for a test model; keyword arguments override any field."""
    fields: dict[str, Any] = {
        "name": "test-model",
        "version": "0.0.0",
        "description": "tiny test model built by tests/models.py",
        "in_channels": 1,
        "classes": 1,
        "class_names": ["nucleus"],
        "activation": "sigmoid",
        "size_divisor": 1,
        "receptive_field": 1,
        "context_margin": 0,
        "tile_size": 64,
        "tile_overlap": 0,
        "threshold": 0.5,
    }
    fields.update(overrides)
    if "class_names" not in overrides and fields["classes"] != len(fields["class_names"]):
        fields["class_names"] = [f"class{k}" for k in range(fields["classes"])]
    return ModelMetadata(**fields)


test_metadata.__test__ = False  # a helper, not a test, even when imported into a test module


def _save(model: onnx.ModelProto, metadata: ModelMetadata, path: str | Path) -> Path:
    helper.set_model_props(model, metadata.to_onnx_props())
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    seal_proto(model)  # sealed like every export, so the service verifies it (and logs nothing)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io(name: str, channels: int, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["N", channels, "H", "W"])


def write_identity_model(path: str | Path, **metadata_overrides: Any) -> Path:
    """Write an identity model (``logits = image``) to ``path`` and return the path.

    Defaults: 1 channel in and out, divisor 1, margin 0, tile 64. Pass e.g.
    ``in_channels=3`` (``classes`` follows), ``size_divisor=16``, ``context_margin=8``.
    ``precision="fp16"`` makes the graph's input and output float16.
    """
    if "in_channels" in metadata_overrides and "classes" not in metadata_overrides:
        metadata_overrides["classes"] = metadata_overrides["in_channels"]
    metadata = test_metadata(name="test-identity", **metadata_overrides)
    if metadata.classes != metadata.in_channels:
        raise ValueError("an identity model has classes == in_channels")
    elem = TensorProto.FLOAT16 if metadata.precision == "fp16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "identity",
        [_io("image", metadata.in_channels, elem)],
        [_io("logits", metadata.classes, elem)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, metadata, path)


def write_conv_model(path: str | Path, seed: int = 0, **metadata_overrides: Any) -> Path:
    """Write a seeded random mini U-Net (see module docstring) and return the path.

    Defaults: 1 channel in, 1 class out (sigmoid), ``size_divisor=2``,
    ``receptive_field=17``, ``context_margin=8``, ``tile_size=64``, ``tile_overlap=24``.
    Weights are He-initialised so outputs vary in sign across the image: a threshold
    at 0.5 gives a mask with plenty of edges for seam tests.
    """
    defaults: dict[str, Any] = {
        "name": "test-conv",
        "size_divisor": 2,
        "receptive_field": 17,
        "context_margin": 8,
        "tile_size": 64,
        "tile_overlap": 24,
    }
    defaults.update(metadata_overrides)
    metadata = test_metadata(**defaults)
    rng = np.random.default_rng(seed)
    c_in, k = metadata.in_channels, metadata.classes
    init: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, out: str, cin: int, cout: int, ksize: int = 3, relu: bool = True) -> str:
        w = rng.normal(0.0, np.sqrt(2.0 / (cin * ksize * ksize)), (cout, cin, ksize, ksize))
        b = rng.normal(0.0, 0.1, cout)
        init.append(numpy_helper.from_array(w.astype(np.float32), out + "_w"))
        init.append(numpy_helper.from_array(b.astype(np.float32), out + "_b"))
        pad = ksize // 2
        target = out + "_pre" if relu else out
        nodes.append(
            helper.make_node("Conv", [x, out + "_w", out + "_b"], [target], pads=[pad] * 4)
        )
        if relu:
            nodes.append(helper.make_node("Relu", [target], [out]))
        return out

    x = conv("image", "e1", c_in, 8)
    skip = conv(x, "e2", 8, 8)
    nodes.append(helper.make_node("MaxPool", [skip], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
    x = conv("p1", "b1", 8, 16)
    x = conv(x, "b2", 16, 16)
    init.append(numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"))
    nodes.append(helper.make_node("Resize", [x, "", "scales"], ["up"], mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up", skip], ["cat"], axis=1))
    x = conv("cat", "d1", 24, 8)
    conv(x, "logits", 8, k, ksize=1, relu=False)
    graph = helper.make_graph(nodes, "mini_unet", [_io("image", c_in)], [_io("logits", k)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    _centre_logits(model, c_in, rng)
    return _save(model, metadata, path)


def _centre_logits(model: onnx.ModelProto, channels: int, rng: np.random.Generator) -> None:
    """Shift the head's bias so the median logit on a normalised-looking input is 0.

    Random weights otherwise put nearly every pixel on one side of the threshold, and
    a mask without edges cannot show seams.
    """
    import onnxruntime as ort

    probe = rng.uniform(0.0, 1.0, (1, channels, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": probe})[0]
    bias = next(t for t in model.graph.initializer if t.name == "logits_b")
    median = np.median(logits, axis=(0, 2, 3))
    centred = numpy_helper.to_array(bias) - median.astype(np.float32)
    bias.CopyFrom(numpy_helper.from_array(centred, "logits_b"))
