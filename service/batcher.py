"""Dynamic batching: tiles from concurrent requests share one session run (as Triton's batcher does).

Request threads call the blocking :meth:`DynamicBatcher.infer` with a ``(N, C, h, w)`` chunk of
tiles. Each tile becomes a queue item; ONE worker thread owns the engine and repeatedly takes
the oldest tile plus up to ``max_batch_size - 1`` more of the *same shape* (ONNX needs one
shape per run), waiting at most ``max_queue_delay`` after the oldest tile arrived for the
batch to fill. Results are scattered back to the callers.

- **Bounded**: at most ``max_queue_tiles`` tiles wait; a chunk that does not fit raises
  :class:`Overloaded` at once (HTTP 503 + ``Retry-After``) instead of growing memory.
- **Cancellable**: ``infer(..., should_stop=...)`` polls the caller's flag (client gone,
  timeout) and removes the caller's tiles still waiting, so they are never computed.
- **Observable**: an optional :class:`BatchObserver` hears about batches, depth, rejections.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

#: How often a waiting caller checks its ``should_stop`` flag, seconds.
_POLL_S = 0.05


class BatcherError(RuntimeError):
    """Base class of the batcher's own failures."""


class Overloaded(BatcherError):
    """The queue is full: retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(BatcherError):
    """The batcher is shut down (or not started): no more tiles are accepted."""


class Cancelled(BatcherError):
    """The caller's ``should_stop`` turned true while its tiles were queued."""


class BatchObserver(Protocol):
    """Hooks for metrics; called from the worker or the submitting thread, must be cheap."""

    def batch_run(self, size: int, run_s: float, queue_waits_s: list[float]) -> None: ...
    def queue_depth(self, tiles: int) -> None: ...
    def rejected(self, tiles: int) -> None: ...
    def cancelled(self, tiles: int) -> None: ...


@dataclass(eq=False)
class _Job:
    """One ``infer`` call: its tiles, its output, and how many tiles are still owed."""

    tiles: np.ndarray
    remaining: int
    enqueued_at: float
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    error: BaseException | None = None
    cancelled: bool = False
    in_flight: int = 0  # tiles taken into a batch that is running (guarded by the condition)


@dataclass(eq=False, slots=True)
class _Item:
    job: _Job
    index: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.job.tiles.shape[1:]


