"""Image/mask folder pairs: reading, pairing by stem, and checks (numpy/OpenCV, no PyTorch).

Shared by training (``model_export.data``) and evaluation (``model_export.evaluate``,
which must stay free of PyTorch). Every problem is a :class:`DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(ValueError):
    """A folder data set is unusable; the message names the file and what is wrong."""


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` keeping its bit depth: ``(H, W)`` or ``(H, W, C)`` RGB(A), uint8/uint16/float."""
    # IMREAD_UNCHANGED keeps 16-bit and alpha; np.fromfile copes with non-ASCII paths.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode as an image (corrupt, empty or unsupported format)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def read_mask(path: Path) -> np.ndarray:
    """A mask file → int32 ``(H, W)`` labels.

    Binary masks (any non-zero is foreground), class-index masks and instance label
    images (0..N) are all kept as their integer values; colour masks are reduced to
    "any channel non-zero". Callers take ``> 0`` for foreground.
    """
    mask = read_image(path)
    if mask.ndim == 3:
        mask = (mask[:, :, :3] != 0).any(axis=2)
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        mask = mask != 0
    return mask.astype(np.int32)


def _by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} does not exist or is not a directory")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise DataError(
                f"{path}: two {role} files share the stem {path.stem!r} ({files[path.stem].name})"
            )
        files[path.stem] = path
    if not files:
        raise DataError(f"{role} folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def pair_folders(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """Pair image and mask files by stem; any file without a partner is an error."""
    imgs, msks = _by_stem(Path(images), "image"), _by_stem(Path(masks), "mask")
    missing = sorted(set(imgs) - set(msks))
    if missing:
        raise DataError(
            f"{imgs[missing[0]]}: no mask with stem {missing[0]!r} in {masks} "
            f"({len(missing)} image(s) without a mask)"
        )
    orphans = sorted(set(msks) - set(imgs))
    if orphans:
        raise DataError(
            f"{msks[orphans[0]]}: no image with stem {orphans[0]!r} in {images} "
            f"({len(orphans)} mask(s) without an image)"
        )
    return [(imgs[s], msks[s]) for s in sorted(imgs)]


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair and check that the sizes agree: (raw image, int32 ``(H, W)`` labels)."""
    image, mask = read_image(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but image {image_path.name} "
            f"is {image.shape[1]}×{image.shape[0]} (width×height)"
        )
    return image, mask
