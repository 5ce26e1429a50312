"""Data: the synthetic generator is deterministic and sane; bad folders fail naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from model_export.data import FolderDataset, SynthConfig, center_target, synth_nuclei, write_synthetic
from model_export.folders import DataError, load_pair, pair_folders, read_mask


def test_generator_is_deterministic_per_seed() -> None:
    a_img, a_lab = synth_nuclei(123, 96)
    b_img, b_lab = synth_nuclei(123, 96)
    c_img, _ = synth_nuclei(124, 96)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_generator_returns_raw_image_and_sequential_instance_labels() -> None:
    dtypes = set()
    for seed in range(12):
        image, labels = synth_nuclei(seed, (80, 112))
        assert image.shape == labels.shape == (80, 112)
        assert image.dtype in (np.uint8, np.uint16) and labels.dtype == np.int32
        dtypes.add(image.dtype)
        ids = np.unique(labels)
        assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))  # 0..N without gaps
        if len(ids) > 1:  # nuclei are brighter than background on average
            assert image[labels > 0].mean() > image[labels == 0].mean()
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_glow_lights_the_background_around_nuclei_but_never_the_labels() -> None:
    # Nothing drawn after the glow changes the labels, and a linear, nearly noise-free camera
    # keeps intensity ratios comparable between the two (the glow shifts later random draws).
    plain = {"flat_padding": 0.0, "field_step": 0.0, "gamma": (1.0, 1.0), "photons": (3000.0, 3000.0)}
    ratios = []
    for seed in range(6):
        glowing, labels = synth_nuclei(seed, 128, SynthConfig(glow=1.0, **plain))
        dark, same_labels = synth_nuclei(seed, 128, SynthConfig(glow=0.0, **plain))
        assert np.array_equal(labels, same_labels)
        inside = labels > 0
        near = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~inside
        images = (glowing.astype(float), dark.astype(float))
        ratios.append([image[near].mean() / image[inside].mean() for image in images])
    # Around the nuclei, relative to them, the background is brighter with the glow.
    assert all(with_glow > without for with_glow, without in ratios)


def test_centre_target_peaks_at_each_nucleus_and_parts_touching_ones() -> None:
    labels = np.zeros((60, 100), np.int32)
    cv2.circle(labels, (30, 30), 14, 1, -1)
    cv2.circle(labels, (55, 30), 14, 2, -1)  # overlaps disc 1: drawn over it, the two touch
    target = center_target(labels)
    assert target.dtype == np.float32 and target.shape == labels.shape
    assert target[labels == 0].max() == 0 and target.min() >= 0 and target.max() == 1
    # Each object peaks at 1 inside itself, and the seam between the two is a valley of zeros.
    assert target[labels == 1].max() == 1 and target[labels == 2].max() == 1
    seam = (labels == 1) & (np.roll(labels, -1, axis=1) == 2)
    assert seam.any() and target[seam].max() == 0
    assert target[30, 28] > 0.8 and target[30, 57] > 0.8 and target[30, 43] < 0.3
    # A binary mask: each blob is its own object (touching ones cannot be told apart).
    binary = center_target(labels > 0)
    assert binary.max() == 1 and binary[30, 43] > 0.5 and binary[labels == 0].max() == 0
    assert not center_target(np.zeros((8, 8), np.int32)).any()


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    _write(tmp_path / "img" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "img" / "b.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "msk" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"b\.png: no mask with stem 'b'"):
        pair_folders(tmp_path / "img", tmp_path / "msk")


def test_orphan_mask_names_the_mask(tmp_path: Path) -> None:
    _write(tmp_path / "img" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "msk" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "msk" / "zz.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"zz\.tif: no image with stem 'zz'"):
        pair_folders(tmp_path / "img", tmp_path / "msk")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"not a png at all")
    _write(tmp_path / "msk" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"img/a\.png: cannot decode"):
        FolderDataset(tmp_path / "img", tmp_path / "msk", patch=8)


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _write(tmp_path / "img" / "a.png", np.zeros((8, 10), np.uint8))
    mask = _write(tmp_path / "msk" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"msk/a\.png: mask is 8×8 but image a\.png is 10×8"):
        load_pair(image, mask)


def test_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match="holds no"):
        pair_folders(tmp_path / "img", tmp_path / "img")
    with pytest.raises(DataError, match="does not exist"):
        pair_folders(tmp_path / "nope", tmp_path / "img")


def test_masks_binary_labels_and_colour_all_give_foreground(tmp_path: Path) -> None:
    labels = np.zeros((6, 6), np.uint16)
    labels[1:3, 1:3], labels[4:, 4:] = 1, 300
    assert set(np.unique(read_mask(_write(tmp_path / "l.png", labels)))) == {0, 1, 300}
    binary = (labels > 0).astype(np.uint8) * 255
    assert np.array_equal(read_mask(_write(tmp_path / "b.png", binary)) > 0, labels > 0)
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[labels > 0] = (0, 0, 255)
    assert np.array_equal(read_mask(_write(tmp_path / "c.png", colour)) > 0, labels > 0)


def test_folder_dataset_reads_16bit_synthetic_set_and_crops(tmp_path: Path) -> None:
    images, masks = write_synthetic(tmp_path, n=3, size=40, seed=5)
    data = FolderDataset(images, masks, patch=32, seed=1)
    x, y = data[0]
    assert tuple(x.shape) == (1, 32, 32) and tuple(y.shape) == (32, 32)
    assert str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int32"
    small = FolderDataset(images, masks, patch=48, seed=1)  # larger than the image: mirror-padded
    assert tuple(small[1][0].shape) == (1, 48, 48)


@pytest.mark.parametrize("radius", [3.0, 40.0])
def test_native_synthetic_samples_come_out_at_the_models_nucleus_scale(radius: float) -> None:
    """Tiny and huge synthetic nuclei are drawn at their own size, then resized to the model's 20 px."""
    from model_export.data import ScaledDataset
    from model_export.dsb import median_diameter

    patch, diameter, jitter = 160, 20.0, (1 / 1.5, 1.5)
    dataset = ScaledDataset(
        [], patch, diameter, jitter, synthetic=1.0, seed=3, samples_per_epoch=6,
        synthetic_radius=(radius, radius),
    )
    sizes = []
    for i in range(6):
        x, labels = dataset[i]
        assert x.shape == (1, patch, patch) and labels.shape == (patch, patch)
        if labels.max() > 0:
            sizes.append(median_diameter(labels.numpy()))
    assert len(sizes) >= 4
    # Drawn at 6 or 80 px across, scaled by the whole drawn image's median diameter to
    # 20 × jitter; one crop holds few nuclei, so its own median scatters around that.
    low, high = diameter * jitter[0] * 0.8, diameter * jitter[1] * 1.2
    assert low <= float(np.median(sizes)) <= high, sizes
    assert all(diameter / 4 <= d <= diameter * 4 for d in sizes), sizes


