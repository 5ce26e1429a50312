"""Scaling: time and peak memory of the service process from 512² to 8192².

One ``python -m service`` process; for each size (ascending) ``POST /segment`` (mask output, the
model's default tiling) of a synthetic nuclei image, timed end to end over loopback, with the
peak resident memory of the *service process* during that request (``_common.PeakRss``: the
kernel's exact high-water mark, reset before each request). Sizes up to ``--many-below`` run
``--repeat`` times (min taken), bigger ones once (8192² takes ~40 s here).

Runs one sweep per ``--batch-sizes`` value (``UNET_MAX_BATCH_SIZE``; default 8 = the service's
default, and 1), because the ONNX Runtime working set is ∝ batch × tile area. A size whose peak,
extrapolated from the two sizes before it, would not fit in the available memory is skipped
(and said so); one that kills the service anyway is reported as failed. Either ends that sweep.

Shows (a) time ∝ pixels: a least-squares fit ``t = a + pixels / rate`` over the sizes, and the
throughput (MP/s) of each size, which should be flat above the small sizes; (b) memory bounded:
peak RSS per size, as the idle RSS plus bytes per image pixel (full-size image, probability and
mask buffers are inherent; the network's working set is bounded by tile × batch).

    .venv/bin/python benchmarks/scaling.py [--sizes 512 1024 2048 4096 8192] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import psutil
from _common import (
    PeakRss,
    Service,
    encode_png,
    machine,
    markdown_table,
    nuclei_image,
    pyplot,
    resolve_model,
    save_figure,
    timed,
)

from service.settings import DEFAULT_MODEL_PATH


def sweep(model: Path, threads: int, sizes: list[int], batch: int, repeat: int, many_below: int) -> dict:
    """One service with ``UNET_MAX_BATCH_SIZE=batch``; each size in turn until done or the service dies."""
    results: list[dict] = []
    failure = None
    with Service(model, threads, {"UNET_MAX_BATCH_SIZE": str(batch)}) as service:
        info = service.model_info()
        service.segment(encode_png(nuclei_image(sizes[0])), {"output": "mask"})  # warm-up
        monitor = PeakRss(service.pid)
        idle = monitor.rss()
        for size in sizes:
            if len(results) >= 2:
                # Don't push a shared machine into its OOM killer: extrapolate the peak linearly in
                # pixels from the last two sizes and skip a size that would not fit.
                a, b = results[-2], results[-1]
                per_px = (b["peak"] - a["peak"]) / (b["pixels"] - a["pixels"])
                predicted = b["peak"] + per_px * (size * size - b["pixels"])
                room = psutil.virtual_memory().available + monitor.rss()
                if predicted > 0.9 * room:
                    reason = (f"skipped: predicted peak {predicted / 2**30:.1f} GiB > 90% of the "
                              f"{room / 2**30:.1f} GiB this process could have")
                    failure = {"size": size, "error": reason}
                    print(f"  max batch {batch}, {size}²: {failure['error']}", flush=True)
                    break
            body = encode_png(nuclei_image(size))
            runs, peaks = [], []
            try:
                for _ in range(repeat if size <= many_below else 1):
                    with monitor:
                        runs.append(timed(lambda body=body: service.segment(body, {"output": "mask"})))
                    peaks.append(monitor.peak)
            except httpx.HTTPError as exc:
                code = service.proc.wait(30) if service.proc.poll() is None else service.proc.returncode
                failure = {"size": size, "error": f"{type(exc).__name__}; service exit code {code}"
                           + (" (SIGKILL: the kernel's OOM killer here)" if code == -9 else "")}
                print(f"  max batch {batch}, {size}²: FAILED, {failure['error']}", flush=True)
                break
            finally:
                del body
            headers = service.headers["last"]
            results.append({
                "size": size, "pixels": size * size, "seconds": min(runs), "runs": len(runs),
                "peak": max(peaks), "tiles": headers["X-Tiles"], "timing": headers["Server-Timing"],
            })
            print(f"  max batch {batch}, {size}²: {min(runs):.2f} s, peak RSS {max(peaks) / 2**20:.0f} MiB",
                  flush=True)
    return {"batch": batch, "results": results, "idle": idle, "info": info, "exact": monitor.exact,
            "failure": failure}


def fit(results: list[dict]) -> tuple[float, float, float]:
    """``(intercept s, slope s/pixel, largest relative deviation)`` of ``t = a + b · pixels``."""
    px = np.array([r["pixels"] for r in results], dtype=np.float64)
    t = np.array([r["seconds"] for r in results])
    slope, intercept = np.polyfit(px, t, 1)
    return intercept, slope, float(np.max(np.abs(t - (intercept + slope * px)) / t))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1],
                        help="UNET_MAX_BATCH_SIZE of each sweep (8 = the service's default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size up to --many-below")
    parser.add_argument("--many-below", type=int, default=2048)
    parser.add_argument("--plot", default="scaling.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        # One sweep after the other: a service that just ran big batches keeps its memory.
        sweeps = [sweep(model, args.threads, sizes, batch, args.repeat, args.many_below)
                  for batch in args.batch_sizes]

    info = sweeps[0]["info"]
    md = info["metadata"]
    print(f"\n## Scaling: {sizes[0]}² → {sizes[-1]}²\n\n{machine()}\n")
    print(
        f"model {md['name']} {md['version']} (tile {info['tiling']['tile_size']}, overlap "
        f"{info['tiling']['overlap']}); synthetic nuclei images (uint16 PNG upload), mask output; "
        f"{args.threads} intra-op threads; one service per max batch size, sizes ascending; peak RSS of "
        f"the service process {'exact (VmHWM reset per request)' if sweeps[0]['exact'] else 'sampled'}\n"
    )
    table = []
    for sw in sweeps:
        results, idle = sw["results"], sw["idle"]
        intercept, slope, _ = fit(results) if len(results) >= 2 else (0.0, float("nan"), 0.0)
        for r in results:
            table.append([
                sw["batch"], f"{r['size']}²", f"{r['pixels'] / 1e6:.2f}", r["tiles"], r["runs"],
                f"{r['seconds']:.2f}", f"{intercept + slope * r['pixels']:.2f}",
                f"{r['pixels'] / 1e6 / r['seconds']:.2f}", f"{idle / 2**20:.0f}", f"{r['peak'] / 2**20:.0f}",
                f"{(r['peak'] - idle) / r['pixels']:.0f}",
            ])
        if sw["failure"]:
            f = sw["failure"]
            table.append([sw["batch"], f"{f['size']}²", f"{f['size'] ** 2 / 1e6:.2f}", "", "",
                          "**failed**", "", "", "", "", f["error"]])
    print(markdown_table(
        ["max batch", "size", "MP", "tiles", "runs", "seconds (min)", "fit s", "MP/s", "idle RSS MiB",
         "peak RSS MiB", "(peak − idle) bytes / pixel"],
        table,
    ))
    print()
    for sw in sweeps:
        results = sw["results"]
        if len(results) < 2:
            continue
        intercept, slope, residual = fit(results)
        t = [r["seconds"] for r in results]
        print(
            f"- max batch {sw['batch']}: fit t = {intercept:.3f} s + pixels / ({1e-6 / slope:.2f} MP/s), "
            f"largest deviation {100 * residual:.0f}%; {results[-1]['size']}² / {results[0]['size']}² "
            f"time ratio {t[-1] / t[0]:.0f}× for {results[-1]['pixels'] / results[0]['pixels']:.0f}× "
            "the pixels"
        )
    for sw in sweeps:
        for r in sw["results"]:
            print(f"- max batch {sw['batch']}, {r['size']}²: `{r['timing']}`")

    plt = pyplot()
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = ["#4878a8", "#d08040", "#60a060", "#a060a0"]
    for sw, color in zip(sweeps, colors, strict=False):
        results = sw["results"]
        if not results:
            continue
        mp = np.array([r["pixels"] for r in results]) / 1e6
        t = np.array([r["seconds"] for r in results])
        label = f"max batch {sw['batch']}"
        ax1.loglog(mp, t, "o-", color=color, label=label)
        ax3.semilogx(mp, mp / t, "o-", color=color, label=label)
        ax2.semilogx(mp, np.array([r["peak"] for r in results]) / 2**30, "o-", color=color, label=label)
        if sw["failure"]:
            size = sw["failure"]["size"]
            ax2.semilogx([size**2 / 1e6], [0], "x", color=color, ms=10, mew=2,
                         label=f"{label}: {size}² killed")
    ax1.set_xlabel("image megapixels")
    ax1.set_ylabel("seconds per image")
    ax1.set_title("time per image (POST /segment)")
    ax3.set_ylim(bottom=0)
    ax3.set_xlabel("image megapixels")
    ax3.set_ylabel("MP/s")
    ax3.set_title("throughput per size (flat = linear time)")
    ax2.set_xlabel("image megapixels")
    ax2.set_ylabel("GiB")
    ax2.set_title("peak RSS of the service process")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.tight_layout()
    print("\n" + save_figure(fig, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
