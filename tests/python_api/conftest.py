"""Fixtures for the Python API tests: the bundled model, and fluorescence-like images with a known
number of nuclei written as real TIFF / PNG files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.api import Segmenter
from tests.server import REPO

BUNDLED_MODEL = REPO / "models" / "nuclei-unet.onnx"


def nuclei_image(size: int = 192, grid: int = 4, seed: int = 3) -> tuple[np.ndarray, int]:
    """``(image, count)``: a 16-bit image of ``grid``² bright, well-separated discs (radius 6–10 px,
    ~30000–50000) on dark noise (~2000 ± 400), as a nuclear stain looks."""
    rng = np.random.default_rng(seed)
    image = rng.normal(2000, 400, (size, size)).clip(0, 65535)
    step = size // grid
    for row in range(step // 2, size, step):
        for col in range(step // 2, size, step):
            centre = (int(col + rng.integers(-5, 6)), int(row + rng.integers(-5, 6)))
            value = float(rng.uniform(30000, 50000))
            cv2.circle(image, centre, int(rng.integers(6, 11)), value, thickness=-1, lineType=cv2.LINE_AA)
    return image.astype(np.uint16), grid * grid


def write_nuclei_tiff(path: Path, size: int = 192, grid: int = 4, seed: int = 3) -> int:
    """Write :func:`nuclei_image` as a 16-bit TIFF (OpenCV's encoder); returns the nucleus count."""
    image, count = nuclei_image(size, grid, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), f"OpenCV could not write {path}"
    return count


@pytest.fixture(scope="session")
def segmenter() -> Iterator[Segmenter]:
    """The bundled model on the CPU, loaded once for the module's tests."""
    with Segmenter.load(BUNDLED_MODEL, providers=["cpu"], threads=2) as loaded:
        yield loaded
