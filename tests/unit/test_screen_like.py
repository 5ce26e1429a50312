"""benchmarks/screen_like.py re-records DSB images as 16-bit with some nuclei brighter or dimmer:
the images it builds change exactly the nuclei it says (with their blurred rims), by the factor it
says, and nothing else."""

from __future__ import annotations

import cv2
import numpy as np

from model_export.dsb import DsbImage, light_owner
from tests.benchmark_scripts import load_benchmark


def _grid_of_nuclei(blur: float) -> DsbImage:
    """20 square nuclei of 8 px, 14–17 px apart, on a noisy background; blurred by ``blur`` px."""
    rng = np.random.default_rng(0)
    labels = np.zeros((120, 120), np.int32)
    for k in range(20):
        y, x = divmod(k, 5)
        labels[5 + 25 * y : 13 + 25 * y, 5 + 22 * x : 13 + 22 * x] = k + 1
    light = 100.0 * (labels > 0)
    if blur:
        light = cv2.GaussianBlur(light, (0, 0), blur)
    image = np.round(rng.integers(10, 20, labels.shape) + light).astype(np.uint8)
    return DsbImage("0123abcd" + "0" * 56, image, labels, "fluorescence", 9.0)


def test_variants_change_the_named_nuclei_and_their_rims_by_their_factor_only() -> None:
    screen_like = load_benchmark("screen_like")
    item = _grid_of_nuclei(blur=0)
    made = {name: (recorded, changed) for name, recorded, changed in screen_like.variants(item)}
    assert set(made) == {"16-bit", "bright", "dim"}
    plain, none = made["16-bit"]
    assert plain.dtype == np.uint16 and none.size == 0
    np.testing.assert_array_equal(plain, 100 + 12 * item.image.astype(np.int64))
    background = 100 + 12 * float(np.median(item.image[item.labels == 0]))
    owner = light_owner(item.labels, screen_like.RIM_REACH)
    for name, factor, count in (("bright", 4.0, 1), ("dim", 0.3, 10)):
        recorded, changed = made[name]
        assert len(changed) == count
        theirs = np.isin(owner, changed)
        assert theirs.sum() > np.isin(item.labels, changed).sum()  # the rims count
        np.testing.assert_array_equal(recorded[~theirs], plain[~theirs])  # the rest untouched
        signal_before = plain[theirs].astype(np.float64) - background
        signal_after = recorded[theirs].astype(np.float64) - background
        np.testing.assert_allclose(
            np.clip(signal_after, 0, None), np.clip(factor * signal_before, 0, None), atol=1.0
        )


def test_a_dimmed_nucleus_keeps_no_ring_of_its_former_brightness() -> None:
    """A blurred nucleus's light spreads past its annotation: dimmed, its rim must dim with it
    (before 2026-12-02 the rim stayed as bright as the dimmed interior, a ring the model outlined)."""
    screen_like = load_benchmark("screen_like")
    item = _grid_of_nuclei(blur=1.5)
    (_, plain, _), _, (_, dim, changed) = screen_like.variants(item)
    inside = np.isin(item.labels, changed)
    rim = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (item.labels == 0)
    background = float(np.median(dim[item.labels == 0]))
    interior = dim[inside].mean() - background
    assert dim[rim].mean() - background < 0.6 * interior  # fades outward, as before dimming
    before = (plain[rim].mean() - background) / (plain[inside].mean() - background)
    after = (dim[rim].mean() - background) / interior
    assert abs(after - before) < 0.05


def test_enlarged_cases_keep_the_labels_and_dim_each_rim_as_far_as_it_is_blurred() -> None:
    """``--upscale 3`` stands for high-magnification movies: the labels keep their ids at 3× the
    size, and a dimmed nucleus's rim dims out to 3 × RIM_REACH (the variants are made before
    enlarging; dimming after would leave each dim nucleus in a ring of its former brightness)."""
    screen_like = load_benchmark("screen_like")
    item = _grid_of_nuclei(blur=1.5)
    ((native, made_native),) = screen_like.cases([item])
    ((big, made_big),) = screen_like.cases([item], upscale=3)
    assert native is item
    assert big.labels.shape == (360, 360) and big.diameter == 3 * item.diameter
    assert set(np.unique(big.labels)) == set(np.unique(item.labels))
    assert [name for name, _, _ in made_big] == [name for name, _, _ in made_native]
    (_, plain, _), _, (_, dim, changed) = made_big
    np.testing.assert_array_equal(changed, made_native[2][2])
    assert plain.shape == dim.shape == (360, 360) and dim.dtype == np.uint16
    # The outer part of the rim, beyond the reach the variants would have had if made at ×3:
    inside = np.isin(big.labels, changed)
    reach = round(screen_like.RIM_REACH)
    near = cv2.dilate(inside.astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)).astype(bool)
    far = cv2.dilate(inside.astype(np.uint8), np.ones((6 * reach + 1,) * 2, np.uint8)).astype(bool)
    outer_rim = far & ~near & (big.labels == 0)
    assert outer_rim.any()
    background = float(np.median(plain[big.labels == 0]))
    lit = plain[outer_rim] > background + 24  # the blurred light that reaches this far out
    assert lit.sum() > 50
    ratio = (dim[outer_rim][lit] - background) / (plain[outer_rim][lit] - background)
    assert np.median(ratio) < 0.45  # dimmed with its nucleus (×0.3), not left at its former level
