"""A tiny data set in the DSB 2018 / BBBC038 layout, written by the tests.

``<root>/stage1_train/<id>/images/<id>.png`` (RGBA, grey in every channel, as DSB stores
fluorescence) and one binary PNG per nucleus in ``<id>/masks/``; optionally one colour
(H&E-like) image that readers must sort out.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import helper

from model_export.data import SynthConfig, synth_nuclei
from service.model_metadata import ModelMetadata


def write_dsb_folder(root: Path, n: int = 4, size: int = 96, seed: int = 0, colour: bool = True) -> Path:
    """Write ``n`` fluorescence samples (+ one colour one); returns the ``stage1_train`` folder."""
    train = Path(root) / "stage1_train"
    for i in range(n + int(colour)):
        image, labels = synth_nuclei(seed + i, size, SynthConfig(radius=(6.0, 9.0), flat_padding=0.0))
        image8 = (image.astype(np.float32) / max(1, image.max()) * 255).astype(np.uint8)
        if i == n:  # the colour one: pink background, purple nuclei
            g = image8.astype(np.float32)[:, :, None] / 255
            rgb = np.array([235, 200, 220]) * (1 - g) + np.array([90, 50, 150]) * g
            rgba = np.concatenate([rgb, np.full((size, size, 1), 255)], axis=2).astype(np.uint8)
        else:
            rgba = np.dstack([image8, image8, image8, np.full_like(image8, 255)])
        sample_id = f"{seed + i:04d}{'c' if i == n else 'f'}" + "0" * 59
        (train / sample_id / "images").mkdir(parents=True)
        (train / sample_id / "masks").mkdir()
        folder = train / sample_id
        cv2.imwrite(str(folder / "images" / f"{sample_id}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        for k in range(1, int(labels.max()) + 1):
            if (labels == k).any():
                nucleus = ((labels == k) * 255).astype(np.uint8)
                cv2.imwrite(str(folder / "masks" / f"m{k:04d}.png"), nucleus)
    return train


def with_val_ids(src: str | Path, dst: Path, val_ids: list[str], tune_ids: list[str] | None = None) -> Path:
    """A copy of an exported model whose metadata says its training held out ``val_ids`` (and
    ``tune_ids`` for tuning, as ``train --tune-fraction`` records them)."""
    model = onnx.load(str(src))
    meta = ModelMetadata.from_onnx_props({p.key: p.value for p in model.metadata_props})
    data = {**meta.training.get("data", {}), "kind": "dsb2018", "val_ids": val_ids}
    if tune_ids is not None:
        data["tune_ids"] = tune_ids
    meta = meta.model_copy(update={"training": {**meta.training, "data": data}})
    helper.set_model_props(model, meta.to_onnx_props())
    onnx.save(model, str(dst))
    return dst
