"""Liveness and readiness for orchestrators, plus the KServe / open-inference-protocol health paths.

Liveness means "the process answers": it never depends on the model, so a missing model does
not get the pod restarted in a loop. Readiness means "send me traffic": the model is loaded,
warmed up, and the process is not draining.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.routes.deps import Runtime, get_runtime

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: str = Field("alive", examples=["alive"])


class Readiness(BaseModel):
    ready: bool
    status: str = Field(description="loading | ready | failed | stopping")
    reason: str = Field(description="why not ready (or 'ready')")
    provider: str | None = Field(None, description="active execution provider, once loaded")
    model: str | None = Field(None, description="model name and version, once loaded")
    precision: str | None = Field(None, description="fp32, fp16 or int8: the weights served, once loaded")


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


def readiness(runtime: Runtime) -> Readiness:
    md = runtime.engine.metadata if runtime.engine else None
    return Readiness(
        ready=runtime.ready,
        status=runtime.state,
        reason=runtime.reason,
        provider=runtime.provider,
        model=f"{md.name}:{md.version}" if md else None,
        precision=md.precision if md else None,
    )


def _ready_response(runtime: Runtime, body: BaseModel) -> JSONResponse:
    headers = {} if runtime.ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if runtime.ready else 503, headers=headers)


@router.get("/livez", response_model=Liveness, summary="Liveness: the process answers")
async def livez() -> Liveness:  # on the event loop: no worker thread needed, however busy they are
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: model loaded and warmed up",
    responses={
        503: {"model": Readiness, "description": "not ready: loading, failed (see reason) or stopping"}
    },
)
def readyz(runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    return _ready_response(runtime, readiness(runtime))


@router.get("/v2/health/live", response_model=V2Live, summary="Open inference protocol: server live")
async def v2_live() -> V2Live:
    return V2Live(live=True)


@router.get(
    "/v2/health/ready",
    response_model=V2Ready,
    summary="Open inference protocol: server ready",
    responses={503: {"model": V2Ready, "description": "not ready"}},
)
def v2_ready(runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    return _ready_response(runtime, V2Ready(ready=runtime.ready))
