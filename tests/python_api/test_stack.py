"""``Segmenter.segment_stack``: a z-stack's nuclei in 3-D, on the bundled model and real TIFF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from model_export.object_metrics import score_objects
from model_export.synth_stack import StackConfig, synth_stack
from service.api import Segmenter

CONFIG = StackConfig(depth=16, size=128, nuclei=10)


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    return synth_stack(3, CONFIG)


def write_imagej(path: Path, image: np.ndarray, xy_um: float, z_um: float) -> Path:
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / xy_um, 1 / xy_um),
                     metadata={"axes": "ZYX", "spacing": z_um, "unit": "um"})
    return path


def test_nuclei_are_found_once_each_in_3d_with_volumes_in_um3(
    segmenter: Segmenter, stack: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    image, truth = stack
    result = segmenter.segment_stack(write_imagej(tmp_path / "s.tif", image, 0.5, 1.5))
    assert result.labels.shape == image.shape and result.labels.dtype == np.int32
    scores = score_objects(truth, result.labels)
    true_count = len(np.unique(truth[truth > 0]))
    # Per slice the same nuclei are ~10x as many objects; linked, each is one (3-D IoU >= 0.5).
    assert abs(result.object_count - true_count) <= 2, (result.object_count, true_count)
    assert scores.f1 >= 0.8, scores
    ids = [row["id"] for row in result.objects]
    assert ids == sorted(np.unique(result.labels[result.labels > 0]).tolist())
    assert result.voxel_size is not None and (result.voxel_size.z_um, result.voxel_size.x_um) == (1.5, 0.5)
    row = result.objects[0]
    assert row["volume_um3"] == pytest.approx(row["volume_voxels"] * 0.5 * 0.5 * 1.5, rel=1e-3)
    assert result.diameter_source == "estimated"
    assert result.objects_csv().splitlines()[0].startswith("id,volume_voxels,")


def test_every_slice_is_the_2d_segmentation_at_the_stacks_one_diameter(
    segmenter: Segmenter, stack: tuple[np.ndarray, np.ndarray]
) -> None:
    """Linking only renumbers: each slice holds the objects that slice gives alone at the diameter
    estimated on the middle slice, which is what the middle slice gives with no diameter at all."""
    image, _ = stack
    result = segmenter.segment_stack(image, axes="ZYX")
    middle = segmenter.segment(image, axes="ZYX", z=image.shape[0] // 2, outputs=("labels",))
    assert result.diameter == middle.diameter
    for z in (0, 5, 11):
        at = round(result.diameter, 1)  # the other slices' diameter, to 0.1 px as the client sends it
        alone = segmenter.segment(image, axes="ZYX", z=z, diameter=at, outputs=("labels",))
        assert alone.labels is not None
        stitched = result.labels[z]
        assert np.array_equal(alone.labels > 0, stitched > 0), z
        pairs = np.unique(np.stack([alone.labels[stitched > 0], stitched[stitched > 0]]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1], z  # one object ↔ one id
    assert result.voxel_size is None  # an array has no calibration
    assert "volume_um3" not in result.objects[0] and "mean_intensity" in result.objects[0]


def test_a_2d_image_is_a_stack_of_one_slice(
    segmenter: Segmenter, stack: tuple[np.ndarray, np.ndarray]
) -> None:
    plane = stack[0][8]
    flat = segmenter.segment(plane, outputs=("labels",))
    result = segmenter.segment_stack(plane)
    assert result.labels.shape == (1, *plane.shape)
    assert result.object_count == flat.object_count
    assert all(row["slices"] == 1 for row in result.objects)


def test_options_are_checked(segmenter: Segmenter, stack: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="min_iou"):
        segmenter.segment_stack(stack[0], axes="ZYX", min_iou=0)
    with pytest.raises(ValueError, match="min_iou"):
        segmenter.segment_stack(stack[0], axes="ZYX", min_iou=1.5)
