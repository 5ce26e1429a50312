"""postprocess: mask, probability quantisation, labels, overlay."""

from __future__ import annotations

import numpy as np
import pytest

from service.postprocess import foreground_probability, labels, mask, overlay, probability_png_array
from tests.models import test_metadata


def test_mask_is_strictly_above_threshold_and_0_or_255():
    prob = np.array([[0.0, 0.5, 0.5001, 1.0]], np.float32)
    np.testing.assert_array_equal(mask(prob, 0.5), [[0, 0, 255, 255]])
    assert mask(prob, 0.5).dtype == np.uint8


def test_foreground_channel_comes_from_metadata():
    probs = np.stack([np.zeros((3, 4)), np.ones((3, 4))]).astype(np.float32)
    md = test_metadata(classes=2, activation="softmax", foreground_channel=1)
    assert foreground_probability(probs, md).min() == 1.0
    with pytest.raises(ValueError):
        foreground_probability(probs[:1], md)


def test_probability_arrays_8_and_16_bit():
    prob = np.array([[0.0, 0.5, 1.0, 1.2, -0.1]], np.float32)
    np.testing.assert_array_equal(probability_png_array(prob, 8), [[0, 128, 255, 255, 0]])
    np.testing.assert_array_equal(probability_png_array(prob, 16), [[0, 32768, 65535, 65535, 0]])
    assert probability_png_array(prob, 16).dtype == np.uint16
    with pytest.raises(ValueError):
        probability_png_array(prob, 12)


def test_labels_are_numbered_in_raster_order_of_first_pixel():
    rng = np.random.default_rng(0)
    for _ in range(5):
        binary = (rng.random((400, 300)) > 0.6).astype(np.uint8) * 255
        lab = labels(binary)
        assert lab.dtype == np.uint16
        values, first = np.unique(lab.ravel(), return_index=True)
        order = values[np.argsort(first)]
        order = order[order > 0]
        np.testing.assert_array_equal(order, np.arange(1, len(order) + 1))


def test_labels_connectivity_and_background():
    binary = np.zeros((5, 5), np.uint8)
    binary[0, 0] = binary[1, 1] = 1  # diagonal neighbours
    binary[4, 4] = 1
    assert labels(binary).max() == 2
    assert labels(binary, connectivity=4).max() == 3
    assert labels(np.zeros((3, 3), np.uint8)).max() == 0


def test_more_than_65535_objects_give_uint32_not_wraparound():
    binary = np.zeros((2 * 200, 2 * 400), np.uint8)
    binary[::2, ::2] = 1  # 80000 isolated pixels
    lab = labels(binary, connectivity=4)
    assert lab.dtype == np.uint32 and lab.max() == 80000


def test_overlay_outlines_objects_in_colour():
    image = np.full((20, 20), 1000, np.uint16)
    binary = np.zeros((20, 20), np.uint8)
    binary[5:15, 5:15] = 255
    out = overlay(image, binary)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    outline = np.all(out == (255, 255, 0), axis=2)
    assert outline[5, 5:15].all() and outline[5:15, 5].all()  # the object's edge
    assert not outline[7:13, 7:13].any() and not outline[:4].any()  # not inside, not outside


def test_overlay_outlines_touching_objects_each_on_its_own():
    lab = np.zeros((12, 20), np.int32)
    lab[2:10, 2:10] = 1
    lab[2:10, 10:18] = 2  # touches object 1 along columns 9 | 10
    image = np.zeros((12, 20), np.uint8)
    binary = (lab > 0).astype(np.uint8) * 255
    merged = overlay(image, binary)
    split = overlay(image, binary, labels=lab)
    yellow = np.array([255, 255, 0], np.uint8)
    seam = [(row, col) for row in range(3, 9) for col in (9, 10)]
    assert not any((merged[r, c] == yellow).all() for r, c in seam)  # one blob: no line between
    assert all((split[r, c] == yellow).all() for r, c in seam)  # per object: the seam is drawn
    assert (split[5, 5] != yellow).any() and (split[5, 14] != yellow).any()  # interiors stay clear
