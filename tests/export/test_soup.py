"""`soup` averages fine-tunes of one file into one checkpoint that `export` turns into a verified
ONNX file, and refuses checkpoints whose average would not be a network of their kind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_export.export import export, load_checkpoint
from service.model_metadata import ModelMetadata
from tests.export.conftest import TINY


@pytest.fixture(scope="module")
def two_seeds(tiny_export: dict, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two fine-tunes of the tiny exported model that differ only in their training seed."""
    from model_export import train

    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"seed{seed}")
        train.main(
            [*TINY, "--lr", "1e-2", "--seed", str(seed), "--init", tiny_export["out"], "--out", str(out)]
        )
        runs.append(out / "last.pt")
    return runs


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_the_soup_is_the_mean_of_its_ingredients_and_exports_verified(
    two_seeds: list[Path], tmp_path: Path
) -> None:
    from model_export import soup

    out = soup.main(["--checkpoints", *map(str, two_seeds), "--out", str(tmp_path / "soup.pt")])
    a, b, mixed = (_load(p) for p in (*two_seeds, out))
    weights = [
        k
        for k, t in a["state_dict"].items()
        if t.is_floating_point() and not torch.equal(t, b["state_dict"][k])
    ]
    assert weights, "the two seeds should have moved apart"
    for key in weights:
        expected = (a["state_dict"][key].double() + b["state_dict"][key].double()) / 2
        assert torch.allclose(mixed["state_dict"][key].double(), expected, atol=1e-7)
        assert not torch.equal(mixed["state_dict"][key], a["state_dict"][key])
    # The frozen statistics and counters are the ingredients' own.
    for key in (
        k for k in a["state_dict"] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ):
        assert torch.equal(mixed["state_dict"][key], a["state_dict"][key])

    report = export(out, tmp_path / "soup.onnx", margin_images=1)  # checks ORT against PyTorch itself
    proto = onnx.load(report["out"])
    metadata = ModelMetadata.from_onnx_props({p.key: p.value for p in proto.metadata_props})
    recipe = metadata.training["data"]["soup"]
    assert [i["checkpoint"] for i in recipe["ingredients"]] == [str(p) for p in two_seeds]
    assert all(i["sha256"].startswith("sha256:") and "--seed" in i["command"] for i in recipe["ingredients"])
    assert [i["sha256"] for i in recipe["ingredients"]] == [
        "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in two_seeds
    ]
    assert metadata.training["data"]["init"] == a["data"]["init"]
    assert metadata.training["command"].startswith("python -m model_export soup --checkpoints")

    # The file computes the averaged network: its logits are the soup model's, not an ingredient's.
    x = np.random.default_rng(7).random((1, 1, 32, 32), dtype=np.float32)
    sess = ort.InferenceSession(report["out"], providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(["logits"], {"image": x})[0]
    with torch.no_grad():
        soup_logits = load_checkpoint(out)[0](torch.from_numpy(x)).numpy()
        first_logits = load_checkpoint(two_seeds[0])[0](torch.from_numpy(x)).numpy()
    assert np.abs(onnx_logits - soup_logits).max() < 1e-4
    assert np.abs(onnx_logits - first_logits).max() > 1e-3


def test_a_soup_of_one_network_with_itself_is_that_network(two_seeds: list[Path]) -> None:
    from model_export.soup import make_soup

    same = make_soup([two_seeds[0], two_seeds[0]])
    original = _load(two_seeds[0])["state_dict"]
    assert all(torch.equal(same["state_dict"][k], t) for k, t in original.items())


def _altered(source: Path, folder: Path, change) -> Path:
    checkpoint = _load(source)
    change(checkpoint)
    path = folder / f"altered{len(list(folder.iterdir()))}.pt"
    torch.save(checkpoint, path)
    return path


def test_checkpoints_that_do_not_average_are_refused_by_name(
    two_seeds: list[Path], tiny_run: Path, tmp_path: Path
) -> None:
    from model_export.soup import SoupError, make_soup

    good = two_seeds[0]
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        ([good, garbage], "cannot read it as a training checkpoint"),
        ([good, tmp_path / "missing.pt"], "cannot read it"),
        ([good], "at least two"),
        ([tiny_run / "best.pt", good], "trained from scratch"),
        ([good, _altered(two_seeds[1], tmp_path, lambda c: c.update(frozen_batchnorm=False))], "BatchNorm"),
        (
            [good, _altered(two_seeds[1], tmp_path, lambda c: c["data"]["init"].update(sha256="sha256:0"))],
            "started from",
        ),
        ([good, _altered(two_seeds[1], tmp_path, lambda c: c["data"].update(val_ids=["x"]))], "val_ids"),
        (
            [good, _altered(two_seeds[1], tmp_path, lambda c: c["config"].update(base_channels=8))],
            "architecture",
        ),
    ]
    for paths, reason in cases:
        with pytest.raises(SoupError, match=reason):
            make_soup(paths)


def test_the_command_line_refuses_with_a_usage_error(two_seeds: list[Path], tmp_path: Path) -> None:
    from model_export.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["soup", "--checkpoints", str(two_seeds[0]), "--out", str(tmp_path / "one.pt")])
    assert exit_info.value.code == 2 and not (tmp_path / "one.pt").exists()
