"""``POST /segment/batch``: several images in one multipart request → a ZIP streamed image by image.

Each file goes through exactly what ``POST /segment`` runs (``routes.segment.segment_or_cancel``),
admitted on its own and under its own timeout; each finished output is sent as soon as it is done
(``service.zipstream``), and ``manifest.json`` comes last with every file's status, so one bad,
refused or timed-out file does not fail the others.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service import filenames, metrics
from service.admission import Ticket
from service.errors import InvalidOptions, ProblemError, problem_body, problem_responses
from service.model_metadata import ModelMetadata
from service.routes.deps import Runtime, get_runtime, require_api_key
from service.routes.segment import (
    CLIENT_CLOSED,
    Abandoned,
    Cancellation,
    Result,
    SegmentOptions,
    batch_options,
    cancelled_response,
    checked_engine,
    problem_for,
    run_cancellable,
    segment_or_cancel,
    upload_pixels,
)
from service.zipstream import ZipStream

log = logging.getLogger(__name__)

router = APIRouter(tags=["segmentation"], dependencies=[Depends(require_api_key)])


class ManifestEntry(BaseModel):
    file: str = Field(description="the uploaded file name")
    output: str | None = Field(description="member of the ZIP holding the result, null on failure")
    status: int = Field(description="HTTP status this file would have had on POST /segment")
    width: int | None = None
    height: int | None = None
    tiles: int | None = None
    inference_ms: float | None = None
    object_count: int | None = None
    nucleus_diameter: float | None = Field(None, description="typical nucleus diameter used, px")
    diameter_source: str | None = Field(None, description="request, estimated or model-scale")
    image: dict[str, Any] | None = Field(
        None,
        description="what was segmented: channel, z, t, projection, pixel_size_um, polarity, axes, shape",
    )
    warnings: list[str] = Field(
        default_factory=list, description="what was assumed or ignored, and why a result may be unreliable"
    )
    problem: dict[str, Any] | None = Field(None, description="problem details when status is not 200")


class Manifest(BaseModel):
    model: str
    version: str
    output: str
    succeeded: int
    failed: int
    files: list[ManifestEntry]


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


_SUFFIXES = {
    "image/png": ".png",
    "image/tiff": ".tif",
    "application/geo+json": ".geojson",
    "application/json": ".json",
    "application/zip": ".zip",
}


def _member_name(filename: str | None, index: int, media_type: str, taken: set[str]) -> str:
    """A safe, unique ZIP member for an upload: its stem (no directories) + the output's suffix."""
    suffix = _SUFFIXES.get(media_type.split(";")[0], ".csv")
    stem = PurePath((filename or "").replace("\\", "/")).stem
    stem = _SAFE_NAME.sub("_", stem).strip("._") or f"image-{index + 1}"
    name, k = f"{stem}{suffix}", 1
    while name in taken or name == "manifest.json":
        name, k = f"{stem}-{k}{suffix}", k + 1
    taken.add(name)
    return name


_BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "images (repeat the field)",
                    }
                },
            }
        }
    },
}


