"""Foreground map → separate nuclei: split, measure, export.

Pure functions on arrays (no I/O). The service runs them on the *stitched*
full-image maps, so a nucleus cut by a tile border is one object.

Touching nuclei are split per connected component of the mask, on its bounding-box
crop; most components are single nuclei and cost almost nothing. Two ways to seed the
watershed that splits the rest:

- ``center_watershed`` (models with a centre channel, e.g. the bundled one): the model
  predicts each pixel's normalised distance to the edge of its own nucleus; each peak of
  that map rising ``center_prominence`` above the saddle to its neighbours seeds one
  nucleus, and the component is flooded from the seeds downhill on the map. The model
  sees the dim seam between two nuclei that the mask's shape alone does not show.
- ``distance_watershed`` (any foreground model): the classic distance transform of the
  mask, seeded at its h-maxima deeper than ``seed_prominence`` pixels.

Library code does the pixel work (OpenCV, scikit-image, SciPy).
"""

from __future__ import annotations

import csv
import gc
import io
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np
from scipy import ndimage
from skimage.measure import find_contours
from skimage.segmentation import expand_labels, watershed

from service.background import ring_medians
from service.intensity_sums import corrected_columns, finite_sums, intensity_columns
from service.measured_channels import (
    background_column,
    channel_columns,
    channel_corrected_columns,
    cytoplasm_columns,
    cytoplasm_corrected_columns,
    extra_columns,
)
from service.model_metadata import ModelMetadata

#: How a foreground mask becomes objects (see :class:`ObjectParams`).
METHODS = ("center_watershed", "distance_watershed", "connected_components")

#: A request's ``split`` choice → the method it names.
SPLIT_METHODS = {
    "center": "center_watershed",
    "distance": "distance_watershed",
    "none": "connected_components",
}

#: Largest label a 16-bit PNG can hold; past it labels are written as 32-bit TIFF.
MAX_PNG_LABEL = 65535


