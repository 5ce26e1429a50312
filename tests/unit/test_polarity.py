"""polarity=dark (service.polarity): dark nuclei on a bright field read as optical density."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.data import synth_nuclei
from service.modality import check_modality
from service.polarity import DarkToBright, DarkToBrightSource
from service.regions import ArraySource


def transmitted(fluorescence: np.ndarray, white: float = 230.0, absorbance: float = 1.5) -> np.ndarray:
    """Bright field of a stain laid down where the fluorescence was: ``white · 10^(−A·s)``, 8-bit."""
    stain = fluorescence.astype(np.float64) / float(np.percentile(fluorescence, 99.9))
    return np.clip(np.rint(white * 10.0 ** (-absorbance * np.clip(stain, 0, 1.2))), 0, 255).astype(np.uint8)


def test_optical_density_gives_the_stain_back_up_to_scale_bright_background_at_zero() -> None:
    fluorescence, _ = synth_nuclei(4, 128)
    bright_field = transmitted(fluorescence)
    density = DarkToBright.of(bright_field)(bright_field)
    assert density.dtype == np.float32 and density.shape == bright_field.shape
    assert np.isfinite(density).all() and density.min() >= 0
    # Beer–Lambert: the density is linear in the stain, so it follows the fluorescence closely
    # (quantisation to 8 bits and the clip at white aside), where a plain negation bends it.
    stain = fluorescence.astype(np.float64)
    assert np.corrcoef(density.ravel(), stain.ravel())[0, 1] > 0.97
    # The brightest 0.5 % of the bright field (the white level) come out at 0: background.
    assert np.percentile(density, 0.5) == 0.0


def test_a_black_pixel_is_finite_and_the_darkest() -> None:
    image = np.full((20, 20), 200, np.uint8)
    image[5, 5] = 0
    density = DarkToBright.of(image)(image)
    assert np.isfinite(density).all() and density[5, 5] == density.max() > 5


def test_windows_are_turned_exactly_as_the_whole_image() -> None:
    """A slide is read window by window: each window must come out as it would from the whole."""
    fluorescence, _ = synth_nuclei(7, 160)
    image = transmitted(fluorescence)
    turn = DarkToBright.of(image)
    whole = turn(image)
    source = DarkToBrightSource(ArraySource(image), turn)
    assert source.shape == image.shape and source.dtype == np.float32
    np.testing.assert_array_equal(source.read(30, 90, 17, 151), whole[30:90, 17:151])


def test_colour_is_mixed_to_the_models_channels_before_the_density() -> None:
    rgb = np.dstack([np.full((8, 9), v, np.uint8) for v in (200, 150, 100)])
    rgb[2, 3] = (20, 30, 40)
    one = DarkToBright.of(rgb, 1)
    assert one(rgb).shape == (8, 9) and len(one.white) == 1
    three = DarkToBright.of(rgb, 3)
    assert three(rgb).shape == (8, 9, 3) and len(three.white) == 3
    white, seen = np.array([200.0, 150.0, 100.0]), np.array([20.0, 30.0, 40.0])
    offset = white / 256  # DARK_OFFSET of each channel's white
    np.testing.assert_allclose(three(rgb)[2, 3], np.log((white + offset) / (seen + offset)), rtol=1e-5)


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.full((6, 6), -3.0, np.float32)])
def test_an_image_without_a_bright_field_gives_finite_values(image: np.ndarray) -> None:
    assert np.isfinite(DarkToBright.of(image)(image)).all()


def test_missing_values_are_background_not_stain() -> None:
    image = np.full((8, 8), 100.0, np.float32)
    image[2, 2], image[3, 3], image[4, 4], image[5, 5] = np.nan, np.inf, -np.inf, 20.0
    density = DarkToBright.of(image)(image)
    assert density[2, 2] == density[3, 3] == density[4, 4] == density[0, 0] == 0.0
    assert density[5, 5] > 1  # a real dark pixel is stain


def test_the_modality_warning_says_what_polarity_to_use() -> None:
    fluorescence, _ = synth_nuclei(4, 128)
    bright_field = check_modality(transmitted(fluorescence))
    assert bright_field.modality == "bright-field"
    assert "polarity=dark" in bright_field.warning_for("bright")
    assert "optical density" in bright_field.warning_for("dark")  # said, and to be checked
    assert "diameter=" in bright_field.warning_for("dark")  # the estimate can read whole cells
    fluorescent = check_modality(fluorescence)
    assert fluorescent.warning_for("bright") is None
    assert "looks like fluorescence" in fluorescent.warning_for("dark")
