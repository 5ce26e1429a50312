"""3-D nuclei from 2-D slices: linking by IoU, per-nucleus sums, the label stack file (service.zstack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from service import zstack


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def labelled(shape: tuple[int, int], *discs: tuple[int, float, float, float]) -> np.ndarray:
    """A slice holding discs ``(label, cy, cx, r)``."""
    out = np.zeros(shape, dtype=np.int32)
    for label, cy, cx, r in discs:
        out[disc(shape, cy, cx, r)] = label
    return out


SHAPE = (64, 64)


def test_a_nucleus_crossing_slices_keeps_one_id_and_a_new_one_starts_fresh() -> None:
    first = labelled(SHAPE, (1, 20, 20, 8))
    second = labelled(SHAPE, (9, 21, 21, 8), (4, 50, 50, 5))  # 9 continues 1; 4 is new
    stitched = list(zstack.stitch([first, second]))
    assert np.array_equal(stitched[0], (first > 0) * 1)
    assert set(np.unique(stitched[1][second == 9])) == {1}
    assert set(np.unique(stitched[1][second == 4])) == {2}


def test_a_link_needs_the_iou() -> None:
    first = labelled(SHAPE, (1, 20, 20, 8))
    moved = labelled(SHAPE, (1, 20, 31, 8))  # shifted by 11 px: IoU about 0.13
    inter = (disc(SHAPE, 20, 20, 8) & disc(SHAPE, 20, 31, 8)).sum()
    iou = inter / ((disc(SHAPE, 20, 20, 8) | disc(SHAPE, 20, 31, 8)).sum())
    assert 0.1 < iou < 0.25
    assert list(zstack.stitch([first, moved], min_iou=0.25))[1].max() == 2  # a new nucleus
    assert list(zstack.stitch([first, moved], min_iou=0.1))[1].max() == 1  # the same one


def test_links_are_one_to_one_and_the_better_overlap_wins() -> None:
    """Two objects of a slice both overlapping one of the slice before: the one with the higher IoU
    continues it, the other is a new nucleus, never two objects of one slice with one id."""
    first = labelled(SHAPE, (1, 30, 30, 10))
    second = labelled(SHAPE, (1, 30, 24, 6), (2, 30, 37, 8))  # the right one overlaps more
    _, right = zstack.stitch([first, second])
    assert set(np.unique(right[second == 2])) == {1}
    assert set(np.unique(right[second == 1])) == {2}


def test_equal_overlaps_go_to_the_lower_label_then_the_lower_previous_id() -> None:
    """Ties in IoU are broken by this slice's lower label, then by the lower id of the slice before:
    mirror-image overlaps (the same IoU to the last bit) give the same stack on every run."""
    before = labelled(SHAPE, (1, 30, 32, 8))
    twins = labelled(SHAPE, (7, 30, 24, 7), (3, 30, 40, 7))  # mirror images about the nucleus before
    id_map, _ = zstack.link_slice(before, twins, next_id=2, min_iou=0.1)
    assert (id_map[3], id_map[7]) == (1, 2)  # label 3 continues 1; 7 is new
    two_before = labelled(SHAPE, (5, 30, 24, 7), (4, 30, 40, 7))
    middle = labelled(SHAPE, (1, 30, 32, 8))  # between them
    id_map, _ = zstack.link_slice(two_before, middle, next_id=6, min_iou=0.1)
    assert id_map[1] == 4


def test_the_nuclei_do_not_depend_on_the_slices_label_order() -> None:
    """The same voxels make each nucleus whatever ids the slices came with (the ids themselves
    follow the first slice's label order)."""
    rng = np.random.default_rng(0)
    slices = [labelled(SHAPE, (1, 15, 15, 6), (2, 40, 40, 7), (3, 15, 45, 5)) for _ in range(3)]
    permuted = []
    for s in slices:
        perm = np.concatenate([[0], rng.permutation(3) + 10])
        permuted.append(perm[s])
    a = np.stack(list(zstack.stitch(slices)))
    b = np.stack(list(zstack.stitch(permuted)))
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert pairs.shape[1] == 3 == len(set(pairs[0])) == len(set(pairs[1]))  # one nucleus ↔ one nucleus
    assert np.array_equal(a > 0, b > 0) and a.max() == 3


def test_link_slice_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="min_iou"):
        zstack.link_slice(None, np.zeros(SHAPE, np.int32), 1, min_iou=0)
    with pytest.raises(ValueError, match="differ in size"):
        zstack.link_slice(np.zeros((4, 4), np.int32), np.zeros((5, 5), np.int32), 1)
    id_map, next_id = zstack.link_slice(None, np.zeros(SHAPE, np.int32), 7)
    assert next_id == 7 and id_map.tolist() == [0]


