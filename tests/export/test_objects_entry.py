"""``python -m model_export objects``: new object parameters and version, the weights untouched, sealed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model_export.__main__ import main
from service.engine import Engine
from service.objects import params_for_model
from tests.models import write_conv_model

CPU = ["CPUExecutionProvider"]


def _weights(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


def test_the_confidence_cut_is_written_with_a_new_version_and_the_model_still_verifies(
    tmp_path: Path,
) -> None:
    path = write_conv_model(tmp_path / "c.onnx", version="1.0.0")
    before = Engine.load(path, providers=CPU).metadata
    weights = _weights(path)
    assert (
        main(
            [
                "objects",
                "--model",
                str(path),
                "--set",
                "min_confidence=0.8",
                "--set",
                "min_area=20",
                "--version",
                "1.1.0",
            ]
        )
        == 0
    )
    engine = Engine.load(path, providers=CPU, require_checksum=True)  # re-sealed: it verifies
    assert engine.metadata.version == "1.1.0"
    params = params_for_model(engine.metadata)
    assert (params.min_confidence, params.min_area) == (0.8, 20)
    # every other object parameter and metadata entry as before; the weights bit for bit
    assert {k: v for k, v in engine.metadata.objects.items() if k not in ("min_confidence", "min_area")} == {
        k: v for k, v in before.objects.items() if k != "min_area"
    }
    assert engine.metadata.threshold == before.threshold and engine.metadata.name == before.name
    assert all(np.array_equal(a, b) for a, b in zip(_weights(path), weights, strict=True))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("min_confidence", "NAME=VALUE"),
        ("size=3", "NAME=VALUE"),
        ("min_area=big", "not a valid int"),
        ("method=magic", "unknown object method"),
    ],
)
def test_a_bad_setting_is_a_usage_error_and_leaves_the_file_alone(
    tmp_path: Path, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conv_model(tmp_path / "c.onnx")
    original = path.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["objects", "--model", str(path), "--set", setting, "--version", "9.9.9"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert path.read_bytes() == original
