"""``POST /segment``: image bytes in, PNG (or the output asked for) out.

The route reads the upload (multipart field ``file``, or the raw body with an ``image/*``
type), checks readiness and admission, then runs decode → ``segment.predict`` → postprocess →
PNG encode on a worker thread: the event loop never touches pixels. Tiles go through the
shared dynamic batcher; a client that disconnects (or a request past its timeout) stops its
remaining tiles from being computed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from service import (
    background,
    filenames,
    imaging,
    metrics,
    microscopy,
    objects,
    outputs,
    pipeline,
    segment,
    structure,
    windows,
    workload,
)
from service.admission import Ticket
from service.batcher import BatcherClosed, Overloaded
from service.batcher import Cancelled as BatcherCancelled
from service.engine import Engine
from service.errors import (
    BadRequest,
    InvalidOptions,
    ProblemError,
    ServiceUnavailable,
    problem_responses,
)
from service.measured_channels import admitted_extra, cells_admitted
from service.model_metadata import ModelMetadata
from service.prediction_cache import PlaneKey, frozen
from service.routes import stored as stored_uploads
from service.routes.deps import Runtime, get_runtime, only_query_params, require_api_key
from service.settings import Settings
from service.tile_options import Tiling

log = logging.getLogger(__name__)

router = APIRouter(tags=["segmentation"], dependencies=[Depends(require_api_key)])

#: HTTP status for a request whose client went away (nginx's convention; never actually received).
CLIENT_CLOSED = 499
#: How often the disconnect watcher polls the connection, seconds.
_DISCONNECT_POLL_S = 0.1
#: Content types accepted as a raw image body besides image/*.
RAW_TYPES = ("application/octet-stream",)


class Output(str, Enum):
    mask = "mask"
    probability = "probability"
    labels = "labels"
    overlay = "overlay"
    objects = "objects"
    geojson = "geojson"
    rois = "rois"
    ome_zarr = "ome-zarr"  # jobs only (POST /jobs): a slide's result is a folder, not one response
    labels3d = "labels3d"  # jobs only: a z-stack's nuclei in 3-D, written slice by slice as files


#: Outputs only a job writes (``routes.jobs``): POST /segment and /segment/batch refuse them.
JOB_ONLY_OUTPUTS = (Output.ome_zarr, Output.labels3d)
_JOB_ONLY_WHY = {
    Output.ome_zarr: "a slide's OME-Zarr result is a folder of files",
    Output.labels3d: "every slice of the stack is segmented, and the result is a 3-D label image and a table",
}


def refuse_job_only(options: SegmentOptions) -> None:
    """422 for an output that only ``POST /jobs`` writes."""
    if options.output in JOB_ONLY_OUTPUTS:
        raise InvalidOptions(
            f"output={options.output.value} is written by jobs only: "
            f"POST /jobs?output={options.output.value} ({_JOB_ONLY_WHY[options.output]}, "
            "fetched by URL when the job is done)",
            errors=[{"loc": ["query", "output"], "msg": "a job-only output", "type": "enum"}],
        )


class Split(str, Enum):
    center = "center"
    distance = "distance"
    none = "none"


_SPLIT_DESCRIPTION = (
    "how touching nuclei are split into objects; default: the model's own choice (GET /v1/model, "
    "objects.method) · center: at the peaks of the model's nucleus-centre output (models that have "
    "one; best on dense, overlapping nuclei) · distance: at the peaks of the mask's distance "
    "transform · none: connected components"
)


@dataclass(frozen=True)
class SegmentOptions:
    output: Output
    threshold: float | None
    bits: int
    tile_size: int | None
    overlap: int | None
    json_table: bool = False  # output=objects as JSON (Accept: application/json) instead of CSV
    split: Split | None = None  # None: the model's own method
    diameter: float | None = None  # typical nucleus diameter, input px; None: estimated
    plane: microscopy.Selection = microscopy.Selection()  # channel / z / t / project / pixel_size
    geojson: bool = False  # output=ome-zarr (jobs): also the objects' outlines as GeoJSON
    min_iou: float | None = None  # output=labels3d (jobs): the overlap linking slices; None: the default
    expand: float | None = None  # output=objects / geojson / rois: cells, each nucleus grown by this many px
    background_ring: float | None = None  # with measure=: each channel's local background, a ring this wide


_OPTION_NAMES = ("output", "threshold", "bits", "tile_size", "overlap", "split", "diameter", "expand",
                 "background_ring")
#: Options of job-only outputs, which POST /segment's own options never include.
_JOB_OPTION_NAMES = ("geojson", "min_iou")
#: Which channel / plane of a microscopy file, and its pixel size (service.microscopy).
_PLANE_OPTION_NAMES = ("channel", "z", "t", "project", "pixel_size", "polarity", "series", "measure",
                       "measure_project")
#: A stored upload named instead of a body (service.routes.stored): /segment and /jobs, not batches.
_STORED_OPTION_NAMES = ("upload",)
#: Outputs that carry a table of measurements, which ``measure=`` adds columns to.
MEASURED_OUTPUTS = ("objects", "geojson", "ome-zarr", "labels3d")
#: Outputs whose table can give each measured channel's local background (``background_ring=``):
#: one image's, and a slide job's (band by band); not a stack's 3-D table.
BACKGROUND_OUTPUTS = (*outputs.BACKGROUND_KINDS, "ome-zarr")
#: Outputs that can give each nucleus a cell (``expand=``): the answers that write objects one by
#: one with their outlines, slide jobs (their table, GeoJSON and store) and stack jobs (cells in 3-D).
EXPANDED_OUTPUTS = (*outputs.CELL_KINDS, "ome-zarr", "labels3d")


class Project(str, Enum):
    max = "max"
    sum = "sum"


class Polarity(str, Enum):
    bright = "bright"
    dark = "dark"


def plane_selection(
    channel: str | None = Query(
        None,
        min_length=1,
        max_length=200,
        description="the channel holding the nuclei: its 0-based index, or its name from the file's "
        "OME/ImageJ metadata (any case; red/green/blue for colour images; `gray` mixes a colour image's "
        "channels). Needed when the image has several channels that differ: without it, 422 listing them",
    ),
    z: int | None = Query(None, ge=0, description="the z-slice to segment, 0-based (Fiji's slice 1 is z=0)"),
    t: int | None = Query(None, ge=0, description="the time point to segment, 0-based"),
    project: Project | None = Query(
        None, description="max: segment the maximum projection over Z instead of one slice (segments best) · "
        "sum: the sum over Z, as float32 (Fiji's Sum Slices: each nucleus's whole signal, for measure=)"
    ),
    pixel_size: float | None = Query(
        None, gt=0, le=10_000, description="µm per pixel; overrides the file's calibration"
    ),
    polarity: Polarity = Query(
        Polarity.bright,
        description="bright: nuclei brighter than their background (fluorescence) · dark: nuclei darker "
        "than a bright background (bright field, H&E): the image is turned into its optical density "
        "before the model, a colour image's colours mixed unless channel= says otherwise",
    ),
    series: int | None = Query(
        None, ge=0, description="which image of a file holding several, 0-based: an OME-TIFF's Images, "
        "a CZI's scenes (the positions of a multi-position experiment), a LIF project's images. Default: "
        "the first, with a notice in X-Warnings naming how many there are",
    ),
    measure: str | None = Query(
        None, min_length=1, max_length=1000,
        description="output=objects / geojson (and the tables of slide and stack jobs): also measure each "
        "nucleus in these channels (0-based "
        "indices or names, commas between, or `all`), at the same z / t or projection: two columns each, "
        "mean_intensity_KEY and integrated_intensity_KEY (KEY: the channel's name with anything but "
        "letters, digits and _ made _, or c{index} for an unnamed channel) — e.g. segment on DAPI and "
        "measure a marker's intensity per nucleus",
    ),
    measure_project: Project | None = Query(
        None, description="with measure=: read the measured channels as this projection over Z, whatever "
        "plane is segmented — e.g. project=max&measure_project=sum segments on the maximum (segments best) "
        "and measures each nucleus's whole signal on the sum (measures best); default: the segmented plane's "
        "z or projection",
    ),
) -> microscopy.Selection:
    """Which plane of a multi-channel / multi-plane image; a stack without z/t/project, or
    several channels without channel, is a 422 that lists the choices (never a guess)."""
    try:
        measured = microscopy.measure_choice(measure)
    except ValueError as exc:
        raise InvalidOptions(
            str(exc), errors=[{"loc": ["query", "measure"], "msg": str(exc), "type": "value_error"}]
        ) from exc
    if measure_project is not None and not measured:
        detail = (f"measure_project={measure_project.value} projects the channels measured: give them "
                  "with measure=")
        raise InvalidOptions(
            detail, errors=[{"loc": ["query", "measure_project"], "msg": detail, "type": "value_error"}]
        )
    return microscopy.Selection(
        channel=channel,
        z=z,
        t=t,
        project=None if project is None else project.value,
        pixel_size_um=pixel_size,
        polarity=polarity.value,
        series=series,
        measure=measured,
        measure_project=None if measure_project is None else measure_project.value,
    )


_EXPAND_DESCRIPTION = (
    "output=objects / geojson / rois, and slide and stack jobs: a cell around each nucleus, the "
    "nucleus grown by up to this many "
    "pixels into the background and never into a neighbour's (QuPath's cell expansion): the table gains "
    "cell_area and cytoplasm_area (the cell less its nucleus), and with measure= each channel's mean and "
    "integrated intensity over the cytoplasm; the GeoJSON holds QuPath cells with their nuclei, the ROI set "
    "a cell ROI after each nucleus's; a slide job's store also labels/cells; a stack job (output=labels3d) "
    "grows the cells in 3-D (z in the file's z-step) into cells3d.tif, with cell_volume_voxels and "
    "cytoplasm_volume_voxels"
)
_BACKGROUND_RING_DESCRIPTION = (
    "with measure= (output=objects / geojson, and slide jobs' tables): each measured channel's local "
    "background around each "
    "nucleus, the median of a ring of this many pixels starting 2 px outside it (outside its cell with "
    "expand=), each background pixel given to its nearest nucleus: per channel the columns "
    "background_KEY, mean_intensity_corrected_KEY (the mean less it) and integrated_intensity_corrected_KEY "
    "(the sum less area × it: corrected total fluorescence), with expand= the cytoplasm's two corrected "
    "columns too; empty where the ring holds fewer than 10 pixels (a nucleus packed among others)"
)
_DIAMETER_DESCRIPTION = (
    "typical nucleus diameter in the image, pixels; the image is resized so its nuclei come out at "
    "the model's trained diameter (GET /v1/model, defaults.nucleus_diameter) and the outputs come back "
    "at the input's size. Default: estimated per image by a quick model pass at a few scales "
    "(X-Nucleus-Diameter and X-Diameter-Source say what was used)"
)


def segment_options(
    output: Output = Query(
        Output.mask,
        description="mask: 0/255 8-bit PNG · probability: foreground probability as an 8- or 16-bit PNG "
        "(see bits) · labels: 16-bit PNG of separate objects (count in X-Object-Count) · "
        "overlay: the input in colour with each object outlined · objects: one row per nucleus (CSV, or "
        "JSON with Accept: application/json) · geojson: QuPath-ready polygons · rois: ImageJ ROI set "
        "(.zip) for Fiji's ROI Manager · ome-zarr: POST /jobs only — a slide read by region from a tiled "
        "(OME-)TIFF or OME-Zarr and written band by band as OME-Zarr (probability, labels, mask, with a "
        "pyramid) plus an objects CSV, in bounded memory · labels3d: POST /jobs only — every z-slice of a "
        "stack segmented at one nucleus diameter and its nuclei linked across slices: a 3-D label image "
        "(ImageJ hyperstack) and one row per nucleus (volume, µm³ with the voxel size)",
    ),
    threshold: float | None = Query(
        None, gt=0, lt=1, description="foreground probability threshold; default from the model"
    ),
    bits: int = Query(
        8, description="bit depth of output=probability: 8 or 16", json_schema_extra={"enum": [8, 16]}
    ),
    tile_size: int | None = Query(
        None,
        ge=16,
        description="tile edge in pixels (≤ the server's max_tile_size, see GET /v1/model); "
        "a tile at least the image size means a single pass",
    ),
    overlap: int | None = Query(None, ge=0, description="overlap between tiles in pixels (< tile_size / 2)"),
    split: Split | None = Query(None, description=_SPLIT_DESCRIPTION),
    diameter: float | None = Query(None, ge=1, le=1000, description=_DIAMETER_DESCRIPTION),
    expand: float | None = Query(None, gt=0, le=outputs.MAX_EXPAND_PX, description=_EXPAND_DESCRIPTION),
    background_ring: float | None = Query(
        None, gt=0, le=background.MAX_RING_PX, description=_BACKGROUND_RING_DESCRIPTION
    ),
    geojson: bool = Query(
        False,
        description="output=ome-zarr (POST /jobs) only: also write objects.geojson, every nucleus' outline "
        "as output=geojson gives them (QuPath detections), streamed object by object (~1 kB per nucleus)",
    ),
    min_iou: float | None = Query(
        None, gt=0, le=1,
        description="output=labels3d (POST /jobs) only: the overlap (intersection over union) a nucleus "
        "needs with one in the slice before to be the same nucleus; default 0.25",
    ),
    plane: microscopy.Selection = Depends(plane_selection),
    _known: None = Depends(only_query_params(
        *_OPTION_NAMES, *_JOB_OPTION_NAMES, *_PLANE_OPTION_NAMES, *_STORED_OPTION_NAMES
    )),
    accept: str = Header("", include_in_schema=False),
) -> SegmentOptions:
    _check_bits(bits)
    if geojson and output is not Output.ome_zarr:
        raise InvalidOptions(
            f"geojson=true adds outlines to a slide job's files (output=ome-zarr); for output={output.value} "
            "ask output=geojson for the outlines instead",
            errors=[{"loc": ["query", "geojson"], "msg": "only with output=ome-zarr", "type": "value_error"}],
        )
    _check_stack_options(output, min_iou, plane)
    _check_measure(output, plane)
    _check_expand(output, expand)
    _check_background_ring(output, plane, background_ring)
    json_table = "application/json" in accept and "text/csv" not in accept
    return SegmentOptions(
        output, threshold, bits, tile_size, overlap, json_table, split, diameter, plane, geojson=geojson,
        min_iou=min_iou, expand=expand, background_ring=background_ring,
    )


def _check_expand(output: Output, expand: float | None) -> None:
    """``expand=`` only where objects are written one by one with their outlines (and slides)."""
    if expand is not None and output.value not in EXPANDED_OUTPUTS:
        kinds = ", ".join(EXPANDED_OUTPUTS)
        raise InvalidOptions(
            f"expand= gives each nucleus a cell in output={kinds}; output={output.value} has none",
            errors=[{"loc": ["query", "expand"], "msg": f"only with output={kinds}", "type": "value_error"}],
        )


def _check_background_ring(
    output: Output, plane: microscopy.Selection, background_ring: float | None
) -> None:
    """``background_ring=`` measures the channels of ``measure=``, in the tables of one image or a slide."""
    if background_ring is None:
        return
    if not plane.measure:
        detail = ("background_ring= measures the local background of the channels measured: give them "
                  "with measure=")
    elif output.value not in BACKGROUND_OUTPUTS:
        allowed = ", ".join(BACKGROUND_OUTPUTS)
        detail = (f"background_ring= is measured in output={allowed}; a stack job's 3-D table "
                  f"(output={output.value}) does not measure it")
    else:
        return
    raise InvalidOptions(
        detail, errors=[{"loc": ["query", "background_ring"], "msg": detail, "type": "value_error"}]
    )


def _check_measure(output: Output, plane: microscopy.Selection) -> None:
    """``measure=`` only where there is a table to add columns to."""
    if plane.measure and output.value not in MEASURED_OUTPUTS:
        allowed = ", ".join(MEASURED_OUTPUTS)
        raise InvalidOptions(
            f"measure= adds columns to the objects table of output={allowed}; output={output.value} has "
            "no table of measurements",
            errors=[{"loc": ["query", "measure"], "msg": f"only with output={allowed}",
                     "type": "value_error"}],
        )


def _check_stack_options(output: Output, min_iou: float | None, plane: microscopy.Selection) -> None:
    """``min_iou`` only for a stack job; a stack job takes every slice, so no ``z`` or ``project``."""
    if min_iou is not None and output is not Output.labels3d:
        raise InvalidOptions(
            f"min_iou links a stack's slices (output=labels3d, POST /jobs); output={output.value} "
            "segments one plane",
            errors=[{"loc": ["query", "min_iou"], "msg": "only with output=labels3d", "type": "value_error"}],
        )
    chosen = [name for name, value in (("z", plane.z), ("project", plane.project),
                                       ("measure_project", plane.measure_project)) if value is not None]
    if output is Output.labels3d and chosen:
        raise InvalidOptions(
            f"output=labels3d segments every z-slice and links them; leave out {' and '.join(chosen)} "
            "(for one slice or the projection, ask a 2-D output)",
            errors=[{"loc": ["query", name], "msg": "not with output=labels3d", "type": "value_error"}
                    for name in chosen],
        )


def batch_options(
    output: Output = Query(Output.mask, description="as for POST /segment"),
    threshold: float | None = Query(None, gt=0, lt=1, description="as for POST /segment"),
    bits: int = Query(8, description="as for POST /segment", json_schema_extra={"enum": [8, 16]}),
    tile_size: int | None = Query(None, ge=16, description="as for POST /segment"),
    overlap: int | None = Query(None, ge=0, description="as for POST /segment"),
    split: Split | None = Query(None, description="as for POST /segment"),
    diameter: float | None = Query(
        None, ge=1, le=1000, description="as for POST /segment (one for every file; default: per file)"
    ),
    expand: float | None = Query(None, gt=0, le=outputs.MAX_EXPAND_PX, description="as for POST /segment"),
    background_ring: float | None = Query(
        None, gt=0, le=background.MAX_RING_PX, description="as for POST /segment"
    ),
    plane: microscopy.Selection = Depends(plane_selection),
    _known: None = Depends(only_query_params(*_OPTION_NAMES, *_PLANE_OPTION_NAMES)),
) -> SegmentOptions:
    _check_bits(bits)
    options = SegmentOptions(
        output, threshold, bits, tile_size, overlap, split=split, diameter=diameter, plane=plane,
        expand=expand, background_ring=background_ring,
    )
    refuse_job_only(options)
    _check_measure(output, plane)
    _check_expand(output, expand)
    _check_background_ring(output, plane, background_ring)
    return options


def _check_bits(bits: int) -> None:
    # A Literal[8, 16] would reject the query string "16" (literals validate strictly).
    if bits not in (8, 16):
        raise InvalidOptions(
            f"bits must be 8 or 16, got {bits}",
            errors=[{"loc": ["query", "bits"], "msg": "must be 8 or 16", "type": "enum"}],
        )


# --- the work (runs on a worker thread) ---------------------------------------------------------


@dataclass
class Result:
    body: bytes
    media_type: str
    width: int
    height: int
    tiles: int
    tile_size: int
    overlap: int
    object_count: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    scale: pipeline.ScaleChoice | None = None  # the nucleus scale the image was segmented at
    # Human-readable notices for the caller (X-Warnings, JSON outputs): what was assumed or ignored.
    warnings: list[str] = field(default_factory=list)
    plane: microscopy.Plane | None = None  # which channel / plane / projection, and the pixel size
    # The prediction came from the cache (service.prediction_cache): True / False; None when the
    # cache is off or the image was predicted band by band.
    reused: bool | None = None

    @property
    def inference_ms(self) -> float:
        return self.timings_ms.get("infer", 0.0)


def run_pipeline(
    runtime: Runtime,
    data: bytes,
    options: SegmentOptions,
    should_stop: Callable[[], bool],
    reserve: Callable[[int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cached: bool = True,
) -> Result:
    """Bytes → decoded image → tiled prediction → output array → PNG. Blocking; raises domain errors.

    ``reserve(pixels)``: called once the nucleus scale is known, with the pixels the model will
    work on (more than the upload's when the image is enlarged); it may wait for admission room
    or raise (503) — before any tile of the prediction is computed. ``progress(done, total)``:
    the prediction's tiles (``segment.predict``), for a job's status. ``cached``: look for the
    plane and its prediction in the runtime's prediction cache and keep them there
    (``service.prediction_cache``; a hit reports no tile progress).
    """
    engine, batcher = runtime.components()
    md = engine.metadata
    tiling = runtime.tiling(md, options.tile_size, options.overlap)
    settings = runtime.settings
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    cache = runtime.prediction_cache
    kept = cache.entry(plane_key(engine, data, options, tiling, settings)) if cached else None
    plane = kept.plane if kept is not None else None
    if plane is None or options.plane.measure:
        # The one plane to segment: channel / z / t / projection chosen, pixel limits checked from
        # the header first; a stack or multi-channel image without a choice is a SelectionError (422).
        # Channels to measure are read afresh each time (measure= is not in the cache's key: a table
        # with a marker's intensities reuses the prediction the outlines shown were drawn from).
        plane = microscopy.select(
            data, options.plane, settings.max_pixels, settings.decode_limits(), md.in_channels, should_stop
        )
        if kept is not None and kept.plane is None:
            frozen(plane.image)  # kept: shared by later requests
            kept.keep_plane(replace(plane, measured=()), plane.image.nbytes)
    if should_stop():  # decoding counts against the request's time: don't start the model late
        raise segment.Cancelled("stopped after decoding")
    image = plane.image
    warnings = list(plane.warnings)
    t1 = time.perf_counter()
    timings["decode"] = 1000 * (t1 - t0)

    def infer(batch: np.ndarray) -> np.ndarray:
        return batcher.infer(batch, should_stop)

    # The measured planes (measure=) are held through the request too, and cells (expand=) take a
    # distance transform of the image: admitted with the model's pixels.
    pixels = image.shape[0] * image.shape[1]
    # A background ring (background_ring=) takes another such transform, the cells held meanwhile.
    transforms = (options.expand is not None) + (options.background_ring is not None)
    extra = admitted_extra(len(plane.measured), pixels) + transforms * cells_admitted(pixels)

    def reserve_with_extras(pixels: int) -> None:
        assert reserve is not None
        reserve(pixels + extra)

    planned = pipeline.predict_plane(
        image,
        infer,
        md,
        options.diameter,
        settings.max_pixels,
        tile_size=tiling.tile_size,
        overlap=tiling.overlap,
        batch_size=settings.max_batch_size,
        should_stop=should_stop,
        progress=progress,
        reserve=None if reserve is None else reserve_with_extras,
        window_policy=windows.policy(settings, tiling.source),
        kept=kept,
        polarity=plane.polarity,
    )
    scale, prediction = planned.scale, planned.prediction
    reused = None  # not kept: the cache is off, or the prediction runs band by band
    if kept is not None and isinstance(prediction, windows.WindowedPrediction):
        cache.discard(kept)  # its pixels alone would push out planes whose predictions are kept
    elif kept is not None:
        reused = planned.reused
        metrics.PREDICTION_CACHE.labels(outcome="hit" if reused else "miss").inc()
    warnings += planned.warnings
    timings["scale"] = planned.scale_ms
    timings["infer"] = planned.predict_ms
    t2 = time.perf_counter()

    body, media_type, count = render(
        options, image, prediction, md, settings.count_objects_on_every_output, plane=plane, warnings=warnings
    )
    timings["output"] = 1000 * (time.perf_counter() - t2)
    if isinstance(prediction, windows.WindowedPrediction):  # it ran while rendering, band by band
        timings["infer"] += prediction.infer_ms
        timings["output"] -= prediction.infer_ms
        warnings += prediction.warnings

    for stage in ("decode", "infer", "output"):
        metrics.SEGMENT_SECONDS.labels(stage=stage).observe(timings[stage] / 1000)
    height, width = image.shape[:2]
    metrics.PIXELS.inc(width * height)
    return Result(
        body=body,
        media_type=media_type,
        width=width,
        height=height,
        tiles=prediction.tiles,
        tile_size=prediction.tile_size,
        overlap=prediction.overlap,
        object_count=count,
        timings_ms=timings,
        scale=scale,
        warnings=warnings,
        plane=plane.without_pixels(),  # the response outlives the pixels: don't keep them
        reused=reused,
    )


def plane_key(
    engine: Engine, data: bytes, options: SegmentOptions, tiling: Tiling, settings: Settings
) -> PlaneKey:
    """What decides the plane a request reads and the predictions made on it, bar the diameter,
    which ``pipeline.predict_plane`` keys itself (threshold and split act after the prediction)."""
    return PlaneKey(
        upload=PlaneKey.digest(data),
        # measured channels change no prediction
        selection=replace(options.plane, measure=(), measure_project=None),
        model=(engine.checksum, str(engine.path), engine.metadata.precision, tuple(engine.providers)),
        reading=(
            settings.max_pixels,
            settings.decode_limits(),
            tiling.tile_size,
            tiling.overlap,
            tiling.source,
            settings.max_batch_size,
        ),
    )


def object_params(options: SegmentOptions, md: ModelMetadata) -> objects.ObjectParams:
    """The model's object parameters with the request's ``split`` applied."""
    split = None if options.split is None else options.split.value
    try:
        return objects.params_for_model(md, split)
    except ValueError as exc:
        raise InvalidOptions(
            str(exc), errors=[{"loc": ["query", "split"], "msg": str(exc), "type": "value_error"}]
        ) from exc


def checked_engine(runtime: Runtime, options: SegmentOptions) -> Engine:
    """The ready engine, once the options are checked against its model: every 503 or 422
    that needs no image comes before the body is read."""
    engine, _ = runtime.require_ready()
    runtime.tiling(engine.metadata, options.tile_size, options.overlap)
    object_params(options, engine.metadata)
    if options.diameter is not None and engine.metadata.nucleus_diameter is None:
        md = engine.metadata
        message = (
            f"diameter needs a model that records the nucleus diameter it was trained at; "
            f"{md.name} {md.version} does not (it segments images at their own scale)"
        )
        error = {"loc": ["query", "diameter"], "msg": message, "type": "value_error"}
        raise InvalidOptions(message, errors=[error])
    return engine


def render(
    options: SegmentOptions,
    image: np.ndarray,
    prediction: segment.Prediction | windows.WindowedPrediction,
    md: ModelMetadata,
    count_every_output: bool = True,
    plane: microscopy.Plane | None = None,
    warnings: list[str] | None = None,
) -> tuple[bytes, str, int | None]:
    """The requested output encoded: ``(body, media type, object count or None)``.

    ``plane``: what was segmented (its pixel size adds the µm columns; GeoJSON carries it and
    ``warnings`` in its properties).

    ``count_every_output`` (``UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT``): also count objects for
    mask/probability (by their split seeds, without labelling: ``objects.count_objects``);
    deployments that want no count at all may turn it off (docs/benchmarks.md).
    ``prediction`` may be at the model's nucleus scale; every output is on ``image``'s grid.
    """
    threshold = options.threshold if options.threshold is not None else md.threshold
    # The overlay outlines each object (touching nuclei visibly apart), so it always labels;
    # mask and probability need only the count, which costs a fraction of labelling.
    count_only = options.output in (Output.mask, Output.probability)
    grid = pipeline.on_input_grid(
        prediction,
        md,
        image.shape[:2],
        threshold,
        object_params(options, md) if count_every_output or not count_only else None,
        count_only=count_only,
        need=outputs.NEEDS[options.output.value],
    )
    count = grid.count
    body, media_type = outputs.encode(
        options.output.value,
        image,
        probability=grid.probability,
        mask=grid.mask,
        labels=grid.labels,
        plane=plane,
        warnings=warnings or (),
        bits=options.bits,
        json_table=options.json_table,
        expand=options.expand,
        background_ring=options.background_ring,
    )
    return body, media_type, count


# --- HTTP glue -----------------------------------------------------------------------------------


def problem_for(exc: Exception) -> ProblemError | None:
    """Domain errors → the problem the client gets; None for anything unexpected."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, microscopy.SelectionError):
        return selection_problem(exc)
    if isinstance(exc, structure.TooComplex):  # too many pages, tags, chunks, segments, metadata bytes
        return ProblemError(str(exc), status=413, slug=exc.slug, title=exc.title)
    if isinstance(exc, imaging.ImageTooLarge):
        return ProblemError(str(exc), status=413, slug="image-too-large", title="Image too large")
    if isinstance(exc, imaging.UnsupportedImageType):
        return ProblemError(
            str(exc), status=415, slug="unsupported-image-type", title="Unsupported image type",
            extra={"choices": exc.choices} if exc.choices else None,
        )
    if isinstance(exc, imaging.ImageError):
        return ProblemError(str(exc), status=400, slug="undecodable-image", title="Undecodable image")
    if isinstance(exc, Overloaded):
        metrics.REJECTED.labels(reason="tile_queue_full").inc()
        return ServiceUnavailable(
            str(exc), retry_after_s=exc.retry_after_s, slug="overloaded", title="Overloaded"
        )
    if isinstance(exc, BatcherClosed):
        return ServiceUnavailable(str(exc), retry_after_s=5, slug="shutting-down", title="Shutting down")
    return None


@contextmanager
def as_problems() -> Iterator[None]:
    """Domain errors raised inside leave as the HTTP problem :func:`problem_for` gives them;
    anything unexpected leaves as it is (a logged 500)."""
    try:
        yield
    except Exception as exc:
        problem = problem_for(exc)
        if problem is None:
            raise
        raise problem from exc


def selection_problem(exc: microscopy.SelectionError) -> InvalidOptions:
    """422 naming the query options concerned, with what the image offers in ``choices``."""
    missing = exc.missing
    return InvalidOptions(
        str(exc),
        slug="choose-plane" if missing else "invalid-options",
        title="Choose a channel or plane" if missing else "Invalid request options",
        errors=[
            {"loc": ["query", p], "msg": "required for this image" if missing else "not in this image",
             "type": "missing" if missing else "value_error"}
            for p in exc.params
        ],
        extra={"choices": exc.choices},
    )


class Cancellation:
    """The flag a request's tiles check: client disconnected or request timed out."""

    def __init__(self, timeout_s: float) -> None:
        self.disconnected = threading.Event()
        self.deadline = time.monotonic() + timeout_s

    def __call__(self) -> bool:
        return self.disconnected.is_set() or time.monotonic() > self.deadline

    @property
    def timed_out(self) -> bool:
        return not self.disconnected.is_set() and time.monotonic() > self.deadline


async def _watch_disconnect(request: Request, stop: Cancellation) -> None:
    while not stop.disconnected.is_set():
        if await request.is_disconnected():
            stop.disconnected.set()
            return
        await anyio.sleep(_DISCONNECT_POLL_S)


async def run_cancellable(request: Request, work: Callable[[Cancellation], Any], timeout_s: float) -> Any:
    """Run ``work(stop)`` on a worker thread while watching for the client to go away."""
    stop = Cancellation(timeout_s)
    result: Any = None
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_disconnect, request, stop)
        try:
            result = await anyio.to_thread.run_sync(work, stop)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            error = exc  # raised inside the group it would arrive wrapped in an ExceptionGroup
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


