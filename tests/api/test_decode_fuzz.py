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

PER_SEED = 10  # × 15 seed files = 150 mutants, 300 requests of ≤ 48×32 pixels


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
