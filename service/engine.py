"""ONNX Runtime session around one exported U-Net: load, pick providers, run, warm up.

The engine knows nothing about images or tiles: :meth:`Engine.run` maps a batch
``(N, C, h, w) float32`` to raw model outputs ``(N, K, h, w) float32``. Tiling lives in
``service.tiling``, the glue in ``service.segment``.

Provider fallback: ``onnxruntime.get_available_providers()`` lists CUDA even where its
libraries are missing (see /work/shared/FACTS.md), and asking for CUDA then prints two
loud native log lines before ORT silently uses the CPU. We silence ORT's logger while
the session is created and compare the providers actually attached
(``session.get_providers()``) with those requested, logging ONE warning per dropped
provider.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service import cuda_libraries, model_checksum
from service.model_metadata import MetadataError, ModelMetadata

log = logging.getLogger(__name__)

#: A provider name, or ``(name, provider_options)`` as ORT accepts them.
ProviderSpec = str | tuple[str, dict[str, Any]]

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")

# ORT log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_ORT_DEFAULT_SEVERITY = 2
_ORT_FATAL_ONLY = 4
# set_default_logger_severity is process-global: serialise loads that touch it.
_logger_lock = threading.Lock()


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, not ONNX, or lacks usable metadata."""


#: ``UNET_PRECISION`` values: ``auto`` serves the int8 copy when the active provider is the CPU
#: and the copy exists, ``fp32`` always the file named, ``int8`` always the int8 copy (on the CPU).
PRECISIONS = ("auto", "fp32", "int8")

