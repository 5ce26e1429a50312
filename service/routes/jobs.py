"""``/jobs``: segmentation that outlives a request (``service.jobs`` keeps the folders and the queue).

``POST /jobs`` takes the same image and options as ``POST /segment``, writes the upload to the
job's folder as it streams in and answers ``202`` + ``Location`` at once; the job then runs in
the background through the SAME admission (``Runtime.admitted``) and pipeline
(``segment.run_pipeline``) as the request would have, so jobs and requests share one budget.
``GET /jobs/{id}`` polls it, ``GET /jobs/{id}/result`` answers exactly what ``POST /segment``
would have, ``DELETE /jobs/{id}`` cancels it (or removes a finished one).

With a JSON body ``{"path": "slides/a.tif", ...options}`` the job reads a file under the server's
data root (``UNET_DATA_ROOT``: a cluster volume) instead of an upload (:func:`submit_path_job`,
checks in ``service.data_root``); a slide job (``output=ome-zarr``) also an OME-Zarr folder there.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import sys
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, params
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from service import data_root, filenames, metrics, slide_files, uploads
from service.errors import (
    PROBLEM_JSON,
    BadRequest,
    InvalidOptions,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    problem_body,
    problem_responses,
)
from service.jobs import (
    Active,
    Execute,
    JobFailed,
    JobRecord,
    JobResult,
    JobRunner,
    JobStore,
    StoreFull,
    UnknownJob,
    process_owner,
)
from service.routes import bodies, slide_jobs, stack_jobs
from service.routes import stored as stored_uploads
from service.routes.deps import ClientGone, Runtime, get_runtime, require_api_key
from service.routes.segment import (
    IMAGE_BODY,
    Output,
    SegmentOptions,
    as_problems,
    checked_engine,
    is_cancel,
    no_image,
    plane_selection,
    problem_for,
    result_headers,
    run_pipeline,
    segment_options,
    unsupported_media_type,
    upload_content_type,
    upload_pixels,
)

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

@dataclass(frozen=True)
class JobInput:
    """What a job's worker needs besides the upload: the parsed options and the file's name;
    ``source``: the file under the data root, or the stored upload, it reads instead of an upload."""

    options: SegmentOptions
    filename: str | None
    source: data_root.DataFile | None = None


class JobStatus(BaseModel):
    id: str
    status: str = Field(description="queued · running · succeeded · failed · cancelled")
    stage: str = Field(description="queued · waiting (for admission) · segmenting · done")
    tiles_done: int = Field(description="tiles of the image run through the model so far")
    tiles_total: int | None = Field(None, description="tiles the image needs (null until known)")
    created: str = Field(description="RFC 3339 UTC")
    started: str | None = None
    finished: str | None = None
    options: dict[str, str] = Field(description="the options the job was submitted with (and `path`, for a "
                                    "file under the data root)")
    status_url: str
    result_url: str | None = Field(None, description="where the result is, once the job succeeded")
    problem: dict[str, Any] | None = Field(None, description="problem details when the job failed")


def create_runner(runtime: Runtime) -> JobRunner:
    s = runtime.settings
    store = JobStore(
        s.jobs_dir, s.jobs_max, s.jobs_max_bytes, s.jobs_retention_s,
        owner=process_owner(s.replica_id), owner_timeout_s=s.jobs_owner_timeout_s,
    )
    stored = uploads.UploadStore(
        s.jobs_dir, s.max_stored_upload_bytes, s.jobs_max, s.jobs_retention_s,
        room=lambda: store.max_bytes - store.usage()[1],
    )
    return JobRunner(store, executor(runtime, stored), s.jobs_workers, stored_uploads=stored)


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


# --- the work (background) -----------------------------------------------------------------------


def executor(runtime: Runtime, stored: uploads.UploadStore | None = None) -> Execute:
    """The job's work: admission for its pixels (waiting as long as it takes: nobody is holding a
    connection open), then ``run_pipeline`` on a worker thread, stopped by the job's cancel flag;
    a stack job's slices are admitted one by one (``admit_slice``)."""

    async def execute(job: Active, input_path: Path) -> JobResult | None:
        given: JobInput = job.options
        options = given.options
        stop = job.cancel.is_set

        async def gone() -> bool:
            return stop()

        slide = options.output is Output.ome_zarr
        stack = options.output is Output.labels3d
        data = b""

        @contextmanager
        def admit_slice(pixels: int) -> Iterator[Callable[[int], None]]:
            """A stack job's slice, admitted in its turn (worker thread): between slices, requests
            and other work get the budget."""
            def waiting() -> None:
                job.stage = "waiting"

            with runtime.admitted_waiting(pixels, stop, waiting) as ticket:
                job.stage = "segmenting"
                yield lambda px: runtime.grow(ticket, px, stop)
                runtime.finished(ticket)

        def unless_cancelled(run: Callable[[], Any]) -> Any:
            """``run()``'s result, or None when the job's cancel flag stopped it."""
            try:
                return run()
            except Exception as exc:
                if is_cancel(exc):
                    return None
                raise

        def work(ticket: Any) -> Any:
            if slide:
                return unless_cancelled(lambda: slide_jobs.run(
                    runtime, _slide_path(given, input_path), options, input_path.parent, stop, job.progress))
            # Not through the prediction cache: a job reports the tiles it runs, and keeps its
            # result in its folder for as long as anyone needs it.
            return unless_cancelled(lambda: run_pipeline(
                runtime, data, options, stop, lambda px: runtime.grow(ticket, px, stop),
                progress=job.progress, cached=False,
            ))

        def work_stack(slices: stack_jobs.Slices) -> Any:
            return unless_cancelled(lambda: stack_jobs.run(
                runtime, slices, options, input_path.parent, stop, job.progress, admit_slice))

        try:
            if stack:  # each slice admitted in its turn (admit_slice), not the stack at once
                slices = await anyio.to_thread.run_sync(_stack_slices, runtime, given, input_path, stored)
                result = await anyio.to_thread.run_sync(work_stack, slices)
            else:
                if slide:  # read by region: admitted for its windows' working set, not its size
                    pixels = await anyio.to_thread.run_sync(
                        slide_jobs.working_pixels, runtime, _slide_path(given, input_path), options
                    )
                else:
                    data = await anyio.to_thread.run_sync(_read_input, given, input_path,
                                                          runtime.settings.max_upload_bytes, stored)
                    pixels = await upload_pixels(runtime, data)
                while True:
                    entered = False
                    try:
                        async with runtime.admitted(pixels, disconnected=gone, max_wait_s=math.inf) as ticket:
                            entered = True
                            job.stage = "segmenting"
                            result = await anyio.to_thread.run_sync(work, ticket)
                            if result is not None:
                                runtime.finished(ticket)
                        break
                    except ServiceUnavailable as exc:
                        if entered or exc.slug != "overloaded":
                            raise
                        # Refused before admission (the admission queue is full): wait and ask again.
                        await _sleep_unless(stop, float(exc.headers.get("Retry-After", 1)))
                        if stop():
                            return None
        except ClientGone:
            return None  # cancelled while waiting for admission
        except Exception as exc:
            metrics.IMAGES.labels(output=options.output.value, outcome="error").inc()
            problem = problem_for(exc)
            if problem is None:
                raise
            body = problem_body(problem.status, problem.title, problem.detail, slug=problem.slug,
                                errors=problem.errors, extra=problem.extra)
            raise JobFailed(problem.status, body, problem.headers) from exc
        if result is None:
            metrics.IMAGES.labels(output=options.output.value, outcome="cancelled").inc()
            return None
        metrics.IMAGES.labels(output=options.output.value, outcome="ok").inc()
        version = runtime.components()[0].metadata.version
        if slide:
            return slide_jobs.job_result(job.id, result, given.filename, version)
        if stack:
            return stack_jobs.job_result(job.id, result, given.filename, version)
        headers = result_headers(runtime, result)
        name = filenames.output_name(given.filename, options.output.value, result.media_type)
        headers["Content-Disposition"] = filenames.content_disposition(name)
        return JobResult(result.body, result.media_type, headers)

    return execute


