"""What does the service cost on top of the model? ``POST /segment`` vs a bare ONNX Runtime pass.

In ONE run, on the same 2048×2048 image and the same thread counts:

1. **bare ORT**: one ``session.run`` over the whole (already normalised) image — the floor.
2. **service**: ``POST /segment`` end to end over HTTP on loopback to a real ``python -m service``
   process (upload, decode, normalise, tile with overlap, dynamic batcher, stitch, threshold,
   PNG encode, response), with the model's default tiling.
3. **service without the count**: the same with ``UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT=false``, so the
   difference is what counting the nuclei for ``X-Object-Count`` costs.
4. with ``--int8``: **bare ORT and the service on the model's int8 copy** (``<stem>.int8.onnx``,
   ``python -m model_export quantize``), so int8 / fp32 and the int8 service's own overhead are
   measured in the same run, and the int8 request once more with ``diameter=`` set to what the
   default request estimated (the size estimate's share). The fp32 services pin
   ``UNET_PRECISION=fp32``: the default ``auto`` would pick the int8 copy on this CPU.

Prints a markdown table, writes ``docs/bench/service_overhead.png`` and the ratio service / bare
(goal ≤ 1.15×), by min and by median of ``--repeat`` interleaved rounds after a warm-up run. Each
path's CPU time (user + system, of the service process or of this one for bare ORT) is reported
too: on a machine shared with other work, wall time swings with the load while CPU seconds per
request stay much steadier, so they show what a change costs even when the wall ratios are noise. The
image is a synthetic nuclei image (``_common.nuclei_image``). The model is ``--model`` (default: the
bundled ``models/nuclei-unet.onnx``); if that file does not exist yet, an UNTRAINED U-Net of the
default architecture is exported to a temporary file first (in a subprocess: PyTorch must not
share a process with ONNX Runtime).

    .venv/bin/python benchmarks/service_overhead.py [--model PATH] [--threads N] [--repeat 3] [--int8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import (
    Service,
    encode_png,
    machine,
    markdown_table,
    nuclei_image,
    plot_rounds,
    resolve_model,
    timed,
)

from service.engine import int8_path
from service.model_metadata import ModelMetadata
from service.preprocess import prepare
from service.settings import DEFAULT_MODEL_PATH


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of process ``pid`` so far; of this process when None."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in ticks


class BareOrt:
    """One session over the whole normalised image (padded to the size divisor)."""

    def __init__(self, model: Path, image: np.ndarray, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.metadata = ModelMetadata.from_onnx_props(self.session.get_modelmeta().custom_metadata_map)
        md = self.metadata
        x = prepare(image, md.in_channels, md.normalization)[None]
        pad_h, pad_w = (-x.shape[2]) % md.size_divisor, (-x.shape[3]) % md.size_divisor
        if pad_h or pad_w:
            x = np.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
        self.feed = {self.session.get_inputs()[0].name: x}

    def __call__(self) -> None:
        self.session.run(None, self.feed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--int8", action="store_true", help="also time the service on the model's int8 copy (same run)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--plot", default="service_overhead.png", help="file name under docs/bench/")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(args.model, Path(tmp))
        image = nuclei_image(args.size)
        body = encode_png(image)
        bare = BareOrt(model, image, args.threads)
        md = bare.metadata
        # The second service skips splitting nuclei for X-Object-Count on plain mask outputs:
        # the difference is what the count costs.
        fp32 = {"UNET_PRECISION": "fp32"}
        no_count = {**fp32, "UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT": "false"}
        if args.int8 and not int8_path(model).is_file():
            parser.error(f"--int8: no int8 copy at {int8_path(model)} (python -m model_export quantize)")
        with contextlib.ExitStack() as stack:
            service = stack.enter_context(Service(model, args.threads, fp32))
            lean = stack.enter_context(Service(model, args.threads, no_count))
            paths = {
                "bare ORT single pass (normalised input)": bare,
                "service (default settings)": lambda: service.segment(body, {}, "default"),
                "service (UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT=false)": lambda: lean.segment(
                    body, {}, "no-count"
                ),
            }
            servers = [service, lean]
            pids: dict[str, int | None] = {label: None for label in paths}
            pids.update(
                {
                    "service (default settings)": service.pid,
                    "service (UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT=false)": lean.pid,
                }
            )
            if args.int8:
                bare8 = BareOrt(int8_path(model), image, args.threads)
                quantised = stack.enter_context(Service(model, args.threads, {"UNET_PRECISION": "int8"}))
                paths["bare ORT single pass, int8 model"] = bare8
                paths["service, int8 model (default settings)"] = lambda: quantised.segment(body, {}, "int8")
                # The same request with the diameter the default one estimated, given: what the
                # size estimate (up to ~1 MP of model work whatever the image; less when its first
                # look settles it) adds.
                paths["service, int8 model, diameter= given"] = lambda: quantised.segment(
                    body, {"diameter": quantised.headers["int8"]["X-Nucleus-Diameter"]}, "int8-diameter"
                )
                servers.append(quantised)
                pids.update(
                    {
                        "bare ORT single pass, int8 model": None,
                        "service, int8 model (default settings)": quantised.pid,
                        "service, int8 model, diameter= given": quantised.pid,
                    }
                )
            for fn in paths.values():
                fn()  # warm-up: first-run allocations and kernel selection are not steady state
            # Interleaved rounds: a CPU shared with other work drifts, and drift must hit all paths alike.
            times: dict[str, list[float]] = {label: [] for label in paths}
            cpu: dict[str, list[float]] = {label: [] for label in paths}
            for _ in range(args.repeat):
                for label, fn in paths.items():
                    before = cpu_seconds(pids[label])
                    times[label].append(timed(fn))
                    cpu[label].append(cpu_seconds(pids[label]) - before)

    print(f"\n## Service overhead\n\n{machine()}\n")
    print(
        f"model {md.name} {md.version} (tile {md.tile_size}, overlap {md.tile_overlap}, "
        f"margin {md.context_margin}); image {args.size}×{args.size} {image.dtype} PNG "
        f"({len(body) / 1e6:.1f} MB); {args.threads} intra-op threads; {args.repeat} interleaved rounds "
        f"after one warm-up\n"
    )
    base_min = min(times[next(iter(paths))])
    base_med = statistics.median(times[next(iter(paths))])
    base_cpu = statistics.median(cpu[next(iter(paths))])
    rows: dict[str, dict] = {}
    table = []
    for label, values in times.items():
        lo, med, cpu_med = min(values), statistics.median(values), statistics.median(cpu[label])
        table.append(
            [
                label,
                f"{lo:.3f}",
                f"{med:.3f}",
                f"{lo / base_min:.2f}×",
                f"{med / base_med:.2f}×",
                f"{cpu_med:.2f}",
                f"{cpu_med / base_cpu:.2f}×",
            ]
        )
        rows[label] = {"min_s": lo, "median_s": med, "all_s": values, "cpu_s": cpu[label]}
    headers = ["path", "min s", "median s", "× bare (min)", "× bare (median)", "CPU s (median)", "× bare CPU"]
    print(markdown_table(headers, table))
    print()
    for key, headers in {k: v for server in servers for k, v in server.headers.items()}.items():
        print(f"- last {key} request: tiles={headers['X-Tiles']}, `{headers['Server-Timing']}`")
    default = times["service (default settings)"]
    print(
        f"\nratio service / bare = **{min(default) / base_min:.2f}× by min, "
        f"{statistics.median(default) / base_med:.2f}× by median** (goal ≤ 1.15×)"
    )
    if args.int8:
        quick = times["service, int8 model (default settings)"]
        floor8 = times["bare ORT single pass, int8 model"]
        print(
            f"int8 / fp32 through the service = **{min(quick) / min(default):.2f}× by min, "
            f"{statistics.median(quick) / statistics.median(default):.2f}× by median**; "
            f"int8 service / bare int8 ORT = {min(quick) / min(floor8):.2f}× by min, "
            f"{statistics.median(quick) / statistics.median(floor8):.2f}× by median"
        )
        given = times["service, int8 model, diameter= given"]
        print(
            f"int8 service with diameter= / bare int8 ORT = {min(given) / min(floor8):.2f}× by min, "
            f"{statistics.median(given) / statistics.median(floor8):.2f}× by median"
        )

    title = f"POST /segment vs bare ORT, {args.size}² image, {args.threads} threads"
    print("\n" + plot_rounds(times, title, args.plot))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
