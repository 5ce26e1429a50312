"""``service.cuda_libraries``: pip's CUDA libraries are loaded only where pip put them."""

from __future__ import annotations

from pathlib import Path

import onnxruntime

from service import cuda_libraries


def test_the_nvidia_folder_beside_onnxruntime_is_found(tmp_path: Path) -> None:
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    assert cuda_libraries.pip_nvidia_folder(tmp_path / "onnxruntime") == tmp_path / "nvidia"


def test_without_one_nothing_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "onnxruntime").mkdir()
    assert cuda_libraries.pip_nvidia_folder(tmp_path / "onnxruntime") is None


def test_preload_here_matches_what_this_install_holds() -> None:
    # On a machine without pip's nvidia packages (CI) preload does nothing and says so; where they
    # are installed it tries. Either way it never raises.
    here = cuda_libraries.pip_nvidia_folder(Path(onnxruntime.__file__).parent)
    assert cuda_libraries.preload() is (here is not None and hasattr(onnxruntime, "preload_dlls"))
