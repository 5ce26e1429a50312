"""Each nucleus's local background (``background_ring=``): the ring's pixels, its median, and the
corrected columns of the objects table, checked against what they are defined to be."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import ndimage

from service import background, objects
from service.measured_channels import extra_columns


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Each pixel's Euclidean distance to the nearest pixel of ``mask``, by brute force."""
    points = np.argwhere(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    return np.sqrt(((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2).min(axis=-1))


@pytest.mark.parametrize(("width", "inner"), [(4, 0.0), (7.5, 0.0), (5, 6.0)])
def test_the_ring_holds_the_pixels_at_its_distances_from_the_nucleus(width: float, inner: float) -> None:
    labels = disc((64, 64), (30, 33), 8).astype(np.int32) * 3
    rings = background.ring_labels(labels, width, inner)
    d = distance_to(labels > 0)
    start = inner + background.RING_GAP_PX
    expected = (d > start) & (d <= start + width)
    assert np.array_equal(rings > 0, expected)
    assert set(np.unique(rings)) == {0, 3}  # the nucleus's own id
    assert not (rings & labels).any()


def test_each_ring_pixel_goes_to_its_nearest_nucleus_and_rings_never_enter_a_nucleus() -> None:
    labels = np.zeros((60, 90), np.int32)
    labels[disc(labels.shape, (30, 28), 9)] = 1
    labels[disc(labels.shape, (30, 52), 9)] = 2  # 6 px apart: their rings meet between them
    rings = background.ring_labels(labels, 10)
    assert not (rings[labels > 0]).any()
    d1, d2 = distance_to(labels == 1), distance_to(labels == 2)
    ring = rings > 0
    assert (d1[rings == 1] <= d2[rings == 1]).all() and (d2[rings == 2] <= d1[rings == 2]).all()
    assert np.array_equal(ring, (np.minimum(d1, d2) > 2) & (np.minimum(d1, d2) <= 12))


def test_an_image_without_objects_has_no_ring_and_a_width_must_be_positive() -> None:
    assert not background.ring_labels(np.zeros((8, 8), np.int32), 3).any()
    with pytest.raises(ValueError, match="width"):
        background.ring_labels(np.ones((8, 8), np.int32), 0)
    with pytest.raises(ValueError, match="inner"):
        background.ring_labels(np.ones((8, 8), np.int32), 2, inner=-1)


@pytest.mark.parametrize(("dtype", "low", "high"), [
    (np.uint8, 0, 255), (np.uint16, 0, 65535), (np.int16, -32768, 32767), (np.uint32, 0, 2**32 - 1),
    (np.int32, -(2**31), 2**31 - 1), (np.int64, -(2**40), 2**40), (np.float32, -1e6, 1e6), (np.float64, 0, 1),
])
def test_the_median_of_each_ring_over_its_finite_pixels(dtype: type, low: float, high: float) -> None:
    """Every pixel type a plane is read as, its whole range: integers sort in one key with the id
    (``_by_id_then_value``), anything else by rank."""
    rng = np.random.default_rng(4)
    rings = rng.integers(0, 5, (40, 40)).astype(np.int32)
    if np.dtype(dtype).kind == "f":
        values = rng.uniform(low, high, (40, 40)).astype(dtype)
        values[5, :] = np.nan  # left out, as every intensity leaves non-finite pixels out
        values[6, :3] = np.inf
    else:
        values = rng.integers(low, high, (40, 40), endpoint=True, dtype=np.int64).astype(dtype)
        values[0, :4] = [low, high, low, high]  # both ends of the range, in one ring or another
    medians = background.ring_medians(rings, values, 4)
    assert np.isnan(medians[0])
    for i in (1, 2, 3, 4):
        pixels = values[(rings == i) & np.isfinite(values.astype(np.float64))].astype(np.float64)
        assert medians[i] == float(np.median(pixels))


def test_a_ring_too_small_has_no_background() -> None:
    rings = np.zeros((10, 10), np.int32)
    rings[0, : background.MIN_RING_PIXELS] = 1
    rings[1, : background.MIN_RING_PIXELS - 1] = 2
    medians = background.ring_medians(rings, np.arange(100, dtype=np.float32).reshape(10, 10), 3)
    assert medians[1] == pytest.approx(4.5)  # an even count: the mean of the middle two
    assert np.isnan(medians[2]) and np.isnan(medians[3])  # too few; none at all


def flat_scene() -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Labels of three nuclei (one 4 px from the image's edge) and a marker with a known signal on
    each over a background that varies across the image but not around each nucleus."""
    labels = np.zeros((80, 160), np.int32)
    labels[disc(labels.shape, (40, 30), 10)] = 1
    labels[disc(labels.shape, (40, 110), 10)] = 2
    labels[disc(labels.shape, (40, 145), 10)] = 3  # the image's edge 4 px beyond it
    floor = np.where(np.arange(160) < 70, 50.0, 400.0)[None, :].repeat(80, axis=0)
    signal = {1: 120.0, 2: 30.0, 3: 7.0}
    marker = floor.copy()
    for i, value in signal.items():
        marker[labels == i] += value
    return labels, marker.astype(np.float32), signal


def test_corrected_intensities_are_the_objects_signal_above_their_own_background() -> None:
    labels, marker, signal = flat_scene()
    grey = (labels > 0).astype(np.float32)
    rings = background.ring_labels(labels, 6)
    rows = objects.measure(labels, grey, grey, channels=[("GFP", marker)], rings=rings)
    by_id = {row.id: dict(row.extra_values) for row in rows}
    for i, row in by_id.items():
        floor = 50.0 if i == 1 else 400.0
        area = int((labels == i).sum())
        assert row["background_GFP"] == floor
        assert row["mean_intensity_corrected_GFP"] == pytest.approx(signal[i])
        assert row["integrated_intensity_corrected_GFP"] == pytest.approx(signal[i] * area)
        assert row["mean_intensity_GFP"] == pytest.approx(floor + signal[i])  # the raw ones stay
    # the raw means rank nucleus 3 (dim, on a bright background) above nucleus 1; corrected, below
    assert by_id[3]["mean_intensity_GFP"] > by_id[1]["mean_intensity_GFP"]
    assert by_id[3]["mean_intensity_corrected_GFP"] < by_id[1]["mean_intensity_corrected_GFP"]


def test_with_cells_the_ring_lies_beyond_the_cell_and_the_cytoplasm_is_corrected_too() -> None:
    labels, marker, _ = flat_scene()
    labels = labels * (labels == 1)  # one nucleus, room all round
    cells = objects.expand_cells(labels, 5)
    marker = np.where(cells == 1, marker + 40, marker)  # the whole cell 40 over the background
    rings = background.ring_labels(labels, 6, inner=5)
    assert not (rings.astype(bool) & (cells > 0)).any()
    grey = (labels > 0).astype(np.float32)
    (row,) = objects.measure(labels, grey, grey, channels=[("GFP", marker)], cells=cells, rings=rings)
    values = dict(row.extra_values)
    assert values["background_GFP"] == 50.0
    assert values["mean_intensity_cytoplasm_corrected_GFP"] == pytest.approx(40.0)
    cytoplasm = int(((cells == 1) & (labels == 0)).sum())
    assert values["integrated_intensity_cytoplasm_corrected_GFP"] == pytest.approx(40.0 * cytoplasm)
    assert values["mean_intensity_corrected_GFP"] == pytest.approx(160.0)  # the cell's 40 and its own 120
    assert [name for name, _ in row.extra_values] == extra_columns(["GFP"], cells=True, background=True)


def test_a_nucleus_without_room_for_a_ring_gets_empty_cells_not_a_guess() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:35, 5:35] = 1
    labels[ndimage.binary_erosion(labels > 0, iterations=6)] = 2  # 1 is a frame packed round 2
    marker = np.full(labels.shape, 10.0, np.float32)
    grey = (labels > 0).astype(np.float32)
    rows = objects.measure(labels, grey, grey, channels=[("c1", marker)],
                           rings=background.ring_labels(labels, 3))
    inner = dict(next(row for row in rows if row.id == 2).extra_values)
    assert inner["background_c1"] is None and inner["mean_intensity_corrected_c1"] is None
    assert inner["integrated_intensity_corrected_c1"] is None and inner["mean_intensity_c1"] == 10.0
    text = objects.rows_to_csv(rows, channel_keys=["c1"], background=True)
    table = {row["id"]: row for row in csv.DictReader(io.StringIO(text))}
    assert table["2"]["background_c1"] == "" and table["1"]["background_c1"] == "10.0"


def test_the_columns_come_after_each_channels_own() -> None:
    assert extra_columns(["A", "B"], background=True) == [
        "mean_intensity_A", "integrated_intensity_A",
        "background_A", "mean_intensity_corrected_A", "integrated_intensity_corrected_A",
        "mean_intensity_B", "integrated_intensity_B",
        "background_B", "mean_intensity_corrected_B", "integrated_intensity_corrected_B",
    ]
    assert extra_columns(["A"], cells=True, background=True)[2:] == [
        "mean_intensity_A", "integrated_intensity_A",
        "mean_intensity_cytoplasm_A", "integrated_intensity_cytoplasm_A",
        "background_A", "mean_intensity_corrected_A", "integrated_intensity_corrected_A",
        "mean_intensity_cytoplasm_corrected_A", "integrated_intensity_cytoplasm_corrected_A",
    ]
    assert extra_columns(["A"]) == ["mean_intensity_A", "integrated_intensity_A"]  # as before
