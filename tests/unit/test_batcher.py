"""The dynamic batcher: grouping, delay bound, shapes, backpressure, cancellation, shutdown."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import BatcherClosed, Cancelled, DynamicBatcher, Overloaded


class RecordingEngine:
    """Doubles its input; records each batch's shape; can be held to simulate a slow run."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.seen: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        self.seen.append(batch.copy())
        self.entered.set()
        assert self.gate.wait(10)
        return batch * 2.0


def tiles(n: int, value: float, size: int = 8) -> np.ndarray:
    out = np.zeros((n, 1, size, size), np.float32)
    out += value + np.arange(n, dtype=np.float32)[:, None, None, None]
    return out


def test_concurrent_callers_share_one_run_and_get_their_own_results() -> None:
    engine = RecordingEngine()
    batcher = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_s=0.5, max_queue_tiles=16)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.infer, tiles(2, 10.0 * k)) for k in range(4)]
            results = [f.result(5) for f in futures]
        assert engine.batches == [(8, 1, 8, 8)]
        for k, result in enumerate(results):
            np.testing.assert_array_equal(result, tiles(2, 10.0 * k) * 2)
    finally:
        batcher.close()


def test_a_lone_tile_runs_after_the_queue_delay() -> None:
    engine = RecordingEngine()
    batcher = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_s=0.02, max_queue_tiles=16)
    caller = ThreadPoolExecutor(1)
    try:
        # Nothing else ever arrives: it runs alone (a batcher waiting for a full batch would never
        # answer, and result() would time out) rather than after some wall-clock bound.
        out = caller.submit(batcher.infer, tiles(1, 3.0)).result(60)
        assert engine.batches == [(1, 1, 8, 8)]
        np.testing.assert_array_equal(out, tiles(1, 3.0) * 2)
    finally:
        batcher.close()
        caller.shutdown(wait=False)


def test_tiles_of_different_shapes_are_never_mixed() -> None:
    engine = RecordingEngine()
    batcher = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_s=0.2, max_queue_tiles=16)
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(batcher.infer, tiles(3, 1.0, size=8))
            b = pool.submit(batcher.infer, tiles(2, 5.0, size=16))
            np.testing.assert_array_equal(a.result(5), tiles(3, 1.0, size=8) * 2)
            np.testing.assert_array_equal(b.result(5), tiles(2, 5.0, size=16) * 2)
        assert sorted(engine.batches) == [(2, 1, 16, 16), (3, 1, 8, 8)]
    finally:
        batcher.close()


def test_large_chunks_are_split_at_the_max_batch_size() -> None:
    engine = RecordingEngine()
    batcher = DynamicBatcher(engine, max_batch_size=4, max_queue_delay_s=0.0, max_queue_tiles=16)
    try:
        out = batcher.infer(tiles(10, 0.0))
        np.testing.assert_array_equal(out, tiles(10, 0.0) * 2)
        assert [b[0] for b in engine.batches] == [4, 4, 2]
    finally:
        batcher.close()


def test_big_tiles_run_in_smaller_batches_under_the_pixel_cap() -> None:
    engine = RecordingEngine()
    # 16x16 tiles are 256 px: a 600-px cap allows 2 per run; 8x8 tiles (64 px) still get 4.
    batcher = DynamicBatcher(
        engine, max_batch_size=4, max_queue_delay_s=0.0, max_queue_tiles=16, max_batch_pixels=600
    )
    try:
        out = batcher.infer(tiles(5, 0.0, size=16))
        np.testing.assert_array_equal(out, tiles(5, 0.0, size=16) * 2)
        assert [b[0] for b in engine.batches] == [2, 2, 1]
        engine.batches.clear()
        batcher.infer(tiles(4, 0.0, size=8))
        assert [b[0] for b in engine.batches] == [4]
        engine.batches.clear()
        batcher.infer(tiles(2, 0.0, size=32))  # one tile over the cap still runs, alone
        assert [b[0] for b in engine.batches] == [1, 1]
    finally:
        batcher.close()