def is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, BatcherCancelled | segment.Cancelled | microscopy.DecodeCancelled)


def cancelled_response(stop: Cancellation, timeout_s: float) -> Response:
    """What a cancelled request answers: raises the 503 timeout problem, else 499 (client gone)."""
    if stop.timed_out:
        raise ServiceUnavailable(
            f"segmentation took longer than {timeout_s:g} s (UNET_REQUEST_TIMEOUT_S) and was abandoned",
            retry_after_s=5,
            slug="timeout",
            title="Request timed out",
        )
    return Response(status_code=CLIENT_CLOSED)


async def upload_pixels(runtime: Runtime, data: bytes) -> int:
    """What the upload costs admission: its plane's pixels from the header (a worker thread:
    hostile headers can be slow); 400/413/415 problems for a header that says no."""
    settings = runtime.settings
    with as_problems():
        return await anyio.to_thread.run_sync(
            workload.plane_pixels, data, settings.max_pixels, settings.decode_limits()
        )


def upload_content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ('' when none was sent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def multipart_file(request: Request) -> UploadFile:
    """The multipart form's field ``file`` (422 when it has none)."""
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidOptions(
            "the multipart request has no file field named 'file'",
            errors=[{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}],
        )
    return upload


def no_image() -> BadRequest:
    return BadRequest(
        "no image: send it as multipart field 'file' or as the raw body with an image/* Content-Type",
        slug="no-image",
        title="No image",
    )


def unsupported_media_type(content_type: str) -> ProblemError:
    return ProblemError(
        f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data with field "
        "'file', or the raw image bytes with Content-Type image/png, image/tiff, image/jpeg or image/bmp",
        status=415,
        slug="unsupported-media-type",
        title="Unsupported media type",
    )


async def read_single_upload(request: Request, upload: str | None = None) -> bytes:
    """The image bytes: multipart field ``file`` or the raw body (``image/*``); with ``upload``,
    the stored upload of that id instead (a read-only map: ``service.uploads``)."""
    if upload is not None:
        stored = await stored_uploads.open_stored(request, upload)
        request.state.upload_filename = stored.filename
        return stored  # type: ignore[return-value]  # a map reads as bytes do (microscopy.container_stream)
    content_type = upload_content_type(request)
    if content_type == "multipart/form-data":
        upload = await multipart_file(request)
        request.state.upload_filename = upload.filename  # names the output (Content-Disposition)
        return await upload.read()
    if content_type.startswith("image/") or content_type in RAW_TYPES:
        return await request.body()
    if not content_type:
        body = await request.body()
        if not body:
            raise no_image()
    raise unsupported_media_type(content_type)


def result_headers(runtime: Runtime, result: Result) -> dict[str, str]:
    md = runtime.engine.metadata if runtime.engine else None
    headers = {
        "X-Model-Name": md.name if md else "",
        "X-Model-Version": md.version if md else "",
        "X-Tiles": str(result.tiles),
        "X-Tile-Size": str(result.tile_size),
        "X-Tile-Overlap": str(result.overlap),
        "X-Inference-Ms": f"{result.inference_ms:.1f}",
        "X-Image-Width": str(result.width),
        "X-Image-Height": str(result.height),
        "X-Image-Pixels": str(result.width * result.height),
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in result.timings_ms.items()),
    }
    if result.object_count is not None:
        headers["X-Object-Count"] = str(result.object_count)
    if result.scale is not None:
        headers["X-Diameter-Source"] = result.scale.source
        headers["X-Scale-Factor"] = f"{result.scale.factor:.4g}"
        if result.scale.diameter is not None:
            headers["X-Nucleus-Diameter"] = f"{result.scale.diameter:.1f}"
    if result.plane is not None:
        headers.update(plane_headers(result.plane))
    if result.warnings:
        headers["X-Warnings"] = json.dumps(result.warnings, ensure_ascii=True)
    if result.reused is not None:
        headers["X-Prediction-Cache"] = "hit" if result.reused else "miss"
    return headers


