"""One decoded image → the model's outputs on the image's own grid, at the model's nucleus scale.

The glue that the service's routes and ``model_export.evaluate`` share:

1. :func:`choose_scale`: the nucleus diameter from the request, else estimated
   (``service.diameter``), → a resize factor to the model's ``nucleus_diameter``;
2. :func:`predict_scaled`: resize, then ``segment.predict`` (tiling, batching, stitching);
   :func:`predict_plane` does 1–2 for a selected plane with the warnings a caller shows (what
   ``POST /segment``, jobs and the Python API run);
3. :func:`on_input_grid`: foreground probability, mask and labels back on the input's grid —
   objects are found at the model's scale (where the splitting parameters were chosen),
   then labels come back by nearest neighbour and probabilities smoothly.

Large images take the windowed path (``service.windows``, chosen in :func:`predict_plane` by a
``windows.WindowPolicy``): :func:`predict_plane` then answers a ``windows.WindowedPrediction``
that runs in :func:`on_input_grid`, band by band, without full-size float maps; the outputs are
the same pixels as the in-memory path's (both resample with ``rescale.resample_axis``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service import objects, postprocess, rescale, segment, windows
from service.diameter import PROBE_FACTORS, estimate_diameter
from service.modality import check_modality
from service.model_metadata import ModelMetadata
from service.polarity import DarkToBright, DarkToBrightSource, Polarity
from service.prediction_cache import PlaneEntry, array_bytes, frozen
from service.preprocess import to_channels
from service.regions import ArraySource, RegionSource

DiameterSource = Literal["request", "estimated", "model-scale"]


@dataclass(frozen=True)
class ScaleChoice:
    """How the image is brought to the model.

    ``diameter``: typical nucleus diameter in input px (None: not known); ``source``:
    where it came from (``model-scale``: nothing to go by, the image is used as it is);
    ``factor``: model px per input px (1.0: no resize); ``warning``: for the user, if any.
    """

    diameter: float | None
    source: DiameterSource
    factor: float
    warning: str | None = None


def choose_scale(
    image: np.ndarray,
    infer: segment.Infer,
    metadata: ModelMetadata,
    diameter: float | None,
    max_pixels: int,
    batch_size: int | None = None,
) -> ScaleChoice:
    """The scale to segment ``image`` at; ``diameter`` (px) from the request wins over an estimate.

    The estimate reads the model's own answer — its threshold and its object settings — whatever
    the request asks of its objects: the nucleus size is the image's, and a threshold slider or a
    split choice must not move the scale the image is segmented at (nor make the model run again
    for a prediction it already made: ``service.prediction_cache``).

    The resized image never exceeds ``max_pixels`` (the service's own pixel limit): a
    factor that would is reduced, with a warning. ``batch_size``: most windows the estimate
    hands ``infer`` at once (the request's tile batch; None: no limit).
    """
    model_diameter = metadata.nucleus_diameter
    if model_diameter is None:
        if diameter is not None:
            raise ValueError(
                f"diameter={diameter:g} needs a model that records its nucleus diameter; "
                f"{metadata.name} {metadata.version} does not (it segments images at their own scale)"
            )
        return ScaleChoice(None, "model-scale", 1.0)
    source: DiameterSource = "request"
    if diameter is None:
        own = objects.params_for_model(metadata)
        estimate = estimate_diameter(image, infer, metadata, own, metadata.threshold, batch_size=batch_size)
        if estimate.out_of_range is not None:
            return ScaleChoice(
                None,
                "model-scale",
                1.0,
                f"the size estimate read {estimate.out_of_range:.1f} px, outside the "
                f"{model_diameter / max(PROBE_FACTORS):.0f}–{model_diameter / min(PROBE_FACTORS):.0f} px "
                "it can measure (a field without nuclei reads as specks of noise); the image was "
                "segmented as it is (send diameter=... if it does hold nuclei)",
            )
        if estimate.not_nuclei is not None:
            return ScaleChoice(
                None,
                "model-scale",
                1.0,
                f"the size estimate read {estimate.not_nuclei:.1f} px, but the objects it measured did "
                "not grow with the image as nuclei do (noise or debris in a near-empty field?); the "
                "image was segmented as it is (send diameter=... if it does hold nuclei)",
            )
        if estimate.diameter is None:
            return ScaleChoice(
                None,
                "model-scale",
                1.0,
                "no nuclei were found at any scale while estimating their size; the image was "
                "segmented as it is (send diameter=... if it does hold nuclei)",
            )
        diameter, source = estimate.diameter, "estimated"
    factor = rescale.factor_for(diameter, model_diameter)
    warning = None
    h, w = image.shape[:2]
    if h * w * factor * factor > max_pixels:
        capped = math.sqrt(max_pixels / (h * w))
        warning = (
            f"nuclei of {diameter:.1f} px would need the image enlarged ×{factor:.2f}, past the "
            f"server's pixel limit; it was enlarged ×{capped:.2f} only, so small nuclei may merge"
        )
        factor = capped if capped > 1 / rescale.SKIP_RESIZE_RATIO else 1.0
    return ScaleChoice(float(diameter), source, factor, warning)


def predict_scaled(
    image: np.ndarray,
    scale: ScaleChoice,
    infer: segment.Infer,
    metadata: ModelMetadata,
    **predict_options: object,
) -> segment.Prediction:
    """``segment.predict`` on the image resized by ``scale.factor`` (probabilities at the model's scale).

    The resize is ``rescale.resample_image`` (global separable taps), which the windowed path
    (``service.windows``) applies window by window with the same result.
    """
    if scale.factor == 1.0:
        return segment.predict(image, infer, metadata, **predict_options)  # type: ignore[arg-type]
    channels = to_channels(image, metadata.in_channels)
    resized = rescale.resample_image(channels, rescale.scaled_shape(image.shape[:2], scale.factor))
    del channels
    return segment.predict(resized, infer, metadata, **predict_options)  # type: ignore[arg-type]


@dataclass
class PlanePrediction:
    """:func:`predict_plane`'s answer: the scale chosen, the prediction at it, what to tell the user,
    and how long choosing the scale (the estimate, when there was one) and predicting took, in ms
    (a wait inside ``reserve`` counts in neither); ``reused``: the prediction was kept from an
    earlier request (``predict_plane``'s ``kept``)."""

    scale: ScaleChoice
    prediction: segment.Prediction | windows.WindowedPrediction
    warnings: list[str] = field(default_factory=list)
    scale_ms: float = 0.0
    predict_ms: float = 0.0
    reused: bool = False  # the prediction came from the cache: the model did not run for it


def predict_plane(
    image: np.ndarray,
    infer: segment.Infer,
    metadata: ModelMetadata,
    diameter: float | None,
    max_pixels: int,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    reserve: Callable[[int], None] | None = None,
    window_policy: windows.WindowPolicy | None = None,
    kept: PlaneEntry | None = None,
    polarity: Polarity = "bright",
) -> PlanePrediction:
    """One selected plane → the model's prediction at the nucleus scale, with the user's warnings.

    The modality check (colour / bright-field images get a warning, not a refusal), the scale
    (:func:`choose_scale`; ``diameter`` from the request wins), then :func:`predict_scaled`.
    ``reserve(pixels)`` is called once the scale is known, with the pixels the model will work
    on, before any tile runs (admission may wait or refuse there); ``should_stop`` and
    ``progress(done, total)`` go to ``segment.predict``.

    ``window_policy``: images of at least ``min_pixels`` model pixels take the windowed path: the
    answer's ``prediction`` is then a ``windows.WindowedPrediction`` that has not run yet
    (:func:`on_input_grid` runs it band by band). None: always in memory.

    ``kept``: this plane's entry in the service's prediction cache (``service.prediction_cache``):
    the scale chosen before for the same ``diameter`` (or its estimate) and the in-memory prediction
    made before at that scale are reused (``reused`` in the answer), and new ones are kept there
    (the caller keys ``kept`` by ``polarity`` too).

    ``polarity``: ``dark`` turns the image into its optical density before anything else sees it
    (``service.polarity``: dark nuclei on a bright field become bright on dark); ``image`` stays
    as it is for the caller's outputs (the overlay draws on it).
    """
    warnings: list[str] = []
    modality_warning = check_modality(image).warning_for(polarity)
    if modality_warning:
        warnings.append(modality_warning)
    turn = DarkToBright.of(image, metadata.in_channels) if polarity == "dark" else None
    source: RegionSource = ArraySource(image)
    if turn is not None:
        source = DarkToBrightSource(source, turn)  # band by band: each window turned as it is read

    @functools.cache
    def model_view() -> np.ndarray:
        """The image as the model reads it. Turned once, when first needed (kept scales and
        predictions need none): a float32 copy of the model's channels, 4 bytes per pixel, held
        while the scale is chosen and, in memory, while the model runs."""
        return image if turn is None else turn(image)

    started = time.perf_counter()

    def new_scale() -> ScaleChoice:
        return choose_scale(model_view(), infer, metadata, diameter, max_pixels, batch_size)

    scale = new_scale() if kept is None else kept.scale(diameter, new_scale)[0]
    if scale.warning:
        warnings.append(scale.warning)
    scale_ms = 1000 * (time.perf_counter() - started)
    model_pixels = math.prod(rescale.scaled_shape(image.shape[:2], scale.factor))
    if reserve is not None:
        reserve(model_pixels)
    started = time.perf_counter()
    prediction: segment.Prediction | windows.WindowedPrediction
    if window_policy is not None and model_pixels >= window_policy.min_pixels:
        model_view.cache_clear()  # band by band, the source turns each window as it reads it
        prediction = windows.WindowedPrediction.prepare(
            source,
            scale.factor,
            infer,
            metadata,
            tile_size=window_policy.tile_size or tile_size,
            overlap=overlap,
            batch_size=window_policy.batch_size,
            should_stop=should_stop,
            progress=progress,
        )
        return PlanePrediction(scale, prediction, warnings, scale_ms, 0.0)

    def new_prediction() -> segment.Prediction:
        return predict_scaled(
            model_view(),
            scale,
            infer,
            metadata,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            should_stop=should_stop,
            progress=progress,
        )

    reused = False
    if kept is None:
        prediction = new_prediction()
    else:

        def give_up_if_stopped() -> None:  # while another request computes this very prediction
            if should_stop is not None and should_stop():
                raise segment.Cancelled("stopped while waiting for the same image's prediction")

        prediction, reused = kept.prediction(scale.factor, new_prediction, _kept_bytes, give_up_if_stopped)
    predict_ms = 1000 * (time.perf_counter() - started)
    return PlanePrediction(scale, prediction, warnings, scale_ms, predict_ms, reused)


def _kept_bytes(prediction: segment.Prediction) -> int:
    """Bytes a kept prediction holds; its arrays are made read-only, as later requests share them."""
    frozen(prediction.probabilities, prediction.input_grey)
    return array_bytes(prediction.probabilities, prediction.input_grey)


@dataclass
class GridOutputs:
    """The model's answer on the input's grid: ``probability`` ``(H, W)`` float32 (None when not
    asked for), ``mask`` 0/255 uint8, ``labels`` int32 (None when not asked for), ``count`` of
    objects (None when not asked for); ``warnings`` for the user (the windowed path's)."""

    probability: np.ndarray | None
    mask: np.ndarray
    labels: np.ndarray | None
    count: int | None = None
    warnings: list[str] = field(default_factory=list)


def on_input_grid(
    prediction: segment.Prediction | windows.WindowedPrediction,
    metadata: ModelMetadata,
    shape: tuple[int, int],
    threshold: float,
    params: objects.ObjectParams | None,
    count_only: bool = False,
    need: Collection[str] | None = None,
) -> GridOutputs:
    """Foreground probability, mask and (when ``params`` is given) object labels at ``shape``.

    Objects are split at the model's scale, on the stitched full-image maps (so a nucleus
    cut by a tile border is one object), then brought back by nearest neighbour and
    renumbered in raster order. ``count_only``: only count them (``objects.count_prediction``,
    a fraction of the cost; ``labels`` stays None). ``need``: the arrays the caller keeps
    (``outputs.NEEDS`` names; None: all); a windowed prediction leaves the probability out
    unless it is needed (the mask always comes).
    """
    if isinstance(prediction, windows.WindowedPrediction):
        return _windowed_grid(prediction, shape, threshold, params, count_only, need)
    prob = postprocess.foreground_probability(prediction, metadata)
    mask = postprocess.mask(prob, threshold)
    labels = count = None
    around = None if params is None else surroundings(prediction, mask > 0, params)
    if params is not None and count_only:
        count = objects.count_prediction(mask > 0, prediction.probabilities, params, around)
    elif params is not None:
        labels = objects.label_prediction(mask > 0, prediction.probabilities, params, around)
    if prob.shape != tuple(shape):
        prob = rescale.resize_maps(prob[None], shape)[0]
        mask = postprocess.mask(prob, threshold)  # thresholded on the input grid, after smoothing
        if labels is not None:
            labels = rescale.renumber(rescale.resize_labels(labels, shape))
    if labels is not None:
        count = int(labels.max(initial=0))
    return GridOutputs(prob, mask, labels, count)


def surroundings(
    prediction: segment.Prediction, marked: np.ndarray, params: objects.ObjectParams
) -> objects.Surroundings | None:
    """What ``params``' contrast cut reads around the objects of an in-memory prediction (its
    model input and ``marked``, the thresholded mask); None when ``params`` has no such cut."""
    if params.min_snr <= 0:
        return None
    if prediction.input_grey is None:
        raise ValueError("min_snr needs the model's input: a model whose objects record min_snr keeps it")
    return objects.Surroundings(prediction.input_grey, marked)


def _windowed_grid(
    prediction: windows.WindowedPrediction,
    shape: tuple[int, int],
    threshold: float,
    params: objects.ObjectParams | None,
    count_only: bool,
    need: Collection[str] | None,
) -> GridOutputs:
    """:func:`on_input_grid` of a windowed prediction: run it band by band into the full-size
    outputs asked for (uint8 mask; int32 labels and float32 probability only when needed)."""
    want_labels = params is not None and not count_only
    want_probability = need is None or "probability" in need
    height, width = shape
    mask = np.empty((height, width), np.uint8)
    labels = np.zeros((height, width), np.int32) if want_labels else None
    probability = np.empty((height, width), np.float32) if want_probability else None
    done = 0
    order = _FirstSeen()
    for band in prediction.bands(
        threshold, params, labels=want_labels, probability=want_probability, count_only=count_only
    ):
        rows = slice(band.y0, band.y0 + band.mask.shape[0])
        mask[rows] = band.mask
        if labels is not None:
            labels[rows] = band.labels
            order.add(band.labels)
        if probability is not None:
            probability[rows] = band.probability
        done = band.objects_done
    count = None
    if labels is not None:
        # band order → raster order of first pixels (rescale.renumber's ids), a band at a time
        lut = order.lut()
        for start in range(0, height, windows.OUTPUT_ROWS):
            labels[start : start + windows.OUTPUT_ROWS] = lut[labels[start : start + windows.OUTPUT_ROWS]]
        count = int(lut.max(initial=0))
    elif params is not None:
        count = done
    return GridOutputs(probability, mask, labels, count, list(prediction.warnings))


class _FirstSeen:
    """Label ids in raster order of their first pixel, fed band by band from the top: the order
    ``rescale.renumber`` gives the whole image, without its full-size sort."""

    def __init__(self) -> None:
        self.order: list[np.ndarray] = []
        self.seen = np.zeros(1, bool)

    def add(self, labels: np.ndarray) -> None:
        ids, first = rescale.first_pixels(labels)
        if ids.size and ids[-1] >= self.seen.size:
            self.seen = np.concatenate([self.seen, np.zeros(int(ids[-1]) + 1 - self.seen.size, bool)])
        new = (ids != 0) & ~self.seen[ids]
        self.order.append(ids[new][np.argsort(first[new], kind="stable")])
        self.seen[ids] = True

    def lut(self) -> np.ndarray:
        """``lut[id]``: the id's rank among first pixels (1..N), 0 for the background."""
        ranked = np.concatenate([np.zeros(0, np.int64), *self.order])
        lut = np.zeros(self.seen.size, np.int32)
        lut[ranked] = np.arange(1, ranked.size + 1, dtype=np.int32)
        return lut
