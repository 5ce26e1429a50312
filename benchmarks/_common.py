"""Shared pieces of the benchmarks: test images, a real service process, peak memory, output.

Every benchmark measures *ratios within one run* (this kind of machine drifts by ±25% between
runs), prints a markdown table and writes a PNG plot to ``docs/bench/``. Nothing here imports
PyTorch: torch in the same process slows ONNX Runtime down badly, so images are generated and
stand-in models exported in subprocesses.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the scripts import ``service`` from the checkout they are in
    sys.path.insert(0, str(REPO))

PLOTS = REPO / "docs" / "bench"
#: The bundled model, for the benchmarks that always measure it.
BUNDLED_MODEL = REPO / "models" / "nuclei-unet.onnx"
#: A server environment that keeps every request on the in-memory path: a
#: UNET_WINDOWED_MIN_PIXELS that no image reaches.
IN_MEMORY_ONLY = {"UNET_WINDOWED_MIN_PIXELS": str(1 << 40)}
# The training run the bundled model was exported from (models/README.md; runs/ is not in git).
DEFAULT_CHECKPOINT = REPO / "runs" / "glow" / "best.pt"
CACHE = Path(tempfile.gettempdir()) / "unet-bench-cache"

# --------------------------------------------------------------------------- models

_STAND_IN = """
import sys
from pathlib import Path
import onnx, torch
from model_export.export import build_metadata, to_onnx_bytes
from model_export.unet import UNet
torch.manual_seed(0)
model = UNet(in_channels=1, classes=1, base_channels=16, depth=4).eval()
md = build_metadata(model, {}, margin=32, name="untrained-unet", version="0.0.0-bench",
                    class_names=["nucleus"], tile_size=1024, threshold=0.5, precision="fp32",
                    extra_training={})
proto = onnx.load_from_string(to_onnx_bytes(model, 1, model.config.size_divisor))
for key, value in md.to_onnx_props().items():
    entry = proto.metadata_props.add(); entry.key, entry.value = key, value