def plane_headers(plane: microscopy.Plane) -> dict[str, str]:
    """What was segmented: ``X-Channel`` (index) and ``X-Channel-Name`` (percent-encoded UTF-8)
    when the image has several channels, ``X-Z`` / ``X-T`` / ``X-Projection`` when it has planes,
    ``X-Pixel-Size-Um`` (``x`` or ``x,y``) and ``X-Pixel-Size-Source`` when the size is known,
    ``X-Series`` when the file holds several images."""
    headers: dict[str, str] = {}
    if plane.layout.series_count > 1:
        headers["X-Series"] = str(plane.layout.series)
    if plane.channel is not None:
        headers["X-Channel"] = str(plane.channel.index)
        if plane.channel.name:
            headers["X-Channel-Name"] = quote(plane.channel.name, safe=" ()+-_.")
    if plane.mixed:
        headers["X-Channel"] = microscopy.MIX
    if plane.z is not None:
        headers["X-Z"] = str(plane.z)
    if plane.t is not None:
        headers["X-T"] = str(plane.t)
    if plane.projection is not None:
        headers["X-Projection"] = f"{plane.projection}-z"
    if plane.pixel_size is not None:
        headers["X-Pixel-Size-Um"] = plane.pixel_size.header()
        headers["X-Pixel-Size-Source"] = plane.pixel_size.source
    return headers


IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "PNG, JPEG, TIFF, BMP, Zeiss CZI, Leica LIF or Nikon ND2 image",
                    }
                },
            }
        },
        **{
            t: {"schema": {"type": "string", "format": "binary"}}
            for t in ("image/png", "image/tiff", "image/jpeg", "image/bmp", "application/octet-stream")
        },
    },
    "description": "The image, as multipart field `file` or as the raw body with its image/* Content-Type "
    "(`curl --data-binary @cells.tif -H 'Content-Type: image/tiff'`).",
}

_PNG_HEADERS = {
    "X-Model-Version": {
        "description": "version of the model that produced the result",
        "schema": {"type": "string"},
    },
    "X-Tiles": {"description": "tiles run through the model", "schema": {"type": "integer"}},
    "X-Inference-Ms": {
        "description": "time spent tiling and running the model, ms",
        "schema": {"type": "number"},
    },
    "X-Image-Pixels": {"description": "width × height of the input", "schema": {"type": "integer"}},
    "X-Object-Count": {
        "description": "separate objects (nuclei) found at the threshold; on every output unless "
        "the server sets UNET_COUNT_OBJECTS_ON_EVERY_OUTPUT=false (then labels/objects/geojson only)",
        "schema": {"type": "integer"},
    },
    "X-Request-ID": {"description": "the request id (echoed or generated)", "schema": {"type": "string"}},
    "Content-Disposition": {
        "description": "attachment with a file name from the upload's: `cells.tif` → `cells_mask.png`, "
        "`cells_objects.csv`, `cells.geojson` … (`filename*` too when it is not ASCII)",
        "schema": {"type": "string"},
    },
    "X-Nucleus-Diameter": {
        "description": "typical nucleus diameter used, input pixels (absent when not known)",
        "schema": {"type": "number"},
    },
    "X-Diameter-Source": {
        "description": "request (diameter=), estimated (per image), or model-scale (the model records no "
        "diameter, or no nuclei were found: the image was used at its own scale)",
        "schema": {"type": "string"},
    },
    "X-Scale-Factor": {
        "description": "model pixels per input pixel the image was resized by (1: not resized)",
        "schema": {"type": "number"},
    },
    "X-Channel": {
        "description": "the channel segmented (0-based index; `gray` when colours were mixed); only for "
        "images with several channels",
        "schema": {"type": "string"},
    },
    "X-Channel-Name": {"description": "its name from the file, percent-encoded UTF-8",
                       "schema": {"type": "string"}},
    "X-Z": {"description": "the z-slice segmented (0-based); only for z-stacks",
            "schema": {"type": "integer"}},
    "X-T": {"description": "the time point segmented (0-based)", "schema": {"type": "integer"}},
    "X-Series": {"description": "the image of a file holding several (OME-TIFF Images, CZI scenes, LIF "
                 "images) that was segmented (0-based)", "schema": {"type": "integer"}},
    "X-Projection": {"description": "`max-z` / `sum-z`: the maximum / sum projection over Z was segmented",
                     "schema": {"type": "string"}},
    "X-Pixel-Size-Um": {"description": "µm per pixel used for the µm columns: `x` or `x,y`; absent "
                        "when unknown",
                        "schema": {"type": "string"}},
    "X-Pixel-Size-Source": {
        "description": "ome | imagej | tiff | czi | request", "schema": {"type": "string"}
    },
    "X-Prediction-Cache": {"description": "hit: the model's prediction for this upload, plane and scale was "
                           "kept from an earlier request and reused (only the output was made); miss: "
                           "it was computed (and kept). Absent when the server keeps none "
                           "(UNET_PREDICTION_CACHE_MB=0) or the image was segmented band by band",
                           "schema": {"type": "string"}},
    "X-Warnings": {"description": "JSON array of human-readable notices: what was assumed or ignored, "
                   "and why a result may be unreliable (e.g. the image does not look like fluorescence)",
                   "schema": {"type": "string"}},
}


