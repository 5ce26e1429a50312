"""``evaluate --dsb``: the DSB 2018 layout scored per series and size, the model next to Otsu."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_export import dsb
from model_export.__main__ import main
from model_export.baselines import otsu_watershed_sized
from model_export.data import SynthConfig, synth_nuclei
from model_export.evaluate import Segmentation, score_dsb, summarise_dsb
from tests.dsb_layout import with_val_ids

#: Clean fluorescence: bright, well-separated, sharp nuclei on an even field (Otsu's home ground).
CLEAN = SynthConfig(
    radius=(6.0, 8.0),
    coverage=(0.05, 0.12),
    photons=(2000.0, 3000.0),
    blur=(0.5, 0.8),
    field_step=0.0,
    flat_padding=0.0,
    glow=0.0,
)

#: (id, height, width, seed): two sizes, so two size groups and at least two series.
SAMPLES = [
    ("aaa0", 64, 64, 11),
    ("aaa1", 64, 64, 12),
    ("aaa2", 64, 64, 13),
    ("bbb0", 80, 96, 21),
    ("bbb1", 80, 96, 22),
]
COLOUR_ID = "ccc0"  # an H&E-like colour image: not fluorescence, so never scored

#: What every per-image row must carry.
ROW_KEYS = {"id", "series", "size", "dice", "f1", "ap", "true_objects", "predicted_objects"}

#: The ``dsb_folder`` fixture: (folder, nuclei per fluorescence id).
Folder = tuple[Path, dict[str, int]]


def _write_sample(root: Path, sample_id: str, image: np.ndarray, labels: np.ndarray) -> int:
    """Write one sample as DSB does: an RGBA PNG and one 0/255 PNG per nucleus; returns the count."""
    (root / sample_id / "images").mkdir(parents=True)
    (root / sample_id / "masks").mkdir()
    cv2.imwrite(str(root / sample_id / "images" / f"{sample_id}.png"), image)
    ids = [k for k in np.unique(labels) if k > 0]
    for k in ids:
        mask = np.where(labels == k, 255, 0).astype(np.uint8)
        cv2.imwrite(str(root / sample_id / "masks" / f"nucleus{k:03d}.png"), mask)
    return len(ids)


@pytest.fixture(scope="module")
def dsb_folder(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """A stage1_train-like folder of synthetic nuclei; returns (folder, nuclei per fluorescence id)."""
    root = tmp_path_factory.mktemp("dsb") / "stage1_train"
    counts = {}
    for sample_id, h, w, seed in SAMPLES:
        image, labels = synth_nuclei(seed, (h, w), CLEAN)
        grey = np.rint(image.astype(np.float64) * 255 / max(int(image.max()), 1)).astype(np.uint8)
        rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])  # DSB: RGBA even when grey
        counts[sample_id] = _write_sample(root, sample_id, rgba, labels)
    rng = np.random.default_rng(0)
    colour = np.dstack([rng.integers(0, 256, (64, 64, 3)), np.full((64, 64), 255)]).astype(np.uint8)
    disc = np.zeros((64, 64), np.int32)
    cv2.circle(disc, (32, 32), 8, 1, -1)
    _write_sample(root, COLOUR_ID, colour, disc)
    return root, counts




def _evaluate(model: str | Path, folder: Path, tmp_path: Path, *extra: str) -> tuple[int, dict | None]:
    out = tmp_path / f"report{len(list(tmp_path.glob('report*.json')))}.json"
    args = ["evaluate", "--model", str(model), "--dsb", str(folder), "--threads", "1", "--json", str(out)]
    code = main([*args, *extra])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_model_and_otsu_are_scored_per_image_series_and_size(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, counts = dsb_folder
    code, report = _evaluate(tiny_export["out"], folder, tmp_path, "--subset", "all", "--baseline", "otsu")
    assert code == 0 and report is not None
    assert report["subset"] == "all" and report["images"] == report["fluorescence_images"] == len(SAMPLES)
    assert set(report["methods"]) == {"model", "otsu"}
    for name, method in report["methods"].items():
        rows = method["images"]
        # Every fluorescence image once; the colour one never.
        assert sorted(r["id"] for r in rows) == sorted(counts), name
        for row in rows:
            assert row.keys() >= ROW_KEYS
            assert row["true_objects"] == counts[row["id"]]  # one mask file = one nucleus
            assert row["series"].startswith(row["size"] + "/")
            assert all(0.0 <= row[k] <= 1.0 for k in ("dice", "f1", "ap", "precision", "recall"))
        assert set(method["by_size"]) == {"64x64", "80x96"}
        assert sum(g["images"] for g in method["by_size"].values()) == len(SAMPLES)
        assert sum(g["images"] for g in method["by_series"].values()) == len(SAMPLES)
        assert method["overall"]["true_objects"] == sum(counts.values())
        # A group's mean is the mean of its images' rows.
        small = [r["f1"] for r in rows if r["size"] == "64x64"]
        assert method["by_size"]["64x64"]["mean_f1"] == pytest.approx(np.mean(small))
        assert method["overall"]["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    # Clean synthetic nuclei are Otsu's home ground.
    assert report["methods"]["otsu"]["overall"]["mean_f1"] > 0.5
    assert report["methods"]["otsu"]["overall"]["mean_dice"] > 0.7
    out = capsys.readouterr().out
    series = list(report["methods"]["otsu"]["by_series"])
    for text in ("model F1", "otsu F1", "otsu Dice", "64x64", "80x96", *series):
        assert text in out


def test_the_sized_baseline_is_told_each_images_own_nucleus_diameter(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path
) -> None:
    folder, _ = dsb_folder
    code, report = _evaluate(
        tiny_export["out"], folder, tmp_path, "--subset", "all", "--baseline", "otsu-sized"
    )
    assert code == 0 and report is not None
    assert set(report["methods"]) == {"model", "otsu-sized"}
    rows = {r["id"]: r for r in report["methods"]["otsu-sized"]["images"]}
    items = dsb.load_set(folder)
    assert sorted(rows) == sorted(i.id for i in items)
    for item in items:  # the same objects as the baseline told this image's labels' diameter
        labels = otsu_watershed_sized(item.image, item.diameter)
        assert rows[item.id]["predicted_objects"] == int(labels.max())
        assert rows[item.id]["true_diameter"] == round(item.diameter, 2)


def test_subset_val_is_the_models_held_out_ids_and_train_the_rest(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path
) -> None:
    folder, counts = dsb_folder
    held_out = ["aaa1", "bbb0", "not-in-this-folder"]
    model = with_val_ids(tiny_export["out"], tmp_path / "held_out.onnx", held_out)
    code, val = _evaluate(model, folder, tmp_path)  # --subset val is the default
    assert code == 0 and val is not None and val["subset"] == "val"
    code, train = _evaluate(model, folder, tmp_path, "--subset", "train")
    assert code == 0 and train is not None
    val_ids = {r["id"] for r in val["methods"]["model"]["images"]}
    train_ids = {r["id"] for r in train["methods"]["model"]["images"]}
    assert val_ids == {"aaa1", "bbb0"}
    assert train_ids == set(counts) - val_ids
    assert val["missing_val_ids"] == ["not-in-this-folder"]


def test_subset_tune_is_the_models_tuning_ids_and_train_leaves_them_out(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, counts = dsb_folder
    model = with_val_ids(tiny_export["out"], tmp_path / "tuned.onnx", ["aaa1"], tune_ids=["bbb0"])
    code, tune = _evaluate(model, folder, tmp_path, "--subset", "tune")
    assert code == 0 and tune is not None and tune["subset"] == "tune"
    assert {r["id"] for r in tune["methods"]["model"]["images"]} == {"bbb0"}
    code, train = _evaluate(model, folder, tmp_path, "--subset", "train")
    assert code == 0 and train is not None
    assert {r["id"] for r in train["methods"]["model"]["images"]} == set(counts) - {"aaa1", "bbb0"}
    # A model trained without --tune-fraction has no tuning images: said so, nothing scored.
    plain = with_val_ids(tiny_export["out"], tmp_path / "plain.onnx", ["aaa1"])
    code, report = _evaluate(plain, folder, tmp_path, "--subset", "tune")
    assert code == 2 and report is None
    assert "tune_ids" in capsys.readouterr().err


def test_benchmark_subsets_keep_the_series_order_their_every_samples_from(dsb_folder: Folder) -> None:
    """``model_subset_in_series_order`` picks the model's images in ``split_by_series``'s order, so
    ``screen_like``/``missed_nuclei --every N`` rows published before it stay reproducible."""
    from model_export.evaluate import model_subset_in_series_order
    from service.model_metadata import ModelMetadata

    folder, _ = dsb_folder
    items = dsb.load_set(folder)
    train, val = dsb.split_by_series(items)
    assert [i.id for i in train + val] != [i.id for i in items]  # the two orders differ here
    meta = ModelMetadata.model_construct(training={"data": {"val_ids": [i.id for i in val]}})
    picked = model_subset_in_series_order(items, "all", meta, Path("m.onnx"))
    assert [i.id for i in picked] == [i.id for i in train + val]
    picked = model_subset_in_series_order(items, "val", meta, Path("m.onnx"))
    assert [i.id for i in picked] == [i.id for i in val]


def test_subset_val_of_a_model_without_held_out_ids_says_what_to_do(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = dsb_folder
    code, report = _evaluate(tiny_export["out"], folder, tmp_path, "--subset", "val")
    assert code == 2 and report is None
    err = capsys.readouterr().err
    assert "val_ids" in err and "--subset all" in err


def test_val_ids_from_another_folder_are_an_error(
    dsb_folder: Folder, tiny_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = dsb_folder
    model = with_val_ids(tiny_export["out"], tmp_path / "other.onnx", ["elsewhere1", "elsewhere2"])
    code, _ = _evaluate(model, folder, tmp_path)
    assert code == 2
    assert "is --dsb the folder it was trained on" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--dsb", "D", "--images", "I", "--masks", "M"],
        ["--images", "I", "--masks", "M", "--baseline", "otsu"],
        ["--images", "I", "--masks", "M", "--subset", "all"],
        ["--images", "I"],
    ],
)
def test_dsb_and_folder_options_do_not_mix(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", "m.onnx", *args])
    assert exc.value.code == 2


def test_a_perfect_answer_scores_one_everywhere(dsb_folder: Folder) -> None:
    folder, counts = dsb_folder
    items = dsb.load_set(folder)
    truth = {id(item.image): item.labels for item in items}

    def oracle(image: np.ndarray) -> Segmentation:
        labels = truth[id(image)]
        return Segmentation(labels > 0, labels)

    summary = summarise_dsb(score_dsb(items, oracle))
    for key in ("mean_f1", "mean_dice", "mean_ap", "mean_precision", "mean_recall"):
        assert summary["overall"][key] == pytest.approx(1.0)
    assert summary["overall"]["predicted_objects"] == sum(counts.values())
