"""One decoded image → the model's outputs on the image's own grid, at the model's nucleus scale.

The glue that the service's routes and ``model_export.evaluate`` share:

1. :func:`choose_scale`: the nucleus diameter from the request, else estimated
   (``service.diameter``), → a resize factor to the model's ``nucleus_diameter``;
2. :func:`predict_scaled`: resize, then ``segment.predict`` (tiling, batching, stitching);
3. :func:`on_input_grid`: foreground probability, mask and labels back on the input's grid —
   objects are found at the model's scale (where the splitting parameters were chosen),
   then labels come back by nearest neighbour and probabilities smoothly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service import objects, postprocess, rescale, segment
from service.diameter import estimate_diameter
from service.model_metadata import ModelMetadata

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
    params: objects.ObjectParams,
    threshold: float | None,
    diameter: float | None,
    max_pixels: int,
) -> ScaleChoice:
    """The scale to segment ``image`` at; ``diameter`` (px) from the request wins over an estimate.

    The resized image never exceeds ``max_pixels`` (the service's own pixel limit): a
    factor that would is reduced, with a warning.
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
        estimate = estimate_diameter(image, infer, metadata, params, threshold)
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
    """``segment.predict`` on the image resized by ``scale.factor`` (probabilities at the model's scale)."""
    resized = rescale.resize_image(image, scale.factor)
    return segment.predict(resized, infer, metadata, **predict_options)  # type: ignore[arg-type]


@dataclass
class GridOutputs:
    """The model's answer on the input's grid: ``probability`` ``(H, W)`` float32, ``mask`` 0/255 uint8,
    ``labels`` int32 (None when not asked for), ``count`` of objects (None when not asked for)."""

    probability: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    count: int | None = None


def on_input_grid(
    prediction: segment.Prediction,
    metadata: ModelMetadata,
    shape: tuple[int, int],
    threshold: float,
    params: objects.ObjectParams | None,
    count_only: bool = False,
) -> GridOutputs:
    """Foreground probability, mask and (when ``params`` is given) object labels at ``shape``.

    Objects are split at the model's scale, on the stitched full-image maps (so a nucleus
    cut by a tile border is one object), then brought back by nearest neighbour and
    renumbered in raster order. ``count_only``: only count them (``objects.count_prediction``,
    a fraction of the cost; ``labels`` stays None).
    """
    prob = postprocess.foreground_probability(prediction, metadata)
    mask = postprocess.mask(prob, threshold)
    labels = count = None
    if params is not None and count_only:
        count = objects.count_prediction(mask > 0, prediction.probabilities, params)
    elif params is not None:
        labels = objects.label_prediction(mask > 0, prediction.probabilities, params)
    if prob.shape != tuple(shape):
        prob = rescale.resize_maps(prob[None], shape)[0]
        mask = postprocess.mask(prob, threshold)  # thresholded on the input grid, after smoothing
        if labels is not None:
            labels = rescale.renumber(rescale.resize_labels(labels, shape))
    if labels is not None:
        count = int(labels.max(initial=0))
    return GridOutputs(prob, mask, labels, count)
