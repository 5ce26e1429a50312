"""Tile-size curve: throughput and peak memory of the service per tile size (issue #16).

Issue #16 asks for the default tile size to be picked from a measured curve: at most 5% slower
than today's tile (the model's 2048, one pass for a 2048² image) with a peak RSS that leaves room
under 1.5 GB. For each tile size a fresh ``python -m service`` process is started with
``UNET_TILE_SIZE`` (overlap from the model's metadata, raised by the tiler to twice the context
margin) and ``UNET_PRECISION`` (fp32, and the int8 copy with ``--int8``); after a small warm-up
request it segments one ``--size``² synthetic nuclei image (mask output, ``diameter=`` the model's
own ``nucleus_diameter`` so the scale factor is 1 and the size estimate does not run), timed end
to end over loopback, with ``UNET_MAX_BATCH_SIZE=1`` (``--max-batch``) so the memory is one tile's
working set (batching buys nothing on a CPU, FACTS.md); with:

- the service process's exact peak RSS during the request (``_common.PeakRss``: ``VmHWM`` reset
  through ``/proc/PID/clear_refs``) and its idle RSS after the warm-up;
- its CPU seconds (user + system) for the request, steadier than wall time on a shared machine;
- ``infer;dur`` from ``Server-Timing`` (the tiled inference and stitching only).

Tile sizes run interleaved: every round runs each size once, in an order rotated by one per
round, and every time is given as a ratio to the 2048 tile *in the same round* (min and median
over the rounds). A tile size the service refuses (the model's overlap is half the tile or more:
256 and 384 with the bundled model's 192 px) is listed with the compute its plan would need
(network pixels ÷ image pixels) and not run.

    .venv/bin/python benchmarks/tile_size.py [--tiles 256 384 512 768 1024 1280 1536 2048] [--size 4096]
        [--rounds 2] [--int8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

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

from service.model_metadata import ModelMetadata
from service.settings import DEFAULT_MODEL_PATH
from service.tiling import plan_tiles

REFERENCE = 2048  # today's tile (the bundled model's metadata): the ratios' denominator
WARM_UP = 512  # edge of the warm-up crop: loads the session and the arena, cheap at every tile size


def server_timing(header: str | None, key: str) -> float | None:
    """Seconds of ``key`` in a ``Server-Timing`` header (``None`` if absent)."""
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name == key and rest:
            return float(rest) / 1000
    return None


def measure(
    model: Path, threads: int, tile: int, precision: str, batch: int, body: bytes, warm: bytes
) -> dict:
    """One fresh service with ``UNET_TILE_SIZE=tile``: one timed request and its peak RSS."""
    env = {
        "UNET_TILE_SIZE": str(tile),
        "UNET_MAX_BATCH_SIZE": str(batch),
        "UNET_PRECISION": precision,
        "UNET_MAX_TILE_SIZE": str(max(tile, 2048)),
    }
    with Service(model, threads, env) as service:
        info = service.model_info()
        params = {"output": "mask", "diameter": f"{info['defaults']['nucleus_diameter']:g}"}
        service.segment(warm, params)
        monitor = PeakRss(service.pid)
        idle = monitor.rss()
        cpu = psutil.Process(service.pid).cpu_times()
        with monitor:
            seconds = timed(lambda: service.segment(body, params, label="run"))
        after = psutil.Process(service.pid).cpu_times()
        headers = service.headers["run"]
        return {
            "seconds": seconds,
            "cpu": (after.user + after.system) - (cpu.user + cpu.system),
            "infer": server_timing(headers["Server-Timing"], "infer"),
            "tiles": int(headers["X-Tiles"]),
            "peak": monitor.peak,
            "idle": idle,
            "exact": monitor.exact,
            "precision": info["precision"],
            "tiling": info["tiling"],
        }


def plan_ratio(metadata: ModelMetadata, size: int, tile: int) -> tuple[int, float, int]:
    """``(tiles, network px ÷ image px, tile edge)`` the service's tiler plans for a ``size``² image."""
    plan = plan_tiles(size, size, tile, metadata.tile_overlap, metadata.context_margin,
                      metadata.size_divisor, metadata.border)
    return plan.n_tiles, plan.compute_ratio, plan.tile_h


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--tiles", type=int, nargs="+",
                        default=[256, 384, 512, 768, 1024, 1280, 1536, 2048])
    parser.add_argument("--size", type=int, default=4096, help="image edge in px (default 4096)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--int8", action="store_true",
                        help="also the model's int8 copy (UNET_PRECISION=int8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=1,
                        help="UNET_MAX_BATCH_SIZE (default 1: one tile's working set; the service's "
                        "default 8 packs up to UNET_MAX_BATCH_PIXELS of tiles into one run)")
    parser.add_argument("--plot", default="tile_size.png")
    args = parser.parse_args()
    if REFERENCE not in args.tiles:
        sys.exit(f"--tiles must include the reference tile {REFERENCE}")

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        precisions = ["fp32"] + (["int8"] if args.int8 else [])
        body = encode_png(nuclei_image(args.size))
        warm = encode_png(nuclei_image(WARM_UP))
        with Service(model, args.threads, {"UNET_PRECISION": "fp32"}) as probe:
            metadata = ModelMetadata(**probe.model_info()["metadata"])
        plans = {t: plan_ratio(metadata, args.size, t) for t in args.tiles}
        # The service refuses an overlap of half the tile or more (settings and per request); with
        # the tiler's floor of twice the context margin such tiles would be mostly overlap anyway.
        refused = [t for t in args.tiles if 2 * metadata.tile_overlap >= t]
        tiles = [t for t in args.tiles if t not in refused]
        print(machine())
        print(f"model {metadata.name} {metadata.version}: tile {metadata.tile_size}, overlap "
              f"{metadata.tile_overlap}, context margin {metadata.context_margin}, border {metadata.border}; "
              f"image {args.size}², {args.rounds} rounds, max batch {args.max_batch}, "
              f"load average {psutil.getloadavg()}", flush=True)

        runs: dict[tuple[str, int], list[dict]] = {}
        ratios: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for r in range(args.rounds):
            order = tiles[r % len(tiles):] + tiles[: r % len(tiles)]
            for precision in precisions if r % 2 == 0 else precisions[::-1]:
                this_round: dict[int, dict] = {}
                for tile in order:
                    result = measure(model, args.threads, tile, precision, args.max_batch, body, warm)
                    this_round[tile] = result
                    runs.setdefault((precision, tile), []).append(result)
                    print(f"  round {r + 1} {precision} tile {tile}: {result['seconds']:.2f} s, "
                          f"CPU {result['cpu']:.2f} s, {result['tiles']} tiles, peak "
                          f"{result['peak'] / 2**20:.0f} MiB, load {psutil.getloadavg()[0]:.1f}", flush=True)
                ref = this_round[REFERENCE]
                for tile, result in this_round.items():
                    ratios.setdefault((precision, tile), []).append((
                        result["seconds"] / ref["seconds"],
                        result["cpu"] / ref["cpu"],
                        (result["infer"] or 0) / (ref["infer"] or 1),
                    ))
        print(f"load average after: {psutil.getloadavg()}")

    mp = args.size * args.size / 1e6
    rows = [
        ["all", tile, plans[tile][0], plans[tile][2], f"{plans[tile][1]:.2f}", 0,
         f"refused: overlap {metadata.tile_overlap} ≥ half the tile", "", "", "", "", ""]
        for tile in refused
    ]
    for precision in precisions:
        for tile in tiles:
            done, rat = runs[(precision, tile)], ratios[(precision, tile)]
            wall = [x[0] for x in rat]
            rows.append([
                precision, tile, plans[tile][0], plans[tile][2], f"{plans[tile][1]:.2f}", len(done),
                f"{mp / min(d['seconds'] for d in done):.2f}",
                f"{min(wall):.2f}× / {statistics.median(wall):.2f}×",
                f"{statistics.median(x[1] for x in rat):.2f}×",
                f"{statistics.median(x[2] for x in rat):.2f}×",
                f"{max(d['peak'] for d in done) / 2**20:.0f}",
                f"{statistics.median(d['idle'] for d in done) / 2**20:.0f}",
            ])
    print()
    print(markdown_table(
        ["precision", "tile", "tiles", "tile px (planned)", "network px / image px", "rounds", "MP/s (best)",
         f"time × tile {REFERENCE} (min / median)", "CPU × 2048 (median)", "infer × 2048 (median)",
         "peak RSS MiB", "idle RSS MiB"],
        rows,
    ))
    print(f"\npeak RSS {'exact (VmHWM)' if runs[(precisions[0], REFERENCE)][0]['exact'] else 'sampled'}")
    print(plot(args, tiles, precisions, runs, ratios))


