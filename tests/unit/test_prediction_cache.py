"""The prediction cache's bookkeeping (service.prediction_cache): keys, reuse, byte budget, LRU order."""

from __future__ import annotations

import contextlib
import threading

from service.prediction_cache import PlaneEntry, PlaneKey, PredictionCache


def key(name: str, selection: object = None) -> PlaneKey:
    return PlaneKey(upload=PlaneKey.digest(name.encode()), selection=selection, model="m", reading=(1, 2))


def counted(value: object, calls: list[object]):
    def compute() -> object:
        calls.append(value)
        return value

    return compute


def test_a_second_request_for_the_same_plane_finds_its_plane_scale_and_prediction() -> None:
    cache = PredictionCache(1000)
    calls: list[object] = []
    first = cache.entry(key("a"))
    assert first is not None and first.plane is None
    first.keep_plane("pixels", 100)
    assert first.scale(("d", 20.0), counted("scale", calls)) == ("scale", False)
    assert first.prediction(0.5, counted("pred", calls), lambda _: 200) == ("pred", False)

    again = cache.entry(key("a"))
    assert again is first and again.plane == "pixels"
    assert again.scale(("d", 20.0), counted("other", calls)) == ("scale", True)
    assert again.prediction(0.5, counted("other", calls), lambda _: 200) == ("pred", True)
    assert calls == ["scale", "pred"]  # nothing computed the second time
    assert (cache.hits, cache.misses, cache.nbytes) == (1, 1, 300)


def test_other_bytes_selection_scale_options_or_factor_compute_anew() -> None:
    cache = PredictionCache(10_000)
    entry = cache.entry(key("a"))
    assert entry is not None
    entry.scale((None, 0.5, "split"), lambda: "s1")
    entry.prediction(0.5, lambda: "p1", lambda _: 10)
    assert cache.entry(key("b")) is not entry
    assert cache.entry(key("a", selection="channel 1")) is not entry
    assert entry.scale((None, 0.6, "split"), lambda: "s2") == ("s2", False)  # another threshold
    assert entry.prediction(0.25, lambda: "p2", lambda _: 10) == ("p2", False)  # another scale
    assert entry.prediction(0.5, lambda: "p3", lambda _: 10) == ("p1", True)


def test_least_recently_used_planes_go_first_once_past_the_budget() -> None:
    cache = PredictionCache(250)
    for name in ("a", "b", "c"):
        entry = cache.entry(key(name))
        assert entry is not None
        entry.keep_plane(name, 100)  # the third pushes past 250: "a" goes
    assert len(cache) == 2 and cache.nbytes == 200
    assert cache.entry(key("b")).plane == "b"  # type: ignore[union-attr]  # b is now the newest
    cache.entry(key("d")).keep_plane("d", 100)  # type: ignore[union-attr]  # c goes, not b
    assert cache.entry(key("b")).plane == "b"  # type: ignore[union-attr]
    assert cache.entry(key("c")).plane is None  # type: ignore[union-attr]  # gone: a fresh entry


def test_a_plane_larger_than_the_whole_budget_is_not_kept() -> None:
    cache = PredictionCache(100)
    entry = cache.entry(key("big"))
    assert entry is not None
    entry.keep_plane("pixels", 500)
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.entry(key("big")).plane is None  # type: ignore[union-attr]


def test_an_entry_evicted_while_it_computed_counts_no_bytes() -> None:
    cache = PredictionCache(150)
    slow = cache.entry(key("slow"))
    assert slow is not None
    cache.entry(key("x")).keep_plane("x", 100)  # type: ignore[union-attr]
    cache.entry(key("y")).keep_plane("y", 100)  # type: ignore[union-attr]  # evicts "slow", then "x"
    assert slow.prediction(1.0, lambda: "p", lambda _: 100) == ("p", False)  # the request still gets it
    assert cache.nbytes == 100 and len(cache) == 1


