"""What a request costs around the network: ``Segmenter.segment`` with the network's answers replayed.

On a GPU the network is a small part of a large request: 0.08 s of a 2.78 s 4096² mask request
on the H200 (docs/benchmarks.md, section 11). Decoding, the size estimate's own work, resizing,
normalising, stitching, thresholding and the objects set the pace, on the CPU. This measures that
part on any machine: a first request records the network's answer to every tile batch it is given
(keyed by the batch's bytes); the timed requests replay them. Everything else runs as the service
runs it, on the real network's outputs, and the network costs a dictionary lookup. A batch never
recorded is an error: the replay is exact or it stops.

The image is the one ``cuda_path.py`` timed: twelve 520×696 DSB fluorescence images tiled into a
``--side``² 8-bit PNG (its nuclei are estimated at ~22 px, so it is shrunk ×0.90 and goes the
windowed way). Request kinds: ``mask``; ``mask+labels``; ``objects`` (the table's rows and
outlines). In-process, a mask request counts no objects (the HTTP service counts them for
``X-Object-Count``).

``--compare DIR`` runs the same in another checkout (the code before a change) in alternation,
each run in a process of its own (``--rounds`` of each), and reports the ratios of the medians.

    .venv/bin/python benchmarks/around_network.py --dsb DIR/stage1_train --out around.json
    .venv/bin/python benchmarks/around_network.py --dsb DIR/stage1_train --compare /tmp/before
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
KINDS: dict[str, tuple[str, ...]] = {
    "mask": ("mask",),
    "mask+labels": ("mask", "labels"),
    "objects": ("objects",),
}


class ReplayedNetwork:
    """``engine.run`` that records the real answer to each new batch, then replays it."""

    def __init__(self, run) -> None:
        self.run = run
        self.recording = True
        self.answers: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}
        self.network_s = 0.0
        self.replayed = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        key = (batch.shape, hashlib.blake2b(np.ascontiguousarray(batch).data, digest_size=16).digest())
        if self.recording:
            started = time.perf_counter()
            answer = self.run(batch)
            self.network_s += time.perf_counter() - started
            self.answers[key] = answer.copy()
            return answer
        if key not in self.answers:
            raise RuntimeError(f"a tile batch {batch.shape} the recording never saw: the replay is not exact")
        self.replayed += 1
        return self.answers[key].copy()


def mosaic_png(dsb: Path, side: int) -> bytes:
    """Twelve 520×696 DSB fluorescence images, 3 × 4, tiled to ``side``², as 8-bit PNG bytes."""
    import cv2

    from model_export import dsb as dsb_layout

    items = [i for i in dsb_layout.load_set(dsb) if i.image.shape[:2] == (520, 696)][:12]
    grey = [i.image if i.image.ndim == 2 else i.image[..., 0] for i in items]
    rows = [np.hstack(grey[k : k + 3]) for k in range(0, len(grey), 3)]
    mosaic = np.vstack(rows)
    mosaic = np.tile(mosaic, (side // mosaic.shape[0] + 1, side // mosaic.shape[1] + 1))[:side, :side]
    return cv2.imencode(".png", np.ascontiguousarray(mosaic))[1].tobytes()


def worker(args: argparse.Namespace) -> dict:
    """One checkout's timings (this process imports ``service`` from the working directory)."""
    sys.path.insert(0, os.getcwd())
    from service.api import Segmenter
    from service.engine import Engine
    from service.settings import Settings

    png = mosaic_png(args.dsb, args.side)
    settings = Settings(precision="fp32", providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    network = ReplayedNetwork(engine.run)
    engine.run = network  # before the Segmenter: its batcher holds engine.run
    segmenter = Segmenter(engine, settings)
    out: dict = {"checkout": os.getcwd(), "side": args.side}
    try:
        for kind, outputs in KINDS.items():
            network.recording, network.network_s = True, 0.0
            started = time.perf_counter()
            first = segmenter.segment(png, outputs=outputs)
            recorded_s = time.perf_counter() - started
            network.recording, network.replayed = False, 0
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                segmenter.segment(png, outputs=outputs)
                times.append(time.perf_counter() - started)
            out[kind] = {
                "replayed_s": [round(t, 3) for t in times],
                "recorded_request_s": round(recorded_s, 3),
                "network_s": round(network.network_s, 3),
                "batches_replayed": network.replayed,
                "objects": first.object_count,
                "diameter": None if first.diameter is None else round(first.diameter, 3),
            }
    finally:
        segmenter.close()
    return out


def run_worker(checkout: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, str(HERE), "--worker", "--dsb", str(args.dsb), "--model", str(args.model),
        "--side", str(args.side), "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsb", type=Path, required=True, help="DSB 2018 stage1_train folder")
    parser.add_argument("--model", type=Path, default=HERE.parents[1] / "models" / "nuclei-unet.onnx")
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="replayed requests per kind and run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each checkout with --compare")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (recording)")
    parser.add_argument("--compare", type=Path, help="another checkout, run in alternation")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dsb, args.model = args.dsb.resolve(), args.model.resolve()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    checkouts = [HERE.parents[1]] + ([args.compare.resolve()] if args.compare else [])
    runs: dict[str, list[dict]] = {str(c): [] for c in checkouts}
    for _ in range(args.rounds if args.compare else 1):
        for checkout in checkouts:
            runs[str(checkout)].append(run_worker(checkout, args))
    report: dict = {"side": args.side, "runs": runs, "median_replayed_s": {}}
    for checkout, results in runs.items():
        report["median_replayed_s"][checkout] = {
            kind: statistics.median(t for r in results for t in r[kind]["replayed_s"]) for kind in KINDS
        }
    print(json.dumps(report["median_replayed_s"], indent=1))
    if args.compare:
        here, there = (report["median_replayed_s"][str(c)] for c in checkouts)
        report["speedup"] = {kind: round(there[kind] / here[kind], 3) for kind in KINDS}
        print("speed-up of this checkout over --compare:", report["speedup"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
