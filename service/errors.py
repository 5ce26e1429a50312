"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the service answers — its own, FastAPI's validation errors, Starlette's 404/405,
the image decoder's, the batcher's — leaves as one JSON shape::

    {"type": "/problems/image-too-large", "title": "Image too large", "status": 413,
     "detail": "the image is 100000×100000 = 1e10 pixels; at most 67108864 are allowed",
     "instance": "urn:request:3f2a…", "request_id": "3f2a…"}

``type`` is a URI reference naming the kind of problem (stable: clients may switch on it); it
resolves: ``GET /problems/<slug>`` is a short page saying what the problem means and what to
do (:data:`PROBLEM_TYPES`, served by ``service.routes.problems``). ``detail`` says which input
was wrong and what is allowed. Bad input is always 4xx; a 500 only
comes from the last-resort path in the request middleware, which logs the traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.log import REQUEST_ID

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field("about:blank", description="URI reference naming the kind of problem")
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field("", description="what went wrong with this request and what is allowed")
    instance: str | None = Field(None, description="this occurrence: urn:request:<request id>")
    request_id: str | None = Field(None, description="the X-Request-ID of the request")
    errors: list[dict[str, Any]] | None = Field(None, description="per-field validation errors (422 only)")
    choices: dict[str, Any] | None = Field(
        None, description="what an image offers (channels, planes, axes) when a request must choose (422)"
    )