def test_a_zero_budget_turns_the_cache_off() -> None:
    cache = PredictionCache(0)
    assert not cache.enabled and cache.entry(key("a")) is None


def test_requests_that_arrive_together_compute_one_prediction_and_the_others_wait_for_it() -> None:
    cache = PredictionCache(10_000)
    entry = cache.entry(key("a"))
    assert entry is not None
    release = threading.Event()
    computed: list[int] = []

    def compute(i: int):
        def run() -> str:
            computed.append(i)
            release.wait(5)  # hold the first computation until every request has arrived
            return f"p{i}"

        return run

    answers: list[tuple[object, bool]] = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(entry.prediction(1.0, compute(i), lambda _: 10)))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    while len(computed) < 1:
        threading.Event().wait(0.01)
    threading.Event().wait(0.3)  # the other three are waiting now (or about to)
    release.set()
    for t in threads:
        t.join(5)
    assert len(computed) == 1
    assert len(answers) == 4 and {a for a, _ in answers} == {f"p{computed[0]}"}
    assert sorted(reused for _, reused in answers) == [False, True, True, True]
    assert cache.nbytes == 10


def computing_in_the_background(outcome: object) -> tuple[PlaneEntry, threading.Event]:
    """A fresh entry whose prediction at 1.0 a background thread is computing now; it ends with
    ``outcome`` (returned, or raised if an exception) once the event it hands back is set."""
    entry = PredictionCache(10_000).entry(key("a"))
    assert entry is not None
    started, release = threading.Event(), threading.Event()

    def compute() -> object:
        started.set()
        release.wait(5)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def run() -> None:
        with contextlib.suppress(BaseException):
            entry.prediction(1.0, compute, lambda _: 10)

    threading.Thread(target=run, daemon=True).start()
    started.wait(5)
    return entry, release


def test_when_the_computing_request_fails_a_waiting_one_computes_instead() -> None:
    entry, fail = computing_in_the_background(RuntimeError("cancelled half-way"))
    answers: list[tuple[object, bool]] = []
    waiter = threading.Thread(
        target=lambda: answers.append(entry.prediction(1.0, lambda: "p2", lambda _: 10))
    )
    waiter.start()
    threading.Event().wait(0.2)
    fail.set()
    waiter.join(5)
    assert answers == [("p2", False)]
    assert entry.prediction(1.0, lambda: "p3", lambda _: 10) == ("p2", True)


def test_a_waiting_request_can_give_up() -> None:
    entry, release = computing_in_the_background("p")
    asked: list[int] = []

    def stop() -> None:
        asked.append(1)
        raise TimeoutError("the client left")

    try:
        entry.prediction(1.0, lambda: "never", lambda _: 10, while_waiting=stop)
        raise AssertionError("the waiting request did not give up")
    except TimeoutError:
        pass
    assert asked == [1]
    release.set()  # a request arriving now waits for the computation and takes its prediction
    assert entry.prediction(1.0, lambda: "never", lambda _: 10) == ("p", True)


def test_uploads_that_keep_nothing_do_not_grow_the_table_without_bound() -> None:
    cache = PredictionCache(10_000, max_entries=3)
    for name in "abcdef":  # e.g. uploads that failed to decode: entries without a plane
        cache.entry(key(name))
    assert len(cache) == 3
    kept = cache.entry(key("g"))
    assert kept is not None
    kept.keep_plane("g", 100)
    for name in "hij":
        cache.entry(key(name))
    assert len(cache) == 3 and cache.nbytes == 0  # "g" went with its bytes


def test_a_discarded_plane_gives_its_bytes_back_and_is_not_found_again() -> None:
    cache = PredictionCache(1000)
    entry = cache.entry(key("large"))
    assert entry is not None
    entry.keep_plane("pixels", 400)
    cache.discard(entry)
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.entry(key("large")).plane is None  # type: ignore[union-attr]
    cache.discard(entry)  # twice, or after eviction: nothing happens
    assert len(cache) == 1 and cache.nbytes == 0
