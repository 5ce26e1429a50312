"""benchmarks/flip_average.py averages a model's answers over four mirrors of each tile batch,
each mirrored back onto the tile before averaging."""

from __future__ import annotations

import numpy as np

from tests.benchmark_scripts import load_benchmark


def test_answers_are_mirrored_back_before_averaging() -> None:
    flip_averaged = load_benchmark("flip_average").flip_averaged
    batch = np.random.default_rng(1).random((2, 1, 8, 8)).astype(np.float32)
    seen: list[np.ndarray] = []

    def echo(tiles: np.ndarray) -> np.ndarray:  # a mirror-equivariant "model"
        seen.append(tiles.copy())
        return tiles * 2

    assert np.allclose(flip_averaged(echo)(batch), batch * 2)
    assert len(seen) == 4 and not np.array_equal(seen[1], seen[0])  # it did run on the mirrors

    # A "model" that answers with the tile's left-right position, whatever the tile: the
    # mirrored answers, put back, average to a flat 0.5 across the columns and the rows.
    ramp = np.linspace(0, 1, 8, dtype=np.float32)
    averaged = flip_averaged(lambda tiles: np.broadcast_to(ramp, tiles.shape).copy())(batch)
    assert averaged.shape == batch.shape and averaged.dtype == np.float32
    assert np.allclose(averaged, 0.5)
