"""Admission by work: pixels in flight against a budget, in two fair lanes.

A request costs its pixels (width × height of the plane it works on): memory and compute both
grow with them, where a request *count* treats a 256² thumbnail like an 8192² slide. A
request is admitted when its pixels fit its lane's budget; otherwise it waits in that lane's
FIFO queue, bounded in length and in (estimated) wait, or is refused at once with a retry
time computed from the work ahead and the measured throughput.

**Two lanes, so small images are not starved behind huge ones.**

- *small* (``≤ small_pixels``): its own budget ``small_budget``, which large requests can never
  take; small requests may also borrow free large-lane budget while no large request waits.
- *large*: ``budget``, FIFO, so a large request is never overtaken by later large ones; while
  one waits, small requests stop borrowing, so it gets its turn. A request larger than the
  whole budget (a legal max-size image) is admitted alone, when the large lane is empty.

Memory therefore stays under ``bytes_per_pixel × (max(budget, largest image) + small_budget)``
above the idle process (docker/README.md derives the defaults from measurements).

**Growing.** A request's pixels may grow once its nucleus scale is known (an image enlarged
×2 has 4× the pixels): :meth:`Admission.grow` charges the difference, waiting ahead of new
requests when it does not fit; if every other holder of its lane is itself waiting to grow,
the oldest grower goes first (no deadlock).

This module is pure bookkeeping: no threads, no I/O, an injected clock. Callers wait on the
``wake`` callback they pass (the HTTP layer: an asyncio event or a threading event).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Lane = Literal["small", "large"]
LANES: tuple[Lane, ...] = ("small", "large")
#: Why a request was refused (the ``reason`` label of ``unet_rejected_requests_total``).
Reason = Literal["queue_full", "wait_estimate", "wait_timeout"]


@dataclass(frozen=True)
class Limits:
    """The admission policy; pixel counts are width × height of one plane.

    Attributes:
        budget: pixels in flight in the large lane (an oversize request runs there alone).
        small_pixels: requests up to this size use the small lane.
        small_budget: pixels in flight in the small lane (≥ ``small_pixels``).
        max_requests: requests admitted at once in each lane.
        max_queued: requests waiting in both lanes together; beyond this, refused at once.
        max_wait_s: longest a request waits to be admitted; an estimated wait beyond it is
            refused at once.
        throughput: work rate assumed until one is measured, pixels per second.
    """

    budget: int
    small_pixels: int
    small_budget: int
    max_requests: int = 64
    max_queued: int = 64
    max_wait_s: float = 10.0
    throughput: float = 1e6

    def __post_init__(self) -> None:
        if min(self.budget, self.small_pixels, self.max_requests) < 1 or self.max_queued < 0:
            raise ValueError("budgets, sizes and max_requests must be ≥ 1, max_queued ≥ 0")
        if self.small_pixels > self.budget:
            raise ValueError(f"a small request ({self.small_pixels} px) must fit the budget ({self.budget})")
        if self.small_budget < self.small_pixels:
            raise ValueError(
                f"the small lane's budget ({self.small_budget}) must hold one small request "
                f"({self.small_pixels} pixels)"
            )
        if self.max_wait_s < 0 or self.throughput <= 0:
            raise ValueError("max_wait_s must be ≥ 0 and throughput > 0")

    def lane_for(self, pixels: int) -> Lane:
        return "small" if pixels <= self.small_pixels else "large"

    def capacity(self, lane: Lane) -> int:
        return self.small_budget if lane == "small" else self.budget


class Rejected(Exception):
    """Not admitted: why, and when a retry is likely to be admitted (seconds, ≥ 1)."""

    def __init__(self, reason: Reason, retry_after_s: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


_ids = itertools.count(1)


@dataclass(eq=False)
class Ticket:
    """One request's claim. ``charge`` pixels are held in ``charged_lane`` once admitted."""

    pixels: int
    lane: Lane
    wake: Callable[[], None]
    measure: bool  # its pixels count toward the measured throughput (segmentation, not previews)
    enqueued_at: float
    id: int = field(default_factory=lambda: next(_ids))
    charge: int = 0
    charged_lane: Lane | None = None
    admitted_at: float | None = None
    growing_to: int | None = None  # pixels asked for by a pending grow()
    done: bool = False

    @property
    def admitted(self) -> bool:
        return self.charged_lane is not None and self.growing_to is None and not self.done


@dataclass(frozen=True)
class Snapshot:
    """The controller's state for metrics and ``GET /v1/model``."""

    in_flight_pixels: dict[str, int]
    in_flight_requests: int
    queued_pixels: dict[str, int]
    queued_requests: dict[str, int]
    throughput: float  # pixels per second, measured (or the assumed one until measured)
    measured: bool


