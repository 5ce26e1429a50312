"""benchmarks/snr_cut.py measures each mask region's contrast against a ring around it: a bright
nucleus stands far above its surroundings, a faint speck of noise does not, and a region with no
background around it is not measured (kept)."""

from __future__ import annotations

import cv2
import numpy as np

from tests.benchmark_scripts import load_benchmark


def _disc(image: np.ndarray, center: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros(image.shape, np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    return mask.astype(bool)


def test_a_bright_nucleus_stands_out_and_a_faint_speck_does_not() -> None:
    region_snr = load_benchmark("snr_cut").region_snr
    rng = np.random.default_rng(0)
    grey = rng.normal(0.1, 0.02, (96, 96)).astype(np.float32)  # background noise, σ 0.02
    bright = _disc(grey, (25, 30), 8)
    faint = _disc(grey, (70, 60), 8)
    grey[bright] += 0.5  # 25 σ above the background
    grey[faint] += 0.01  # half a σ
    regions, snr = region_snr(grey, bright | faint, ring_px=6)
    assert regions.max() == 2 and np.isinf(snr[0])
    bright_id, faint_id = int(regions[25, 30]), int(regions[60, 70])
    assert snr[bright_id] > 15
    assert snr[faint_id] < 1.5


def test_a_region_without_background_around_it_is_kept() -> None:
    region_snr = load_benchmark("snr_cut").region_snr
    grey = np.full((40, 40), 0.3, np.float32)
    everything = np.ones((40, 40), bool)
    regions, snr = region_snr(grey, everything, ring_px=5)
    assert regions.max() == 1 and np.isinf(snr[1])