@dataclass(frozen=True)
class ObjectParams:
    """How a foreground mask becomes objects (defaults suit nuclei of radius ~4–40 px).

    method: ``"center_watershed"`` splits touching nuclei at the peaks of the model's centre
        channel (models trained with one); ``"distance_watershed"`` splits them at the peaks of
        the mask's distance transform (any model); ``"connected_components"`` does not split.
    min_area: objects smaller than this many pixels are dropped as specks.
    seed_prominence: a distance-transform peak must rise this many pixels above the saddle
        to its neighbour to seed its own object (h-maxima); larger merges more.
    smoothing_sigma: Gaussian σ (px) applied to the distance map before seeding, so ragged
        outlines do not create spurious peaks.
    center_channel: (``center_watershed``) the output channel with the centre map.
    center_prominence: (``center_watershed``) a peak of the centre map must rise this much
        (in probability) above the saddle to its neighbour to seed its own object.
    center_floor: (``center_watershed``) ... and reach at least this centre probability.
    min_confidence: components of the mask whose mean foreground probability (over the pixels the
        model marked) is below this are dropped whole, as specks are; 0 keeps every one.
    foreground_channel: the output channel with the foreground probability (``min_confidence``).
    min_snr: components of the mask whose mean model input (over the pixels the model marked)
        stands less than this above the median of a ring around them, in units of the ring's
        standard deviation, are dropped whole; 0 keeps every one. Measured on the model's
        normalised input at its own scale, so it needs that input (:class:`Surroundings`).
    snr_ring: the ring's width in model pixels (half the model's nucleus diameter).
    """

    method: str = "distance_watershed"
    min_area: int = 15
    # Chosen on a held-out synthetic tuning set (seed 3000003, 24 images 520²), object F1 at
    # IoU 0.5 for h = 0.1/0.25/0.5/1/2/3 px (σ = 1): 0.653/0.638/0.621/0.587/0.507/0.474 (16 of
    # them). 0.25 keeps a margin above the distance map's pixel noise where 0.1 sits on it.
    # Checked on real images with model 2.3.1 (436 DSB training images, h 0.1–1 × σ 0.5–2,
    # benchmarks/split_params.py): F1 0.8860 here, 0.8862 at the best (0.1, 1.5); kept.
    seed_prominence: float = 0.25
    smoothing_sigma: float = 1.0
    center_channel: int = 1
    # Chosen on synthetic sets (not the real check image): 3 strata of nucleus density
    # (coverage 5–15 / 15–30 / 30–50 %, 12 images 520² each, seeds 3000003–5), object F1 at
    # IoU 0.5 averaged over the strata, for h = 0.1 / 0.15 / 0.2 / 0.25 / 0.3: 0.740 / 0.757 /
    # 0.754 / 0.740 / 0.715 with a floor of 0.5 (0.733 / 0.755 / 0.753 / 0.739 / 0.715 without);
    # the mask's distance-transform watershed scored 0.648 there.
    center_prominence: float = 0.15
    # A seed is a nucleus' centre, where the target is 1: a lower peak is rim noise. Tried
    # after rim fragments showed on the real check image; kept as it did not hurt on the
    # synthetic strata (above).
    center_floor: float = 0.5
    # Off unless the model records a value chosen on its own validation data (models/README.md):
    # a stand-in or other model's probabilities need not be calibrated alike.
    min_confidence: float = 0.0
    foreground_channel: int = 0
    # Off unless the model records a value chosen on its own data (models/README.md, 2.3.0 and 2.3.1):
    # faint haze and noise specks stand barely above their surroundings, nuclei far above.
    min_snr: float = 0.0
    snr_ring: int = 10

    @property
    def uses_centers(self) -> bool:
        """Whether :func:`label_objects` needs the model's centre map."""
        return self.method == "center_watershed"

    def as_metadata(self) -> dict[str, object]:
        """The ``objects`` entry written into the model metadata (the foreground channel is the
        model's own ``foreground_channel`` entry, not repeated here)."""
        entry = asdict(self)
        del entry["foreground_channel"]
        return entry

    @classmethod
    def from_metadata(cls, objects: Mapping[str, object]) -> ObjectParams:
        """Build from the model metadata's ``objects`` dict, ignoring unknown keys."""
        known = {k: v for k, v in objects.items() if k in cls.__dataclass_fields__}
        params = cls(**known)  # type: ignore[arg-type]
        if params.method not in METHODS:
            raise ValueError(f"unknown object method {params.method!r}")
        return params


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border. ``(H, W)`` bool → bool.

    Nuclei have no holes; a dim nucleolus must not punch one into the object.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    # Flood the background from the (padded) corner: whatever stays 0 is enclosed.
    cv2.floodFill(flood, None, (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


def _first_pixel(crop: np.ndarray, top: int, left: int, width: int) -> int:
    """Raster index (in a ``width``-wide image) of the first True pixel of ``crop`` at (top, left)."""
    row = int(np.argmax(crop.any(axis=1)))
    col = int(np.argmax(crop[row]))
    return (top + row) * width + left + col


_CROSS_AND_DIAGONALS = np.ones((3, 3), np.uint8)


def h_maxima(surface: np.ndarray, h: float) -> np.ndarray:
    """Regional maxima of ``surface`` at least ``h`` high: ``(H, W)`` float32 → bool.

    The h-maxima transform by morphological reconstruction (dilating ``surface - h`` under
    ``surface`` until stable); pixels whose residue reaches ``h`` are the tops of maxima
    with a dynamic of at least ``h``. The same seeds as ``skimage.morphology.h_maxima`` on
    our distance maps (float rounding may move a plateau edge by a pixel), ~7× faster on
    component crops: OpenCV's dilation instead of a sort
    of every pixel. The loop runs as many times as the widest plateau is wide.
    """
    surface = surface.astype(np.float32, copy=False)
    marker = surface - np.float32(h)
    while True:
        grown = np.minimum(cv2.dilate(marker, _CROSS_AND_DIAGONALS), surface)
        if cv2.norm(grown, marker, cv2.NORM_INF) == 0:  # stable (np.array_equal, ~4× faster)
            break
        marker = grown
    # float32 rounding of (surface - h) may leave the residue a hair under h.
    return (surface - marker) >= np.float32(h) * np.float32(1 - 1e-5)


def _seed_markers(
    surface: np.ndarray, inside: np.ndarray, prominence: float, floor: float = 0.0
) -> tuple[np.ndarray, int] | None:
    """The watershed seeds of a component: peaks of ``surface`` at least ``prominence`` high
    (and reaching ``floor``), labelled ``(markers, count)``; None when there is a single peak.

    ``surface``: float32, zero outside the component and on a one-pixel frame; ``inside``:
    the component's pixels.
    """
    # Cheap test first: one regional-maximum plateau means one object. Most nuclei stop
    # here; only the rest pay for the h-maxima reconstruction.
    peaks = (surface >= cv2.dilate(surface, np.ones((3, 3), np.uint8))) & inside
    if cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)[0] <= 2:
        return None
    seeds = h_maxima(surface, prominence) & inside
    if floor > 0:
        seeds &= surface >= np.float32(floor)
    # 8-connected, like the plateau test above: a diagonal plateau is one seed, not two.
    markers, count = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    return None if count <= 1 else (markers, count)


def _framed(array: np.ndarray) -> np.ndarray:
    """``array`` inside a one-pixel frame of zeros (OpenCV: ~10× faster than ``np.pad``)."""
    return cv2.copyMakeBorder(array, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)


def _aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised float32 array whose data starts on an ``align``-byte boundary.

    OpenCV's precise distance transform (opencv 5.0) gives results that differ in the last bit
    with the alignment of its output buffer (8 different maps over 16 offsets of one crop), and
    such a bit decides near-tie watershed splits: a fixed alignment makes labels reproducible,
    whatever the allocator hands out (issue #16: band-wise labels equal whole-image labels).
    """
    size = math.prod(shape) * 4  # (np.prod: 10 µs a call, thousands of calls)
    raw = np.empty(size + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + size].view(np.float32).reshape(shape)


def _component_seeds(
    crop: np.ndarray, params: ObjectParams, centers: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Seeds of one component's crop (framed): ``(surface, inside, markers, count)``, or None
    for a single object. The surface is the model's centre map (``center_watershed``) or the
    smoothed distance transform of the mask (``distance_watershed``)."""
    if params.uses_centers:
        assert centers is not None
        inside = _framed(crop.view(np.uint8)).view(bool)
        surface = _framed(np.where(crop, centers, 0).astype(np.float32))
        seeded = _seed_markers(surface, inside, params.center_prominence, params.center_floor)
    else:
        padded = _framed(crop.view(np.uint8))
        surface = cv2.distanceTransform(
            padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=_aligned_empty(padded.shape)
        )
        if params.smoothing_sigma > 0:
            surface = cv2.GaussianBlur(surface, (0, 0), params.smoothing_sigma) * padded
        inside = padded > 0
        seeded = _seed_markers(surface, inside, params.seed_prominence)
    return None if seeded is None else (surface, inside, *seeded)


def _split_component(crop: np.ndarray, params: ObjectParams, centers: np.ndarray | None) -> np.ndarray | None:
    """Sub-labels of one component's crop, flooded from its seeds; None for a single object."""
    seeded = _component_seeds(crop, params, centers)
    if seeded is None:
        return None
    surface, inside, markers, _ = seeded
    # 8-connected flooding, like the components: a diagonal-only pixel still gets a label.
    return watershed(-surface, markers, mask=inside, connectivity=2)[1:-1, 1:-1]


def _unsure_components(
    foreground: np.ndarray,
    components: np.ndarray,
    count: int,
    params: ObjectParams,
    confidence: np.ndarray | None,
) -> np.ndarray:
    """``(count,)`` bool: the components whose mean foreground probability over ``foreground``'s
    pixels is under ``params.min_confidence`` (all False when it is 0).

    Sums in raster order of the component's pixels, whatever the array around them: a band that
    holds a component whole gives the same mean, to the bit, as the whole image.
    """
    if params.min_confidence <= 0:
        return np.zeros(count, bool)
    if confidence is None or confidence.shape != foreground.shape:
        raise ValueError("min_confidence needs the foreground probability map, the shape of the mask")
    marked = foreground.reshape(-1)
    ids = components.reshape(-1)[marked]
    sums = np.bincount(ids, weights=confidence.reshape(-1)[marked], minlength=count)
    pixels = np.bincount(ids, minlength=count)
    return sums < params.min_confidence * np.maximum(pixels, 1)


#: Ring pixels a component needs for its contrast to be measured; with fewer (inside a crowded
#: cluster) it is kept.
MIN_RING_PIXELS = 5


@dataclass(frozen=True)
class Surroundings:
    """What the contrast cut (``min_snr``) reads around the components: the model's normalised
    input ``grey`` and its thresholded mask ``marked`` (every marked pixel, other objects'
    included), with ``above`` more rows on top of the component arrays' first row — a band's
    context (``windows.BandObjects``); 0 for a whole image."""

    grey: np.ndarray
    marked: np.ndarray
    above: int = 0


def _faint_components(
    components: np.ndarray,
    stats: np.ndarray,
    skip: np.ndarray,
    params: ObjectParams,
    around: Surroundings | None,
) -> np.ndarray:
    """``(count,)`` bool: the components (not in ``skip``) whose mean input over ``marked``
    pixels is under ``params.min_snr`` ring standard deviations above the ring's median.

    The ring: pixels within ``snr_ring`` (a square) of the component, clipped to the arrays,
    that the model did not mark. A band that holds a component with ``snr_ring`` rows around it
    gives the same value as the whole image.

    Runs once per component (thousands on a large image), so each step is one OpenCV or ufunc
    call on the component's small crop: the statistics are numpy's own (:func:`_std`,
    :func:`_median`), without its wrappers' overhead, which was half of this function's time.
    """
    count = len(stats)
    faint = np.zeros(count, bool)
    if params.min_snr <= 0:
        return faint
    if around is None or around.grey.shape != around.marked.shape:
        raise ValueError("min_snr needs the model's input and mask around the components")
    if around.grey.shape != (components.shape[0] + around.above, components.shape[1]):
        raise ValueError(f"input {around.grey.shape} does not frame the components {components.shape}")
    ring_px = int(params.snr_ring)
    kernel = np.ones((2 * ring_px + 1, 2 * ring_px + 1), np.uint8)
    height, width = around.grey.shape
    boxes = stats[:, :4].tolist()
    for component in (np.flatnonzero(~skip[1:]) + 1).tolist():
        left, top, w, h = boxes[component]
        rows = slice(top, top + h)
        top += around.above
        y0, y1 = max(0, top - ring_px), min(height, top + h + ring_px)
        x0, x1 = max(0, left - ring_px), min(width, left + w + ring_px)
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        box = components[rows, left : left + w]
        inside[top - y0 : top - y0 + h, left - x0 : left - x0 + w] = box == component
        near = around.marked[y0:y1, x0:x1]
        # dilated (0/1) > inside-or-marked (0/1): reached by the square, neither the component
        # nor marked
        ring = cv2.dilate(inside, kernel) > (near | inside)
        if np.count_nonzero(ring) < MIN_RING_PIXELS:
            continue
        crop = around.grey[y0:y1, x0:x1]
        background = crop[ring].astype(np.float64)
        core = crop[inside.view(bool) & near].astype(np.float64)
        signal = float(np.add.reduce(core) / core.size) if core.size else 0.0  # core.mean(), to the bit
        spread = _std(background)
        snr = (signal - _median(background)) / (spread + 1e-6)
        faint[component] = snr < params.min_snr
    return faint


def _std(values: np.ndarray) -> float:
    """``values.std()`` of a non-empty 1-D float64 array, to the bit: the ufunc reductions numpy's
    ``std`` makes (pairwise sums, each divided by the count)."""
    n = values.size
    deviation = values - np.add.reduce(values) / n
    np.multiply(deviation, deviation, out=deviation)
    return float(np.sqrt(np.add.reduce(deviation) / n))


def _median(values: np.ndarray) -> float:
    """``np.median`` of a non-empty 1-D float64 array without NaN, to the bit (numpy's own
    partition, and the mean of the middle two for an even count); partitions ``values`` in place."""
    half = values.size // 2
    if values.size % 2:
        values.partition(half)
        return float(values[half])
    values.partition((half - 1, half))
    return float((values[half - 1] + values[half]) / 2)


def _dropped_components(
    marked: np.ndarray,
    components: np.ndarray,
    stats: np.ndarray,
    params: ObjectParams,
    confidence: np.ndarray | None,
    around: Surroundings | None,
) -> np.ndarray:
    """``(count,)`` bool: the components the confidence cut or the contrast cut drops whole
    (specks under ``min_area`` are dropped by the callers; their contrast is not measured)."""
    unsure = _unsure_components(marked, components, len(stats), params, confidence)
    specks = stats[:, cv2.CC_STAT_AREA] < params.min_area
    return unsure | _faint_components(components, stats, unsure | specks, params, around)


def label_objects(
    foreground: np.ndarray,
    params: ObjectParams = ObjectParams(),
    centers: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    around: Surroundings | None = None,
) -> np.ndarray:
    """Label separate objects in a binary foreground mask.

    Args:
        foreground: ``(H, W)`` bool (or 0/non-zero) mask.
        params: splitting parameters (see :class:`ObjectParams`).
        centers: ``(H, W)`` float centre probabilities (the model's centre channel); needed
            by ``center_watershed`` only.
        confidence: ``(H, W)`` float foreground probabilities; needed when ``params.min_confidence``
            is set.
        around: the model's input and mask around the components; needed when
            ``params.min_snr`` is set.

    Returns:
        ``(H, W)`` int32 labels, 0 = background, 1..N numbered in raster order of each
        object's first pixel — the same numbering whatever the tiling was.
    """
    if params.uses_centers:
        if centers is None:
            raise ValueError("center_watershed needs the model's centre map")
        if centers.shape != foreground.shape:
            raise ValueError(f"centre map {centers.shape} does not match the mask {foreground.shape}")
    marked = foreground.astype(bool)
    mask = fill_holes(marked)
    height, width = mask.shape
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    unsure = _dropped_components(marked, components, stats, params, confidence, around)
    # Each kept object: (first raster index, component id, sub-label or 0 for "whole component").
    objects: list[tuple[int, int, int]] = []
    split_crops: dict[int, np.ndarray] = {}
    for component in range(1, count):
        left, top, w, h, area = (int(v) for v in stats[component])
        if area < params.min_area or unsure[component]:
            continue
        sub = None
        if area >= 2 * params.min_area and params.method != "connected_components":
            # (else a single object by method, or too small to hold two kept ones)
            crop = components[top : top + h, left : left + w] == component
            crop_centers = None if centers is None else centers[top : top + h, left : left + w]
            sub = _split_component(crop, params, crop_centers)
        if sub is None:
            # A whole component: its first pixel lies in the top row of its box.
            top_row = components[top : top + 1, left : left + w] == component
            objects.append((_first_pixel(top_row, top, left, width), component, 0))
            continue
        sub = sub.astype(np.int32)
        for sub_label in range(1, int(sub.max()) + 1):
            part = sub == sub_label
            if int(part.sum()) < params.min_area:
                sub[part] = 0  # a sliver from the flood; drop like any speck
                continue
            objects.append((_first_pixel(part, top, left, width), component, sub_label))
        split_crops[component] = sub
    objects.sort()

    lut = np.zeros(count, dtype=np.int32)
    sub_ids: dict[tuple[int, int], int] = {}
    for new_id, (_, component, sub_label) in enumerate(objects, start=1):
        if sub_label == 0:
            lut[component] = new_id
        else:
            sub_ids[(component, sub_label)] = new_id
    labels = lut[components]
    for component, sub in split_crops.items():
        left, top, w, h, _ = (int(v) for v in stats[component])
        remap = np.zeros(int(sub.max()) + 1, dtype=np.int32)
        for sub_label in range(1, len(remap)):
            remap[sub_label] = sub_ids.get((component, sub_label), 0)
        view = labels[top : top + h, left : left + w]
        inside = components[top : top + h, left : left + w] == component
        view[inside] = remap[sub[inside]]
    return labels


def count_objects(
    foreground: np.ndarray,
    params: ObjectParams = ObjectParams(),
    centers: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    around: Surroundings | None = None,
) -> int:
    """How many objects :func:`label_objects` finds, without flooding or numbering them.

    The same components and the same seeds, counted: a component holds one object per
    watershed seed (one when it has a single peak). It skips the watershed, the sliver check
    and building the label image, which are most of the cost of labelling (docs/benchmarks.md).
    The count can exceed ``label_objects``' by the flooded parts smaller than ``min_area``
    that labelling then drops. Measured with model 2.0.0 on the 105 DSB validation images,
    against the labels the service returns: ``distance`` 5,844 vs 5,837 objects (100 images
    equal, worst 22 vs 21), ``center`` equal on all; on a 2048² image of ~3,000 nuclei, equal
    and 3–4× faster (docs/benchmarks.md). Idealised centre maps of overlapping nuclei, with a
    peak on every visible fragment, are where it runs high. Arguments as for :func:`label_objects`.
    """
    if params.uses_centers and (centers is None or centers.shape != foreground.shape):
        raise ValueError("center_watershed needs the model's centre map, the shape of the mask")
    marked = foreground.astype(bool)
    mask = fill_holes(marked)
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    unsure = _dropped_components(marked, components, stats, params, confidence, around)
    kept = (areas >= params.min_area) & ~unsure[1:]
    if params.method == "connected_components":
        return int(kept.sum())
    # Components too small to hold two kept objects are one object each, as when labelling.
    total = int((kept & (areas < 2 * params.min_area)).sum())
    for component in np.flatnonzero(kept & (areas >= 2 * params.min_area)) + 1:
        left, top, w, h = (int(v) for v in stats[component, :4])
        crop = components[top : top + h, left : left + w] == component
        crop_centers = None if centers is None else centers[top : top + h, left : left + w]
        seeded = _component_seeds(crop, params, crop_centers)
        total += 1 if seeded is None else seeded[3]
    return total


def count_prediction(
    foreground: np.ndarray,
    probabilities: np.ndarray,
    params: ObjectParams,
    around: Surroundings | None = None,
) -> int:
    """:func:`count_objects` with the centre and foreground maps taken from the model's
    probabilities, as :func:`label_prediction`."""
    return count_objects(foreground, params, *_prediction_maps(probabilities, params), around)


def _prediction_maps(
    probabilities: np.ndarray, params: ObjectParams
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(centre map, foreground map) of the model's ``(K, H, W)`` probabilities, each None when
    ``params`` does not need it."""
    centers = confidence = None
    if params.uses_centers:
        centers = _channel(probabilities, params.center_channel, "centre")
    if params.min_confidence > 0:
        confidence = _channel(probabilities, params.foreground_channel, "foreground")
    return centers, confidence


def _channel(probabilities: np.ndarray, channel: int, name: str) -> np.ndarray:
    if not 0 <= channel < probabilities.shape[0]:
        raise ValueError(f"{name} channel {channel} is outside the model's {probabilities.shape[0]} outputs")
    return probabilities[channel]


def params_for_model(metadata: ModelMetadata, split: str | None = None) -> ObjectParams:
    """The object parameters a model's metadata records, with a request's ``split`` applied.

    ``split``: a key of :data:`SPLIT_METHODS`, or None for the model's own method;
    ``"center"`` on a model without a centre output is a ValueError.
    """
    # The foreground channel is the model's, whatever its objects entry says.
    params = replace(
        ObjectParams.from_metadata(metadata.objects), foreground_channel=metadata.foreground_channel
    )
    if split is None:
        return params
    if split not in SPLIT_METHODS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_METHODS)}, got {split!r}")
    if split == "center":
        if metadata.center_channel is None:
            raise ValueError("split=center needs a model with a nucleus-centre output; this one has none")
        return replace(params, method=SPLIT_METHODS[split], center_channel=metadata.center_channel)
    return replace(params, method=SPLIT_METHODS[split])


def label_prediction(
    foreground: np.ndarray,
    probabilities: np.ndarray,
    params: ObjectParams,
    around: Surroundings | None = None,
) -> np.ndarray:
    """:func:`label_objects` with the centre and foreground maps taken from the model's ``(K, H, W)``
    probabilities where ``params`` needs them."""
    return label_objects(foreground, params, *_prediction_maps(probabilities, params), around)


@dataclass(frozen=True)
class ObjectRow:
    """One object's measurements; coordinates in pixels, (x, y) = (column, row) of pixel centres.

    The ``*_um`` fields are the same in micrometres, present only when the pixel size is known
    (the file's calibration or the request's ``pixel_size``); tables leave them out otherwise.
    """

    id: int
    centroid_x: float
    centroid_y: float
    area: int
    bbox_x: int
    bbox_y: int
    bbox_width: int
    bbox_height: int
    mean_intensity: float | None  # None: none of the object's pixels is finite (a float image's NaN)
    integrated_intensity: float
    mean_confidence: float
    area_um2: float | None = None
    centroid_x_um: float | None = None
    centroid_y_um: float | None = None
    equivalent_diameter_um: float | None = None
    # Its shape: the ellipse with its second moments (:func:`ellipse`).
    major_axis_length: float = 0.0
    minor_axis_length: float = 0.0
    eccentricity: float = 0.0
    orientation_deg: float = 0.0
    #: 1 where the object reaches the image's edge: perhaps cut by it (analysts often leave those out)
    touches_border: int = 0
    #: The cell around the object (``expand=``) and the channels measured besides the one segmented
    #: (``measure=``): ``(column, value)`` pairs in table order (``measured_channels.extra_columns``),
    #: after every other column. A cytoplasm's mean is None where the cell has no cytoplasm.
    extra_values: tuple[tuple[str, float | None], ...] = ()
    #: The cell's bounding box ``(x, y, width, height)`` where a slide's stream grew cells
    #: (``object_stream``), to outline it from the rows still held; not a column.
    cell_box: tuple[int, int, int, int] | None = None


#: The micrometre columns, in table order.
UM_FIELDS = ("area_um2", "centroid_x_um", "centroid_y_um", "equivalent_diameter_um")
#: Fields that are not columns of their own.
_NOT_COLUMNS = ("extra_values", "cell_box")
#: The segmented channel's intensity columns (the measured channels': ``channel_columns``).
INTENSITY_COLUMNS = ("mean_intensity", "integrated_intensity")


def ellipse(n: int, sx: int, sy: int, sxx: int, syy: int, sxy: int) -> dict[str, float]:
    """The shape columns of an object of ``n`` pixels from its coordinate sums (x: column, y: row;
    ``sxx`` the sum of x², ...): the ellipse with its second moments, as scikit-image's regionprops
    and ImageJ's Fit Ellipse take it. ``major_axis_length`` / ``minor_axis_length`` (px, 4√λ of
    the coordinates' covariance: a filled ellipse's own axes), ``eccentricity`` (0 round, → 1
    elongated) and ``orientation_deg``, the major axis's angle from the x axis counter-clockwise
    as the image is shown, 0–180 (ImageJ's Angle).

    Integer sums keep it exact: a slide's bands add up to the same sums as the whole image, so
    both give the same numbers.
    """
    n2 = float(n) * n
    vxx, vyy, vxy = (n * sxx - sx * sx) / n2, (n * syy - sy * sy) / n2, (n * sxy - sx * sy) / n2
    mean, spread = (vxx + vyy) / 2, math.hypot((vxx - vyy) / 2, vxy)
    large, small = mean + spread, max(mean - spread, 0.0)
    # rows grow downwards: counter-clockwise on screen is the angle with y flipped (covariance −vxy)
    angle = round(math.degrees(0.5 * math.atan2(-2 * vxy, vxx - vyy)) % 180, 2)
    return {
        "major_axis_length": round(4 * math.sqrt(large), 3),
        "minor_axis_length": round(4 * math.sqrt(small), 3),
        "eccentricity": round(math.sqrt(1 - small / large), 4) if large > 0 else 0.0,
        "orientation_deg": 0.0 if angle == 180.0 else angle,
    }


def measure(
    labels: np.ndarray,
    intensity: np.ndarray,
    probability: np.ndarray,
    pixel_size_um: tuple[float, float] | None = None,
    channels: Sequence[tuple[str, np.ndarray]] = (),
    cells: np.ndarray | None = None,
    rings: np.ndarray | None = None,
) -> list[ObjectRow]:
    """Per-object measurements.

    Args:
        labels: ``(H, W)`` int labels from :func:`label_objects`.
        intensity: ``(H, W)`` input intensity in its original units (gray).
        probability: ``(H, W)`` float foreground probability.
        pixel_size_um: ``(x, y)`` µm per pixel, to add the ``*_um`` fields; None leaves them out.
        channels: ``(key, (H, W) intensity)`` of other channels to measure each object in
            (``measured_channels.channel_key``): their mean and integrated intensity, as columns
            :func:`channel_columns` names.
        cells: ``(H, W)`` int, each object's cell (:func:`expand_cells`, the same ids): adds the
            cell's and its cytoplasm's area and, per channel, its intensity over the cytoplasm
            (the cell less its nucleus).
        rings: ``(H, W)`` int, each object's background ring (``background.ring_labels``, the same
            ids): adds per channel its local background (the ring's median) and its intensities
            less it, over the nucleus and, with ``cells``, over the cytoplasm.
    """
    count = int(labels.max(initial=0))
    if count == 0:
        return []
    # Sums over foreground pixels only: nuclei cover a fraction of the image, and this
    # avoids full-size coordinate grids (two float64 copies of the image).
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids = flat[where]
    rows_idx, cols_idx = np.divmod(where, labels.shape[1])
    area = np.bincount(ids, minlength=count + 1)
    sum_x = np.bincount(ids, weights=cols_idx, minlength=count + 1)
    sum_y = np.bincount(ids, weights=rows_idx, minlength=count + 1)
    # second moments for the shape (integers, exact in float64 below 2⁵³)
    sum_xx = np.bincount(ids, weights=cols_idx * cols_idx, minlength=count + 1)
    sum_yy = np.bincount(ids, weights=rows_idx * rows_idx, minlength=count + 1)
    sum_xy = np.bincount(ids, weights=cols_idx * rows_idx, minlength=count + 1)
    sum_i, finite_i = finite_sums(ids, intensity.ravel()[where], count + 1)
    counted_i = area if finite_i is None else finite_i  # the pixels each intensity mean is over
    sum_p = np.bincount(ids, weights=probability.ravel()[where].astype(np.float64), minlength=count + 1)
    for name, other in (("cells", cells), ("rings", rings)):
        if other is not None and other.shape != labels.shape:
            raise ValueError(f"the {name} are {other.shape}, the labels {labels.shape}")
    if cells is not None:
        # A cell's cytoplasm: its pixels outside every nucleus (its own, and no other's).
        cyto_flat = np.where(flat == 0, cells.ravel(), 0)
        cyto_where = np.flatnonzero(cyto_flat)
        cyto_ids = cyto_flat[cyto_where]
        cyto_area = np.bincount(cyto_ids, minlength=count + 1)[: count + 1]
    per_channel = []
    for key, pixels in channels:
        if pixels.shape != labels.shape:
            raise ValueError(f"channel {key!r} is {pixels.shape}, the labels {labels.shape}")
        sums = finite_sums(ids, pixels.ravel()[where], count + 1)
        cyto = None if cells is None else finite_sums(cyto_ids, pixels.ravel()[cyto_where], count + 1)
        local = None if rings is None else ring_medians(rings, pixels, count)
        per_channel.append((key, sums, cyto, local))

    def extra(i: int, n: float) -> tuple[tuple[str, float | None], ...]:
        values: list[tuple[str, float | None]] = []
        if cells is not None:
            cell_area = int(area[i] + cyto_area[i])
            values += [("cell_area", cell_area), ("cytoplasm_area", int(cyto_area[i]))]
            if pixel_size_um is not None:
                values.append(("cell_area_um2", round(cell_area * pixel_size_um[0] * pixel_size_um[1], 6)))
        for key, (sums, finite), cyto, local in per_channel:
            counted = n if finite is None else finite[i]
            values += intensity_columns(channel_columns(key), sums[i], counted)
            if cyto is not None:
                cyto_sums, cyto_finite = cyto
                m = int(cyto_area[i]) if cyto_finite is None else int(cyto_finite[i])
                values += intensity_columns(cytoplasm_columns(key), cyto_sums[i], m)
            if local is not None:
                ring = float(local[i])
                values.append((background_column(key), round(ring, 4) if np.isfinite(ring) else None))
                values += corrected_columns(channel_corrected_columns(key), sums[i], counted, ring)
                if cyto is not None:
                    values += corrected_columns(cytoplasm_corrected_columns(key), cyto_sums[i], m, ring)
        return tuple(values)

    boxes = ndimage.find_objects(labels)
    height, width = labels.shape
    rows = []
    for i in range(1, count + 1):
        box = boxes[i - 1]
        if box is None or area[i] == 0:
            continue
        n = float(area[i])
        edge = box[0].start == 0 or box[1].start == 0 or box[0].stop == height or box[1].stop == width
        rows.append(
            ObjectRow(
                id=i,
                centroid_x=round(sum_x[i] / n, 2),
                centroid_y=round(sum_y[i] / n, 2),
                area=int(area[i]),
                bbox_x=box[1].start,
                bbox_y=box[0].start,
                bbox_width=box[1].stop - box[1].start,
                bbox_height=box[0].stop - box[0].start,
                **dict(intensity_columns(INTENSITY_COLUMNS, sum_i[i], counted_i[i])),
                mean_confidence=round(sum_p[i] / n, 4),
                **ellipse(int(area[i]), int(sum_x[i]), int(sum_y[i]), int(sum_xx[i]), int(sum_yy[i]),
                          int(sum_xy[i])),
                touches_border=int(edge),
                extra_values=extra(i, n),
            )
        )
    if pixel_size_um is not None:
        rows = [calibrate(row, pixel_size_um) for row in rows]
    return rows


def calibrate(row: ObjectRow, pixel_size_um: tuple[float, float]) -> ObjectRow:
    """``row`` with its micrometre fields: area × pixel area, centroid × pixel size, and the
    diameter of the circle of that area."""
    px, py = pixel_size_um
    area_um2 = row.area * px * py
    return replace(
        row,
        area_um2=round(area_um2, 6),
        centroid_x_um=round(row.centroid_x * px, 4),
        centroid_y_um=round(row.centroid_y * py, 4),
        equivalent_diameter_um=round(2.0 * float(np.sqrt(area_um2 / np.pi)), 4),
    )


def table_fields(
    calibrated: bool, channel_keys: Sequence[str] = (), cells: bool = False, background: bool = False
) -> list[str]:
    """The object table's columns: pixel ones, plus the micrometre ones when ``calibrated``, plus
    the cells' (``cells``: ``expand=``) and two or four per channel measured (``channel_keys``),
    three or five more with its local background (``background``: ``background_ring=``):
    ``measured_channels.extra_columns``."""
    own = [f for f in ObjectRow.__dataclass_fields__
           if f not in _NOT_COLUMNS and (calibrated or f not in UM_FIELDS)]
    return own + extra_columns(channel_keys, cells, calibrated, background)


def row_dicts(
    rows: list[ObjectRow],
    calibrated: bool,
    channel_keys: Sequence[str] = (),
    cells: bool = False,
    background: bool = False,
) -> list[dict]:
    """Rows as dicts with exactly :func:`table_fields` (``output=objects`` as JSON)."""
    own = table_fields(calibrated)
    extra = extra_columns(channel_keys, cells, calibrated, background)
    out = []
    for row in rows:
        values = dict(row.extra_values)
        if sorted(values) != sorted(extra):
            raise ValueError(f"row {row.id} measures {sorted(values)}, the table {sorted(extra)}")
        out.append({**{f: getattr(row, f) for f in own}, **{c: values[c] for c in extra}})
    return out


def rows_to_csv(
    rows: list[ObjectRow],
    calibrated: bool = False,
    channel_keys: Sequence[str] = (),
    cells: bool = False,
    background: bool = False,
) -> str:
    """Object table as CSV text with a header row (also for an empty table); the micrometre
    columns when ``calibrated``; the cells' for ``cells``; the measured channels' for
    ``channel_keys``, with their local background's for ``background``."""
    buffer = io.StringIO()
    fields = table_fields(calibrated, channel_keys, cells, background)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row_dicts(rows, calibrated, channel_keys, cells, background))
    return buffer.getvalue()


def expand_cells(labels: np.ndarray, distance: float) -> np.ndarray:
    """Each object's cell: the object grown by up to ``distance`` px into the background, never into
    another's (a pixel goes to the nearest object), as QuPath's cell expansion approximates cells
    from nuclei. ``(H, W)`` int32 with the objects' ids (scikit-image's ``expand_labels``: a
    distance transform of the background, ~24 bytes a pixel while it runs)."""
    return expand_labels(labels, distance=distance).astype(np.int32, copy=False)


def outline(mask: np.ndarray, top: int, left: int) -> list[list[float]]:
    """Closed outer ring of a binary crop along pixel edges, in image coordinates.

    Pixel (r, c) spans [c, c+1) × [r, r+1), as in QuPath, so the ring's area is exactly the
    pixel count. OpenCV traces the crop enlarged ×2: there, the boundary pixels of an
    object sit just inside its pixel edges, and index ``i`` maps to edge coordinate
    ``ceil(i / 2)`` (index 2k is the top/left edge k of pixel k, 2k + 1 its bottom/right
    edge k + 1). One C++ call per object instead of marching squares assembled in Python.
    """
    grown = cv2.resize(_framed(mask.astype(np.uint8)), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ring = max(contours, key=cv2.contourArea) if len(contours) > 1 else contours[0]
    xy = (ring.reshape(-1, 2) + 1) >> 1
    step = np.diff(xy, axis=0, append=xy[:1])  # vertex i → i + 1
    # A diagonal step of the ×2 trace collapses onto one corner: drop the repeated vertex
    # (the steps of the others stay right, since it equals its successor).
    moves = step.any(axis=1)
    xy, step = xy[moves], step[moves]
    # Keep corners only, the vertices where the direction turns.
    before = np.roll(step, 1, axis=0)
    xy = xy[before[:, 0] * step[:, 1] != before[:, 1] * step[:, 0]]
    if cv2.contourArea(xy, oriented=True) < 0:  # same sign convention as _shoelace
        xy = xy[::-1]
    coords = (xy + (left - 1, top - 1)).tolist()  # -1 undoes the one-pixel pad
    if len(set(map(tuple, coords))) < len(coords):
        # Parts touching only at a corner make the ring touch itself (invalid in JTS, so in
        # QuPath); marching squares cuts that corner instead. Rare: a pixel-thin link.
        return _outline_marching_squares(mask, top, left)
    coords.append(coords[0])
    return coords


def _outline_marching_squares(mask: np.ndarray, top: int, left: int) -> list[list[float]]:
    """Outer ring by marching squares at level 0.5: midway between inside and outside pixel
    centres, so corners are cut (area within a few % of the pixel count for nuclei), and
    pixels touching at a corner stay joined by a narrow neck (``fully_connected``)."""
    contours = find_contours(_framed(mask.astype(np.float32)), 0.5, fully_connected="high")
    ring = max(contours, key=lambda c: abs(_shoelace(c[:, ::-1])))[:, ::-1]  # (row, col) → (x, y)
    if np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if _shoelace(ring) < 0:
        ring = ring[::-1]
    # Undo the one-pixel pad (-1), pixel centres to corners (+0.5).
    coords = np.round(ring + (left - 0.5, top - 0.5), 3).tolist()
    coords.append(coords[0])
    return coords


def _shoelace(xy: np.ndarray) -> float:
    """Signed area of a ring of (x, y) vertices: positive when the ring runs counter-clockwise
    in a y-up frame, the exterior-ring order of GeoJSON (RFC 7946)."""
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a large acyclic structure.

    Each of its collections re-scans every container allocated so far, so building ~10⁵
    small lists costs twice as much with it running (measured on 2660 outlines: 0.38 s
    vs 0.19 s). Nothing built here forms a cycle; reference counting frees it all.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_geojson(
    labels: np.ndarray,
    rows: list[ObjectRow],
    classification: str = "Nucleus",
    properties: Mapping[str, object] | None = None,
    cells: np.ndarray | None = None,
) -> dict:
    """A GeoJSON FeatureCollection QuPath imports: one Polygon detection per object, or with
    ``cells`` (:func:`expand_cells`) one QuPath cell per object, its cell's outline the geometry
    and its nucleus's the ``nucleusGeometry``.

    ``properties``: the collection's own (a foreign member GeoJSON readers keep), e.g. the pixel
    size and the plane segmented. Rows with micrometre fields add them to each measurement list.
    """
    with _gc_paused():
        if cells is None:
            collection = _feature_collection(labels, rows, classification)
        else:
            features = [
                feature(row, cell_ring, "Cell", nucleus_ring=nucleus_ring)
                for (row, nucleus_ring), (_, cell_ring) in zip(
                    outlines(labels, rows), outlines(cells, rows), strict=True
                )
            ]
            collection = {"type": "FeatureCollection", "features": features}
    if properties:
        collection["properties"] = dict(properties)
    return collection


def outlines(labels: np.ndarray, rows: list[ObjectRow]) -> Iterator[tuple[ObjectRow, list[list[float]]]]:
    """Each object's closed outer ring along its pixel edges, in image coordinates (x, y)."""
    boxes = ndimage.find_objects(labels)
    for row in rows:
        box = boxes[row.id - 1]
        yield row, outline(labels[box] == row.id, box[0].start, box[1].start)


def _feature_collection(labels: np.ndarray, rows: list[ObjectRow], classification: str) -> dict:
    features = [feature(row, ring, classification) for row, ring in outlines(labels, rows)]
    return {"type": "FeatureCollection", "features": features}


def feature(
    row: ObjectRow,
    ring: list[list[float]],
    classification: str = "Nucleus",
    nucleus_ring: list[list[float]] | None = None,
) -> dict:
    """One object as the GeoJSON Feature QuPath imports as a detection: its outline ``ring``
    (from :func:`outline`) and its measurements under QuPath's own names. With ``nucleus_ring``,
    a QuPath cell: ``ring`` is the cell's outline, ``nucleus_ring`` its nucleus's (the
    ``nucleusGeometry`` member QuPath reads)."""
    cell = {}
    if nucleus_ring is not None:
        cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": [nucleus_ring]}
    return {
        "type": "Feature",
        "id": str(row.id),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        **cell,
        "properties": {
            "objectType": "detection" if nucleus_ring is None else "cell",
            "name": f"{classification} {row.id}",
            "classification": {"name": classification},
            "measurements": {
                "Area px^2": row.area,
                "Centroid X px": row.centroid_x,
                "Centroid Y px": row.centroid_y,
                **({} if row.mean_intensity is None else {"Mean intensity": row.mean_intensity}),
                "Integrated intensity": row.integrated_intensity,
                "Mean confidence": row.mean_confidence,
                "Major axis px": row.major_axis_length,
                "Minor axis px": row.minor_axis_length,
                "Eccentricity": row.eccentricity,
                "Orientation deg": row.orientation_deg,
                "Touches border": row.touches_border,
                **_um_measurements(row),
                # QuPath reads measurements as numbers: a mean without a pixel to take it over is left out
                **{name: value for name, value in row.extra_values if value is not None},
            },
        },
    }


def _um_measurements(row: ObjectRow) -> dict[str, float]:
    if row.area_um2 is None:
        return {}
    return {  # QuPath's own names for calibrated measurements
        "Area µm^2": row.area_um2,
        "Centroid X µm": row.centroid_x_um,
        "Centroid Y µm": row.centroid_y_um,
        "Equivalent diameter µm": row.equivalent_diameter_um,
    }


#: Time stamp of every member of an ROI set: the ZIP format's epoch (the clock's time made the
#: bytes of one answer depend on the second it was written).
ROI_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def to_imagej_rois(
    labels: np.ndarray,
    rows: list[ObjectRow],
    position: tuple[int | None, int | None, int | None] | None = None,
    classification: str = "Nucleus",
    cells: np.ndarray | None = None,
) -> bytes:
    """An ImageJ ROI set (the ``.zip`` Fiji's ROI Manager opens): one ROI per object, and with
    ``cells`` (:func:`expand_cells`) its cell's after it (``Cell N``).

    Outlines run along pixel edges with integer corner coordinates, ImageJ's own convention for
    traced (wand) ROIs, so each ROI covers exactly its object's pixels in Fiji. ``position``:
    0-based (channel, z, t) of the plane segmented, stored so that Fiji shows each ROI on that
    plane of a hyperstack (None entries: not set).
    """
    import roifile  # only for output=rois

    c, z, t = position or (None, None, None)
    kinds = [(classification, labels)] + ([("Cell", cells)] if cells is not None else [])
    buffer = io.BytesIO()
    with _gc_paused(), zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for traced in zip(*(outlines(image, rows) for _, image in kinds), strict=True):
            for (kind, _), (row, ring) in zip(kinds, traced, strict=True):
                points = np.asarray(ring[:-1])
                roi = roifile.ImagejRoi.frompoints(points, name=f"{kind} {row.id}", c=c, z=z, t=t)
                if roi.subpixel_coordinates is None:
                    roi.roitype = roifile.ROI_TYPE.TRACED  # pixel-edge outline, as Fiji's wand makes
                # A fixed time stamp, not the clock's: the same objects give the same bytes (an answer
                # from the prediction cache equals a fresh one; two requests a second apart differed).
                member = zipfile.ZipInfo(f"{row.id:05d}-{kind.lower()}.roi", date_time=ROI_ZIP_TIME)
                member.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(member, roi.tobytes())
    return buffer.getvalue()


def encode_labels(labels: np.ndarray) -> tuple[bytes, str]:
    """Label image as bytes and its media type.

    A 16-bit PNG up to 65535 objects; past that a 32-bit TIFF, never wrap-around.
    """
    top = int(labels.max(initial=0))
    if top <= MAX_PNG_LABEL:
        ok, buf = cv2.imencode(".png", labels.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RuntimeError("PNG encoding of the label image failed")
        return buf.tobytes(), "image/png"
    from PIL import Image  # only for the rare >65535-object case: OpenCV cannot write int32 TIFF

    out = io.BytesIO()
    Image.fromarray(labels.astype(np.int32), mode="I").save(out, format="TIFF", compression="tiff_deflate")
    return out.getvalue(), "image/tiff"
