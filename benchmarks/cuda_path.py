"""The service on a CUDA GPU: which provider attaches, whether its answers match the CPU's, how fast.

Run where there is an NVIDIA GPU and onnxruntime-gpu (issue #13; docs/benchmarks.md, "The CUDA path"):

    python benchmarks/cuda_path.py --model models/nuclei-unet.onnx --dsb DIR/stage1_train --out cuda.json

1. Attaching: a bare ``InferenceSession`` asked for CUDA, the same after ``onnxruntime.preload_dlls()``,
   and ``service.engine.Engine.load`` (``service.cuda_libraries``), each in a fresh process, since
   loading those libraries is once per process.
2. Agreement: the DSB validation images through ``model_export.evaluate.predict_labels`` (the
   service's pipeline, the size estimate included) on the CUDA engine and on a float32 CPU engine:
   the estimated diameter, the mask pixels that differ, the object count and object F1@0.5 each.
3. Speed: the bare engine on one batch per shape, the first run of a new shape (cuDNN chooses its
   algorithms then) against the next ones, and ``Segmenter.segment`` end to end on a large image,
   CUDA against this machine's CPU, in one process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_ATTACH_BARE = """
import onnxruntime as ort, sys
session = ort.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(",".join(session.get_providers()))
"""
_ATTACH_BARE_PRELOADED = """
import onnxruntime as ort, sys
ort.preload_dlls()
session = ort.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(",".join(session.get_providers()))
"""
_ATTACH_ENGINE = """
import sys
from service.engine import Engine
print(",".join(Engine.load(sys.argv[1], ["CUDAExecutionProvider", "CPUExecutionProvider"]).providers))
"""


def attached(code: str, model: Path) -> str:
    """The providers a fresh process gets (its last line of output), or its error's last line."""
    done = subprocess.run(
        [sys.executable, "-c", code, str(model)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    lines = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()
    return lines[-1]


def agreement(model: Path, dsb_items: list, limit: int) -> dict:
    """CUDA against CPU (float32) on the validation images: the pipeline's answers, image by image."""
    from model_export.evaluate import held_out_ids, predict_labels
    from model_export.object_metrics import score_objects
    from service.engine import Engine
    from service.objects import params_for_model

    gpu = Engine.load(model, [CUDA, CPU])
    cpu = Engine.load(model, [CPU])
    val_ids = set(held_out_ids(gpu.metadata) or [])
    items = [i for i in dsb_items if i.id in val_ids][:limit]
    params = params_for_model(gpu.metadata, None)
    rows = []
    for item in items:
        on_gpu = predict_labels(gpu, item.image, params)
        on_cpu = predict_labels(cpu, item.image, params)
        rows.append({
            "id": item.id[:8],
            "diameter_gpu": round(on_gpu.diameter, 3),
            "diameter_cpu": round(on_cpu.diameter, 3),
            "mask_pixels_differing": int((on_gpu.foreground != on_cpu.foreground).sum()),
            "pixels": int(on_gpu.foreground.size),
            "objects_gpu": int(on_gpu.labels.max()),
            "objects_cpu": int(on_cpu.labels.max()),
            "f1_gpu": score_objects(item.labels, on_gpu.labels).f1,
            "f1_cpu": score_objects(item.labels, on_cpu.labels).f1,
        })
    return {
        "providers": gpu.providers,
        "images": len(rows),
        "same_diameter": sum(r["diameter_gpu"] == r["diameter_cpu"] for r in rows),
        "mask_pixels_differing": sum(r["mask_pixels_differing"] for r in rows),
        "pixels": sum(r["pixels"] for r in rows),
        "same_object_count": sum(r["objects_gpu"] == r["objects_cpu"] for r in rows),
        "mean_f1_gpu": statistics.fmean(r["f1_gpu"] for r in rows),
        "mean_f1_cpu": statistics.fmean(r["f1_cpu"] for r in rows),
        "rows": rows,
    }


def timed(run, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def engine_speed(model: Path, shapes: list[tuple[int, int, int]], repeats: int) -> dict:
    """Bare ``Engine.run`` per batch shape: first run (includes cuDNN's choice) and the median of the rest."""
    from service.engine import Engine

    engines = {"cuda": Engine.load(model, [CUDA, CPU]), "cpu": Engine.load(model, [CPU])}
    rng = np.random.default_rng(0)
    out = {}
    for batch, height, width in shapes:
        x = rng.random((batch, 1, height, width), dtype=np.float32)
        entry = {}
        for name, engine in engines.items():
            first = timed(lambda e=engine, x=x: e.run(x), 1)[0]
            rest = timed(lambda e=engine, x=x: e.run(x), repeats)
            median = statistics.median(rest)
            entry[name] = {
                "first_s": round(first, 4), "median_s": round(median, 5),
                "mp_per_s": round(batch * height * width / 1e6 / median, 2),
            }
        entry["cuda_speedup"] = round(entry["cpu"]["median_s"] / entry["cuda"]["median_s"], 1)
        out[f"{batch}x{height}x{width}"] = entry
    return out


def segment_speed(model: Path, dsb_items: list, side: int, repeats: int) -> dict:
    """``Segmenter.segment`` on one large image made of DSB tiles, CUDA and CPU interleaved."""
    import cv2

    from service.api import Segmenter
    from service.settings import Settings

    items = [i for i in dsb_items if i.image.shape[:2] == (520, 696)][:12]
    grey = [i.image if i.image.ndim == 2 else i.image[..., 0] for i in items]
    rows = [np.hstack(grey[k : k + 3]) for k in range(0, len(grey), 3)]
    mosaic = np.vstack(rows)
    mosaic = np.tile(mosaic, (side // mosaic.shape[0] + 1, side // mosaic.shape[1] + 1))[:side, :side]
    png = cv2.imencode(".png", np.ascontiguousarray(mosaic))[1].tobytes()
    settings = Settings(precision="fp32")
    segmenters = {
        "cuda": Segmenter.load(model, providers=["cuda", "cpu"], settings=settings),
        "cpu": Segmenter.load(model, providers=["cpu"], settings=settings),
    }
    out: dict = {"side": side, "providers": {k: s.engine.providers for k, s in segmenters.items()}}
    for outputs in (("mask",), ("mask", "labels")):
        times: dict[str, list[float]] = {"cuda": [], "cpu": []}
        counts = {}
        for name, segmenter in segmenters.items():  # warm-up: first shapes, arenas
            counts[name] = segmenter.segment(png, outputs=outputs).object_count
        for _ in range(repeats):
            for name, segmenter in segmenters.items():
                times[name] += timed(lambda s=segmenter, o=outputs: s.segment(png, outputs=o), 1)
        medians = {name: statistics.median(t) for name, t in times.items()}
        entry = {
            name: {"median_s": round(median, 3), "mp_per_s": round(side * side / 1e6 / median, 2)}
            for name, median in medians.items()
        }
        entry["cuda_speedup"] = round(entry["cpu"]["median_s"] / entry["cuda"]["median_s"], 2)
        entry["object_count"] = counts
        out["+".join(outputs)] = entry
    for segmenter in segmenters.values():
        segmenter.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "nuclei-unet.onnx")
    parser.add_argument("--dsb", type=Path, required=True, help="DSB 2018 stage1_train folder")
    parser.add_argument("--images", type=int, default=105, help="validation images to compare (default all)")
    parser.add_argument("--side", type=int, default=4096, help="edge of the end-to-end test image (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from model_export import dsb

    report: dict = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    report["attach_bare_session"] = attached(_ATTACH_BARE, args.model)
    report["attach_bare_session_preloaded"] = attached(_ATTACH_BARE_PRELOADED, args.model)
    report["attach_engine"] = attached(_ATTACH_ENGINE, args.model)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("attach")}), flush=True)
    shapes = [(1, 256, 256), (8, 256, 256), (1, 1024, 1024), (1, 2048, 2048), (2, 2048, 2048)]
    report["engine_speed"] = engine_speed(args.model, shapes, args.repeats + 2)
    print(json.dumps(report["engine_speed"]), flush=True)
    items = dsb.load_set(args.dsb)
    report["segment_speed"] = segment_speed(args.model, items, args.side, args.repeats)
    print(json.dumps(report["segment_speed"]), flush=True)
    report["agreement"] = agreement(args.model, items, args.images)
    print(json.dumps({k: v for k, v in report["agreement"].items() if k != "rows"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
