"""``train --bf16`` and ``--device``: bfloat16 autocast only where the device runs it natively, unless
told; a CUDA GPU when PyTorch sees one, and a clear refusal when one is asked for and absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export import train


@pytest.mark.parametrize(
    "flag, native, expected",
    [("auto", True, True), ("auto", False, False), ("0", True, False), ("1", True, True)],
)
def test_bf16_flag_resolves_against_the_cpu(flag: str, native: bool, expected: bool) -> None:
    assert train.use_bf16(flag, native) is expected


def test_forcing_bf16_on_a_cpu_that_emulates_it_warns_and_obeys(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.use_bf16("1", native=False) is True
    assert "without native bfloat16" in capsys.readouterr().err


def test_default_follows_this_cpu_and_is_recorded_as_a_number() -> None:
    # The resolved value (not "auto") is what the checkpoint's args and the history record.
    args = train.parse_args([])
    assert args.bf16 == int(train.native_bf16(args.device))


def test_an_unknown_bf16_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--bf16", "yes"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, cuda_available, expected",
    [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_device_flag_resolves_against_what_torch_sees(flag: str, cuda_available: bool, expected: str) -> None:
    assert train.resolve_device(flag, cuda_available) == expected


def test_asking_for_cuda_without_a_gpu_is_refused_not_run_on_the_cpu() -> None:
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        train.resolve_device("cuda", cuda_available=False)


def test_default_device_is_this_machines() -> None:
    assert train.parse_args([]).device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_the_gpu_saves_a_checkpoint_a_cpu_machine_can_load(tmp_path: Path) -> None:
    best = train.main(
        ["--device", "cuda", "--steps", "4", "--eval-every", "2", "--val-images", "4", "--patch", "64",
         "--batch-size", "2", "--base-channels", "8", "--workers", "0", "--out", str(tmp_path)]
    )
    stored = torch.load(best, weights_only=False)  # no map_location: tensors come back where they were saved
    assert {str(value.device) for value in stored["state_dict"].values()} == {"cpu"}
    assert stored["args"]["device"] == "cuda"


def test_loader_batches_carry_the_targets_the_loss_needs() -> None:
    # WithTargets builds them in the loader's workers; they must be what the loop used to build.
    labels = torch.zeros(2, 32, 32, dtype=torch.int64)
    labels[0, 4:12, 4:12] = 1
    labels[1, 20:30, 2:9] = 2
    samples = [(torch.rand(1, 32, 32), labels[k]) for k in range(2)]
    x, target, weight = train.WithTargets(classes=1, center=True)(samples)
    assert x.shape == (2, 1, 32, 32) and weight is None
    assert torch.equal(target, train.targets(labels, 1, center=True))
    weighted = [(image, label, torch.full((32, 32), 2.0)) for image, label in samples]
    _, _, weight = train.WithTargets(classes=1, center=True)(weighted)
    assert weight.shape == (2, 1, 32, 32) and float(weight.min()) == 2.0
