"""Peak server memory of one large ``POST /segment``: the in-memory path vs the windowed one (issue #16).

For each image size (16-bit PNGs of synthetic nuclei, ``_common.nuclei_image``) and each path, a
fresh ``python -m service`` (default settings but the ones named), one 512² warm-up request, then
one ``output=mask`` request with the service's defaults (the nucleus size estimated, the count in
``X-Object-Count``). Reported per run: the server's ``VmHWM`` over its whole life (what the bar
reads: "peak server RSS"), the peak of the request alone (``VmHWM`` reset before it), wall and
CPU seconds, the ``Server-Timing`` split, and whether the two paths' masks are byte-identical.

- **in-memory** (today's path): ``UNET_WINDOWED_MIN_PIXELS`` past the image, so the whole image
  goes through ``segment.predict`` with full-size float maps, tile = the model's (2048).
- **windowed**: the defaults (``service/windows.py``, batch 1), for each ``--tiles`` value of
  ``UNET_WINDOWED_TILE_SIZE``.

Then the 2048² request's CPU cost, the default (in-memory, below ``UNET_WINDOWED_MIN_PIXELS``)
against ``--baseline`` (the code before issue #16) and the windowed path forced on it
(``UNET_WINDOWED_MIN_PIXELS=1``) at each ``--tiles`` value and at the model's 2048: all services
alive at once, requests interleaved over ``--rounds`` rounds in a rotating order, CPU-seconds
ratios per round (the machine is shared: wall times swing, CPU seconds less).

    .venv/bin/python benchmarks/windowed_memory.py               # 4096² and 8192², then 2048² × 5 rounds
    .venv/bin/python benchmarks/windowed_memory.py --sizes 4096 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import psutil
from _common import (
    BUNDLED_MODEL,
    IN_MEMORY_ONLY,
    REPO,
    PeakRss,
    Service,
    cpu_seconds,
    encode_png,
    machine,
    markdown_table,
    nuclei_image,
    vm_hwm,
)

WARM_UP = 512


def server_timing(header: str | None) -> str:
    return ", ".join(
        f"{name.strip()} {float(dur) / 1000:.1f}"
        for name, _, dur in (part.partition(";dur=") for part in (header or "").split(","))
        if dur
    )


def one_request(env: dict[str, str], body: bytes, warm: bytes, threads: int) -> dict:
    """A fresh service: warm-up, then one default ``output=mask`` request with its peaks."""
    with Service(BUNDLED_MODEL, threads, env) as service:
        service.segment(warm, {"output": "mask"})
        before = vm_hwm(service.pid)  # start-up and warm-up, before PeakRss resets the mark
        monitor = PeakRss(service.pid)
        cpu = cpu_seconds(service.pid)
        with monitor:
            started = time.perf_counter()
            response = service.segment(body, {"output": "mask"}, label="run")
            seconds = time.perf_counter() - started
        return {
            "life_peak": max(before, monitor.peak),  # the server's VmHWM over its whole life
            "request_peak": monitor.peak,
            "exact": monitor.exact,
            "seconds": seconds,
            "cpu": cpu_seconds(service.pid) - cpu,
            "timing": server_timing(response.headers.get("Server-Timing")),
            "tiles": response.headers.get("X-Tiles"),
            "count": response.headers.get("X-Object-Count"),
            "diameter": response.headers.get("X-Nucleus-Diameter"),
            "digest": hashlib.sha256(response.content).hexdigest()[:12],
        }


def memory_table(sizes: list[int], threads: int, tiles: list[int], in_memory: bool = True) -> str:
    warm = encode_png(nuclei_image(WARM_UP))
    rows = []
    digests: dict[int, set[str]] = {}
    paths = [("in-memory", IN_MEMORY_ONLY)] if in_memory else []
    paths += [(f"windowed, tile {t}", {"UNET_WINDOWED_TILE_SIZE": str(t)}) for t in tiles]
    for size in sizes:
        body = encode_png(nuclei_image(size))
        for path, env in paths:
            if path == "in-memory" and size * size * 40 > psutil.virtual_memory().available:
                rows.append([f"{size}²", path, "skipped: not enough free memory"] + [""] * 8)
                continue
            run = one_request(env, body, warm, threads)
            life = run["life_peak"]
            digests.setdefault(size, set()).add(run["digest"])
            rows.append([
                f"{size}²", path, f"{life / 2**20:.0f}", f"{run['request_peak'] / 2**20:.0f}",
                f"{run['seconds']:.1f}", f"{run['cpu']:.1f}", run["timing"], run["tiles"], run["count"],
                run["diameter"], run["digest"],
            ])
            print(rows[-1], flush=True)
    table = markdown_table(
        ["size", "path", "server VmHWM MiB (life)", "request peak MiB", "wall s", "CPU s",
         "Server-Timing s", "tiles", "objects", "diameter", "mask sha256"],
        rows,
    )
    same = {size: len(d) == 1 for size, d in digests.items()}
    return table + f"\n\nmasks byte-identical between the paths: {same}"


def cpu_ratio_table(rounds: int, threads: int, tiles: list[int], baseline: Path | None) -> str:
    body = encode_png(nuclei_image(2048))
    variants: dict[str, tuple[dict[str, str], Path]] = {"in-memory (default at 2048²)": ({}, REPO)}
    if baseline is not None:
        variants[f"baseline: {baseline.name}"] = ({}, baseline)
    for tile in [*tiles, 2048]:
        env = {"UNET_WINDOWED_MIN_PIXELS": "1", "UNET_WINDOWED_TILE_SIZE": str(tile)}
        variants[f"windowed forced, tile {tile}"] = (env, REPO)
    services = {name: Service(BUNDLED_MODEL, threads, env, cwd) for name, (env, cwd) in variants.items()}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    digests: dict[str, set[str]] = {name: set() for name in variants}
    try:
        for service in services.values():
            service.segment(body, {"output": "mask"})  # warm-up at full size
        names = list(variants)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
                service = services[name]
                before = cpu_seconds(service.pid)
                started = time.perf_counter()
                response = service.segment(body, {"output": "mask"})
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(cpu_seconds(service.pid) - before)
                digests[name].add(hashlib.sha256(response.content).hexdigest()[:12])
    finally:
        for service in services.values():
            service.close()
    base = names[0]
    rows = []
    for name in names:
        ratios = [c / b for c, b in zip(cpu[name], cpu[base], strict=True)]
        rows.append([
            name, rounds, f"{statistics.median(cpu[name]):.2f}",
            f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f}",
            f"{statistics.median(wall[name]):.2f}", ", ".join(sorted(digests[name])),
        ])
    return markdown_table(
        ["2048² request", "rounds", "CPU s (median)", "CPU × in-memory (min / median / max)",
         "wall s (median)", "mask sha256"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the 2048² CPU comparison (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiles", type=int, nargs="+", default=[1024],
                        help="UNET_WINDOWED_TILE_SIZE values to measure")
    parser.add_argument("--no-in-memory", action="store_true", help="measure the windowed path only")
    parser.add_argument(
        "--baseline", type=Path, default=None,
        help="a folder holding another version's service/ package (e.g. `git archive BASE service | "
        "tar -x -C DIR`): its 2048² request joins the CPU comparison",
    )
    args = parser.parse_args()
    print(machine())
    if args.sizes:
        print(memory_table(args.sizes, args.threads, args.tiles, not args.no_in_memory), flush=True)
    if args.rounds:
        print(cpu_ratio_table(args.rounds, args.threads, args.tiles, args.baseline))


if __name__ == "__main__":
    main()
