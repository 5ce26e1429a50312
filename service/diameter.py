"""How large are the nuclei in this image? A quick model pass at a few scales.

The model was trained on nuclei about ``nucleus_diameter`` px across (× up to 1.5 either
way). Shown nuclei far larger, it sees their chromatin spots as nuclei; far smaller, it
merges them. So the estimate probes a small window of the image at a ladder of scales
(×4 … ×1/16, steps of √2) and looks for the *plateau*: consecutive scales at which the
objects it finds, divided by the scale, give the same size in image pixels (see
:func:`_plateau`). That size is the image's nucleus diameter. A few more probes at the
scale each estimate implies refine it (the model pulls sizes toward the one it learned,
so the estimate converges where the objects come out exactly that size). Before an estimate
may enlarge the image, the first of those steps must show its objects growing with the scale
(:data:`MIN_GROWTH`): specks of noise do not.

This follows Cellpose's idea of a size estimate before segmentation (there a regression
on the network's style vector, refined by a first segmentation's median mask diameter);
here the segmentation itself at several scales is the size model, which needs no second
network and works for any exported model that records its diameter.

Cost: at most ``len(factors) + REFINE_STEPS`` windows of ``probe_size``² model pixels (16 windows,
~1 MP of model work with the defaults, about what a 1024² image costs), whatever the image size;
the ladder's windows of one shape go to the model together (up to the caller's batch size). Its
middle probes go first and settle the estimate alone on images of nuclei near the model's size
(:data:`FIRST_LOOK_FACTORS`): then 3–7 windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from service.model_metadata import ModelMetadata, Normalization
from service.objects import ObjectParams, label_objects
from service.preprocess import normalize, percentile_limits, to_channels
from service.rescale import scaled_shape
from service.segment import apply_activation

#: ``(1, C, h, w) float32`` → raw outputs ``(1, K, h, w)``: the service's batcher or an Engine.
Infer = Callable[[np.ndarray], np.ndarray]

#: Resize factors tried, model px per image px, in steps of √2: nuclei from ~3 px to ~500 px
#: across map into the model's ×1.5 range at several of them. √2 rather than 2 so that the
#: plateau of nuclei seen whole spans at least three probes (see :func:`_plateau`).
PROBE_FACTORS = tuple(2.0 ** (k / 2) for k in range(4, -9, -1))
#: Edge of the probe window, in model pixels.
PROBE_SIZE = 256
#: A probe counts when it finds at least this many whole nuclei (not cut by the window).
#: Two, not more: nuclei of 60–120 px in an image of a few hundred px leave only two or three
#: whole ones at the scales that see them whole (the rest touch the image's edge), and with
#: three the ladder read texture spots or background blobs instead on 3 of 6 synthetic images
#: of radius 40 and of 60 (seeds 7004000–05, 7006000–05; issue #13); a long run of scales
#: agreeing on the size (:func:`_plateau`) is the evidence, not the count at one scale.
#: Unchanged on the 105 DSB validation images (every estimate the same).
MIN_OBJECTS = 2
#: A run of at least this many neighbouring probes that each find exactly one whole object, of one
#: size in image px (a ×2 range of scales at least), is a nucleus measured: a field with a single
#: nucleus, or one large nucleus whole in a small image. It is taken when it is longer than the run
#: of probes finding several (:func:`_plateau`); before, a lone probe of noise specks there won (two
#: near-empty fields enlarged ×3.7 and ×3.1 into specks while nine and seven probes agreed on one
#: nucleus of 46 / 38 px; issue #13). Every DSB and synthetic estimate measured stayed the same;
#: on 120 near-empty fields false objects 576 -> 509, true nuclei found 76 -> 83 of 102.
MIN_SINGLE_RUN = 3
#: Refinement: at most this many more probes, stopping once the objects come out within
#: this ratio of the model's diameter.
REFINE_STEPS = 3
REFINE_TOLERANCE = 1.05
#: A probe's objects must be within this ratio of the model's diameter to count: the model
#: was trained on nuclei within ×1.5 of it and still outlines whole ones a little beyond.
PLAUSIBLE_RATIO = 2.5
#: Neighbouring probes are on one plateau when their sizes in image px agree within this
#: factor (a √2 step of the scale moves a fragment's implied size by ~×1.4).
PLATEAU_AGREEMENT = math.exp(0.2)
#: The first look: the ladder's three middle scales (×√2, ×1, ×1/√2) go first. Many images hold
#: nuclei near the model's size (DSB's median 19.5 px, the model's 20); when these scales see them
#: whole (with at most one more past the end nearest the model's size), the other nine or ten
#: probes are not run, and the estimate costs a third to a half of the full ladder. See :func:`_first_look`.
FIRST_LOOK_FACTORS = (math.sqrt(2), 1.0, math.sqrt(0.5))
#: Nuclei grow with the image: before an estimate may enlarge the image, the first refinement
#: step's objects must change size by at least this share of the step's scale change (observed ÷
#: expected), or what the probes measured was not nuclei. On the estimates that refine, DSB
#: training images (every third, 106; ×3, 34) and synthetic tuning images (15) gave 0.78–1.33;
#: near-empty synthetic fields of noise and haze (seeds 6100000–29, 14 refining) 0.32–1.02, six
#: under 0.61 (issue #13). Only for enlargements: large nuclei fragment when a step enlarges them
#: toward the model's size (a radius-40 image, seed 9004002, gave 0.51), and a wrong shrink
#: costs little, while noise enlarged ×3.3 became 1,336 objects.
MIN_GROWTH = 0.7


@dataclass(frozen=True)
class Probe:
    factor: float  # model px per image px
    median_diameter: float  # of the objects found, in model px (0 if none)
    objects: int  # whole objects found (not touching the window's edge)


@dataclass(frozen=True)
class DiameterEstimate:
    """``diameter``: typical nucleus equivalent diameter in image px; None when no probe found nuclei.

    ``out_of_range``: what the probes read when it lies past the ladder's range; ``not_nuclei``:
    what they read when their objects did not grow with the scale as nuclei do (``diameter`` is
    then None: not a measurement, see :func:`estimate_diameter`).
    """

    diameter: float | None
    probes: list[Probe] = field(default_factory=list)
    out_of_range: float | None = None
    not_nuclei: float | None = None


@dataclass(frozen=True)
class _Image:
    """The image as the probes read it: raw channels, whole-image scaling, and a thumbnail.

    Windows are normalised one by one with the whole image's percentile limits (the same
    values as a window of the normalised image), so no full-size float copy is made.
    """

    channels: np.ndarray  # (H, W) or (H, W, C), the model's channel count, raw dtype
    limits: list[tuple[float, float]]  # per channel, from preprocess.percentile_limits
    thumb: np.ndarray  # (h, w) float32: the normalised grey image every `step` px, clipped to [0, 1]
    step: int

    @classmethod
    def of(cls, image: np.ndarray, metadata: ModelMetadata) -> _Image:
        channels = to_channels(image, metadata.in_channels)
        limits = percentile_limits(channels, metadata.normalization)
        step = max(1, min(channels.shape[:2]) // 128)
        small = normalize(channels[::step, ::step], metadata.normalization, limits)
        return cls(channels, limits, np.clip(small.mean(axis=0), 0, 1).astype(np.float32), step)

    def window(self, top: int, left: int, size: tuple[int, int], norm: Normalization) -> np.ndarray:
        """Normalised float32 ``(C, h, w)`` window, scaled as the whole image."""
        crop = self.channels[top : top + size[0], left : left + size[1]]
        return normalize(crop, norm, self.limits)


def _best_window(source: _Image, window: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the ``window`` (h, w) with the most signal (mean of the clipped normalised image).

    Evaluated on a thumbnail: cheap on any image size. Nuclei are where the signal is,
    and a probe of empty background would measure nothing.
    """
    h, w = source.channels.shape[:2]
    wh, ww = window
    if wh >= h and ww >= w:
        return 0, 0
    step, thumb = source.step, source.thumb
    kh, kw = max(1, min(thumb.shape[0], wh // step)), max(1, min(thumb.shape[1], ww // step))
    means = cv2.boxFilter(thumb, -1, (kw, kh), normalize=True, borderType=cv2.BORDER_REPLICATE)
    # Only centres whose window lies inside the image.
    y0, x0 = kh // 2, kw // 2
    valid = means[y0 : thumb.shape[0] - (kh - 1 - kh // 2), x0 : thumb.shape[1] - (kw - 1 - kw // 2)]
    if valid.size == 0:
        return 0, 0
    iy, ix = np.unravel_index(int(np.argmax(valid)), valid.shape)
    top, left = min(int(iy) * step, max(0, h - wh)), min(int(ix) * step, max(0, w - ww))
    return top, left


def _probe_input(
    source: _Image, factor: float, metadata: ModelMetadata, probe_size: int
) -> np.ndarray | None:
    """The normalised ``(C, h, w)`` model input of the probe at ``factor``: the window of the image
    with the most signal, resized; None when the scaled window is too small to hold a few nuclei."""
    h, w = source.channels.shape[:2]
    window = (min(h, math.ceil(probe_size / factor)), min(w, math.ceil(probe_size / factor)))
    scaled = scaled_shape(window, factor)
    if min(scaled) < 3 * (metadata.nucleus_diameter or 16):
        return None  # too few model pixels to hold a few nuclei at this scale
    top, left = _best_window(source, window)
    crop = source.window(top, left, window, metadata.normalization)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c, scaled[::-1], interpolation=interpolation) for c in crop])


def _probabilities(
    inputs: list[np.ndarray], infer: Infer, metadata: ModelMetadata, batch_size: int | None
) -> list[np.ndarray]:
    """Model probabilities ``(K, h, w)`` of each normalised ``(C, h, w)`` input.

    Inputs of one padded shape go to the model together, ``batch_size`` at most at a time (the
    service's queue is sized for each request handing over one tile batch at a time): the
    ladder's probes are mostly ``probe_size``² (one ORT run of 12 such windows took 0.7–0.75×
    the time of 12 runs of one on the 2-core CPU, fp32 and int8, with the same outputs to the bit).
    """
    divisor = metadata.size_divisor
    padded: list[np.ndarray] = []
    for chw in inputs:
        _, h, w = chw.shape
        ph, pw = (-h) % divisor, (-w) % divisor
        padded.append(np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge"))
    results: list[np.ndarray | None] = [None] * len(inputs)
    step = max(1, batch_size or len(inputs))
    for shape in dict.fromkeys(x.shape for x in padded):
        same = [i for i, x in enumerate(padded) if x.shape == shape]
        for start in range(0, len(same), step):
            members = same[start : start + step]
            batch = np.ascontiguousarray(np.stack([padded[i] for i in members]), dtype=np.float32)
            raw = np.asarray(infer(batch))
            for slot, i in enumerate(members):
                _, h, w = inputs[i].shape
                results[i] = apply_activation(raw[slot, :, :h, :w].astype(np.float32, copy=True), metadata)
    return [r for r in results if r is not None]


def probe_objects(
    probs: np.ndarray, metadata: ModelMetadata, params: ObjectParams, threshold: float
) -> np.ndarray:
    """The objects of a probe's probabilities ``(K, h, w)``, as the estimate makes them."""
    foreground = probs[metadata.foreground_channel]
    centers = probs[params.center_channel] if params.uses_centers else None
    return label_objects(foreground > threshold, params, centers)


def edge_ids(labels: np.ndarray) -> np.ndarray:
    """The ids of ``labels`` on its border (0 among them where background reaches it)."""
    return np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))