class ProblemError(Exception):
    """An error that becomes a problem response; raise it (or a subclass) from routes."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str = "",
        *,
        status: int | None = None,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.extra = dict(extra or {})  # RFC 9457 extension members, e.g. ``choices``
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        if title is not None:
            self.title = title
        self.headers = dict(headers or {})
        self.errors = errors


class BadRequest(ProblemError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="unet"'})


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class InvalidOptions(ProblemError):
    status, slug, title = 422, "invalid-options", "Invalid request options"


class ServiceUnavailable(ProblemError):
    """503 with a ``Retry-After``: not ready, overloaded, shutting down, timed out."""

    status, slug, title = 503, "unavailable", "Service unavailable"

    def __init__(
        self, detail: str, *, retry_after_s: int = 5, slug: str | None = None, title: str | None = None
    ) -> None:
        super().__init__(detail, slug=slug, title=title, headers={"Retry-After": str(max(1, retry_after_s))})


class BodyTooLarge(StarletteHTTPException):
    """Raised from the body stream when it passes the limit.

    A Starlette ``HTTPException`` on purpose: FastAPI re-raises those unchanged from body
    parsing (anything else would become a generic 400), so the client gets the 413.
    """

    def __init__(self, limit: int, setting: str = "UNET_MAX_UPLOAD_BYTES") -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes ({setting})")


@dataclass(frozen=True)
class ProblemType:
    """What a problem ``type`` means, for its page at ``/problems/<slug>``."""

    title: str
    status: int
    means: str
    todo: str


#: Every problem type the service answers with. A new slug needs an entry here (the tests check
#: that every slug in the code has one, and that its page resolves).
PROBLEM_TYPES: dict[str, ProblemType] = {
    "bad-request": ProblemType(
        "Bad request", 400, "The request could not be understood as sent.",
        "Check the request against the API description at /docs."),
    "no-image": ProblemType(
        "No image", 400, "The request carried no image.",
        "Send the image as multipart field 'file', or as the raw body with its image/* Content-Type."),
    "undecodable-image": ProblemType(
        "Undecodable image", 400,
        "The body claims to be a supported image type but could not be decoded: truncated, corrupt, or "
        "a variant the decoders do not read.",
        "Check that the file opens in an image viewer; re-export it as PNG or TIFF if it does."),
    "unauthorized": ProblemType(
        "Missing or invalid API key", 401,
        "This service requires an API key and none, or a wrong one, was sent.",
        "Send the key as the X-API-Key header or as Authorization: Bearer <key>."),
    "forbidden": ProblemType(
        "Forbidden", 403, "The request is not allowed.", "Ask the service's operator for access."),
    "not-found": ProblemType(
        "Not found", 404, "There is nothing at this path.", "See /docs for the service's routes."),
    "model-not-found": ProblemType(
        "Model not found", 404, "No model of that name is loaded on this server.",
        "GET /v1/model names the model this server serves."),
    "method-not-allowed": ProblemType(
        "Method not allowed", 405, "The path exists but not with this HTTP method.",
        "See /docs for the methods each route accepts."),
    "payload-too-large": ProblemType(
        "Request body too large", 413, "The request body is larger than the server accepts.",
        "Store a larger file first (POST /uploads, up to UNET_MAX_STORED_UPLOAD_BYTES; the web page does "
        "this itself) and name it with upload=<id> on /probe, /segment and /jobs: the server reads only "
        "the planes asked for. Or: unet-segment --t all / --z all / --series sends only the pages each "
        "plane or image needs of a movie, a z-stack, a LAS X project or a CZI plate. Or ask the operator "
        "to raise the limit."),
    "image-too-large": ProblemType(
        "Image too large", 413,
        "The image has more pixels than the server segments (checked from its header).",
        "Crop or downscale the image, or ask the operator to raise UNET_MAX_PIXELS."),
    "cells-too-large": ProblemType(
        "Cells too large for this slide", 413,
        "Cells grown this far (expand=), or background rings reaching this far beyond them "
        "(background_ring=), on a slide this wide hold more rows back than one job is admitted for.",
        "Ask a smaller expand= or background_ring= (the detail names the largest reach that fits), or ask "
        "the operator to raise UNET_MAX_PIXELS."),
    "stack-cells-too-far": ProblemType(
        "Cells reach too far for this stack", 413,
        "Cells grown this far (expand=) in 3-D on this stack would reach so many slices and pixels "
        "around each voxel that growing them in blocks of bounded memory would be mostly margin: far "
        "more memory or time than one job takes.",
        "Ask a smaller expand= (the detail names the largest that fits); a file that gives its z-step "
        "(several pixel widths on most confocals) reaches fewer slices than one grown as cubes."),
    "too-many-pages": ProblemType(
        "Too many TIFF pages", 413, "The TIFF has more pages (IFDs) than the server reads.",
        "Send the plane you need as its own file, or ask the operator to raise UNET_MAX_TIFF_PAGES."),
    "image-too-complex": ProblemType(
        "Image structure too large", 413,
        "The file has more chunks, marker segments, scans, TIFF tags or metadata bytes than the server "
        "parses; the detail names the limit and its setting (checked before the image is decoded).",
        "Re-save the image with a standard writer (which stays far below the limits), strip its "
        "metadata, or ask the operator to raise the setting named in the detail."),
    "unsupported-media-type": ProblemType(
        "Unsupported media type", 415, "The request's Content-Type is not one this route accepts.",
        "Send multipart/form-data with field 'file' (or 'files' for /segment/batch), or the raw image "
        "with Content-Type image/png, image/tiff, image/jpeg or image/bmp."),
    "unsupported-image-type": ProblemType(
        "Unsupported image type", 415,
        "The body is not a PNG, TIFF, JPEG, BMP, CZI, LIF, ND2, OIB, ZVI, DeltaVision or Imaris image, or "
        "the image asked for is one the service does not read (the detail says what and what to do).",
        "Convert the image to PNG or TIFF; where 'choices.series' lists the file's other images, "
        "repeat the request with series= one of them."),
    "invalid-options": ProblemType(
        "Invalid request options", 422,
        "A query option is unknown, out of range, or does not fit this image; 'errors' names each one.",
        "Fix the options named in 'errors'; /docs lists every option and its range."),
    "choose-plane": ProblemType(
        "Choose a channel or plane", 422,
        "The image has several channels, z-slices or time points, and the request did not say which to "
        "segment; the service never guesses. 'choices' lists what the image offers.",
        "Repeat the request with channel=, z=, t= or project=max, picking from 'choices'."),
    "unavailable": ProblemType(
        "Service unavailable", 503, "The service cannot take the request right now.",
        "Retry after the number of seconds in the Retry-After header."),
    "not-ready": ProblemType(
        "Model not ready", 503,
        "The model is loading or warming up, or failed to load; 'detail' (and GET /readyz) says which.",
        "Retry after Retry-After while it loads; a failed load (missing file, checksum mismatch) needs "
        "the operator."),
    "overloaded": ProblemType(
        "Overloaded", 503, "The server is busy with other images; the request was refused before any work.",
        "Retry after the number of seconds in the Retry-After header (unet-segment does this itself)."),
    "shutting-down": ProblemType(
        "Shutting down", 503, "This server is draining before it stops.",
        "Retry: another replica, or this one after its restart, will take the request."),
    "timeout": ProblemType(
        "Request timed out", 503,
        "Segmenting the image took longer than the server allows (UNET_REQUEST_TIMEOUT_S) and was abandoned.",
        "Retry when the server is less busy, send a smaller image, or ask the operator to raise "
        "the timeout."),
    "client-closed-request": ProblemType(
        "Client closed request", 499,
        "The client disconnected before the answer (nginx's 499); logged and counted, never sent.",
        "Nothing to do on the server; a client that gave up early may send the image again."),
    "job-not-found": ProblemType(
        "Job not found", 404,
        "There is no job with this id: it never existed, was deleted, or expired after the server's "
        "retention (UNET_JOBS_RETENTION_S).",
        "Submit the image again with POST /jobs; fetch results before they expire."),
    "job-not-finished": ProblemType(
        "Job not finished", 409, "The job has no result: it is still queued or running, or was cancelled.",
        "Poll GET /jobs/{id} until its status is succeeded, then fetch the result."),
    "jobs-full": ProblemType(
        "Too many jobs", 503, "The server already keeps as many jobs as it allows (UNET_JOBS_MAX).",
        "Delete finished jobs you no longer need (DELETE /jobs/{id}) or retry after Retry-After."),
    "insufficient-storage": ProblemType(
        "Insufficient storage", 507,
        "The jobs folder has no room for this upload (UNET_JOBS_MAX_BYTES).",
        "Delete finished jobs you no longer need, retry after Retry-After, or ask the operator for more "
        "room."),
    "upload-not-found": ProblemType(
        "Upload not found", 404,
        "There is no stored upload with this id: it never existed, was deleted, or expired after "
        "UNET_JOBS_RETENTION_S without a request naming it; or it is a resumable upload whose bytes "
        "are not all in yet (the detail says how many are).",
        "Store the file again with POST /uploads and use the new id, or finish a resumable upload with "
        "PATCH /uploads/{id} from the offset HEAD /uploads/{id} gives."),
    "upload-offset-conflict": ProblemType(
        "Upload offset conflict", 409,
        "The bytes were sent for another offset than the resumable upload has reached, or another "
        "request is adding bytes to it now.",
        "Ask HEAD /uploads/{id} for Upload-Offset and send the bytes from there, one request at a time."),
    "tus-version": ProblemType(
        "Unsupported tus version", 412,
        "The request's Tus-Resumable header names a version of the tus protocol this server does not "
        "speak.",
        "Use tus 1.0.0 (the Tus-Version header lists what the server speaks)."),
    "job-interrupted": ProblemType(
        "Job interrupted", 503,
        "The server restarted while the job was queued or running; jobs are not re-run after a restart "
        "(one may be what stopped the server).",
        "Submit the image again with POST /jobs."),
    "data-root-off": ProblemType(
        "Reading files on the server is off", 403,
        "The job named a file by path, but this server reads no files from its own volumes: its "
        "operator has not set UNET_DATA_ROOT.",
        "Upload the image instead (POST /jobs with the image as the body), or ask the operator for a data "
        "root."),
    "path-outside-data-root": ProblemType(
        "Path outside the data root", 403,
        "The path is absolute, or leads (through '..' or a symbolic link) outside the folder this server "
        "reads images from (UNET_DATA_ROOT). Nothing outside it is ever read.",
        "Give the file's path relative to the data root, e.g. slides/a.tif; ask the operator where the "
        "root is mounted."),
    "data-file-not-found": ProblemType(
        "File not found", 404, "No file the service may read exists at that path under the data root.",
        "Check the path's spelling and case, relative to the data root."),
    "not-a-file": ProblemType(
        "Not a file", 400, "The path names a folder or a special file (device, FIFO, socket), not an image.",
        "Name one image file; submit one job per file (unet-segment does this for a folder)."),
    "not-a-zarr-store": ProblemType(
        "Not a Zarr store", 400,
        "The path names a folder, and a folder is read only as an OME-Zarr slide (output=ome-zarr): this "
        "one has no .zattrs, .zgroup or zarr.json at its top.",
        "Name the OME-Zarr folder itself (the one holding .zattrs or zarr.json, e.g. scans/a.ome.zarr), or "
        "one image file; submit one job per slide (unet-segment does this for a folder)."),
    "file-too-large": ProblemType(
        "File too large", 413, "The file has more bytes than the server reads for one image "
        "(UNET_MAX_UPLOAD_BYTES, the upload limit).",
        "Crop or convert the image, or ask the operator to raise UNET_MAX_UPLOAD_BYTES. A slide or a "
        "stack (TIFF, CZI, a LIF project's image, ND2, OME-Zarr) is read by region from its path at any "
        "size: output=ome-zarr, or output=labels3d."),
    "data-file-changed": ProblemType(
        "File changed", 409,
        "The file named by the job was removed or replaced by another file between the job's submission "
        "and its run, so the job did not read it.",
        "Submit the job again once the file is in place."),
    "internal-error": ProblemType(
        "Internal server error", 500, "An unexpected error occurred in the service; it was logged.",
        "Report it to the operator, quoting the request id."),
}


def problem_type(slug: str) -> str:
    return f"/problems/{slug}"


def problem_body(
    status: int,
    title: str,
    detail: str = "",
    *,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The problem object for the current request (request id from the logging context);
    ``extra``: extension members (never overriding the standard ones)."""
    request_id = REQUEST_ID.get()
    body: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request_id != "-":
        body["instance"] = f"urn:request:{request_id}"
        body["request_id"] = request_id
    if errors is not None:
        body["errors"] = errors
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return body


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    *,
    slug: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder(problem_body(status, title, detail, slug=slug, errors=errors, extra=extra)),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_JSON,
    )


