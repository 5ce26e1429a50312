"""``upload=<id>``: a request that names a stored upload (``POST /uploads``) instead of sending
the image; the routes that read images (``/probe``, ``/ui/preview``, ``/segment``, ``/jobs``) share
this, and ``service.routes.uploads`` the store."""

from __future__ import annotations

import anyio
from fastapi import Query, Request

from service.errors import PROBLEM_JSON, ProblemError, ServiceUnavailable
from service.jobs import JobRunner
from service.uploads import StoredImage, UnknownUpload, UploadIncomplete, UploadStore

#: OpenAPI for the 404 a request naming an unknown stored upload gets.
UNKNOWN_UPLOAD_RESPONSE = {404: {
    "description": "upload=: no stored upload with this id (never stored, deleted, or expired)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}}

UPLOAD_QUERY = Query(
    None,
    pattern=r"^[0-9a-f]{32}$",
    description="a stored upload's id (POST /uploads) to read instead of a body: a file past the upload "
    "limit, or one sent once for many requests",
)


def upload_store(request: Request) -> UploadStore:
    """The stored uploads, or 503 when the jobs folder that holds them cannot be used."""
    jobs: JobRunner = request.app.state.jobs
    if jobs.unavailable or jobs.uploads is None:
        raise ServiceUnavailable(f"stored uploads are not available: {jobs.unavailable}", retry_after_s=30)
    return jobs.uploads


def unknown_upload(upload_id: str, missing: Exception | None = None) -> ProblemError:
    """The 404 for an upload that is not there to read; ``missing``: why (a resumable upload still
    arriving says how far it is)."""
    if isinstance(missing, UploadIncomplete):
        return ProblemError(
            f"the resumable upload {upload_id!r} is still arriving: {missing.offset:,} of its "
            f"{missing.length:,} bytes are in; send the rest with PATCH /uploads/{upload_id} from the "
            "Upload-Offset that HEAD gives",
            status=404, slug="upload-not-found", title="Upload not found",
        )
    return ProblemError(
        f"there is no stored upload {upload_id!r}: it never existed, was deleted, or expired after "
        "UNET_JOBS_RETENTION_S without use; store the file again with POST /uploads (replicas of one "
        "service see each other's stored files only when they share UNET_JOBS_DIR)",
        status=404, slug="upload-not-found", title="Upload not found",
    )


async def open_stored(request: Request, upload_id: str) -> StoredImage:
    """The stored file as a read-only map (404 when there is none). A request that names one must
    not also send a body: which image it meant would be a guess (400)."""
    async for chunk in request.stream():
        if chunk:
            raise ProblemError(
                "the request names a stored upload (upload=) and also sends an image: send one of them",
                status=400, slug="bad-request", title="Bad request",
            )
    store = upload_store(request)
    try:
        return await anyio.to_thread.run_sync(store.open, upload_id)
    except UnknownUpload as exc:
        raise unknown_upload(upload_id, exc) from exc