def test_empty_field_samples_hold_at_most_two_nuclei_and_leave_other_runs_unchanged() -> None:
    from model_export.data import ScaledDataset

    image = np.random.default_rng(0).integers(0, 255, (300, 300)).astype(np.uint8)
    labels = np.zeros((300, 300), np.int32)
    labels[100:140, 100:140] = 1
    items = [(image, labels, 20.0)]
    fields = ScaledDataset(items, 128, 20.0, synthetic=0.0, seed=4, samples_per_epoch=8, empty_fields=1.0)
    counts = [len(np.unique(fields[i][1].numpy())) - 1 for i in range(8)]
    assert max(counts) <= 2 and counts.count(0) >= 2, counts  # 0–2 nuclei each, not the real image's
    # normalised on their own: noise and haze span the range nuclei span elsewhere
    assert all(float(fields[i][0].max()) > 0.5 for i in range(3))
    # a run without them draws exactly the samples it drew before the option existed
    before = ScaledDataset(items, 128, 20.0, synthetic=0.5, seed=4, samples_per_epoch=8)
    after = ScaledDataset(items, 128, 20.0, synthetic=0.5, seed=4, samples_per_epoch=8, empty_fields=0.0)
    for i in range(4):
        assert np.array_equal(before[i][0].numpy(), after[i][0].numpy())


