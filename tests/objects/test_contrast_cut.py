"""The contrast cut (``ObjectParams.min_snr``): a component of the mask whose mean model input
stands less than ``min_snr`` ring standard deviations above the median of a ring around it is
dropped whole, by labelling and counting alike; one without a ring around it is kept."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from service.objects import (
    MIN_RING_PIXELS,
    ObjectParams,
    Surroundings,
    _faint_components,
    _median,
    _std,
    count_objects,
    fill_holes,
    label_objects,
)

CUT = ObjectParams(method="connected_components", min_snr=2.0, snr_ring=6)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """(mask, input): a bright disc (25 σ above the noise), a faint one (half a σ), a speck."""
    grey = np.random.default_rng(0).normal(0.1, 0.02, (96, 96)).astype(np.float32)
    mask = np.zeros((96, 96), np.uint8)
    cv2.circle(mask, (25, 30), 8, 1, -1)
    grey[mask > 0] += 0.5
    faint = np.zeros_like(mask)
    cv2.circle(faint, (70, 60), 8, 1, -1)
    grey[faint > 0] += 0.01
    mask |= faint
    mask[90:92, 5:7] = 1  # a speck under min_area: dropped as a speck, not measured
    return mask > 0, grey


def test_a_faint_component_is_dropped_and_a_bright_one_kept() -> None:
    mask, grey = _scene()
    around = Surroundings(grey, mask)
    labels = label_objects(mask, CUT, around=around)
    assert int(labels.max()) == 1 == count_objects(mask, CUT, around=around)
    assert labels[30, 25] == 1 and labels[60, 70] == 0
    off = ObjectParams(method="connected_components", snr_ring=6)
    assert int(label_objects(mask, off).max()) == 2  # min_snr 0: every component


def test_the_ring_leaves_out_what_the_model_marked() -> None:
    # A disc 10 σ above the noise beside a bright neighbour inside its ring: the neighbour's pixels
    # are marked, so they do not spread the ring's values and the disc is kept.
    grey = np.random.default_rng(1).normal(0.1, 0.02, (96, 96)).astype(np.float32)
    disc, neighbour = np.zeros((96, 96), np.uint8), np.zeros((96, 96), np.uint8)
    cv2.circle(disc, (40, 40), 8, 1, -1)
    cv2.circle(neighbour, (40, 56), 6, 1, -1)  # one row below the disc, inside its ring
    grey[disc > 0] += 0.2
    grey[neighbour > 0] += 0.5
    both = (disc | neighbour) > 0
    labels = label_objects(both, CUT, around=Surroundings(grey, both))
    assert labels[40, 40] > 0 and labels[56, 40] > 0 and int(labels.max()) == 2


def test_a_component_without_background_around_it_is_kept() -> None:
    grey = np.full((40, 40), 0.3, np.float32)
    everything = np.ones((40, 40), bool)
    assert count_objects(everything, CUT, around=Surroundings(grey, everything)) == 1


def test_the_cut_needs_the_input_around_the_components() -> None:
    mask, grey = _scene()
    for find in (label_objects, count_objects):
        with pytest.raises(ValueError, match="min_snr needs"):
            find(mask, CUT)
        with pytest.raises(ValueError, match="does not frame"):
            find(mask, CUT, around=Surroundings(grey[:-1], mask[:-1]))


def _reference_faint(
    components: np.ndarray, count: int, skip: np.ndarray, params: ObjectParams, around: Surroundings
) -> np.ndarray:
    """The cut as its definition reads, one component at a time on whole-size arrays (slow, plain):
    the ring is every pixel within ``snr_ring`` (a square) of the component, neither in it nor
    marked."""
    faint = np.zeros(count, bool)
    square = np.ones((2 * params.snr_ring + 1,) * 2, bool)
    marked = around.marked
    for component in range(1, count):
        if skip[component]:
            continue
        inside = np.zeros(marked.shape, bool)
        inside[around.above :] = components == component
        ring = ndimage.binary_dilation(inside, square) & ~inside & ~marked
        if ring.sum() < MIN_RING_PIXELS:
            continue
        background = around.grey[ring].astype(np.float64)
        core = around.grey[inside & marked].astype(np.float64)
        signal = core.mean() if core.size else 0.0
        faint[component] = (signal - np.median(background)) / (background.std() + 1e-6) < params.min_snr
    return faint


@pytest.mark.parametrize("above", [0, 7])
def test_the_cut_drops_exactly_what_its_definition_drops(above: int) -> None:
    # Crowded discs of every contrast, some touching the borders, some with holes (the components
    # are the filled mask's, the core only what was marked), seen with `above` rows of context
    # (a band's): the fast per-crop cut and the plain definition agree on every component.
    rng = np.random.default_rng(3)
    grey = rng.normal(0.1, 0.03, (150, 170)).astype(np.float32)
    marked = np.zeros(grey.shape, np.uint8)
    for _ in range(60):
        disc = np.zeros_like(marked)
        centre = (int(rng.integers(-3, 173)), int(rng.integers(-3, 153)))
        cv2.circle(disc, centre, int(rng.integers(2, 9)), 1, -1)
        grey[disc > 0] += np.float32(rng.uniform(0.0, 0.3))
        marked |= disc
    marked[rng.random(grey.shape) < 0.03] = 0  # pin holes: filled in the components, not marked
    marked = marked > 0
    filled = fill_holes(marked[above:])
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        filled.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    skip = stats[:, cv2.CC_STAT_AREA] < 4
    around = Surroundings(grey, marked, above)
    params = ObjectParams(method="connected_components", min_snr=1.5, snr_ring=5)
    fast = _faint_components(components, stats, skip, params, around)
    assert count > 20 and 0 < fast.sum() < count - 1  # both answers occur
    assert np.array_equal(fast, _reference_faint(components, count, skip, params, around))


def test_the_ring_statistics_are_numpys_own_to_the_bit() -> None:
    rng = np.random.default_rng(4)
    for size in [*range(1, 40), 127, 128, 129, 1000, 4097]:
        values = (rng.random(size) * rng.uniform(0.01, 3)).astype(np.float32).astype(np.float64)
        assert _std(values.copy()) == values.std()
        assert _median(values.copy()) == np.median(values)
