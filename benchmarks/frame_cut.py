"""What one frame of a movie costs to send: the whole file (before) vs the frame cut out
(``service.frames``, what ``unet-segment --t all`` sends now).

    .venv/bin/python benchmarks/frame_cut.py [--frames 200] [--size 1024] [--channels 2] [--repeat 3]

Writes an ImageJ hyperstack (T × C × size², uint16, calibrated, named channels) to a temporary
folder, then for frames spread over the movie measures, per frame: the bytes sent; the client's
time to produce them (``client.job_bytes``: read the file, or cut the frame); and the service's
time to read the plane from them (``microscopy.select``, what ``POST /segment`` decodes). Prints a
markdown table (medians over the frames and ``--repeat`` rounds, ms). One process, 2-core CPU:
compare the two rows of one run, not runs. Model time is the same for both and not measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from service import client, microscopy


def write_movie(path: Path, frames: int, size: int, channels: int) -> None:
    """Frames written one at a time (a movie larger than memory is written the same way)."""
    rng = np.random.default_rng(0)

    def pages():
        for _ in range(frames * channels):
            yield rng.integers(0, 4096, (size, size), dtype=np.uint16)

    names = ["Actin", "DAPI", "GFP", "RFP"][:channels] if channels <= 4 else None
    metadata = {"axes": "TCYX", "unit": "um", **({"Labels": names * frames} if names else {})}
    tifffile.imwrite(path, pages(), shape=(frames, channels, size, size), dtype=np.uint16, imagej=True,
                     resolution=(1 / 0.65, 1 / 0.65), metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        movie = Path(folder) / "movie.tif"
        write_movie(movie, args.frames, args.size, args.channels)
        channel = str(args.channels - 1)
        config = client.parse_config([str(movie), "--out", folder, "--t", "all", "--channel", channel])
        probed = np.linspace(0, args.frames - 1, 5).round().astype(int)
        rows = {"whole file (before)": [], "the frame cut out (now)": []}
        for _ in range(args.repeat):
            for k in probed:
                job = client.Job(movie, Path(folder) / "out.png", (("t", int(k)),))
                makers = (("whole file (before)", lambda: (movie.read_bytes(), "image/tiff")),
                          ("the frame cut out (now)", lambda job=job: client.job_bytes(job, config)[:2]))
                for name, make in makers:
                    t0 = time.perf_counter()
                    data, _ = make()
                    made = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    choice = microscopy.Selection(channel=channel, t=int(k))
                    plane = microscopy.select(data, choice, 1 << 30, 100_000)
                    read = time.perf_counter() - t0
                    rows[name].append((len(data), made, read, plane.image))
        whole, cut = rows.values()
        assert all(np.array_equal(a[3], b[3]) for a, b in zip(whole, cut, strict=True)), "planes differ"
        print(f"movie: {args.frames} frames × {args.channels} channels × {args.size}², uint16, "
              f"{movie.stat().st_size / 2**20:.0f} MiB; {len(probed)} frames × {args.repeat} rounds\n")
        print("| sent per frame | MiB | client: make the bytes (ms) | service: read the plane (ms) |")
        print("|---|---|---|---|")
        for name, samples in rows.items():
            print(f"| {name} | {statistics.median(s[0] for s in samples) / 2**20:.2f} "
                  f"| {1000 * statistics.median(s[1] for s in samples):.1f} "
                  f"| {1000 * statistics.median(s[2] for s in samples):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
