"""Train the U-Net: read this file top to bottom, it is the whole procedure.

    python -m model_export train                       # default model, synthetic nuclei
    python -m model_export train --images DIR --masks DIR --steps 2000
    python -m model_export train --dsb stage1_train --init runs/default/best.pt   # DSB 2018 layout

Budget is in optimiser steps (not epochs): on a 2-core CPU one step of 8×256² takes
~4 s for the default network in float32 and ~1–1.5 s with bfloat16 autocast, which
``--bf16 auto`` (the default) turns on only where the CPU runs bfloat16 natively (oneDNN's
check): on an AVX2-only CPU autocast emulates it and a step took 65 s instead of 3.7 s.
``--device auto`` (the default) trains on a CUDA GPU when PyTorch sees one: on an H200 with
``--workers 14`` the same step took 30–45 ms (5000 steps from scratch in 149 s).
Every ``eval_every`` steps (one "epoch" of the history) the model is
scored on a fixed validation set; the best checkpoint (validation Dice, or validation
loss for a model with the centre channel) is kept as ``best.pt`` next to
``history.csv/json`` and ``curves.png``. ``--patience N`` ends the run once N evaluations in a
row brought no better checkpoint: the learning-rate schedule still spans ``--steps``, so every step
before the stop is the one a full run takes, and ``best.pt`` is the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm import tqdm

from model_export import onnx_init
from model_export.data import FolderDataset, ScaledDataset, SyntheticStream, center_target, synthetic_set
from model_export.metrics import dice_iou
from model_export.unet import UNet, UNetConfig, count_parameters, flops_per_pixel, receptive_field

# ---- defaults (every one is a command-line flag: --steps 400, --base-channels 32, ...) ----
DEFAULTS: dict[str, object] = {
    # data: no folders → the built-in synthetic generator
    "images": None,
    "masks": None,
    "dsb": None,  # a DSB 2018 / BBBC038 stage1_train folder (<id>/images, <id>/masks)
    "val_fraction": 0.2,  # folder/DSB data: share of files held out (DSB: whole series)
    # DSB data: every sample is resized so its nuclei come out at `diameter` px (median
    # equivalent diameter) × a log-uniform factor in [1/jitter, jitter]; the service brings
    # each image to this scale before the model. `synthetic`: share of synthetic samples.
    "diameter": 20.0,
    "scale_jitter": 1.5,
    "synthetic": 0.25,
    # "LO,HI": synthetic nuclei of typical radius LO–HI px drawn at that size and resized to
    # the model's scale like real images (what the service does to tiny/huge nuclei);
    # empty: drawn at the model's scale.
    "synthetic_radius": "",
    # share of all samples that are near-empty synthetic fields (noise, haze, glow; 0–2 nuclei),
    # which DSB almost never shows: without them the model marked their specks as nuclei;
    # `synthetic` is then the share of the other samples
    "empty_fields": 0.0,
    # share of the DSB samples with some of their nuclei dimmed to 0.15–0.7 of their signal
    # (model_export.data.dim_some_nuclei): DSB's nuclei are much alike in brightness within an
    # image, screens' are not
    "dim_nuclei": 0.0,
    # loss weight gain on DSB nuclei dim against their own image's others (relative contrast c
    # below 0.5 weighs 1 + dim_weight * (1 - c / 0.5); model_export.contrast): 0 = plain loss
    "dim_weight": 0.0,
    # loss weight gain where two nuclei meet (the classic U-Net's w0; sigma 5 px; model_export.contact):
    # 0 = plain loss
    "contact_weight": 0.0,
    "patch": 256,
    "batch_size": 8,
    "val_images": 24,  # synthetic data: size of the fixed validation set
    "val_size": 256,
    "workers": 1,  # DataLoader workers generating/augmenting samples
    # architecture (recorded in the checkpoint and the ONNX metadata)
    "in_channels": 1,
    "classes": 1,
    "depth": 4,
    "base_channels": 16,
    "fusion": "concat",
    "upsample": "transpose",
    "center": 1,  # 1: one more output, the nucleus-centre map that splits touching nuclei
    # optimisation
    "steps": 1400,  # ~25 min at ~1.1 s/step (bf16) on an idle 2-core CPU
    # bfloat16 autocast for forward/backward: ~2.5× faster where the CPU has native bf16 (AVX-512
    # BF16, AMX), ~18× slower where it is emulated (AVX2); "auto" asks oneDNN which this CPU is
    "bf16": "auto",
    # where the network runs: "auto" takes a CUDA GPU when PyTorch sees one, else the CPU
    "device": "auto",
    "lr": 1e-3,
    "min_lr_ratio": 0.05,  # cosine decay to lr * this by the last step
    "warmup": 10,
    "dice_weight": 1.0,  # loss = BCE + dice_weight * soft Dice loss
    "center_weight": 1.0,  # + center_weight * BCE of the centre channel against its soft target
    "eval_every": 50,
    "patience": 0,  # end after this many evaluations in a row without a better checkpoint (0: never)
    "seed": 0,
    # which data is held out for validation (DSB series and their crops, or folder files): fixed
    # apart from --seed so runs that differ only in their training seed are scored on the same
    # images (the seed-to-seed spread of a recipe); synthetic validation follows --seed
    "split_seed": 0,
    # DSB data: share of the training images (whole series, as for validation) also held out, to
    # choose between recipes on images neither trained on nor kept for the final report
    # (`evaluate --subset tune`); 0 = none. Scores on the images trained on are in-sample.
    "tune_fraction": 0.0,
    "init": None,  # a checkpoint or exported fp32 .onnx to start from (same architecture): fine-tuning
    "threads": 2,
    "out": "runs/default",
}


# Options that take one of a few words (the rest take the type of their default).
CHOICES = {
    "fusion": ["concat", "add"],
    "upsample": ["transpose", "bilinear"],
    "bf16": ["auto", "1", "0"],
    "device": ["auto", "cpu", "cuda"],
}

# Options that only the DSB data path reads (``dsb_data``); given with other data they are refused.
DSB_MIX_OPTIONS = ("synthetic_radius", "empty_fields", "dim_nuclei", "dim_weight", "contact_weight")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (PyTorch's own test check).

    The check is a private op: a PyTorch build without it counts as "no", float32 being always safe.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(flag: str, cuda_available: bool) -> str:
    """``--device`` resolved to ``"cpu"`` or ``"cuda"``; asking for CUDA without one is an error.

    Refused rather than run on the CPU: a run planned for minutes on a GPU would take hours.
    """
    if flag == "cuda" and not cuda_available:
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    if flag == "auto":
        return "cuda" if cuda_available else "cpu"
    return flag


def native_bf16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (Ampere and later GPUs; CPUs per oneDNN)."""
    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def use_bf16(flag: str, native: bool, device: str = "cpu") -> bool:
    """``--bf16`` resolved: "auto" follows the device; "1" where bf16 is not native warns."""
    if flag == "auto":
        return native
    if flag == "1" and not native:
        print(
            f"warning: --bf16 1 on a {'GPU' if device == 'cuda' else 'CPU'} without native bfloat16: "
            "autocast emulates it, about 18x slower than float32 on a CPU (--bf16 auto chooses)",
            file=sys.stderr,
        )
    return flag == "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model_export train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for key, value in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if key in CHOICES:
            parser.add_argument(flag, default=value, choices=CHOICES[key], help=f"default {value}")
        elif key == "init":
            parser.add_argument(
                flag, type=Path, default=None,
                help="checkpoint to start from (fine-tune), or an exported .onnx file (the bundled model)",
            )
        elif key == "dsb":
            parser.add_argument(flag, type=Path, default=None, help="DSB 2018 layout folder (stage1_train)")
        elif key in ("images", "masks"):
            parser.add_argument(
                flag, type=Path, default=value, help="folder of image/mask files paired by stem"
            )
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    if (args.images is None) != (args.masks is None):
        parser.error("--images and --masks go together")
    if args.dsb is not None and args.images is not None:
        parser.error("--dsb and --images/--masks are two different data sources: choose one")
    if args.center and args.classes != 1:
        parser.error("--center 1 needs --classes 1: the centre map is built from instance labels")
    if args.patience < 0:
        parser.error("--patience must be 0 (run every step) or more")
    for flag, share in (("--empty-fields", args.empty_fields), ("--dim-nuclei", args.dim_nuclei)):
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"{flag} {share}: expected a share in [0, 1]")
    for flag, gain in (("--dim-weight", args.dim_weight), ("--contact-weight", args.contact_weight)):
        if not gain >= 0:  # also refuses NaN
            raise SystemExit(f"{flag} {gain}: expected a gain of 0 (off) or more")
    if args.dsb is None:
        # Options of the DSB sample mix: with other data they would do nothing, silently.
        for key in DSB_MIX_OPTIONS:
            if getattr(args, key) != DEFAULTS[key]:
                parser.error(f"--{key.replace('_', '-')} shapes the --dsb sample mix: it needs --dsb")
    if not 0.0 <= args.tune_fraction < 1.0:  # also refuses NaN
        raise SystemExit(f"--tune-fraction {args.tune_fraction}: expected a share in [0, 1)")
    if args.dsb is None and args.tune_fraction:
        parser.error("--tune-fraction holds out DSB series: it needs --dsb")
    if args.dsb is None and args.images is None and args.split_seed != DEFAULTS["split_seed"]:
        # Synthetic validation images are drawn from --seed's stream: this flag would do nothing.
        parser.error("--split-seed chooses the held-out part of --dsb or --images data: it needs one")
    # Resolved after every refusal, so a refused command prints no bf16 warning first.
    args.device = resolve_device(args.device, torch.cuda.is_available())
    args.bf16 = int(use_bf16(args.bf16, native_bf16(args.device), args.device))
    return args


