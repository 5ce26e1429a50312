"""The model file's seal (``unet.sha256``): written by export/seal, verified by ``Engine.load``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import pytest

from model_export.seal import seal_file
from service import model_checksum
from service.engine import Engine, ModelLoadError
from service.settings import DEFAULT_MODEL_PATH
from tests.models import write_conv_model

CPU = ("CPUExecutionProvider",)


def flip_weight_bits(src: Path, dst: Path, count: int = 4) -> Path:
    """A copy of ``src`` with the exponent bits of ``count`` float32 weights flipped in its largest
    initializer (the kind of damage a bad disk or copy does); everything else byte-identical."""
    data = bytearray(src.read_bytes())
    largest = max(onnx.load_from_string(bytes(data)).graph.initializer, key=lambda t: len(t.raw_data))
    start = bytes(data).find(largest.raw_data)
    assert start > 0 and bytes(data).count(largest.raw_data) == 1
    for k in range(count):
        data[start + 4 * (k * 97 + 11) + 3] ^= 0x40  # byte 3 of a little-endian float32: exponent
    dst.write_bytes(bytes(data))
    return dst


def _unsealed(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    keep = [p for p in model.metadata_props if p.key != model_checksum.CHECKSUM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(dst))
    return dst


def test_the_bundled_model_is_sealed_and_verifies(caplog: pytest.LogCaptureFixture) -> None:
    data = DEFAULT_MODEL_PATH.read_bytes()
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine.load(DEFAULT_MODEL_PATH, providers=CPU)
    assert engine.checksum == model_checksum.digest(data)
    assert engine.checksum.startswith("sha256:") and len(engine.checksum) == 7 + 64
    assert not caplog.records


def test_flipped_weight_bits_in_the_bundled_model_are_a_load_error(tmp_path: Path) -> None:
    bad = flip_weight_bits(DEFAULT_MODEL_PATH, tmp_path / "bad.onnx")
    with pytest.raises(ModelLoadError, match="checksum mismatch") as info:
        Engine.load(bad, providers=CPU)
    # The reason names both values, so an operator can tell which copy is wrong.
    assert model_checksum.digest(DEFAULT_MODEL_PATH.read_bytes()) in str(info.value)
    assert model_checksum.digest(bad.read_bytes()) in str(info.value)


def test_an_edited_threshold_breaks_the_seal_too(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "c.onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "unet.threshold":
            prop.value = "0.2"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        Engine.load(path, providers=CPU)


def test_an_unsealed_model_loads_with_one_warning_unless_a_seal_is_required(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _unsealed(write_conv_model(tmp_path / "c.onnx"), tmp_path / "old.onnx")
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine.load(path, providers=CPU)
    assert engine.checksum is None
    (warning,) = caplog.records
    assert "carries no 'unet.sha256' checksum" in warning.getMessage()
    with pytest.raises(ModelLoadError, match="no 'unet.sha256' checksum"):
        Engine.load(path, providers=CPU, require_checksum=True)


def test_seal_file_adds_only_the_seal_and_is_idempotent(tmp_path: Path) -> None:
    path = _unsealed(write_conv_model(tmp_path / "c.onnx"), tmp_path / "old.onnx")
    before = path.read_bytes()
    checksum = seal_file(path)
    after = path.read_bytes()
    assert after.startswith(before)  # the seal entry is appended; nothing else moves
    assert model_checksum.verify(after) == checksum == model_checksum.digest(before)
    assert json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[
        model_checksum.CHECKSUM_KEY]) == checksum
    assert seal_file(path) == checksum and path.read_bytes() == after
    assert Engine.load(path, providers=CPU, require_checksum=True).checksum == checksum


def test_two_seals_or_a_malformed_seal_are_refused(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "c.onnx")
    model = onnx.load(str(path))
    model.metadata_props.add(key=model_checksum.CHECKSUM_KEY, value='"sha256:00"')
    with pytest.raises(model_checksum.ChecksumError, match="2 'unet.sha256' entries"):
        model_checksum.verify(model.SerializeToString())
    for prop in model.metadata_props:
        if prop.key == model_checksum.CHECKSUM_KEY:
            prop.value = "sha256:not json"
    del model.metadata_props[-1]
    with pytest.raises(model_checksum.ChecksumError, match="not valid JSON"):
        model_checksum.verify(model.SerializeToString())


@pytest.mark.parametrize(
    "data", [b"\x0f", b"\x0a\x05abc", b"\x08\xff\xff"], ids=["wire-7", "short", "varint"]
)
def test_bytes_that_are_not_protobuf_are_reported_as_such(data: bytes) -> None:
    with pytest.raises(model_checksum.NotProtobuf):
        model_checksum.digest(data)
