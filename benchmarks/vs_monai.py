"""Ours vs MONAI: seconds per image against ``monai.inferers.sliding_window_inference``.

In ONE run, on the same synthetic 2048×2048 nuclei image, the same weights and the same threads:

1. **ours**: ``POST /segment`` (mask output) end to end over HTTP on loopback to a real
   ``python -m service`` process — upload, PNG decode, normalise, tile, ONNX Runtime, stitch,
   threshold, PNG encode, response — with the model's default tiling.
2. **MONAI, model card's tiling**: ``sliding_window_inference`` in this process (PyTorch eager,
   the training checkpoint's weights) with ``roi_size`` = the model's ``tile_size`` and
   ``overlap`` = ``tile_overlap / tile_size``, ``mode="gaussian"``: what a MONAI user would set from
   the model card. From the normalised array to the thresholded mask (no decode, encode or HTTP).
3. **MONAI, our tile window** (only where it differs from 2.): the same with ``roi_size`` = the
   window our planner actually runs (``tile_size`` + overlap + border, e.g. 1088² for 1024 + 64),
   so both run the same number of pixels through the network and the difference is runtime +
   pipeline, not tile placement.

``torch.set_num_threads`` = the service's ONNX Runtime intra-op threads. The service is its own
process (torch and ORT in one process slow ORT down). Each variant runs once to warm up, then
``--repeat`` interleaved rounds; the table gives min and median seconds and the ratio MONAI / ours.
The last column is the Dice overlap of each MONAI mask with ours (same weights → ~1.0; the
blending differs, Gaussian vs our ramps, so a few edge pixels may flip).

    .venv/bin/python benchmarks/vs_monai.py [--model PATH] [--checkpoint PATH] [--threads N] [--repeat 2]

Without ``--model``/``--checkpoint`` files (a fresh clone: ``runs/`` is not in git) both come from
one UNTRAINED stand-in U-Net, so the comparison still uses identical weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from _common import (
    DEFAULT_CHECKPOINT,
    Service,
    encode_png,
    machine,
    markdown_table,
    nuclei_image,
    plot_rounds,
    stand_in_model,
    timed,
)

from service.model_metadata import ModelMetadata
from service.preprocess import prepare
from service.settings import DEFAULT_MODEL_PATH
from service.tiling import plan_tiles


class MonaiSegmenter:
    """MONAI's sliding window over the PyTorch U-Net: normalised image → thresholded mask."""

    def __init__(self, checkpoint: Path, md: ModelMetadata, roi: int, overlap: float, sw_batch: int) -> None:
        import torch
        from monai.inferers import sliding_window_inference

        from model_export.export import load_checkpoint

        self.torch, self.swi = torch, sliding_window_inference
        self.model, _ = load_checkpoint(checkpoint)
        self.md, self.roi, self.overlap, self.sw_batch = md, roi, overlap, sw_batch

    def windows(self, size: int) -> int:
        """Windows MONAI runs on a ``size``² image (its scan: interval = roi · (1 − overlap))."""
        interval = max(1, int(self.roi * (1 - self.overlap)))
        per_axis = 1 if size <= self.roi else -(-(size - self.roi) // interval) + 1
        return per_axis * per_axis

    def __call__(self, image: np.ndarray) -> np.ndarray:
        torch, md = self.torch, self.md
        x = torch.from_numpy(prepare(image, md.in_channels, md.normalization)[None])
        with torch.inference_mode():
            logits = self.swi(
                x, roi_size=(self.roi, self.roi), sw_batch_size=self.sw_batch, predictor=self.model,
                overlap=self.overlap, mode="gaussian",
            )
            prob = torch.sigmoid(logits[0, md.foreground_channel])
        return (prob.numpy() > md.threshold).astype(np.uint8) * 255


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="the training checkpoint the ONNX model was exported from")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sw-batch", type=int, default=4, help="MONAI's sw_batch_size")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--plot", default="vs_monai.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, checkpoint = args.model, args.checkpoint
        if not (model.is_file() and checkpoint.is_file()):
            print(f"{model} or {checkpoint} not found: using an UNTRAINED stand-in U-Net for both")
            model, checkpoint = stand_in_model(Path(tmp))
        image = nuclei_image(args.size)
        body = encode_png(image)
        with Service(model, args.threads) as service:
            md = ModelMetadata.model_validate(service.model_info()["metadata"])
            # The same plan the service makes (its mirror border comes from the model, if it says).
            plan = plan_tiles(args.size, args.size, md.tile_size, md.tile_overlap, md.context_margin,
                              md.size_divisor, getattr(md, "border", None))
            card = MonaiSegmenter(checkpoint, md, md.tile_size, md.tile_overlap / md.tile_size, args.sw_batch)
            window = plan.tile_h
            same = MonaiSegmenter(checkpoint, md, window, plan.overlap / window, args.sw_batch)
            ours_mask: list[np.ndarray] = []

            def ours() -> None:
                r = service.segment(body, {"output": "mask"})
                ours_mask[:] = [cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)]

            masks: dict[str, np.ndarray] = {}
            variants = {
                "ours: POST /segment (HTTP, ORT)": ours,
                f"MONAI roi {card.roi}, overlap {card.overlap:.4g} (model card)":
                    lambda: masks.__setitem__("card", card(image)),
            }
            monai_runs = [card]
            if same.roi != card.roi:  # our planner's window differs from the card's tile: compare both
                variants[f"MONAI roi {same.roi}, overlap {same.overlap:.4g} (our tile window)"] = (
                    lambda: masks.__setitem__("same", same(image)))
                monai_runs.append(same)
            windows = [plan.n_tiles, *(m.windows(args.size) for m in monai_runs)]
            window_px = [plan.tile_h * plan.tile_w, *(m.roi**2 for m in monai_runs)]
            for fn in variants.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {label: [] for label in variants}
            for r in range(args.repeat):
                # Alternate the order between rounds so neither side always runs on a "hot" CPU.
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for label in order:
                    times[label].append(timed(variants[label]))
            tiles_header = service.headers["last"]["X-Tiles"]

    ours_s = times[next(iter(variants))]
    agreement = [1.0] + [dice(masks[k] > 0, ours_mask[0] > 0) for k in ("card", "same") if k in masks]
    table = []
    for i, (label, values) in enumerate(times.items()):
        px = windows[i] * window_px[i]
        table.append([
            label, f"{windows[i]} × {int(window_px[i] ** 0.5)}²", f"{px / args.size**2:.2f}",
            f"{min(values):.2f}", f"{statistics.median(values):.2f}",
            f"{min(values) / min(ours_s):.2f}×",
            f"{statistics.median(values) / statistics.median(ours_s):.2f}×",
            f"{agreement[i]:.4f}",
        ])
    print(f"\n## Ours vs MONAI sliding_window_inference\n\n{machine()}\n")
    print(
        f"model {md.name} {md.version} (tile {md.tile_size}, overlap {md.tile_overlap}, margin "
        f"{md.context_margin}); weights: {checkpoint.name} (torch) = {model.name} (ORT); image "
        f"{args.size}² {image.dtype}; {args.threads} threads each; MONAI mode='gaussian', sw_batch_size "
        f"{args.sw_batch}; service X-Tiles {tiles_header}; {args.repeat} interleaved rounds after a warm-up\n"
    )
    print(markdown_table(
        ["variant", "windows", "network px / image px", "min s", "median s", "× ours (min)",
         "× ours (median)", "mask Dice vs ours"],
        table,
    ))
    labels = list(times)
    same_text = (f", **{min(times[labels[2]]) / min(ours_s):.2f}×** with our tile window" if len(labels) > 2
                 else " (= our tile window here)")
    print(
        f"\nMONAI / ours, seconds per image: **{min(times[labels[1]]) / min(ours_s):.2f}×** with the model "
        f"card's tiling{same_text} (by min)"
    )

    title = f"{args.size}² nuclei image, {args.threads} threads: ours (HTTP) vs MONAI (in-process)"
    print("\n" + plot_rounds(times, title, args.plot, colors=("#4878a8", "#d08040", "#e0a060")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
