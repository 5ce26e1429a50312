"""Average the weights of fine-tunes that started from one file (a "uniform soup").

    python -m model_export soup --checkpoints runs/s0/best.pt runs/s1/best.pt --out runs/soup/best.pt
    python -m model_export export --checkpoint runs/soup/best.pt --out soup.onnx --version ...

Two runs of one fine-tune recipe that differ only in the training seed land on different weights
and different results (``docs/benchmarks.md``, "Two seeds of one recipe"). Fine-tunes of one
starting network tend to stay in one basin of the loss, where the average of their weights is
itself a good network and usually at least as good as either (Wortsman et al. 2022, "Model
soups"); it costs nothing at inference, unlike averaging their predictions.

What is averaged, and what is refused:
- Every floating-point tensor of the state dict is the plain mean of the ingredients'. The
  BatchNorm statistics are averaged too, which is exact only because they are **frozen** and
  equal in every ingredient (runs started from an ONNX file, ``model_export.onnx_init``): the
  statistics of an averaged network are not the average of its ingredients' statistics, so
  ingredients with live BatchNorm are refused rather than silently approximated.
- Ingredients must share the architecture, the starting file (``--init``: weights from different
  starts do not lie in one basin and their average is not a network of either kind), the nucleus
  scale, and the images held out (validation and tuning ids): the soup's metadata keeps those, so
  ``evaluate --subset`` still means what it says.

The output is a checkpoint ``export`` reads like any other; its ``data`` entry is what the
ingredients agree on plus ``soup``: each ingredient's file, SHA-256, command, step and validation
score.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import shlex
import sys
from pathlib import Path

import torch

#: Data entries every ingredient must agree on: the scale and the images held out from training.
HELD_OUT_KEYS = ("nucleus_diameter_px", "val_ids", "tune_ids", "split_seed")


class SoupError(ValueError):
    """The checkpoints cannot be averaged into one network (the reason says which differ and how)."""


def _start(checkpoint: dict) -> str | None:
    """Which file the run started from: an ONNX file's checksum, or a checkpoint's path."""
    init = checkpoint.get("data", {}).get("init")
    if not init:
        return None
    return init.get("sha256") or init.get("checkpoint")


def check_compatible(checkpoints: list[dict], names: list[str]) -> None:
    """Refuse, naming the first ingredient that differs, unless the checkpoints can be averaged."""
    if len(checkpoints) < 2:
        raise SoupError("a soup needs at least two checkpoints")
    first, first_name = checkpoints[0], names[0]
    if _start(first) is None:
        raise SoupError(
            f"{first_name} was trained from scratch: only fine-tunes of one file (--init) average"
        )
    for checkpoint, name in zip(checkpoints, names, strict=True):
        if not checkpoint.get("frozen_batchnorm"):
            raise SoupError(
                f"{name} trained its BatchNorm statistics: averaged, they would not be the averaged "
                "network's; only runs started from an ONNX file (frozen BatchNorm) average exactly"
            )
    for checkpoint, name in zip(checkpoints[1:], names[1:], strict=True):
        if checkpoint["config"] != first["config"]:
            raise SoupError(f"{name} has architecture {checkpoint['config']}, {first_name} {first['config']}")
        if _start(checkpoint) != _start(first):
            raise SoupError(
                f"{name} started from {_start(checkpoint)}, {first_name} from {_start(first)}: "
                "only fine-tunes of one file average"
            )
        for key in HELD_OUT_KEYS:
            if checkpoint["data"].get(key) != first["data"].get(key):
                raise SoupError(
                    f"{name} and {first_name} differ in {key}: they did not hold out the same images"
                )
        if checkpoint["state_dict"].keys() != first["state_dict"].keys():
            raise SoupError(f"{name} and {first_name} hold different tensors")


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of each floating-point tensor; other tensors (BatchNorm's batch
    counter) must be equal and are kept."""
    averaged = {}
    for key, tensor in state_dicts[0].items():
        tensors = [sd[key] for sd in state_dicts]
        if any(t.shape != tensor.shape for t in tensors):
            raise SoupError(f"{key}: shapes {[tuple(t.shape) for t in tensors]} differ")
        if tensor.is_floating_point():
            # Summed in float64: the mean of float32 tensors should not depend on their order.
            averaged[key] = (sum(t.double() for t in tensors) / len(tensors)).to(tensor.dtype)
        elif all(torch.equal(t, tensor) for t in tensors):
            averaged[key] = tensor.clone()
        else:
            raise SoupError(f"{key}: a non-float tensor that differs between ingredients cannot be averaged")
    return averaged


def _load(path: Path) -> tuple[dict, str]:
    """A checkpoint ``train`` wrote and the SHA-256 of its file (read once), or a
    :class:`SoupError` saying why the file is not one."""
    try:
        data = path.read_bytes()
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise SoupError(f"{path}: cannot read it as a training checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or not {"config", "state_dict", "data"} <= checkpoint.keys():
        raise SoupError(f"{path}: not a checkpoint written by `python -m model_export train`")
    return checkpoint, "sha256:" + hashlib.sha256(data).hexdigest()


def make_soup(paths: list[Path], command: str = "") -> dict:
    """The checkpoint whose weights are the mean of the checkpoints at ``paths``."""
    loaded = [_load(p) for p in paths]
    checkpoints = [checkpoint for checkpoint, _ in loaded]
    names = [str(p) for p in paths]
    check_compatible(checkpoints, names)
    first = checkpoints[0]
    shared = {
        key: value
        for key, value in first["data"].items()
        if all(
            json.dumps(c["data"].get(key), sort_keys=True) == json.dumps(value, sort_keys=True)
            for c in checkpoints
        )
    }
    ingredients = [
        {
            "checkpoint": str(path),
            "sha256": checksum,
            "command": checkpoint.get("command", ""),
            "step": checkpoint.get("step"),
            "val_dice": checkpoint.get("val_dice"),
            "seconds": checkpoint["history"][-1]["seconds"] if checkpoint.get("history") else None,
        }
        for path, (checkpoint, checksum) in zip(paths, loaded, strict=True)
    ]
    return {
        "config": first["config"],
        "state_dict": average_state_dicts([c["state_dict"] for c in checkpoints]),
        "step": None,  # no single step: see each ingredient's
        "val_dice": None,  # not measured on the soup; evaluate it
        "selected_by": "uniform soup",
        "frozen_batchnorm": True,
        "args": {},
        "command": command,
        "data": {**shared, "soup": {"weights": "uniform", "ingredients": ingredients}},
        "history": [],
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m model_export soup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoints", type=Path, nargs="+", required=True, help="two or more train checkpoints"
    )
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write (then `export` it)")
    args = parser.parse_args(argv)
    command = "python -m model_export soup " + shlex.join(sys.argv[2:] if argv is None else argv)
    try:
        soup = make_soup(args.checkpoints, command)
    except SoupError as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(soup, args.out)
    print(f"wrote {args.out}: the uniform average of {len(args.checkpoints)} checkpoints")
    return args.out
