"""Resizing to the model's nucleus scale and back (service.rescale): pure numpy/OpenCV."""

from __future__ import annotations

import numpy as np
import pytest

from service.rescale import factor_for, renumber, resize_image, resize_labels, resize_maps, scaled_shape


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
