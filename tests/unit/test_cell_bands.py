"""Cells grown band by band (service/cell_bands.py) are the cells ``objects.expand_cells`` grows on
the whole label image, and background rings the rings ``background.ring_labels`` gives it, whatever
the bands' heights, the column blocks and the distances."""

from __future__ import annotations

import numpy as np
import pytest

from service.background import RING_GAP_PX, ring_labels
from service.cell_bands import CellBands
from service.objects import expand_cells
from tests.objects.test_object_stream import _bands, _nuclei_labels


def _grown_by_bands(labels: np.ndarray, distance: float, cuts, column_block: int) -> tuple[list, int]:
    """Every band handed on, in order, and the most label rows held at once."""
    held = CellBands(distance, column_block=column_block)
    out, most = [], 0
    for y0, y1 in cuts:
        out += held.push(y0, labels[y0:y1], (y0, y1))
        most = max(most, held.held_rows)
    out += held.finish()
    return out, most


@pytest.mark.parametrize(("distance", "column_block"), [(0.5, 64), (3, 50), (7.5, 2048), (40, 37), (130, 90)])
def test_bands_give_the_cells_of_the_whole_image(distance: float, column_block: int) -> None:
    labels, _, _ = _nuclei_labels(420, 333, seed=6)
    whole = expand_cells(labels, distance)
    cuts = _bands(labels.shape[0], seed=int(distance * 2))
    out, most = _grown_by_bands(labels, distance, cuts, column_block)

    # each band comes back once, in order, with what was given with it and its own labels
    assert [band.payload for band in out] == cuts
    np.testing.assert_array_equal(np.concatenate([band.labels for band in out]), labels)
    np.testing.assert_array_equal(np.concatenate([band.cells for band in out]), whole)
    assert (whole != labels).any() == (distance >= 1)  # cells grew (half a pixel reaches no pixel)
    # held: the margin above, the band waiting and the rows below it (a band is at most 89 rows)
    assert most <= 2 * int(distance) + 2 * 89


def test_equidistant_neighbours_split_a_gap_as_on_the_whole_image() -> None:
    """Ties (a background pixel as far from two nuclei) go where the whole image sends them, also
    when a band boundary or a column block's edge runs through the gap."""
    labels = np.zeros((60, 90), np.int32)
    labels[20:24, 10:14] = 1
    labels[20:24, 31:35] = 2  # column 22 is 9 px from both
    labels[41:45, 10:14] = 3  # below 1: row 32 is 9 px from both
    whole = expand_cells(labels, 12)
    assert whole[21, 22] in (1, 2) and whole[32, 11] in (1, 3)
    for cuts in ([(0, 32), (32, 33), (33, 60)], [(y, y + 1) for y in range(60)]):
        out, _ = _grown_by_bands(labels, 12, cuts, column_block=22)
        np.testing.assert_array_equal(np.concatenate([band.cells for band in out]), whole)


def test_a_band_waits_for_the_rows_that_decide_its_cells_and_no_longer() -> None:
    labels = np.zeros((100, 10), np.int32)
    held = CellBands(distance=10)
    assert list(held.push(0, labels[:8], "a")) == []  # rows 8..17 decide row 7's cell
    assert list(held.push(8, labels[8:17], "b")) == []
    ready = list(held.push(17, labels[17:18], "c"))
    assert [band.payload for band in ready] == ["a"]
    assert [band.payload for band in held.finish()] == ["b", "c"]


def test_bands_out_of_order_or_of_another_width_and_no_distance_are_refused() -> None:
    held = CellBands(distance=5)
    list(held.push(0, np.zeros((4, 8), np.int32), None))
    with pytest.raises(ValueError, match="in order"):
        list(held.push(5, np.zeros((4, 8), np.int32), None))
    with pytest.raises(ValueError, match="wide"):
        list(held.push(4, np.zeros((4, 9), np.int32), None))
    with pytest.raises(ValueError, match="positive"):
        CellBands(distance=0)
    with pytest.raises(ValueError, match="neither"):
        CellBands(distance=None)
    with pytest.raises(ValueError, match="positive"):
        CellBands(distance=None, ring_width=0)


@pytest.mark.parametrize(("distance", "ring_width", "column_block"),
                         [(None, 6, 64), (None, 0.5, 2048), (4, 8, 45), (None, 60, 70), (30, 45, 2048)])
def test_bands_give_the_background_rings_of_the_whole_image(
    distance: float | None, ring_width: float, column_block: int
) -> None:
    """``background_ring=`` band by band: the rings (beyond the cells, with cells) are
    ``background.ring_labels`` of the whole image, wherever the bands and column blocks are cut."""
    labels, _, _ = _nuclei_labels(420, 333, seed=7)
    whole = ring_labels(labels, ring_width, distance or 0.0)
    cuts = _bands(labels.shape[0], seed=int(ring_width * 2))
    held = CellBands(distance, column_block=column_block, ring_width=ring_width)
    out, most = [], 0
    for y0, y1 in cuts:
        out += held.push(y0, labels[y0:y1], (y0, y1))
        most = max(most, held.held_rows)
    out += held.finish()
    assert [band.payload for band in out] == cuts
    np.testing.assert_array_equal(np.concatenate([band.rings for band in out]), whole)
    assert whole.any()
    if distance is None:
        assert all(band.cells is None for band in out)
    else:
        np.testing.assert_array_equal(np.concatenate([band.cells for band in out]),
                                      expand_cells(labels, distance))
    # held: the rings reach (cells + 2 px gap + width) above and below each band (a band ≤ 89 rows)
    reach = (distance or 0) + RING_GAP_PX + ring_width
    assert most <= 2 * int(reach) + 2 * 89