def test_a_full_queue_rejects_at_once_with_a_retry_hint() -> None:
    engine = RecordingEngine()
    engine.gate.clear()  # the first batch blocks in the engine
    batcher = DynamicBatcher(engine, max_batch_size=1, max_queue_delay_s=0.0, max_queue_tiles=2)
    pool, caller = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    try:
        running = pool.submit(batcher.infer, tiles(1, 0.0))
        assert engine.entered.wait(5)
        waiting = pool.submit(batcher.infer, tiles(2, 1.0))  # fills the queue
        deadline = time.monotonic() + 5
        while batcher.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        # Refused while the engine is still blocked: it did not wait for room in the queue (that
        # would need the gate opened, which happens only below).
        with pytest.raises(Overloaded) as info:
            caller.submit(batcher.infer, tiles(1, 2.0)).result(60)
        assert not engine.gate.is_set() and batcher.depth == 2
        assert info.value.retry_after_s >= 1
        engine.gate.set()
        running.result(5)
        waiting.result(5)
    finally:
        engine.gate.set()
        batcher.close()
        pool.shutdown()
        caller.shutdown()


def test_cancelled_callers_tiles_are_never_computed() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    batcher = DynamicBatcher(engine, max_batch_size=1, max_queue_delay_s=0.0, max_queue_tiles=16)
    stop = threading.Event()
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(batcher.infer, tiles(1, 0.0))
        assert engine.entered.wait(5)
        victim = pool.submit(batcher.infer, tiles(3, 100.0), stop.is_set)
        deadline = time.monotonic() + 5
        while batcher.depth < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        with pytest.raises(Cancelled):
            victim.result(5)
        assert batcher.depth == 0
        engine.gate.set()
        first.result(5)
        assert all(batch.max() < 100.0 for batch in engine.seen)
    finally:
        engine.gate.set()
        batcher.close()
        pool.shutdown()


def test_an_engine_error_reaches_its_caller_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return batch

    batcher = DynamicBatcher(flaky, max_batch_size=4, max_queue_delay_s=0.0, max_queue_tiles=16)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.infer(tiles(1, 0.0))
        np.testing.assert_array_equal(batcher.infer(tiles(1, 1.0)), tiles(1, 1.0))
    finally:
        batcher.close()


def test_close_fails_queued_callers_and_refuses_new_ones() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    batcher = DynamicBatcher(engine, max_batch_size=1, max_queue_delay_s=0.0, max_queue_tiles=16)
    pool = ThreadPoolExecutor(2)
    try:
        pool.submit(batcher.infer, tiles(1, 0.0))
        assert engine.entered.wait(5)
        queued = pool.submit(batcher.infer, tiles(1, 1.0))
        deadline = time.monotonic() + 5
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        engine.gate.set()
        batcher.close()
        # The queued caller either finished before close or was told the batcher closed.
        with contextlib.suppress(BatcherClosed):
            queued.result(5)
        with pytest.raises(BatcherClosed):
            batcher.infer(tiles(1, 0.0))
    finally:
        engine.gate.set()
        pool.shutdown()


def test_a_cancelled_caller_returns_only_once_its_running_tiles_have_landed() -> None:
    # The caller's tile is in the running batch when it cancels: infer raises Cancelled only after
    # that batch has finished, so nothing of the caller is computed once it has its answer (what a
    # job's DELETE promises, tests/api/test_jobs.py).
    engine = RecordingEngine()
    engine.gate.clear()
    batcher = DynamicBatcher(engine, max_batch_size=2, max_queue_delay_s=0.0, max_queue_tiles=16)
    stop = threading.Event()
    pool = ThreadPoolExecutor(1)
    try:
        victim = pool.submit(batcher.infer, tiles(1, 7.0), stop.is_set)
        assert engine.entered.wait(5)  # its tile is running, held at the gate
        stop.set()
        time.sleep(0.2)  # several of infer's polls of should_stop
        assert not victim.done(), "Cancelled was raised while the caller's tile was still running"
        engine.gate.set()
        with pytest.raises(Cancelled):
            victim.result(5)
        assert len(engine.seen) == 1
    finally:
        engine.gate.set()
        batcher.close()
        pool.shutdown()
