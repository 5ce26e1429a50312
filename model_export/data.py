"""Training data: image/mask folder pairs and a built-in synthetic nuclei generator.

Both produce the same thing for the trainer: a normalised float32 ``(C, H, W)`` image
(through ``service.preprocess.prepare`` — the one normalisation shared with the
service) and an int32 ``(H, W)`` target. Targets are *instance label maps* where the
source has them (synthetic data, label-image masks: 0 = background, 1..N = objects)
so object-level training can build on them; foreground is ``labels > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from model_export import contact, contrast
from model_export.dsb import RIM_REACH, light_owner, median_diameter
from model_export.folders import DataError, load_pair, pair_folders, read_image, read_mask
from service.model_metadata import Normalization
from service.preprocess import prepare
from service.rescale import renumber

__all__ = [
    "DataError",
    "FolderDataset",
    "center_target",
    "ScaledDataset",
    "SyntheticStream",
    "load_pair",
    "pair_folders",
    "read_image",
    "read_mask",
    "synth_nuclei",
    "synthetic_set",
    "write_synthetic",
]

def center_target(labels: np.ndarray) -> np.ndarray:
    """Instance labels ``(H, W)`` → the centre channel's target ``(H, W)`` float32 in [0, 1].

    Each pixel's Euclidean distance to the edge of its own object (background, or a pixel of
    another object) divided by the largest such distance in that object: 1 at the centre,
    falling to ~0 at the rim and exactly 0 where two objects touch and on background. A
    binary mask counts each connected blob as one object.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.max(initial=0) <= 1:
        labels = cv2.connectedComponents((labels > 0).astype(np.uint8), connectivity=8)[1]
    labels = labels.astype(np.int32, copy=False)
    inside = labels > 0
    if not inside.any():
        return np.zeros(labels.shape, np.float32)
    # A pixel with a 4-neighbour of another object is boundary: the distance measured from
    # there splits two touching objects' targets with a valley of zeros.
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    touching = np.zeros_like(inside)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[dy : dy + h, dx : dx + w]
        touching |= (neighbour != labels) & (neighbour > 0)
    core = (inside & ~touching).astype(np.uint8)
    # Outside the image counts as inside the object (OpenCV's border rule): a nucleus cut
    # by the crop keeps its distances rather than gaining a false rim along the cut.
    distance = cv2.distanceTransform(core, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    peak = ndimage.maximum(distance, labels, index=np.arange(labels.max() + 1))
    peak = np.maximum(np.asarray(peak, np.float32), 1.0)
    return np.where(inside, distance / peak[labels], 0).astype(np.float32)


# --------------------------------------------------------------------------------------
# Augmentation (numpy, on normalised (C, H, W) images and (H, W) labels)
# --------------------------------------------------------------------------------------


def random_crop(
    image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``(C, H, W)``/``(H, W)`` to ``size``²; smaller images are mirror-padded first."""
    _, h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
        labels = np.pad(labels, ((0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
        h, w = labels.shape
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return image[:, y : y + size, x : x + size], labels[y : y + size, x : x + size]


def flip_rotate(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square (flips and 90° rotations)."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild contrast/brightness jitter and noise on a normalised image, clipped like the service."""
    image = image * np.float32(rng.uniform(0.8, 1.2)) + np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.0, 0.05), image.shape).astype(np.float32)
    clip = Normalization().clip
    return np.clip(image, clip[0], clip[1]).astype(np.float32)


# Dimmed nuclei keep this share of their signal above background (log-uniform): a weak stain,
# slight defocus, a G1 nucleus beside a G2 one. The service stretches each image by its own
# percentiles, so in a 16-bit screen such nuclei reach the model at a fraction of the range that
# DSB's crops taught it (half the nuclei at 0.3x: 69 % found against 87 %; benchmarks/screen_like.py).
DIM_FACTORS = (0.15, 0.7)
DIM_SHARE = (0.2, 0.7)  # share of a crop's nuclei that are dimmed


