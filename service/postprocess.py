"""Probabilities → the arrays the API returns: mask, probability map, labels, overlay.

Pure numpy/OpenCV on arrays; encoding to PNG is ``imaging.encode_png``. Object
splitting (watershed of touching nuclei) lives in ``service.objects``; :func:`labels`
here is plain connected components of a binary mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.imaging import to_display_rgb
from service.model_metadata import ModelMetadata
from service.segment import Prediction

#: Outline colour of the overlay, RGB (yellow reads well on fluorescence and on H&E).
OUTLINE_RGB = (255, 255, 0)


def foreground_probability(pred: Prediction | np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """The ``(H, W)`` float32 foreground probability (channel ``metadata.foreground_channel``).

    ``pred`` is a :class:`Prediction` or its ``(K, H, W)`` probabilities. A view, not a copy.
    """
    probs = pred.probabilities if isinstance(pred, Prediction) else pred
    channel = metadata.foreground_channel
    if not 0 <= channel < probs.shape[0]:
        raise ValueError(f"foreground channel {channel} is outside the model's {probs.shape[0]} outputs")
    return probs[channel]


def mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Binary mask ``(H, W)`` uint8: 255 where ``prob > threshold``, else 0."""
    out = np.empty(prob.shape, dtype=np.uint8)
    np.greater(prob, np.float32(threshold), out=out.view(bool))
    out *= np.uint8(255)
    return out


def probability_png_array(prob: np.ndarray, bits: int = 8) -> np.ndarray:
    """Quantise ``(H, W)`` probabilities in [0, 1] to uint8 (``bits=8``) or uint16 (``bits=16``).

    Rounded to nearest: 0.5 → 128 (8-bit) / 32768 (16-bit).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = 255.0 if bits == 8 else 65535.0
    scaled = np.clip(prob, 0.0, 1.0) * np.float32(top)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def labels(binary: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Connected components of a ``(H, W)`` mask (nonzero = foreground).

    Returns ``(H, W)`` uint16 labels 0 = background, 1..N in raster order of each
    object's first pixel (a stable numbering: the same mask always gives the same ids);
    uint32 when there are more than 65535 objects — the caller decides how to encode
    those (a 16-bit PNG cannot hold them, and wrapping around would merge objects).
    """
    # Wu's SAUF algorithm (also in its parallel, striped form) roots every object at its
    # earliest provisional label and numbers roots in order, i.e. raster order of the
    # first pixel; OpenCV's default (Spaghetti/BBDT) does not. Pinned by a unit test.
    count, lab = cv2.connectedComponentsWithAlgorithm(
        (binary > 0).astype(np.uint8), connectivity, cv2.CV_32S, cv2.CCL_SAUF
    )
    return lab.astype(np.uint16 if count - 1 <= 0xFFFF else np.uint32)


def overlay(
    image: np.ndarray,
    binary: np.ndarray,
    color: tuple[int, int, int] = OUTLINE_RGB,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """The input as an 8-bit RGB preview ``(H, W, 3) uint8`` with outlines drawn in.

    ``image`` is the decoded ``(H, W[, C])`` array; ``binary`` the ``(H, W)`` mask; ``labels``
    (optional) the ``(H, W)`` objects: then each object is outlined on its own, so touching
    nuclei show the line between them. Outlines are the object pixels with a 4-neighbour outside
    the object (1 px, inside it), so they stay aligned with the mask at any zoom.
    """
    rgb = to_display_rgb(image)
    rgb[object_edges(binary if labels is None else labels)] = color
    return rgb


def object_edges(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels of an object (label > 0) with a 4-neighbour of another label
    (background or a touching object). A binary mask is one label."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    if labels.dtype in (np.uint8, bool):
        fg = (labels > 0).view(np.uint8)
        return fg > cv2.erode(fg, cross, borderType=cv2.BORDER_REPLICATE)
    # float32 holds labels exactly up to 2**24; OpenCV has no int32 morphology
    lab = labels.astype(np.float32)
    low = cv2.erode(lab, cross, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(lab, cross, borderType=cv2.BORDER_REPLICATE)
    return (lab > 0) & ((low != lab) | (high != lab))
