"""Recent planes and the model's predictions on them, so asking again does not run the model again.

The web page sends one file several times: the probability map to show, the outlines to draw,
each re-count after the threshold or split changes, each download — and a script often asks for
the mask, then the labels, then the table of the same image. Every one of those used to decode
the file, estimate the nucleus size and run the model again, though only the objects differ.

What is kept, per upload (its bytes' SHA-256), chosen plane and model: the decoded plane, the
scale chosen for each ``diameter=`` (None: the estimate, which reads the model's own threshold and
object settings, not the request's), and the in-memory prediction at each scale. A later request
finds what it can and computes the rest; the answer is the one it would get without the cache,
because everything a result depends on is in the key at the step that uses it (the upload, plane,
model, tiling and limits key the entry; the diameter keys the scale; the scale keys the
prediction; threshold and split act only after it, on the objects). Windowed predictions (large
images, band by band) are not kept, nor their planes: they never exist whole. Jobs do not use it.

Least recently used planes go first once the kept bytes pass the budget (``UNET_PREDICTION_CACHE_MB``;
0 turns it off). The budget is outside admission control's pixel budget: it is resident memory the
operator sizes with the rest.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class PlaneKey:
    """Which plane of which upload, read how, for which model.

    ``upload``: SHA-256 of the request body; ``selection``: the request's channel / z / t /
    projection / pixel size; ``model``: the engine's identity (checksum, precision);
    ``reading``: every setting that changes what the upload decodes to or how it is predicted
    apart from the request (pixel limits, tiling, batch size).
    """

    upload: str
    selection: Hashable
    model: Hashable
    reading: Hashable

    @staticmethod
    def digest(data: bytes) -> str:
        # A stored upload (service.uploads.StoredImage) was hashed as it arrived: not gigabytes again.
        return getattr(data, "sha256", None) or hashlib.sha256(data).hexdigest()


class PlaneEntry:
    """One kept plane: its decoded pixels, scales chosen on it, predictions at those scales.

    Thread-safe. Scales asked for by two requests at once are estimated twice and kept once;
    a prediction is computed once, the other requests waiting for it.
    """

    def __init__(self, cache: PredictionCache, key: PlaneKey) -> None:
        self._cache, self.key = cache, key
        self._lock = threading.Lock()
        self._plane: Any = None
        self._scales: dict[Hashable, Any] = {}
        self._predictions: dict[Hashable, Any] = {}
        self._running: dict[Hashable, threading.Event] = {}  # predictions being computed now
        self.nbytes = 0

    @property
    def plane(self) -> Any:
        with self._lock:
            return self._plane

    def keep_plane(self, plane: Any, nbytes: int) -> None:
        with self._lock:
            if self._plane is not None:
                return
            self._plane = plane
        self._cache._grew(self, nbytes)

    def scale(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """``(value, reused)``: the scale chosen before for ``key``, else ``compute()`` kept."""
        with self._lock:
            if key in self._scales:
                return self._scales[key], True
        value = compute()
        with self._lock:
            self._scales.setdefault(key, value)
        return value, False

    def prediction(
        self,
        key: Hashable,
        compute: Callable[[], T],
        nbytes: Callable[[T], int],
        while_waiting: Callable[[], None] | None = None,
    ) -> tuple[T, bool]:
        """``(prediction, reused)``: the one made before at ``key`` (the scale factor), else
        ``compute()``, kept (``nbytes(it)`` counts against the budget).

        One computation per key at a time: a request that finds another computing the same
        prediction waits for it and reuses it (a script asking for the mask, the labels and the
        table of one image at once runs the model once), calling ``while_waiting()`` every
        :data:`WAIT_POLL_S` — it raises to give up (the waiter's client left). If the computing
        request fails or is cancelled, one of the waiters computes instead.
        """
        while True:
            with self._lock:
                if key in self._predictions:
                    return self._predictions[key], True
                running = self._running.get(key)
                if running is None:
                    running = self._running[key] = threading.Event()
                    break  # this request computes
            while not running.wait(WAIT_POLL_S):
                if while_waiting is not None:
                    while_waiting()
        try:
            value = compute()
            size = nbytes(value)
            with self._lock:
                self._predictions[key] = value
        finally:
            with self._lock:
                del self._running[key]
            running.set()
        self._cache._grew(self, size)
        return value, False


#: How often a request waiting for another's prediction asks whether to give up, seconds.
WAIT_POLL_S = 0.1

#: Most planes kept whatever their size: an upload that fails to decode leaves an empty entry,
#: and a stream of such uploads must not grow the table without bound.
MAX_ENTRIES = 64


class PredictionCache:
    """Least-recently-used :class:`PlaneEntry` objects within ``max_bytes`` (0: keeps nothing)
    and ``max_entries``.

    ``entry(key)`` hands out the entry for a plane (new and empty on a miss); ``hits`` and
    ``misses`` count planes found and not found.
    """

    def __init__(self, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.max_entries = max(1, int(max_entries))
        self._entries: OrderedDict[PlaneKey, PlaneEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def entry(self, key: PlaneKey) -> PlaneEntry | None:
        """The plane's entry, most recently used now; None when the cache is off."""
        if not self.enabled:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
            created = PlaneEntry(self, key)
            self._entries[key] = created
            self._trim()
            return created

    def discard(self, entry: PlaneEntry) -> None:
        """Forget ``entry`` and what it holds (a plane whose prediction is not kept: band by band)."""
        with self._lock:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
                self.nbytes -= entry.nbytes

    def _grew(self, entry: PlaneEntry, nbytes: int) -> None:
        """``entry`` keeps ``nbytes`` more: evict the least recently used until within budget
        (the entry itself too when it alone is over)."""
        with self._lock:
            if self._entries.get(entry.key) is not entry:
                return  # evicted while it was computing: what it holds dies with the request
            entry.nbytes += nbytes
            self.nbytes += nbytes
            self._trim()

    def _trim(self) -> None:
        """Evict the least recently used entries until within both bounds (lock held)."""
        while self._entries and (self.nbytes > self.max_bytes or len(self._entries) > self.max_entries):
            _, oldest = self._entries.popitem(last=False)
            self.nbytes -= oldest.nbytes


def frozen(*arrays: np.ndarray | None) -> None:
    """Make kept arrays read-only: a later request that wrote into one would change what every
    request after it gets, so such a write fails loudly instead."""
    for a in arrays:
        if a is not None:
            a.flags.writeable = False


def array_bytes(*arrays: np.ndarray | None) -> int:
    """Bytes held by the arrays given (None counts 0)."""
    return sum(a.nbytes for a in arrays if a is not None)