def dim_some_nuclei(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    factors: tuple[float, float] = DIM_FACTORS,
    share: tuple[float, float] = DIM_SHARE,
    rim_reach: float = RIM_REACH,
) -> np.ndarray:
    """Scale the signal above background of some of the labelled nuclei of ``(C, H, W)`` down.

    A share of the crop's nuclei (at least one), each with its own factor. The background is
    the median outside the labels. Every pixel up to ``rim_reach`` px outside the labels dims
    with its nearest nucleus (:func:`light_owner`), so that the blurred rim goes with it instead
    of staying a bright ring: until 2026-12-02 the rim dimmed one pixel out only, which left the
    outer rim of a dimmed nucleus as bright as its inside (the flaw the screen_like benchmark
    had). Labels are unchanged: a dim nucleus is still a nucleus.
    """
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return image
    count = max(1, int(round(rng.uniform(*share) * ids.size)))
    chosen = rng.choice(ids, size=min(count, ids.size), replace=False)
    kept = np.exp(rng.uniform(np.log(factors[0]), np.log(factors[1]), size=chosen.size))
    gain_of = np.ones(int(labels.max()) + 1, np.float32)
    gain_of[chosen] = kept
    gain = gain_of[light_owner(labels, rim_reach)]
    outside = labels == 0
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        background = np.float32(np.median(image[c][outside])) if outside.any() else np.float32(0)
        out[c] = background + (image[c] - background) * gain
    return out


