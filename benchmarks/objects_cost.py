"""Objects cost: object extraction vs the model's own inference on a 4096² image (goal ≤ ~1/3).

In ONE process (ONNX Runtime, no PyTorch), on a synthetic 4096² nuclei image, the steps
``output=objects|geojson`` adds to a request, each timed separately and interleaved round by round
with the inference they are compared with:

- **inference**: ``segment.predict`` with the model's default tiling, batched like the service
  (normalise, tile, ONNX Runtime, stitch, sigmoid) → the foreground probability map;
- **threshold**: probability → binary mask (shared with ``output=mask``);
- **label**: ``objects.label_prediction`` with each method — ``connected_components``,
  ``distance_watershed`` and, for a model with a centre channel, ``center_watershed`` (both
  split touching nuclei); the model's metadata picks the one the service uses;
- **measure**: ``objects.measure`` (centroid, area, box, intensity, confidence per object);
- **csv**: ``objects.rows_to_csv`` (the ``output=objects`` body);
- **geojson**: ``objects.to_geojson`` + ``json.dumps`` (one outline per object).

Ratios are to the inference time (min over ``--repeat`` rounds each).

    .venv/bin/python benchmarks/objects_cost.py [--size 4096] [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import (
    machine,
    markdown_table,
    nuclei_image,
    pyplot,
    resolve_model,
    save_figure,
    timed,
)

from service import objects, pipeline, postprocess, segment
from service.engine import Engine
from service.preprocess import to_channels
from service.settings import DEFAULT_MODEL_PATH, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plot", default="objects_cost.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        engine = Engine.load(model, ["CPUExecutionProvider"], intra_op_threads=args.threads)
    md = engine.metadata
    batch_size = Settings().max_batch_size
    service_method = objects.params_for_model(md).method
    splits = ["none", "distance"] + (["center"] if md.center_channel is not None else [])
    params = {objects.SPLIT_METHODS[split]: objects.params_for_model(md, split) for split in splits}
    methods = list(params)
    image = nuclei_image(args.size)
    intensity = to_channels(image, 1)
    engine.warmup()
    state: dict = {}

    def infer() -> None:
        prediction = segment.predict(image, engine.run, md, batch_size=batch_size)
        state["prediction"] = prediction
        state["probabilities"] = prediction.probabilities
        state["prob"] = postprocess.foreground_probability(prediction, md)
        state["tiles"] = prediction.tiles

    def threshold() -> None:
        state["mask"] = postprocess.mask(state["prob"], md.threshold) > 0

    def label(method: str) -> None:
        mask = state["mask"]
        around = pipeline.surroundings(state["prediction"], mask, params[method])
        state[method] = objects.label_prediction(mask, state["probabilities"], params[method], around)

    def measure(method: str) -> None:
        state[f"rows {method}"] = objects.measure(state[method], intensity, state["prob"])

    def table_csv(method: str) -> None:
        objects.rows_to_csv(state[f"rows {method}"])

    def geojson(method: str) -> None:
        json.dumps(objects.to_geojson(state[method], state[f"rows {method}"]))

    steps = {"inference (probability map)": infer, "threshold → mask": threshold}
    for method in methods:
        steps[f"label: {method}"] = lambda m=method: label(m)
        steps[f"measure ({method} labels)"] = lambda m=method: measure(m)
        steps[f"csv ({method} rows)"] = lambda m=method: table_csv(m)
        steps[f"geojson ({method} labels)"] = lambda m=method: geojson(m)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    best = {name: min(values) for name, values in times.items()}
    counts = {method: int(state[method].max()) for method in methods}
    base = best["inference (probability map)"]

    print(f"\n## Objects cost: extraction vs inference, {args.size}²\n\n{machine()}\n")
    print(
        f"model {md.name} {md.version} (tile {md.tile_size}, overlap {md.tile_overlap}, {state['tiles']} "
        f"tiles, batch {batch_size}); synthetic nuclei image {args.size}² {image.dtype}, "
        f"{100 * state['mask'].mean():.0f}% foreground; objects: "
        + ", ".join(f"{counts[m]} ({m})" for m in methods)
        + f"; the model's metadata uses **{service_method}**; {args.threads} threads; min of {args.repeat} "
        f"interleaved rounds\n"
    )
    table = [[name, f"{best[name]:.3f}", f"{best[name] / base:.3f}"] for name in steps]
    totals = {}
    for method in methods:
        core = best[f"label: {method}"] + best[f"measure ({method} labels)"]
        totals[f"objects CSV, {method}: label + measure + csv"] = core + best[f"csv ({method} rows)"]
        totals[f"geojson, {method}: label + measure + geojson"] = core + best[f"geojson ({method} labels)"]
    table += [[f"**{name}**", f"{s:.3f}", f"**{s / base:.3f}**"] for name, s in totals.items()]
    print(markdown_table(["step", "seconds (min)", "÷ inference"], table))
    for name, s in totals.items():
        if service_method in name:
            print(f"\n{name}: **{s / base:.2f}× inference** (goal ≤ 0.33×)", end="")
    print()

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    short = {
        "connected_components": "CC",
        "distance_watershed": "distance WS",
        "center_watershed": "centre WS",
    }
    names = ["inference", *[short[m] for m in methods]]
    bottoms = [0.0] * len(names)
    ax.bar(names[0], base, color="#4878a8", label="inference")
    parts = {"label": "#d08040", "measure": "#e0a060", "geojson": "#a0c080"}
    for part, color in parts.items():
        heights = [0.0]
        for method in methods:
            key = f"label: {method}" if part == "label" else f"{part} ({method} labels)"
            heights.append(best[key])
        ax.bar(names, heights, bottom=bottoms, color=color, label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.axhline(base / 3, color="gray", ls="--", label="⅓ of inference (goal)")
    ax.set_ylabel("seconds")
    ax.set_title(f"{args.size}² image: object extraction vs model inference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    print("\n" + save_figure(fig, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
