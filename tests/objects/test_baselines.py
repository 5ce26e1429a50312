"""The classical baseline (Otsu + distance-transform watershed) on drawn images with known nuclei."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model_export.baselines import BASELINES, REFERENCE_DIAMETER, otsu_watershed, otsu_watershed_sized
from model_export.evaluate import baseline_segmenter


def _image(shape: tuple[int, int], discs: list[tuple[int, int, int]], speck: tuple[int, int] | None = None):
    """Bright discs (x, y, r) on a dark, slightly noisy field: ``(H, W)`` uint8."""
    rng = np.random.default_rng(0)
    image = rng.integers(5, 20, shape).astype(np.uint8)
    for x, y, r in discs:
        cv2.circle(image, (x, y), r, 200, -1)
    if speck is not None:
        image[speck[1] : speck[1] + 3, speck[0] : speck[0] + 3] = 200
    return image


def test_two_touching_discs_become_two_objects_of_about_their_area() -> None:
    image = _image((80, 100), [(35, 40, 12), (57, 40, 12)])  # centres 22 px apart, radius 12: touching
    labels = otsu_watershed(image)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert labels.max() == 2
    areas = np.bincount(labels.ravel())[1:]
    assert np.all(np.abs(areas - np.pi * 12**2) < 0.2 * np.pi * 12**2)
    # Each disc's centre lies in a different object.
    assert labels[40, 35] != labels[40, 57] and labels[40, 35] > 0 and labels[40, 57] > 0


def test_objects_under_min_area_are_dropped_and_labels_stay_consecutive() -> None:
    image = _image((64, 64), [(20, 20, 8), (45, 45, 6)], speck=(50, 8))  # 3×3 speck = 9 px < 15
    labels = otsu_watershed(image)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels[9, 51] == 0


def test_nuclei_at_the_image_border_are_kept() -> None:
    labels = otsu_watershed(_image((64, 64), [(2, 30, 8), (40, 40, 8)]))  # half a disc at the left edge
    assert labels.max() == 2 and labels[30, 1] > 0


def test_rgba_grey_image_as_dsb_stores_it_gives_the_same_labels() -> None:
    grey = _image((64, 80), [(20, 30, 9), (55, 30, 9)])
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    assert np.array_equal(otsu_watershed(rgba), otsu_watershed(grey))


def test_flat_image_has_no_objects() -> None:
    labels = otsu_watershed(np.full((32, 32), 7, np.uint16))
    assert labels.dtype == np.int32 and not labels.any()


def test_evaluate_finds_the_baseline_by_name() -> None:
    assert BASELINES["otsu"] is otsu_watershed


def test_the_sized_baseline_is_the_plain_one_at_dsbs_median_nucleus_size() -> None:
    image = _image((80, 100), [(35, 40, 12), (57, 40, 12)], speck=(80, 10))
    assert np.array_equal(otsu_watershed_sized(image, REFERENCE_DIAMETER), otsu_watershed(image))


def test_the_sized_baseline_spaces_seeds_and_drops_specks_by_the_nuclei_told() -> None:
    """Told nuclei 3× DSB's median, it keeps seeds 15 px apart (two small touching discs are one
    object, as pieces of one large nucleus would be) and drops objects under 9 × 15 px."""
    discs = _image((64, 96), [(20, 30, 5), (30, 30, 5)])  # centres 10 px apart, radius 5: touching
    assert otsu_watershed(discs).max() == 2
    assert otsu_watershed_sized(discs, 3 * REFERENCE_DIAMETER).max() == 1
    speck = _image((64, 64), [(20, 20, 12)], speck=(50, 8))
    speck[8:15, 50:57] = 200  # 7×7 = 49 px: kept at the plain minimum (15), dropped at 135
    assert otsu_watershed(speck).max() == 2
    assert otsu_watershed_sized(speck, 3 * REFERENCE_DIAMETER).max() == 1


def test_evaluate_tells_the_sized_baseline_the_diameter_and_nobody_else() -> None:
    image = _image((64, 96), [(20, 30, 5), (30, 30, 5)])
    assert baseline_segmenter("otsu-sized", 3 * REFERENCE_DIAMETER)(image).labels.max() == 1
    assert baseline_segmenter("otsu", 3 * REFERENCE_DIAMETER)(image).labels.max() == 2
    with pytest.raises(ValueError, match="diameter"):
        baseline_segmenter("otsu-sized")
