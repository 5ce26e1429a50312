"""``stack_files.StackFiles`` and ``zstack.at_one_diameter``: a stack's slices in, linked 3-D labels
and a table out as files; the middle slice first, every slice at its diameter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.segmentation import expand_labels

from service import stack_files, zstack
from service.segment import Cancelled


def two_nuclei(depth: int = 5) -> np.ndarray:
    """Per-slice labels as a 2-D segmentation gives them: two discs through every slice, their
    labels swapped on odd slices (what links them is overlap, not the number)."""
    yy, xx = np.indices((40, 60))
    left = (yy - 20) ** 2 + (xx - 15) ** 2 < 64
    right = (yy - 20) ** 2 + (xx - 45) ** 2 < 64
    slices = np.zeros((depth, 40, 60), dtype=np.int32)
    for z in range(depth):
        slices[z][left], slices[z][right] = (1, 2) if z % 2 == 0 else (2, 1)
    return slices


def test_the_stack_is_linked_and_written_as_a_calibrated_label_hyperstack_and_a_table(tmp_path: Path) -> None:
    slices = two_nuclei()
    files = stack_files.StackFiles(tmp_path, slices.shape)
    for labels in slices:
        files.add(labels, np.full(labels.shape, 10.0))
    summary = files.finish(zstack.VoxelSize(0.5, 0.5, 2.0))
    assert (summary.depth, summary.height, summary.width, summary.objects) == (5, 40, 60, 2)
    assert summary.reaching_ends == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels3d.tif", "objects3d.csv"]  # no scratch
    with tifffile.TiffFile(tmp_path / "labels3d.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == 2.0
        written = tif.asarray()
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, np.stack(list(zstack.stitch(slices))))
    assert set(np.unique(written[:, 20, 15])) == {1} and set(np.unique(written[:, 20, 45])) == {2}
    rows = list(csv.DictReader((tmp_path / "objects3d.csv").open()))
    assert [r["slices"] for r in rows] == ["5", "5"] and rows[0]["mean_intensity"] == "10.0"
    assert float(rows[0]["volume_um3"]) == pytest.approx(int(rows[0]["volume_voxels"]) * 0.5 * 0.5 * 2.0)


def test_slices_too_many_too_few_or_of_another_size_are_refused_and_discard_leaves_nothing(
    tmp_path: Path,
) -> None:
    slices = two_nuclei(3)
    files = stack_files.StackFiles(tmp_path, slices.shape)
    files.add(slices[0])
    with pytest.raises(ValueError, match="is \\(40, 59\\)"):
        files.add(slices[1][:, :59])
    with pytest.raises(ValueError, match="1 of the stack's 3 slices"):
        files.finish(None)
    files.add(slices[1])
    files.add(slices[2])
    with pytest.raises(ValueError, match="a slice more"):
        files.add(slices[2])
    files.discard()
    assert list(tmp_path.iterdir()) == []


def test_cells_are_grown_in_3d_from_the_stitched_stack_and_a_stop_leaves_no_file(tmp_path: Path) -> None:
    slices = two_nuclei()
    marker = np.arange(slices.size, dtype=np.float32).reshape(slices.shape)
    done, stopped = tmp_path / "done", tmp_path / "stopped"
    for folder in (stopped, done):
        folder.mkdir()
        files = stack_files.StackFiles(folder, slices.shape, channel_keys=["m"], expand=4)
        for z, labels in enumerate(slices):
            files.add(labels, None, [marker[z]])
        assert sorted(p.name for p in folder.iterdir()) == [".channel0.scratch.npy", ".labels3d.scratch.npy"]
        if folder is stopped:
            with pytest.raises(Cancelled, match="growing the cells, at slice 0 of 5"):
                files.finish(None, should_stop=lambda: True)
            files.discard()
            assert list(folder.iterdir()) == []
        else:
            files.finish(zstack.VoxelSize(0.5, 0.5, 2.0))
    assert sorted(p.name for p in done.iterdir()) == ["cells3d.tif", "labels3d.tif", "objects3d.csv"]
    nuclei = tifffile.imread(done / "labels3d.tif")
    cells = tifffile.imread(done / "cells3d.tif")
    np.testing.assert_array_equal(cells, expand_labels(nuclei, distance=4, spacing=(4.0, 1.0, 1.0)))
    rows = list(csv.DictReader((done / "objects3d.csv").open()))
    for row in rows:
        cytoplasm = (cells == int(row["id"])) & (nuclei == 0)
        assert int(row["cytoplasm_volume_voxels"]) == cytoplasm.sum() > 0
        assert float(row["mean_intensity_cytoplasm_m"]) == pytest.approx(marker[cytoplasm].mean(), rel=1e-6)


def test_the_middle_slice_is_segmented_first_and_sets_every_slices_diameter() -> None:
    calls: list[tuple[int, float | None]] = []

    def segment(estimate: float | None):
        def run(z: int, diameter: float | None) -> tuple[int, float | None]:
            calls.append((z, diameter))
            return z, estimate if diameter is None else diameter
        return run

    order = list(zstack.at_one_diameter(5, segment(17.26), None, lambda s: s[1], 20.0))
    assert [z for z, _ in order] == [0, 1, 2, 3, 4]
    assert calls == [(2, None), (0, 17.3), (1, 17.3), (3, 17.3), (4, 17.3)]
    calls.clear()
    list(zstack.at_one_diameter(3, segment(None), None, lambda s: s[1], 20.0))  # no estimate: the model's
    assert calls == [(1, None), (0, 20.0), (2, 20.0)]
    calls.clear()
    list(zstack.at_one_diameter(2, segment(17.26), 12.0, lambda s: s[1], 20.0))  # given: used as given
    assert calls == [(1, 12.0), (0, 12.0)]
