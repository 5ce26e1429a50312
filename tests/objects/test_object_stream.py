"""Object measurements gathered band by band (service/object_stream.py) equal ``objects.measure``
on the whole label image, and objects leave the stream as soon as they are finished."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from service import objects
from service.object_stream import FINISHED_AFTER_ROWS, ObjectStream


def _nuclei_labels(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Touching discs of varied size (some taller than a band), their labels, an intensity and a
    probability image."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(height * width // 1500):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        cv2.circle(mask, (x, y), int(rng.integers(3, 22)) if rng.random() < 0.9 else 45, 1, -1)
    labels = objects.label_objects(mask > 0)
    intensity = rng.integers(0, 65535, (height, width)).astype(np.uint16)
    probability = rng.random((height, width)).astype(np.float32)
    return labels, intensity, probability


def _bands(height: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    cuts, y = [], 0
    while y < height:
        step = int(rng.integers(1, 90))
        cuts.append((y, min(height, y + step)))
        y += step
    return cuts


@pytest.mark.parametrize("pixel_size", [None, (0.25, 0.3)])
def test_bands_of_any_height_give_the_rows_measure_gives_on_the_whole_image(pixel_size) -> None:
    labels, intensity, probability = _nuclei_labels(400, 333, seed=1)
    expected = objects.measure(labels, intensity, probability, pixel_size)
    assert len(expected) > 30 and max(r.bbox_height for r in expected) > 90  # taller than any band

    stream = ObjectStream(pixel_size)
    got = []
    for y0, y1 in _bands(labels.shape[0], seed=2):
        got += stream.add(y0, labels[y0:y1], intensity[y0:y1], probability[y0:y1])
    early = len(got)
    got += stream.finish()

    assert 0 < early < len(expected)  # most objects left before the last band, not all at the end
    assert sorted(got, key=lambda r: r.id) == expected
    assert stream.finished == len(expected)


def test_an_object_leaves_once_a_band_passes_it_by_the_margin_and_not_before() -> None:
    labels = np.zeros((300, 20), np.int32)
    labels[10:30, 5:9] = 7
    zeros = np.zeros((1, 20))
    stream = ObjectStream()
    assert stream.add(0, labels[:40], labels[:40], labels[:40].astype(np.float32)) == []
    last_row = 30
    # bands that do not touch it, ending before the margin has passed: still open
    y = 40
    while y < last_row + FINISHED_AFTER_ROWS:
        assert stream.add(y, labels[y : y + 1], zeros, zeros.astype(np.float32)) == []
        y += 1
    (row,) = stream.add(y, labels[y : y + 1], zeros, zeros.astype(np.float32))
    assert (row.id, row.area, row.bbox_y, row.bbox_height) == (7, 80, 10, 20)
    assert stream.finish() == []


def test_bands_out_of_order_or_of_mismatched_shapes_are_refused() -> None:
    stream = ObjectStream()
    band = np.zeros((4, 5), np.int32)
    stream.add(0, band, band, band.astype(np.float32))
    with pytest.raises(ValueError, match="in order"):
        stream.add(5, band, band, band.astype(np.float32))
    with pytest.raises(ValueError, match="differ"):
        stream.add(4, band, band[:3], band.astype(np.float32))


def test_measured_channels_band_by_band_equal_measure_on_the_whole_image() -> None:
    labels, intensity, probability = _nuclei_labels(300, 250, seed=3)
    rng = np.random.default_rng(4)
    marker = rng.integers(0, 4000, labels.shape).astype(np.uint16)
    other = rng.random(labels.shape).astype(np.float32)
    expected = objects.measure(labels, intensity, probability, (0.5, 0.5),
                               channels=[("GFP", marker), ("c2", other)])
    assert len(expected) > 20 and expected[0].extra_values

    stream = ObjectStream((0.5, 0.5), channel_keys=["GFP", "c2"])
    got = []
    for y0, y1 in _bands(labels.shape[0], seed=5):
        bands = [marker[y0:y1], other[y0:y1]]
        got += stream.add(y0, labels[y0:y1], intensity[y0:y1], probability[y0:y1], bands)
    got += stream.finish()
    assert sorted(got, key=lambda r: r.id) == expected
    with pytest.raises(ValueError, match="measured channels"):
        ObjectStream(channel_keys=["GFP"]).add(0, labels[:4], intensity[:4], probability[:4])


@pytest.mark.parametrize(("distance", "pixel_size"), [(6, (0.5, 0.4)), (150, None)])
def test_cells_band_by_band_give_the_cell_columns_of_measure_on_the_whole_image(distance, pixel_size) -> None:
    """With cells from ``CellBands``, the cell and cytoplasm columns (a float channel with NaN pixels
    too) equal ``measure`` with ``cells``; a cell reaching further than :data:`FINISHED_AFTER_ROWS`
    below its nucleus keeps its object open until its last row."""
    from scipy import ndimage

    from service.cell_bands import CellBands

    labels, intensity, probability = _nuclei_labels(360, 280, seed=9)
    labels[labels > 12] = 0  # sparse nuclei: cells reach far
    labels = objects.label_objects(labels > 0)
    rng = np.random.default_rng(10)
    marker = rng.random(labels.shape).astype(np.float32)
    marker[rng.random(labels.shape) < 0.02] = np.nan
    cells = objects.expand_cells(labels, distance)
    expected = objects.measure(labels, intensity, probability, pixel_size, channels=[("GFP", marker)],
                               cells=cells)
    assert len(expected) > 5 and any(r.extra_values[1][1] > 0 for r in expected)

    stream, held, got = ObjectStream(pixel_size, ["GFP"], cell_distance=distance), CellBands(distance), []

    def add(bands) -> None:
        for band in bands:
            y0, y1 = band.y0, band.y0 + band.labels.shape[0]
            got.extend(stream.add(y0, band.labels, intensity[y0:y1], probability[y0:y1], [marker[y0:y1]],
                                  cells=band.cells))

    for y0, y1 in _bands(labels.shape[0], seed=11):
        add(held.push(y0, labels[y0:y1], None))
    add(held.finish())
    got += stream.finish()

    boxes = ndimage.find_objects(cells)
    for row in got:
        box_y, box_x = boxes[row.id - 1]
        assert row.cell_box == (box_x.start, box_y.start, box_x.stop - box_x.start, box_y.stop - box_y.start)
    # how far below its nucleus a cell reaches
    reach = max(boxes[row.id - 1][0].stop - (row.bbox_y + row.bbox_height) for row in got)
    assert (reach > FINISHED_AFTER_ROWS) == (distance > FINISHED_AFTER_ROWS)
    assert sorted((replace(r, cell_box=None) for r in got), key=lambda r: r.id) == expected
    with pytest.raises(ValueError, match="cells"):
        ObjectStream(cell_distance=3).add(0, labels[:4], intensity[:4], probability[:4])


@pytest.mark.parametrize(("distance", "ring_width", "pixel_size"),
                         [(None, 8, None), (6, 10, (0.5, 0.4)), (None, 120, None)])
def test_background_rings_band_by_band_give_the_columns_of_measure_on_the_whole_image(
    distance, ring_width, pixel_size
) -> None:
    """With rings from ``CellBands`` (beyond the cells, with cells), each measured channel's
    background and corrected columns — a float channel with NaN pixels and a uint16 one — equal
    ``measure`` with ``rings`` on the whole image; a ring reaching further than
    :data:`FINISHED_AFTER_ROWS` below its nucleus keeps its object open until its last row."""
    from scipy import ndimage

    from service.background import ring_labels
    from service.cell_bands import CellBands

    labels, intensity, probability = _nuclei_labels(360, 280, seed=12)
    labels[labels > 14] = 0  # sparse nuclei: rings with room, and far to reach
    labels = objects.label_objects(labels > 0)
    rng = np.random.default_rng(13)
    marker = rng.random(labels.shape).astype(np.float32)
    marker[rng.random(labels.shape) < 0.02] = np.nan
    counts = rng.integers(0, 4000, labels.shape).astype(np.uint16)
    channels = [("GFP", marker), ("Cy5", counts)]
    cells = None if distance is None else objects.expand_cells(labels, distance)
    rings = ring_labels(labels, ring_width, distance or 0.0)
    expected = objects.measure(labels, intensity, probability, pixel_size, channels=channels, cells=cells,
                               rings=rings)
    assert len(expected) > 5 and all(dict(r.extra_values)["background_Cy5"] is not None for r in expected)

    stream = ObjectStream(pixel_size, ["GFP", "Cy5"], cell_distance=distance, background=True)
    held, got = CellBands(distance, ring_width=ring_width), []

    def add(bands) -> None:
        for band in bands:
            y0, y1 = band.y0, band.y0 + band.labels.shape[0]
            got.extend(stream.add(y0, band.labels, intensity[y0:y1], probability[y0:y1],
                                  [marker[y0:y1], counts[y0:y1]], cells=band.cells, rings=band.rings))

    for y0, y1 in _bands(labels.shape[0], seed=14):
        add(held.push(y0, labels[y0:y1], None))
    add(held.finish())
    got += stream.finish()

    boxes = ndimage.find_objects(rings)
    reach = max(boxes[row.id - 1][0].stop - (row.bbox_y + row.bbox_height) for row in got)
    assert (reach > FINISHED_AFTER_ROWS) == (ring_width > FINISHED_AFTER_ROWS)
    assert sorted((replace(r, cell_box=None) for r in got), key=lambda r: r.id) == expected
    with pytest.raises(ValueError, match="rings"):
        ObjectStream(background=True).add(0, labels[:4], intensity[:4], probability[:4])
