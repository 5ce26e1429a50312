"""Mutated real files (tests/fuzz_corpus.py) posted to a real server: zero 5xx.

Each mutant goes to ``POST /segment`` (with a channel and plane chosen, so multi-channel and
stacked files get as far as decoding their pixels) and to ``POST /probe``. Any status below 500
is an acceptable answer to a mutant — a valid-looking one may well segment — but a 5xx means an
exception escaped the decoders' mapping to problems.
"""

from __future__ import annotations

import collections

from tests.fuzz_corpus import mutants
from tests.server import Server

PER_SEED = 10  # × 21 seed files = 210 mutants, 420 requests of ≤ 48×32 pixels


def test_mutants_never_get_a_5xx(server: Server) -> None:
    failures: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()
    for mutant in mutants(PER_SEED, seed=1515):
        files = {"file": (mutant.name, mutant.data)}
        for route, params in (("/segment", {"channel": "0", "z": "0"}), ("/probe", {})):
            r = server.client.post(route, files=files, params=params)
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"{mutant.name} {route}: {r.status_code} {r.text[:200]}")
            elif r.status_code != 200:
                assert r.headers["content-type"] == "application/problem+json", mutant.name
    assert not failures, "\n".join(failures)
    # Both outcomes occur: the corpus reaches the pixels, and the refusals are 4xx problems.
    assert statuses[200] > 50 and statuses[400] > 50, statuses


def test_mutants_sent_as_stack_jobs_never_fail_with_a_5xx(server: Server) -> None:
    """The stack job reads a file its own way (its depth and slice size from the header at
    submission, then every slice): a mutant is refused at submission with a 4xx, or its job
    succeeds or fails with one, never a 5xx nor an internal error."""
    from tests.api.test_jobs import finished, wait_until

    failures: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    for mutant in mutants(4, seed=1616):
        r = server.client.post("/jobs", files={"file": (mutant.name, mutant.data)},
                               params={"output": "labels3d", "channel": "0"})
        if r.status_code >= 500:
            failures.append(f"{mutant.name} submit: {r.status_code} {r.text[:200]}")
            continue
        if r.status_code != 202:
            outcomes[f"refused {r.status_code}"] += 1
            continue
        status = wait_until(server.client, r.json()["id"], finished)
        problem = status.get("problem") or {}
        outcomes[f"{status['status']} {problem.get('status', '')}".strip()] += 1
        if status["status"] == "failed" and int(problem.get("status", 500)) >= 500:
            failures.append(f"{mutant.name} job: {problem}")
    assert not failures, "\n".join(failures)
    # The corpus reaches both: stacks that are segmented, and refusals.
    refused = sum(n for outcome, n in outcomes.items() if outcome.startswith("refused"))
    assert outcomes["succeeded"] > 10 and refused > 10, outcomes


def test_mutants_measured_in_every_channel_with_cells_never_get_a_5xx(server: Server) -> None:
    """measure=all reads every channel's pages of the plane, and expand= grows cells over the
    objects: a mutant whose other pages are broken (or whose objects are odd) gets a 4xx or a
    table, never a 5xx, and a table that parses (no NaN)."""
    import csv
    import io

    failures: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()
    for mutant in mutants(4, seed=1717):
        r = server.client.post("/segment", files={"file": (mutant.name, mutant.data)},
                               params={"channel": "0", "z": "0", "output": "objects", "measure": "all",
                                       "expand": "3"})
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{mutant.name}: {r.status_code} {r.text[:200]}")
        elif r.status_code == 200:
            rows = list(csv.DictReader(io.StringIO(r.text)))
            assert all("nan" not in value.lower() for row in rows for value in row.values()), mutant.name
    assert not failures, "\n".join(failures)
    assert statuses[200] > 10 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 10, statuses