def _slide_path(given: JobInput, input_path: Path) -> Path:
    """Where a slide job's file is: its upload, or its file under the data root if that is still
    the file checked at submission (else the job fails with the problem)."""
    if given.source is None:
        return input_path
    try:
        given.source.check_unchanged()
    except data_root.DataPathError as exc:
        raise data_path_problem(exc) from exc
    return given.source.path


def _stack_slices(
    runtime: Runtime, given: JobInput, input_path: Path, stored: uploads.UploadStore | None = None
) -> stack_jobs.Slices:
    """How a stack job reads its slices: from its file under the data root, slice by slice, where
    the file allows (``stack_jobs.file_slices``), else from the file's bytes (an upload)."""
    if given.source is not None:
        with as_problems():
            from_file = stack_jobs.file_slices(runtime, _slide_path(given, input_path), given.options)
        if from_file is not None:
            return from_file
    data = _read_input(given, input_path, runtime.settings.max_upload_bytes, stored)
    with as_problems():
        return stack_jobs.UploadSlices(runtime, data, given.options)


async def _check_stack_file(
    runtime: Runtime, source: data_root.DataFile, options: SegmentOptions, read: Callable[[], bytes]
) -> stack_jobs.SlicePlan:
    """At submission, a stack under the data root or stored: read slice by slice where the file
    allows (any size), else as an upload (``read()``; under the data root, the upload's byte limit)."""
    with as_problems():
        from_file = await anyio.to_thread.run_sync(stack_jobs.file_slices, runtime, source.path, options)
    if from_file is not None:
        return from_file.plan
    limit = runtime.settings.max_upload_bytes
    mapped = isinstance(source, _StoredFile)
    if not mapped and (source.is_store or source.size > limit):
        what = "an OME-Zarr folder" if source.is_store else f"a file of {source.size:,} bytes"
        raise data_path_problem(data_root.TooLarge(
            f"{source.relative}: stacks are read slice by slice from TIFF, CZI, LIF, ND2, OIB, ZVI, "
            f"DeltaVision, Imaris or OME-Zarr files of grey planes (a channel chosen with channel=); this "
            f"one would be read whole, as an upload of at most {limit:,} bytes (UNET_MAX_UPLOAD_BYTES), "
            f"and it is {what}",
            source.size, limit))
    data = await anyio.to_thread.run_sync(read)
    plan = await _check_image(runtime, data, options)
    assert plan is not None
    return plan


