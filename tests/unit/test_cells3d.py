"""Cells grown around a stack's 3-D nuclei (``service.cells3d``), slab by slab and block by block:
the cells scikit-image's ``expand_labels`` gives on the whole stack at once, within a bounded
working set; and the per-cell sums, against sums over the whole arrays."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import expand_labels

from service import cells3d
from service.cells3d import CellSums, grow_and_measure, grow_cells, spacing_of, unknown_z_step_notice
from service.segment import Cancelled
from service.zstack import VoxelSize


def random_nuclei(rng: np.random.Generator, shape: tuple[int, int, int], count: int) -> np.ndarray:
    depth, height, width = shape
    labels = np.zeros(shape, np.int32)
    for k in range(1, count + 1):
        z, y, x = rng.integers(0, depth), rng.integers(0, height), rng.integers(0, width)
        labels[z : z + rng.integers(1, 3), y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = k
    return labels


def grown(
    labels: np.ndarray, distance: float, spacing=(1.0, 1.0, 1.0), working_bytes=cells3d.WORKING_BYTES
) -> np.ndarray:
    cells = np.full(labels.shape, -1, np.int32)  # every voxel must be written
    grow_cells(lambda z0, z1: labels[z0:z1], cells, distance, spacing, working_bytes)
    return cells


@pytest.mark.parametrize("seed", range(12))
def test_cells_grown_by_slabs_and_blocks_are_the_whole_stacks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 14)), int(rng.integers(20, 90)), int(rng.integers(20, 90)))
    labels = random_nuclei(rng, shape, int(rng.integers(1, 25)))
    distance = float(rng.choice([0.5, 1, 2.5, 4, 7, 15]))
    spacing = (float(rng.choice([1, 2, 3.3])), float(rng.choice([1, 1.1])), 1.0)
    whole = expand_labels(labels, distance=distance, spacing=spacing)
    for working in (2_500, 25_000, 150_000, 10**9):  # blocks of 32 px and one slice … the stack at once
        np.testing.assert_array_equal(grown(labels, distance, spacing, working), whole,
                                      err_msg=f"working bytes {working}")


def test_ties_across_slab_and_block_edges_go_as_on_the_whole_stack() -> None:
    labels = np.zeros((9, 40, 40), np.int32)
    labels[4, 20, 10], labels[4, 20, 30], labels[0, 0, 20], labels[8, 39, 20] = 1, 2, 3, 4
    labels[4, 5, 5:7] = 5  # a pair of pixels: ties along a diagonal too
    whole = expand_labels(labels, distance=12)
    for working in (2_000, 10_000, 50_000, 10**9):
        np.testing.assert_array_equal(grown(labels, 12, working_bytes=working), whole)


def test_the_growing_never_holds_more_than_its_working_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks: list[int] = []
    slabs: list[int] = []
    real = cells3d.expand_labels

    def recording(block: np.ndarray, **kwargs):
        blocks.append(block.size)
        return real(block, **kwargs)

    monkeypatch.setattr(cells3d, "expand_labels", recording)
    labels = random_nuclei(np.random.default_rng(1), (20, 300, 260), 60)
    spacing, budget = (2.0, 1.0, 1.0), 10_000_000
    chosen = cells3d.plan(labels.shape, 5, spacing, budget)

    def read(z0: int, z1: int) -> np.ndarray:
        slabs.append(z1 - z0)
        return labels[z0:z1]

    cells = np.zeros_like(labels)
    grow_cells(read, cells, 5, spacing, budget)
    np.testing.assert_array_equal(cells, expand_labels(labels, distance=5, spacing=spacing))
    # many blocks, each within the plan, and the plan (what admission is told) within the budget
    assert len(blocks) > 4
    assert max(blocks) <= chosen.block_voxels and max(slabs) <= chosen.slices + 2 * chosen.margins[0]
    assert chosen.held_bytes <= budget
    assert max(blocks) * cells3d.BYTES_PER_WORKING_VOXEL > budget / 3  # the blocks use the budget


@pytest.mark.parametrize("distance", [3, 20, 60])
@pytest.mark.parametrize("shape", [(300, 2048, 2048), (40, 8192, 8192), (100, 4096, 4096), (5, 512, 512)])
def test_a_large_stacks_cells_are_grown_within_the_working_bytes_and_few_times_over(
    shape: tuple[int, int, int], distance: float
) -> None:
    # 2.5 pixel widths a z-step, as on many confocals: blocks within the budget, each voxel grown
    # a few times at most (the margins), and no block under the smallest side.
    chosen = cells3d.plan(shape, distance, (2.5, 1.0, 1.0))
    assert chosen.held_bytes <= cells3d.WORKING_BYTES
    assert chosen.regrown <= (cells3d.MAX_REGROWN if distance > 20 else 3)
    assert chosen.rows >= cells3d.MIN_BLOCK_SIDE and chosen.cols >= cells3d.MIN_BLOCK_SIDE
    cells3d.check_cells(shape, distance, VoxelSize(0.2, 0.2, 0.5))  # so they are not refused


def test_cells_that_reach_too_far_are_refused_naming_the_largest_distance_that_fits() -> None:
    shape = (300, 2048, 2048)
    too_far = r"reach 100 slices up and down \(the file gives no z-step"
    with pytest.raises(cells3d.CellsTooFar, match=too_far) as caught:
        cells3d.check_cells(shape, 100, None)
    largest = int(str(caught.value).split("at most expand=")[1].split()[0])
    cells3d.check_cells(shape, largest, None)  # the distance named fits, and one more does not
    with pytest.raises(cells3d.CellsTooFar):
        cells3d.check_cells(shape, largest + 1, None)
    # A z-step of 10 pixel widths reaches 10 slices: the same distance fits.
    cells3d.check_cells(shape, 100, VoxelSize(0.1, 0.1, 1.0))
    cells3d.check_cells(shape, None, None)  # no cells, nothing to check


def test_a_stop_is_asked_between_blocks_and_leaves_at_once() -> None:
    labels = random_nuclei(np.random.default_rng(2), (6, 80, 80), 10)
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(Cancelled, match="growing the cells"):
        grow_cells(lambda z0, z1: labels[z0:z1], np.zeros_like(labels), 4, working_bytes=20_000,
                   should_stop=should_stop)
    assert len(asked) == 3


def test_the_z_step_sets_how_far_cells_reach_across_slices() -> None:
    labels = np.zeros((11, 21, 21), np.int32)
    labels[5, 10, 10] = 1
    # A z-step of 2.5 pixel widths: 6 px reach two slices up and down, and 6 px sideways.
    voxel = VoxelSize(0.2, 0.2, 0.5)
    cells = grown(labels, 6, spacing_of(voxel))
    slices = np.flatnonzero(cells.any(axis=(1, 2)))
    assert slices.tolist() == [3, 4, 5, 6, 7]
    assert np.flatnonzero(cells[5].any(axis=0)).tolist() == list(range(4, 17))
    assert unknown_z_step_notice(voxel, 6) is None
    # Without a z-step the voxels count as cubes, and the user is told.
    assert spacing_of(VoxelSize(0.2, 0.2, None)) == spacing_of(None) == (1.0, 1.0, 1.0)
    assert np.flatnonzero(grown(labels, 6).any(axis=(1, 2))).tolist() == list(range(11))
    assert "no z-step" in unknown_z_step_notice(None, 6)


def test_cell_sums_are_each_cells_voxels_and_its_cytoplasms_intensity() -> None:
    rng = np.random.default_rng(4)
    nuclei = random_nuclei(rng, (6, 50, 40), 12)
    marker = rng.normal(100, 20, nuclei.shape).astype(np.float32)
    marker[2, :10] = np.nan  # NaN voxels are left out of the cytoplasm's mean and sum
    counts = rng.integers(0, 4000, nuclei.shape).astype(np.uint16)
    voxel = VoxelSize(0.5, 0.5, 1.0)
    cells = np.full(nuclei.shape, -1, np.int32)
    sums = grow_and_measure(lambda z0, z1: nuclei[z0:z1], cells, 3, voxel, ["marker", "counts"],
                            lambda z: [marker[z], counts[z]])
    np.testing.assert_array_equal(cells, expand_labels(nuclei, distance=3, spacing=(2.0, 1.0, 1.0)))
    rows = [{"id": int(i)} for i in np.unique(nuclei) if i]
    sums.extend(rows, voxel)
    for row in rows:
        cell = cells == row["id"]
        cytoplasm = cell & (nuclei == 0)
        assert row["cell_volume_voxels"] == int(cell.sum())
        assert row["cytoplasm_volume_voxels"] == int(cytoplasm.sum())
        assert row["cell_volume_um3"] == pytest.approx(cell.sum() * 0.25, abs=1e-3)
        finite = marker[cytoplasm][np.isfinite(marker[cytoplasm])].astype(np.float64)
        if finite.size:
            assert row["mean_intensity_cytoplasm_marker"] == pytest.approx(finite.mean(), abs=1e-3)
        else:
            assert row["mean_intensity_cytoplasm_marker"] is None
        assert row["integrated_intensity_cytoplasm_marker"] == pytest.approx(finite.sum(), abs=1e-2)
        assert row["integrated_intensity_cytoplasm_counts"] == float(counts[cytoplasm].sum(dtype=np.int64))
    # A nucleus that fills its cell has no cytoplasm: volume 0, and no mean.
    solid = CellSums(["marker"])
    block = np.ones((1, 4, 4), np.int32)
    solid.add(block[0], block[0], [np.ones((4, 4), np.float32)])
    assert dict(solid.columns(1)) == {"cell_volume_voxels": 16, "cytoplasm_volume_voxels": 0,
                                      "mean_intensity_cytoplasm_marker": None,
                                      "integrated_intensity_cytoplasm_marker": 0.0}


def test_slices_counted_in_bands_of_rows_sum_as_whole_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    nuclei = random_nuclei(rng, (4, 37, 29), 9)
    marker = rng.normal(100, 20, nuclei.shape).astype(np.float32)
    voxel = VoxelSize(0.5, 0.5, 1.0)
    counted: list[tuple[int, ...]] = []
    real_add = CellSums.add

    def recording(self: CellSums, nuclei_band: np.ndarray, *args) -> None:
        counted.append(nuclei_band.shape)
        real_add(self, nuclei_band, *args)

    monkeypatch.setattr(CellSums, "add", recording)

    def measured(band_pixels: int) -> list[dict]:
        monkeypatch.setattr(cells3d, "SUM_BAND_PIXELS", band_pixels)
        sums = grow_and_measure(lambda z0, z1: nuclei[z0:z1], np.zeros_like(nuclei), 3, voxel, ["m"],
                                lambda z: [marker[z]])
        rows = [{"id": int(i)} for i in np.unique(nuclei) if i]
        sums.extend(rows, voxel)
        return rows

    whole = measured(10**6)
    assert set(counted) == {(37, 29)}
    counted.clear()
    assert measured(100) == whole  # 3 rows of 29 at a time: 13 bands a slice
    assert len(counted) == 4 * 13 and max(shape[0] for shape in counted) == 3


def test_bad_arguments_are_refused() -> None:
    labels = np.zeros((2, 8, 8), np.int32)
    with pytest.raises(ValueError, match="distance"):
        grown(labels, 0)
    with pytest.raises(ValueError, match="spacing"):
        grown(labels, 2, (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="expected"):
        grow_cells(lambda z0, z1: labels[:1], np.zeros_like(labels), 2)
    with pytest.raises(ValueError, match="must match"):
        CellSums(["a"]).add(labels[0], labels[0], [])
