"""What the prediction cache saves on the web page's sequence of requests for one file.

The page sends one dropped file as: the probability map (to show), the outlines (GeoJSON, for the
count), a re-count after the threshold slider moves, and downloads (labels, mask) at that
threshold. The same sequence is sent to two real ``python -m service`` processes on loopback, one
with the default cache and one with ``UNET_PREDICTION_CACHE_MB=0``, interleaved, a new image per
round (so the cached server never starts a round warm). Every answer of the two is compared
byte for byte, and the seconds per step are printed with the ratio cached / uncached.

    .venv/bin/python benchmarks/prediction_cache.py [--size 2048] [--rounds 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import Service, encode_png, machine, markdown_table, nuclei_image, resolve_model

from service.settings import DEFAULT_MODEL_PATH

#: (step, query) as the page sends them for one file (threshold None: the model's).
PAGE_STEPS: tuple[tuple[str, dict[str, object]], ...] = (
    ("probability (shown)", {"output": "probability"}),
    ("outlines (GeoJSON)", {"output": "geojson"}),
    ("re-count at threshold 0.6", {"output": "geojson", "threshold": 0.6}),
    ("download labels at 0.6", {"output": "labels", "threshold": 0.6}),
    ("download mask at 0.6", {"output": "mask", "threshold": 0.6}),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        services = {
            "cached": Service(model, args.threads),
            "uncached": Service(model, args.threads, {"UNET_PREDICTION_CACHE_MB": "0"}),
        }
        seconds: dict[tuple[str, str], list[float]] = {}
        hits: dict[str, list[str]] = {}
        try:
            for round_ in range(args.rounds):
                body = encode_png(nuclei_image(args.size, seed=100 + round_))
                answers: dict[str, list[bytes]] = {}
                for who, service in services.items():
                    answers[who] = []
                    for step, query in PAGE_STEPS:
                        started = time.perf_counter()
                        response = service.client.post(
                            "/segment", params=query, content=body, headers={"Content-Type": "image/png"}
                        )
                        seconds.setdefault((who, step), []).append(time.perf_counter() - started)
                        response.raise_for_status()
                        answers[who].append(response.content)
                        hits.setdefault(step, []).append(response.headers.get("X-Prediction-Cache", "–"))
                same = all(a == b for a, b in zip(answers["cached"], answers["uncached"], strict=True))
                print(f"round {round_ + 1}: answers identical: {same}", flush=True)
                assert same, "the cached server answered differently"
        finally:
            for service in services.values():
                service.close()

    rows = []
    totals = {who: 0.0 for who in services}
    for step, _ in PAGE_STEPS:
        med = {who: statistics.median(seconds[(who, step)]) for who in services}
        for who in services:
            totals[who] += med[who]
        cached_says = sorted(set(h for h in hits[step] if h != "–"))
        rows.append([step, f"{med['uncached']:.2f}", f"{med['cached']:.2f}",
                     f"{med['cached'] / med['uncached']:.2f}×", "/".join(cached_says)])
    rows.append(["**whole sequence**", f"{totals['uncached']:.2f}", f"{totals['cached']:.2f}",
                 f"{totals['cached'] / totals['uncached']:.2f}×", ""])
    print(f"{args.size}² synthetic nuclei, {args.rounds} rounds (median s), {machine()}")
    print(markdown_table(["step", "uncached s", "cached s", "ratio", "X-Prediction-Cache"], rows))


if __name__ == "__main__":
    main()
