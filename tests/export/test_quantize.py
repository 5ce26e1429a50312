"""``quantize``: the int8 copy of an exported model — metadata, calibration data, graph, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from model_export.__main__ import main
from model_export.quantize import (
    QuantizeError,
    calibration_set,
    model_input,
    quantize,
    read_metadata,
)
from service.engine import Engine, int8_path
from tests.dsb_layout import with_val_ids, write_dsb_folder


@pytest.fixture(scope="module")
def dsb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five fluorescence samples and one colour one in the DSB layout."""
    return write_dsb_folder(tmp_path_factory.mktemp("dsb"), n=5, size=64)


@pytest.fixture(scope="module")
def quantised(tiny_export: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(fp32 file, int8 file, quantize's report), calibrated on two synthetic images."""
    fp32 = Path(tiny_export["out"])
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    calibration = calibration_set(read_metadata(fp32), None, dsb_images=0, synthetic_images=2, max_edge=64)
    return fp32, out, quantize(fp32, out, calibration)


def test_int8_file_keeps_the_fp32_metadata_and_says_how_it_was_quantised(
    quantised: tuple[Path, Path, dict],
) -> None:
    fp32, int8, report = quantised
    before, after = read_metadata(fp32), read_metadata(int8)
    assert after.precision == "int8" and before.precision == "fp32"
    assert after.model_copy(update={"precision": "fp32", "quantization": {}}) == before
    q = after.quantization
    assert q == report["quantization"]
    assert q["activations"].startswith("uint8") and q["weights"].startswith("int8, per output channel")
    assert q["calibration"]["dsb_train_ids"] == [] and len(q["calibration"]["synthetic_seeds"]) == 2
    assert q["source"]["file"] == fp32.name


def test_int8_graph_has_int8_weights_and_the_same_io(quantised: tuple[Path, Path, dict]) -> None:
    fp32, int8, _ = quantised
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    convs = [n for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    assert len(int8_weights) >= len(convs)  # every conv's weights, per channel
    engine = Engine.load(int8, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert engine.metadata.precision == "int8" and engine.input_dtype == np.float32


def test_int8_outputs_follow_fp32_on_an_image_like_the_calibration(
    quantised: tuple[Path, Path, dict],
) -> None:
    fp32, int8, _ = quantised
    from model_export.data import synth_nuclei

    metadata = read_metadata(fp32)
    x = model_input(synth_nuclei(77, 64)[0], None, metadata, 64)
    a = Engine.load(fp32, providers=["CPUExecutionProvider"], intra_op_threads=1).run(x)
    b = Engine.load(int8, providers=["CPUExecutionProvider"], intra_op_threads=1).run(x)
    prob_a, prob_b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    # u8 steps of each activation's calibrated range: far below the 0.5 threshold's scale.
    assert np.abs(prob_a - prob_b).max() < 0.1
    assert not np.array_equal(a, b)  # it really is another graph


def test_quantising_an_int8_model_again_is_refused(
    quantised: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    _, int8, _ = quantised
    calibration = calibration_set(read_metadata(int8), None, dsb_images=0, synthetic_images=1, max_edge=32)
    with pytest.raises(QuantizeError, match="fp32"):
        quantize(int8, tmp_path / "again.onnx", calibration)


def test_calibration_draws_only_dsb_training_images(
    tiny_export: dict, dsb_root: Path, tmp_path: Path
) -> None:
    ids = sorted(p.name for p in dsb_root.iterdir() if p.name[4] == "f")  # the fluorescence ones
    held_out = ids[:2]
    model = with_val_ids(tiny_export["out"], tmp_path / "held.onnx", held_out)
    calibration = calibration_set(
        read_metadata(model), dsb_root, dsb_images=3, synthetic_images=1, max_edge=48
    )
    assert len(calibration.dsb_ids) == 3
    assert set(calibration.dsb_ids) == set(ids[2:])  # every training image, no held-out or colour one
    divisor = read_metadata(model).size_divisor
    for x in calibration.inputs:
        assert x.dtype == np.float32 and x.shape[:2] == (1, 1)
        assert x.shape[2] % divisor == 0 and x.shape[3] % divisor == 0 and max(x.shape[2:]) <= 48


def test_asking_for_more_training_images_than_exist_says_how_many(
    tiny_export: dict, dsb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = with_val_ids(tiny_export["out"], tmp_path / "held.onnx", [])
    code = main(["quantize", "--model", str(model), "--dsb", str(dsb_root), "--dsb-images", "9"])
    assert code == 2
    assert "only 5 fluorescence training images, 9 asked" in capsys.readouterr().err
    assert not int8_path(model).exists()


def test_cli_writes_beside_the_model_and_checks_it_on_the_held_out_images(
    tiny_export: dict, dsb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = sorted(p.name for p in dsb_root.iterdir() if p.name[4] == "f")
    model = with_val_ids(tiny_export["out"], tmp_path / "tiny.onnx", ids[:2])
    report_path = tmp_path / "report.json"
    args = [
        "--dsb-images",
        "2",
        "--synthetic",
        "1",
        "--max-edge",
        "48",
        "--check",
        "--json",
        str(report_path),
    ]
    code = main(["quantize", "--model", str(model), "--dsb", str(dsb_root), *args])
    written = tmp_path / "tiny.int8.onnx"
    assert written.is_file() and read_metadata(written).precision == "int8"
    report = json.loads(report_path.read_text())
    check = report["check"]
    assert check["images"] == 2 and check["subset"] == "val"
    assert 0 <= check["min_agreement"] <= check["mean_agreement"] <= 1
    assert check["f1_drop"] == pytest.approx(check["f1"]["fp32"] - check["f1"]["int8"])
    assert code == (0 if check["passes"] else 1)
    out = capsys.readouterr().out
    assert "of pixels" in out and ("PASS" in out or "FAIL" in out)