class DynamicBatcher:
    """Groups tiles from concurrent callers into batched calls of ``run``.

    ``run`` is a blocking ``(B, C, h, w) float32 -> (B, K, h, w)`` function (``Engine.run``); it
    is only ever called from the single worker thread, so it need not be thread-safe.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 8,
        max_queue_delay_s: float = 0.002,
        max_queue_tiles: int = 64,
        max_batch_pixels: int | None = None,
        observer: BatchObserver | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue_tiles < 1:
            raise ValueError("max_batch_size and max_queue_tiles must be ≥ 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_tiles = max_queue_tiles
        self.max_batch_pixels = max_batch_pixels
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Exponentially averaged seconds per tile, for the Retry-After estimate.
        self._tile_s = 0.05
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    # --- caller side ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Tiles waiting (not yet taken into a batch)."""
        return len(self._queue)

    def retry_after_s(self) -> int:
        """A whole-second estimate of when the queue will have drained."""
        return max(1, math.ceil(self.depth * self._tile_s / self.max_batch_size))

    def infer(self, tiles: np.ndarray, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Run ``(N, C, h, w)`` tiles through the engine, batched with other callers' tiles.

        Blocks the calling thread (never call it on the event loop). Returns ``(N, K, h, w)``.
        Raises :class:`Overloaded` if the N tiles do not fit in the queue, :class:`Cancelled`
        if ``should_stop()`` turns true first (the tiles still queued are dropped),
        :class:`BatcherClosed` after :meth:`close`, or the engine's own exception.
        """
        if tiles.ndim != 4 or tiles.shape[0] == 0:
            raise ValueError(f"expected a non-empty (N, C, h, w) batch, got shape {tiles.shape}")
        n = tiles.shape[0]
        job = _Job(tiles=tiles, remaining=n, enqueued_at=time.monotonic())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the inference queue is shut down")
            if len(self._queue) + n > self.max_queue_tiles:
                retry = self.retry_after_s()
                if self._observer:
                    self._observer.rejected(n)
                raise Overloaded(
                    f"the inference queue is full ({len(self._queue)} of {self.max_queue_tiles} tiles "
                    f"waiting); retry in {retry} s",
                    retry,
                )
            self._queue.extend(_Item(job, i) for i in range(n))
            depth = len(self._queue)
            self._cond.notify_all()
        if self._observer:
            self._observer.queue_depth(depth)

        while not job.done.wait(_POLL_S if should_stop else None):
            if should_stop is not None and should_stop():
                self._cancel(job)
                raise Cancelled("the request was cancelled while its tiles were queued")
        if job.error is not None:
            raise job.error
        assert job.output is not None
        return job.output

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            job.cancelled = True
            before = len(self._queue)
            self._queue = deque(item for item in self._queue if item.job is not job)
            dropped = before - len(self._queue)
            depth = len(self._queue)
            # Tiles of this caller already in a running batch finish first: once ``infer`` has
            # raised Cancelled, nothing of the caller is computed any more (a job's DELETE, a
            # client gone, say so to the tile counters too). At most one batch's time.
            while job.in_flight and not self._closed:
                self._cond.wait(_POLL_S)
        if self._observer:
            self._observer.queue_depth(depth)
            if dropped:
                self._observer.cancelled(dropped)

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting tiles, fail the ones still queued, and join the worker."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in {item.job for item in pending}:
            job.error = BatcherClosed("the service is shutting down")
            job.done.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # --- worker side ---------------------------------------------------------------------------

    def _batch_limit(self, shape: tuple[int, ...]) -> int:
        """Most tiles of ``shape`` in one run: ``max_batch_size``, fewer for big tiles.

        Session memory grows with the pixels of a run, so eight 2048² tiles must not run
        together just because eight 256² tiles may; one tile always fits.
        """
        if self.max_batch_pixels is None:
            return self.max_batch_size
        pixels = shape[-1] * shape[-2]
        return max(1, min(self.max_batch_size, self.max_batch_pixels // max(1, pixels)))

    def _take_batch(self) -> list[_Item] | None:
        """Wait for the next batch; None when closed. Called with no lock held."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._queue[0]
                shape = first.shape
                deadline = first.job.enqueued_at + self.max_queue_delay_s
                # Wait for the batch to fill, but never past the oldest tile's deadline.
                while not self._closed:
                    same = sum(1 for item in self._queue if item.shape == shape)
                    remaining = deadline - time.monotonic()
                    if same >= self._batch_limit(shape) or remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return None
                if not self._queue:  # everything was cancelled while we waited
                    continue
                shape = self._queue[0].shape  # the head may have changed (cancellation)
                limit = self._batch_limit(shape)
                batch: list[_Item] = []
                rest: deque[_Item] = deque()
                for item in self._queue:
                    if item.job.error is not None:
                        continue  # an earlier batch of this caller failed; the caller has its answer
                    if len(batch) < limit and item.shape == shape:
                        batch.append(item)
                    else:
                        rest.append(item)
                self._queue = rest
                for item in batch:
                    item.job.in_flight += 1
                if batch:
                    return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if self._observer:
                self._observer.queue_depth(len(self._queue))
            started = time.monotonic()
            waits = [started - item.job.enqueued_at for item in batch]
            try:
                outputs = self._run(_stack(batch))
                if outputs.shape[0] != len(batch):
                    raise RuntimeError(f"engine returned {outputs.shape[0]} outputs for {len(batch)} tiles")
            except BaseException as exc:  # noqa: BLE001 - any engine failure belongs to its callers
                log.exception("inference batch of %d tiles failed", len(batch))
                self._landed(batch)
                for job in {item.job for item in batch}:
                    job.error = exc
                    job.done.set()
                continue
            self._landed(batch)
            run_s = time.monotonic() - started
            self._tile_s = 0.8 * self._tile_s + 0.2 * (run_s / len(batch))
            if self._observer:
                self._observer.batch_run(len(batch), run_s, waits)
            for item, out in zip(batch, outputs, strict=True):
                job = item.job
                if job.cancelled or job.error is not None:
                    continue
                if job.output is None:
                    job.output = np.empty((job.tiles.shape[0], *out.shape), dtype=out.dtype)
                job.output[item.index] = out
                job.remaining -= 1
                if job.remaining == 0:
                    job.done.set()


    def _landed(self, batch: list[_Item]) -> None:
        """The batch has run: its callers' tiles are no longer in flight (a cancel may return)."""
        with self._cond:
            for item in batch:
                item.job.in_flight -= 1
            self._cond.notify_all()


def _stack(batch: list[_Item]) -> np.ndarray:
    """The batch as one array; a contiguous run of one caller's tiles is passed as a view (no copy)."""
    job = batch[0].job
    first = batch[0].index
    if all(item.job is job and item.index == first + k for k, item in enumerate(batch)):
        return job.tiles[first : first + len(batch)]
    return np.stack([item.job.tiles[item.index] for item in batch])
