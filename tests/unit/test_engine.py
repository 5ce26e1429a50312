"""Engine: loading, provider fallback, errors, fp16."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_export.seal import seal_proto
from service.engine import Engine, ModelLoadError
from tests.models import IR_VERSION, OPSET, write_conv_model, write_identity_model

CPU = ("CPUExecutionProvider",)


def test_cuda_requested_falls_back_to_cpu_with_one_warning(tmp_path, caplog, capfd):
    path = write_identity_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine.load(path, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    if "CUDAExecutionProvider" in engine.providers:
        pytest.skip("a usable GPU is present: nothing to fall back from")
    assert engine.providers == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider" in warnings[0].getMessage()
    assert "CPUExecutionProvider" in warnings[0].getMessage()
    # ORT's own native lines (missing libcublas, 'Failed to create') are suppressed
    err = capfd.readouterr().err
    assert "libcublas" not in err and "Failed to create" not in err


def test_cpu_only_request_is_silent(tmp_path, caplog):
    path = write_identity_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine.load(path, providers=CPU)
    assert engine.providers == ["CPUExecutionProvider"]
    assert not caplog.records


def test_attributes_run_and_warmup(tmp_path):
    engine = Engine.load(write_conv_model(tmp_path / "c.onnx", classes=2), providers=CPU)
    assert engine.metadata.classes == 2 and engine.input_name == "image" and engine.path.name == "c.onnx"
    assert engine.warmup() >= 0 and engine.warmed_up
    out = engine.run(np.zeros((3, 1, 32, 48), np.float32))
    assert out.shape == (3, 2, 32, 48) and out.dtype == np.float32
    with pytest.raises(ValueError, match="batch"):
        engine.run(np.zeros((1, 3, 32, 32), np.float32))


def test_missing_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine.load(tmp_path / "nope.onnx")


def test_corrupt_model_is_a_load_error(tmp_path):
    good = write_identity_model(tmp_path / "m.onnx").read_bytes()
    for name, data in {"garbage": b"this is not onnx" * 10, "truncated": good[: len(good) // 2]}.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        with pytest.raises(ModelLoadError, match="cannot load"):
            Engine.load(path, providers=CPU)


def _bare_identity(path, props=None):
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, "H", "W"]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_model_without_metadata_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="metadata"):
        Engine.load(_bare_identity(tmp_path / "bare.onnx"), providers=CPU)
    with pytest.raises(ModelLoadError, match="invalid model metadata"):
        Engine.load(_bare_identity(tmp_path / "bad.onnx", {"unet.name": '"x"'}), providers=CPU)


def test_metadata_that_contradicts_the_graph_is_a_load_error(tmp_path):
    path = write_conv_model(tmp_path / "c.onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "unet.classes":
            prop.value = "3"
        if prop.key == "unet.class_names":
            prop.value = '["a", "b", "c"]'
    seal_proto(model)  # consistently sealed, so it is the contradiction that is caught
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="classes"):
        Engine.load(path, providers=CPU)


def test_fp16_model_is_fed_fp16_and_returns_float32(tmp_path):
    engine = Engine.load(write_identity_model(tmp_path / "h.onnx", precision="fp16"), providers=CPU)
    assert engine.input_dtype == np.float16
    batch = np.linspace(-2, 2, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    out = engine.run(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, batch, atol=2e-3)