def _measure(
    factor: float, probs: np.ndarray, metadata: ModelMetadata, params: ObjectParams, threshold: float
) -> Probe:
    """The probe's whole objects (not cut by the window's edge) and their median diameter."""
    labels = probe_objects(probs, metadata, params, threshold)
    # Nuclei cut by the window's edge would bias the size down: measure whole ones only.
    edge = edge_ids(labels)
    areas = np.bincount(labels.reshape(-1))
    areas[edge] = 0
    keep = np.flatnonzero(areas > 0)
    keep = keep[keep > 0]
    if keep.size == 0:
        return Probe(factor, 0.0, 0)
    return Probe(factor, float(np.median(np.sqrt(4 * areas[keep] / np.pi))), int(keep.size))


@dataclass(frozen=True)
class _Prober:
    """What every probe of one image shares: the image, the model and how objects are measured."""

    source: _Image
    infer: Infer
    metadata: ModelMetadata
    params: ObjectParams
    threshold: float
    probe_size: int
    batch_size: int | None

    def probes(self, factors: tuple[float, ...] | list[float]) -> list[Probe]:
        """The probes at ``factors`` that fit the image (in that order), their model passes batched."""
        inputs = [(f, _probe_input(self.source, f, self.metadata, self.probe_size)) for f in factors]
        kept = [(f, x) for f, x in inputs if x is not None]
        probs = _probabilities([x for _, x in kept], self.infer, self.metadata, self.batch_size)
        return [
            _measure(f, p, self.metadata, self.params, self.threshold)
            for (f, _), p in zip(kept, probs, strict=True)
        ]


