"""One decoded image → per-class probabilities: normalise, tile, infer, stitch, activate.

The glue between ``preprocess`` (normalisation), ``tiling`` (geometry and blending)
and whatever runs the model: ``infer`` is ``Engine.run`` for offline evaluation, or the
HTTP layer's dynamic batcher, which groups tiles of concurrent requests.

Tiling defaults are resolved HERE and only here (:func:`resolve_tiling`): an explicit
argument (request option or setting, already merged by the caller) wins, else the
model's metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.model_metadata import ModelMetadata
from service.objects import ObjectParams
from service.preprocess import prepare
from service.tiling import Stitcher, TilePlan, iter_tile_batches, pad_image, plan_tiles

#: ``(N, C, h, w) float32`` → raw model outputs ``(N, K, h, w) float32``.
Infer = Callable[[np.ndarray], np.ndarray]


class Cancelled(Exception):
    """``should_stop`` asked to stop (e.g. the client disconnected); no result."""


@dataclass
class Prediction:
    """The model's answer for one image.

    Attributes:
        probabilities: ``(K, H, W)`` float32 in [0, 1], the activation of
            ``metadata.activation`` applied (sigmoid per channel, softmax across channels).
        tiles: how many tiles the model ran on.
        tile_size, overlap: the resolved tiling parameters (``overlap`` as enforced,
            i.e. at least twice the model's context margin).
        plan: the full tile plan (tile edge, grid, padding).
        input_grey: ``(H, W)`` float32, the normalised model input (mean over its channels),
            kept when the model's objects need it (a contrast cut, ``min_snr``); else None.
    """

    probabilities: np.ndarray
    tiles: int
    tile_size: int
    overlap: int
    plan: TilePlan
    input_grey: np.ndarray | None = None


def resolve_tiling(
    metadata: ModelMetadata, tile_size: int | None = None, overlap: int | None = None
) -> tuple[int, int]:
    """``(tile_size, overlap)``: the given values, else the model's recommended ones."""
    tile = metadata.tile_size if tile_size is None else int(tile_size)
    ov = metadata.tile_overlap if overlap is None else int(overlap)
    if tile < 1:
        raise ValueError(f"tile_size must be ≥ 1, got {tile}")
    if ov < 0:
        raise ValueError(f"overlap must be ≥ 0, got {ov}")
    return tile, ov


def apply_activation(raw: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """Turn raw ``(K, H, W)`` float32 outputs into probabilities, IN PLACE; returns ``raw``.

    Nothing to do when the model already outputs probabilities.
    """
    if metadata.output_kind == "probabilities":
        return raw
    if metadata.activation == "sigmoid":
        # 1 / (1 + exp(-x)); exp overflows to inf for x < -88, giving exactly 0: fine
        with np.errstate(over="ignore"):
            np.negative(raw, out=raw)
            np.exp(raw, out=raw)
            raw += 1.0
            np.reciprocal(raw, out=raw)
        return raw
    # softmax across classes, shifted by the max for stability
    raw -= raw.max(axis=0, keepdims=True)
    np.exp(raw, out=raw)
    raw /= raw.sum(axis=0, keepdims=True)
    return raw


def predict(
    image: np.ndarray,
    infer: Infer,
    metadata: ModelMetadata,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    should_stop: Callable[[], bool] | None = None,
    border: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_input: bool | None = None,
) -> Prediction:
    """Segment one decoded image by overlapping tiles.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` as from ``imaging.decode`` (uint8/uint16/float32).
        infer: runs the model on a tile batch, ``(N, C, h, w)`` → ``(N, K, h, w)`` float32.
        metadata: the model's description (channels, normalisation, divisor, margin, ...).
        tile_size, overlap: overrides; ``None`` → the model's recommendation. A
            ``tile_size`` at least the image's larger side means a single pass.
        batch_size: tiles per ``infer`` call (peak memory ∝ batch_size × tile area).
        should_stop: polled before each batch; when it returns True, :class:`Cancelled`
            is raised and no further tiles are computed.
        border: mirror padding at the image border (``tiling.plan_tiles``); ``None`` →
            the model's ``border``, else its context margin.
        progress: called with ``(tiles done, tiles in the plan)`` before the first batch and
            after each one (a job's progress report); cheap calls only.
        keep_input: keep the normalised model input (``Prediction.input_grey``); None: when the
            model's objects read it (a contrast cut, ``min_snr``).

    Returns:
        :class:`Prediction` with ``(K, H, W)`` float32 probabilities.
    """
    tile, ov = resolve_tiling(metadata, tile_size, overlap)
    height, width = image.shape[:2]
    if border is None:
        border = metadata.border
    plan = plan_tiles(height, width, tile, ov, metadata.context_margin, metadata.size_divisor, border)
    # Normalise the WHOLE image once: per-tile percentiles would differ from tile to tile
    # and leave seams.
    chw = prepare(image, metadata.in_channels, metadata.normalization)
    padded = pad_image(chw, plan)
    if keep_input is None:
        keep_input = ObjectParams.from_metadata(metadata.objects).min_snr > 0
    input_grey = model_input_grey(chw) if keep_input else None
    del chw  # only the padded copy is needed from here on
    stitcher = Stitcher(plan, metadata.classes)
    expected = (metadata.classes, plan.tile_h, plan.tile_w)
    if progress is not None:
        progress(0, plan.n_tiles)
    for indices, batch in iter_tile_batches(padded, plan, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {stitcher.added} of {plan.n_tiles} tiles")
        outputs = np.asarray(infer(batch))
        if outputs.shape != (len(indices), *expected):
            raise RuntimeError(
                f"model returned {outputs.shape} for a batch of {batch.shape}; "
                f"expected {(len(indices), *expected)}"
            )
        for index, output in zip(indices, outputs, strict=True):
            stitcher.add(index, output)
        if progress is not None:
            progress(stitcher.added, plan.n_tiles)
    del padded
    probabilities = apply_activation(stitcher.result(), metadata)
    return Prediction(probabilities, plan.n_tiles, tile, plan.overlap, plan, input_grey)


def model_input_grey(chw: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 of a normalised ``(C, H, W)`` model input: its channels' mean."""
    return chw[0].copy() if chw.shape[0] == 1 else chw.mean(axis=0, dtype=np.float32)
