"""``/uploads``: a file stored once, then named by ``upload=<id>`` on ``/probe``, ``/ui/preview``,
``/segment`` and ``/jobs`` (``service.uploads`` keeps them).

``POST /uploads`` takes the file as the raw body (any type) or as multipart field ``file``, up to
``UNET_MAX_STORED_UPLOAD_BYTES`` — not the per-request upload limit, which the request middleware
lifts for this route alone — written to the jobs folder as it streams in and hashed on the way.
``GET /uploads/{id}`` describes it, ``DELETE /uploads/{id}`` removes it.

Resumable, as the tus 1.0 protocol (core, creation, termination) has it, so a connection lost at 90 %
of a few gigabytes costs the bytes in flight, not the file, and tus clients work unchanged:
``POST /uploads`` with ``Upload-Length`` and no body creates an upload of that length;
``HEAD /uploads/{id}`` gives ``Upload-Offset``, the bytes in; ``PATCH /uploads/{id}`` with
``Upload-Offset`` and ``Content-Type: application/offset+octet-stream`` adds bytes from there (the
middleware lifts the per-request limit for it too; a request cut short keeps what arrived); the
last byte in, the file is hashed and usable as any stored upload; ``DELETE`` removes it at any point.
The file's first bytes are checked as a whole upload's are (415, and the upload removed).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service import durable, microscopy, structure
from service.errors import BadRequest, ProblemError, problem_responses
from service.routes import bodies
from service.routes.deps import require_api_key
from service.routes.segment import no_image
from service.routes.stored import UNKNOWN_UPLOAD_RESPONSE, unknown_upload, upload_store
from service.uploads import (
    OffsetMismatch,
    PendingUpload,
    UnknownUpload,
    UploadBusy,
    UploadInfo,
    UploadsFull,
    UploadStore,
    UploadTooLarge,
)

router = APIRouter(tags=["uploads"], dependencies=[Depends(require_api_key)])

#: What a stored file must start with: the formats the service reads.
_READABLE = ("TIFF (OME-TIFF, BigTIFF, ImageJ), Zeiss CZI, Leica LIF, Nikon ND2, Olympus OIB, Zeiss ZVI, "
             "DeltaVision, Imaris, PNG, JPEG or BMP")
#: The tus protocol version spoken (https://tus.io/protocols/resumable-upload: the core, and the
#: creation and termination extensions, told by ``OPTIONS /uploads``).
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination"
#: The body type tus requires of a PATCH.
OFFSET_STREAM = "application/offset+octet-stream"


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
        or structure.is_nd2(head)
        or structure.is_compound(head)
        or structure.is_dv(head)
        or structure.is_hdf5(head)
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
    if "upload-length" in request.headers:
        return await _create_resumable(request, store)
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
        raise unknown_upload(upload_id, exc) from exc


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
        raise unknown_upload(upload_id, exc) from exc
    return Response(status_code=204)


# --- resumable uploads (tus 1.0) ----------------------------------------------------------------


class ResumableUpload(BaseModel):
    id: str
    url: str = Field(description="PATCH the bytes here; HEAD gives the offset reached; DELETE removes it")
    length: int = Field(description="bytes the file has (Upload-Length)")
    offset: int = Field(description="bytes in so far (Upload-Offset)")
    filename: str | None = Field(description="the file's name, from Upload-Metadata's filename (or name)")
    expires_after_s: float = Field(description="removed after this long without a byte written")


def _tus_headers(**more: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **more}


def _check_tus_version(request: Request) -> None:
    """A client speaking another tus version gets 412, as the protocol requires (none sent: fine)."""
    version = request.headers.get("tus-resumable")
    if version is not None and version != TUS_VERSION:
        raise ProblemError(
            f"this server speaks tus {TUS_VERSION}; the request says Tus-Resumable: {version}",
            status=412, slug="tus-version", title="Unsupported tus version",
            headers={"Tus-Version": TUS_VERSION},
        )


def _byte_count(request: Request, header: str) -> int:
    text = request.headers.get(header.lower(), "")
    if not text.isdigit() or len(text) > 19:
        raise BadRequest(f"{header} must be a number of bytes, not {text!r}")
    return int(text)


def metadata_filename(header: str | None) -> str | None:
    """The file's name from tus ``Upload-Metadata`` (``key base64value`` pairs, commas between):
    ``filename``, else ``name`` (what tus-js-client and Uppy send); None without one. Kept as sent,
    as a ``Content-Disposition`` name is: outputs are named from it safely (``filenames.upload_stem``)."""
    values = {}
    for pair in (header or "").split(","):
        key, _, encoded = pair.strip().partition(" ")
        try:
            values[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest(f"Upload-Metadata {key!r} is not base64 of UTF-8 text") from exc
    return values.get("filename") or values.get("name") or None


async def _create_resumable(request: Request, store: UploadStore) -> JSONResponse:
    """``POST /uploads`` with ``Upload-Length`` (tus creation): an upload of that length, no byte yet."""
    _check_tus_version(request)
    length = _byte_count(request, "Upload-Length")
    if length == 0:
        raise no_image()
    async for chunk in request.stream():
        if chunk:
            raise BadRequest("a resumable upload is created empty (Upload-Length, no body); send its bytes "
                             "with PATCH /uploads/{id}")
    filename = metadata_filename(request.headers.get("upload-metadata"))
    try:
        pending = await anyio.to_thread.run_sync(store.create, length, filename)
    except UploadTooLarge as exc:
        raise ProblemError(str(exc), status=413, slug="payload-too-large",
                           title="Request body too large") from exc
    except UploadsFull as exc:
        raise ProblemError(str(exc), status=507, slug="insufficient-storage", title="Insufficient storage",
                           headers={"Retry-After": "60"}) from exc
    return JSONResponse(_created(pending, store), status_code=201,
                        headers=_tus_headers(Location=f"/uploads/{pending.id}", **{"Upload-Offset": "0"}))


def _created(pending: PendingUpload, store: UploadStore) -> dict[str, Any]:
    """A resumable upload just created: none of its bytes in yet."""
    return ResumableUpload(id=pending.id, url=f"/uploads/{pending.id}", length=pending.length, offset=0,
                           filename=pending.filename, expires_after_s=store.retention_s).model_dump()


@router.options(
    "/uploads",
    summary="What the tus server supports: Tus-Version, Tus-Extension, Tus-Max-Size (tus discovery)",
    status_code=204,
    responses={204: {"description": "the tus versions and extensions spoken and the largest upload, in the "
                                    "headers"}, **problem_responses(401, 503)},
)
async def tus_options(request: Request) -> Response:
    store = upload_store(request)
    return Response(status_code=204, headers=_tus_headers(**{
        "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS, "Tus-Max-Size": str(store.max_bytes)}))


@router.head(
    "/uploads/{upload_id}",
    summary="How far an upload is: Upload-Offset of Upload-Length bytes (tus)",
    responses={200: {"description": "Upload-Offset and Upload-Length in the headers (equal once complete)"},
               **problem_responses(401, 503), **UNKNOWN_UPLOAD_RESPONSE},
)
async def upload_offset(upload_id: str, request: Request) -> Response:
    store = upload_store(request)
    try:
        offset, length = await anyio.to_thread.run_sync(store.progress, upload_id)
    except UnknownUpload as exc:
        raise unknown_upload(upload_id) from exc
    return Response(status_code=200, headers=_tus_headers(**{
        "Upload-Offset": str(offset), "Upload-Length": str(length), "Cache-Control": "no-store"}))


@router.patch(
    "/uploads/{upload_id}",
    summary="Add bytes to a resumable upload from Upload-Offset (tus)",
    status_code=204,
    responses={
        204: {"description": "added: Upload-Offset is the bytes in now; with the last byte the file is "
                             "stored and usable (GET /uploads/{id} describes it)"},
        **problem_responses(400, 401, 409, 412, 413, 415, 503), **UNKNOWN_UPLOAD_RESPONSE,
    },
    openapi_extra={"requestBody": {
        "required": True, "description": "the next bytes of the file",
        "content": {OFFSET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def add_to_upload(upload_id: str, request: Request) -> Response:
    store = upload_store(request)
    _check_tus_version(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_STREAM:
        raise ProblemError(f"a PATCH to an upload sends {OFFSET_STREAM}, not {content_type or 'no type'}",
                           status=415, slug="unsupported-media-type", title="Unsupported media type")
    offset = _byte_count(request, "Upload-Offset")
    try:
        with store.appending(upload_id, offset) as (out, pending):
            reached = await _append(request, out, offset, pending.length)
            # The offset answered is where the client resumes after any crash, the machine's too:
            # the bytes before it on disk, not only in the page cache (service.durable).
            await anyio.to_thread.run_sync(durable.sync_open, out)
            # still holding the upload: no other request sees it half-checked or half-hashed
            if offset < bodies.HEAD_BYTES and (reached >= bodies.HEAD_BYTES or reached == pending.length):
                await _check_first_bytes(store, upload_id)
            if reached == pending.length:
                await anyio.to_thread.run_sync(store.complete, upload_id)
    except UnknownUpload as exc:
        raise unknown_upload(upload_id, exc) from exc
    except OffsetMismatch as exc:
        raise ProblemError(
            f"the upload has {exc.offset:,} bytes in, not {offset:,}: send the bytes from {exc.offset:,}",
            status=409, slug="upload-offset-conflict", title="Upload offset conflict",
            headers=_tus_headers(**{"Upload-Offset": str(exc.offset)}),
        ) from exc
    except UploadBusy as exc:
        raise ProblemError(
            "another request is adding bytes to this upload now: wait for it, then HEAD for the offset",
            status=409, slug="upload-offset-conflict", title="Upload offset conflict",
        ) from exc
    return Response(status_code=204, headers=_tus_headers(**{"Upload-Offset": str(reached)}))


async def _check_first_bytes(store: UploadStore, upload_id: str) -> None:
    """A resumable upload whose first bytes are in must start as a file the service reads: else
    415, and the upload is removed (as a whole upload is refused at its first bytes)."""
    try:
        _refuse_unreadable(await anyio.to_thread.run_sync(store.head, upload_id, bodies.HEAD_BYTES))
    except ProblemError:
        await anyio.to_thread.run_sync(store.discard, upload_id)
        raise


async def _append(request: Request, out: BinaryIO, offset: int, length: int) -> int:
    """Write the request's bytes to ``out`` as they arrive; the offset reached. What arrived before
    the client hung up stays written (that is what a resumed upload continues from); bytes past
    ``length`` are refused (413) and not written."""
    reached, pending = offset, bytearray()
    try:
        async for chunk in request.stream():
            if reached + len(pending) + len(chunk) > length:
                raise ProblemError(
                    f"the upload has {length:,} bytes (Upload-Length); these would take it past that",
                    status=413, slug="payload-too-large", title="Request body too large",
                )
            pending += chunk
            if len(pending) >= bodies.WRITE_CHUNK:
                reached += await _write(out, pending)
    finally:
        if pending:
            reached += await _write(out, pending)
    return reached


async def _write(out: BinaryIO, pending: bytearray) -> int:
    block = bytes(pending)
    pending.clear()
    await anyio.to_thread.run_sync(out.write, block)
    return len(block)
