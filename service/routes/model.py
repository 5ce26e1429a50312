"""Model information: ``GET /v1/model`` and the open-inference-protocol model/server metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.errors import ProblemError, problem_responses
from service.objects import params_for_model
from service.routes.deps import Runtime, get_runtime, require_api_key

router = APIRouter(responses=problem_responses(503))
#: Every route here needs the API key (when one is set) except model readiness, which is a probe.
_AUTH = {"dependencies": [Depends(require_api_key)]}
_AUTH_401 = problem_responses(401)


class TilingInfo(BaseModel):
    tile_size: int = Field(description="tile edge used when a request does not ask, pixels")
    overlap: int = Field(description="overlap between neighbouring tiles, pixels")
    source: str = Field(description="where the values come from: settings or model")
    max_tile_size: int = Field(description="largest tile_size a request may ask for")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_pixels: int = Field(description="pixels one model run may hold (caps a batch of large tiles)")
    max_queue_delay_ms: float
    max_queue_tiles: int
    max_concurrent_requests: int


class AdmissionInfo(BaseModel):
    """Admission by work (service/admission.py): settings and the state now."""

    budget_pixels: int = Field(description="pixels of large requests at once (a larger one runs alone)")
    small_pixels: int = Field(description="requests up to this size use the small lane")
    small_lane_pixels: int = Field(description="pixels of small requests in progress at once")
    max_wait_s: float = Field(description="longest a request waits for admission before 503")
    max_queued: int = Field(description="requests that may wait for admission")
    in_flight_pixels: dict[str, int] = Field(description="pixels admitted and not finished, by lane")
    queued_requests: dict[str, int] = Field(description="requests waiting, by lane")
    throughput_mps: float = Field(description="work rate used for wait estimates, megapixels per second")
    throughput_measured: bool = Field(description="false: still the assumed UNET_ADMISSION_THROUGHPUT_MPS")


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_stored_upload_bytes: int = Field(
        description="largest file POST /uploads stores, to name with upload="
    )
    max_pixels: int
    max_batch_files: int
    request_timeout_s: float


class ObjectsInfo(BaseModel):
    method: str = Field(description="how the mask becomes separate nuclei (from the model's metadata)")
    count_on_every_output: bool = Field(
        description="whether mask/probability/overlay responses also carry X-Object-Count"
    )
    min_confidence: float = Field(
        description="a connected region of the mask whose mean foreground probability is under this is "
        "not an object (not labelled, listed or counted; the mask still shows it); 0: every region counts"
    )
    min_snr: float = Field(
        description="a connected region of the mask whose signal stands less than this many standard "
        "deviations of a ring around it above the ring's median is not an object (faint haze and noise "
        "specks); 0: every region counts"
    )


class DefaultsInfo(BaseModel):
    threshold: float = Field(description="foreground probability threshold when a request does not ask")
    nucleus_diameter: float | None = Field(
        description="nucleus diameter (px) the model was trained at: each image is resized so its nuclei "
        "come out this size; null: images are segmented at their own scale"
    )
    diameter: str = Field(
        description="how a request's nucleus diameter is found when it sends no diameter=: 'estimated' per "
        "image, or 'model-scale' (not resized) for a model without a nucleus diameter"
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    file: str = Field(description="model file served (name only, the directory is not disclosed)")
    precision: str = Field(
        description="fp32, fp16 or int8: the weights served (UNET_PRECISION=auto serves the int8 copy on CPU)"
    )
    checksum: str | None = Field(
        None, description="sha256:<hex> of the model file, verified at load; null: the file carries no seal"
    )
    providers: list[str] = Field(description="execution providers attached, in priority order")
    provider: str = Field(description="the active provider (the first attached)")
    warmup_ms: float | None
    tiling: TilingInfo
    batching: BatchingInfo
    admission: AdmissionInfo
    objects: ObjectsInfo
    defaults: DefaultsInfo
    limits: LimitsInfo
    metadata: dict[str, Any] = Field(description="the model's own metadata (unet.* ONNX props)")


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    tags=["model"],
    summary="The loaded model and settings",
    responses=_AUTH_401,
    **_AUTH,
)
def model_info(runtime: Runtime = Depends(get_runtime)) -> ModelInfo:
    engine, _ = runtime.require_ready()
    md = engine.metadata
    s = runtime.settings
    tiling = runtime.tiling(md)
    params = params_for_model(md)
    return ModelInfo(
        name=md.name,
        version=md.version,
        file=engine.path.name,
        checksum=engine.checksum,
        precision=md.precision,
        providers=engine.providers,
        provider=engine.providers[0],
        warmup_ms=None if runtime.warmup_s is None else round(1000 * runtime.warmup_s, 1),
        tiling=TilingInfo(
            tile_size=tiling.tile_size,
            overlap=tiling.overlap,
            source=tiling.source,
            max_tile_size=s.max_tile_size,
        ),
        batching=BatchingInfo(
            max_batch_size=s.max_batch_size,
            max_batch_pixels=s.max_batch_pixels,
            max_queue_delay_ms=s.max_queue_delay_ms,
            max_queue_tiles=s.max_queue_tiles,
            max_concurrent_requests=s.max_concurrent_requests,
        ),
        admission=admission_info(runtime),
        objects=ObjectsInfo(
            method=params.method,
            count_on_every_output=s.count_objects_on_every_output,
            min_confidence=params.min_confidence,
            min_snr=params.min_snr,
        ),
        defaults=DefaultsInfo(
            threshold=md.threshold,
            nucleus_diameter=md.nucleus_diameter,
            diameter="estimated" if md.nucleus_diameter else "model-scale",
        ),
        limits=LimitsInfo(
            max_upload_bytes=s.max_upload_bytes,
            max_stored_upload_bytes=s.max_stored_upload_bytes,
            max_pixels=s.max_pixels,
            max_batch_files=s.max_batch_files,
            request_timeout_s=s.request_timeout_s,
        ),
        metadata=md.model_dump(mode="json"),
    )


def admission_info(runtime: Runtime) -> AdmissionInfo:
    s, now = runtime.settings, runtime.admission.snapshot()
    return AdmissionInfo(
        budget_pixels=s.admission_pixels,
        small_pixels=s.admission_small_pixels,
        small_lane_pixels=s.admission_small_lane_pixels,
        max_wait_s=s.admission_max_wait_s,
        max_queued=s.admission_max_queued,
        in_flight_pixels=now.in_flight_pixels,
        queued_requests=now.queued_requests,
        throughput_mps=round(now.throughput / 1e6, 3),
        throughput_measured=now.measured,
    )


@router.get(
    "/v2",
    response_model=V2ServerMetadata,
    tags=["open inference protocol"],
    summary="Server metadata",
    responses=_AUTH_401,
    **_AUTH,
)
def v2_server() -> V2ServerMetadata:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("unet-segmentation-service")
    except PackageNotFoundError:
        ours = "0"
    return V2ServerMetadata(name="unet-segmentation-service", version=ours, extensions=[])


def _named(runtime: Runtime, name: str):  # noqa: ANN202 - returns the Engine
    engine, _ = runtime.require_ready()
    if name != engine.metadata.name:
        raise ProblemError(
            f"no model named {name!r}; this server serves {engine.metadata.name!r}",
            status=404,
            slug="model-not-found",
            title="Model not found",
        )
    return engine


_NAME = Path(description="the model's name (see GET /v1/model)", max_length=200)


@router.get(
    "/v2/models/{name}",
    response_model=V2ModelMetadata,
    tags=["open inference protocol"],
    summary="Model metadata",
    responses=problem_responses(401, 404, 422),
    **_AUTH,
)
def v2_model(name: str = _NAME, runtime: Runtime = Depends(get_runtime)) -> V2ModelMetadata:
    engine = _named(runtime, name)
    md = engine.metadata
    dtype = "FP16" if md.precision == "fp16" else "FP32"
    return V2ModelMetadata(
        name=md.name,
        versions=[md.version],
        platform="onnxruntime_onnx",
        inputs=[V2Tensor(name=engine.input_name, datatype=dtype, shape=[-1, md.in_channels, -1, -1])],
        outputs=[V2Tensor(name=engine.output_name, datatype=dtype, shape=[-1, md.classes, -1, -1])],
    )


@router.get(
    "/v2/models/{name}/ready",
    response_model=V2ModelReady,
    tags=["open inference protocol"],
    summary="Model readiness (a probe: no API key needed)",
    responses={
        **problem_responses(404, 422),
        503: {"model": V2ModelReady, "description": "not ready"},
    },
)
def v2_model_ready(name: str = _NAME, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    if runtime.engine is not None and name != runtime.engine.metadata.name:
        _named(runtime, name)  # raises the 404
    ready = runtime.ready
    return JSONResponse(
        V2ModelReady(name=name, ready=ready).model_dump(),
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )
