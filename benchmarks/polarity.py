"""Dark nuclei on a bright field: does inverting the image before the model help? (issue #13)

The model learned bright nuclei on a dark field. DSB 2018 stage-1 train also holds 123 images
that are not fluorescence (colour H&E crops, grey bright-field ones); the service warns on them
(``service.modality``). This runs them through the service's pipeline (estimated scale, the
model's own object settings) as they are (``polarity=bright``), negated, and as the service's
``polarity=dark`` reads them, and scores each as ``evaluate`` scores (object F1 at IoU 0.5,
foreground Dice), beside Otsu + watershed on the same input. The grey image is the service's
(BT.601 luminance of RGB); turned to bright-on-dark either by

- ``negated``: ``-grey`` (the service's percentile scaling then maps the darkest pixels to the top);
- ``polarity=dark``: the optical density ``log(white / grey)`` (``service.polarity``): Beer–Lambert's
  absorbance, linear in the amount of stain.

No parameter was chosen on these images besides the form of the turn (negated or optical
density, the two rows below). Split by series as the fluorescence ones are (``dsb.split_by_series``),
they fall 121 / 2: the H&E crops are one series, so there is no held-out H&E series to report on.

    .venv/bin/python benchmarks/polarity.py --dsb DIR/stage1_train [--subset train]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from model_export import dsb
from model_export.evaluate import baseline_segmenter, predict_labels, score_segmentation
from service.engine import Engine
from service.objects import params_for_model
from service.polarity import DarkToBright
from service.preprocess import to_channels

ROOT = Path(__file__).resolve().parents[1]


def negated(grey: np.ndarray) -> np.ndarray:
    return -grey


def optical_density(grey: np.ndarray) -> np.ndarray:
    return DarkToBright.of(grey)(grey)


#: (name, the grey image as the model and Otsu get it, the polarity the model is asked for): the
#: model's ``polarity=dark`` runs the service's own turn (``evaluate.predict_labels``).
INPUTS = {
    "as sent": (lambda g: g, "bright"),
    "negated": (negated, "bright"),
    "polarity=dark": (lambda g: g, "dark"),
}
TRUE_DIAMETER = "polarity=dark at the true diameter"
OTSU_INPUT = {"as sent": lambda g: g, "negated": negated, "polarity=dark": optical_density}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsb", type=Path, required=True, help="DSB stage1_train folder")
    parser.add_argument("--subset", choices=["train", "val", "all"], default="all")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--inputs", nargs="+", choices=list(INPUTS), default=list(INPUTS))
    parser.add_argument("--true-diameter", action="store_true",
                        help="also polarity=dark at each image's true median nucleus diameter (diameter=), "
                        "and the estimate's ratio to it")
    args = parser.parse_args()
    items = dsb.load_set(args.dsb, modalities=("colour", "bright-field"))
    train, val = dsb.split_by_series(items)
    chosen = {"train": train, "val": val, "all": items}[args.subset]
    engine = Engine.load(args.model, providers=["CPUExecutionProvider"], intra_op_threads=2)
    params = params_for_model(engine.metadata)
    otsu = baseline_segmenter("otsu")
    scores: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)  # estimated / true diameter, polarity=dark
    for item in chosen:
        grey = to_channels(item.image, 1).astype(np.float32)
        for name in args.inputs:
            turn, polarity = INPUTS[name]
            answers = {
                "model": predict_labels(engine, turn(grey), params, polarity=polarity),
                "otsu": otsu(OTSU_INPUT[name](grey)),
            }
            for who, answer in answers.items():
                dice, _, objects = score_segmentation(item.labels, answer)
                assert objects is not None
                for group in (item.modality, "all"):
                    scores[(group, name, who)].append((objects.f1, dice))
            if name == "polarity=dark" and answers["model"].diameter:
                ratios[item.modality].append(answers["model"].diameter / item.diameter)
        if args.true_diameter:
            answer = predict_labels(engine, grey, params, polarity="dark", diameter=item.diameter)
            dice, _, objects = score_segmentation(item.labels, answer)
            assert objects is not None
            for group in (item.modality, "all"):
                scores[(group, TRUE_DIAMETER, "model")].append((objects.f1, dice))
    version = engine.metadata.version
    print(f"{args.model.name} {version}, {len(chosen)} non-fluorescence DSB images ({args.subset})")
    print("| images | input | model F1 | model Dice | Otsu F1 | Otsu Dice |")
    print("|---|---|---|---|---|---|")
    for group in ("colour", "bright-field", "all"):
        for name in [*args.inputs, TRUE_DIAMETER]:
            m, o = np.array(scores[(group, name, "model")]), np.array(scores[(group, name, "otsu")])
            if m.size == 0:
                continue
            otsu_cells = f"{o[:, 0].mean():.4f} | {o[:, 1].mean():.4f}" if o.size else "– | –"
            model_cells = f"{m[:, 0].mean():.4f} | {m[:, 1].mean():.4f}"
            print(f"| {group} ({len(m)}) | {name} | {model_cells} | {otsu_cells} |")
    for group, values in ratios.items():
        print(f"polarity=dark, {group}: estimated / true diameter, median ×{np.median(values):.2f} "
              f"({len(values)} images)")


if __name__ == "__main__":
    main()
