"""Resizing to the model's nucleus scale and back (service.rescale): pure numpy/OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.rescale import (
    axis_taps,
    factor_for,
    first_pixels,
    renumber,
    resample_axis,
    resample_image,
    resize_image,
    resize_labels,
    resize_maps,
    round_to,
    scaled_shape,
)


def disks(shape: tuple[int, int], radius: int, spacing: int) -> np.ndarray:
    """int32 labels: a grid of disks numbered in raster order."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, np.int32)
    k = 0
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def test_factor_brings_the_diameter_to_the_model_and_skips_small_changes() -> None:
    assert factor_for(40.0, 20.0) == pytest.approx(0.5)
    assert factor_for(5.0, 20.0) == pytest.approx(4.0)
    assert factor_for(21.0, 20.0) == 1.0  # within 10 %: not worth an interpolation
    with pytest.raises(ValueError):
        factor_for(0.0, 20.0)


@pytest.mark.parametrize("factor", [0.25, 0.5, 2.0, 3.3])
def test_label_round_trip_keeps_ids_and_image_size(factor: float) -> None:
    labels = disks((203, 317), radius=9 if factor < 1 else 5, spacing=40 if factor < 1 else 20)
    down = resize_labels(labels, scaled_shape(labels.shape, factor))
    back = resize_labels(down, labels.shape)
    assert back.shape == labels.shape
    assert set(np.unique(back)) == set(np.unique(labels))  # every object survives, no new ids
    # Each object comes back where it was (most of its pixels agree).
    agree = (back == labels)[labels > 0].mean()
    assert agree > 0.8


def test_renumber_gives_raster_order_without_gaps() -> None:
    labels = np.array([[0, 7, 7], [3, 0, 9], [3, 0, 0]], np.int32)
    assert renumber(labels).tolist() == [[0, 1, 1], [2, 0, 3], [2, 0, 0]]


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 1), (40, 37), (7, 300)])
@pytest.mark.parametrize("background", [True, False])
def test_first_pixels_answers_what_a_sort_of_every_pixel_does(
    shape: tuple[int, int], background: bool
) -> None:
    # overlapping random boxes of shuffled ids: runs that break mid-row and ids that come back
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    labels = np.zeros(shape, np.int32) if background else np.full(shape, 5, np.int32)
    for k in rng.permutation(60) + 1:
        if labels.size == 0:
            break
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[y : y + rng.integers(1, 9), x : x + rng.integers(1, 30)] = k
    ids, first = first_pixels(labels)
    expected_ids, expected_first = np.unique(labels.reshape(-1), return_index=True)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(first, expected_first)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_resize_image_keeps_dtype_and_channels(dtype: type) -> None:
    image = (np.arange(60 * 80 * 3).reshape(60, 80, 3) % 200).astype(dtype)
    assert resize_image(image, 0.5).shape == (30, 40, 3)
    assert resize_image(image, 0.5).dtype == dtype
    assert resize_image(image[:, :, 0], 2.0).shape == (120, 160)
    assert resize_image(image, 1.0) is image


def test_resize_maps_back_to_the_input_grid_is_smooth() -> None:
    ramp = np.linspace(0, 1, 50, dtype=np.float32)[None, None, :].repeat(40, axis=1)
    up = resize_maps(ramp, (80, 100))
    assert up.shape == (1, 80, 100) and up.dtype == np.float32
    assert np.all(np.diff(up[0, 10]) >= -1e-6)  # still a ramp: interpolated, not blocky jumps
    assert up.min() >= 0 and up.max() <= 1


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(203, 101), (203, 406), (157, 120), (61, 47), (10, 33), (1, 5), (5, 1)]
)
def test_resample_axis_matches_opencv_on_float_images(n_in: int, n_out: int) -> None:
    """The global taps reproduce cv2.resize's INTER_AREA (shrink) / INTER_LINEAR (enlarge) mapping:
    on [0, 1] data the two differ by float rounding only."""
    image = np.random.default_rng(n_in * n_out).random((n_in, 37)).astype(np.float32)
    ours = resample_axis(image, axis_taps(n_in, n_out), 0)
    interpolation = cv2.INTER_AREA if n_out < n_in else cv2.INTER_LINEAR
    theirs = cv2.resize(image, (37, n_out), interpolation=interpolation)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=3e-7)


@pytest.mark.parametrize(("n_in", "n_out"), [(203, 101), (203, 406), (157, 120), (64, 64)])
def test_a_window_of_rows_resamples_to_exactly_the_whole_image_rows(n_in: int, n_out: int) -> None:
    image = np.random.default_rng(n_out).random((n_in, 50)).astype(np.float32)
    taps = axis_taps(n_in, n_out)
    whole = resample_axis(image, taps, 0)
    for start, stop in [(0, 1), (0, 17), (5, 33), (n_out - 9, n_out), (n_out // 2, n_out // 2 + 1)]:
        lo, hi = taps.span(start, stop)
        window = resample_axis(image[lo:hi], taps, 0, start, stop, offset=lo)
        np.testing.assert_array_equal(window, whole[start:stop])
    with pytest.raises(ValueError, match="does not hold"):
        resample_axis(image[1:10], taps, 0, 0, 5, offset=1)


def test_resampled_integers_are_rounded_and_clipped_to_their_type() -> None:
    values = np.array([-3.2, 0.5, 1.5, 2.49, 65535.7, 70000.0], np.float32)
    np.testing.assert_array_equal(round_to(values.copy(), np.uint16), [0, 0, 2, 2, 65535, 65535])
    assert round_to(values.copy(), np.float32).dtype == np.float32
    image = np.arange(48, dtype=np.uint16).reshape(6, 8)
    resized = resample_image(image, (3, 4))
    assert resized.dtype == np.uint16 and resized.shape == (3, 4)
    assert resample_image(image, (6, 8)) is image
