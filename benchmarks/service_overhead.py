"""What does the service cost on top of the model? ``POST /segment`` vs a bare ONNX Runtime pass.

In ONE run, on the same 2048×2048 image and the same thread counts:

1. **bare ORT**: one ``session.run`` over the whole (already normalised) image — the floor.
2. **service**: ``POST /segment`` end to end over HTTP on loopback to a real ``python -m service``
   process (upload, decode, normalise, tile with overlap, dynamic batcher, stitch, threshold,
   PNG encode, response), with the model's default tiling.
3. **service, single pass**: the same with ``?tile_size=2048`` (no overlap cost), to separate the
   tiling overhead from the HTTP/decode/encode overhead.

Prints a table and the ratio service / bare (goal ≤ 1.15×), by min and by median of ``--repeat``
interleaved rounds after a warm-up run. The model is ``--model`` (default: the bundled
``models/nuclei-unet.onnx``);
if that file does not exist yet, an UNTRAINED U-Net of the default architecture is exported to a
temporary file first (in a subprocess: PyTorch must not share a process with ONNX Runtime).

    .venv/bin/python benchmarks/service_overhead.py [--model PATH] [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.model_metadata import ModelMetadata  # noqa: E402
from service.preprocess import prepare  # noqa: E402
from service.settings import DEFAULT_MODEL_PATH  # noqa: E402

_STAND_IN = """
import sys
from pathlib import Path
from model_export.export import build_metadata, to_onnx_bytes
from model_export.unet import UNet
import onnx
model = UNet(in_channels=1, classes=1, base_channels=16, depth=4).eval()
md = build_metadata(model, {}, margin=32, name="untrained-unet", version="0.0.0-bench",
                    class_names=["nucleus"], tile_size=1024, threshold=0.5, precision="fp32",
                    extra_training={})
proto = onnx.load_from_string(to_onnx_bytes(model, 1, model.config.size_divisor))
for key, value in md.to_onnx_props().items():
    entry = proto.metadata_props.add(); entry.key, entry.value = key, value
onnx.save(proto, sys.argv[1])
"""


def stand_in_model(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-c", _STAND_IN, str(path)], cwd=REPO, check=True, stdout=subprocess.DEVNULL
    )
    return path


def nuclei_image(size: int, seed: int = 0) -> np.ndarray:
    """A 16-bit fluorescence-like image: blurred discs on a dim, noisy background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.float32)
    for _ in range(size * size // 900):
        y, x = rng.integers(0, size, 2)
        cv2.circle(image, (int(x), int(y)), int(rng.integers(5, 15)), float(rng.uniform(0.4, 1.0)), -1)
    image = cv2.GaussianBlur(image, (0, 0), 2.0) + rng.normal(0.05, 0.02, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 4095).astype(np.uint16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


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


class Service:
    """A real ``python -m service`` process on a loopback port."""

    def __init__(self, model: Path, threads: int) -> None:
        port = free_port()
        env = {
            **os.environ,
            "UNET_MODEL_PATH": str(model),
            "UNET_PROVIDERS": "cpu",
            "UNET_INTRA_OP_THREADS": str(threads),
            "UNET_INTER_OP_THREADS": "1",
            "UNET_HOST": "127.0.0.1",
            "UNET_PORT": str(port),
            "UNET_LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        self.headers: dict[str, dict] = {}
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("the service did not become ready")
            time.sleep(0.1)

    def segment(self, body: bytes, params: dict, label: str) -> None:
        r = self.client.post("/segment", params=params, content=body, headers={"Content-Type": "image/png"})
        r.raise_for_status()
        self.headers[label] = {k: r.headers.get(k) for k in ("X-Tiles", "Server-Timing")}

    def close(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model.is_file():
            print(f"{model} not found: exporting an untrained stand-in U-Net (base 16, depth 4)")
            model = stand_in_model(Path(tmp) / "stand-in.onnx")
        image = nuclei_image(args.size)
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        body = buf.tobytes()
        bare = BareOrt(model, image, args.threads)
        md = bare.metadata
        service = Service(model, args.threads)
        paths = {
            "bare ORT single pass (normalised input)": bare,
            "service (default tiling)": lambda: service.segment(body, {}, "default"),
            f"service (tile_size={args.size}, single pass)": lambda: service.segment(
                body, {"tile_size": args.size}, "single"
            ),
        }
        try:
            for fn in paths.values():
                fn()  # warm-up: first-run allocations and kernel selection are not steady state
            # Interleaved rounds: a CPU shared with other work drifts, and drift must hit all paths alike.
            times: dict[str, list[float]] = {label: [] for label in paths}
            for _ in range(args.repeat):
                for label, fn in paths.items():
                    times[label].append(timed(fn))
        finally:
            service.close()

    print(
        f"\nmodel {md.name} {md.version} (tile {md.tile_size}, overlap {md.tile_overlap}, "
        f"margin {md.context_margin}); image {args.size}×{args.size} uint16 PNG ({len(body) / 1e6:.1f} MB); "
        f"{args.threads} intra-op threads; {os.cpu_count()} CPUs; {args.repeat} interleaved rounds\n"
    )
    print(f"{'path':<44}{'min s':>8}{'median s':>10}{'× bare (min)':>14}{'× bare (median)':>17}")
    base_min = min(times[next(iter(paths))])
    base_med = statistics.median(times[next(iter(paths))])
    rows: dict[str, dict] = {}
    for label, values in times.items():
        lo, med = min(values), statistics.median(values)
        print(f"{label:<44}{lo:>8.3f}{med:>10.3f}{lo / base_min:>14.2f}{med / base_med:>17.2f}")
        rows[label] = {"min_s": lo, "median_s": med, "all_s": values}
    for key, headers in service.headers.items():
        print(f"  last {key} request: tiles={headers['X-Tiles']}  {headers['Server-Timing']}")
    default = times["service (default tiling)"]
    print(
        f"\nratio service / bare = {min(default) / base_min:.2f}× by min, "
        f"{statistics.median(default) / base_med:.2f}× by median (goal ≤ 1.15×)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