def _closeness(probe: Probe, target: float) -> float:
    """How far the probe's objects are from the model's diameter (|log ratio|)."""
    return abs(math.log(probe.median_diameter / target))


def _plateau(
    probes: list[Probe], target: float, min_objects: int = MIN_OBJECTS, max_objects: int | None = None
) -> list[Probe]:
    """The probes on the longest run of neighbouring scales that agree on the size in image px.

    Seen whole, nuclei keep one size in image px, ``median_diameter / factor``, over a range
    of scales: from a little larger than the model's diameter down to where they get too
    small to see (in DSB images upscaled ×1–×4 the plateau spans ~5 steps of √2). Far from
    its size the model outlines pieces of about its own size whatever the scale — the
    chromatin spots of large nuclei, clumps of tiny ones — so their size in image px moves
    with each step. Such a piece can come out closer to the model's size than the true
    nuclei at the right scale: the length of the run, not closeness alone, picks it. Ties go
    to the run that comes closest to the model's size. ``probes``: in ladder order (largest
    factor first), each step √2. A probe counts when it found ``min_objects`` whole plausible
    objects (and at most ``max_objects``); empty when none did.
    """
    runs: list[list[Probe]] = []
    current: list[Probe] = []
    for probe in probes:
        plausible = (
            min_objects <= probe.objects
            and (max_objects is None or probe.objects <= max_objects)
            and target / PLAUSIBLE_RATIO <= probe.median_diameter <= target * PLAUSIBLE_RATIO
        )
        if not plausible:
            current = []
            continue
        if current and _neighbours(current[-1], probe) and _agree(current[-1], probe):
            current.append(probe)
        else:
            current = [probe]
            runs.append(current)
    if not runs:
        return []
    return max(runs, key=lambda run: (len(run), -min(_closeness(p, target) for p in run)))


