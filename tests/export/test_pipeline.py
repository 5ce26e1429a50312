"""Train → export → ONNX: the pipeline end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_export.export import check_against_torch, load_checkpoint, session
from model_export.unet import UNet, UNetConfig, count_parameters, receptive_field
from service import model_checksum
from service.model_checksum import CHECKSUM_KEY
from service.model_metadata import ModelMetadata


def test_tiny_training_writes_checkpoint_history_and_plot(tiny_run: Path) -> None:
    for name in ("best.pt", "last.pt", "history.csv", "history.json", "curves.png"):
        assert (tiny_run / name).is_file(), name
    history = json.loads((tiny_run / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 3]
    assert all(0.0 <= h["val_dice"] <= 1.0 and np.isfinite(h["train_loss"]) for h in history)
    checkpoint = torch.load(tiny_run / "best.pt", weights_only=False)
    assert checkpoint["config"] == {
        "in_channels": 1,
        "classes": 1,
        "depth": 2,
        "base_channels": 4,
        "fusion": "concat",
        "upsample": "transpose",
        "center": True,
    }
    assert checkpoint["command"].startswith("python -m model_export train")


def test_export_is_one_self_contained_file(tiny_export: dict) -> None:
    out = Path(tiny_export["out"])
    assert out.is_file() and not list(out.parent.glob("*.onnx.data"))
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 1
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_onnx_and_torch_agree_at_two_sizes(tiny_run: Path, tiny_export: dict) -> None:
    assert tiny_export["max_abs_diff"] <= 1e-4
    model, _ = load_checkpoint(tiny_run / "best.pt")
    sess = session(Path(tiny_export["out"]).read_bytes())
    assert check_against_torch(model, sess, 1, 4, tolerance=1e-4, seed=7) <= 1e-4


def test_dynamic_batch_height_and_width(tiny_export: dict) -> None:
    sess = ort.InferenceSession(tiny_export["out"], providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 4, 4), (3, 1, 48, 80), (2, 1, 132, 20)]:
        out = sess.run(["logits"], {"image": np.random.default_rng(0).random(shape, dtype=np.float32)})[0]
        # Two outputs: the foreground and the nucleus-centre map.
        assert out.shape == (shape[0], 2, shape[2], shape[3]) and out.dtype == np.float32


def test_metadata_is_complete_and_parses(tiny_run: Path, tiny_export: dict) -> None:
    props = {p.key: p.value for p in onnx.load(tiny_export["out"]).metadata_props}
    meta = ModelMetadata.from_onnx_props(props)
    assert set(props) == {"unet." + field for field in ModelMetadata.model_fields} | {CHECKSUM_KEY}
    assert model_checksum.verify(Path(tiny_export["out"]).read_bytes()) == tiny_export["checksum"]
    config = UNetConfig(depth=2, base_channels=4, center=True)
    assert meta.receptive_field == receptive_field(config) == 1 + (4 + 1) + (4 + 1) * 2 + 4 * 4 + 4 * 2 + 4
    assert meta.size_divisor == 4 and meta.in_channels == 1 and meta.classes == 2
    assert meta.class_names == ["nucleus", "center"] and meta.foreground_channel == 0
    assert meta.output_kind == "logits" and meta.activation == "sigmoid"
    assert 0 <= meta.context_margin <= meta.receptive_field
    assert meta.tile_overlap % 16 == 0 and meta.tile_overlap >= 2 * meta.context_margin
    assert meta.tile_size == 2048 and meta.threshold == 0.5 and meta.precision == "fp32"
    assert meta.border == 0
    assert meta.objects["method"] == "distance_watershed" and meta.objects["center_channel"] == 1
    assert meta.center_channel == 1
    assert meta.architecture["parameters"] == count_parameters(UNet(config))
    assert meta.architecture["flops_per_pixel"] > 0
    assert {"depth", "base_channels", "fusion", "upsample"} <= set(meta.architecture)
    assert meta.training["command"].startswith("python -m model_export train")
    assert meta.training["data"]["kind"] == "synthetic"
    assert meta.training["steps"] in (2, 3) and 0 <= meta.training["val_dice"] <= 1


def test_export_records_the_split_the_service_uses_by_default(tiny_run: Path, tmp_path: Path) -> None:
    from model_export.export import export

    report = export(tiny_run / "best.pt", tmp_path / "centre.onnx", margin_images=1, split="center")
    assert report["metadata"]["objects"]["method"] == "center_watershed"
    assert report["metadata"]["objects"]["center_channel"] == 1


def test_fp16_export_keeps_float32_io_and_says_fp16(tiny_run: Path, tmp_path: Path) -> None:
    from model_export.export import export

    report = export(tiny_run / "best.pt", tmp_path / "half.onnx", fp16=True, margin_images=1)
    model = onnx.load(report["out"])
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = ModelMetadata.from_onnx_props({p.key: p.value for p in model.metadata_props})
    assert meta.precision == "fp16"
    assert report["max_abs_diff"] <= report["tolerance"]


def test_training_can_start_from_a_checkpoint_of_the_same_architecture(
    tiny_run: Path, tmp_path: Path
) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    start = torch.load(tiny_run / "best.pt", map_location="cpu", weights_only=False)
    out = tmp_path / "fine"
    init = ["--init", str(tiny_run / "best.pt"), "--out", str(out)]
    train.main([*TINY, "--steps", "1", "--eval-every", "1", "--lr", "1e-9", *init])
    tuned = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert tuned["data"]["init"]["checkpoint"] == str(tiny_run / "best.pt")
    # One step at a vanishing learning rate: the weights are the starting ones, not a fresh init.
    first = next(k for k in start["state_dict"] if k.endswith("weight"))
    assert torch.allclose(tuned["state_dict"][first], start["state_dict"][first], atol=1e-6)

    with pytest.raises(SystemExit, match="architecture"):
        train.main([*TINY, "--base-channels", "8", *init])
    # A centre-map model cannot drop its centre channel by fine-tuning.
    with pytest.raises(SystemExit, match="architecture"):
        train.main([*TINY, "--center", "0", *init])


def test_fine_tuning_adds_a_centre_channel_to_a_foreground_model(tmp_path: Path) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    plain = tmp_path / "plain"
    train.main([*TINY, "--center", "0", "--steps", "1", "--eval-every", "1", "--out", str(plain)])
    start = torch.load(plain / "best.pt", map_location="cpu", weights_only=False)
    assert start["state_dict"]["head.weight"].shape[0] == 1
    out = tmp_path / "grown"
    init = ["--init", str(plain / "best.pt"), "--out", str(out)]
    train.main([*TINY, "--steps", "1", "--eval-every", "1", "--lr", "1e-9", *init])
    grown = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert grown["config"]["center"] is True
    head = grown["state_dict"]["head.weight"]
    assert head.shape[0] == 2
    # The foreground row is the trained one; the centre row starts fresh.
    assert torch.allclose(head[:1], start["state_dict"]["head.weight"], atol=1e-6)


def test_centre_channel_needs_instance_labels_of_one_class(tmp_path: Path) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    with pytest.raises(SystemExit):
        train.main([*TINY, "--classes", "2", "--out", str(tmp_path)])


def test_evaluations_since_best_counts_what_came_after_the_best() -> None:
    from model_export.train import evaluations_since_best

    losses = [{"val_loss": v, "val_dice": 1 - v} for v in (0.30, 0.31, 0.29, 0.295, 0.29)]
    assert evaluations_since_best(losses, "val_loss") == 2  # a tie with the best is not better
    assert evaluations_since_best(losses, "val_dice") == 2
    assert evaluations_since_best(losses[:3], "val_loss") == 0
    assert evaluations_since_best([], "val_loss") == 0


def test_patience_ends_the_run_at_the_first_evaluation_that_makes_it_run_out(tmp_path: Path) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    # Learning rate 0: the weights stay put and only BatchNorm's running statistics move, which
    # here makes every later validation loss a little higher than the first (1.9266, 1.9273, ...).
    args = [*TINY, "--steps", "12", "--eval-every", "1", "--lr", "0", "--warmup", "0", "--patience", "2"]
    train.main([*args, "--out", str(tmp_path)])
    history = json.loads((tmp_path / "history.json").read_text())
    losses = [h["val_loss"] for h in history]
    assert len(history) < 12, losses  # it did stop early ...
    # ... exactly at the first evaluation two after the best so far, not before
    for n in range(1, len(losses) + 1):
        best = losses.index(min(losses[:n]))
        assert (n - 1 - best >= 2) == (n == len(losses)), losses
    best_checkpoint = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=False)
    assert best_checkpoint["step"] == history[losses.index(min(losses))]["step"]
    assert best_checkpoint["args"]["steps"] == 12  # the schedule still spans the steps asked for
