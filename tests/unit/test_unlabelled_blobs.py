"""benchmarks/unlabelled_blobs.py counts nucleus-like blobs that no DSB mask covers: it must find an
unlabelled dim nucleus, read the labelled nuclei's contrast relative to each other, and not count
a bright nucleus's halo or a speck as a blob."""

from __future__ import annotations

import cv2
import numpy as np

from model_export.dsb import DsbImage
from tests.benchmark_scripts import load_benchmark


def _disc(labels: np.ndarray, centre: tuple[int, int], radius: int, value: int) -> None:
    cv2.circle(labels, (centre[1], centre[0]), radius, value, thickness=-1)


def _field() -> tuple[DsbImage, tuple[int, int]]:
    """Four labelled nuclei of radius 8 (three bright, one at 0.4), one unlabelled nucleus at 0.4,
    a ring of glow around a bright nucleus and a 3 px speck, blurred like a micrograph, on a flat
    noisy background."""
    labels = np.zeros((160, 160), np.int32)
    for index, centre in enumerate(((30, 30), (30, 90), (90, 30), (90, 90)), start=1):
        _disc(labels, centre, 8, index)
    light = np.zeros(labels.shape, np.float32)
    light[labels > 0] = 150.0
    light[labels == 4] = 60.0  # a dim labelled nucleus
    unlabelled = (135, 135)
    _disc(light, unlabelled, 8, 60)
    glow = np.zeros(labels.shape, np.uint8)
    cv2.circle(glow, (30, 30), 17, 1, thickness=4)  # outside the masks dilated by 3 px
    light[glow > 0] = 100.0
    light[19:22, 139:142] = 250.0  # a bright speck: far below a quarter of a nucleus's area
    light = cv2.GaussianBlur(light, (0, 0), 2.5)
    rng = np.random.default_rng(0)
    image = np.clip(20 + light + rng.normal(0, 2, light.shape), 0, 255).astype(np.uint8)
    return DsbImage(
        "feedc0de" + "0" * 56, image, labels, "fluorescence", 16.0, "160x160/feedc0de"
    ), unlabelled


def test_an_unlabelled_dim_nucleus_is_a_blob_and_halos_and_specks_are_not() -> None:
    blobs = load_benchmark("unlabelled_blobs")
    item, unlabelled = _field()
    contrasts, found = blobs.image_contrasts(item)
    assert len(contrasts) == 4
    dim, *bright = np.sort(contrasts)
    assert min(bright) > 0.75  # the median is a bright one (the glow lowers its nucleus's top-hat a little)
    assert 0.3 < dim < 0.55  # the dim one, at 0.4 of their signal
    assert len(found) == 1, [(b.centre, b.contrast) for b in found]
    (blob,) = found
    assert np.hypot(blob.centre[0] - unlabelled[0], blob.centre[1] - unlabelled[1]) < 2
    assert 0.3 < blob.contrast < 0.6  # the thresholded part of a 0.4 nucleus reads a little high


def test_a_fully_labelled_field_has_no_blobs() -> None:
    blobs = load_benchmark("unlabelled_blobs")
    item, unlabelled = _field()
    labels = item.labels.copy()
    _disc(labels, unlabelled, 8, 5)
    contrasts, found = blobs.image_contrasts(DsbImage(item.id, item.image, labels, item.modality, 16.0))
    assert len(contrasts) == 5 and found == []
