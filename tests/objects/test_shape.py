"""The shape columns (``objects.ellipse``): the ellipse of each object's second moments, equal to
scikit-image's regionprops, oriented as ImageJ's Fit Ellipse reads the angle, and the same band by
band as on the whole image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.measure import regionprops

from service import objects
from service.object_stream import ObjectStream


def _blobs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((300, 260), np.uint8)
    for _ in range(40):
        center = (int(rng.integers(20, 240)), int(rng.integers(20, 280)))
        axes = (int(rng.integers(3, 18)), int(rng.integers(3, 18)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return objects.label_objects(mask > 0)


def test_axes_and_eccentricity_are_regionprops() -> None:
    labels = _blobs(1)
    rows = objects.measure(labels, np.ones(labels.shape), np.ones(labels.shape))
    props = {p.label: p for p in regionprops(labels)}
    assert len(rows) > 20
    for row in rows:
        p = props[row.id]
        assert row.major_axis_length == pytest.approx(p.axis_major_length, abs=2e-3)
        assert row.minor_axis_length == pytest.approx(p.axis_minor_length, abs=2e-3)
        assert row.eccentricity == pytest.approx(p.eccentricity, abs=2e-4)


@pytest.mark.parametrize("drawn", [0, 30, 60, 90, 120, 150])
def test_orientation_is_counter_clockwise_from_x_as_shown(drawn: float) -> None:
    mask = np.zeros((200, 200), np.uint8)
    # OpenCV turns its angle clockwise on screen (rows grow downwards)
    cv2.ellipse(mask, (100, 100), (60, 20), drawn, 0, 360, 1, -1)
    (row,) = objects.measure(mask.astype(np.int32), np.ones(mask.shape), np.ones(mask.shape))
    assert row.orientation_deg == pytest.approx((180 - drawn) % 180, abs=1.0)
    assert row.major_axis_length == pytest.approx(121, abs=2)
    assert row.minor_axis_length == pytest.approx(41, abs=2)
    assert 0 <= row.orientation_deg < 180


def test_a_round_object_and_a_one_pixel_object() -> None:
    disc = np.zeros((50, 50), np.uint8)
    cv2.circle(disc, (25, 25), 15, 1, -1)
    (round_row,) = objects.measure(disc.astype(np.int32), np.ones(disc.shape), np.ones(disc.shape))
    assert round_row.eccentricity < 0.05 and round_row.major_axis_length == pytest.approx(31, abs=1)
    dot = np.zeros((5, 5), np.int32)
    dot[2, 2] = 1
    (dot_row,) = objects.measure(dot, np.ones(dot.shape), np.ones(dot.shape))
    assert (dot_row.major_axis_length, dot_row.minor_axis_length, dot_row.eccentricity) == (0.0, 0.0, 0.0)


def test_band_by_band_the_same_shape_far_down_a_slide() -> None:
    labels = _blobs(2)
    expected = objects.measure(labels, np.ones(labels.shape), np.ones(labels.shape))
    stream = ObjectStream()
    empty = np.zeros((1000, labels.shape[1]), np.int32)
    offset = 60_000  # rows of a tall slide first: large coordinates, the same ellipses
    for y0 in range(0, offset, len(empty)):
        assert stream.add(y0, empty, empty, empty.astype(np.float32)) == []
    got = []
    for y0 in range(0, labels.shape[0], 13):
        band = labels[y0 : y0 + 13]
        got += stream.add(offset + y0, band, np.ones(band.shape), np.ones(band.shape))
    got = sorted(got + stream.finish(), key=lambda r: r.id)
    assert len(got) == len(expected) > 20
    for want, row in zip(expected, got, strict=True):
        assert (row.major_axis_length, row.minor_axis_length, row.eccentricity, row.orientation_deg) == (
            want.major_axis_length, want.minor_axis_length, want.eccentricity, want.orientation_deg)


def test_objects_reaching_the_image_edge_are_flagged_on_the_whole_image_and_band_by_band() -> None:
    labels = np.zeros((120, 90), np.int32)
    labels[0:6, 30:40] = 1  # top edge
    labels[20:30, 0:5] = 2  # left
    labels[40:50, 40:50] = 3  # inside
    labels[60:70, 85:90] = 4  # right
    labels[112:120, 10:20] = 5  # bottom
    labels[100:111, 60:70] = 6  # one row short of the bottom
    rows = objects.measure(labels, np.ones(labels.shape), np.ones(labels.shape))
    assert {row.id: row.touches_border for row in rows} == {1: 1, 2: 1, 3: 0, 4: 1, 5: 1, 6: 0}
    stream = ObjectStream()
    got = []
    for y0 in range(0, 120, 7):
        band = labels[y0 : y0 + 7]
        got += stream.add(y0, band, np.ones(band.shape), np.ones(band.shape))
    assert sorted(got + stream.finish(), key=lambda r: r.id) == rows
