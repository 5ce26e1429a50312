"""``python -m model_export synth --out DIR``: write a synthetic nuclei set to folders.

Produces ``DIR/images/*.png`` (8- or 16-bit grayscale, raw counts) and ``DIR/masks/*.png``
(16-bit instance label images, 0 = background, 1..N nuclei), paired by stem — the
layout ``train --images/--masks`` and ``evaluate`` read. Seeds differ from training's
stream by default, so the set is held out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model_export.data import write_synthetic


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m model_export synth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("-n", "--count", type=int, default=50)
    parser.add_argument(
        "--size", type=int, default=512, help="image edge, px (any size, not only multiples of 16)"
    )
    parser.add_argument(
        "--seed", type=int, default=2_000_003, help="set seed (training uses 0, validation 1000003)"
    )
    args = parser.parse_args(argv)
    images, masks = write_synthetic(args.out, args.count, args.size, args.seed)
    print(f"wrote {args.count} images to {images} and label masks to {masks}")
    return images, masks


if __name__ == "__main__":
    main()