class Admission:
    """Thread-safe admission controller (see the module docstring for the policy)."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[Lane, int] = {"small": 0, "large": 0}
        self._holders: set[Ticket] = set()
        self._queues: dict[Lane, deque[Ticket]] = {"small": deque(), "large": deque()}
        self._growers: deque[Ticket] = deque()
        # Throughput: measured pixels finished per second of time with measured work in flight.
        self._rate = float(limits.throughput)
        self._measured = False
        self._measuring = 0  # measured tickets admitted now
        self._busy_since: float | None = None
        self._busy_s = 0.0  # since the last completion
        self._done_pixels = 0  # since the last completion

    # --- requests --------------------------------------------------------------------------------

    def request(
        self,
        pixels: int,
        wake: Callable[[], None] = lambda: None,
        measure: bool = True,
        max_wait_s: float | None = None,
    ) -> Ticket:
        """Admit ``pixels`` now (``ticket.admitted``) or queue them (``wake()`` is called, from
        whichever thread frees the room, once admitted). ``max_wait_s`` overrides the limit's
        (a batch's later files may wait longer: their response is already streaming).

        Raises:
            Rejected: the queue is full, or the estimated wait exceeds ``max_wait_s``.
        """
        pixels = max(1, int(pixels))
        lane = self.limits.lane_for(pixels)
        ticket = Ticket(pixels, lane, wake, measure, self._clock())
        with self._lock:
            if not self._queues[lane] and lane not in self._promised() and self._fits(ticket, pixels):
                self._admit(ticket, pixels)
                return ticket
            queued = sum(len(q) for q in self._queues.values())
            if queued >= self.limits.max_queued:
                raise Rejected(
                    "queue_full",
                    self._retry_after(lane, pixels),
                    f"{queued} requests are already waiting to be admitted; retry later",
                )
            wait = self._wait_estimate(lane, pixels)
            limit = self.limits.max_wait_s if max_wait_s is None else max_wait_s
            if wait > limit:
                raise Rejected(
                    "wait_estimate",
                    self._retry_after(lane, pixels),
                    f"about {wait:.0f} s of work is ahead of this image ({pixels:,} pixels), more than "
                    f"the {limit:g} s a request may wait; retry later",
                )
            self._queues[lane].append(ticket)
        return ticket

    def withdraw(self, ticket: Ticket) -> bool:
        """Take a waiting ticket out of its queue (timed out, client gone): True if it was still
        waiting, False if it had been admitted meanwhile (the caller then owns an admission)."""
        with self._lock:
            if ticket.charged_lane is not None or ticket.done:
                return False
            self._queues[ticket.lane].remove(ticket)
            ticket.done = True
            woken = self._admit_waiting()
        _wake(woken)
        return True

    def release(self, ticket: Ticket, completed: bool = True) -> None:
        """The request has finished (or failed); its pixels are free. Idempotent; a ticket still
        waiting is withdrawn. ``completed``: its work ran to the end (counts for throughput)."""
        with self._lock:
            if ticket.done:
                return
            if ticket.charged_lane is None:
                self._queues[ticket.lane].remove(ticket)
            else:
                if ticket.growing_to is not None:
                    self._growers.remove(ticket)
                    ticket.growing_to = None
                self._uncharge(ticket, completed)
            ticket.done = True
            woken = self._admit_waiting()
        _wake(woken)

    def grow(self, ticket: Ticket, pixels: int) -> bool:
        """Raise an admitted ticket's charge to ``pixels``: True when granted at once; otherwise
        it waits ahead of every queued request and ``ticket.wake()`` is called when granted
        (:meth:`release` or :meth:`withdraw_grow` give up)."""
        pixels = int(pixels)
        with self._lock:
            if not ticket.admitted:
                raise ValueError("only an admitted ticket can grow")
            if pixels <= ticket.charge:
                return True
            ticket.growing_to, ticket.lane = pixels, self.limits.lane_for(pixels)
            self._growers.append(ticket)
            woken = self._admit_waiting()
            granted = ticket.growing_to is None
        _wake([t for t in woken if t is not ticket])
        return granted

    def withdraw_grow(self, ticket: Ticket) -> bool:
        """Stop waiting to grow: True if the grow was still pending (the old charge is kept)."""
        with self._lock:
            if ticket.growing_to is None:
                return False
            self._growers.remove(ticket)
            ticket.growing_to = None
            woken = self._admit_waiting()
        _wake(woken)
        return True

    # --- what callers and metrics read --------------------------------------------------------------

    def retry_after_s(self, pixels: int) -> int:
        with self._lock:
            return self._retry_after(self.limits.lane_for(pixels), pixels)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                in_flight_pixels=dict(self._used),
                in_flight_requests=len(self._holders),
                queued_pixels={lane: sum(t.pixels for t in q) for lane, q in self._queues.items()},
                queued_requests={lane: len(q) for lane, q in self._queues.items()},
                throughput=self._rate,
                measured=self._measured,
            )

    # --- policy (called with the lock held) ---------------------------------------------------------

    def _fits(self, ticket: Ticket, pixels: int) -> bool:
        """Whether ``ticket`` can hold ``pixels`` now; sets nothing. A grower's own charge counts as free."""
        own = ticket.charge if ticket.charged_lane is not None else 0
        return self._lane_with_room(ticket, pixels, own) is not None

    def _lane_with_room(self, ticket: Ticket, pixels: int, own: int) -> Lane | None:
        small, large = self.limits.small_budget, self.limits.budget
        held_small = own if ticket.charged_lane == "small" else 0
        held_large = own if ticket.charged_lane == "large" else 0
        lane = self.limits.lane_for(pixels)
        room_small = self._used["small"] - held_small + pixels <= small
        if lane == "small" and room_small and self._has_seat(ticket, "small"):
            return "small"
        if lane == "small" and (self._queues["large"] or "large" in self._promised(besides=ticket)):
            return None  # a large request is waiting: no borrowing, so it gets its turn
        used_large = self._used["large"] - held_large
        if (used_large + pixels <= large or used_large == 0) and self._has_seat(ticket, "large"):
            return "large"  # fits, or runs alone in the large lane (bigger than its budget)
        return None

    def _has_seat(self, ticket: Ticket, lane: Lane) -> bool:
        """``max_requests`` per lane (a lane's count never blocks the other: small requests do
        not wait behind a lane full of large ones). A grower keeps its seat."""
        if ticket.charged_lane is not None:
            return True
        return sum(1 for t in self._holders if t.charged_lane == lane) < self.limits.max_requests

    def _admit(self, ticket: Ticket, pixels: int) -> None:
        own = ticket.charge if ticket.charged_lane is not None else 0
        lane = self._lane_with_room(ticket, pixels, own)
        if lane is None:  # the deadlock breaker: every other holder waits to grow
            lane = ticket.charged_lane or "large"
        now = self._clock()
        if ticket.charged_lane is None:
            self._holders.add(ticket)
            ticket.admitted_at = now
            if ticket.measure:
                if self._measuring == 0:
                    self._busy_since = now
                self._measuring += 1
        else:
            self._used[ticket.charged_lane] -= ticket.charge
        self._used[lane] += pixels
        ticket.charge, ticket.charged_lane, ticket.growing_to = pixels, lane, None

    def _uncharge(self, ticket: Ticket, completed: bool) -> None:
        assert ticket.charged_lane is not None
        self._used[ticket.charged_lane] -= ticket.charge
        self._holders.discard(ticket)
        if not ticket.measure:
            return
        now = self._clock()
        if completed:
            self._done_pixels += ticket.charge
        self._measuring -= 1
        if self._busy_since is not None:
            self._busy_s += now - self._busy_since
            self._busy_since = now if self._measuring else None
        # A rate from a stretch too short to mean anything (a 1-tile image) would swing the
        # estimate; fold it in once enough busy time has accumulated.
        if completed and self._busy_s >= 0.5:
            rate = self._done_pixels / self._busy_s
            self._rate = rate if not self._measured else 0.7 * self._rate + 0.3 * rate
            self._measured = True
            self._busy_s, self._done_pixels = 0.0, 0

    def _admit_waiting(self) -> list[Ticket]:
        """Admit what now fits: growers first (they hold memory already), then each lane's head."""
        woken: list[Ticket] = []
        progress = True
        while progress:
            progress = False
            for ticket in list(self._growers):
                target = ticket.growing_to
                assert target is not None
                if self._fits(ticket, target) or self._stuck(ticket):
                    self._growers.remove(ticket)
                    self._admit(ticket, target)
                    woken.append(ticket)
                    progress = True
            blocked = self._promised()
            for lane in LANES[::-1]:  # the large head first: it may have stopped borrowing
                queue = self._queues[lane]
                while lane not in blocked and queue and self._fits(queue[0], queue[0].pixels):
                    ticket = queue.popleft()
                    self._admit(ticket, ticket.pixels)
                    woken.append(ticket)
                    progress = True
        return woken

    def _promised(self, besides: Ticket | None = None) -> set[Lane]:
        """Lanes whose next free room is promised to a waiting grower (it holds memory already)."""
        return {t.lane for t in self._growers if t is not besides}

    def _stuck(self, grower: Ticket) -> bool:
        """The deadlock breaker: the first grower of its lane goes ahead when every other holder
        of that lane is itself waiting to grow (nobody would ever free the room)."""
        first = next(t for t in self._growers if t.lane == grower.lane)
        if first is not grower:
            return False
        others = [t for t in self._holders if t is not grower and t.charged_lane == grower.lane]
        return all(t.growing_to is not None for t in others)

    def _wait_estimate(self, lane: Lane, pixels: int) -> float:
        """Seconds until a new ``pixels`` request in ``lane`` is likely admitted: the work that
        must finish first (in flight beyond what leaves room, plus everything queued ahead)."""
        cap = self.limits.capacity(lane)
        ahead = sum(t.pixels for t in self._queues[lane]) + sum(
            (t.growing_to or 0) - t.charge for t in self._growers
        )
        in_lane = self._used[lane]
        must_finish = max(0, in_lane + ahead + min(pixels, cap) - cap)
        if lane == "large" and pixels > cap:
            must_finish = in_lane + ahead  # it runs alone: everything before it must finish
        return must_finish / self._rate

    def _retry_after(self, lane: Lane, pixels: int) -> int:
        """Whole seconds (≥ 1) until this request would likely be admitted at once."""
        return max(1, math.ceil(self._wait_estimate(lane, pixels) - self.limits.max_wait_s))


def _wake(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        ticket.wake()