@router.post(
    "/segment/batch",
    summary="Segment several images → ZIP of PNGs + manifest.json",
    response_class=Response,
    responses={
        200: {
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "ZIP streamed image by image: each finished output is sent as soon as it is done; "
            "manifest.json (see Manifest schema) comes last with a per-file status, so one bad, refused or "
            "timed-out file does not fail the others",
        },
        **problem_responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra={"requestBody": _BATCH_BODY},
)
async def segment_batch(
    request: Request,
    options: SegmentOptions = Depends(batch_options),
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    md = checked_engine(runtime, options).metadata  # once for the request, not a 422 per file
    settings = runtime.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ProblemError(
            f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data "
            "with the images in repeated fields 'files'",
            status=415,
            slug="unsupported-media-type",
            title="Unsupported media type",
        )
    form = await request.form(max_files=settings.max_batch_files, max_fields=8)
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not uploads:
        raise InvalidOptions(
            "the multipart request has no files in the field 'files'",
            errors=[{"loc": ["body", "files"], "msg": "Field required", "type": "missing"}],
        )
    files = []
    for i, upload in enumerate(uploads):
        data = await upload.read()
        try:
            cost: int | ProblemError = await upload_pixels(runtime, data)
        except ProblemError as problem:
            cost = problem
        files.append(_BatchFile(upload.filename or f"image-{i + 1}", data, cost))
    batch = _Batch(runtime, request, files, options, md)
    # The first image is admitted before the response starts: a service with no room answers
    # 503 + Retry-After for the whole request, before anything is computed.
    await batch.admit_first()
    archive_name = filenames.output_name(
        uploads[0].filename if len(uploads) == 1 else "segmentation", options.output.value, "application/zip"
    )
    return _BatchResponse(batch, md.version, archive_name)


@dataclass
class _BatchFile:
    name: str
    data: bytes
    cost: int | ProblemError  # pixels, or why its header was refused


class _BatchResponse(StreamingResponse):
    """The streamed ZIP; whatever happens to the connection, the batch's admission is released.

    Disconnects are watched by each file's own watcher (as on ``/segment``), which stops that
    file's tiles; Starlette's parallel listener (ASGI < 2.4) would instead cancel the stream
    while the file's worker thread runs on, unstoppable, to the end of the image.
    """

    def __init__(self, batch: _Batch, version: str, archive_name: str) -> None:
        headers = {
            "Content-Disposition": filenames.content_disposition(archive_name),
            "X-Model-Version": version,
        }
        super().__init__(batch.chunks(), media_type="application/zip", headers=headers)
        self._batch = batch

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.stream_response(send)
        except OSError as exc:
            raise ClientDisconnect() from exc
        finally:
            await self._batch.aclose()


class _Batch:
    """One ``/segment/batch`` request: files segmented one after another, each admitted on its own
    and under its own timeout, each output sent as soon as it is done (``service.zipstream``).

    A file's failure — bad bytes, no room in the budget, past its timeout — becomes its manifest
    entry; the manifest is the archive's last member. A client that reads the stream has every
    finished image even if a later one fails or the connection drops.
    """

    def __init__(
        self, runtime: Runtime, request: Request, files: list[_BatchFile], options: SegmentOptions,
        md: ModelMetadata,
    ) -> None:
        self.runtime, self.request, self.files, self.options, self.md = runtime, request, files, options, md
        self.entries: list[ManifestEntry] = []
        self.zip = ZipStream()
        self._taken: set[str] = set()
        self._held = AsyncExitStack()  # the admission of the file being worked on
        self._ticket: Ticket | None = None
        self._first: int | None = None  # index of the file admitted before the response started
        self._stops: list[Cancellation] = []

    async def admit_first(self) -> None:
        for index, file in enumerate(self.files):
            if isinstance(file.cost, int):
                await self._admit(file.cost, self.runtime.settings.admission_max_wait_s)
                self._first = index
                return

    async def _admit(self, pixels: int, max_wait_s: float) -> None:
        self._ticket = await self._held.enter_async_context(
            self.runtime.admitted(pixels, disconnected=self.request.is_disconnected, max_wait_s=max_wait_s)
        )

    async def aclose(self) -> None:
        for stop in self._stops:
            stop.disconnected.set()  # work still running for a client that is gone stops its tiles
        await self._held.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        timeout_s = self.runtime.settings.request_timeout_s
        refused: ProblemError | None = None  # no room, shutting down: the rest are not tried
        for index, file in enumerate(self.files):
            if isinstance(file.cost, ProblemError):
                self._failed(file, file.cost)
                continue
            if refused is not None:
                self._failed(file, refused)
                continue
            try:
                if index != self._first:
                    # Later files may wait for room as long as one image may take: the client is
                    # already reading this response.
                    await self._admit(file.cost, max(timeout_s, self.runtime.settings.admission_max_wait_s))
                chunk = await self._one(index, file, timeout_s)
            except ProblemError as problem:
                if problem.status == CLIENT_CLOSED:
                    return
                self._failed(file, problem)
                if problem.status == 503 and problem.slug != "timeout":
                    refused = problem
                continue
            finally:
                await self._held.aclose()
            if chunk is None:  # the client went away
                return
            yield chunk
        yield self.zip.add("manifest.json", json.dumps(self._manifest().model_dump(), indent=2).encode(),
                           deflate=True)
        yield self.zip.close()

    async def _one(self, index: int, file: _BatchFile, timeout_s: float) -> bytes | None:
        """Segment one admitted file; its ZIP bytes, None if the client is gone; raises its problem."""
        ticket = self._ticket
        assert ticket is not None

        def work(stop: Cancellation) -> tuple[Result, bytes] | Abandoned:
            self._stops.append(stop)
            outcome = segment_or_cancel(self.runtime, file.data, self.options, stop, ticket)
            if isinstance(outcome, Abandoned):
                return outcome
            name = _member_name(file.name, index, outcome.media_type, self._taken)
            chunk = self.zip.add(name, outcome.body)
            self.entries.append(_ok_entry(file.name, name, outcome))
            return outcome, chunk

        try:
            done = await run_cancellable(self.request, work, timeout_s)
        except Exception as exc:
            problem = problem_for(exc)
            if problem is None:
                log.exception("segmenting %r of a batch failed", file.name)
                problem = ProblemError("segmenting this file failed unexpectedly; the others are unaffected")
            raise problem from exc
        if isinstance(done, Abandoned):
            if not done.stop.timed_out:
                metrics.IMAGES.labels(output=self.options.output.value, outcome="cancelled").inc()
                return None
            cancelled_response(done.stop, timeout_s)  # raises the 503 timeout problem
        self.runtime.finished(ticket)
        metrics.IMAGES.labels(output=self.options.output.value, outcome="ok").inc()
        return done[1]

    def _failed(self, file: _BatchFile, problem: ProblemError) -> None:
        metrics.IMAGES.labels(output=self.options.output.value, outcome="error").inc()
        body = problem_body(problem.status, problem.title, problem.detail, slug=problem.slug,
                            errors=problem.errors, extra=problem.extra)
        if "Retry-After" in problem.headers:
            body["retry_after_s"] = int(problem.headers["Retry-After"])
        self.entries.append(ManifestEntry(file=file.name, output=None, status=problem.status, problem=body))

    def _manifest(self) -> Manifest:
        entries = self.entries  # in upload order: the files are worked on one after another
        return Manifest(
            model=self.md.name,
            version=self.md.version,
            output=self.options.output.value,
            succeeded=sum(e.status == 200 for e in entries),
            failed=sum(e.status != 200 for e in entries),
            files=entries,
        )


def _ok_entry(filename: str, member: str, result: Result) -> ManifestEntry:
    scale = result.scale
    return ManifestEntry(
        file=filename,
        output=member,
        status=200,
        width=result.width,
        height=result.height,
        tiles=result.tiles,
        inference_ms=round(result.inference_ms, 1),
        object_count=result.object_count,
        nucleus_diameter=None if scale is None or scale.diameter is None else round(scale.diameter, 1),
        diameter_source=None if scale is None else scale.source,
        image=result.plane.describe() if result.plane else None,
        warnings=result.warnings,
    )
