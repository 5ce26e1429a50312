"""benchmarks/make_slide.py writes a tiled pyramidal OME-TIFF that the slide reader opens: a small
one here (run as its own process: the generator imports PyTorch, kept out of the test process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.microscopy import Selection
from service.slide_files import open_slide, overview

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_slide_writes_a_periodic_pyramidal_ome_tiff(tmp_path):
    out = tmp_path / "slide.ome.tif"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "make_slide.py"), str(out), "--size", "2048",
         "--base", "512", "--tile", "256", "--pixel-size", "0.5", "--print-crop", "256"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "seam-free 256² crop | y 165:421, x 357:613" in run.stdout  # (-1371 % 512, -2203 % 512)
    with open_slide(out, Selection(), max_pixels=10**10, limits=100) as slide:
        assert slide.shape == (2048, 2048) and slide.dtype == np.uint16
        assert slide.levels == [(2048, 2048), (1024, 1024)]
        assert slide.pixel_size is not None and slide.pixel_size.x_um == 0.5
        assert slide.plane.layout.format == "OME-TIFF" and slide.plane.layout.channels[0].name == "DAPI"
        window = slide.read(100, 400, 50, 700)
        assert window.std() > 0  # nuclei, not an empty canvas
        # one base image repeated: the same pixels one period down and two across
        assert np.array_equal(window, slide.read(612, 912, 1074, 1724))
        # the pyramid samples level 0 by stride
        assert np.array_equal(overview(slide, 1024 * 1024).image, slide.read(0, 2048, 0, 2048)[::2, ::2])