async def _check_slide(runtime: Runtime, path: Path, options: SegmentOptions) -> None:
    """A slide refused at submission (too large, undecodable, ambiguous plane) → its problem now."""
    with as_problems():
        await anyio.to_thread.run_sync(slide_jobs.check, runtime, path, options)


async def _check_image(runtime: Runtime, data: bytes, options: SegmentOptions) -> stack_jobs.SlicePlan | None:
    """What the header says no to (400/413/415), now rather than as a failed job; for a stack job
    also a channel or time point left to choose (422, listing the choices), and its plan."""
    await upload_pixels(runtime, data)
    if options.output is not Output.labels3d:
        return None
    with as_problems():
        return await anyio.to_thread.run_sync(stack_jobs.plan, runtime, data, options)


def _check_room(plan: stack_jobs.SlicePlan | None, room: int) -> None:
    """A stack job whose scratch file the jobs folder has no room for: 507 now, not a failed job."""
    if plan is not None and plan.disk_bytes > room:
        raise _store_full(StoreFull(
            "bytes", f"a stack job of {plan.depth} slices of {plan.width}×{plan.height} px needs "
            f"{plan.disk_bytes:,} bytes of the jobs folder while it runs, and it has {max(room, 0):,} free "
            "(UNET_JOBS_MAX_BYTES)", 60))


