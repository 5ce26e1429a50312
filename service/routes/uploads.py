"""``/uploads``: a file stored once, then named by ``upload=<id>`` on ``/probe``, ``/ui/preview``,
``/segment`` and ``/jobs`` (``service.uploads`` keeps them).

``POST /uploads`` takes the file as the raw body (any type) or as multipart field ``file``, up to
``UNET_MAX_STORED_UPLOAD_BYTES`` — not the per-request upload limit, which the request middleware
lifts for this route alone — written to the jobs folder as it streams in and hashed on the way.
``GET /uploads/{id}`` describes it, ``DELETE /uploads/{id}`` removes it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service import microscopy, structure
from service.errors import ProblemError, problem_responses
from service.routes import bodies
from service.routes.deps import require_api_key
from service.routes.segment import no_image
from service.routes.stored import UNKNOWN_UPLOAD_RESPONSE, unknown_upload, upload_store
from service.uploads import UnknownUpload, UploadInfo, UploadsFull

router = APIRouter(tags=["uploads"], dependencies=[Depends(require_api_key)])

#: What a stored file must start with: the formats the service reads.
_READABLE = "TIFF (OME-TIFF, BigTIFF, ImageJ), Zeiss CZI, Leica LIF, PNG, JPEG or BMP"


class StoredUpload(BaseModel):
    id: str
    size: int = Field(description="bytes stored")
    sha256: str
    filename: str | None = Field(description="the file's name as sent (names the outputs)")
    created: str = Field(description="RFC 3339 UTC")
    url: str = Field(description="this upload: GET describes it, DELETE removes it")
    expires_after_s: float = Field(description="removed after this long without a request naming it")


def _described(info: UploadInfo, retention_s: float) -> dict[str, Any]:
    created = datetime.fromtimestamp(info.created, UTC).isoformat().replace("+00:00", "Z")
    return StoredUpload(
        id=info.id, size=info.size, sha256=info.sha256, filename=info.filename, created=created,
        url=f"/uploads/{info.id}", expires_after_s=retention_s,
    ).model_dump()


def _refuse_unreadable(head: bytes) -> None:
    if not _readable(head):
        raise ProblemError(
            f"the file is not one the service reads ({_READABLE}): nothing was stored",
            status=415, slug="unsupported-media-type", title="Unsupported media type",
        )


def _readable(head: bytes) -> bool:
    """Whether a file starts as one of the formats the service reads."""
    return (
        microscopy.is_tiff(head)
        or head[:10] == structure.CZI_MAGIC
        or structure.is_lif(head)
        or head.startswith((structure.PNG_SIGNATURE, b"\xff\xd8\xff", b"BM"))
    )


@router.post(
    "/uploads",
    summary="Store a file once, for requests to name with upload=<id>",
    status_code=201,
    response_model=StoredUpload,
    responses={
        201: {"description": "stored: name it with upload=<id> on /probe, /ui/preview, /segment and /jobs",
              "headers": {"Location": {"description": "/uploads/{id}", "schema": {"type": "string"}}}},
        **problem_responses(400, 401, 413, 415, 422, 503, 507),
    },
    openapi_extra={"requestBody": {"required": True, "description": "the file's bytes (any Content-Type), or "
                                   "multipart/form-data with field 'file'",
                                   "content": {"application/octet-stream": {
                                       "schema": {"type": "string", "format": "binary"}}}}},
)
async def store_upload(request: Request) -> JSONResponse:
    store = upload_store(request)
    declared = request.headers.get("content-length", "")
    try:
        upload_id, room = await anyio.to_thread.run_sync(
            store.new, int(declared) if declared.isdigit() else None
        )
    except UploadsFull as exc:
        raise ProblemError(str(exc), status=507, slug="insufficient-storage", title="Insufficient storage",
                           headers={"Retry-After": "60"}) from exc
    path = store.data_path(upload_id)
    stored = False
    try:
        try:  # room: the bytes it may take, the stored limit or the jobs folder's free room
            received = await bodies.receive_file(request, path, room, hashed=True,
                                                 check_head=_refuse_unreadable)
        except bodies.TooBig as exc:
            if room == store.max_bytes:
                raise ProblemError(
                    f"a stored upload has at most {store.max_bytes:,} bytes (UNET_MAX_STORED_UPLOAD_BYTES)",
                    status=413, slug="payload-too-large", title="Request body too large",
                ) from exc
            raise ProblemError(
                f"the upload does not fit in the {room:,} bytes the jobs folder has free "
                "(UNET_JOBS_MAX_BYTES)",
                status=507, slug="insufficient-storage", title="Insufficient storage",
                headers={"Retry-After": "60"},
            ) from exc
        if received.size == 0:
            raise no_image()
        info = await anyio.to_thread.run_sync(
            store.finish, upload_id, received.filename, received.size, received.sha256
        )
        stored = True
    finally:
        if not stored:
            await anyio.to_thread.run_sync(store.discard, upload_id)
    return JSONResponse(_described(info, store.retention_s), status_code=201,
                        headers={"Location": f"/uploads/{upload_id}"})


@router.get(
    "/uploads/{upload_id}",
    summary="A stored upload: its size, hash and name",
    response_model=StoredUpload,
    responses={**problem_responses(401, 503), **UNKNOWN_UPLOAD_RESPONSE},
)
async def describe_upload(upload_id: str, request: Request) -> dict[str, Any]:
    store = upload_store(request)
    try:
        return _described(store.info(upload_id), store.retention_s)
    except UnknownUpload as exc:
        raise unknown_upload(upload_id) from exc


@router.delete(
    "/uploads/{upload_id}",
    summary="Remove a stored upload",
    status_code=204,
    responses={204: {"description": "removed"}, **problem_responses(401, 503), **UNKNOWN_UPLOAD_RESPONSE},
)
async def delete_upload(upload_id: str, request: Request) -> Response:
    store = upload_store(request)
    try:
        await anyio.to_thread.run_sync(store.delete, upload_id)
    except UnknownUpload as exc:
        raise unknown_upload(upload_id) from exc
    return Response(status_code=204)