def _square_nuclei(count: int = 16, side: int = 10, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A normalised ``(1, H, W)`` image of ``count`` separate square nuclei (signal 1 on background 0.1)."""
    labels = np.zeros((size, size), np.int32)
    per_row = int(np.ceil(np.sqrt(count)))
    pitch = size // per_row
    for k in range(count):
        y, x = divmod(k, per_row)
        labels[4 + pitch * y : 4 + pitch * y + side, 4 + pitch * x : 4 + pitch * x + side] = k + 1
    image = np.where(labels > 0, 1.0, 0.1).astype(np.float32)[None]
    image = cv2.GaussianBlur(image[0], (0, 0), 1.0)[None]  # a rim outside the labels, as microscopes draw
    return image, labels


def test_dim_some_nuclei_scales_the_signal_of_a_share_of_them_and_leaves_the_rest() -> None:
    from model_export.data import DIM_FACTORS, dim_some_nuclei

    image, labels = _square_nuclei()
    out = dim_some_nuclei(image, labels, np.random.default_rng(3), share=(0.5, 0.5))
    background = 0.1
    kept = {
        i: (out[0][labels == i].mean() - background) / (image[0][labels == i].mean() - background)
        for i in range(1, 17)
    }
    dimmed = [i for i, k in kept.items() if k < 0.99]
    assert len(dimmed) == 8, kept  # half of the 16, each by its own factor within the range
    assert all(DIM_FACTORS[0] - 0.02 <= kept[i] <= DIM_FACTORS[1] + 0.05 for i in dimmed), kept
    assert len({round(kept[i], 3) for i in dimmed}) > 1
    assert all(abs(kept[i] - 1) < 1e-5 for i in kept if i not in dimmed)  # nuclei apart: untouched
    # the rim just outside a dimmed nucleus dims with it; the background far from nuclei does not
    far = cv2.dilate((labels > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    np.testing.assert_allclose(out[0][far], image[0][far], atol=1e-6)
    around_dimmed = cv2.dilate(np.isin(labels, dimmed).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    rim = around_dimmed & (labels == 0)
    assert (out[0][rim] - background).mean() < 0.8 * (image[0][rim] - background).mean()
    # no nuclei: the image comes back as it was
    assert dim_some_nuclei(image, np.zeros_like(labels), np.random.default_rng(0)) is image


def test_dim_some_nuclei_dims_the_blurred_rim_with_its_nucleus_out_to_the_reach() -> None:
    """The outer rim (2–4 px out) of a dimmed nucleus dims by its factor: no bright ring is left."""
    from model_export.data import dim_some_nuclei

    labels = np.zeros((64, 64), np.int32)
    labels[22:42, 22:42] = 1
    background = 0.1
    image = cv2.GaussianBlur(np.where(labels > 0, 1.0, background).astype(np.float32), (0, 0), 2.0)[None]
    out = dim_some_nuclei(image, labels, np.random.default_rng(0), factors=(0.3, 0.3), rim_reach=4)
    distance = ndimage.distance_transform_edt(labels == 0)
    median = float(np.median(image[0][labels == 0]))
    for ring in (1, 2, 3, 4):
        at = (distance > ring - 1) & (distance <= ring)
        np.testing.assert_allclose(out[0][at] - median, 0.3 * (image[0][at] - median), atol=1e-5)
    beyond = distance > 4
    np.testing.assert_array_equal(out[0][beyond], image[0][beyond])


def test_dim_nuclei_samples_change_only_real_samples_and_only_when_asked() -> None:
    from model_export.data import ScaledDataset

    image, labels = _square_nuclei(size=256)
    raw = (image[0] * 200).astype(np.uint8)
    items = [(raw, labels, 11.0)]
    same = {"scale_jitter": (1.0, 1.0), "seed": 5, "samples_per_epoch": 6}
    plain = ScaledDataset(items, 128, 11.0, **same)
    dim = ScaledDataset(items, 128, 11.0, **same, dim_nuclei=1.0)
    off = ScaledDataset(items, 128, 11.0, **same, dim_nuclei=0.0)
    def dim_whole_nuclei(sample: tuple) -> int:
        """Whole nuclei (≥ 60 px) whose signal above background is under 0.75 of the brightest one's."""
        x, lab = sample[0].numpy()[0], sample[1].numpy()
        background = float(np.median(x[lab == 0]))
        ids = [k for k in np.unique(lab[lab > 0]) if (lab == k).sum() >= 60]
        signal = np.array([x[lab == k].mean() - background for k in ids])
        return int((signal < 0.75 * signal.max()).sum()) if len(ids) else 0

    for i in range(6):  # one call per dataset and index: the draws depend on the call count
        a, b, c = plain[i], dim[i], off[i]
        assert np.array_equal(a[0].numpy(), c[0].numpy())  # 0: the sample stream of runs before it
        assert dim_whole_nuclei(a) == 0
        assert dim_whole_nuclei(b) >= 1


def test_synthetic_radius_flag_is_parsed_and_checked() -> None:
    from model_export.train import parse_radius_range

    assert parse_radius_range("") is None
    assert parse_radius_range("2.5,45") == (2.5, 45.0)
    for bad in ("45", "a,b", "10,5", "0,4"):
        with pytest.raises(SystemExit, match="synthetic-radius"):
            parse_radius_range(bad)
