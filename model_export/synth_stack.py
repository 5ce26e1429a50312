"""Synthetic z-stacks of fluorescent nuclei with their 3-D labels, for measuring 3-D stitching.

Each nucleus is an ellipsoid of random size and orientation in the slice plane, its z semi-axis
given in slices (``z_step`` xy pixels per slice, as a confocal stack samples z more coarsely than
xy). Nuclei may touch, and overlap in projection at different depths. Signal: each nucleus's
brightness × a smooth chromatin texture, blurred by an anisotropic point spread function (longer
in z, so a nucleus's caps are dimmer and wider than its cut would be), over a background with
Poisson and read noise, stored as uint16. A voxel belongs to the nucleus whose ellipsoid holds
it most deeply. Pure NumPy/SciPy; deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class StackConfig:
    depth: int = 24  # slices
    size: int = 160  # px, square slices
    nuclei: int = 20
    radius: tuple[float, float] = (8.0, 14.0)  # xy semi-axis range, px
    z_step: float = 2.0  # xy px per slice
    elongation: tuple[float, float] = (1.0, 1.4)  # longer / shorter xy semi-axis
    min_gap: float = 0.85  # centres at least this × the sum of their radii apart (< 1: may press together)
    photons: tuple[float, float] = (150.0, 600.0)  # peak signal range, counts
    background: float = 40.0
    read_noise: float = 4.0
    psf_sigma: tuple[float, float] = (1.5, 1.0)  # (z slices, xy px)


def synth_stack(seed: int, config: StackConfig = StackConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)``: ``(depth, size, size)`` uint16 counts and int32 labels (0 background)."""
    rng = np.random.default_rng(seed)
    c = config
    shape = (c.depth, c.size, c.size)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    depth_of = np.full(shape, 1.0, dtype=np.float32)  # normalised ellipsoid distance of the best owner
    labels = np.zeros(shape, dtype=np.int32)
    signal = np.zeros(shape, dtype=np.float32)
    centres: list[tuple[float, float, float, float]] = []
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), (1.0, 2.0, 2.0))
    texture = 1 + 0.25 * texture / (texture.std() + 1e-6)
    for _ in range(c.nuclei * 50):
        if len(centres) == c.nuclei:
            break
        r = rng.uniform(*c.radius)
        cz = rng.uniform(0, c.depth - 1)
        cy, cx = rng.uniform(r * 0.5, c.size - r * 0.5, size=2)
        if any(np.hypot(np.hypot(cy - y, cx - x), (cz - z) * c.z_step) < c.min_gap * (r + q)
               for z, y, x, q in centres):
            continue
        centres.append((cz, cy, cx, r))
        a = r * rng.uniform(*c.elongation) ** 0.5
        b = r / rng.uniform(*c.elongation) ** 0.5
        angle = rng.uniform(0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        dy, dx = yy - cy, xx - cx
        u = (dx * cos + dy * sin) / a
        v = (-dx * sin + dy * cos) / b
        w = (zz - cz) * c.z_step / r
        distance = np.sqrt(u * u + v * v + w * w)
        owns = distance < depth_of
        label = len(centres)
        labels[owns] = label
        depth_of[owns] = distance[owns]
        signal[owns] = rng.uniform(*c.photons)
    image = ndimage.gaussian_filter(signal * texture, (c.psf_sigma[0], c.psf_sigma[1], c.psf_sigma[1]))
    counts = rng.poisson(np.clip(image + c.background, 0, None)).astype(np.float32)
    counts += rng.normal(0, c.read_noise, size=shape).astype(np.float32)
    return np.clip(counts, 0, 65535).astype(np.uint16), labels