def _neighbours(a: Probe, b: Probe) -> bool:
    return abs(math.log(a.factor / b.factor) - math.log(2) / 2) < 1e-6


def _agree(a: Probe, b: Probe) -> bool:
    implied_a, implied_b = a.median_diameter / a.factor, b.median_diameter / b.factor
    return abs(math.log(implied_a / implied_b)) < math.log(PLATEAU_AGREEMENT)


def _outvoted_by_one_object(probes: list[Probe], plateau: list[Probe], target: float) -> list[Probe]:
    """``plateau``, or the run of probes that each found exactly one whole object of one size when
    it is longer and spans :data:`MIN_SINGLE_RUN` probes at least: one nucleus seen alike over a ×2
    range of scales outvotes a shorter run of probes that found several (noise specks, chromatin)."""
    single = _plateau(probes, target, min_objects=1, max_objects=1)
    return single if len(single) >= MIN_SINGLE_RUN and len(single) > len(plateau) else plateau


def _closest_on_one_plateau(probes: list[Probe], target: float) -> tuple[list[Probe], int] | None:
    """The plateau of ``probes`` (neighbouring scales, in ladder order) with the index of its probe
    closest to the model's diameter, when all of them (three at least) are on it; else None."""
    plateau = _plateau(probes, target)
    if len(probes) < len(FIRST_LOOK_FACTORS) or len(plateau) < len(probes):
        return None
    return plateau, min(range(len(plateau)), key=lambda i: _closeness(plateau[i], target))


