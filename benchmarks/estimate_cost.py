"""What the nucleus-size estimate costs next to the segmentation, by image size (issue #13 / #16).

The estimate runs up to 13 + 3 probes of at most 256² model pixels whatever the image's size, so
its share of a request grows as images shrink. In-process, on crops of the benchmark's synthetic
nuclei image, the bundled model (fp32 and its int8 copy), 2 threads, tile batches of 8 as the
service: the estimate (``service.diameter.estimate_diameter``) and then the segmentation at the
scale it chose (``pipeline.predict_scaled`` + ``pipeline.on_input_grid`` with the model's split),
median of ``--repeat`` rounds after a warm-up one. Prints a markdown table.

    .venv/bin/python benchmarks/estimate_cost.py [--sizes 256x256,520x696,1024x1024,2048x2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import BUNDLED_MODEL, machine, markdown_table, nuclei_image

from service import pipeline
from service.diameter import estimate_diameter
from service.engine import Engine, int8_path
from service.objects import params_for_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256x256,520x696,1024x1024,2048x2048", help="HxW,...")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    largest = max(max(h, w) for h, w in sizes)
    big = nuclei_image(largest)
    rows = []
    for label, path in (("fp32", BUNDLED_MODEL), ("int8", int8_path(BUNDLED_MODEL))):
        if not path.is_file():
            continue
        engine = Engine.load(path, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
        md, params = engine.metadata, params_for_model(engine.metadata)
        for h, w in sizes:
            image = big[:h, :w].copy()
            estimates, segments = [], []
            for round_ in range(args.repeat + 1):
                started = time.perf_counter()
                found = estimate_diameter(image, engine.run, md, params, batch_size=8)
                estimated = time.perf_counter()
                diameter = found.diameter or md.nucleus_diameter
                scale = pipeline.ScaleChoice(diameter, "estimated", md.nucleus_diameter / diameter)
                prediction = pipeline.predict_scaled(image, scale, engine.run, md, batch_size=8)
                pipeline.on_input_grid(prediction, md, image.shape, md.threshold, params)
                if round_:  # the first round warms up
                    estimates.append(estimated - started)
                    segments.append(time.perf_counter() - estimated)
            estimate, segment = statistics.median(estimates), statistics.median(segments)
            rows.append([label, f"{h}×{w}", f"{diameter:.1f}", f"{estimate:.3f}", f"{segment:.3f}",
                         f"{estimate / segment:.2f}×"])
            print(*rows[-1], flush=True)
    print()
    print(machine())
    print()
    print(markdown_table(["model", "image", "diameter px", "estimate s", "segmentation + objects s",
                          "estimate ÷ segmentation"], rows))


if __name__ == "__main__":
    main()