def loss_fn(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float,
    classes: int,
    center_weight: float = 1.0,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE + soft Dice on the ``classes`` channels; BCE on the centre channel after them, if any.

    ``logits``/``target``: ``(N, outputs, H, W)``; class targets in {0, 1}, the centre
    target in [0, 1] (see :func:`model_export.data.center_target`). ``pixel_weight``
    ``(N, 1, H, W)``, if given, weighs every pixel's share of all three terms (``--dim-weight``,
    ``--contact-weight``); ones give the plain loss.
    """
    weight = torch.ones_like(logits[:, :1]) if pixel_weight is None else pixel_weight
    class_logits, class_target = logits[:, :classes], target[:, :classes]
    bce = F.binary_cross_entropy_with_logits(class_logits, class_target, weight=weight)
    prob = torch.sigmoid(class_logits)
    dims = (0, 2, 3)  # Dice over the whole batch per class: stable on empty crops
    overlap, total = (weight * prob * class_target).sum(dims), (weight * (prob + class_target)).sum(dims)
    dice = (2 * overlap + 1) / (total + 1)
    loss = bce + dice_weight * (1 - dice.mean())
    if logits.shape[1] > classes:
        centre = F.binary_cross_entropy_with_logits(logits[:, classes:], target[:, classes:], weight=weight)
        loss = loss + center_weight * centre
    return loss


def targets(labels: torch.Tensor, classes: int, center: bool = False) -> torch.Tensor:
    """int ``(N, H, W)`` labels → float ``(N, classes + center, H, W)`` targets.

    One class: foreground = any non-zero label (binary masks and instance label images
    alike). Several: channel c is class index c + 1 (0 is background). With ``center``,
    a last channel holds each object's normalised distance to its edge.
    """
    if classes == 1:
        out = (labels > 0).float()[:, None]
    else:
        out = torch.stack([(labels == c + 1) for c in range(classes)], dim=1).float()
    if center:
        centres = np.stack([center_target(item) for item in labels.numpy()])
        out = torch.cat([out, torch.from_numpy(centres)[:, None]], dim=1)
    return out


class WithTargets:
    """A loader's ``collate_fn``: the batch with its loss targets, built in the loader's worker.

    ``(x, labels[, pixel weight])`` samples → ``(x, targets, pixel weight (N, 1, H, W) or None)``.
    The centre map (a distance transform per nucleus: 60 ms per batch of 8 on a 2-core CPU) is then
    made beside the network's step instead of before it; in the loop it would hold a GPU, which ran
    23–34 steps/s on an H200, to at most ~16.
    """

    def __init__(self, classes: int, center: bool) -> None:
        self.classes, self.center = classes, center

    def __call__(
        self, samples: list[tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, labels, *weight = default_collate(samples)
        return x, targets(labels, self.classes, self.center), weight[0][:, None] if weight else None


@torch.no_grad()
def evaluate(
    model: UNet, xs: torch.Tensor, ys: torch.Tensor, args: argparse.Namespace, batch: int = 8
) -> tuple[float, float]:
    """Mean loss and mean per-image foreground Dice (channel 0, threshold 0.5) on a fixed set."""
    model.eval()
    device = next(model.parameters()).device
    losses, dices = [], []
    for i in range(0, len(xs), batch):
        x = xs[i : i + batch].to(device)
        y = targets(ys[i : i + batch], args.classes, model.config.center).to(device)
        logits = model(x)
        losses.append(loss_fn(logits, y, args.dice_weight, args.classes, args.center_weight).item() * len(x))
        pred = (logits[:, 0] > 0).cpu().numpy()
        truth = y[:, 0].cpu().numpy().astype(bool)
        dices += [dice_iou(p, t)[0] for p, t in zip(pred, truth, strict=True)]
    model.train()
    return sum(losses) / len(xs), float(np.mean(dices))


def init_weights(model: UNet, start: dict, path: Path) -> None:
    """Load a checkpoint's weights into ``model`` (fine-tuning).

    The architecture must match, except that ``model`` may add the centre channel to a
    checkpoint without one: the class channels of the head are copied and the new
    channel starts from the layer's own initialisation.
    """
    config = model.config.as_dict()
    saved = {"center": False, **start["config"]}
    if {**saved, "center": config["center"]} != config or (saved["center"] and not config["center"]):
        raise SystemExit(f"--init {path}: architecture {saved} differs from {config}")
    state = dict(start["state_dict"])
    if not saved["center"] and config["center"]:
        head = model.state_dict()
        for key in ("head.weight", "head.bias"):
            grown = head[key].clone()
            grown[: state[key].shape[0]] = state[key]
            state[key] = grown
    model.load_state_dict(state)
    if start.get("frozen_batchnorm"):  # started from an ONNX file: its BatchNorms hold no batch statistics
        model.freeze_batchnorm()


def parse_radius_range(text: str) -> tuple[float, float] | None:
    """``"LO,HI"`` → ``(LO, HI)`` px; empty → None."""
    if not text:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise SystemExit(f"--synthetic-radius {text!r}: expected LO,HI in px, e.g. 2.5,45") from None
    if not 0 < low <= high:
        raise SystemExit(f"--synthetic-radius {text!r}: need 0 < LO <= HI")
    return low, high


def dsb_data(args: argparse.Namespace) -> tuple[DataLoader, torch.Tensor, torch.Tensor, dict]:
    """Training loader and fixed validation crops from a DSB-layout folder (fluorescence only).

    Validation holds out whole acquisition series (``dsb.split_by_series``); its crops are
    brought to the model's nucleus scale without jitter, as the service would.
    """
    from model_export import dsb

    items = dsb.load_set(args.dsb)
    train_items, val_items = dsb.split_by_series(items, args.val_fraction, args.split_seed)
    if not train_items or not val_items:
        raise SystemExit(f"--dsb {args.dsb}: {len(items)} fluorescence images; too few to split by series")
    tune_items: list[dsb.DsbImage] = []
    if args.tune_fraction:
        # A second, disjoint draw of whole series from what is left (its own hash order).
        train_items, tune_items = dsb.split_by_series(train_items, args.tune_fraction, args.split_seed + 1)
        if not tune_items or not train_items:
            raise SystemExit(
                f"--tune-fraction {args.tune_fraction}: the {len(train_items) + len(tune_items)} "
                "training images hold no series that can be set aside for tuning"
            )
    jitter = (1 / args.scale_jitter, args.scale_jitter)
    synthetic_radius = parse_radius_range(args.synthetic_radius)
    as_tuples = [(i.image, i.labels, i.diameter) for i in train_items]
    train_set = ScaledDataset(
        as_tuples, args.patch, args.diameter, jitter, args.synthetic, args.in_channels, args.seed,
        samples_per_epoch=max(len(train_items), args.batch_size) * 16,
        synthetic_radius=synthetic_radius,
        empty_fields=args.empty_fields,
        dim_nuclei=args.dim_nuclei,
        dim_weight=args.dim_weight,
        contact_weight=args.contact_weight,
    )
    val_set = ScaledDataset(
        [(i.image, i.labels, i.diameter) for i in val_items], args.patch, args.diameter,
        in_channels=args.in_channels, seed=args.split_seed, samples_per_epoch=len(val_items), augment=False,
    )
    pairs = [val_set[i] for i in range(len(val_items))]
    val_x, val_y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    data_desc = {
        "kind": "dsb2018",
        "dsb": str(args.dsb),
        "licence": "CC0 (BBBC038 / Kaggle DSB 2018 stage 1 train, community-fixed masks)",
        "fluorescence_images": len(items),
        "train_images": len(train_items),
        "val_images": len(val_items),
        "val_series": sorted({i.series for i in val_items}),
        "val_ids": sorted(i.id for i in val_items),
        "split_seed": args.split_seed,
        **(
            {"tune_images": len(tune_items), "tune_ids": sorted(i.id for i in tune_items)}
            if tune_items
            else {}
        ),
        "nucleus_diameter_px": args.diameter,
        "scale_jitter": args.scale_jitter,
        "synthetic_share": args.synthetic,
        "synthetic_radius_px": synthetic_radius,  # a tuple: export stores it as JSON (a list)
        "empty_field_share": args.empty_fields,
        "dim_nuclei_share": args.dim_nuclei,
        "dim_weight": args.dim_weight,
        "contact_weight": args.contact_weight,
    }
    print(
        f"DSB: {len(items)} fluorescence images, {len(train_items)} train / {len(val_items)} val "
        f"({len(data_desc['val_series'])} held-out series)"
        + (f", {len(tune_items)} set aside for tuning" if tune_items else "")
    )
    return shuffled_loader(train_set, args), val_x, val_y, data_desc


def loader_options(args: argparse.Namespace) -> dict:
    """What every training loader shares: batch size, targets built by the workers, pinned batches
    for a GPU."""
    return {
        "batch_size": args.batch_size,
        "collate_fn": WithTargets(args.classes, bool(args.center)),
        "num_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "pin_memory": args.device == "cuda",
    }


def shuffled_loader(train_set: Dataset, args: argparse.Namespace) -> DataLoader:
    """Batches of a finite training set in a fresh random order each pass (image folders, DSB)."""
    return DataLoader(train_set, shuffle=True, drop_last=True, **loader_options(args))


def evaluations_since_best(history: list[dict], select_by: str) -> int:
    """How many of the last evaluations in ``history`` came after its best one (``select_by``:
    ``val_loss``, lower is better, or ``val_dice``, higher is better; ties are not better)."""
    scores = [h[select_by] if select_by == "val_dice" else -h[select_by] for h in history]
    if not scores:
        return 0
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first of equal bests
    return len(scores) - 1 - best


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [h["train_loss"] for h in history], label="train loss")
    ax1.plot(steps, [h["val_loss"] for h in history], label="val loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("BCE + Dice loss")
    ax1.legend()
    ax2.plot(steps, [h["val_dice"] for h in history], color="C2", label="val Dice")
    ax2.set_xlabel("step")
    ax2.set_ylabel("foreground Dice")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def device_name(device: str) -> str:
    """What the log says the network runs on: the GPU's name, or "CPU"."""
    return torch.cuda.get_device_name() if device == "cuda" else "CPU"


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the path of the best checkpoint."""
    args = parse_args(argv)
    command = "python -m model_export train " + " ".join(
        shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)

    # ---- data ----
    if args.dsb is not None:
        loader, val_x, val_y, data_desc = dsb_data(args)
    elif args.images is not None:
        full = FolderDataset(
            args.images, args.masks, args.patch, args.in_channels, augment=True, seed=args.seed
        )
        order = np.random.default_rng(args.split_seed).permutation(len(full.items))
        n_val = max(1, round(args.val_fraction * len(order))) if len(order) > 1 else 0
        if n_val == 0:
            raise SystemExit("folder training needs at least 2 image/mask pairs (one for validation)")
        val_idx, train_idx = order[:n_val].tolist(), order[n_val:].tolist()
        full.samples = max(len(train_idx), args.batch_size)
        train_set = Subset(full, [train_idx[i % len(train_idx)] for i in range(full.samples)])
        # Validation: deterministic centre-ish crops of the held-out files, no augmentation.
        val = FolderDataset(
            args.images, args.masks, args.patch, args.in_channels, augment=False, seed=args.split_seed
        )
        pairs = [val[i] for i in val_idx]
        val_x, val_y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        data_desc = {
            "kind": "folders",
            "images": str(args.images),
            "masks": str(args.masks),
            "train_files": len(train_idx),
            "val_files": len(val_idx),
            "split_seed": args.split_seed,
        }
        loader = shuffled_loader(train_set, args)
    else:
        # Training and validation draw from disjoint seed streams (seed vs seed + 1_000_003).
        val_x, val_y = synthetic_set(args.val_images, args.val_size, args.seed + 1_000_003, args.in_channels)
        data_desc = {
            "kind": "synthetic",
            "generator": "model_export.data.synth_nuclei",
            "patch": args.patch,
            "train_seed": args.seed,
            "val_seed": args.seed + 1_000_003,
            "val_images": args.val_images,
        }
        loader = DataLoader(SyntheticStream(args.patch, args.in_channels, args.seed), **loader_options(args))

    # ---- model and optimiser ----
    config = UNetConfig(
        in_channels=args.in_channels,
        classes=args.classes,
        depth=args.depth,
        base_channels=args.base_channels,
        fusion=args.fusion,
        upsample=args.upsample,
        center=bool(args.center),
    )
    model = UNet(config)
    if args.init is not None and args.init.suffix.lower() == ".onnx":
        try:
            data_desc["init"] = onnx_init.load_into(model, args.init)
        except onnx_init.InitError as exc:
            raise SystemExit(f"--init {args.init}: {exc}") from exc
    elif args.init is not None:
        start = torch.load(args.init, map_location="cpu", weights_only=False)
        init_weights(model, start, args.init)
        data_desc["init"] = {"checkpoint": str(args.init), "command": start.get("command", "")}
    print(
        f"U-Net {config.as_dict()}: {count_parameters(model):,} parameters, "
        f"{flops_per_pixel(model) / 1e3:.1f} kFLOP/pixel, receptive field {receptive_field(config)} px; "
        f"on {device_name(args.device)}, bfloat16 autocast {'on' if args.bf16 else 'off'}"
    )
    # Weights are loaded (--init) on the CPU and moved once; checkpoints are saved from CPU copies,
    # so a run trained on a GPU exports and fine-tunes on a machine without one.
    model.to(args.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(step: int) -> float:
        # Short linear warm-up (BatchNorm statistics settle), then cosine decay.
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (
            args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    # ---- loop ----
    history: list[dict] = []
    # The best checkpoint: highest validation Dice, or with a centre channel lowest validation
    # loss (Dice says nothing about the centre map; the loss weighs both).
    select_by = "val_loss" if config.center else "val_dice"
    best_score, best_path = -math.inf, out / "best.pt"
    running: list[float] = []
    started = time.time()
    batches = iter(loader)
    bar = tqdm(range(args.steps), desc="train", unit="step", dynamic_ncols=True)
    for step in bar:
        try:
            batch = next(batches)
        except StopIteration:  # folder data: start another pass
            batches = iter(loader)
            batch = next(batches)
        x, target, pixel_weight = (None if t is None else t.to(args.device, non_blocking=True) for t in batch)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        # Weights, optimiser state and BatchNorm statistics stay float32; only the
        # convolutions run in bfloat16. Validation and export use float32.
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bool(args.bf16)):
            logits = model(x)
        loss = loss_fn(
            logits.float(), target, args.dice_weight, args.classes, args.center_weight, pixel_weight
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running.append(loss.item())
        bar.set_postfix(loss=f"{running[-1]:.4f}")

        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val_loss, val_dice = evaluate(model, val_x, val_y, args)
            history.append(
                {
                    "epoch": len(history) + 1,
                    "step": step + 1,
                    "seconds": round(time.time() - started, 1),
                    "lr": lr_at(step),
                    "train_loss": float(np.mean(running)),
                    "val_loss": val_loss,
                    "val_dice": val_dice,
                }
            )
            running = []
            tqdm.write(json.dumps(history[-1]))
            checkpoint = {
                "config": config.as_dict(),
                "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
                "step": step + 1,
                "val_dice": val_dice,
                "selected_by": select_by,
                "frozen_batchnorm": model.frozen_batchnorm,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "command": command,
                "data": data_desc,
                "history": history,
            }
            torch.save(checkpoint, out / "last.pt")
            score = -val_loss if config.center else val_dice
            if score > best_score:
                best_score = score
                torch.save(checkpoint, best_path)
            with open(out / "history.json", "w") as f:
                json.dump(history, f, indent=1)
            with open(out / "history.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
            plot_history(history, out / "curves.png")
            if args.patience and evaluations_since_best(history, select_by) >= args.patience:
                tqdm.write(
                    f"stopping at step {step + 1} of {args.steps}: {args.patience} evaluations without a "
                    f"better {select_by} (--patience)"
                )
                break
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    print(
        f"done in {time.time() - started:.0f} s; best by {select_by}: step {best['step']}, "
        f"val Dice {best['val_dice']:.4f}, val loss {best['history'][-1]['val_loss']:.4f} → {best_path}"
    )
    return best_path


if __name__ == "__main__":
    main()