def _first_look(probes: list[Probe], target: float) -> list[Probe]:
    """The probes' plateau when it settles the estimate without the rest of the ladder, else [].

    ``probes``: neighbouring scales of the ladder, in its order. They settle it when all are on
    one plateau and the one closest to the model's diameter lies inside it, between two that read
    farther off: nuclei seen whole on both sides of the scale that sees them nearest the model's
    size. Along a plateau the size read falls with every step (each √2 step moves it by at least
    ×√2 / :data:`PLATEAU_AGREEMENT`), so the ladder's further scales on this run read farther off
    still, and the full ladder would pick the same probe — unless a longer run elsewhere outvoted
    this one, which no DSB training image (as they are or enlarged ×3) nor synthetic tuning image
    did (issue #16).
    """
    found = _closest_on_one_plateau(probes, target)
    return found[0] if found and 0 < found[1] < len(found[0]) - 1 else []


def _beyond_closest_end(probes: list[Probe], factors: tuple[float, ...], target: float) -> float | None:
    """The ladder's next factor past the end of ``probes`` that reads closest to the model's size,
    when all of them are on one plateau: the probe that tells whether the size read keeps nearing
    the model's past that end (then the ladder decides) or turns away (:func:`_first_look`)."""
    found = _closest_on_one_plateau(probes, target)
    if found is None or 0 < found[1] < len(found[0]) - 1:
        return None
    plateau, closest = found
    at = factors.index(plateau[closest].factor) + (-1 if closest == 0 else 1)
    return factors[at] if 0 <= at < len(factors) else None


def _ladder(prober: _Prober, factors: tuple[float, ...]) -> tuple[list[Probe], list[Probe]]:
    """The ladder's probes (in ladder order) and their plateau: the middle ones first (and the one
    past their end nearest the model's size, if that may decide), the rest only when those do not
    settle it (:func:`_first_look`)."""
    target = prober.metadata.nucleus_diameter or 0.0
    run = prober.probes
    tried = [f for f in factors if any(math.isclose(f, m) for m in FIRST_LOOK_FACTORS)]
    if not tried or len(tried) < len(FIRST_LOOK_FACTORS):
        probes = run(list(factors))
        return probes, _plateau(probes, target)
    looked = run(tried)
    beyond = _beyond_closest_end(looked, factors, target)
    if beyond is not None:
        tried.append(beyond)
        looked = sorted(looked + run([beyond]), key=lambda p: -p.factor)
    settled = _first_look(looked, target)
    if settled:
        return looked, settled
    probes = sorted(looked + run([f for f in factors if f not in tried]), key=lambda p: -p.factor)
    return probes, _plateau(probes, target)