def plot(args, tiles, precisions, runs, ratios) -> str:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"fp32": "#4878a8", "int8": "#d08030"}
    for precision in precisions:
        c = colors[precision]
        for tile in tiles:
            speeds = [1 / x[0] for x in ratios[(precision, tile)]]
            left.scatter([tile] * len(speeds), speeds, color=c, s=12, alpha=0.6)
        left.plot(tiles, [1 / statistics.median(x[0] for x in ratios[(precision, t)]) for t in tiles],
                  color=c, marker="o", label=f"{precision}: wall (median; dots: rounds)")
        left.plot(tiles, [1 / statistics.median(x[1] for x in ratios[(precision, t)]) for t in tiles],
                  color=c, ls="--", label=f"{precision}: CPU s (median)")
        right.plot(tiles, [max(d["peak"] for d in runs[(precision, t)]) / 2**30 for t in tiles],
                   color=c, marker="o", label=f"{precision}: peak")
        right.plot(tiles, [statistics.median(d["idle"] for d in runs[(precision, t)]) / 2**30 for t in tiles],
                   color=c, ls=":", label=f"{precision}: idle")
    left.axhline(0.95, color="grey", ls=":", lw=1)
    left.text(tiles[0], 0.955, "−5% bar", fontsize=8, color="grey")
    top = max(max(d["peak"] for v in runs.values() for d in v) / 2**30, 1.5) * 1.15
    right.set_ylim(0, top)
    right.axhline(1.5 * 1e9 / 2**30, color="grey", ls=":", lw=1)
    right.text(tiles[0], 1.5 * 1e9 / 2**30 + 0.05, "1.5 GB (the 8192² bar)", fontsize=8, color="grey")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(tiles, [str(t) for t in tiles])
        ax.set_xlabel("tile size (px)")
        ax.legend(fontsize=7)
    left.set_ylabel(f"throughput ÷ tile {REFERENCE} (same round)")
    left.set_title(f"{args.size}² image: speed vs tile size", fontsize=10)
    right.set_ylabel("service RSS during the request (GiB)")
    right.set_title(f"{args.size}² image: peak memory vs tile size", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