onnx.save(proto, sys.argv[1])
torch.save({"config": model.config.as_dict(), "state_dict": model.state_dict()}, sys.argv[2])
"""


def stand_in_model(folder: Path) -> tuple[Path, Path]:
    """An UNTRAINED U-Net of the default architecture: ``(onnx path, matching checkpoint path)``.

    Exported in a subprocess (PyTorch must not share a process with ONNX Runtime).
    """
    onnx_path, checkpoint = folder / "stand-in.onnx", folder / "stand-in.pt"
    subprocess.run(
        [sys.executable, "-c", _STAND_IN, str(onnx_path), str(checkpoint)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )
    return onnx_path, checkpoint


def resolve_model(model: Path, tmp: Path) -> Path:
    """``model`` if it exists, else an untrained stand-in (said on stdout, so tables are not misread)."""
    if model.is_file():
        return model
    print(f"{model} not found: using an UNTRAINED stand-in U-Net (base 16, depth 4)")
    return stand_in_model(tmp)[0]


# --------------------------------------------------------------------------- images

_SYNTH = """
import sys
import numpy as np
from model_export.data import SynthConfig, synth_nuclei
size, seed = int(sys.argv[1]), int(sys.argv[2])
# A typical fluorescence field: nuclei of radius ~8-12 px covering ~25-30% of the area.
config = SynthConfig(radius=(8.0, 12.0), coverage=(0.25, 0.3), photons=(200.0, 1000.0))
image, labels = synth_nuclei(seed, size, config)
np.save(sys.argv[3], image)
"""

#: Edge of the one image generated; smaller images are crops of it, bigger ones mirror-tiled from
#: it, so every size has the same nuclei density, bit depth and intensity range (and the
#: generator's per-nucleus loop and full-size float buffers never run at 8192²).
GENERATED = 4096


def nuclei_image(size: int, seed: int = 2) -> np.ndarray:
    """A ``(size, size)`` synthetic fluorescence-nuclei image (uint16 for the default seed).

    From ``model_export``'s generator, run in a subprocess (it imports PyTorch) and cached in
    the temp folder: a crop of one generated ``GENERATED``² image, or that image mirror-tiled.
    """
    path = CACHE / f"nuclei-{GENERATED}-seed{seed}.npy"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npy")
        subprocess.run([sys.executable, "-c", _SYNTH, str(GENERATED), str(seed), str(tmp)], cwd=REPO,
                       check=True)
        os.replace(tmp, path)
    image = np.load(path)
    if size > GENERATED:
        extra = -(-size // GENERATED) * GENERATED - GENERATED
        image = np.pad(image, ((0, extra), (0, extra)), mode="symmetric")
    return np.ascontiguousarray(image[:size, :size])


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes at a fast compression level (uploads are what a client sends, not archives)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (wall clock)."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Service:
    """A real ``python -m service`` process on a loopback port.

    Args:
        model: ONNX file to serve.
        threads: ONNX Runtime intra-op threads (inter-op 1).
        env: extra ``UNET_*`` settings (e.g. ``{"UNET_MAX_BATCH_SIZE": "1"}``).
        cwd: where ``python -m service`` runs: the ``service`` package found there is served.
    """

    def __init__(
        self, model: Path, threads: int, env: Mapping[str, str] | None = None, cwd: Path = REPO
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        full_env = {
            **os.environ,
            "UNET_MODEL_PATH": str(model),
            "UNET_PROVIDERS": "cpu",
            "UNET_INTRA_OP_THREADS": str(threads),
            "UNET_INTER_OP_THREADS": "1",
            "UNET_HOST": "127.0.0.1",
            "UNET_PORT": str(port),
            "UNET_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=cwd,  # another checkout's service package (a baseline), or this one's
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        self.client = httpx.Client(base_url=self.url, timeout=600)
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

    def model_info(self) -> dict:
        return self.client.get("/v1/model").json()

    def segment(self, body: bytes, params: Mapping[str, object], label: str = "last") -> httpx.Response:
        """``POST /segment`` with a PNG body; keeps the tiling/timing headers under ``label``."""
        r = self.client.post("/segment", params=dict(params), content=body,
                             headers={"Content-Type": "image/png"})
        r.raise_for_status()
        self.headers[label] = {
            k: r.headers.get(k) for k in ("X-Tiles", "Server-Timing", "X-Nucleus-Diameter")
        }
        return r

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- memory


def vm_hwm(pid: int) -> int | None:
    """The process's peak resident memory so far (``VmHWM``), bytes; None where Linux does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    import psutil  # benchmark-only dependency

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class PeakRss:
    """Peak resident memory of a process over a stretch of time, in bytes.

    Exact where the kernel allows it: ``/proc/PID/status`` ``VmHWM`` (the high-water mark) after
    resetting it by writing ``5`` to ``/proc/PID/clear_refs`` (Linux ≥ 4.0, own process or root).
    Elsewhere, psutil samples the RSS every ``interval`` seconds (may miss short spikes).
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil  # benchmark-only dependency

        self.pid, self.interval = pid, interval
        self.process = psutil.Process(pid)
        self.exact = self._reset()
        self._peak = 0
        self._stop = False
        self._thread = None

    def _reset(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return self._hwm() is not None
        except OSError:
            return False

    def _hwm(self) -> int | None:
        return vm_hwm(self.pid)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def __enter__(self) -> PeakRss:
        import threading

        self._peak = self.rss()
        if self.exact:
            self._reset()
        else:
            self._stop = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop:
            self._peak = max(self._peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            self._peak = max(self._peak, self._hwm() or 0)
        else:
            self._stop = True
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, self.rss())

    @property
    def peak(self) -> int:
        return self._peak


# --------------------------------------------------------------------------- reporting


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line: CPU, cores, memory, Python and the versions that matter (torch not imported)."""
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = ""
    ort = _version("onnxruntime-gpu")
    if ort == "not installed":
        ort = _version("onnxruntime")
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs{memory}; Python {platform.python_version()}; "
        f"onnxruntime {ort}; torch {_version('torch')}; monai {_version('monai')}; "
        f"numpy {_version('numpy')}; opencv {_version('opencv-python-headless')}"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def add_stack_options(parser) -> None:
    """``--depth``, ``--size``, ``--nuclei``: the synthetic stack of the stack benchmarks
    (``stack_job.py``, ``stack_cells.py``), 16 × 512² with 120 nuclei by default."""
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--nuclei", type=int, default=120)