def from_problem_error(exc: ProblemError) -> JSONResponse:
    return problem_response(
        exc.status, exc.title, exc.detail, slug=exc.slug, headers=exc.headers, errors=exc.errors,
        extra=exc.extra,
    )


# Titles/slugs for Starlette's and FastAPI's own HTTP errors.
_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for error in exc.errors():
        item = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        if "ctx" in error:
            item["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        out.append(item)
    return out


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        loc = ".".join(str(p) for p in error["loc"] if p not in ("query", "body", "path", "header"))
        parts.append(f"{loc or 'request'}: {error['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install(app: FastAPI, domain_errors: Mapping[type[Exception], tuple[int, str, str]] = {}) -> None:  # noqa: B006
    """Register the problem+json handlers on ``app``.

    ``domain_errors`` maps exception classes from lower layers (the image decoder, …) to
    ``(status, slug, title)``; their message becomes the detail.
    """

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return from_problem_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        return problem_response(
            422,
            "Invalid request options",
            _describe_validation(errors),
            slug="invalid-options",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _HTTP_SLUGS.get(exc.status_code, (None, None))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
        return problem_response(exc.status_code, title or detail, detail, slug=slug, headers=headers)

    for cls, (status, slug, title) in domain_errors.items():
        app.add_exception_handler(cls, _domain_handler(status, slug, title))


def _allowed_methods(request: Request, first: str) -> str:
    """Every method the API document lists for this path: Starlette's 405 names only the first
    route's (``GET /jobs/{id}`` and ``DELETE /jobs/{id}`` are two routes)."""
    methods = {m.strip() for m in first.split(",") if m.strip()}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}/]+\}", template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m.isalpha()}
    return ", ".join(sorted(methods))


def _domain_handler(status: int, slug: str, title: str):  # noqa: ANN202 - Starlette handler signature
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return problem_response(status, title, str(exc), slug=slug)

    return handler


def internal_error_body() -> dict[str, Any]:
    """The last-resort 500 body: no exception text (it may leak internals), the request id to quote."""
    return problem_body(
        500,
        "Internal server error",
        "an unexpected error occurred; quote the request id when reporting it",
        slug="internal-error",
    )


#: OpenAPI ``responses=`` entries, so /docs shows the problem shape for each error status.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Undecodable image or malformed request",
        401: "Missing or invalid API key",
        404: "Unknown model name",
        413: "Request body or image pixel count over the limit",
        415: "Unsupported image type or content type",
        422: "Invalid or unknown query options",
        503: "Model not ready, queue full, shutting down or timed out (see Retry-After)",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
