"""Fluorescence or not (service.modality): the warning users get for H&E and bright field."""

from __future__ import annotations

import numpy as np

from model_export.data import synth_nuclei
from service.modality import check_modality


def fluorescence() -> np.ndarray:
    return synth_nuclei(3, 256)[0]


def test_fluorescence_gives_no_warning_in_grey_or_stored_as_rgb() -> None:
    image = fluorescence()
    assert check_modality(image).modality == "fluorescence"
    assert check_modality(image).warning is None
    rgb = np.repeat(image[:, :, None], 3, axis=2)  # grey saved as RGB(A), as DSB does
    assert check_modality(rgb).modality == "fluorescence"
    rgba = np.concatenate([rgb, np.full_like(rgb[:, :, :1], 255)], axis=2)
    assert check_modality(rgba).modality == "fluorescence"


def test_bright_field_dark_nuclei_on_a_bright_field_is_flagged() -> None:
    image = fluorescence().astype(np.float32)
    inverted = (image.max() - image).astype(np.uint16)
    check = check_modality(inverted)
    assert check.modality == "bright-field"
    assert "bright field" in check.warning


def test_colour_stain_is_flagged() -> None:
    # An H&E-like image: pink background, purple nuclei.
    grey = fluorescence().astype(np.float32)
    grey /= grey.max()
    background = np.array([235, 200, 220], np.float32)
    nucleus = np.array([90, 50, 150], np.float32)
    he = (background * (1 - grey[:, :, None]) + nucleus * grey[:, :, None]).astype(np.uint8)
    check = check_modality(he)
    assert check.modality == "colour"
    assert "colour" in check.warning
