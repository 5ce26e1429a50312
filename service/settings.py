"""The service's configuration: one typed object read once from ``UNET_*`` environment variables.

Every knob the deployment can turn lives here (the Dockerfile, compose file and k8s manifests
rely on these exact names). Tile size, overlap and threshold default to the model's own
metadata; a setting overrides the model, a request option overrides the setting — resolved in
:func:`service.app` helpers, never re-derived elsewhere.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from service.structure import Limits

#: The repository root (parent of the ``service`` package): the default model is found from
#: here, so ``python -m service`` works from any working directory of a checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = REPO_ROOT / "models" / "nuclei-unet.onnx"

#: Short provider names accepted in ``UNET_PROVIDERS`` (case-insensitive) → ONNX Runtime names.
PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


class Settings(BaseSettings):
    """All service settings; environment variable = ``UNET_`` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="UNET_", extra="ignore", validate_default=True)

    # --- model and runtime -------------------------------------------------------------------
    model_path: Path = Field(
        DEFAULT_MODEL_PATH,
        description="ONNX model file; relative paths are resolved from the working directory",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="execution providers in order of preference, comma-separated "
        "(short names cuda, cpu, tensorrt accepted)",
    )
    require_model_checksum: bool = Field(
        False,
        description="refuse a model file without the unet.sha256 seal (a sealed file is always "
        "verified at load; a mismatch keeps the service not-ready)",
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="auto: the model's int8 copy (<stem>.int8.onnx beside it) when running on the CPU and "
        "the copy exists, else the model; fp32: the model as named; int8: the int8 copy, on the CPU",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads inside one operator; 0 = ORT's default (one per core)"
    )
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads across operators; 0 = default")

    # --- tiling (None → the model's metadata) -------------------------------------------------
    tile_size: int | None = Field(None, ge=16, description="tile edge in pixels; default from the model")
    tile_overlap: int | None = Field(
        None, ge=0, description="overlap between neighbouring tiles in pixels; default from the model"
    )
    max_tile_size: int = Field(
        2048, ge=16, description="largest tile_size a request may ask for (bounds per-tile memory)"
    )
    windowed_min_pixels: int = Field(
        2048 * 2048 + 1,
        ge=1,
        description="images of at least this many pixels (at the model's nucleus scale) are segmented "
        "band by band (service/windows.py: no full-size float maps; the same outputs)",
    )
    windowed_tile_size: int | None = Field(
        1024,
        ge=16,
        description="tile edge for images segmented band by band when neither the request nor "
        "UNET_TILE_SIZE sets one (bounds ONNX Runtime's working set; docs/benchmarks.md §8); "
        "unset: the model's",
    )
    windowed_batch_size: int = Field(
        1, ge=1, description="tiles per session run for images segmented band by band (1 on a CPU)"
    )

    # --- dynamic batching ---------------------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, description="most tiles in one session run")
    count_objects_on_every_output: bool = Field(
        True,
        description="split and count nuclei for X-Object-Count on mask/probability/overlay outputs too "
        "(labels/objects/geojson always count); false saves ~0.1–0.25× of the model's time per request",
    )
    prediction_cache_mb: int = Field(
        256,
        ge=0,
        description="MiB of recent decoded planes and the model's in-memory predictions on them, kept so "
        "that asking again for the same upload (another output, threshold or split: the web page does, "
        "and scripts that fetch the mask, then the labels) does not run the model again; least recently "
        "used first out; 0 = off (service/prediction_cache.py). Resident memory beside admission's budget",
    )
    max_batch_pixels: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="most tile pixels in one session run (bounds session memory: big tiles run in "
        "smaller batches; one tile always runs)",
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="how long the first queued tile waits for others to fill a batch"
    )
    max_queue_tiles: int = Field(
        64,
        ge=1,
        description="tiles waiting for the engine; raised to 2 × max_concurrent_requests × max_batch_size "
        "so that admitted requests are never refused half-way (admission bounds the work instead)",
    )
    max_concurrent_requests: int = Field(
        8,
        ge=1,
        description="requests admitted at once in each admission lane (small, large); beyond this they "
        "wait like requests over the pixel budget (see admission_pixels)",
    )

    # --- admission by work (service/admission.py; derivation of the defaults: docker/README.md) --
    admission_pixels: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="pixels (width × height) of large requests in progress at once; a larger image "
        "runs alone. Bounds memory (~40 B per pixel beyond the model's working set) and the time "
        "admitted work needs",
    )
    admission_small_pixels: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="requests up to this many pixels use the small lane, which large ones cannot take",
    )
    admission_small_lane_pixels: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="pixels of small requests in progress at once (≥ admission_small_pixels)",
    )
    admission_max_wait_s: float = Field(
        10.0,
        ge=0,
        description="longest a request waits for admission; one whose estimated wait is longer gets 503 + "
        "Retry-After at once",
    )
    admission_max_queued: int = Field(32, ge=0, description="requests waiting for admission; beyond this 503")
    admission_throughput_mps: float = Field(
        1.0,
        gt=0,
        description="work rate assumed for wait estimates until one is measured, megapixels per second",
    )

    # --- limits -------------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="largest request body (Content-Length and streamed bytes)"
    )
    max_stored_upload_bytes: int = Field(
        8 * 1024**3,
        ge=1,
        description="largest file POST /uploads stores (streamed to the jobs folder, within "
        "UNET_JOBS_MAX_BYTES) for requests to name with upload=<id>: a project or plate past the upload "
        "limit, read a plane at a time from a memory map",
    )
    max_pixels: int = Field(
        8192 * 8192, ge=1, description="largest image width × height, checked from the header"
    )
    max_slide_pixels: int = Field(
        100_000 * 100_000,
        ge=1,
        description="largest slide width × height read window by window from a file "
        "(service/slide_files.py); memory does not grow with the height, but grows with the width "
        "(bands span it: peak RSS ~1.7 GB at 32,768 px wide, ~2.8 GB projected at 100,000; "
        "docs/benchmarks.md §9), time and output size grow with both",
    )
    max_tiff_pages: int = Field(
        10_000, ge=1, description="most pages (IFDs) a TIFF may have; counted before they are indexed"
    )
    max_tiff_tags: int = Field(
        500_000, ge=1, description="most tags (IFD entries) a TIFF's pages may have in all; counted before "
        "tifffile parses them"
    )
    max_image_segments: int = Field(
        1_000, ge=1, description="most JPEG marker segments, or PNG chunks besides image data, an image may "
        "have; counted before it is decoded"
    )
    max_png_data_chunks: int = Field(
        100_000, ge=1, description="most image data chunks (IDAT) a PNG may have; counted before it is "
        "decoded"
    )
    max_metadata_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="most bytes of metadata (PNG ancillary chunks, JPEG APPn/COM "
        "segments: Exif, XMP, ICC, text) an image may carry"
    )
    max_jpeg_scans: int = Field(
        32, ge=1, description="most scans a (progressive) JPEG may have; the decoder goes over the image "
        "once per scan"
    )
    max_czi_subblocks: int = Field(
        20_000, ge=1, description="most subblocks (tiles of a plane) a CZI file may have; counted before "
        "its directory is parsed"
    )
    max_lif_blocks: int = Field(
        20_000, ge=1, description="most memory blocks (one per image of a project) a Leica LIF may have; "
        "counted before it is parsed"
    )
    max_nd2_chunks: int = Field(
        50_000, ge=1, description="most chunks (one per frame: a time point, position and z-slice with "
        "its channels) a Nikon ND2 may have; counted before it is parsed"
    )
    max_oib_entries: int = Field(
        50_000, ge=1, description="most directory entries (streams: a few per plane) an Olympus OIB may "
        "have; counted before it is parsed"
    )
    max_batch_files: int = Field(64, ge=1, description="most files in one /segment/batch request")
    request_timeout_s: float = Field(
        300.0, gt=0, description="a segmentation still running after this long is abandoned (503)"
    )

    # --- jobs (service/jobs.py: POST /jobs, work that outlives a request) ---------------------
    jobs_dir: Path = Field(
        Path(tempfile.gettempdir()) / "unet-jobs",
        description="where jobs keep their upload, status and result (one folder per job); a volume in "
        "containers, so results survive a restart",
    )
    jobs_workers: int = Field(
        1, ge=1, description="jobs segmented at once (each also goes through admission)"
    )
    jobs_retention_s: float = Field(
        24 * 3600.0, gt=0, description="finished jobs older than this are deleted by a periodic sweep"
    )
    jobs_max: int = Field(100, ge=1, description="most jobs kept at once; beyond this POST /jobs answers 503")
    jobs_max_bytes: int = Field(
        10 * 1024**3,
        ge=1,
        description="most bytes the jobs folder may hold; beyond this POST /jobs answers 507",
    )
    replica_id: str | None = Field(
        None,
        description="this replica's name among those sharing UNET_JOBS_DIR (default: the host name, "
        "i.e. the pod's name on Kubernetes); a restart under the same name fails the jobs its earlier "
        "life left unfinished",
    )
    jobs_owner_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a replica sharing UNET_JOBS_DIR that has not beaten (every second) for this long is "
        "taken as gone: its queued and running jobs are marked failed",
    )
    data_root: Path | None = Field(
        None,
        description="folder POST /jobs may read images from by relative path (JSON body {\"path\": ...}), "
        "e.g. a cluster volume of slides; unset: jobs take uploads only. Nothing outside it is ever read "
        "(symlinks and '..' resolved first)",
    )
    web_job_above_pixels: int = Field(
        4096 * 4096,
        ge=0,
        description="the web page sends images with more pixels than this (width × height from the file's "
        "header) as jobs, with a progress bar and a Cancel button; 0: every image",
    )

    # --- security -----------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="when set, required as X-API-Key or Authorization: Bearer on all but health routes"
    )
    auth_exempt_metrics: bool = Field(True, description="serve /metrics without the API key")

    # --- process ------------------------------------------------------------------------------
    log_json: bool = Field(False, description="one JSON object per log line (for log shippers)")
    log_level: str = Field("INFO", description="root log level")
    host: str = Field("0.0.0.0", description="bind address for `python -m service`")
    port: int = Field(8000, ge=0, le=65535, description="bind port for `python -m service`")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish before exit"
    )
    warmup_delay_s: float = Field(
        0.0, ge=0, description="extra wait after warm-up before readiness turns true (probe rehearsal, tests)"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("providers")
    @classmethod
    def _expand_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is required (e.g. 'CPU')")
        return [PROVIDER_ALIASES.get(name.lower(), name) for name in value]

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # An empty UNET_API_KEY= in a compose file means "no key", not "the empty key".
        return None if value in ("", None) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_queue_tiles < self.max_batch_size:
            # A request submits up to max_batch_size tiles at once; a smaller queue rejects everything.
            raise ValueError(
                f"UNET_MAX_QUEUE_TILES ({self.max_queue_tiles}) must be ≥ UNET_MAX_BATCH_SIZE "
                f"({self.max_batch_size})"
            )
        if self.admission_small_pixels > self.admission_pixels:
            raise ValueError(
                f"UNET_ADMISSION_SMALL_PIXELS ({self.admission_small_pixels}) must not exceed "
                f"UNET_ADMISSION_PIXELS ({self.admission_pixels}): a small request is one the budget holds"
            )
        if self.admission_small_lane_pixels < self.admission_small_pixels:
            raise ValueError(
                f"UNET_ADMISSION_SMALL_LANE_PIXELS ({self.admission_small_lane_pixels}) must hold one small "
                f"request (UNET_ADMISSION_SMALL_PIXELS, {self.admission_small_pixels})"
            )
        if (
            self.tile_size is not None
            and self.tile_overlap is not None
            and (2 * self.tile_overlap >= self.tile_size)
        ):
            raise ValueError("UNET_TILE_OVERLAP must be less than half of UNET_TILE_SIZE")
        return self

    def decode_limits(self) -> Limits:
        """The bounds on an upload's structure (pages, tags, chunks, metadata) for the decoders."""
        from service.structure import Limits  # the decoders' module; settings stays light to import

        return Limits(
            max_tiff_pages=self.max_tiff_pages,
            max_tiff_tags=self.max_tiff_tags,
            max_image_segments=self.max_image_segments,
            max_png_data_chunks=self.max_png_data_chunks,
            max_metadata_bytes=self.max_metadata_bytes,
            max_jpeg_scans=self.max_jpeg_scans,
            max_czi_subblocks=self.max_czi_subblocks,
            max_lif_blocks=self.max_lif_blocks,
            max_nd2_chunks=self.max_nd2_chunks,
            max_oib_entries=self.max_oib_entries,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