@router.post(
    "/segment",
    summary="Segment one image",
    response_class=Response,
    responses={
        200: {
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                # output=labels past 65535 objects (32-bit), objects (CSV / JSON), geojson
                "image/tiff": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/geo+json": {"schema": {"type": "object"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "PNG of the input's height and width (see output); a TIFF, CSV, JSON or GeoJSON "
            "for the outputs that say so",
            "headers": _PNG_HEADERS,
        },
        **problem_responses(400, 401, 413, 415, 422, 503),
        **stored_uploads.UNKNOWN_UPLOAD_RESPONSE,
    },
    openapi_extra={"requestBody": IMAGE_BODY},
)
async def segment_image(
    request: Request,
    options: SegmentOptions = Depends(segment_options),
    runtime: Runtime = Depends(get_runtime),
    upload: str | None = stored_uploads.UPLOAD_QUERY,
) -> Response:
    refuse_job_only(options)
    checked_engine(runtime, options)  # 503/422 before reading a large body
    data = await read_single_upload(request, upload)
    timeout_s = runtime.settings.request_timeout_s
    pixels = await upload_pixels(runtime, data)
    # Admission by work: the request's pixels against the budget (waits, or 503 + Retry-After,
    # before anything is decoded); the timeout counts from admission.
    async with runtime.admitted(pixels, disconnected=request.is_disconnected) as ticket:
        try:
            result: Result = await run_cancellable(
                request, lambda stop: segment_or_cancel(runtime, data, options, stop, ticket), timeout_s
            )
        except Exception as exc:
            metrics.IMAGES.labels(output=options.output.value, outcome="error").inc()
            problem = problem_for(exc)
            if problem is None:
                raise
            raise problem from exc
        if not isinstance(result, Abandoned):
            runtime.finished(ticket)
    if isinstance(result, Abandoned):
        metrics.IMAGES.labels(output=options.output.value, outcome="cancelled").inc()
        return cancelled_response(result.stop, timeout_s)
    metrics.IMAGES.labels(output=options.output.value, outcome="ok").inc()
    headers = result_headers(runtime, result)
    headers["Content-Disposition"] = _output_disposition(request, options.output.value, result.media_type)
    return Response(result.body, media_type=result.media_type, headers=headers)


def _output_disposition(request: Request, output: str, media_type: str) -> str:
    """``attachment; filename="cells_mask.png"``: named after the multipart file name, or the raw
    body's own Content-Disposition, else ``image_…``."""
    upload = getattr(request.state, "upload_filename", None) or filenames.request_filename(
        request.headers.get("content-disposition")
    )
    return filenames.content_disposition(filenames.output_name(upload, output, media_type))


@dataclass
class Abandoned:
    """Work given up because its client went away or its request timed out (``stop`` says which)."""

    stop: Cancellation


def segment_or_cancel(
    runtime: Runtime, data: bytes, options: SegmentOptions, stop: Cancellation, ticket: Ticket
) -> Result | Abandoned:
    """:func:`run_pipeline` on an admitted upload (its ticket grows to the scaled size); a
    cancellation comes back as :class:`Abandoned`, anything else is raised."""
    try:
        return run_pipeline(runtime, data, options, stop, lambda px: runtime.grow(ticket, px, stop))
    except Exception as exc:
        if is_cancel(exc):
            return Abandoned(stop)
        raise