def test_table_sums_each_nucleus_over_its_slices() -> None:
    a = labelled(SHAPE, (1, 20, 20, 5))
    b = labelled(SHAPE, (1, 20, 20, 8), (2, 50, 50, 3))
    c = labelled(SHAPE, (1, 21, 21, 5))
    table = zstack.StackTable()
    stitched = list(zstack.stitch([a, b, c, np.zeros(SHAPE, np.int32)]))
    for z, s in enumerate(stitched):
        table.add(z, s, np.full(SHAPE, 10.0))
    rows = {row["id"]: row for row in table.rows(zstack.VoxelSize(0.5, 0.5, 2.0))}
    first = rows[1]
    voxels = int(sum((s == 1).sum() for s in stitched))
    assert first["volume_voxels"] == voxels
    assert (first["z_first"], first["z_last"], first["slices"]) == (0, 2, 3)
    assert first["max_area_px"] == int((b > 0).sum() - (b == 2).sum())
    assert first["touches_stack_end"] == 1  # it starts in the first slice
    assert first["volume_um3"] == pytest.approx(voxels * 0.5 * 0.5 * 2.0)
    assert first["mean_intensity"] == 10.0 and first["integrated_intensity"] == 10.0 * voxels
    z_mean = sum(z * (s == 1).sum() for z, s in enumerate(stitched)) / voxels
    assert first["centroid_z"] == pytest.approx(z_mean, abs=0.01)
    assert first["centroid_z_um"] == pytest.approx(z_mean * 2.0, abs=0.02)
    assert rows[2]["slices"] == 1 and rows[2]["touches_stack_end"] == 0  # only in slice 1 of 0..3
    # Without a z-step: µm centroids in x/y, no volume in µm³; without a size: pixels only.
    no_z = table.rows(zstack.VoxelSize(0.5, 0.5, None))[0]
    assert "centroid_x_um" in no_z and "volume_um3" not in no_z
    assert "centroid_x_um" not in table.rows()[0]


def test_csv_has_a_header_even_without_nuclei() -> None:
    text = zstack.rows_to_csv([])
    assert text.startswith("id,volume_voxels,") and text.count("\n") == 1


def test_label_stack_file_is_an_imagej_hyperstack_fiji_reads(tmp_path: Path) -> None:
    slices = list(zstack.stitch([labelled(SHAPE, (1, 20, 20, 6)), labelled(SHAPE, (3, 21, 20, 6))]))
    path = tmp_path / "x.labels3d.tif"
    voxel = zstack.VoxelSize(0.25, 0.25, 1.5)
    zstack.write_labels_tiff(str(path), lambda: iter(slices), (2, *SHAPE), 1, voxel)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.imagej_metadata["spacing"] == 1.5 and tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].resolution == (4.0, 4.0)
        assert np.array_equal(tif.asarray(), np.stack(slices))
        assert tif.pages[0].dtype == np.uint16


def test_label_type_holds_every_id() -> None:
    assert zstack.label_dtype(65535) == np.uint16
    assert zstack.label_dtype(65536) == np.float32  # ImageJ has no 32-bit integer images
    assert float(np.float32(2**24)) == 2**24
    with pytest.raises(ValueError, match="2\\*\\*24"):
        zstack.label_dtype(2**24 + 1)


def test_measured_channels_are_summed_over_each_nucleus_voxels_across_slices() -> None:
    labels = np.zeros((3, 8, 8), np.int32)
    labels[0, 1:4, 1:4] = labels[1, 1:4, 1:5] = 1  # one nucleus in two slices
    labels[2, 5:7, 5:7] = 1  # another, alone in the last slice
    marker = np.arange(3 * 64, dtype=np.float32).reshape(3, 8, 8)
    linker = zstack.Linker(channel_keys=["GFP"])
    stitched = np.stack([linker.add(labels[z], None, [marker[z]])[1] for z in range(3)])
    rows = linker.table.rows()
    assert len(rows) == 2
    for row in rows:
        inside = stitched == row["id"]
        assert row["mean_intensity_GFP"] == pytest.approx(marker[inside].mean(), abs=1e-3)
        assert row["integrated_intensity_GFP"] == pytest.approx(marker[inside].sum())
    with pytest.raises(ValueError, match="measured channels"):
        zstack.Linker(channel_keys=["GFP"]).add(labels[0])
