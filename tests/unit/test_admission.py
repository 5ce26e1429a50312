"""service.admission: pixels in flight against a budget, two fair lanes, growth, throughput."""

from __future__ import annotations

import threading

import pytest

from service.admission import Admission, Limits, Rejected

MP = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def controller(clock: Clock | None = None, **overrides: object) -> Admission:
    limits = {
        "budget": 10 * MP,
        "small_pixels": 2 * MP,
        "small_budget": 4 * MP,
        "max_requests": 64,
        "max_queued": 8,
        "max_wait_s": 100.0,
        "throughput": 1 * MP,
        **overrides,
    }
    return Admission(Limits(**limits), clock=clock or Clock())  # type: ignore[arg-type]


class Woken:
    """A wake callback that records the order in which tickets were admitted."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def __call__(self, name: str):
        return lambda: self.order.append(name)


def test_admits_by_pixels_not_by_count() -> None:
    adm = controller()
    a = adm.request(6 * MP)
    b = adm.request(4 * MP)
    c = adm.request(3 * MP)  # 13 MP > 10 MP large budget
    assert a.admitted and b.admitted and not c.admitted
    assert adm.snapshot().in_flight_pixels == {"small": 0, "large": 10 * MP}
    assert adm.snapshot().queued_requests == {"small": 0, "large": 1}
    adm.release(a)
    assert c.admitted
    assert adm.snapshot().in_flight_pixels["large"] == 7 * MP


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    adm = controller()
    small_large = adm.request(3 * MP)
    huge = adm.request(50 * MP)
    assert not huge.admitted, "it waits for the large lane to empty"
    adm.release(small_large)
    assert huge.admitted
    later = adm.request(3 * MP)
    assert not later.admitted, "nothing else shares the large lane with an oversize request"
    adm.release(huge)
    assert later.admitted


def test_small_requests_are_not_starved_behind_huge_ones() -> None:
    adm = controller()
    running = adm.request(8 * MP)
    huge = adm.request(30 * MP)
    assert not huge.admitted
    smalls = [adm.request(1 * MP) for _ in range(4)]
    assert all(s.admitted for s in smalls), "the small lane has its own budget"
    fifth = adm.request(1 * MP)
    assert not fifth.admitted, "with a large request waiting, small ones do not borrow its lane"
    adm.release(smalls[0])
    assert fifth.admitted
    adm.release(running)
    assert huge.admitted


def test_small_requests_borrow_the_large_lane_only_while_no_large_one_waits() -> None:
    adm = controller()
    tickets = [adm.request(2 * MP) for _ in range(7)]  # 4 MP small lane + 10 MP large lane
    assert [t.admitted for t in tickets] == [True] * 7
    assert adm.snapshot().in_flight_pixels == {"small": 4 * MP, "large": 10 * MP}
    large = adm.request(5 * MP)
    assert not large.admitted
    for t in tickets[2:5]:  # three borrowers finish: 6 MP of the large lane held
        adm.release(t)
    assert large.admitted
    late_small = adm.request(2 * MP)
    assert not late_small.admitted


def test_large_requests_are_served_in_arrival_order() -> None:
    woken = Woken()
    adm = controller()
    first = adm.request(9 * MP)
    adm.request(8 * MP, woken("eight"))
    adm.request(3 * MP, woken("three"))  # would fit beside `first`, but must not overtake
    assert adm.snapshot().queued_requests["large"] == 2
    adm.release(first)
    assert woken.order == ["eight"]


def test_a_full_queue_is_refused_at_once_with_a_retry_time() -> None:
    adm = controller(max_queued=2)
    adm.request(10 * MP)
    adm.request(5 * MP)
    adm.request(5 * MP)
    with pytest.raises(Rejected) as info:
        adm.request(5 * MP)
    assert info.value.reason == "queue_full" and info.value.retry_after_s >= 1


def test_a_wait_longer_than_allowed_is_refused_up_front_from_throughput() -> None:
    adm = controller(max_wait_s=5.0, throughput=1 * MP)
    adm.request(10 * MP)  # 10 s of work at 1 MP/s
    with pytest.raises(Rejected) as info:
        adm.request(8 * MP)  # must wait for 8 MP of it: ~8 s > 5 s
    assert info.value.reason == "wait_estimate"
    assert info.value.retry_after_s == 3  # ~8 s of work ahead, less the 5 s it may wait
    waiting = adm.request(3 * MP)  # must wait for 3 MP: ~3 s ≤ 5 s
    assert not waiting.admitted
    assert adm.snapshot().queued_requests["large"] == 1


def test_max_requests_caps_each_lanes_count_too() -> None:
    adm = controller(max_requests=2)
    a, b = adm.request(3 * MP), adm.request(3 * MP)
    c = adm.request(3 * MP)
    assert a.admitted and b.admitted and not c.admitted, "9 MP would fit: the count holds it back"
    small = adm.request(1 * MP)
    assert small.admitted, "a lane full of large requests does not hold small ones back"
    adm.release(b)
    assert c.admitted


def test_withdraw_and_release_free_the_queue_and_are_idempotent() -> None:
    adm = controller()
    a = adm.request(10 * MP)
    b = adm.request(10 * MP)
    assert adm.withdraw(b) is True
    assert adm.snapshot().queued_requests["large"] == 0
    assert adm.withdraw(a) is False, "an admitted ticket is not withdrawn"
    adm.release(a)
    adm.release(a)
    assert adm.snapshot().in_flight_pixels == {"small": 0, "large": 0}
    assert adm.snapshot().in_flight_requests == 0


def test_grow_waits_ahead_of_new_requests() -> None:
    woken = Woken()
    adm = controller()
    other = adm.request(6 * MP)
    grower = adm.request(3 * MP, woken("grower"))
    assert adm.grow(grower, 4 * MP) is True, "fits at once: 6 + 4 ≤ 10"
    assert adm.grow(grower, 8 * MP) is False
    newcomer = adm.request(2 * MP, woken("newcomer"))
    assert not newcomer.admitted or newcomer.charged_lane == "small"
    adm.request(3 * MP, woken("late"))
    adm.release(other)
    assert woken.order[0] == "grower" and grower.admitted and grower.charge == 8 * MP
    assert "late" not in woken.order, "8 + 3 > 10: the newcomer still waits"


def test_two_growers_that_block_each_other_do_not_deadlock() -> None:
    woken = Woken()
    adm = controller()
    a = adm.request(5 * MP, woken("a"))
    b = adm.request(5 * MP, woken("b"))
    assert adm.grow(a, 8 * MP) is False
    assert adm.grow(b, 8 * MP) is False
    # Every holder now waits to grow: the first grower goes ahead (over budget) ...
    assert woken.order == ["a"] and a.admitted and a.charge == 8 * MP and not b.admitted
    adm.release(a)
    # ... and the other follows as soon as the room is free.
    assert woken.order == ["a", "b"] and b.admitted and b.charge == 8 * MP


def test_throughput_is_measured_from_finished_work() -> None:
    clock = Clock()
    adm = controller(clock, throughput=1 * MP)
    a = adm.request(4 * MP)
    b = adm.request(4 * MP)
    clock.now = 2.0
    adm.release(a)
    clock.now = 4.0
    adm.release(b)
    snap = adm.snapshot()
    assert snap.measured
    # 8 MP finished in 4 s of busy time (the first completion's 2 s and the second's 2 s).
    assert snap.throughput == pytest.approx(0.7 * 2 * MP + 0.3 * 2 * MP)
    c = adm.request(1 * MP, measure=False)  # previews do not count
    clock.now = 100.0
    adm.release(c)
    assert adm.snapshot().throughput == pytest.approx(snap.throughput)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="small lane"):
        Limits(budget=10, small_pixels=5, small_budget=4)


def test_concurrent_use_keeps_the_books_balanced() -> None:
    adm = controller(max_queued=10_000, max_wait_s=1e9)
    done = threading.Barrier(9)

    def worker(seed: int) -> None:
        for k in range(200):
            event = threading.Event()
            ticket = adm.request((seed * 7919 + k * 104_729) % (12 * MP) + 1, event.set)
            if not ticket.admitted:
                assert event.wait(10)
            if k % 5 == 0:
                adm.grow(ticket, ticket.charge + MP) or event.wait(10)
            adm.release(ticket)
        done.wait()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    done.wait()
    snap = adm.snapshot()
    assert snap.in_flight_pixels == {"small": 0, "large": 0}
    assert snap.in_flight_requests == 0 and snap.queued_requests == {"small": 0, "large": 0}