def synthetic_stack(depth: int, size: int, nuclei: int) -> np.ndarray:
    """The stack benchmarks' ``(Z, Y, X)`` stack (``model_export.synth_stack``, seed 7)."""
    from model_export.synth_stack import StackConfig, synth_stack

    return synth_stack(7, StackConfig(depth=depth, size=size, nuclei=nuclei))[0]


def imagej_stack(image: np.ndarray, axes: str) -> bytes:
    """``image`` as Fiji saves a hyperstack of ``axes`` (``"ZYX"``, ``"ZCYX"``): 0.5 µm pixels, a 1 µm
    z-step."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": axes, "spacing": 1.0, "unit": "um"})
    return buffer.getvalue()


def job_on_fresh_server(
    threads: int, env: Mapping[str, str], submit: Callable[[httpx.Client], httpx.Response]
) -> tuple[float, int, int]:
    """``(seconds, peak RSS bytes, objects)`` of one job on a fresh ``python -m service`` (bundled
    model, ``env`` added): ``submit(client)`` posts it, after a warm-up request; the seconds run
    from the post to its success (polled), the peak is the server's ``VmHWM`` over its life."""
    with Service(BUNDLED_MODEL, threads, env) as service:
        service.segment(encode_png(nuclei_image(512)), {"output": "mask"})  # warm-up
        started = time.perf_counter()
        submitted = submit(service.client)
        submitted.raise_for_status()
        url = f"/jobs/{submitted.json()['id']}"
        while (status := service.client.get(url).json())["status"] in ("queued", "running"):
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        if status["status"] != "succeeded":
            raise RuntimeError(f"the job did not succeed: {status}")
        objects = int(service.client.get(f"{url}/result").json()["objects"])
        peak = vm_hwm(service.pid) or 0
        service.client.delete(url)
        return seconds, peak, objects


def cells_cost_table(
    expands: Sequence[float], repeat: int, run: Callable[[dict[str, str]], tuple[float, int, int]],
    counted: str,
) -> str:
    """Jobs without cells and with ``expand=`` each of ``expands``, interleaved for ``repeat`` rounds;
    ``run(params)`` runs one on a fresh server: ``(seconds, peak RSS bytes, objects)``. A markdown
    table: objects (``counted`` names them), median seconds, its ratio to the job without cells,
    and the highest peak over the rounds."""
    variants = {"no cells": {}, **{f"expand={e:g}": {"expand": f"{e:g}"} for e in expands}}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = dict.fromkeys(variants, 0)
    counts: dict[str, int] = {}
    for _ in range(repeat):
        for name, params in variants.items():
            took, peak, objects = run(params)
            seconds[name].append(took)
            peaks[name] = max(peaks[name], peak)
            counts[name] = objects
    base = statistics.median(seconds["no cells"])
    return markdown_table(
        ["variant", counted, "job s (median)", "× no cells", "peak RSS MiB"],
        [[name, counts[name], f"{statistics.median(s):.1f}", f"{statistics.median(s) / base:.3f}",
          f"{peaks[name] / 2**20:.0f}"] for name, s in seconds.items()],
    )


def save_figure(fig, name: str) -> str:
    """Save ``fig`` as ``docs/bench/NAME`` (or NAME itself if absolute); the path to print."""
    path = PLOTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"


def plot_rounds(
    times: dict[str, list[float]], title: str, name: str, colors: Sequence[str] = ("#4878a8",)
) -> str:
    """Horizontal bars of each path's median seconds, with every round as a dot; saved as ``name``."""
    plt = pyplot()
    labels = list(times)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    bar_colors = [colors[i % len(colors)] for i in range(len(labels))]
    ax.barh(labels, [statistics.median(times[k]) for k in labels], color=bar_colors)
    ax.scatter([v for k in labels for v in times[k]], [k for k in labels for _ in times[k]],
               color="black", s=12, zorder=3, label="each round")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image (bar: median)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, name)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