def scaled_crop(
    image: np.ndarray, labels: np.ndarray, scale: float, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size``² crop of ``(C, H, W)``/``(H, W)`` after resizing by ``scale``.

    Only the source window that lands in the crop is resized (cheap for large images).
    Where the window overhangs the image, the image is zero (the normalised background
    level, as where the service pads) and labels are 0: a mirror would duplicate nuclei.
    """
    _, h, w = image.shape
    window = max(1, int(round(size / scale)))
    y = int(rng.integers(min(0, h - window), max(0, h - window) + 1))
    x = int(rng.integers(min(0, w - window), max(0, w - window) + 1))
    src = (slice(max(0, y), min(h, y + window)), slice(max(0, x), min(w, x + window)))
    canvas = np.zeros((image.shape[0], window, window), np.float32)
    canvas_labels = np.zeros((window, window), np.int32)
    dst = (slice(src[0].start - y, src[0].stop - y), slice(src[1].start - x, src[1].stop - x))
    canvas[:, dst[0], dst[1]] = image[:, src[0], src[1]]
    canvas_labels[dst] = labels[src]
    if window == size:
        return canvas, canvas_labels
    interpolation = cv2.INTER_AREA if window > size else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(c, (size, size), interpolation=interpolation) for c in canvas])
    resized_labels = cv2.resize(canvas_labels, (size, size), interpolation=cv2.INTER_NEAREST)
    return resized, resized_labels


class ScaledDataset(Dataset):
    """Real images with instance labels, brought to one nucleus scale, mixed with synthetic ones.

    Each sample resizes a random window of one image so that its nuclei come out at
    ``diameter`` px (the image's median equivalent diameter → ``diameter``) times a random
    factor in ``scale_jitter`` (log-uniform), so the model tolerates an imperfect scale
    estimate in the service. With probability ``synthetic`` the sample is a synthetic image
    instead: drawn at the model's scale, or — with ``synthetic_radius`` set — drawn at a
    typical nucleus radius from that range (log-uniform) and then brought to the model's
    scale exactly as a real image is (median diameter of its labels, jitter, the same
    resize). The second is what the service does to a user's image of tiny or huge nuclei:
    enlarged tiny nuclei come with blur and noise stretched over several pixels, shrunk
    large ones with their texture averaged away, neither of which the generator draws at
    the model's scale.

    With probability ``dim_nuclei`` a real sample has some of its nuclei dimmed
    (:func:`dim_some_nuclei`): brightness that differs from nucleus to nucleus far more than in
    DSB's crops, as in 16-bit screens.

    With ``dim_weight`` > 0 each sample comes with a third tensor, a per-pixel loss weight
    ``(H, W)``: 1, except on the real nuclei dim against their own image's others, which weigh up
    to ``1 + dim_weight`` (:func:`model_export.contrast.dim_weights`; contrast measured once per
    whole image here, then carried through crop, resize and flips by the labels). Dim nuclei are
    7.5 % of DSB's labelled ones, and BCE + Dice weigh nuclei by area: the model found 11.5 % of
    those below a quarter of their image's median contrast (issue #13). Synthetic samples weigh 1,
    and a nucleus dimmed by ``dim_nuclei`` keeps its source image's weight: the weight reads the source.
    With ``contact_weight`` > 0 the weight is also multiplied, in every sample, by the classic
    U-Net's map of where nuclei meet (:func:`model_export.contact.contact_weights`, read off the
    sample's final labels at the model's scale).

    ``items``: ``(raw image, int32 labels, median diameter px)``; images are normalised once
    here, as the service normalises the whole image before tiling.
    """

    def __init__(
        self,
        items: list[tuple[np.ndarray, np.ndarray, float]],
        patch: int,
        diameter: float,
        scale_jitter: tuple[float, float] = (0.67, 1.5),
        synthetic: float = 0.0,
        in_channels: int = 1,
        seed: int = 0,
        samples_per_epoch: int = 1000,
        augment: bool = True,
        synthetic_radius: tuple[float, float] | None = None,
        empty_fields: float = 0.0,
        dim_nuclei: float = 0.0,
        dim_weight: float = 0.0,
        contact_weight: float = 0.0,
    ) -> None:
        norm = Normalization()
        self.items = [(prepare(image, in_channels, norm), labels, d) for image, labels, d in items]
        self.dim_weight, self.contact_weight = dim_weight, contact_weight
        # Per item, the loss weight of each label id (index 0: background).
        self.weight_of = [
            contrast.nucleus_dim_weights(image, labels, d, dim_weight)
            for image, labels, d in (items if dim_weight > 0 else [])
        ]
        self.patch, self.diameter, self.jitter = patch, diameter, scale_jitter
        self.synthetic, self.in_channels, self.seed = synthetic, in_channels, seed
        self.samples, self.augment = samples_per_epoch, augment
        radius = diameter / 2
        self.synth_config = SynthConfig(radius=(radius * scale_jitter[0], radius * scale_jitter[1]))
        self.synthetic_radius = synthetic_radius
        self.empty_fields = empty_fields
        self.dim_nuclei = dim_nuclei
        self._calls = 0

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self._calls += 1
        rng = np.random.default_rng((self.seed, index, self._calls if self.augment else 0))
        weight_of = None  # per label id; None: every pixel weighs 1
        # Drawn only when asked for, so that runs without them keep their sample stream.
        if self.augment and self.empty_fields > 0 and rng.random() < self.empty_fields:
            x, labels = self._empty_field(rng)
        elif self.augment and rng.random() < self.synthetic:
            if self.synthetic_radius is not None:
                x, labels = self._native_synthetic(rng)
            else:
                image, labels = synth_nuclei(int(rng.integers(1 << 62)), self.patch, self.synth_config)
                x = prepare(image, self.in_channels, Normalization())
        else:
            x, labels, d = self.items[index % len(self.items)]
            if self.dim_weight > 0:
                weight_of = self.weight_of[index % len(self.items)]
            jitter = math.exp(rng.uniform(*np.log(self.jitter))) if self.augment else 1.0
            scale = self.diameter / max(d, 1.0) * jitter
            x, labels = scaled_crop(x, labels, scale, self.patch, rng)
            if self.augment and self.dim_nuclei > 0 and rng.random() < self.dim_nuclei:
                # The rim's reach was measured at the source's scale; the crop was resized.
                x = dim_some_nuclei(x, labels, rng, rim_reach=RIM_REACH * scale)
        if self.augment:
            x, labels = flip_rotate(x, labels, rng)
            x = augment_intensity(x, rng)
        sample = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(labels))
        if self.dim_weight <= 0 and self.contact_weight <= 0:
            return sample
        # Crops, resizes (nearest) and flips keep label ids, so the weight follows its nucleus.
        weight = np.ones(labels.shape, np.float32) if weight_of is None else weight_of[labels]
        if self.contact_weight > 0:
            weight = weight * contact.contact_weights(labels, self.contact_weight)
        return *sample, torch.from_numpy(np.ascontiguousarray(weight))

    def _empty_field(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A near-empty synthetic field: background, noise, haze and glow with 0–2 nuclei.

        Normalised on its own, as the service normalises a whole image, such a field's noise and
        haze fill the range real nuclei fill elsewhere; DSB holds almost no such images, and the
        model marked their specks as nuclei (issue #13).
        """
        config = replace(self.synth_config, coverage=(0.0, 0.0))
        image, labels = synth_nuclei(int(rng.integers(1 << 62)), self.patch, config)
        return prepare(image, self.in_channels, Normalization()), labels

    def _native_synthetic(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A synthetic image drawn at its own nucleus size, then scaled like a real one."""
        low, high = self.synthetic_radius
        radius = math.exp(rng.uniform(math.log(low), math.log(high)))
        jitter = math.exp(rng.uniform(*np.log(self.jitter)))
        # Draw about the window the crop will take (the labels' median diameter is only
        # known afterwards; a short window is padded like the border of a real image).
        expected_scale = self.diameter / (2 * radius) * jitter
        side = int(math.ceil(self.patch / expected_scale * 1.15)) + 8
        config = SynthConfig(radius=(radius, radius))
        image, labels = synth_nuclei(int(rng.integers(1 << 62)), side, config)
        x = prepare(image, self.in_channels, Normalization())
        diameter = median_diameter(labels) or 2 * radius
        return scaled_crop(x, labels, self.diameter / diameter * jitter, self.patch, rng)


class FolderDataset(Dataset):
    """Image/mask folder pairs → random ``patch``² crops, augmented.

    All files are read and checked up front (so a bad file fails at start, naming it)
    and kept normalised in memory. ``__getitem__`` draws a fresh crop each time;
    ``samples_per_epoch`` sets how many crops one pass yields.
    """

    def __init__(
        self,
        images: Path,
        masks: Path,
        patch: int,
        in_channels: int = 1,
        augment: bool = True,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.pairs = pair_folders(images, masks)
        norm = Normalization()
        self.items = []
        for ip, mp in self.pairs:
            image, labels = load_pair(ip, mp)
            self.items.append((prepare(image, in_channels, norm), labels))
        self.patch, self.augment, self.seed = patch, augment, seed
        self.samples = samples_per_epoch or len(self.items)
        self._calls = 0

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._calls += 1
        rng = np.random.default_rng((self.seed, index, self._calls if self.augment else 0))
        image, labels = self.items[index % len(self.items)]
        image, labels = random_crop(image, labels, self.patch, rng)
        if self.augment:
            image, labels = flip_rotate(image, labels, rng)
            image = augment_intensity(image, rng)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(labels))


# --------------------------------------------------------------------------------------
# Synthetic fluorescence nuclei
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Ranges the generator samples from, per image unless noted."""

    radius: tuple[float, float] = (4.5, 20.0)  # typical nucleus radius, px (log-uniform)
    coverage: tuple[float, float] = (0.05, 0.5)  # fraction of the area covered by nuclei
    photons: tuple[float, float] = (8.0, 3000.0)  # photons at unit brightness (log-uniform)
    blur: tuple[float, float] = (0.4, 2.2)  # optical blur sigma, px
    gamma: tuple[float, float] = (0.6, 1.6)
    # Straight-edged steps in the background, as where fields of a mosaic or a padded canvas
    # meet: without them the model took such a step for the rim of a huge bright object.
    field_step: float = 0.25  # probability of a region with another background level
    flat_padding: float = 0.15  # probability of a flat, noise-free band at one edge (no nuclei)
    glow: float = 0.5  # probability of a wide, dim out-of-focus halo around the nuclei


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with structures of about ``scale`` px (float32)."""
    h, w = shape
    # Draw on a coarse grid and resize: far cheaper than a large Gaussian blur.
    step = max(1.0, scale / 2)
    gh, gw = max(2, int(math.ceil(h / step)) + 2), max(2, int(math.ceil(w / step)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(coarse, (int(gw * step), int(gh * step)), interpolation=cv2.INTER_CUBIC)[:h, :w]
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _nucleus_polygon(cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Outline of one nucleus: a rotated ellipse with smooth radial wobble, ``(K, 2)`` float."""
    aspect = rng.uniform(1.0, 1.9)
    a, b = r * math.sqrt(aspect), r / math.sqrt(aspect)
    theta = rng.uniform(0, math.pi)
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    wobble = np.ones_like(t)
    for harmonic in (2, 3, 4, 5):  # low harmonics: kidney/bean shapes, dents
        wobble += rng.normal(0, 0.05 / harmonic * 2) * np.cos(harmonic * t + rng.uniform(0, 2 * math.pi))
    x, y = a * np.cos(t) * wobble, b * np.sin(t) * wobble
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def synth_nuclei(
    seed: int, size: int | tuple[int, int] = 256, config: SynthConfig = SynthConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic fluorescence-nuclei image and its instance labels, deterministic per seed.

    Returns ``image``: ``(H, W)`` uint8 or uint16 (raw counts, not normalised) and
    ``labels``: ``(H, W)`` int32, 0 = background, 1..N one per nucleus (later nuclei
    occlude earlier ones where they overlap). Nuclei are drawn one by one with a
    per-image typical radius; the label of each is trimmed to where its blurred
    signal is at least half its own brightness, i.e. tight to the visible edge (labels
    drawn before blurring come out fat against human annotation).
    """
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    cfg = config
    r0 = math.exp(rng.uniform(math.log(cfg.radius[0]), math.log(cfg.radius[1])))
    coverage = rng.uniform(*cfg.coverage)
    n_nuclei = int(coverage * h * w / (math.pi * r0 * r0)) + int(rng.integers(0, 3))
    clustered = rng.uniform(0.0, 0.7)  # share of nuclei placed against an earlier one
    spread = rng.uniform(0.15, 0.6)  # log-std of brightness between nuclei

    signal = np.zeros((h, w), np.float32)  # sum of nucleus emissions (overlaps add up)
    plain = np.zeros((h, w), np.float32)  # same without texture: decides the visible edge
    labels = np.zeros((h, w), np.int32)
    level = np.zeros((h, w), np.float32)  # brightness of the visible label at each pixel
    texture = _smooth_noise((h, w), max(1.5, r0 / rng.uniform(2, 5)), rng)
    tex_amp = rng.uniform(0.05, 0.35)
    centres: list[tuple[float, float, float]] = []
    for i in range(1, n_nuclei + 1):
        r = r0 * math.exp(rng.normal(0, 0.2))
        bright = math.exp(rng.normal(0, spread))
        if rng.random() < 0.04:  # small, very bright (mitotic / apoptotic) nuclei
            r *= rng.uniform(0.4, 0.7)
            bright *= rng.uniform(2, 4)
        if centres and rng.random() < clustered:
            px, py, pr = centres[int(rng.integers(len(centres)))]
            ang = rng.uniform(0, 2 * math.pi)
            dist = (pr + r) * rng.uniform(0.75, 1.05)  # touching or slightly overlapping
            cx, cy = px + dist * math.cos(ang), py + dist * math.sin(ang)
        else:
            cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        centres.append((cx, cy, r))
        poly = _nucleus_polygon(cx, cy, r, rng)
        x0, y0 = max(0, int(poly[:, 0].min()) - 1), max(0, int(poly[:, 1].min()) - 1)
        x1, y1 = min(w, int(poly[:, 0].max()) + 2), min(h, int(poly[:, 1].max()) + 2)
        if x1 <= x0 or y1 <= y0:
            continue
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        # Sub-pixel vertex precision (shift=4) keeps small nuclei round.
        pts = np.round((poly - [x0, y0]) * 16).astype(np.int32)
        cv2.fillPoly(local, [pts], 1, lineType=cv2.LINE_8, shift=4)
        inside = local.astype(bool)
        if not inside.any():
            continue
        # Fluorescence falls off toward the rim (chromatin is denser inside).
        dist_in = cv2.distanceTransform(np.pad(local, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        rim = rng.uniform(0.0, 0.5)
        profile = 1.0 - rim * np.exp(-dist_in / max(1.0, 0.25 * r))
        emit = (bright * profile).astype(np.float32) * inside
        sl = (slice(y0, y1), slice(x0, x1))
        plain[sl] += emit
        signal[sl] += emit * (1.0 + tex_amp * texture[sl])
        labels[sl][inside] = i
        level[sl][inside] = bright

    # Optics: blur both the textured signal and the plain one identically.
    sigma = rng.uniform(*cfg.blur)
    emitted = signal
    signal = cv2.GaussianBlur(signal, (0, 0), sigma)
    plain = cv2.GaussianBlur(plain, (0, 0), sigma)
    labels[plain < 0.5 * level] = 0  # tight to the half-maximum edge of each nucleus
    # A widefield PSF has long tails: out-of-focus light puts a dim glow around every
    # nucleus, bright ones most. It is not nucleus: the labels keep the sharp edge. Drawn
    # from a stream of its own, so an image without a glow is exactly what it was before
    # the glow existed (with one, the noise drawn after it differs).
    glow_rng = np.random.default_rng((seed, 1))
    if glow_rng.random() < cfg.glow:
        halo = cv2.GaussianBlur(emitted, (0, 0), glow_rng.uniform(3.0, 10.0))
        signal = signal + np.float32(glow_rng.uniform(0.05, 0.3)) * halo

    # Uneven background: offset + slow gradient/vignetting + optional out-of-focus haze.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg_level = math.exp(rng.uniform(math.log(0.02), math.log(0.6)))
    gradient = 1 + rng.uniform(-0.5, 0.5) * (xx / w - 0.5) + rng.uniform(-0.5, 0.5) * (yy / h - 0.5)
    background = (
        bg_level * gradient * (1 + rng.uniform(0, 0.3) * _smooth_noise((h, w), rng.uniform(40, 150), rng))
    )
    if rng.random() < 0.3:
        # Out-of-focus haze: smooth, dim, without edges (a sharp-edged haze blob would look
        # like a dim nucleus and teach the model to ignore real dim nuclei).
        scale = rng.uniform(30, 80)
        haze = cv2.GaussianBlur(np.maximum(_smooth_noise((h, w), scale, rng), 0), (0, 0), scale / 3)
        background = background + rng.uniform(0.02, 0.1) * haze / (haze.max() + 1e-6)
    if rng.random() < cfg.field_step:
        # Another field's background: a rectangle from an image edge, level ×0.25–4.
        region = _edge_rectangle(h, w, rng)
        background[region] *= math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
    clean = np.maximum(signal + np.maximum(background, 0), 0)

    # Camera: Poisson shot noise over a wide photon range, then Gaussian read noise.
    photons = math.exp(rng.uniform(math.log(cfg.photons[0]), math.log(cfg.photons[1])))
    counts = rng.poisson(clean * photons).astype(np.float32) / photons
    counts += rng.normal(0, rng.uniform(0, 0.03), (h, w)).astype(np.float32)
    counts = np.maximum(counts, 0)

    # Display/detector response: random gamma, then quantise to 8 or 16 bit with a
    # random gain (16-bit cameras often use only 12 bits; some 8-bit images use few levels).
    counts = counts ** np.float32(rng.uniform(*cfg.gamma))
    peak = float(np.percentile(counts, 99.9)) + 1e-6
    if rng.random() < 0.5:
        dtype, full = np.uint8, float(rng.choice([rng.uniform(30, 80), rng.uniform(80, 255)], p=[0.2, 0.8]))
    else:
        dtype, full = np.uint16, float(rng.choice([4095.0, 65535.0])) * rng.uniform(0.2, 1.0)
    image = np.clip(np.rint(counts / peak * full * rng.uniform(0.7, 1.0)), 0, np.iinfo(dtype).max).astype(
        dtype
    )
    if rng.random() < cfg.flat_padding:
        # A padded canvas: one flat value (from zero to about the background), no nuclei.
        region = _edge_rectangle(h, w, rng)
        image[region] = dtype(np.percentile(image, rng.uniform(0, 30)) * rng.uniform(0, 1))
        labels[region] = 0
    return image, renumber(labels)


def _edge_rectangle(h: int, w: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """A rectangle touching one image edge, covering 10–50% of the other axis' extent."""
    side = int(rng.integers(4))
    depth = rng.uniform(0.1, 0.5)
    if side == 0:
        return slice(0, max(1, int(h * depth))), slice(None)
    if side == 1:
        return slice(h - max(1, int(h * depth)), None), slice(None)
    if side == 2:
        return slice(None), slice(0, max(1, int(w * depth)))
    return slice(None), slice(w - max(1, int(w * depth)), None)


class SyntheticStream(IterableDataset):
    """Endless synthetic training samples: normalised ``(C, patch, patch)`` float32, int32 labels.

    Sample ``k`` of worker ``w`` uses seed ``(seed, w, k)``, so a run is reproducible for a
    fixed number of workers, and generation happens in the DataLoader workers (not the
    training process).
    """

    def __init__(self, patch: int, in_channels: int = 1, seed: int = 0) -> None:
        self.patch, self.in_channels, self.seed = patch, in_channels, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        norm = Normalization()
        k = 0
        while True:
            sample_seed = int(np.random.SeedSequence((self.seed, worker, k)).generate_state(1)[0])
            image, labels = synth_nuclei(sample_seed, self.patch)
            x = prepare(image, self.in_channels, norm)
            k += 1
            yield torch.from_numpy(x), torch.from_numpy(labels)


def synthetic_set(n: int, size: int, seed: int, in_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed synthetic set (e.g. validation): ``(n, C, size, size)`` float32, ``(n, size, size)`` int32."""
    norm = Normalization()
    xs, ys = [], []
    for i in range(n):
        image, labels = synth_nuclei(seed_for(seed, i), size)
        xs.append(prepare(image, in_channels, norm))
        ys.append(labels)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def seed_for(seed: int, index: int) -> int:
    """The generator seed of image ``index`` of a set seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def write_synthetic(out: Path, n: int, size: int, seed: int) -> tuple[Path, Path]:
    """Write ``n`` synthetic images and label masks to ``out/images`` and ``out/masks`` (PNG).

    Masks are 16-bit instance label images (0 = background, 1..N nuclei). Returns the
    two folders.
    """
    images, masks = Path(out) / "images", Path(out) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, labels = synth_nuclei(seed_for(seed, i), size)
        if labels.max() > 65535:
            raise ValueError(
                f"synthetic image {i} has {labels.max()} nuclei: too many for a 16-bit label PNG"
            )
        cv2.imwrite(str(images / f"synth_{i:04d}.png"), image)
        cv2.imwrite(str(masks / f"synth_{i:04d}.png"), labels.astype(np.uint16))
    return images, masks
