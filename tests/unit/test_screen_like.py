"""benchmarks/screen_like.py re-records DSB images as 16-bit with some nuclei brighter or dimmer:
the images it builds change exactly the nuclei it says, by the factor it says, and nothing else."""

from __future__ import annotations

import numpy as np

from model_export.dsb import DsbImage
from tests.benchmark_scripts import load_benchmark


def test_variants_change_the_named_nuclei_by_their_factor_only() -> None:
    screen_like = load_benchmark("screen_like")
    rng = np.random.default_rng(0)
    labels = np.zeros((120, 120), np.int32)
    for k in range(20):  # 20 square nuclei of 8 px on a grid
        y, x = divmod(k, 5)
        labels[5 + 25 * y : 13 + 25 * y, 5 + 22 * x : 13 + 22 * x] = k + 1
    image = (rng.integers(10, 20, labels.shape) + 100 * (labels > 0)).astype(np.uint8)
    item = DsbImage("0123abcd" + "0" * 56, image, labels, "fluorescence", 9.0)

    made = {name: (recorded, changed) for name, recorded, changed in screen_like.variants(item)}
    assert set(made) == {"16-bit", "bright", "dim"}
    plain, none = made["16-bit"]
    assert plain.dtype == np.uint16 and none.size == 0
    np.testing.assert_array_equal(plain, 100 + 12 * image.astype(np.int64))
    background = 100 + 12 * float(np.median(image[labels == 0]))
    for name, factor, count in (("bright", 4.0, 1), ("dim", 0.3, 10)):
        recorded, changed = made[name]
        assert len(changed) == count
        inside = np.isin(labels, changed)
        np.testing.assert_array_equal(recorded[~inside], plain[~inside])  # the rest untouched
        signal_before = plain[inside].astype(np.float64) - background
        signal_after = recorded[inside].astype(np.float64) - background
        np.testing.assert_allclose(signal_after, factor * signal_before, atol=1.0)  # rounding
