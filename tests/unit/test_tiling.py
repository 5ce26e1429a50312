"""Tile plan, padding, blending and stitching (pure numpy, no model)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.tiling import (
    Stitcher,
    blend_profile,
    blend_weights,
    iter_tile_batches,
    pad_image,
    plan_tiles,
    total_weight,
)

plan_args = st.tuples(
    st.integers(1, 300),  # height
    st.integers(1, 300),  # width
    st.integers(16, 128),  # tile_size
    st.integers(0, 48),  # overlap
    st.integers(0, 20),  # margin
    st.sampled_from([1, 2, 4, 8, 16, 32]),  # divisor
)


def stitch_identity(image: np.ndarray, plan, batch_size: int = 3) -> np.ndarray:
    """Run the identity 'model' through pad → tiles → stitcher."""
    padded = pad_image(image, plan)
    stitcher = Stitcher(plan, image.shape[0])
    for indices, batch in iter_tile_batches(padded, plan, batch_size):
        for index, tile in zip(indices, batch, strict=True):
            stitcher.add(index, tile)
    return stitcher.result()


@settings(max_examples=150, deadline=None)
@given(plan_args)
def test_plan_invariants(args):
    height, width, tile_size, overlap, margin, divisor = args
    plan = plan_tiles(height, width, tile_size, overlap, margin, divisor)
    assert plan.overlap >= 2 * margin
    for axis, length in ((plan.rows, height), (plan.cols, width)):
        assert axis.tile % divisor == 0 and axis.padded % divisor == 0
        assert all(s % divisor == 0 for s in axis.starts)  # pooling grids of all tiles coincide
        assert axis.pad_before == margin and axis.pad_after >= margin  # border defaults to margin
        assert axis.starts[0] == 0 and axis.starts[-1] + axis.tile == axis.padded
        for a, b in zip(axis.starts, axis.starts[1:], strict=False):
            assert a < b and a + axis.tile - b >= plan.overlap  # enough overlap everywhere
        n = len(axis.starts)
        if length <= tile_size:
            assert n == 1
        else:
            assert n <= -(-length // tile_size)
        if n > 1 and axis.tile > divisor:
            # no bigger than needed: one divisor step smaller no longer keeps the overlap
            smaller = axis.tile - divisor
            steps = (axis.padded - smaller) // divisor
            assert smaller - divisor * -(-steps // (n - 1)) < plan.overlap


@settings(max_examples=150, deadline=None)
@given(plan_args)
def test_total_weight_is_well_conditioned_everywhere(args):
    plan = plan_tiles(*args)
    total = total_weight(plan)
    assert total.shape == (plan.height, plan.width)
    # every pixel covered by full-context output, never a division by a tiny sum
    assert total.min() >= 1.0 - 1e-6
    assert total.max() <= plan.n_tiles + 1e-6


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_args, st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_identity_through_tiles_equals_input_exactly(args, channels, seed):
    plan = plan_tiles(*args)
    image = np.random.default_rng(seed).normal(size=(channels, plan.height, plan.width)).astype(np.float32)
    np.testing.assert_array_equal(stitch_identity(image, plan), image)


def test_tile_size_at_least_image_is_one_pass():
    plan = plan_tiles(300, 200, 300, 64, 16, 16)
    assert plan.n_tiles == 1
    assert plan.padded_shape == (336, 240)  # 300 + 2·16 → 336, 200 + 32 → 240
    assert plan.tile_weights(0).min() == 1.0  # border edges keep full weight


@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (3, 5), (17, 33)])
def test_tiny_and_degenerate_images(shape):
    plan = plan_tiles(*shape, 16, 8, 4, 16)
    image = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(1, *shape)
    np.testing.assert_array_equal(stitch_identity(image, plan), image)


def test_2048_at_tile_1024_is_four_tight_tiles():
    plan = plan_tiles(2048, 2048, 1024, 64, 32, 16)
    assert plan.grid == (2, 2)
    assert (plan.tile_h, plan.tile_w) == (1088, 1088)
    assert plan.compute_ratio < 1.15
    single = plan_tiles(2048, 2048, 2048, 64, 32, 16)
    assert single.n_tiles == 1 and single.compute_ratio < 1.07


def test_weights_zero_within_margin_of_interior_edges_and_ramp_between():
    margin, ramp = 8, 16
    w = blend_profile(64, margin, ramp, before=True, after=False)
    assert np.all(w[:margin] == 0)
    assert np.all(np.diff(w[margin : margin + ramp]) > 0)
    assert np.all(w[margin + ramp :] == 1)
    # complementary neighbours: aligned ramps sum to exactly one
    down = blend_profile(64, margin, ramp, before=False, after=True)
    np.testing.assert_array_equal(down[-margin - ramp : -margin] + w[margin : margin + ramp], 1.0)


def test_blend_weights_are_cached_and_read_only():
    a = blend_weights(32, 48, 4, 8, True, False, True, True)
    assert a is blend_weights(32, 48, 4, 8, True, False, True, True)
    assert a.shape == (32, 48) and a.dtype == np.float32
    with pytest.raises(ValueError):
        a[0, 0] = 1


def test_mirror_padding_reflects_the_border():
    plan = plan_tiles(4, 4, 64, 0, 2, 4)
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    padded = pad_image(image, plan)
    assert padded.shape == (1, 8, 8)
    np.testing.assert_array_equal(padded[0, 2:6, 2:6], image[0])
    np.testing.assert_array_equal(padded[0, 0, 2:6], image[0, 2])  # row -2 mirrors row 2


def test_tile_batches_are_lazy_and_bounded():
    plan = plan_tiles(8192, 8192, 512, 64, 16, 16)
    assert plan.n_tiles == 256
    batches = iter_tile_batches(np.zeros((1, *plan.padded_shape), np.float32), plan, 4)
    assert inspect.isgenerator(batches)
    indices, batch = next(batches)
    assert indices == [0, 1, 2, 3]
    assert batch.shape == (4, 1, plan.tile_h, plan.tile_w) and batch.dtype == np.float32


def test_stitcher_rejects_wrong_shapes_and_missing_tiles():
    plan = plan_tiles(40, 40, 16, 8, 2, 4)
    stitcher = Stitcher(plan, 2)
    with pytest.raises(ValueError):
        stitcher.add(0, np.zeros((1, plan.tile_h, plan.tile_w), np.float32))
    stitcher.add(0, np.zeros((2, plan.tile_h, plan.tile_w), np.float32))
    with pytest.raises(RuntimeError, match="tiles were added"):
        stitcher.result()


def test_blend_is_a_convex_combination_of_disagreeing_tiles():
    """Where tiles disagree (a real model), the result stays between their outputs."""
    plan = plan_tiles(100, 100, 30, 24, 4, 4)
    stitcher = Stitcher(plan, 1)
    for index in range(plan.n_tiles):
        stitcher.add(index, np.full((1, plan.tile_h, plan.tile_w), float(index), np.float32))
    result = stitcher.result()
    assert result.min() >= 0 and result.max() <= plan.n_tiles - 1
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("border", [0, 3])
def test_border_padding_can_be_reduced(border):
    plan = plan_tiles(100, 70, 40, 16, 8, 16, border=border)
    assert plan.rows.pad_before == border and plan.cols.pad_before == border
    image = np.random.default_rng(border).normal(size=(1, 100, 70)).astype(np.float32)
    np.testing.assert_array_equal(stitch_identity(image, plan), image)
    assert total_weight(plan).min() >= 1.0 - 1e-6
    bare = plan_tiles(2048, 2048, 2048, 96, 48, 16, border=0)
    assert bare.compute_ratio == 1.0


@settings(max_examples=60, deadline=None)
@given(plan_args)
def test_weight_so_far_is_the_sum_of_the_tiles_added_so_far(args):
    """The stitchers divide by per-axis sums instead of accumulating a weight map: the same sums."""
    height, width, tile_size, overlap, margin, divisor = args
    plan = plan_tiles(height, width, tile_size, overlap, margin, divisor)
    accumulated = np.zeros(plan.padded_shape, np.float64)
    for index in range(plan.n_tiles):
        y, x = plan.tile_origin(index)
        footprint = (slice(y, y + plan.tile_h), slice(x, x + plan.tile_w))
        accumulated[footprint] += plan.tile_weights(index)
        so_far = plan.total_weight_so_far(index)
        assert so_far.dtype == np.float32 and so_far.shape == (plan.tile_h, plan.tile_w)
        np.testing.assert_allclose(so_far, accumulated[footprint], rtol=1e-6, atol=1e-6)
    image = (slice(plan.rows.pad_before, plan.rows.pad_before + height),
             slice(plan.cols.pad_before, plan.cols.pad_before + width))
    np.testing.assert_allclose(accumulated[image], total_weight(plan), rtol=1e-6)


def test_stitcher_takes_tiles_in_raster_order_only():
    plan = plan_tiles(100, 100, 40, 16, 4, 2)
    stitcher = Stitcher(plan, 1)
    stitcher.add(0, np.zeros((1, plan.tile_h, plan.tile_w), np.float32))
    with pytest.raises(ValueError, match="raster order"):
        stitcher.add(2, np.zeros((1, plan.tile_h, plan.tile_w), np.float32))
