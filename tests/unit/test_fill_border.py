"""benchmarks/fill_border.py frames an image in a constant fill and scores the field's own area."""

from __future__ import annotations

import numpy as np

from tests.benchmark_scripts import load_benchmark


def test_the_image_sits_in_the_middle_of_a_filled_canvas() -> None:
    in_canvas = load_benchmark("fill_border").in_canvas
    image = np.arange(1, 13, dtype=np.uint16).reshape(3, 4)
    big, (top, left) = in_canvas(image, 2.0, 7)
    assert big.shape == (6, 8) and big.dtype == image.dtype
    np.testing.assert_array_equal(big[top : top + 3, left : left + 4], image)
    assert (top, left) == (1, 2)
    outside = np.ones(big.shape, bool)
    outside[top : top + 3, left : left + 4] = False
    assert (big[outside] == 7).all()
