"""Load: the batch client at concurrency 1 → 32 against one service, dynamic batching on vs off.

Two ``python -m service`` processes on loopback, identical but for ``UNET_MAX_BATCH_SIZE``:
the default (8, "batching on") and 1 ("off": every tile is its own ONNX Runtime run). Both get
``UNET_MAX_CONCURRENT_REQUESTS`` / ``UNET_MAX_QUEUE_TILES`` above the highest concurrency, so
requests queue inside the service instead of being turned away with 503 (the client would
retry them after a back-off, which measures the back-off, not the service).

Images go through the batch client's own request code (``service.client.Segmenter``: keep-alive
pool, retries, atomic output writes) from ``concurrency`` threads, exactly as ``unet-segment
--concurrency N`` does; each call is timed here, which gives per-request latency (the CLI
reports only totals). Each level sends ``--images`` small synthetic nuclei images (distinct
crops, ``--size``², default 256²); the two services take turns level by level, so drift hits
both alike. Throughput = image megapixels / wall time of the level.

    .venv/bin/python benchmarks/load.py [--levels 1 2 4 8 16 32] [--images 128] [--size 256]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    Service,
    encode_png,
    machine,
    markdown_table,
    nuclei_image,
    percentile,
    pyplot,
    resolve_model,
    save_figure,
)

from service.client import Config, Job, Segmenter
from service.settings import DEFAULT_MODEL_PATH

MODES = {"batching on (max batch 8)": "8", "batching off (max batch 1)": "1"}


def write_inputs(folder: Path, size: int, count: int) -> list[Path]:
    """``count`` distinct ``size``² crops of a 4096² synthetic nuclei image, as PNG files."""
    source = nuclei_image(4096)
    per_row = source.shape[1] // size
    cells = per_row * (source.shape[0] // size)
    paths = []
    for i in range(min(count, cells)):
        y, x = divmod(i, per_row)
        path = folder / f"img{i:04d}.png"
        path.write_bytes(encode_png(source[y * size : (y + 1) * size, x * size : (x + 1) * size]))
        paths.append(path)
    return paths


def run_level(url: str, inputs: list[Path], n: int, concurrency: int, out: Path) -> dict:
    """Send ``n`` images (cycling over ``inputs``) with ``concurrency`` client threads."""
    config = Config(inputs=(), out=out, urls=(url,), concurrency=concurrency, overwrite=True,
                    timeout_s=300.0, progress=False)
    segmenter = Segmenter(config)
    jobs = [Job(inputs[i % len(inputs)], out / f"{i:05d}.png") for i in range(n)]

    def one(job: Job) -> tuple[float, object]:
        started = time.perf_counter()
        result = segmenter(job)
        return time.perf_counter() - started, result

    try:
        # Warm the keep-alive pool (one request per connection) so connects are not in the numbers.
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, jobs[:concurrency]))
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(one, jobs))
        wall = time.perf_counter() - started
    finally:
        segmenter.close()
    latencies = [s for s, _ in done]
    results = [r for _, r in done]
    failed = sum(not r.ok for r in results)
    retried = sum(r.attempts > 1 for r in results)
    pixels = sum(r.pixels or 0 for r in results if r.ok)
    return {
        "wall": wall, "mps": pixels / 1e6 / wall, "images_s": (n - failed) / wall,
        "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
        "failed": failed, "retried": retried,
    }


def batch_sizes(service: Service) -> tuple[float, float]:
    """``unet_batch_size`` histogram's (sum, count) from /metrics: tiles per ONNX Runtime run."""
    total = count = 0.0
    for line in service.client.get("/metrics").text.splitlines():
        if line.startswith("unet_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("unet_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--images", type=int, default=128, help="images per concurrency level")
    parser.add_argument("--size", type=int, default=256, help="image edge, px")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--plot", default="load.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    top = max(args.levels)
    limits = {"UNET_MAX_CONCURRENT_REQUESTS": str(2 * top), "UNET_MAX_QUEUE_TILES": str(max(64, 4 * top))}
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = resolve_model(args.model, tmp_path)
        (tmp_path / "in").mkdir()
        inputs = write_inputs(tmp_path / "in", args.size, args.images)
        services = {mode: Service(model, args.threads, {**limits, "UNET_MAX_BATCH_SIZE": batch})
                    for mode, batch in MODES.items()}
        try:
            info = next(iter(services.values())).model_info()
            for i, level in enumerate(args.levels):
                order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    service = services[mode]
                    before = batch_sizes(service)
                    out = tmp_path / f"out-{i}-{MODES[mode]}"
                    out.mkdir()
                    row = run_level(service.url, inputs, args.images, level, out)
                    after = batch_sizes(service)
                    runs = after[1] - before[1]
                    row["level"] = level
                    row["batch"] = (after[0] - before[0]) / runs if runs else float("nan")
                    rows[mode].append(row)
                    print(f"  {mode}, concurrency {level}: {row['mps']:.2f} MP/s, "
                          f"p50 {row['p50'] * 1e3:.0f} ms, mean batch {row['batch']:.2f}", flush=True)
        finally:
            for service in services.values():
                service.close()

    md = info["metadata"]
    print(f"\n## Load: batch client, concurrency {args.levels[0]} → {top}, batching on vs off\n")
    print(f"{machine()}\n")
    print(
        f"model {md['name']} {md['version']}; {args.images} images of {args.size}² (uint16 PNG, "
        f"{len(inputs)} distinct crops) per level and mode, mask output, after one warm-up request per "
        f"connection; {args.threads} intra-op threads; UNET_MAX_QUEUE_DELAY_MS "
        f"{info['batching']['max_queue_delay_ms']:g}; "
        + ", ".join(f"{k}={v}" for k, v in limits.items()) + "\n"
    )
    on, off = (rows[m] for m in MODES)
    table = []
    for a, b in zip(on, off, strict=True):
        table.append([
            a["level"],
            f"{a['mps']:.2f}", f"{b['mps']:.2f}", f"{a['mps'] / b['mps']:.2f}×",
            f"{a['images_s']:.1f}", f"{b['images_s']:.1f}",
            f"{a['p50'] * 1e3:.0f} / {a['p95'] * 1e3:.0f} / {a['p99'] * 1e3:.0f}",
            f"{b['p50'] * 1e3:.0f} / {b['p95'] * 1e3:.0f} / {b['p99'] * 1e3:.0f}",
            f"{a['batch']:.2f}", f"{a['failed'] + b['failed']} / {a['retried'] + b['retried']}",
        ])
    print(markdown_table(
        ["concurrency", "MP/s on", "MP/s off", "on / off", "img/s on", "img/s off",
         "latency ms on p50/p95/p99", "latency ms off p50/p95/p99", "mean tiles per run (on)",
         "failed / retried"],
        table,
    ))
    best_on = max(on, key=lambda r: r["mps"])
    best_off = max(off, key=lambda r: r["mps"])
    print(
        f"\npeak throughput: on {best_on['mps']:.2f} MP/s (concurrency {best_on['level']}), off "
        f"{best_off['mps']:.2f} MP/s (concurrency {best_off['level']}): "
        f"**{best_on['mps'] / best_off['mps']:.2f}×**"
    )

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"on": "#4878a8", "off": "#d08040"}
    for (mode, data), color in zip(rows.items(), colors.values(), strict=True):
        levels = [r["level"] for r in data]
        short = mode.split(" (")[0]
        ax1.plot(levels, [r["mps"] for r in data], "o-", color=color, label=mode)
        ax2.plot(levels, [r["p50"] * 1e3 for r in data], "o-", color=color, label=f"{short} p50")
        ax2.plot(levels, [r["p99"] * 1e3 for r in data], "s--", color=color, label=f"{short} p99")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.levels, [str(level) for level in args.levels])
        ax.set_xlabel("client concurrency")
        ax.legend(fontsize=8)
    ax1.set_ylabel("MP/s")
    ax1.set_title(f"throughput, {args.size}² images")
    ax1.set_ylim(bottom=0)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency per request, ms")
    ax2.set_title("latency")
    fig.tight_layout()
    print("\n" + save_figure(fig, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