def estimate_diameter(
    image: np.ndarray,
    infer: Infer,
    metadata: ModelMetadata,
    params: ObjectParams,
    threshold: float | None = None,
    factors: tuple[float, ...] = PROBE_FACTORS,
    probe_size: int = PROBE_SIZE,
    batch_size: int | None = None,
) -> DiameterEstimate:
    """Typical nucleus diameter of a decoded ``(H, W)``/``(H, W, C)`` image, in its own pixels.

    ``params``: how objects are split (the service passes the model's own: the size is the image's,
    not the request's choice of objects); ``threshold``: foreground threshold
    (default the model's); ``batch_size``: most windows handed to ``infer`` at once (None: all
    probes of one shape together). The model must record ``nucleus_diameter``.
    """
    target = metadata.nucleus_diameter
    if not target:
        raise ValueError("the model does not record the nucleus diameter it was trained at")
    threshold = metadata.threshold if threshold is None else threshold
    # The probes measure every object the model outlines: the rules above (plateau, growth) were
    # chosen on those, and a probe far from the model's scale is less sure of true nuclei too.
    params = replace(params, min_confidence=0.0, min_snr=0.0)
    # Whole-image normalisation limits, as the segmentation itself will use.
    prober = _Prober(_Image.of(image, metadata), infer, metadata, params, threshold, probe_size, batch_size)

    def run(factor: float) -> Probe | None:
        found = prober.probes([factor])
        return found[0] if found else None

    probes, plateau = _ladder(prober, factors)
    plateau = _outvoted_by_one_object(probes, plateau, target)
    if plateau:
        best = min(plateau, key=lambda p: _closeness(p, target))
    else:
        # No few whole plausible objects at any scale: the closest of what was found.
        counted = [p for p in probes if p.objects > 0]
        if not counted:
            return DiameterEstimate(None, probes)
        best = min(counted, key=lambda p: _closeness(p, target))
    # The model pulls what it outlines toward the size it learned, so one probe's size is
    # biased toward the target; at the scale where it outlines exactly the target size the
    # bias vanishes. Fixed-point steps toward that scale, each kept only if it came closer,
    # never past the ladder's ends (see below).
    low, high = min(factors), max(factors)
    for step in range(REFINE_STEPS):
        if abs(math.log(best.median_diameter / target)) < math.log(REFINE_TOLERANCE):
            break
        factor = min(high, max(low, best.factor * target / best.median_diameter))
        if factor == best.factor:
            break
        refined = run(factor)
        if refined is None or refined.objects < min(MIN_OBJECTS, best.objects):
            break
        probes.append(refined)
        # Enlarged by the step, nuclei come out that much larger; specks of noise and haze come
        # out at whatever size the model outlines in noise. A field of them (near-empty, issue
        # #13) once read 6.1 px on two neighbouring probes and was enlarged ×3.3 into 1,336
        # "nuclei": its step's objects shrank to 0.35 of the growth expected.
        growth = (refined.median_diameter / best.median_diameter) / (refined.factor / best.factor)
        if step == 0 and factor > 1 and growth < MIN_GROWTH:
            return DiameterEstimate(None, probes, not_nuclei=float(best.median_diameter / best.factor))
        # Where the model fragments or merges nuclei the size is not monotonic in the scale:
        # keep a step only if it came closer.
        if abs(math.log(max(refined.median_diameter, 1e-3) / target)) >= abs(
            math.log(best.median_diameter / target)
        ):
            break
        best = refined
    estimate = best.median_diameter / best.factor
    # The ladder spans the sizes it can tell apart (×4 … ×1/16: nuclei of 5 … 320 px with the
    # defaults). An estimate past its ends is not a measurement: in near-empty fields of noise the
    # speckles read 1.4–3.9 px, and the image was enlarged up to ×14 (27,207 "nuclei" in one of 30
    # synthetic 512² fields). Enlarged ×4, the ladder's end, those five fields still gave 138
    # objects for 3 nuclei; as they are, 17 (issue #13). No DSB training image or synthetic tuning
    # image reads past the ends.
    if not target / high <= estimate <= target / low:
        return DiameterEstimate(None, probes, out_of_range=float(estimate))
    return DiameterEstimate(float(estimate), probes)
