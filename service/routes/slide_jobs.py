"""Slide jobs: ``POST /jobs?output=ome-zarr`` and the files they leave (issue 16).

A slide (a tiled OME-TIFF, BigTIFF or OME-Zarr of up to ``UNET_MAX_SLIDE_PIXELS``) is never
decoded whole: the job opens it by path (its upload on disk, or a file under ``UNET_DATA_ROOT``),
``service.slides.segment_slide`` segments it band by band, and the job's folder receives

- ``result.ome.zarr/``: probability, labels and mask with a pyramid (``service.omezarr``), and
- ``objects.csv``: one row per nucleus, as ``output=objects``, and
- ``objects.geojson`` with ``geojson=true``: their outlines, as ``output=geojson``;

and with ``expand=PX`` each nucleus's cell: ``labels/cells`` in the store, the cell and cytoplasm
columns in the table, QuPath cells in the GeoJSON (as ``POST /segment`` with ``expand=``).

``GET /jobs/{id}/result`` then answers a JSON summary with their URLs. Each file of the store is
served at ``GET /jobs/{id}/files/result.ome.zarr/...``, so a viewer that reads OME-Zarr over HTTP
(napari with ome-zarr, ``ome_zarr.reader``, neuroglancer) opens the URL as it is;
``GET /jobs/{id}/files.zip`` streams the whole folder as one ZIP for a download. The same two
routes serve a stack job's files (``output=labels3d``: ``routes.stack_jobs``).

This module translates between HTTP / job records and :mod:`service.slides`; the routes only
check the id and the path and hand out files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from service import filenames, slide_files, slides, stack_files, windows
from service.background import RING_GAP_PX
from service.errors import ProblemError, problem_responses
from service.jobs import JobResult, UnknownJob
from service.outputs import measured_keys
from service.routes.deps import Runtime, require_api_key
from service.routes.segment import SegmentOptions, object_params
from service.zipstream import ZipStream

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

#: What a slide job leaves in its folder, by the names the URLs use.
RESULT_FILES = (slides.STORE_NAME, slides.TABLE_NAME, slides.GEOJSON_NAME)
#: The jobs whose result is a folder of files (by output), and the files each leaves.
_FOLDER_RESULTS = {"ome-zarr": RESULT_FILES, "labels3d": stack_files.RESULT_FILES}
_MEDIA_TYPES = {
    slides.TABLE_NAME: "text/csv", slides.GEOJSON_NAME: "application/geo+json",
    stack_files.LABELS_NAME: "image/tiff", stack_files.TABLE_NAME: "text/csv",
    stack_files.CELLS_NAME: "image/tiff",
}
SUMMARY_TYPE = "application/json"


def open_checked(runtime: Runtime, path: Path, options: SegmentOptions) -> slide_files.SlideSource:
    """The slide at ``path`` opened for the request's plane choice (header and metadata only):
    too large, undecodable, unsupported or ambiguous files raise the domain errors ``POST
    /segment`` maps to problems (413, 400, 415, 422 choose-plane)."""
    settings = runtime.settings
    md = runtime.components()[0].metadata
    return slide_files.open_slide(
        path, options.plane, max_pixels=settings.max_slide_pixels, limits=settings.decode_limits(),
        model_channels=md.in_channels,
    )


def check(runtime: Runtime, path: Path, options: SegmentOptions) -> None:
    """At submission: refuse now, not as a failed job, what :func:`open_checked` refuses, and
    cells or background rings too wide for the server (:func:`check_cells`)."""
    with open_checked(runtime, path, options) as source:
        check_cells(int(source.shape[1]), options.expand, runtime.settings.max_pixels,
                    options.background_ring)


def check_cells(width: int, expand: float | None, max_pixels: int, ring: float | None = None) -> None:
    """A 413 for cells (``expand=``) or background rings (``background_ring=``) whose rows held back
    on a slide ``width`` px wide would take more than one request may (``UNET_MAX_PIXELS``) where
    the slide alone would not: admission stops at that maximum, so the job would run with more
    memory than it was admitted for."""
    reach = held_reach(expand, ring)
    if reach is None or held_pixels(width, expand, ring) <= max_pixels:
        return
    if held_pixels(width, None) > max_pixels:
        return  # the slide alone is admitted at the maximum already: cells do not change that
    spare = max_pixels // width - ADMITTED_PER_COLUMN - (CELLS_ADMITTED_PER_COLUMN if expand else 0)
    room = spare / ADMITTED_PER_COLUMN_PER_EXPAND_PX  # px of reach, per column
    if ring is None:
        fits = f"at most expand={math.floor(room)} fits" if room >= 1 else "no expand fits"
        what = f"cells grown by {expand:g} px"
    else:
        fits = (f"at most {math.floor(room)} px of reach (expand + {RING_GAP_PX:g} + background_ring) fits"
                if room >= 1 else "no background ring fits")
        cells = f"cells grown by {expand:g} px and " if expand else ""
        what = f"{cells}a background ring {ring:g} px wide (reaching {reach:g} px beyond each nucleus)"
    raise ProblemError(
        f"{what} on a slide {width:,} px wide hold more rows back than this server "
        f"admits for one job (UNET_MAX_PIXELS {max_pixels:,}); {fits} on this slide",
        status=413, slug="cells-too-large", title="Cells too large for this slide",
    )


def held_reach(expand: float | None, ring: float | None) -> float | None:
    """How far beyond a nucleus a slide job holds rows back: the cells' expansion and, past it,
    the background ring's gap and width (``cell_bands.CellBands``' margin); None: nothing held."""
    if ring is None:
        return expand
    return (expand or 0.0) + RING_GAP_PX + ring


#: Admission pixels per pixel of slide width. A slide job's memory grows with the slide's width,
#: not its height: ~20 bytes × one tile row (1,200 px) per column (stitcher rows, input strip,
#: store buffers) — 1.6 GB above idle at 32768 px wide (docs/benchmarks.md §9) — and admission
#: counts ~48 bytes per pixel of an image in memory (docs/benchmarks.md), so 512 px per column.
ADMITTED_PER_COLUMN = 512
#: With cells (``expand=PX``), admission pixels per column: the store's row of cell chunks (512
#: rows × 4 bytes) with its pyramid and the cell rows the GeoJSON holds, and for each px of the
#: expansion the rows held until the rows below decide their cells (mask, labels, probability,
#: the slide's grey rows, their copies while cells grow). Measured (``benchmarks/slide_cells.py``,
#: a 2048 × 16384 slide with geojson=true): peak RSS +94 MiB at expand=10 and +187 MiB at
#: expand=100 over the job without cells, i.e. ~5.3 kB + ~66 bytes per px per column, against
#: admission's ~48 bytes per pixel.
CELLS_ADMITTED_PER_COLUMN = 112
ADMITTED_PER_COLUMN_PER_EXPAND_PX = 1.5


def working_pixels(runtime: Runtime, path: Path, options: SegmentOptions) -> int:
    """What a slide job is admitted for: the image an in-memory request of the same memory would
    be (:data:`ADMITTED_PER_COLUMN` × the slide's width, more with cells), at least
    ``UNET_WINDOWED_MIN_PIXELS`` and at most ``UNET_MAX_PIXELS`` (what one request may take),
    whatever the slide's height."""
    settings = runtime.settings
    with open_checked(runtime, path, options) as source:
        width = int(source.shape[1])
    return admitted_pixels(width, options.expand, settings.windowed_min_pixels, settings.max_pixels,
                           options.background_ring)


def admitted_pixels(
    width: int, expand: float | None, least: int, most: int, ring: float | None = None
) -> int:
    """:func:`working_pixels` of a slide ``width`` px wide, cells grown by ``expand`` px (None: no
    cells), background rings ``ring`` px wide (None: none): :func:`held_pixels` within
    ``[least, most]``."""
    return min(max(least, held_pixels(width, expand, ring)), most)


def held_pixels(width: int, expand: float | None, ring: float | None = None) -> int:
    """What a slide job ``width`` px wide holds, in admission pixels, with cells grown by
    ``expand`` px (None: no cells) and background rings ``ring`` px wide (None: none), before
    admission's bounds: the rows held back scale with :func:`held_reach` (a ring's pixels, kept per
    open nucleus until it is finished, are a few thousand per nucleus: within the rows' margin)."""
    per_column = ADMITTED_PER_COLUMN
    if expand is not None:
        per_column += CELLS_ADMITTED_PER_COLUMN
    reach = held_reach(expand, ring)
    if reach is not None:
        per_column += math.ceil(ADMITTED_PER_COLUMN_PER_EXPAND_PX * reach)
    return per_column * width


def run(
    runtime: Runtime,
    path: Path,
    options: SegmentOptions,
    folder: Path,
    should_stop: Callable[[], bool],
    progress: Callable[[int, int], None],
) -> slides.SlideResult:
    """Segment the slide at ``path`` into ``folder``. Blocking. What a failed or stopped run wrote
    is deleted (a half-written store is no result)."""
    engine, batcher = runtime.components()
    md = engine.metadata
    tiling = runtime.tiling(md, options.tile_size, options.overlap)
    windowed = windows.policy(runtime.settings, tiling.source)  # the tile a windowed run takes

    def infer(batch):  # type: ignore[no-untyped-def]
        return batcher.infer(batch, should_stop)

    threshold = options.threshold if options.threshold is not None else md.threshold
    try:
        with open_checked(runtime, path, options) as source:
            size = source.pixel_size  # the file's, or the request's pixel_size= (microscopy.resolve)
            pixel_size = (size.x_um, size.y_um) if size is not None else None
            result = slides.segment_slide(
                source, folder, infer, md, object_params(options, md), threshold, options.diameter,
                pixel_size_um=pixel_size,
                tile_size=windowed.tile_size or tiling.tile_size, overlap=tiling.overlap,
                batch_size=windowed.batch_size,
                should_stop=should_stop, progress=progress,
                geojson=options.geojson, geojson_properties=source.plane.describe(),
                polarity=source.plane.polarity,
                channels=[(key, source.of_channel(m.channel))
                          for key, m in zip(measured_keys(source.plane), source.plane.measured, strict=True)],
                expand=options.expand,
                background_ring=options.background_ring,
            )
            result.warnings[:0] = list(source.plane.warnings)
            return result
    except BaseException:
        remove_outputs(folder)
        raise


def remove_outputs(folder: Path) -> None:
    shutil.rmtree(folder / slides.STORE_NAME, ignore_errors=True)
    (folder / slides.TABLE_NAME).unlink(missing_ok=True)
    (folder / slides.GEOJSON_NAME).unlink(missing_ok=True)


def job_result(
    job_id: str, result: slides.SlideResult, filename: str | None, model_version: str
) -> JobResult:
    """The job's ``/result``: a JSON summary with the URLs of the files."""
    base = f"/jobs/{job_id}/files"
    scale = result.scale
    summary = {
        "width": result.width,
        "height": result.height,
        "objects": result.objects,
        "tiles": result.tiles,
        "nucleus_diameter": None if scale.diameter is None else round(scale.diameter, 2),
        "diameter_source": scale.source,
        "scale_factor": round(scale.factor, 4),
        "estimate_window": result.estimate_window,
        "levels": result.levels,
        "warnings": result.warnings,
        "store_url": f"{base}/{slides.STORE_NAME}",
        "objects_url": f"{base}/{slides.TABLE_NAME}",
        "geojson_url": f"{base}/{slides.GEOJSON_NAME}" if result.geojson is not None else None,
        "zip_url": f"/jobs/{job_id}/files.zip",
        "layout": {
            "image": "foreground probability, uint8 (255 = 1.0)",
            "labels/nuclei": "object ids, uint32 (0 = background; the objects table's id)",
            "labels/mask": "the mask, uint8 0/255",
            **_cells_layout(result.expand),
        },
        "timings_ms": {"scale": round(result.scale_ms, 1), "segment": round(result.segment_ms, 1)},
    }
    return summary_result(summary, "ome-zarr", filename, model_version)


def _cells_layout(expand: float | None) -> dict[str, str]:
    if expand is None:
        return {}
    return {"labels/cells": f"each nucleus's cell, grown by up to {expand:g} px, uint32 (the nucleus's id)"}


def summary_result(
    summary: dict, output: str, filename: str | None, model_version: str,
    headers: dict[str, str] | None = None,
) -> JobResult:
    """A folder job's ``/result``: its JSON ``summary`` (``objects``, ``tiles``, ``warnings`` among
    its keys), with the headers ``POST /segment`` gives (object count, tiles, warnings) and a file
    name after the upload's; ``headers``: more of them."""
    name = filenames.output_name(filename, output, SUMMARY_TYPE)
    all_headers = {
        "X-Model-Version": model_version,
        "X-Object-Count": str(summary["objects"]),
        "X-Tiles": str(summary["tiles"]),
        "Content-Disposition": filenames.content_disposition(name),
        **(headers or {}),
    }
    if summary["warnings"]:
        all_headers["X-Warnings"] = json.dumps(summary["warnings"], ensure_ascii=True)
    return JobResult(json.dumps(summary, indent=1).encode(), SUMMARY_TYPE, all_headers)


# --- the files -----------------------------------------------------------------------------------


def _finished_folder(request: Request, job_id: str) -> tuple[Path, tuple[str, ...]]:
    """The folder of a succeeded slide or stack job and the names of its files, else the 404 /
    409 problem."""
    jobs = request.app.state.jobs
    try:
        record = jobs.store.load(job_id)
    except UnknownJob as exc:
        raise _not_found(f"no job {job_id!r}") from exc
    if record.status != "succeeded":
        raise ProblemError(
            f"the job is {record.status}: its files exist once it has succeeded",
            status=409, slug="job-not-finished", title="Job not finished",
            headers={"Retry-After": "1"} if record.status in ("queued", "running") else {},
        )
    names = _FOLDER_RESULTS.get(record.options.get("output", ""))
    if names is None:
        raise _not_found("this job's result is one response: GET its /result")
    return jobs.store.folder(job_id), names


def _not_found(detail: str) -> ProblemError:
    return ProblemError(detail, status=404, slug="job-not-found", title="Job not found")


@router.get(
    "/jobs/{job_id}/files/{name:path}",
    summary="A file of a slide or stack job's result (OME-Zarr store, 3-D labels, objects table), readable "
    "over HTTP",
    response_class=FileResponse,
    responses={200: {"description": "the file's bytes"}, **problem_responses(401, 404), 409: {
        "description": "the job has not succeeded (yet)"}},
)
async def job_file(job_id: str, name: str, request: Request) -> Response:
    folder, names = _finished_folder(request, job_id)
    parts = PurePosixPath(name).parts
    if not parts or parts[0] not in names or any(p in ("..", ".") or p.startswith("/") for p in parts):
        raise _not_found(f"{name!r} is not a file of this job (only {' and '.join(names)} hold files)")
    path = folder.joinpath(*parts)
    if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
        # a chunk never written (all background) is absent: zarr readers take 404 as the fill value
        raise _not_found(f"{name!r} is not a file of this job")
    media = _MEDIA_TYPES.get(name) or (
        "application/json" if parts[-1].startswith(".z") else "application/octet-stream"
    )
    return FileResponse(path, media_type=media)


@router.get(
    "/jobs/{job_id}/files.zip",
    summary="A slide or stack job's result folder as one ZIP (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, **problem_responses(401, 404), 409: {
        "description": "the job has not succeeded (yet)"}},
)
async def job_files_zip(job_id: str, request: Request) -> Response:
    folder, names = _finished_folder(request, job_id)

    async def chunks() -> AsyncIterator[bytes]:
        archive = ZipStream()
        for root_name in names:
            for path in await anyio.to_thread.run_sync(_files_under, folder / root_name):
                member = path.relative_to(folder).as_posix()
                if path.suffix in (".csv", ".geojson", ".tif"):  # large: read in pieces
                    # The tables deflate well; the label TIFF is zlib-compressed already.
                    pieces = archive.add_file(member, path, deflate=path.suffix != ".tif")
                    while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
                        yield piece
                else:  # one chunk of the store: a few MB at most
                    data = await anyio.to_thread.run_sync(path.read_bytes)
                    yield archive.add(member, data)
        yield archive.close()

    name = f"{job_id}.ome.zarr.zip" if slides.STORE_NAME in names else f"{job_id}.labels3d.zip"
    return StreamingResponse(chunks(), media_type="application/zip",
                             headers={"Content-Disposition": filenames.content_disposition(name)})


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files)]
    return found

