"""CUDA and cuDNN from pip's ``nvidia`` packages, loaded before ONNX Runtime's CUDA provider needs them.

onnxruntime-gpu's CUDA provider finds CUDA 13 and cuDNN 9 on the system's library path, where the
CUDA runtime image (``Dockerfile``) puts them. Installed by pip instead (``onnxruntime-gpu[cuda,cudnn]``,
or the packages a CUDA build of PyTorch brings), they sit in ``site-packages/nvidia/``, where the
dynamic loader does not look. ``onnxruntime.preload_dlls()`` loads them from there. It is called only
where that folder exists beside onnxruntime: elsewhere it would print a "Failed to load" line per
library on every machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def pip_nvidia_folder(onnxruntime_dir: Path) -> Path | None:
    """``site-packages/nvidia`` beside the ``onnxruntime`` package folder, if pip installed one."""
    folder = Path(onnxruntime_dir).parent / "nvidia"
    return folder if folder.is_dir() else None


@functools.cache
def preload() -> bool:
    """Load pip's CUDA and cuDNN libraries into this process, once; whether it was tried.

    Failures are logged, never raised: the engine then reports the provider it really got.
    """
    import onnxruntime as ort

    folder = pip_nvidia_folder(Path(ort.__file__).parent)
    if folder is None or not hasattr(ort, "preload_dlls"):
        return False
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):  # preload_dlls reports by print()
            ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop the CPU fallback
        log.warning("could not load CUDA libraries from %s: %s", folder, exc)
        return False
    text = " ".join(said.getvalue().split())
    if "Failed" in text:
        log.warning("loading CUDA libraries from %s: %s", folder, text)
    else:
        log.info("loaded CUDA libraries from %s%s", folder, f": {text}" if text else "")
    return True
