"""Training can start from an exported ONNX file (the bundled model, or any `export` wrote): the
network starts out computing what the file computes, its BatchNorms stay frozen, and files that
cannot start a run are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_export.export import load_checkpoint
from model_export.unet import UNet, UNetConfig
from tests.export.conftest import TINY

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"image": x})[0]


def test_the_bundled_model_unfolds_into_the_unet_it_was_trained_as() -> None:
    from model_export import onnx_init

    model = UNet(UNetConfig(in_channels=1, classes=1, depth=4, base_channels=16, center=True))
    record = onnx_init.load_into(model, BUNDLED)
    assert record["version"] and record["sha256"].startswith("sha256:")
    x = np.random.default_rng(3).random((1, 1, 96, 128), dtype=np.float32)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(ours - _onnx_logits(BUNDLED, x)).max() < 1e-3


def test_a_run_started_from_onnx_keeps_its_batchnorm_frozen(tiny_export: dict, tmp_path: Path) -> None:
    from model_export import train

    source = Path(tiny_export["out"])
    # Learning rate 0: nothing may change, not even BatchNorm's running statistics.
    train.main([*TINY, "--steps", "2", "--eval-every", "1", "--lr", "0", "--init", str(source),
                "--out", str(tmp_path / "zero")])  # fmt: skip
    model, checkpoint = load_checkpoint(tmp_path / "zero" / "last.pt")
    assert checkpoint["frozen_batchnorm"] and checkpoint["data"]["init"]["onnx"] == str(source)
    x = np.random.default_rng(5).random((2, 1, 32, 48), dtype=np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert np.abs(ours - _onnx_logits(source, x)).max() < 1e-4

    # With a real learning rate the weights move, the statistics still do not.
    train.main([*TINY, "--steps", "2", "--eval-every", "1", "--lr", "1e-2", "--init", str(source),
                "--out", str(tmp_path / "moving")])  # fmt: skip
    moved = torch.load(tmp_path / "moving" / "last.pt", map_location="cpu", weights_only=False)
    start = torch.load(tmp_path / "zero" / "last.pt", map_location="cpu", weights_only=False)
    stats = [k for k in start["state_dict"] if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in start["state_dict"] if k.endswith("weight")]
    assert stats and all(torch.equal(moved["state_dict"][k], start["state_dict"][k]) for k in stats)
    assert any(not torch.equal(moved["state_dict"][k], start["state_dict"][k]) for k in weights)

    # A run continuing from that checkpoint keeps them frozen too.
    train.main([*TINY, "--steps", "1", "--eval-every", "1", "--lr", "1e-2", "--init",
                str(tmp_path / "moving" / "last.pt"), "--out", str(tmp_path / "again")])  # fmt: skip
    again = torch.load(tmp_path / "again" / "last.pt", map_location="cpu", weights_only=False)
    assert again["frozen_batchnorm"]
    assert all(torch.equal(again["state_dict"][k], start["state_dict"][k]) for k in stats)


def test_files_that_cannot_start_a_run_are_refused_with_the_reason(
    tiny_run: Path, tiny_export: dict, tmp_path: Path
) -> None:
    from model_export import train
    from model_export.export import export

    with pytest.raises(SystemExit, match="architecture"):  # the bundled model is not the tiny one
        train.main([*TINY, "--init", str(BUNDLED), "--out", str(tmp_path / "a")])
    garbage = tmp_path / "notes.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(SystemExit, match="cannot read it as ONNX"):
        train.main([*TINY, "--init", str(garbage), "--out", str(tmp_path / "c")])
    half = export(tiny_run / "best.pt", tmp_path / "half.onnx", fp16=True, margin_images=1)["out"]
    with pytest.raises(SystemExit, match="fp32"):
        train.main([*TINY, "--init", half, "--out", str(tmp_path / "b")])
