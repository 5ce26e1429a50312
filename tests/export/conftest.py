"""A tiny model trained for a few steps and exported once per session (seconds, CPU).

Everything here needs PyTorch (the ``train`` extra): every test in this directory is
marked ``train`` and the directory is skipped where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

TINY = [
    "--depth",
    "2",
    "--base-channels",
    "4",
    "--patch",
    "32",
    "--batch-size",
    "2",
    "--steps",
    "3",
    "--eval-every",
    "2",
    "--val-images",
    "2",
    "--val-size",
    "32",
    "--workers",
    "0",
    "--threads",
    "1",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/export" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.train)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the tiny model; returns the run folder (best.pt, history.*, curves.png)."""
    from model_export import train

    out = tmp_path_factory.mktemp("run")
    train.main([*TINY, "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_run: Path) -> dict:
    """Export the tiny model (self-checked against PyTorch); returns export's report."""
    from model_export.export import export

    return export(tiny_run / "best.pt", tiny_run / "tiny.onnx", margin_images=1)
