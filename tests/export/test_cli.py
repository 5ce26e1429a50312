"""The command line: synth writes a folder pair that evaluate scores through the service's tiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.__main__ import main


def test_synth_then_evaluate_through_service_tiling(
    tmp_path: Path, tiny_export: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path), "-n", "2", "--size", "70", "--seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["synth_0000.png", "synth_0001.png"]
    report = tmp_path / "scores.json"
    # A 32-px tile forces several tiles on a 70-px image: the service's tiler really runs.
    code = main(
        [
            "evaluate",
            "--model",
            tiny_export["out"],
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--tile-size",
            "32",
            "--overlap",
            "8",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "synth_0000" in out and "mean" in out
    scores = json.loads(report.read_text())
    assert len(scores["images"]) == 2 and all(s["tiles"] > 1 for s in scores["images"])
    assert 0 <= scores["summary"]["mean_dice"] <= 1
    assert scores["summary"]["objects"]["method"]["method"] == "distance_watershed"  # the model's default
    # --split center scores the objects the service's ?split=center would return.
    centre = tmp_path / "centre.json"
    args = ["evaluate", "--model", tiny_export["out"], "--images", str(tmp_path / "images")]
    assert main([*args, "--masks", str(tmp_path / "masks"), "--split", "center", "--json", str(centre)]) == 0
    assert json.loads(centre.read_text())["summary"]["objects"]["method"]["method"] == "center_watershed"


def test_evaluate_reports_a_missing_mask_by_name(
    tmp_path: Path, tiny_export: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["synth", "--out", str(tmp_path), "-n", "2", "--size", "40"])
    (tmp_path / "masks" / "synth_0001.png").unlink()
    code = main(
        [
            "evaluate",
            "--model",
            tiny_export["out"],
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
        ]
    )
    assert code == 2
    assert "synth_0001.png: no mask" in capsys.readouterr().err


def test_unknown_command_fails() -> None:
    assert main(["frobnicate"]) == 2