_CPU = "CPUExecutionProvider"
#: Providers that load CUDA and cuDNN (``service.cuda_libraries``).
_NEEDS_CUDA_LIBRARIES = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def int8_path(model_path: str | Path) -> Path:
    """Where a model's int8 copy lives: ``models/nuclei-unet.onnx`` → ``models/nuclei-unet.int8.onnx``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


class Engine:
    """One ONNX Runtime inference session plus the model's metadata.

    Build it with :meth:`Engine.load`. ``run`` is thread-safe (ORT sessions are), so the
    dynamic batcher may call it from a worker thread while requests arrive.

    Attributes:
        path: the ONNX file.
        metadata: the model's self-description (``unet.*`` metadata props).
        providers: execution providers actually attached, in priority order.
        input_name / output_name: the graph's input and (first) output tensor names.
        input_dtype: ``np.float32``, or ``np.float16`` for an fp16 model (batches are cast).
        checksum: ``sha256:<hex>`` of the file when its seal (``unet.sha256``) was verified,
            None for an unsealed file.
    """

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self.providers: list[str] = list(session.get_providers())
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.warmed_up = False
        self.checksum: str | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        require_checksum: bool = False,
    ) -> Engine:
        """Open ``path`` with the first usable of ``providers``; CPU is always the last resort.

        Args:
            path: ONNX file written by ``model_export`` (or ``tests.models``).
            providers: names (or ``(name, options)``) in priority order. TensorRT is used
                only when listed here.
            intra_op_threads: threads inside one operator; 0 lets ORT choose (all cores).
            inter_op_threads: threads across independent operators; 1 = sequential graph.
            require_checksum: refuse a file without the ``unet.sha256`` seal (a sealed file
                is always verified; an unsealed one otherwise loads with one warning).

        Raises:
            ModelLoadError: missing/unreadable file, a seal that does not match the file (or
                none when required), not an ONNX model, missing or invalid ``unet.*``
                metadata, or an input/output layout the service cannot drive.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        checksum = cls._verify(path, require_checksum)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(intra_op_threads))
        options.inter_op_num_threads = max(0, int(inter_op_threads))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No memory pattern: with it, ORT's second run of a shape allocates one block for the whole
        # plan beside the arena's chunks from the first run, ~1.6× the working set (int8, one
        # 1504² tile: 1049 vs 654 MiB RSS; 2048²: no CPU-time difference, 0.98–1.01×; issue #16).
        options.enable_mem_pattern = False
        requested = list(providers) or ["CPUExecutionProvider"]
        if "CPUExecutionProvider" not in [_provider_name(p) for p in requested]:
            requested.append("CPUExecutionProvider")
        available = set(ort.get_available_providers())
        # Providers this onnxruntime build does not even know would only produce an ORT
        # warning; drop them here and report them with the others below.
        usable = [p for p in requested if _provider_name(p) in available]
        if any(_provider_name(p) in _NEEDS_CUDA_LIBRARIES for p in usable):
            cuda_libraries.preload()
        with _logger_lock:
            # Provider libraries that fail to load (no CUDA here) log through the global
            # default logger, not the session's: silence it for the creation only.
            ort.set_default_logger_severity(_ORT_FATAL_ONLY)
            # The session keeps this level: run-time failures still raise exceptions that
            # carry the message, without a duplicate native log line per failure.
            options.log_severity_level = _ORT_FATAL_ONLY
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=usable)
            except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
                raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
            finally:
                ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
        try:
            metadata = ModelMetadata.from_onnx_props(session.get_modelmeta().custom_metadata_map)
        except MetadataError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        engine = cls(session, metadata, path)
        engine.checksum = checksum
        engine._check_layout()
        dropped = [_provider_name(p) for p in requested if _provider_name(p) not in engine.providers]
        if dropped:
            log.warning(
                "execution provider(s) %s requested but not usable (libraries missing or no device); "
                "running on %s",
                ", ".join(dropped),
                ", ".join(engine.providers),
            )
        return engine

    @staticmethod
    def _verify(path: Path, required: bool) -> str | None:
        """The file's verified seal, None if it has none (allowed unless ``required``)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc
        try:
            checksum = model_checksum.verify(data)
        except model_checksum.NotProtobuf as exc:
            raise ModelLoadError(f"cannot load ONNX model {path}: not an ONNX file ({exc})") from exc
        except model_checksum.ChecksumError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        if checksum is None:
            if required:
                raise ModelLoadError(
                    f"{path} carries no '{model_checksum.CHECKSUM_KEY}' checksum and "
                    "UNET_REQUIRE_MODEL_CHECKSUM is set; seal it with `python -m model_export seal`"
                )
            log.warning(
                "model %s carries no '%s' checksum (exported before seals existed): its integrity is "
                "not verified; `python -m model_export seal` adds one",
                path,
                model_checksum.CHECKSUM_KEY,
            )
        return checksum

    @classmethod
    def load_with_precision(
        cls,
        path: str | Path,
        precision: str = "auto",
        providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        require_checksum: bool = False,
    ) -> Engine:
        """:meth:`load` of ``path`` or of its int8 copy (:func:`int8_path`), as ``precision`` says.

        int8 runs on the CPU only: ONNX Runtime's GPU providers gain nothing from the QDQ graph
        (they dequantise or fall back node by node), so ``auto`` keeps the file named on any
        other provider and ``int8`` drops the others with a warning. ``auto`` first opens the
        file named, since only an open session tells which provider really attached (CUDA is
        listed as available even where its libraries are missing).

        A copy made from another file than the one named (its ``quantization.source.sha256``
        differs: the model was replaced and the old copy left beside it) is never served:
        ``auto`` serves the file named and warns, ``int8`` fails.

        Raises:
            ModelLoadError: as :meth:`load`; ``int8`` without an int8 copy, with a copy whose
                metadata does not say int8 or that was made from another model file; an
                unknown ``precision``.
        """
        if precision not in PRECISIONS:
            raise ModelLoadError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        quantised = int8_path(path)
        if precision == "int8":
            if not quantised.is_file():
                raise ModelLoadError(
                    f"UNET_PRECISION=int8 but there is no int8 model at {quantised} "
                    f"(make one with `python -m model_export quantize --model {path}`)"
                )
            others = [_provider_name(p) for p in providers if _provider_name(p) != _CPU]
            if others:
                log.warning("the int8 model runs on the CPU only; not using %s", ", ".join(others))
            return cls._load_int8(quantised, Path(path), intra_op_threads, inter_op_threads, require_checksum)
        engine = cls.load(path, providers, intra_op_threads, inter_op_threads, require_checksum)
        if precision == "fp32" or engine.providers[0] != _CPU or not quantised.is_file():
            return engine
        try:
            chosen = cls._load_int8(
                quantised, Path(path), intra_op_threads, inter_op_threads, require_checksum
            )
        except ModelLoadError as exc:
            log.warning("not using the int8 model: %s; serving %s", exc, engine.path.name)
            return engine
        log.info("serving the int8 model %s on the CPU (UNET_PRECISION=auto)", quantised.name)
        return chosen

    @classmethod
    def _load_int8(
        cls, path: Path, source: Path, intra_op_threads: int, inter_op_threads: int, require_checksum: bool
    ) -> Engine:
        """The int8 copy ``path`` on the CPU, checked to be an int8 model made from ``source``.

        The source is recognised by its seal digest (``model_checksum.digest``: the file less its
        own seal entry), so sealing the fp32 file after quantising it does not make the copy stale.
        """
        engine = cls.load(path, [_CPU], intra_op_threads, inter_op_threads, require_checksum)
        md = engine.metadata
        if md.precision != "int8":
            raise ModelLoadError(f"{path}: its metadata says precision {md.precision!r}, not 'int8'")
        recorded = str(md.quantization.get("source", {}).get("sha256") or "")
        if recorded and not recorded.startswith("sha256:"):
            recorded = f"sha256:{recorded}"  # copies written before the seal existed: bare hex
        if recorded and source.is_file() and model_checksum.digest(source.read_bytes()) != recorded:
            raise ModelLoadError(
                f"{path.name} was made from another {source.name} than the one there now (stale copy); "
                f"re-run `python -m model_export quantize --model {source}`"
            )
        return engine

    def _check_layout(self) -> None:
        """Fail at load, not at the first request, if the graph is not (N, C, H, W) → (N, K, H, W)."""
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        md = self.metadata
        if len(inp.shape) != 4 or len(out.shape) != 4:
            raise ModelLoadError(
                f"{self.path}: expected a 4-D (N, C, H, W) input and output, "
                f"got {inp.shape} -> {out.shape}"
            )
        if inp.type not in ("tensor(float)", "tensor(float16)"):
            raise ModelLoadError(f"{self.path}: input type {inp.type} is not float32/float16")
        checks = (("input channels", inp.shape[1], md.in_channels), ("classes", out.shape[1], md.classes))
        for what, dim, want in checks:
            if isinstance(dim, int) and dim != want:
                raise ModelLoadError(f"{self.path}: graph has {dim} {what}, metadata says {want}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs for a batch: ``(N, C, h, w)`` float32 → ``(N, K, h, w)`` float32.

        ``h`` and ``w`` must be multiples of ``metadata.size_divisor`` (the tiler
        guarantees it). Outputs are logits or probabilities as ``metadata.output_kind`` says.
        """
        if batch.ndim != 4 or batch.shape[1] != self.metadata.in_channels:
            raise ValueError(
                f"expected a (N, {self.metadata.in_channels}, h, w) batch, got shape {batch.shape}"
            )
        feed = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = self.session.run([self.output_name], {self.input_name: feed})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def warmup(self, size: int | None = None, batch_size: int = 1) -> float:
        """Run one dummy batch so the first request does not pay for lazy initialisation.

        ``size`` defaults to the model's tile size capped at 256 px (on a CPU a larger
        warm-up only costs time; on CUDA pass the real tile size so kernels get tuned).
        Returns the seconds it took.
        """
        md = self.metadata
        edge = min(md.tile_size, 256) if size is None else size
        edge = max(md.size_divisor, -(-edge // md.size_divisor) * md.size_divisor)
        dummy = np.zeros((batch_size, md.in_channels, edge, edge), dtype=np.float32)
        start = time.perf_counter()
        self.run(dummy)
        self.warmed_up = True
        return time.perf_counter() - start

    def __repr__(self) -> str:
        md = self.metadata
        return f"Engine({str(self.path)!r}, model={md.name}@{md.version}, providers={self.providers})"
