"""Scaling: time and peak memory of the service process from 512² to 8192².

One ``python -m service`` process; for each size (ascending) ``POST /segment`` (mask output, the
model's default tiling) of a synthetic nuclei image, timed end to end over loopback, with the
peak resident memory of the *service process* during that request (``_common.PeakRss``: the
kernel's exact high-water mark, reset before each request). Sizes up to ``--many-below`` run
``--repeat`` times (min taken), bigger ones once (8192² takes ~40 s here).

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

import numpy as np
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size up to --many-below")
    parser.add_argument("--many-below", type=int, default=2048)
    parser.add_argument("--plot", default="scaling.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    sizes = sorted(args.sizes)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        with Service(model, args.threads) as service:
            warm = encode_png(nuclei_image(sizes[0]))
            service.segment(warm, {"output": "mask"})  # warm-up: steady-state allocations
            monitor = PeakRss(service.pid)
            idle = monitor.rss()
            for size in sizes:
                body = encode_png(nuclei_image(size))
                runs, peaks = [], []
                for _ in range(args.repeat if size <= args.many_below else 1):
                    with monitor:
                        runs.append(timed(lambda body=body: service.segment(body, {"output": "mask"})))
                    peaks.append(monitor.peak)
                del body
                headers = service.headers["last"]
                results.append({
                    "size": size, "pixels": size * size, "seconds": min(runs), "runs": len(runs),
                    "peak": max(peaks), "tiles": headers["X-Tiles"], "timing": headers["Server-Timing"],
                })
                print(f"  {size}²: {min(runs):.2f} s, peak RSS {max(peaks) / 2**20:.0f} MiB", flush=True)
            info = service.model_info()

    px = np.array([r["pixels"] for r in results], dtype=np.float64)
    t = np.array([r["seconds"] for r in results])
    slope, intercept = np.polyfit(px, t, 1)
    rate = 1e-6 / slope  # MP/s of the fitted line
    residual = np.max(np.abs(t - (intercept + slope * px)) / t)
    table = []
    for r in results:
        fit = intercept + slope * r["pixels"]
        extra = r["peak"] - idle
        table.append([
            f"{r['size']}²", f"{r['pixels'] / 1e6:.2f}", r["tiles"], r["runs"], f"{r['seconds']:.2f}",
            f"{fit:.2f}", f"{r['pixels'] / 1e6 / r['seconds']:.2f}", f"{r['peak'] / 2**20:.0f}",
            f"{extra / 2**20:.0f}", f"{extra / r['pixels']:.1f}",
        ])
    md = info["metadata"]
    print(f"\n## Scaling: {sizes[0]}² → {sizes[-1]}²\n\n{machine()}\n")
    print(
        f"model {md['name']} {md['version']} (tile {info['tiling']['tile_size']}, overlap "
        f"{info['tiling']['overlap']}, max batch {info['batching']['max_batch_size']}); synthetic nuclei "
        f"images, PNG upload, mask output; {args.threads} intra-op threads; peak RSS "
        f"{'exact (VmHWM reset per request)' if monitor.exact else 'sampled every 10 ms (psutil)'}; "
        f"idle RSS after warm-up {idle / 2**20:.0f} MiB\n"
    )
    print(markdown_table(
        ["size", "MP", "tiles", "runs", "seconds (min)", "fit s", "MP/s", "peak RSS MiB",
         "peak − idle MiB", "bytes / pixel"],
        table,
    ))
    print(
        f"\nlinear fit t = {intercept:.3f} s + pixels / ({rate:.2f} MP/s); largest deviation from the fit "
        f"{100 * residual:.0f}% of the measured time; {sizes[-1]}² / {sizes[0]}² time ratio "
        f"{t[-1] / t[0]:.0f}× for {px[-1] / px[0]:.0f}× the pixels"
    )
    big = px >= px[-1] / 16  # the sizes where per-pixel buffers, not one tile batch, dominate
    if big.sum() >= 2:
        chosen = [r for r, b in zip(results, big, strict=True) if b]
        per_px, base_mem = np.polyfit(px[big], [r["peak"] for r in chosen], 1)
        names = ", ".join(f"{r['size']}²" for r in chosen)
        print(f"peak RSS fit over {names}: {base_mem / 2**20:.0f} MiB + {per_px:.1f} bytes per image pixel")
    for r in results:
        print(f"- {r['size']}²: `{r['timing']}`")

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    mp = px / 1e6
    line = np.geomspace(mp[0], mp[-1], 50)
    ax1.loglog(mp, t, "o", color="#4878a8", label="measured")
    ax1.loglog(line, intercept + slope * line * 1e6, "-", color="gray",
               label=f"fit: {intercept:.2f} s + MP / {rate:.2f}")
    for r, x, y in zip(results, mp, t, strict=True):
        ax1.annotate(f"{r['size']}²", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax1.set_xlabel("image megapixels")
    ax1.set_ylabel("seconds per image")
    ax1.set_title("time per image (POST /segment)")
    ax1.legend(fontsize=8)
    peak_mib = np.array([r["peak"] for r in results]) / 2**20
    ax2.plot(mp, peak_mib, "o-", color="#d08040", label="peak RSS during the request")
    ax2.axhline(idle / 2**20, color="gray", ls="--", label="idle RSS")
    ax2.set_xlabel("image megapixels")
    ax2.set_ylabel("MiB")
    ax2.set_title("service process memory")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    print("\n" + save_figure(fig, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
