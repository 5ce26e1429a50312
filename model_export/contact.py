"""Loss weights that make the pixels where two nuclei meet count more (``train --contact-weight``).

The classic U-Net's weight map (Ronneberger et al. 2015, eq. 2): ``w0 · exp(-(d1 + d2)² / 2σ²)`` on
top of 1, where ``d1`` and ``d2`` are a pixel's distances to the nearest and the second-nearest
nucleus, so that the thin background between touching cells, which decides whether they come out
as one object or two, weighs as much as a whole nucleus. On DSB, merges are the largest share of
the nuclei 2.3.1 misses: 7.1 % of the nuclei of every fourth training image, against 5.8 % not
marked at all (``benchmarks/missed_nuclei.py``; issue #13).

The weight falls on background pixels, as the map is usually read. ``d2`` comes from the Voronoi
partition of the nearest-nucleus map instead of one distance transform per nucleus (a crop holds a
hundred): a background pixel on the line between two nuclei lies ``d1 + 2·dv`` from the second one,
``dv`` being its distance to the border of the two nuclei's Voronoi cells. Where two labels touch
with no background between them, that border is their line of contact, where both distances are 0:
those nucleus pixels take the full ``1 + w0`` (the centre channel's target has its valley there).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Ronneberger et al.'s σ, px; the model sees nuclei about 20 px across.
CONTACT_SIGMA = 5.0


def contact_weights(labels: np.ndarray, gain: float, sigma: float = CONTACT_SIGMA) -> np.ndarray:
    """Per-pixel loss weight ``(H, W)`` float32 of instance ``labels``: ``1 + gain · exp(-(d1 + d2)² / 2σ²)``.

    1 everywhere with fewer than two nuclei (no second nucleus to meet) or a gain of 0.
    """
    ones = np.ones(labels.shape, np.float32)
    if gain <= 0 or not labels.any():
        return ones
    d1, (rows, cols) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[rows, cols]
    # Where the nearest nucleus changes: marked on the first pixel of each changing pair for the
    # distance (so that a pixel next to the border is 1 px from it, as the exact d2 has it), on
    # both for the contact line inside touching nuclei (each of the two gets its rim weighed).
    first, both = np.zeros(labels.shape, bool), np.zeros(labels.shape, bool)
    change = owner[:-1, :] != owner[1:, :]
    first[:-1, :] |= change
    both[:-1, :] |= change
    both[1:, :] |= change
    change = owner[:, :-1] != owner[:, 1:]
    first[:, :-1] |= change
    both[:, :-1] |= change
    both[:, 1:] |= change
    if not first.any():
        return ones
    dv = ndi.distance_transform_edt(~first)
    d2 = d1 + 2 * dv
    gap = 1 + gain * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    # Inside nuclei only their line of contact with another (both distances 0): a band reaching
    # into them would weigh the middle of every crowded nucleus too.
    inside = np.where(both, 1 + gain, 1)
    return np.where(labels > 0, inside, gap).astype(np.float32)