def _read_input(
    given: JobInput, input_path: Path, max_bytes: int, stored: uploads.UploadStore | None = None
) -> bytes:
    """The job's image: its upload; its stored upload, as a memory map (any size); or its file under
    the data root if that is still the file checked at submission (else a problem: the job fails
    with it)."""
    if given.source is None:
        return input_path.read_bytes()
    if isinstance(given.source, _StoredFile):
        upload = given.source.upload_id
        try:
            if stored is None:
                raise uploads.UnknownUpload(upload)
            return stored.open(upload)  # type: ignore[return-value]  # a map reads as bytes do
        except uploads.UnknownUpload as exc:
            raise stored_uploads.unknown_upload(upload, exc) from exc
    try:
        return given.source.read(max_bytes)
    except data_root.DataPathError as exc:
        raise data_path_problem(exc) from exc


async def _sleep_unless(stop: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


# --- routes ---------------------------------------------------------------------------------------


def _status(record: JobRecord) -> JobStatus:
    def when(t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")

    return JobStatus(
        id=record.id,
        status=record.status,
        stage=record.stage,
        tiles_done=record.tiles_done,
        tiles_total=record.tiles_total,
        created=when(record.created) or "",
        started=when(record.started),
        finished=when(record.finished),
        options=record.options,
        status_url=f"/jobs/{record.id}",
        result_url=f"/jobs/{record.id}/result" if record.status == "succeeded" else None,
        problem=record.problem,
    )


def _unknown(job_id: str) -> ProblemError:
    return ProblemError(
        "there is no job with this id: it never existed, was deleted, or expired after UNET_JOBS_RETENTION_S",
        status=404,
        slug="job-not-found",
        title="Job not found",
    )


def _load(jobs: JobRunner, job_id: str) -> JobRecord:
    try:
        return jobs.status(job_id)
    except UnknownJob as exc:
        raise _unknown(job_id) from exc


def _store_full(exc: StoreFull) -> ProblemError:
    headers = {"Retry-After": str(exc.retry_after_s)}
    if exc.kind == "jobs":
        return ProblemError(str(exc), status=503, slug="jobs-full", title="Too many jobs", headers=headers)
    return ProblemError(str(exc), status=507, slug="insufficient-storage", title="Insufficient storage",
                        headers=headers)


async def _receive(request: Request, path: Path, room: int) -> str | None:
    """Write the upload (multipart field ``file`` or the raw body) to ``path``; its file name.
    ``bodies.TooBig`` past ``room`` bytes; an untyped body is refused (415), an empty one (400)."""
    received = await bodies.receive_file(request, path, room)
    if received.size and not received.typed:
        raise unsupported_media_type("")
    if received.size == 0:
        raise no_image()
    return received.filename


_STATUS_RESPONSE = {"model": JobStatus, "description": "the job's status"}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}


@router.post(
    "/jobs",
    summary="Submit an image as a background job",
    status_code=202,
    response_model=JobStatus,
    responses={
        202: {
            "description": "accepted: poll the Location (GET /jobs/{id}); the result is then at "
            "GET /jobs/{id}/result",
            "headers": {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 413, 415, 422, 503),
        403: {"description": "a JSON body's path: UNET_DATA_ROOT is not set, or the path is absolute or "
              "leads outside it", "content": _PROBLEM_CONTENT},
        404: {"description": "a JSON body's path: no such file under UNET_DATA_ROOT; upload=: no stored "
              "upload with this id",
              "content": _PROBLEM_CONTENT},
        507: {"description": "the jobs folder is full (UNET_JOBS_MAX_BYTES)", "content": _PROBLEM_CONTENT},
    },
    openapi_extra={"requestBody": {**IMAGE_BODY, "content": {
        **IMAGE_BODY["content"],
        "application/json": {"schema": {
            "type": "object",
            "required": ["path"],
            "properties": {"path": {
                "type": "string",
                "description": "an image file relative to the server's UNET_DATA_ROOT (e.g. a cluster "
                "volume), or with output=ome-zarr an OME-Zarr folder; absolute paths and paths leading "
                "outside it (also by a symlink inside an OME-Zarr folder) are refused (403)",
            }},
            "additionalProperties": {"description": "the query options of POST /segment (output, "
                                     "threshold, channel, …) as JSON values, or in the query string"},
        }},
    }}},
)
async def submit_job(
    request: Request,
    options: SegmentOptions = Depends(segment_options),
    runtime: Runtime = Depends(get_runtime),
    upload: str | None = stored_uploads.UPLOAD_QUERY,
) -> JSONResponse:
    checked_engine(runtime, options)  # 503/422 before reading the body, as on POST /segment
    jobs = get_jobs(request)
    if jobs.unavailable:
        raise ServiceUnavailable(f"jobs are not available: {jobs.unavailable}", retry_after_s=30)
    if upload is not None:
        return await submit_stored_job(request, upload, options, runtime, jobs)
    if upload_content_type(request) == "application/json":
        return await submit_path_job(request, options, runtime, jobs)
    store = jobs.store
    declared = request.headers.get("content-length", "")
    try:
        job_id, room = store.new_job(int(declared) if declared.isdigit() else None)
    except StoreFull as exc:
        raise _store_full(exc) from exc
    submitted = False
    try:
        try:
            filename = await _receive(request, store.input_path(job_id), room)
        except bodies.TooBig as exc:
            raise _store_full(StoreFull(
                "bytes", f"the upload does not fit in the {room:,} bytes the jobs folder has free "
                "(UNET_JOBS_MAX_BYTES)", 60)) from exc
        if options.output is Output.ome_zarr:  # a slide: its header, never its pixels
            await _check_slide(runtime, store.input_path(job_id), options)
        else:
            data = await anyio.to_thread.run_sync(store.input_path(job_id).read_bytes)
            _check_room(await _check_image(runtime, data, options), room - len(data))
            del data
        record = JobRecord(
            id=job_id, status="queued", created=time.time(), options=dict(request.query_params),
            filename=filename,
        )
        jobs.submit(record, JobInput(options, filename))
        submitted = True
    finally:
        if not submitted:
            store.received(job_id)
            await anyio.to_thread.run_sync(store.delete, job_id)
    return JSONResponse(
        _status(record).model_dump(), status_code=202, headers={"Location": f"/jobs/{job_id}"}
    )


@router.get(
    "/jobs/{job_id}",
    summary="A job's status and progress",
    response_model=JobStatus,
    responses={200: _STATUS_RESPONSE, **problem_responses(401, 404)},
)
async def job_status(job_id: str, request: Request) -> JobStatus:
    return _status(_load(get_jobs(request), job_id))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's result: what POST /segment would have answered",
    response_class=Response,
    responses={
        200: {"description": "the result's bytes and headers, as from POST /segment"},
        **problem_responses(401, 404),
        409: {"description": "the job has not finished, or was cancelled",
              "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}},
    },
)
async def job_result(job_id: str, request: Request) -> Response:
    jobs = get_jobs(request)
    record = _load(jobs, job_id)
    if record.status == "failed" and record.problem is not None:
        # The problem POST /segment would have answered, with its status.
        return JSONResponse(record.problem, status_code=int(record.problem.get("status", 500)),
                            headers=record.problem_headers, media_type=PROBLEM_JSON)
    if record.status != "succeeded" or record.media_type is None:
        why = "it has no result" if record.status == "cancelled" else f"poll /jobs/{job_id} until it is done"
        raise ProblemError(
            f"the job is {record.status}: {why}",
            status=409,
            slug="job-not-finished",
            title="Job not finished",
            headers={"Retry-After": "1"} if record.status in ("queued", "running") else {},
        )
    path = jobs.store.result_path(job_id)
    if not path.is_file():  # deleted or swept since the status was read
        raise _unknown(job_id)
    return FileResponse(path, media_type=record.media_type, headers=record.headers)


@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a job, or delete a finished one and its result",
    status_code=204,
    responses={
        200: {"model": JobStatus, "description": "the job was queued or running: it is now cancelled "
              "(its record stays until the retention sweep; its files are deleted)"},
        204: {"description": "the finished job and its result were deleted"},
        **problem_responses(401, 404),
    },
)
async def delete_job(job_id: str, request: Request) -> Response:
    jobs = get_jobs(request)
    try:
        record = await jobs.delete(job_id)
    except UnknownJob as exc:
        raise _unknown(job_id) from exc
    if record is None:
        return Response(status_code=204)
    return JSONResponse(_status(record).model_dump())


# --- jobs on files under the data root ----------------------------------------------------------


def _query_fields() -> dict[str, Any]:
    """The query options of ``POST /segment`` as pydantic fields, with their declared types and
    ranges, so that a JSON body's options are checked exactly as the query's are."""
    fields: dict[str, Any] = {}
    for declared in (segment_options, plane_selection):
        hints = typing.get_type_hints(declared)
        for name, parameter in inspect.signature(declared).parameters.items():
            if isinstance(parameter.default, params.Query):
                fields[name] = (hints[name], parameter.default)
    return fields


PathJob = create_model(
    "PathJob",
    __config__=ConfigDict(extra="forbid"),
    path=(str, Field(min_length=1, max_length=data_root.MAX_PATH_CHARS,
                     description="an image file relative to UNET_DATA_ROOT")),
    **_query_fields(),
)
_PLANE_FIELDS = frozenset(inspect.signature(plane_selection).parameters)
#: A path and a dozen options: far below this.
_MAX_JSON_BYTES = 64 * 1024


def data_path_problem(exc: data_root.DataPathError) -> ProblemError:
    """What is wrong with a path under the data root, as the problem the client gets."""
    if isinstance(exc, data_root.OutsideRoot):
        return ProblemError(str(exc), status=403, slug="path-outside-data-root",
                            title="Path outside the data root")
    if isinstance(exc, data_root.NotFound):
        return ProblemError(str(exc), status=404, slug="data-file-not-found", title="File not found")
    if isinstance(exc, data_root.NotAFile):
        return ProblemError(str(exc), status=400, slug="not-a-file", title="Not a file")
    if isinstance(exc, data_root.NotAStore):
        return ProblemError(str(exc), status=400, slug="not-a-zarr-store", title="Not a Zarr store")
    if isinstance(exc, data_root.TooLarge):
        return ProblemError(str(exc), status=413, slug="file-too-large", title="File too large")
    return ProblemError(str(exc), status=409, slug="data-file-changed", title="File changed")


async def _path_job_body(request: Request, query_options: SegmentOptions) -> tuple[str, SegmentOptions,
                                                                                   dict[str, str]]:
    """``(path, options, options as sent)`` from the JSON body; its options are checked like the
    query's (422 naming each bad one), and may be given in one place only."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_JSON_BYTES:
            raise PayloadTooLarge(f"a job's JSON body (a path and options) has at most {_MAX_JSON_BYTES:,} "
                                  "bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidOptions(
            'the JSON body must be an object: {"path": "relative/path.tif", ...options}',
            errors=[{"loc": ["body"], "msg": "Input should be an object", "type": "dict_type"}],
        )
    try:
        parsed = PathJob.model_validate(body)
    except ValidationError as exc:
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors[:5])
        raise InvalidOptions(detail, errors=errors) from exc
    given = {k: v for k, v in body.items() if k != "path" and v is not None}  # null: not given
    if not given:  # the options, if any, came in the query string (as for an upload)
        return parsed.path, query_options, dict(request.query_params)
    if request.query_params:
        raise InvalidOptions(
            "options were given both in the query string and in the JSON body: use one of them",
            errors=[{"loc": ["query"], "msg": "options also given in the body", "type": "value_error"}],
        )
    values = parsed.model_dump(exclude={"path"})
    plane = plane_selection(**{k: v for k, v in values.items() if k in _PLANE_FIELDS})
    options = segment_options(**{k: v for k, v in values.items() if k not in _PLANE_FIELDS}, plane=plane,
                              _known=None, accept=request.headers.get("accept", ""))
    return parsed.path, options, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in given.items()}


async def submit_path_job(
    request: Request, query_options: SegmentOptions, runtime: Runtime, jobs: JobRunner
) -> JSONResponse:
    """``POST /jobs`` with ``{"path": ...}``: a job on a file under ``UNET_DATA_ROOT``, checked
    (inside the root, a regular file, the upload's byte and pixel limits; for a slide, a file or
    an OME-Zarr folder and the slide limits) before it is queued."""
    settings = runtime.settings
    if settings.data_root is None:
        raise ProblemError(
            "this server reads no files by path (UNET_DATA_ROOT is not set): upload the image as the body",
            status=403, slug="data-root-off", title="Reading files on the server is off",
        )
    path, options, sent = await _path_job_body(request, query_options)
    checked_engine(runtime, options)
    slide = options.output is Output.ome_zarr  # read by region: no byte limit, the slide pixel limit
    stack = options.output is Output.labels3d  # read slice by slice where the file allows
    # Slides and stacks may also be OME-Zarr folders (every entry checked); other outputs read one file.
    store = slide_files.is_slide_path if slide or stack else None
    try:
        source = await anyio.to_thread.run_sync(data_root.locate, settings.data_root, path,
                                                sys.maxsize if slide or stack else settings.max_upload_bytes,
                                                store)
    except data_root.DataPathError as exc:
        raise data_path_problem(exc) from exc
    except OSError as exc:  # the root itself is missing or unreadable: the operator's to fix
        raise ServiceUnavailable(f"the data root cannot be read: {exc.strerror}", retry_after_s=60) from exc

    def read() -> bytes:
        return _read_input(JobInput(options, None, source), Path(), settings.max_upload_bytes)

    return await _queue_file_job(runtime, jobs, source, options, {"path": path, **sent}, read)


@dataclass(frozen=True)
class _StoredFile(data_root.DataFile):
    """A stored upload's file (``service.uploads``) as a job's source: read through a memory map,
    so without the upload's byte limit."""

    upload_id: str = ""


async def _queue_file_job(
    runtime: Runtime,
    jobs: JobRunner,
    source: data_root.DataFile,
    options: SegmentOptions,
    sent: dict[str, str],
    read: Callable[[], bytes],
    filename: str | None = None,
) -> JSONResponse:
    """A job on a file read where it is (under the data root, or a stored upload), checked before
    it is queued as an upload would be: a slide's header, a stack's plan, an image's header
    (``read()``: the file's bytes, or a map of them)."""
    slide = options.output is Output.ome_zarr
    stack = options.output is Output.labels3d
    stack_plan = None
    if slide:
        await _check_slide(runtime, source.path, options)
    elif stack:
        stack_plan = await _check_stack_file(runtime, source, options, read)
    else:
        data = await anyio.to_thread.run_sync(read)
        await _check_image(runtime, data, options)
        del data
    try:
        job_id, room = jobs.store.new_job(None)  # nothing is copied: only the result takes room
    except StoreFull as exc:
        raise _store_full(exc) from exc
    name = filename or source.name
    record = JobRecord(id=job_id, status="queued", created=time.time(), options=sent, filename=name)
    try:
        _check_room(stack_plan, room)
        jobs.submit(record, JobInput(options, name, source))
    except BaseException:
        jobs.store.received(job_id)
        jobs.store.delete(job_id)
        raise
    return JSONResponse(
        _status(record).model_dump(), status_code=202, headers={"Location": f"/jobs/{job_id}"}
    )


async def submit_stored_job(
    request: Request, upload: str, options: SegmentOptions, runtime: Runtime, jobs: JobRunner
) -> JSONResponse:
    """``POST /jobs?upload=<id>``: a job on a stored upload (``POST /uploads``), read where it is
    stored — a slide window by window, a stack slice by slice, an image through a memory map — so
    it may be past the upload limit. Nothing is copied."""
    mapped = await stored_uploads.open_stored(request, upload)  # 404; a body as well is a 400
    store = stored_uploads.upload_store(request)
    try:
        found = await anyio.to_thread.run_sync(
            data_root.locate, store.root, f"{upload}/data", sys.maxsize, None
        )
    except data_root.DataPathError as exc:  # deleted since it was opened
        raise stored_uploads.unknown_upload(upload, exc) from exc
    source = _StoredFile(**{**vars(found), "relative": f"the stored upload {upload}"}, upload_id=upload)
    sent = {"upload": upload, **{k: v for k, v in request.query_params.items() if k != "upload"}}
    return await _queue_file_job(runtime, jobs, source, options, sent, lambda: mapped, mapped.filename)
