"""What does a stack job cost beyond segmenting its slices? ``POST /jobs?output=labels3d`` against
one ``POST /segment?output=labels`` per slice, in ONE run on one real ``python -m service``.

A synthetic z-stack (``model_export.synth_stack``: ``--depth`` slices of ``--size``², ``--nuclei``
ellipsoid nuclei) is sent as a calibrated ImageJ TIFF:

1. **per slice**: one request per slice with ``z=`` and the diameter the job used (what
   ``unet-segment --stitch-z`` sends, before it links anything);
2. **stack job**: submitted, polled every 50 ms until it succeeded, its result fetched.

The prediction cache is off (a repeated request would be answered from it). Interleaved for
``--repeat`` rounds after a warm-up of each; the job / per-slice ratio by median is
what the job adds: linking, the per-nucleus table, the scratch file and the label TIFF, and the
polling. Prints a markdown table. The model is the bundled one (int8 on a CPU, as served).

    .venv/bin/python benchmarks/stack_job.py [--depth 16] [--size 512] [--nuclei 120] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402
    Service,
    add_stack_options,
    imagej_stack,
    machine,
    markdown_table,
    synthetic_stack,
)

from service.settings import DEFAULT_MODEL_PATH  # noqa: E402

TIFF = {"Content-Type": "image/tiff"}


def stack_tiff(depth: int, size: int, nuclei: int) -> bytes:
    return imagej_stack(synthetic_stack(depth, size, nuclei), "ZYX")


def run_job(service: Service, body: bytes) -> dict:
    client = service.client
    submitted = client.post("/jobs", params={"output": "labels3d"}, content=body, headers=TIFF)
    submitted.raise_for_status()
    url = f"/jobs/{submitted.json()['id']}"
    while (status := client.get(url).json())["status"] in ("queued", "running"):
        time.sleep(0.05)
    if status["status"] != "succeeded":
        raise RuntimeError(f"the stack job did not succeed: {status}")
    summary = client.get(f"{url}/result").json()
    client.delete(url)
    return summary


def per_slice(service: Service, body: bytes, depth: int, diameter: float) -> int:
    objects = 0
    for z in range(depth):
        r = service.client.post("/segment", params={"output": "labels", "z": z, "diameter": diameter},
                                content=body, headers=TIFF)
        r.raise_for_status()
        objects += int(r.headers["X-Object-Count"])
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_options(parser)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    body = stack_tiff(args.depth, args.size, args.nuclei)
    # The prediction cache off: a repeated per-slice request would be answered from it.
    with Service(DEFAULT_MODEL_PATH, args.threads, {"UNET_PREDICTION_CACHE_MB": "0"}) as service:
        summary = run_job(service, body)  # warm-up, and the diameter the slices are sent at
        diameter = round(summary["nucleus_diameter"], 1)
        slice_objects = per_slice(service, body, args.depth, diameter)
        job_s, slices_s = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            per_slice(service, body, args.depth, diameter)
            slices_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            run_job(service, body)
            job_s.append(time.perf_counter() - started)
    job, slices = statistics.median(job_s), statistics.median(slices_s)
    print(machine())
    print(f"stack {args.depth} × {args.size}², {summary['objects']} nuclei in 3-D "
          f"({slice_objects} objects counted per slice), diameter {diameter} px\n")
    rows = [["per slice (POST /segment × depth)", slices, min(slices_s)],
            ["stack job (POST /jobs?output=labels3d)", job, min(job_s)]]
    table = [[name, f"{m:.2f}", f"{low:.2f}", f"{m / args.depth:.3f}"] for name, m, low in rows]
    print(markdown_table(["path", "median s", "min s", "s per slice"], table))
    print(f"\njob / per slice: {job / slices:.2f} by median, {min(job_s) / min(slices_s):.2f} by min")


if __name__ == "__main__":
    main()
