"""The DSB 2018 layout: reading, sorting out non-fluorescence, series split, and training on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export import dsb
from tests.dsb_layout import write_dsb_folder


def test_reader_builds_instance_labels_and_drops_colour_images(tmp_path: Path) -> None:
    root = write_dsb_folder(tmp_path, n=3)
    samples = dsb.find_samples(tmp_path)  # the parent of stage1_train works too
    assert len(samples) == 4
    image, labels = dsb.read_sample(samples[0])
    assert image.shape[:2] == labels.shape and labels.dtype == np.int32
    assert labels.max() == len(samples[0].masks)  # one label per nucleus file
    items = dsb.load_set(root)
    assert len(items) == 3  # the colour (H&E-like) image is not fluorescence
    assert all(item.modality == "fluorescence" and item.diameter > 5 for item in items)
    assert all(item.series.startswith("96x96/") for item in items)


def test_a_folder_without_masks_is_named_in_the_error(tmp_path: Path) -> None:
    root = write_dsb_folder(tmp_path, n=2, colour=False)
    broken = sorted(root.iterdir())[0]
    for mask in (broken / "masks").iterdir():
        mask.unlink()
    with pytest.raises(dsb.DataError, match=broken.name):
        dsb.find_samples(root)


def test_median_diameter_of_whole_nuclei_leaves_out_those_cut_by_the_edge() -> None:
    yy, xx = np.mgrid[0:120, 0:120]
    labels = np.zeros((120, 120), np.int32)
    for k, (cy, cx) in enumerate([(60, 60), (60, 30), (30, 90), (0, 60), (119, 60), (90, 0)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] = k  # the last three are halves
    whole = float(np.sqrt(4 * (labels == 1).sum() / np.pi))
    assert dsb.median_diameter(labels, whole_only=True) == pytest.approx(whole)
    assert dsb.median_diameter(labels) < whole  # the halves pull the median of all down
    # Only cut ones: fall back to all of them rather than to nothing.
    edge_only = np.where(labels >= 4, labels, 0)
    assert dsb.median_diameter(edge_only, whole_only=True) == dsb.median_diameter(edge_only) > 0


def test_series_split_keeps_each_series_on_one_side() -> None:
    def item(name: str, shape: tuple[int, int], level: float, diameter: float) -> dsb.DsbImage:
        image = np.full(shape, level, np.uint8)
        image[0, 0] = 255
        return dsb.DsbImage(name, image, np.zeros(shape, np.int32), "fluorescence", diameter)

    # Two acquisitions of one size, three crops each, and one of another size.
    items = [item(f"a{i}", (64, 64), 10, 12.0) for i in range(3)]
    items += [item(f"b{i}", (64, 64), 60, 30.0) for i in range(3)]
    items += [item(f"c{i}", (32, 48), 10, 12.0) for i in range(2)]
    dsb.assign_series(items)
    assert len({i.series for i in items}) == 3
    for seed in range(4):
        train, val = dsb.split_by_series(items, val_fraction=0.5, seed=seed)
        assert len(train) + len(val) == len(items)
        for series in {i.series for i in items}:
            sides = {("val" if i in val else "train") for i in items if i.series == series}
            assert len(sides) == 1, f"series {series} split across train and val"
        assert not any(i.id.startswith("c") for i in val)  # a size with one series stays in training


def test_training_a_few_steps_on_a_dsb_folder_records_the_scale(tmp_path: Path) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    root = write_dsb_folder(tmp_path / "data", n=6, seed=10)
    out = tmp_path / "run"
    train.main([*TINY, "--dsb", str(root), "--val-fraction", "0.5", "--diameter", "12", "--out", str(out)])
    checkpoint = __import__("torch").load(out / "best.pt", weights_only=False)
    data = checkpoint["data"]
    assert data["kind"] == "dsb2018" and data["nucleus_diameter_px"] == 12
    assert data["train_images"] + data["val_images"] == 6
    assert json.loads((out / "history.json").read_text())[-1]["step"] == 3


def test_native_scale_synthetic_training_exports_with_its_settings_in_the_metadata(tmp_path: Path) -> None:
    from model_export import train
    from model_export.export import export
    from tests.export.conftest import TINY

    root = write_dsb_folder(tmp_path / "data", n=6, seed=10)
    out = tmp_path / "run"
    train.main([
        *TINY, "--dsb", str(root), "--val-fraction", "0.5", "--diameter", "12",
        "--synthetic", "0.5", "--synthetic-radius", "3,30", "--empty-fields", "0.25",
        "--dim-nuclei", "0.5", "--out", str(out),
    ])
    # the checkpoint's settings survive the trip through the ONNX metadata (JSON)
    report = export(out / "best.pt", tmp_path / "m.onnx", margin_images=1)
    data = report["metadata"]["training"]["data"]
    assert data["synthetic_share"] == 0.5 and data["synthetic_radius_px"] == [3.0, 30.0]
    assert data["empty_field_share"] == 0.25 and data["dim_nuclei_share"] == 0.5


@pytest.mark.parametrize("flag", ["--empty-fields", "--dim-nuclei"])
def test_a_sample_share_outside_zero_to_one_is_refused_by_name(tmp_path: Path, flag: str) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    root = write_dsb_folder(tmp_path / "data", n=6, seed=10)
    with pytest.raises(SystemExit, match=f"{flag} 1.5: expected a share in"):
        train.main([
            *TINY, "--dsb", str(root), "--val-fraction", "0.5", flag, "1.5", "--out", str(tmp_path / "r"),
        ])
    assert not (tmp_path / "r" / "best.pt").exists()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--dim-nuclei", "0.3"), ("--empty-fields", "0.1"), ("--synthetic-radius", "3,30"),
        ("--dim-weight", "4"), ("--contact-weight", "10"),
    ],
)
def test_dsb_mix_options_without_dsb_data_are_refused_not_ignored(
    tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_export import train

    with pytest.raises(SystemExit):
        train.parse_args([flag, value, "--images", str(tmp_path), "--masks", str(tmp_path)])
    assert f"{flag} shapes the --dsb sample mix: it needs --dsb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args([flag, value])  # synthetic-only training
    assert train.parse_args([flag, value, "--dsb", str(tmp_path)]).dsb == tmp_path


def test_light_owner_gives_each_rim_pixel_its_nearest_nucleus_within_reach() -> None:
    labels = np.zeros((9, 20), np.int32)
    labels[4, 2] = 1
    labels[4, 9] = 2
    owner = dsb.light_owner(labels, reach=3)
    assert owner[4, 5] == 1 and owner[4, 6] == 2  # split halfway between the two
    assert owner[4, 12] == 2 and owner[4, 13] == 0  # 3 px reach, not 4
    assert owner[0, 2] == 0 and owner[1, 2] == 1
    np.testing.assert_array_equal(dsb.light_owner(np.zeros((4, 4), np.int32), 3), 0)


def test_the_training_seed_leaves_the_validation_split_and_its_crops_alone(tmp_path: Path) -> None:
    """``--seed`` changes the sample stream only; ``--split-seed`` chooses what is held out, so two
    runs of one recipe that differ in their seed are scored on the same images (their spread)."""
    import torch

    from model_export import train

    root = write_dsb_folder(tmp_path / "data", n=6, seed=10, colour=False)
    items = dsb.load_set(root)
    # The folder has series enough for the split seed to matter (else this test could not fail).
    assert dsb.split_by_series(items, 0.5, 0)[1] != dsb.split_by_series(items, 0.5, 3)[1]

    def held_out(*flags: str) -> tuple[list[str], torch.Tensor]:
        args = train.parse_args(["--dsb", str(root), "--val-fraction", "0.5", "--diameter", "12", *flags])
        _, val_x, _, data = train.dsb_data(args)
        return data["val_ids"], val_x

    ids0, crops0 = held_out("--seed", "0")
    ids1, crops1 = held_out("--seed", "1")
    assert ids0 == ids1 and torch.equal(crops0, crops1)
    moved, _ = held_out("--seed", "0", "--split-seed", "3")
    assert moved != ids0


def test_a_split_seed_without_data_to_split_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from model_export import train

    with pytest.raises(SystemExit):
        train.parse_args(["--split-seed", "3"])  # synthetic-only: its validation follows --seed
    assert "--split-seed chooses the held-out part of --dsb or --images data" in capsys.readouterr().err


def test_tune_fraction_sets_whole_series_aside_apart_from_validation(tmp_path: Path) -> None:
    from model_export import train

    root = write_dsb_folder(tmp_path / "data", n=8, seed=10, colour=False)

    def data_of(*flags: str) -> dict:
        args = train.parse_args(["--dsb", str(root), "--val-fraction", "0.3", "--diameter", "12", *flags])
        return train.dsb_data(args)[3]

    plain, tuned = data_of(), data_of("--tune-fraction", "0.5")
    assert "tune_ids" not in plain  # without the flag the metadata is as before
    assert tuned["val_ids"] == plain["val_ids"]  # validation does not move
    tune, val = set(tuned["tune_ids"]), set(tuned["val_ids"])
    assert tune and not tune & val
    assert tuned["train_images"] == plain["train_images"] - len(tune) == 8 - len(val) - len(tune)
    series = {i.id: i.series for i in dsb.load_set(root)}
    kept = set(series) - tune - val
    assert not {series[i] for i in tune} & {series[i] for i in kept}  # whole series, as validation


@pytest.mark.parametrize("value, shown", [("1", "1.0"), ("-0.1", "-0.1"), ("nan", "nan")])
def test_a_tune_fraction_outside_zero_to_one_is_refused(tmp_path: Path, value: str, shown: str) -> None:
    from model_export import train

    with pytest.raises(SystemExit, match=rf"--tune-fraction {shown}: expected a share in \[0, 1\)"):
        train.parse_args(["--dsb", str(tmp_path), "--tune-fraction", value])


def test_a_tune_fraction_without_dsb_data_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from model_export import train

    with pytest.raises(SystemExit):
        train.parse_args(["--tune-fraction", "0.2"])
    assert "--tune-fraction holds out DSB series: it needs --dsb" in capsys.readouterr().err
