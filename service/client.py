"""Batch client for the segmentation service: files, folders or globs in, a folder of results out.

    unet-segment INPUT... --out DIR --url URL [--url URL2 ...] [--concurrency N] [--output KIND]
    unet-segment INPUT... --out DIR [--model FILE.onnx] [--output KIND]      # local mode, no server

With ``--url`` it needs only httpx and tqdm: no ONNX Runtime, NumPy or OpenCV, so it installs
anywhere the images are. Each image is one ``POST {url}/segment?output=KIND`` with the raw bytes
as the body. Without ``--url`` (local mode) the images are segmented in this process by the
Python API (``service.api``), on the same pipeline and ``UNET_*`` settings as the service, and
written exactly as the service would answer: the same files, summary, progress, resume and report.

Behaviour a batch of thousands of images needs:

- **Mirroring**: ``in/a/x.png`` → ``out/a/x.png``, so equal names in different folders don't collide
  (inputs that would still map to the same output are a usage error, before any request).
- **Resumable**: an output that already exists is skipped without a request unless ``--overwrite``;
  outputs are written to a temp file in the same folder and renamed, so an interrupted run never
  leaves a truncated file behind.
- **Spread and retried**: images go round-robin over the ``--url`` replicas (a retry moves on to the
  next one); 429/502/503/504, timeouts and connection errors are retried with exponential backoff and
  full jitter (capped at 10 s), waiting at least what the server's ``Retry-After`` asks, for at least
  ``--retry-for`` seconds (default 60, ``UNET_RETRY_FOR_S``) after an image's first failure: longer
  than a replica takes to restart, so a restart loses no image. 400/413/415/422 are the input's
  fault and are reported at once.
- **Accountable**: a progress bar with images/s and megapixels/s, a summary line, every failure as
  one JSON line (file, status, the server's problem detail) in the report, and the exit code:
  0 all succeeded or were already there, 1 some failed, 2 usage error (130 interrupted).
- **Jobs for large images**: an image over ``--job-above`` pixels (default 4096×4096, read from
  its header) is sent as ``POST /jobs`` instead, polled (``GET /jobs/{id}``, its tiles done/total
  shown on the progress bar), its result fetched and written exactly as ``/segment``'s would be,
  then the job is deleted so the server's disk is freed. A server without ``/jobs`` (404) gets
  ``/segment``.
- **Objects**: with ``--output objects|geojson`` a ``summary.csv`` in the output folder gives each
  image's object count and areas, and with ``--measure`` each channel's mean over its nuclei (a
  well's mean nuclear marker), read back from every output present (so resumed runs included).
- **Shards**: ``--shard INDEX/COUNT`` takes only this run's share of the images, so that COUNT runs
  (the pods of an indexed Kubernetes Job, ``docker/k8s/batch``) split a folder between them with
  no overlap and no coordination: the images sorted by their output path, every COUNT-th from
  INDEX. ``--shard COUNT`` takes INDEX from ``$JOB_COMPLETION_INDEX`` (set in each pod of an
  indexed Job). Shard membership comes from the whole list, before finished outputs are skipped,
  so a re-run shard does the same images and skips those already written. Each shard writes its
  own ``summary.shard-I-of-N.csv`` and ``failures.shard-I-of-N.jsonl``.
- **One scale for the batch**: ``--diameter once`` lets the service estimate the nucleus diameter
  on the first images (up to :data:`ONCE_IMAGES`, their median) and sends that value with every
  other image: the batch is segmented at one scale, and the per-image estimate — 1.6× the
  segmentation's own time on a 520×696 image, 4–5× on a 256² one — is paid a few times, not for
  every image. The value used is printed, to be given as ``--diameter PX`` next time.
- **Movies and stacks**: ``--t all`` / ``--z all`` make each time point (z-slice) of a file its
  own job and output (``NAME_t007.png``); each is sent as that frame alone, cut out of the file
  (a TIFF, a Zeiss CZI, a Leica LIF, a Nikon ND2 or an Olympus OIB) as a partial OME-TIFF that the
  service reads as the file
  (``service.frames``), so a movie is not uploaded once per frame and may be larger than the
  server's upload limit. ``--series`` sends the image chosen (an OME-TIFF's Image, a CZI's scene,
  a LIF project's image) cut out the same way, as that image alone: a LAS X project of gigabytes
  goes image by image.
- **3-D nuclei from a z-stack**: ``--z all --output labels --stitch-z`` links each stack's slices'
  nuclei into 3-D ones once every slice is written (``service.client_stacks``):
  ``NAME.labels3d.tif`` (a ZYX label hyperstack for Fiji / napari) and ``NAME.objects3d.csv``
  (volume, extent, centroid; µm and µm³ where the file gives its pixel size and z-step; with
  ``--measure`` each channel's intensity over the nucleus's voxels), and a
  line per stack in ``stacks.csv`` (nuclei, mean volume). All
  slices are segmented at one diameter (``--diameter PX``, else estimated on the stack's middle
  slice, as ``Segmenter.segment_stack``; with ``--shard``, ``--diameter PX`` is required).
- **Slides**: ``--output ome-zarr`` makes every file a slide job (``POST /jobs?output=ome-zarr``,
  the file streamed, or its path under ``--data-root``, also an OME-Zarr folder's; in local mode
  the slide job's own code, one slide at a time unless ``--concurrency`` says otherwise), written
  to ``NAME.ome.zarr/`` and ``NAME.objects.csv`` (and ``NAME.objects.geojson`` with ``--geojson``),
  the store renamed into place last (``service.client_slides``).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import csv
import email.utils
import functools
import glob
import io
import itertools
import json
import os
import random
import re
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
from tqdm import tqdm

from service import cellvoyager

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


#: Columns of the objects table that ``summary.csv`` averages over each image's objects: the
#: channels measured (``--measure``: ``mean_intensity_KEY``, over the cytoplasm with ``--expand``, and
#: less the local background with ``--background-ring``: ``mean_intensity_corrected_KEY``).
MEASURED_PREFIX = "mean_intensity_"


@dataclass(frozen=True)
class ObjectValues:
    """What the folder summary reads of an output: each object's area (px), and each measured
    channel's mean intensity per object (:data:`MEASURED_PREFIX` columns; an object without a value
    for one, e.g. a cell without cytoplasm, is left out of that one)."""

    areas: list[float]
    measured: dict[str, list[float]] = field(default_factory=dict)


def _table_values(rows: Iterable[Mapping[str, str]]) -> ObjectValues:
    values = ObjectValues([])
    for row in rows:
        values.areas.append(float(row["area"]))
        for column, value in row.items():
            if column.startswith(MEASURED_PREFIX):
                bucket = values.measured.setdefault(column, [])
                if value not in ("", None):
                    bucket.append(float(value))
    return values


def _csv_values(data: bytes) -> ObjectValues:
    """From the service's object table: CSV with an ``area`` column."""
    return _table_values(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _geojson_values(data: bytes) -> ObjectValues:
    """From a QuPath-style FeatureCollection: the measurements, else the polygon's area."""
    values = ObjectValues([])
    for feature in json.loads(data)["features"]:
        measurements = feature.get("properties", {}).get("measurements", {})
        measured = measurements.get("Area px^2")
        values.areas.append(float(measured) if measured is not None else _polygon_area(feature["geometry"]))
        for name, value in measurements.items():
            if name.startswith(MEASURED_PREFIX):
                values.measured.setdefault(name, []).append(float(value))
    return values


def _polygon_area(geometry: dict) -> float:
    """Shoelace area of a Polygon's outer ring, in px²."""
    ring = geometry["coordinates"][0]
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))
    return abs(twice) / 2


@dataclass(frozen=True)
class OutputKind:
    """What ``--output NAME`` asks the service for and how the answer is stored."""

    query: str  # value of ``?output=``
    suffix: str  # extension of the written file, replacing the image's own
    accept: str  # ``Accept`` header: lets the service pick the format where it offers several
    #: response media type → suffix, where the service may answer in another format than usual
    #: (labels past 65535 objects come back as 32-bit TIFF rather than wrap around in a PNG)
    alternates: Mapping[str, str] = field(default_factory=dict)
    #: output bytes → each object's area in px (and measured intensities); kinds that have it get a
    #: folder summary CSV
    object_values: Callable[[bytes], ObjectValues] | None = None

    def target_for(self, relative: Path) -> Path:
        """Where the output of the input at ``relative`` goes, relative to the output folder."""
        return relative.with_suffix(self.suffix)

    def path_for(self, target: Path, media_type: str) -> Path:
        return target.with_suffix(self.alternates.get(media_type, self.suffix))

    def existing(self, target: Path) -> Path | None:
        """The output already written for ``target`` in any of this kind's formats, if any."""
        for suffix in (self.suffix, *self.alternates.values()):
            if (path := target.with_suffix(suffix)).exists():
                return path
        return None

    def values(self, path: Path) -> ObjectValues:
        """Each object's area (px) and measured intensities in the output at ``path``, for the
        folder summary."""
        assert self.object_values is not None
        return self.object_values(path.read_bytes())


@dataclass(frozen=True)
class SlideOutput(OutputKind):
    """``--output ome-zarr``: a slide job's result, a folder (the OME-Zarr store) with the objects
    table beside it: ``in/a/x.ome.tif`` → ``out/a/x.ome.zarr/`` and ``out/a/x.objects.csv``, and
    with ``geojson`` (``--geojson``) the outlines too, ``out/a/x.objects.geojson``. The store is
    moved into place last (``service.client_slides``), so its presence means done."""

    table_suffix: str = ".objects.csv"
    geojson_suffix: str = ".objects.geojson"
    geojson: bool = False  # --geojson: the outlines are part of the result

    def target_for(self, relative: Path) -> Path:
        stem = relative.name[: len(relative.name) - len(relative.suffix)]
        if stem.lower().endswith(".ome"):  # x.ome.tif → x.ome.zarr, not x.ome.ome.zarr
            stem = stem[:-4]
        return relative.with_name(stem + self.suffix)

    def path_for(self, target: Path, media_type: str) -> Path:
        return target

    def existing(self, target: Path) -> Path | None:
        # A store from a run without --geojson lacks the outlines: not done when they are asked for.
        if not target.is_dir() or (self.geojson and not self.outlines(target).is_file()):
            return None
        return target

    def table(self, target: Path) -> Path:
        """The objects table beside the store ``target``."""
        return target.with_name(target.name.removesuffix(self.suffix) + self.table_suffix)

    def outlines(self, target: Path) -> Path:
        """The objects' outlines (GeoJSON) beside the store ``target``."""
        return target.with_name(target.name.removesuffix(self.suffix) + self.geojson_suffix)

    def values(self, path: Path) -> ObjectValues:
        with open(self.table(path), encoding="utf-8", newline="") as f:  # streamed: a slide has ~10⁶ rows
            return _table_values(csv.DictReader(f))


#: ``--output`` choices: the ``?output=`` value and the file each answer is written to.
OUTPUT_KINDS: dict[str, OutputKind] = {
    "mask": OutputKind("mask", ".png", "image/png"),
    "probability": OutputKind("probability", ".png", "image/png"),
    "labels": OutputKind("labels", ".png", "image/png, image/tiff", alternates={"image/tiff": ".tif"}),
    "overlay": OutputKind("overlay", ".png", "image/png"),
    "objects": OutputKind("objects", ".csv", "text/csv", object_values=_csv_values),
    "geojson": OutputKind("geojson", ".geojson", "application/geo+json", object_values=_geojson_values),
    "rois": OutputKind("rois", ".zip", "application/zip"),  # ImageJ ROI set for Fiji's ROI Manager
    # A slide (tiled OME-TIFF of any size) as a job: an OME-Zarr store + objects CSV (client_slides)
    "ome-zarr": SlideOutput("ome-zarr", ".ome.zarr", "application/json", object_values=_csv_values),
}


def output_kind(config: Config) -> OutputKind:
    """What ``config`` asks for: ``--output``'s kind, with ``--geojson`` for slides."""
    kind = OUTPUT_KINDS[config.kind]
    if isinstance(kind, SlideOutput) and config.geojson:
        return replace(kind, geojson=True)
    return kind


SUMMARY_NAME = "summary.csv"  # beside the per-image files, for kinds with ``object_values``
REPORT_NAME = "failures.jsonl"
#: Set by Kubernetes in each pod of an indexed Job (0 … completions − 1): ``--shard COUNT``'s INDEX.
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"


#: Image extensions the service accepts (lower case) → the ``Content-Type`` the upload is sent with.
CONTENT_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".czi": "application/octet-stream",  # Zeiss ZEN: no registered media type; the service sniffs it
    ".lif": "application/octet-stream",  # Leica LAS X: likewise
    ".nd2": "application/octet-stream",  # Nikon NIS-Elements: likewise
    ".oib": "application/octet-stream",  # Olympus FluoView: likewise
    ".zvi": "application/octet-stream",  # Zeiss AxioVision: likewise
    ".dv": "application/octet-stream",  # DeltaVision (softWoRx, OMX): likewise
    ".r3d": "application/octet-stream",  # DeltaVision's raw acquisitions: the same format
    # Olympus FluoView's folder format: the .oif is settings, its planes in the .oif.files folder
    # beside it; the client sends the planes chosen as one OME-TIFF (frames.convert_oif).
    ".oif": "application/octet-stream",
    ".ims": "application/octet-stream",  # Imaris (Andor Fusion, Dragonfly): likewise
    ".lsm": "image/tiff",  # Zeiss LSM and Aperio SVS are TIFFs under their own names
    ".svs": "image/tiff",
}

#: Statuses worth another try (overload, a replica restarting, a proxy timing out). Anything else
#: that is not 200 is final: the same bytes would get the same answer.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
#: Bytes per request when a file is stored on a replica piece by piece (``Segmenter._store``).
STORE_PIECE_BYTES = 64 << 20
BACKOFF_BASE_S = 0.5
#: Longest wait between two tries: a replica that is back is found within this long.
BACKOFF_CAP_S = 10.0
#: How long an image keeps being retried after its first failure, unless --retry-for says otherwise:
#: a restarted replica (process start, model load, warm-up) is back well within this.
RETRY_FOR_S = 60.0
RETRY_AFTER_CAP_S = 300.0  # a server asking for longer than this is treated as asking for this
#: Images with more pixels than this go through ``POST /jobs`` unless --job-above says otherwise:
#: 4096² is where one request holds the server for minutes on a CPU and ~3.5 GB of its memory
#: (issue #16), longer than a proxy or this client's --timeout may wait on one connection.
JOB_ABOVE_PIXELS = 4096 * 4096
#: --concurrency unless given: requests in flight (images in progress in local mode), except local
#: slides, one at a time (:func:`default_concurrency`).
DEFAULT_CONCURRENCY = 4
#: ``--diameter once``: the images whose estimated nucleus diameters (their median) set the batch's.
ONCE_IMAGES = 3
#: Polling a job: the first wait, growing ×1.5 per poll up to the cap (a job's tiles take seconds).
POLL_FIRST_S, POLL_GROWTH, POLL_CAP_S = 0.25, 1.5, 5.0
#: ``--stitch-z``: the diameter the stacks' slices are segmented at, kept for a resumed run.
STITCH_DIAMETER_FILE = ".stitch-z-diameter.json"
#: ``--stitch-z`` without a value: service.zstack.DEFAULT_MIN_IOU, read only when asked for (NumPy).
STITCH_DEFAULT = "default"
#: ``--t all`` / ``--z all`` / ``--series all``: every plane (image) along the axis, each its own job.
ALL_PLANES = "all"
#: The letter an output's name gets per axis of ``--… all``: ``movie_t007``, ``stack_z12``, ``plate_s03``.
PLANE_LETTERS = {"t": "t", "z": "z", "series": "s"}
#: A job answered ``failed`` with this problem type was cut short by a server restart: sent again.
JOB_INTERRUPTED = "/problems/job-interrupted"


class UsageError(Exception):
    """Bad command line or inputs: reported in one line, exit code 2, no request sent."""


@dataclass(frozen=True)
class Job:
    """One image to send and where its result goes."""

    source: Path
    target: Path
    #: the plane of a stack this job segments (``(("t", 7),)``, sent as ``t=7``), where ``--t all``
    #: or ``--z all`` made one job per plane; empty: the options of the command line alone
    plane: tuple[tuple[str, int], ...] = ()

    def label(self) -> str:
        """The input as a person names it: ``movie.tif``, or ``movie.tif t=7`` for one plane."""
        return " ".join([str(self.source), *(f"{axis}={index}" for axis, index in self.plane)])


@dataclass(frozen=True)
class Shard:
    """This run's share of the images: every ``count``-th from ``index`` (0-based)."""

    index: int
    count: int

    def name(self, filename: str) -> str:
        """``summary.csv`` → ``summary.shard-2-of-4.csv``: shards sharing an output folder never
        write (or remove) each other's summary and report."""
        stem, dot, suffix = filename.rpartition(".")
        return f"{stem}.shard-{self.index}-of-{self.count}{dot}{suffix}"


@dataclass
class Result:
    """What became of one job. ``status`` is the last HTTP status (None: no response at all)."""

    job: Job
    ok: bool
    status: int | None = None
    attempts: int = 0
    pixels: int | None = None
    object_count: int | None = None
    problem: dict | None = None  # the server's RFC 9457 problem details, when it sent them
    error: str | None = None  # one line for a human: what went wrong
    turn: int = 0  # index of the replica that answered last (a job is polled where it was sent)
    #: the nucleus diameter (px) the image was segmented at, and where it came from (``request``,
    #: ``estimated``, ``model-scale``), when the answer said so
    diameter: float | None = None
    diameter_source: str | None = None
    #: the image chosen with ``series`` was sent cut out of its file, alone (``Payload.image_cut``)
    image_cut: bool = False


@dataclass(frozen=True)
class Config:
    """Everything one run needs, as parsed from the command line."""

    inputs: tuple[str, ...]
    out: Path
    urls: tuple[str, ...]  # empty: local mode, in this process
    kind: str = "mask"
    split: str | None = None  # the service's split option; None: the model's own
    diameter: float | None = None  # typical nucleus diameter, px; None: the service estimates per image
    #: --diameter once: estimated on the first images, then sent with the rest (``diameter`` is None)
    diameter_once: bool = False
    # Which channel / plane of multi-channel or stacked files, and the pixel size (µm); None: not sent
    # (a file that needs a choice then fails with the server's 422, which lists the choices).
    channel: str | None = None
    z: int | None = None
    t: int | None = None
    project: str | None = None
    pixel_size: float | None = None
    polarity: str | None = None  # dark: nuclei darker than their background (bright field, H&E)
    #: which image of a file of several (OME-TIFF Images, CZI scenes, LIF images, ND2 positions)
    series: int | None = None
    #: --measure: channels each nucleus is measured in besides the one segmented ("all", or indices /
    #: names with commas between), for --output objects / geojson; None: not sent
    measure: str | None = None
    #: --measure-project: the measured channels read as this projection over Z ("max" / "sum"); None: not sent
    measure_project: str | None = None
    #: --expand: cells, each nucleus grown by this many px (--output objects / geojson / rois; with
    #: --stitch-z grown in 3-D when the slices are linked); None: none
    expand: float | None = None
    #: --background-ring: each measured channel's local background, a ring this many px wide around
    #: each nucleus (--output objects / geojson / ome-zarr with --measure); None: not sent
    background_ring: float | None = None
    #: ``--t all`` / ``--z all`` / ``--series all``: "t", "z" or "series", every plane (image) along
    #: it its own job and output
    every_plane: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    overwrite: bool = False
    timeout_s: float = 120.0
    retries: int | None = None  # most extra tries per image; None: as many as fit in retry_for_s
    retry_for_s: float = RETRY_FOR_S  # retry an image this long after its first failure
    api_key: str | None = None
    report: Path | None = None
    progress: bool = True
    model: Path | None = None  # local mode's ONNX file; None: the service's default (the bundled model)
    job_above: int | None = JOB_ABOVE_PIXELS  # pixels above which POST /jobs is used; None: never
    shard: Shard | None = None  # None: every image
    #: --data-root: the local folder the server sees as its UNET_DATA_ROOT; inputs under it are
    #: sent as ``{"path": ...}`` instead of their bytes (slides only). None: uploaded.
    data_root: Path | None = None
    #: --geojson (slides only): also each slide's outlines, NAME.objects.geojson.
    geojson: bool = False
    #: --stitch-z: link each stack's slices into 3-D nuclei at this IoU (``service.zstack``); None: no
    stitch_z: float | None = None

    def summary_path(self) -> Path:
        return self.out / (self.shard.name(SUMMARY_NAME) if self.shard else SUMMARY_NAME)

    def report_path(self) -> Path:
        if self.report is not None:
            return self.report
        return self.out / (self.shard.name(REPORT_NAME) if self.shard else REPORT_NAME)


# --------------------------------------------------------------------------- inputs → jobs


def _glob_root(pattern: str) -> Path:
    """The folder a glob's matches are mirrored relative to: its leading non-wildcard components."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts[:-1]))
    return Path(*fixed) if fixed else Path(".")


#: MetaXpress's preview of each image (``NAME_w1_thumb<GUID>.tif``: 80×64, squashed from the site),
#: which ImageXpress writes beside every image it records.
_METAXPRESS_THUMBNAIL = re.compile(r"_thumb[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.tiff?$", re.IGNORECASE)


def instrument_file(path: Path) -> str | None:
    """What a screening instrument writes beside a plate's images that is no image of the sample,
    by what it is (as faim-ipa's and Fractal's readers of these folders leave them out), else None:
    MetaXpress's thumbnails, and a Yokogawa CellVoyager's dark-current and shading-correction frames
    (``DC_*.tif``, ``SC_*.tif`` in a measurement folder, the one holding its ``.mrf``/``.mlf``)."""
    if _METAXPRESS_THUMBNAIL.search(path.name):
        return "MetaXpress thumbnails (*_thumb<GUID>.tif)"
    if path.name[:3].upper() in ("DC_", "SC_") and _cellvoyager_folder(path.parent):
        return "CellVoyager dark-current and shading-correction frames (DC_*.tif, SC_*.tif)"
    return None


@functools.lru_cache(maxsize=1024)
def _cellvoyager_folder(folder: Path) -> bool:
    return (folder / "MeasurementData.mlf").is_file() or any(folder.glob("*.mrf"))


def _is_image(path: Path) -> bool:
    """An image file by its type; not a plane of an Olympus OIF (its ``.oif.files`` folder): the
    ``.oif`` beside the folder is the image, its planes sent with it."""
    return (path.is_file() and path.suffix.lower() in CONTENT_TYPES
            and not path.parent.name.casefold().endswith(".oif.files"))


def _is_store(path: Path) -> bool:
    """An OME-Zarr store (a folder named ``*.zarr``): one slide, not a folder of images."""
    return path.suffix.lower() == ".zarr" and path.is_dir()


def _images_and_stores(folder: Path) -> list[Path]:
    """Image files and OME-Zarr stores under ``folder``, sorted; a store's own files (up to 10⁵
    chunks for a slide) are never listed."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        found += [base / d for d in dirs if _is_store(base / d)]
        dirs[:] = [d for d in dirs if not _is_store(base / d)]
        found += [base / f for f in files if _is_image(base / f)]
    return sorted(found)


def find_images(
    inputs: Iterable[str], stores: bool = False, left_out: dict[str, int] | None = None
) -> list[tuple[Path, Path]]:
    """Expand INPUT arguments into ``(image file, path relative to the output folder)`` pairs.

    A file maps to its name; a folder to its images found recursively, relative to the folder; a
    glob to its image matches, relative to the glob's leading fixed folders. With ``stores``
    (slides), an OME-Zarr store (``*.zarr`` folder) is an image too, never searched. What an
    instrument wrote beside the images that is none (:func:`instrument_file`) is left out of
    folders and globs, counted in ``left_out`` by kind; a file named is always taken. Raises
    :class:`UsageError` for an input that yields no image.
    """
    found: list[tuple[Path, Path]] = []
    for arg in inputs:
        path = Path(arg)
        if stores and _is_store(path):
            pairs = [(path, Path(path.name))]
        elif stores and path.is_dir():
            pairs = [(p, p.relative_to(path)) for p in _images_and_stores(path)]
        elif path.is_dir():
            pairs = [(p, p.relative_to(path)) for p in sorted(path.rglob("*")) if _is_image(p)]
        elif path.is_file():
            if path.suffix.lower() not in CONTENT_TYPES:
                raise UsageError(f"{arg}: not an image type the service accepts ({_allowed()})")
            pairs = [(path, Path(path.name))]
        elif glob.has_magic(arg):
            root = _glob_root(arg)
            matches = (Path(m) for m in sorted(glob.glob(arg, recursive=True)))
            pairs = [(p, p.relative_to(root)) for p in matches if _is_image(p) or (stores and _is_store(p))]
        else:
            raise UsageError(f"{arg}: no such file or folder")
        if not path.is_file():
            pairs = _without_instrument_files(pairs, left_out)
        if not pairs:
            raise UsageError(f"{arg}: no image files found ({_allowed()})")
        found.extend(pairs)
    return one_per_split_image(found)


def _without_instrument_files(
    pairs: list[tuple[Path, Path]], left_out: dict[str, int] | None
) -> list[tuple[Path, Path]]:
    kept = []
    for source, relative in pairs:
        kind = instrument_file(source)
        if kind is None:
            kept.append((source, relative))
        elif left_out is not None:
            left_out[kind] = left_out.get(kind, 0) + 1
    return kept


def instrument_pixel_size(source: Path) -> float | None:
    """µm per pixel of a plane whose instrument keeps it beside the file, not in it (a Yokogawa
    CellVoyager's ``MeasurementDetail.mrf``: ``service.cellvoyager``), sent as ``pixel_size=``
    where the command line gives none; None for every other file."""
    size = cellvoyager.pixel_size_um(source)
    return size[0] if size is not None and abs(size[0] - size[1]) <= 1e-9 * size[0] else None


@functools.lru_cache(maxsize=4096)
def _split_image_files(source: Path) -> tuple[Path, ...]:
    """The files of the OME-TIFF image ``source`` is one file of, where the image is split over
    several (``service.tiff_sets.image_files``); ``()`` for every other file. Kept per file for
    the run: planning asks, then each job's reading (twice in local mode), and for a set each ask
    opens every file of it."""
    if not source.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return ()  # without importing tifffile, which the HTTP mode of other files does not need
    try:
        from service import tiff_sets
    except ImportError:  # a client installed with httpx and tqdm alone: files are sent as they are
        return ()

    return tiff_sets.image_files(source)


def one_per_split_image(found: Sequence[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """``found`` with one file for each OME-TIFF image split over several files: the first of them
    listed, which is read as the set (:func:`job_bytes`); each of the others sent alone was a
    failure or a part of the image (a companion set's files each "no channel 'DAPI'", the others
    of a split by channel "page 0 is missing")."""
    kept: list[tuple[Path, Path]] = []
    covered: set[Path] = set()
    for source, relative in found:
        if source.resolve() in covered:
            continue  # before its set is worked out: that opens every file of the set
        covered.update(_split_image_files(source))
        kept.append((source, relative))
    return kept


def _allowed() -> str:
    return "allowed: " + ", ".join(sorted(CONTENT_TYPES))


def shard_jobs(jobs: Sequence[Job], out: Path, shard: Shard | None) -> list[Job]:
    """The jobs of ``shard``: all jobs sorted by output path (relative to ``out``, as POSIX text,
    so every machine sorts them alike), then every ``count``-th from ``index``.

    The shards of one COUNT are disjoint and together hold every job; the same inputs always give
    the same shards. Membership is decided on the whole list, not on what is left to do, so runs
    started at different moments (or re-run) still agree.
    """
    if shard is None:
        return list(jobs)
    ordered = sorted(jobs, key=lambda job: job.target.relative_to(out).as_posix())
    return ordered[shard.index :: shard.count]


def plan_jobs(
    found: Iterable[tuple[Path, Path]],
    out: Path,
    kind: OutputKind,
    every_plane: str | None = None,
    planes_of: Callable[[Path, str], int] | None = None,
) -> list[Job]:
    """One job per distinct image, its target mirrored under ``out`` with the kind's extension.

    The same file named twice is sent once; two different files that would write the same output
    (``a/x.png`` and ``b/x.png`` given as files, or ``x.png`` beside ``x.tif``) raise
    :class:`UsageError` rather than overwrite each other.

    ``every_plane`` (``"t"``, ``"z"`` or ``"series"``): a file with several planes (images) along
    that axis (``planes_of(source, axis)``, :func:`count_planes` by default) becomes one job per
    plane, written as ``NAME_t007`` (``NAME_s03`` for a series); a file with one is one job, named
    and sent as without it.
    """
    count = planes_of or count_planes
    jobs: dict[Path, Job] = {}
    for source, relative in found:
        planes = count(source, every_plane) if every_plane else 1
        for named, plane in _per_plane(relative, every_plane, planes):
            target = out / kind.target_for(named)
            other = jobs.get(target)
            if other is None:
                jobs[target] = Job(source, target, plane)
            elif other.source.resolve() != source.resolve():
                raise UsageError(
                    f"{other.source} and {source} would both be written to {target}; "
                    "pass their folders instead of the files, or run them separately"
                )
    return list(jobs.values())


def _per_plane(
    relative: Path, axis: str | None, planes: int
) -> list[tuple[Path, tuple[tuple[str, int], ...]]]:
    """``(name, plane)`` of each job of one file: ``movie_t000.tif`` … ``movie_t099.tif`` (zero-padded
    so that they sort in order) for 100 planes along ``axis``; the file's own name for one."""
    if axis is None or planes <= 1:
        return [(relative, ())]
    width = len(str(planes - 1))
    letter = PLANE_LETTERS[axis]
    return [
        (relative.with_name(f"{relative.stem}_{letter}{k:0{width}d}{relative.suffix}"), ((axis, k),))
        for k in range(planes)
    ]


def count_planes(source: Path, axis: str, series: int | None = None) -> int:
    """How many planes ``source`` holds along ``axis`` (``"t"`` or ``"z"``, in image ``series`` of a
    file holding several, None: the first; ``"series"``: images in the file), read from its header
    as the service reads it (``service.frames.file_layout``, on ``service.microscopy``'s reader); 1
    for a file that cannot be read so (it then fails as one job, with the reason the service
    gives)."""
    # Imported here: only --t all / --z all read files while planning (NumPy, tifffile).
    from service import frames
    from service.settings import get_settings

    # Only TIFFs, CZIs, LIFs, ND2s and OIBs hold planes; the header is read, not the file (a movie may be
    # larger than memory).
    layout = frames.file_layout(source, get_settings().max_pixels, None if axis == "series" else series)
    if layout is None:
        return 1
    if axis == "series":
        # A Micro-Manager position's file is that position, as sent whole: the acquisition's other
        # positions are the files beside it, each its own job.
        return 1 if layout.positions_in_files else layout.series_count
    return layout.planes.get(axis.upper(), 1)


class Payload(NamedTuple):
    """What is sent for a job: the bytes, their ``Content-Type``, and whether they are the image
    chosen with ``series`` cut out of its file (then sent without ``series=``: the cut holds that
    image alone)."""

    data: bytes
    content_type: str
    image_cut: bool = False
    #: the file's own bytes, whole (nothing could be cut out): past the server's upload limit it
    #: is stored there once (``POST /uploads``) and named (``Segmenter._via_stored``)
    whole: bool = False


def job_bytes(job: Job, config: Config) -> Payload:
    """What to segment for ``job``: the file's bytes, or a partial OME-TIFF cut out of it
    (``service.frames``) that the service reads as the file, so a movie or a project is not sent
    or read whole once per plane or image:

    - one plane of a stack (``--t all`` / ``--z all``): the pages that plane needs, read at the same
      ``t=``/``z=`` (``frames.cut_frame``);
    - one image of a file holding several (``--series``: an OME-TIFF's Images, a CZI's scenes, a LIF
      project's images): the pages of that image the choices need, sent without ``series=``
      (``frames.cut_image``), so a LAS X project of gigabytes goes one image at a time, within the
      server's upload limit;
    - an Olympus OIF (its ``.oif`` is settings, its planes in the folder beside it): the pages the
      choices need, read from the folder (``frames.convert_oif``).

    A file that cannot be cut is sent whole (with ``series=``), and the service says what it makes
    of it; an OIF, which is nothing without its folder, is not sent then.

    Raises:
        OSError: the file cannot be read (an OIF: its folder or a plane, with the reason).
    """
    series = dict(job.plane).get("series", config.series)
    frame = [(axis, index) for axis, index in job.plane if axis != "series"]
    folder_format = job.source.suffix.lower() == ".oif"  # its planes are not in the file sent
    split = not (frame or series is not None or folder_format) and bool(_split_image_files(job.source))
    if frame or series is not None or folder_format or split:
        # Imported here: only --t all / --z all / --series and OIFs cut files (NumPy, tifffile).
        from service import frames, imaging, microscopy
        from service.settings import get_settings

        selection = microscopy.Selection(channel=config.channel, z=config.z, t=config.t,
                                         project=config.project, polarity=config.polarity or "bright",
                                         measure=microscopy.measure_choice(config.measure),
                                         measure_project=config.measure_project)
        max_pixels = get_settings().max_pixels
        if frame:
            (axis, index), = frame
            cut = frames.cut_frame(job.source, axis, index, selection, max_pixels, series=series)
        elif series is not None:
            cut = frames.cut_image(job.source, series, selection, max_pixels)
        elif split:
            cut = frames.cut_split_image(job.source, selection, max_pixels)
        else:
            try:
                return Payload(frames.convert_oif(job.source, selection, max_pixels), "image/tiff")
            except (imaging.ImageError, microscopy.SelectionError) as exc:
                raise OSError(f"an Olympus OIF read from its folder: {exc}") from exc
        if cut is not None:
            return Payload(cut, "image/tiff", image_cut=series is not None)
    return Payload(job.source.read_bytes(), CONTENT_TYPES[job.source.suffix.lower()], whole=True)


# --------------------------------------------------------------------------- image size sniffing


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a PNG, JPEG, TIFF or BMP header; None if not recognised."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"BM"):
            width, height = struct.unpack("<ii", data[18:26])
            return width, abs(height)  # negative height: rows stored top-down
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (struct.error, IndexError):
        pass  # truncated header: the server will say what is wrong with it
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers to the first start-of-frame (SOF0..SOF15 bar DHT, JPG, DAC)."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) from the first IFD of a classic TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    size: dict[int, int] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            fmt = "H" if typ == 3 else "I"  # SHORT or LONG, left-justified in the value field
            size[tag] = struct.unpack(order + fmt, entry[8 : 8 + struct.calcsize(fmt)])[0]
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


# --------------------------------------------------------------------------- retries


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, retry_after: float | None, base: float = BACKOFF_BASE_S,
                cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to sleep before retry number ``attempt`` (1-based).

    Full jitter (uniform in ``[0, min(cap, base·2^(attempt-1))]``) so that many clients refused at
    once don't come back at once; never less than the server's ``Retry-After`` (capped).
    """
    delay = random.uniform(0.0, min(cap, base * 2 ** min(attempt - 1, 32)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
    return delay


def _problem(response: httpx.Response) -> dict | None:
    """The RFC 9457 body of an error response, or None if it isn't JSON."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _problem_slug(result: Result) -> str | None:
    """The last problem's type as its slug (``/problems/payload-too-large`` → ``payload-too-large``)."""
    kind = (result.problem or {}).get("type")
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else None


def _describe(response: httpx.Response, problem: dict | None) -> str:
    if problem:
        title, detail = problem.get("title", ""), problem.get("detail", "")
        return f"HTTP {response.status_code} {title}: {detail}".rstrip(": ")
    return f"HTTP {response.status_code} {response.reason_phrase}: {response.text[:200]}".rstrip(": ")


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "")
    return int(value) if value.isdigit() else None


# --------------------------------------------------------------------------- one image


#: What one try of a POST sends: keyword arguments for ``httpx.Client.post`` (``content=`` and
#: headers, or ``json=``), made anew for each try, since a streamed file is read once per try.
Upload = Callable[[], dict[str, Any]]


def bytes_upload(data: bytes, content_type: str) -> Upload:
    return lambda: {"content": data, "headers": {"Content-Type": content_type}}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent or complete, never truncated."""
    replace_atomic(path, lambda tmp: tmp.write_bytes(data))


def replace_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path`` (a writer that wants a path: a TIFF
    written slice by slice), then put it in place: ``path`` is either absent or complete.

    The temp file lives in the target's folder so ``os.replace`` is a rename on one filesystem.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Segmenter:
    """Sends jobs to the service replicas round-robin, with retries; safe to call from many threads.

    One ``httpx.Client`` (a keep-alive connection pool) per URL, sized to the concurrency.
    """

    def __init__(self, config: Config, backoff_base: float = BACKOFF_BASE_S) -> None:
        self.config = config
        self.kind = output_kind(config)
        self.params = {"output": self.kind.query}
        if config.geojson:
            self.params["geojson"] = "true"
        if config.split:
            self.params["split"] = config.split
        if config.diameter is not None:
            self.params["diameter"] = f"{config.diameter:g}"
        if config.expand is not None and config.stitch_z is None:  # --stitch-z grows them in 3-D itself
            self.params["expand"] = f"{config.expand:g}"
        if config.background_ring is not None:
            self.params["background_ring"] = f"{config.background_ring:g}"
        for name in ("channel", "z", "t", "project", "pixel_size", "polarity", "series", "measure",
                     "measure_project"):
            value = getattr(config, name)
            if value is not None and not (name == "measure" and config.stitch_z is not None):
                self.params[name] = str(value)  # --stitch-z measures the slices itself, when linking
        self.retries = config.retries
        self.retry_for_s = config.retry_for_s
        self.backoff_base = backoff_base
        #: Bytes per request of a file stored on a replica (:meth:`_store`): what a lost connection costs.
        self.store_piece_bytes = STORE_PIECE_BYTES
        headers = {"Accept": f"{self.kind.accept}, application/problem+json",
                   "User-Agent": "unet-segment"}
        if config.api_key:
            headers["X-API-Key"] = config.api_key
        limits = httpx.Limits(max_connections=config.concurrency,
                              max_keepalive_connections=config.concurrency)
        self.clients = [
            httpx.Client(base_url=url, headers=headers, timeout=config.timeout_s, limits=limits)
            for url in config.urls
        ]
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.job_above = config.job_above
        self._stop = threading.Event()
        #: ``(job, tiles done, tiles total)`` while a job runs; ``(job, None, None)`` when it ends
        self.progress: Callable[[Job, int | None, int | None], None] | None = None

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def use_diameter(self, diameter: float) -> None:
        """Send ``diameter=`` with every image from now on (between requests, not during)."""
        self.params["diameter"] = f"{diameter:g}"

    def params_for(self, job: Job, image_cut: bool = False) -> dict[str, str]:
        """The query options of ``job``: the command line's, and the plane it segments; without
        ``series`` where the image was cut out of its file (``image_cut``: the cut holds it alone)."""
        params = {**self.params, **{name: str(index) for name, index in job.plane}}
        if image_cut:
            params.pop("series", None)
        if "pixel_size" not in params and (um := instrument_pixel_size(job.source)) is not None:
            params["pixel_size"] = str(um)
        return params

    def _first_turn(self) -> int:
        """Index of the replica a new image starts on: round-robin over images."""
        with self._lock:
            return next(self._next) % len(self.clients)

    def __call__(self, job: Job) -> Result:
        """Segment one image and write its output; never raises for HTTP or network trouble."""
        try:
            payload = job_bytes(job, self.config)
        except OSError as exc:
            return Result(job, ok=False, error=f"cannot read input: {exc}")
        data, image_cut = payload.data, payload.image_cut
        result = self._segment(Result(job, ok=False, image_cut=image_cut), data,
                               bytes_upload(data, payload.content_type), self._first_turn())
        if payload.whole and result.status == 413 and _problem_slug(result) == "payload-too-large":
            # Past the upload limit and nothing to cut: stored on the replica once, then named.
            return self._via_stored(result, payload)
        return result

    def _segment(
        self, result: Result, data: bytes, upload: Upload, first: int, stored: str | None = None
    ) -> Result:
        """``POST /jobs`` for a large image, else (or on a server without jobs) ``POST /segment``;
        ``stored``: name the file stored on replica ``first`` (``upload=``) instead of sending it."""
        if self.wants_job(data):
            done = self._via_job(result, upload, first, data, stored)
            if done is not None:
                return done
            # no /jobs there: /segment
            result = Result(result.job, ok=False, attempts=result.attempts, image_cut=result.image_cut)
        response = self._send(result, "/segment", upload, first, stored)
        if response is not None and response.status_code == 200:
            return self._finish(result, response, data)
        return result

    def _via_stored(self, refused: Result, payload: Payload) -> Result:
        """A whole file the replica refused as too large (413): store it there (``POST /uploads``),
        segment it by its id on that replica alone, then delete it — so a file past the limit that
        cannot be cut (one image or stack, a tile scan the service refuses) gets the answer its
        content deserves rather than the 413. Without ``/uploads`` there (an older server, or no
        room), the 413 stands."""
        turn = refused.turn
        client = self.clients[turn]
        stored = self._store(client, payload, refused.job.source.name)
        if stored is None:
            return refused
        try:
            result = Result(refused.job, ok=False, attempts=refused.attempts, image_cut=refused.image_cut)
            return self._segment(result, payload.data, lambda: {}, turn, stored)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"/uploads/{stored}")

    def _store(self, client: httpx.Client, payload: Payload, name: str) -> str | None:
        """Store ``payload`` on ``client``'s replica; its id, or None (no ``/uploads`` there, no room,
        or the replica gone for longer than ``--retry-for``). As a resumable upload (tus 1.0), sent
        :attr:`store_piece_bytes` at a time: a piece lost with the connection, or refused while the
        replica is busy, is sent again from the offset the replica kept (``HEAD``), so a file of
        gigabytes is not sent again from its start. A server without resumable uploads takes it whole."""
        from service.filenames import content_disposition  # stdlib only, as the client must be

        data = payload.data
        tus = {"Tus-Resumable": "1.0.0"}
        try:
            created = client.post("/uploads", headers={
                **tus, "Upload-Length": str(len(data)),
                "Upload-Metadata": f"filename {base64.b64encode(name.encode()).decode()}"})
            if created.status_code != 201 or "tus-resumable" not in created.headers:
                whole = client.post("/uploads", content=data, headers={
                    "Content-Type": payload.content_type, "Content-Disposition": content_disposition(name)})
                return whole.json()["id"] if whole.status_code == 201 else None
        except httpx.TransportError:
            return None
        url, offset, deadline, attempt = created.headers["Location"], 0, None, 0
        while offset < len(data):
            try:
                response = client.patch(url, content=data[offset:offset + self.store_piece_bytes], headers={
                    **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 204:
                offset, deadline, attempt = int(response.headers["Upload-Offset"]), None, 0
                continue
            if response is not None and response.status_code not in (409, *TRANSIENT_STATUSES):
                break  # refused for good (415: not an image; 404: removed)
            attempt += 1
            now = time.monotonic()
            deadline = now + self.retry_for_s if deadline is None else deadline
            if now >= deadline:
                break
            time.sleep(min(retry_delay(attempt, None, base=self.backoff_base), deadline - now))
            with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                offset = int(client.head(url).headers["Upload-Offset"])  # what the replica kept
        else:
            return created.json()["id"]
        with contextlib.suppress(httpx.HTTPError):
            client.delete(url)
        return None

    def wants_job(self, data: bytes) -> bool:
        """Whether this image goes through ``POST /jobs``: its pixels (from the header) over the
        threshold. A header the client cannot read (BigTIFF, an odd TIFF layout) is judged by the
        file's size instead: an uncompressed image has at least one byte per pixel."""
        if self.job_above is None:
            return False
        size = image_size(data)
        amount = size[0] * size[1] if size is not None else len(data)
        return amount > self.job_above

    def _send(
        self, result: Result, path: str, upload: Upload, first: int, stored: str | None = None
    ) -> httpx.Response | None:
        """POST the image to ``path`` with retries, moving over the replicas; the final response
        (success or an error that is not transient), or None when the retries ran out (``result``
        says why). ``result.turn`` is the index of the replica that answered. ``stored``: the id of
        the file stored on replica ``first``, named instead of sent, and retried there alone."""
        deadline: float | None = None  # set at the first failure: retry_for_s from then
        for attempt in itertools.count(result.attempts + 1):
            result.attempts = attempt
            retry_after, unreachable = None, False
            # A retry moves on, but a stored file is on its replica only.
            turn = first if stored is not None else (first + attempt - 1) % len(self.clients)
            try:
                params = self.params_for(result.job, result.image_cut)
                if stored is not None:
                    params["upload"] = stored
                response = self.clients[turn].post(path, params=params, **upload())
            except httpx.TransportError as exc:  # refused, reset, timed out: maybe another replica
                result.status, result.problem = None, None
                result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                unreachable = True
            else:
                result.status = response.status_code
                if response.status_code in (200, 202):
                    result.turn = turn
                    return response
                result.problem = _problem(response)
                result.error = _describe(response, result.problem)
                if response.status_code not in TRANSIENT_STATUSES:
                    result.turn = turn
                    return response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if self.retries is not None and attempt > self.retries:
                break
            now = time.monotonic()
            deadline = now + self.retry_for_s if deadline is None else deadline
            if now >= deadline:
                break
            if unreachable and attempt < len(self.clients) and stored is None:
                continue  # a replica not tried yet for this image may be up: go there at once
            # The last wait ends at the deadline, so the final try comes retry_for_s after the first
            # failure: a replica restarting within the window always gets the image.
            time.sleep(min(retry_delay(attempt, retry_after, base=self.backoff_base), deadline - now))
        return None

    # ----------------------------------------------------------------------- the jobs path

    def _via_job(
        self, result: Result, upload: Upload, first: int, data: bytes = b"", stored: str | None = None
    ) -> Result | None:
        """Submit the image as a job, poll it, write its result (:meth:`_collect`), delete it. None:
        the replica has no ``/jobs`` (an older server; the caller uses ``/segment``). ``stored``:
        as for :meth:`_send`."""
        job = result.job
        deadline: float | None = None  # for resubmitting a job lost to a server restart
        while True:
            response = self._send(result, "/jobs", upload, first, stored)
            if response is None:
                return result
            if response.status_code == 404:
                return None
            if response.status_code != 202:
                return result  # the input's fault (400/413/415/422), as /segment would have said
            client = self.clients[result.turn]
            location = response.headers.get("Location") or f"/jobs/{response.json()['id']}"
            try:
                outcome = self._await_job(result, client, location)
                if outcome == "succeeded":
                    return self._collect(result, client, location, data)
            finally:
                self._report(job, None, None)
                # Its result is on this disk now (or it failed, or we stop): free the server's.
                self._request(result, client, "DELETE", location, final=(200, 204, 404), quiet=True)
            if outcome == "lost":  # the server restarted under it, or lost it: send it again
                now = time.monotonic()
                deadline = now + self.retry_for_s if deadline is None else deadline
                if now >= deadline or (self.retries is not None and result.attempts > self.retries):
                    return result
                continue
            return result

    def _collect(self, result: Result, client: httpx.Client, location: str, data: bytes) -> Result:
        """Fetch a succeeded job's result and write it, as ``/segment``'s answer would be."""
        fetched = self._request(result, client, "GET", f"{location}/result", final=(200,))
        return result if fetched is None else self._finish(result, fetched, data)

    def _await_job(self, result: Result, client: httpx.Client, location: str) -> str:
        """Poll until the job is finished: ``succeeded``, ``failed`` (``result`` holds its problem),
        ``lost`` (404, or interrupted by a restart) or ``gone`` (cancelled, unreachable, stopped)."""
        wait = POLL_FIRST_S
        while True:
            if self._stop.wait(wait):
                result.error = "interrupted before the job finished"
                return "gone"  # Ctrl-C: the caller's DELETE cancels it on the server
            response = self._request(result, client, "GET", location, final=(200, 404))
            if response is None:
                return "gone"
            if response.status_code == 404:
                result.status, result.problem = 404, _problem(response)
                result.error = "the server lost the job (restarted or swept it)"
                return "lost"
            status = response.json()
            self._report(result.job, status.get("tiles_done", 0), status.get("tiles_total"))
            state = status.get("status")
            if state == "succeeded":
                return "succeeded"
            if state in ("failed", "cancelled"):
                problem = status.get("problem") or {}
                result.status = problem.get("status")
                result.problem = problem or None
                title, detail = problem.get("title", state), problem.get("detail", "")
                result.error = f"job {state}: {title}: {detail}".rstrip(": ")
                if str(problem.get("type", "")).endswith(JOB_INTERRUPTED):
                    return "lost"
                return "failed"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait = min(POLL_CAP_S, wait * POLL_GROWTH)
            if retry_after is not None:
                wait = max(wait, min(retry_after, RETRY_AFTER_CAP_S))

    def _request(self, result: Result, client: httpx.Client, method: str, url: str,
                 final: tuple[int, ...], quiet: bool = False, save_to: Path | None = None,
                 ) -> httpx.Response | None:
        """One call about a job on the replica that holds it, retried on transient trouble for
        ``retry_for_s`` (a job lives on one replica: no moving on). The response with a status in
        ``final``, else None with ``result`` saying why (unless ``quiet``: a DELETE's failure
        costs only disk until the server's retention sweep). ``save_to``: a 200's body is
        streamed to that file (a slide's files, larger than memory); a body cut short is a
        transport error like any other, and the next try writes the file anew."""
        deadline: float | None = None
        for attempt in itertools.count(1):
            retry_after = None
            try:
                response = client.request(method, url) if save_to is None else _save(client, url, save_to)
            except httpx.TransportError as exc:
                error, status, problem = f"{type(exc).__name__}: {exc}".rstrip(": "), None, None
            else:
                if response.status_code in final:
                    return response
                status, problem = response.status_code, _problem(response)
                error = _describe(response, problem)
                if status not in TRANSIENT_STATUSES:
                    break
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            now = time.monotonic()
            deadline = now + self.retry_for_s if deadline is None else deadline
            if now >= deadline or (self.retries is not None and attempt > self.retries):
                break
            if self._stop.wait(min(retry_delay(attempt, retry_after, base=self.backoff_base),
                                   deadline - now)):
                break
        if not quiet:
            result.status, result.problem, result.error = status, problem, f"{method} {url}: {error}"
        return None

    def _report(self, job: Job, done: int | None, total: int | None) -> None:
        if self.progress is not None:
            self.progress(job, done, total)

    def interrupt(self) -> None:
        """Stop polling jobs (Ctrl-C): each poller cancels its job on the server and returns."""
        self._stop.set()

    def _finish(self, result: Result, response: httpx.Response, data: bytes) -> Result:
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            write_atomic(self.kind.path_for(result.job.target, media_type), response.content)
        except OSError as exc:
            result.error = f"cannot write output: {exc}"
            return result
        pixels = _int_header(response, "X-Image-Pixels")
        if pixels is None and (size := image_size(data)) is not None:
            pixels = size[0] * size[1]
        result.ok, result.error, result.problem = True, None, None
        result.pixels = pixels
        result.object_count = _int_header(response, "X-Object-Count")
        result.diameter_source = response.headers.get("X-Diameter-Source")
        try:
            result.diameter = float(response.headers["X-Nucleus-Diameter"])
        except (KeyError, ValueError):
            result.diameter = None
        return result


def _save(client: httpx.Client, url: str, path: Path) -> httpx.Response:
    """GET ``url``; a 200's body is streamed into ``path`` (others are read into the response)."""
    with client.stream("GET", url) as response:
        if response.status_code == 200:
            with open(path, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
        else:
            response.read()
    return response


# --------------------------------------------------------------------------- local mode


class LocalSegmenter:
    """Segments jobs in this process with the Python API (``service.api``): no server, same files.

    One model for all jobs; safe to call from many threads (their tiles share model runs, as
    concurrent requests do on the server). A file the pipeline refuses becomes a failed
    :class:`Result` carrying the status and problem details the service would have answered
    (422 ``choose-plane`` with the channels, 400 ``undecodable-image``, ...), so the failure
    report reads the same in both modes.
    """

    #: unused: an image's tiles are not shown (it is segmented in one call)
    progress: Callable[[Job, int | None, int | None], None] | None = None

    def __init__(self, config: Config) -> None:
        # Imported here: the HTTP mode needs neither ONNX Runtime nor NumPy.
        from service import api, outputs
        from service.engine import ModelLoadError

        self.config = config
        self.kind = OUTPUT_KINDS[config.kind]
        try:
            self.segmenter = api.Segmenter.load(config.model)
        except ModelLoadError as exc:
            raise UsageError(f"cannot load the model: {exc}") from exc
        self.options: dict = {
            "split": config.split, "diameter": config.diameter, "channel": config.channel,
            "z": config.z, "t": config.t, "project": config.project, "pixel_size": config.pixel_size,
            "polarity": config.polarity or "bright", "series": config.series,
            # --stitch-z measures the slices itself, when it links them
            "measure": None if config.stitch_z is not None else config.measure,
            "expand": None if config.stitch_z is not None else config.expand,
            "measure_project": config.measure_project,
            "background_ring": config.background_ring,
        }
        # Only the arrays this kind is drawn from: labels cost a watershed, probabilities memory.
        self.outputs = tuple(outputs.NEEDS[self.kind.query] & set(api.OUTPUTS))

    def close(self) -> None:
        self.segmenter.close()

    def use_diameter(self, diameter: float) -> None:
        """Segment every image at ``diameter`` from now on (between images, not during)."""
        self.options = {**self.options, "diameter": diameter}

    def interrupt(self) -> None:
        """Ctrl-C: images being segmented finish (seconds each) and are written whole."""

    def __call__(self, job: Job) -> Result:
        """Segment one image and write its output; never raises for a bad image."""
        result = Result(job, ok=False, attempts=1)
        data: bytes | Path
        try:
            if (job.plane or self.config.series is not None or job.source.suffix.lower() == ".oif"
                    or _split_image_files(job.source)):
                # an OIF: its planes read from its folder; an image split over files: from the set
                payload = job_bytes(job, self.config)
                data, image_cut = payload.data, payload.image_cut
            else:
                # The file by path: the API maps a large one and reads the pages the plane needs,
                # where reading it here would hold the whole file (a TIFF stack, a CZI, a LIF).
                with open(job.source, "rb"):
                    data, image_cut = job.source, False
        except OSError as exc:
            result.error = f"cannot read input: {exc}"
            return result
        try:
            options = {**self.options, **dict(job.plane)}
            if image_cut:
                options["series"] = None  # the cut holds the chosen image alone
            if options["pixel_size"] is None:
                options["pixel_size"] = instrument_pixel_size(job.source)
            segmentation = self.segmenter.segment(data, outputs=self.outputs, **options)
            body, media_type = segmentation.encode(self.kind.query)
        except Exception as exc:  # noqa: BLE001 - one bad image must not end a batch of thousands
            return failed_locally(result, exc)
        try:
            write_atomic(self.kind.path_for(job.target, media_type.split(";")[0]), body)
        except OSError as exc:
            result.error = f"cannot write output: {exc}"
            return result
        height, width = segmentation.image.shape[:2]
        result.ok, result.pixels, result.object_count = True, width * height, segmentation.object_count
        result.diameter, result.diameter_source = segmentation.diameter, segmentation.diameter_source
        return result


def failed_locally(result: Result, exc: Exception) -> Result:
    """``result`` as failed by ``exc``, with the status and problem details the service would have
    answered for it (its own mapping of domain errors), so both modes' reports read alike."""
    from service.errors import problem_body
    from service.routes.segment import problem_for

    problem = problem_for(exc)
    if problem is None:
        result.error = f"{type(exc).__name__}: {exc}"
    else:
        result.status = problem.status
        result.problem = problem_body(problem.status, problem.title, problem.detail,
                                      slug=problem.slug, errors=problem.errors, extra=problem.extra)
        result.error = f"{problem.title}: {problem.detail}"
    return result


class BatchSegmenter(Protocol):
    """What :func:`run` drives: one call per job, from many threads, never raising for bad input."""

    #: ``(job, tiles done, tiles total)`` while a job runs; ``(job, None, None)`` when it ends
    progress: Callable[[Job, int | None, int | None], None] | None

    def __call__(self, job: Job) -> Result: ...

    def use_diameter(self, diameter: float) -> None: ...  # --diameter once, after the first images

    def interrupt(self) -> None: ...  # Ctrl-C: stop what can stop

    def close(self) -> None: ...


def make_segmenter(config: Config, backoff_base: float = BACKOFF_BASE_S) -> BatchSegmenter:
    """The service replicas at ``config.urls``, or this process when there are none; slides
    (``--output ome-zarr``) by ``service.client_slides``."""
    if isinstance(OUTPUT_KINDS[config.kind], SlideOutput):
        from service import client_slides

        if not config.urls:
            return client_slides.LocalSlideSegmenter(config)
        return client_slides.SlideSegmenter(config, backoff_base=backoff_base)
    if not config.urls:
        return LocalSegmenter(config)
    return Segmenter(config, backoff_base=backoff_base)


# --------------------------------------------------------------------------- the run


@dataclass
class Summary:
    sent: int = 0
    succeeded: int = 0
    skipped: int = 0
    failures: list[Result] = field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0
    #: --diameter once: the diameter sent with the batch, and the images it was estimated on
    diameter: float | None = None
    diameter_from: list[Path] = field(default_factory=list)
    #: images whose channels are all named, none as --channel names (a screen's other channels,
    #: one file each), left alone where others had it (:func:`settle_other_channels`)
    other_channels: list[Result] = field(default_factory=list)

    def line(self, report: Path | None) -> str:
        failed = len(self.failures)
        rate = self.succeeded / self.seconds if self.seconds else 0.0
        mp_rate = self.megapixels / self.seconds if self.seconds else 0.0
        text = (f"{self.succeeded} written, {self.skipped} skipped (already there), {failed} failed "
                f"in {self.seconds:.1f} s: {rate:.2f} images/s, {mp_rate:.2f} MP/s")
        if self.other_channels:
            text += (f"; {len(self.other_channels)} left alone: their channels are others "
                     f"(e.g. {self.other_channels[0].job.source.name})")
        if self.diameter is not None:
            text += (f"; nucleus diameter {self.diameter:g} px for the batch, estimated on "
                     f"{len(self.diameter_from)} image(s) (--diameter {self.diameter:g} reuses it)")
        if failed and report:
            text += f"; failures listed in {report}"
        return text


def of_other_channels(result: Result, channel: str | None) -> bool:
    """Whether ``result`` failed only because the image has no channel named ``channel`` while it
    names every channel it has: in a screen's export (MetaXpress, Harmony, CellVoyager) each
    channel is a file of its own, and ``--channel DAPI`` on the plate's folder asks for the DAPI
    files. A file that names no channel (``--channel DAPI`` cannot be told apart from a typo there)
    or an index (``--channel 1``) still fails."""
    if channel is None or channel.strip().isdigit() or result.status != 422 or not result.problem:
        return False
    if not str(result.problem.get("type", "")).endswith("/invalid-options"):
        return False
    if [e.get("loc") for e in result.problem.get("errors") or []] != [["query", "channel"]]:
        return False
    channels = (result.problem.get("choices") or {}).get("channels") or []
    return bool(channels) and all(isinstance(c, dict) and c.get("name") for c in channels)


def settle_other_channels(summary: Summary, bar: Any, sharded: bool = False) -> None:
    """Images of other channels are failures after all where no image had the channel chosen (none
    written nor found written before: a name mistyped), else left alone, counted in the summary.
    A shard (``--shard``) cannot tell: its share of a plate may hold another channel's files only
    (they sort beside each other: ``s1_w1``, ``s1_w2``), so it leaves them alone and says so."""
    if summary.other_channels and summary.succeeded + summary.skipped == 0 and sharded:
        bar.write(f"unet-segment: no image of this shard has the channel asked for; "
                  f"{len(summary.other_channels)} left alone (check the name if no shard writes any)",
                  file=sys.stderr)
    elif summary.other_channels and summary.succeeded + summary.skipped == 0:
        for result in summary.other_channels:
            summary.failures.append(result)
            bar.write(f"failed: {result.job.label()}: {result.error}", file=sys.stderr)
        summary.other_channels = []


def failure_record(result: Result) -> dict:
    """One line of the JSONL report: which file, what the server said (or why there was no answer)."""
    record: dict = {"file": str(result.job.source), **dict(result.job.plane), "status": result.status,
                    "attempts": result.attempts, "error": result.error}
    if result.problem:
        record.update({k: result.problem.get(k) for k in ("type", "title", "detail")})
    return record


def write_report(path: Path, failures: Sequence[Result]) -> None:
    """The run's failures, one JSON object per line; written whole (atomically) at the end."""
    lines = "".join(json.dumps(failure_record(r)) + "\n" for r in failures)
    write_atomic(path, lines.encode())


def run(config: Config, jobs: Sequence[Job], backoff_base: float = BACKOFF_BASE_S) -> Summary:
    """Send every job whose output is missing (or all, with ``overwrite``); write the report."""
    kind = output_kind(config)
    todo = [j for j in jobs if config.overwrite or kind.existing(j.target) is None]
    summary = Summary(skipped=len(jobs) - len(todo))
    start = time.perf_counter()
    segmenter = make_segmenter(config, backoff_base)
    bar = tqdm(total=len(todo), unit="img", desc="segment", disable=not config.progress,
               dynamic_ncols=True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.concurrency)
    rate = ""
    running: dict[Job, str] = {}  # jobs on the server → "name done/total tiles"
    lock = threading.Lock()

    def show(job: Job, done: int | None, total: int | None) -> None:
        """The bar's postfix: the rate, failures, and each server job's tiles done/total."""
        with lock:
            if done is None:
                running.pop(job, None)
            else:
                running[job] = f"{job.source.name} {done}/{total if total is not None else '?'} tiles"
            bar.set_postfix_str(", ".join([rate, *running.values()]).strip(", "))

    segmenter.progress = show

    def send(batch: Sequence[Job]) -> list[Result]:
        nonlocal rate
        results = []
        futures = [pool.submit(segmenter, job) for job in batch]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            results.append(result)
            summary.sent += 1
            if result.ok:
                summary.succeeded += 1
                summary.megapixels += (result.pixels or 0) / 1e6
            elif of_other_channels(result, config.channel):
                summary.other_channels.append(result)
            else:
                summary.failures.append(result)
                bar.write(f"failed: {result.job.label()}: {result.error}", file=sys.stderr)
            elapsed = time.perf_counter() - start
            with lock:
                rate = f"{summary.megapixels / elapsed:.2f} MP/s, {len(summary.failures)} failed"
                bar.set_postfix_str(", ".join([rate, *running.values()]), refresh=False)
                bar.update()
        return results

    try:
        rest: Sequence[Job] = todo
        # --stitch-z: a resumed run segments the slices left at the diameter the first run settled on
        # (a stack's slices are linked only if all are at one scale), kept in the output folder.
        kept = stitch_diameter_kept(config) if config.diameter_once and config.diameter is None else None
        if kept is not None and todo:
            # The slice the diameter was estimated on was segmented at that estimate itself (the
            # others at it to 0.1 px, as Segmenter.segment_stack does): lost, it is estimated again
            # there, which gives the same value, and the stack comes out as the first run made it.
            again = [j for j in todo if kept.estimated_on is not None and job_key(j) == kept.estimated_on]
            send(again)
            rest = [j for j in todo if j not in again]
            segmenter.use_diameter(kept.diameter)
            bar.write(f"unet-segment: nucleus diameter {kept.diameter:g} px for the stacks, as the run "
                      f"that segmented their first slices ({STITCH_DIAMETER_FILE})", file=sys.stderr)
        elif config.diameter_once and config.diameter is None:
            count = ONCE_IMAGES
            if config.stitch_z is not None:
                # As Segmenter.segment_stack: the middle slice (the top and bottom ones hold only caps).
                todo, count = middle_slice_first(todo, config.series), 1
            first, rest = todo[:count], todo[count:]
            settle_diameter(send(first), segmenter, summary, bar)
            if config.stitch_z is not None and summary.diameter is not None:
                kept_now = KeptDiameter(summary.diameter, job_key(first[0]))
                write_atomic(config.out / STITCH_DIAMETER_FILE, json.dumps(asdict(kept_now)).encode())
        send(rest)
        settle_other_channels(summary, bar, sharded=config.shard is not None)
    except BaseException:
        segmenter.interrupt()  # jobs being polled (or slides segmented here) are cancelled, not waited for
        raise
    finally:
        # On Ctrl-C: drop what hasn't started; requests in flight finish and write whole files.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        segmenter.close()
        summary.seconds = time.perf_counter() - start
        _settle_report(config, summary)
    return summary


@dataclass(frozen=True)
class KeptDiameter:
    """What ``--stitch-z`` keeps in the output folder (:data:`STITCH_DIAMETER_FILE`): the diameter the
    run settled on, and the slice it was estimated on (:func:`job_key`; None in files written before
    it was kept)."""

    diameter: float
    estimated_on: str | None = None


def job_key(job: Job) -> str:
    """A job's file and plane as one string, to name it across runs."""
    return json.dumps([str(job.source), [list(p) for p in job.plane]])


def stitch_diameter_kept(config: Config) -> KeptDiameter | None:
    """``--stitch-z``: the diameter an earlier run in this output folder settled on (None: none, or
    ``--overwrite``, which segments every slice again)."""
    path = config.out / STITCH_DIAMETER_FILE
    if config.stitch_z is None or config.overwrite or not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        diameter, estimated_on = float(kept["diameter"]), kept.get("estimated_on")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable: estimated again, as without it
    if diameter <= 0:
        return None
    return KeptDiameter(diameter, estimated_on if isinstance(estimated_on, str) else None)


def middle_slice_first(jobs: Sequence[Job], series: int | None = None) -> list[Job]:
    """``jobs`` with the middle z-slice of the first stack (slice ``depth // 2``; of image ``series``
    of a file holding several) first, the rest in their order: what ``--stitch-z`` estimates the
    diameter on, as ``Segmenter.segment_stack``."""
    first = next((j.source for j in jobs if j.plane and j.plane[0][0] == "z"), None)
    stack = [j for j in jobs if j.source == first and j.plane and j.plane[0][0] == "z"]
    if not stack:
        return list(jobs)
    depth = count_planes(first, "z", series) if first is not None else 0
    middle = next((j for j in stack if j.plane[0][1] == depth // 2), None)
    if middle is None:  # a resumed run whose middle slice is done: the nearest one left
        middle = min(stack, key=lambda j: abs(j.plane[0][1] - depth // 2))
    return [middle, *(j for j in jobs if j is not middle)]


def settle_diameter(
    results: Sequence[Result], segmenter: BatchSegmenter, summary: Summary, bar: tqdm
) -> None:
    """``--diameter once``: the median of the diameters estimated on ``results`` (the first images;
    of an even number, the lower middle one: an image's own estimate), sent with every image from
    now on. If none was estimated (failures, images without nuclei), each image keeps its own
    estimate, and the run says so."""
    # to 0.1 px, as the service's header reports them (local mode has the full value): both modes
    # then take the same one
    estimated = sorted((round(r.diameter, 1), r.job.source) for r in results
                       if r.ok and r.diameter_source == "estimated" and r.diameter is not None)
    if not results:
        return  # nothing left to segment (a resumed run)
    if not estimated:
        bar.write("unet-segment: --diameter once: no nucleus diameter was estimated on the first "
                  f"{len(results)} image(s); each image is estimated on its own", file=sys.stderr)
        return
    diameter = estimated[(len(estimated) - 1) // 2][0]  # the median; of two, the smaller
    segmenter.use_diameter(diameter)
    summary.diameter, summary.diameter_from = diameter, [source for _, source in estimated]
    named = sorted(" ".join([r.job.source.name, *(f"{a}={i}" for a, i in r.job.plane)]) for r in results
                   if r.ok and r.diameter_source == "estimated" and r.diameter is not None)
    bar.write(f"unet-segment: nucleus diameter {diameter:g} px for the batch (estimated on "
              f"{', '.join(named)})", file=sys.stderr)


def _settle_report(config: Config, summary: Summary) -> None:
    """Write this run's failures; with none, remove a stale report so its presence means trouble."""
    path = config.report_path()
    if summary.failures:
        write_report(path, summary.failures)
    elif path.exists() and summary.sent:
        path.unlink()


SUMMARY_FIELDS = ["file", "output", "count", "mean_area_px", "total_area_px", "min_area_px", "max_area_px"]


def object_summary(jobs: Sequence[Job], kind: OutputKind, out: Path) -> list[dict]:
    """One row per image whose output exists (this run's or an earlier one's): count and areas,
    and, for each channel measured (``--measure``), the mean over its objects of their mean
    intensity, under the table's own column name (``mean_intensity_GFP``: a well's mean nuclear GFP).

    Read back from the written files, so a resumed run summarises the whole folder.
    """
    rows = []
    for job in jobs:
        path = kind.existing(job.target)
        if path is None:
            continue  # failed: it is in the failure report
        try:
            values = kind.values(path)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            print(f"unet-segment: {path}: cannot read objects for the summary: {exc}", file=sys.stderr)
            continue
        areas = values.areas
        rows.append({
            "file": str(job.source),
            "output": path.relative_to(out).as_posix(),
            "count": len(areas),
            "mean_area_px": round(sum(areas) / len(areas), 2) if areas else "",
            "total_area_px": round(sum(areas), 2),
            "min_area_px": min(areas, default=""),
            "max_area_px": max(areas, default=""),
            **{column: round(sum(means) / len(means), 4) if means else ""
               for column, means in values.measured.items()},
        })
    return rows


def write_object_summary(path: Path, rows: Sequence[dict]) -> None:
    # The measured channels' columns of every image, in the order they first appear (a folder may
    # mix files of other channels, or runs with other --measure): empty where an image lacks one.
    measured = list(dict.fromkeys(column for row in rows for column in row if column not in SUMMARY_FIELDS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SUMMARY_FIELDS, *measured], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


# --------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _plane_index(text: str) -> int | str:
    """``--t`` / ``--z``: a 0-based index, or ``all``."""
    if text.strip().lower() == ALL_PLANES:
        return ALL_PLANES
    try:
        return _non_negative_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an index (0 or more) or {ALL_PLANES}, got {text!r}"
        ) from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def _diameter(text: str) -> float | str:
    """``--diameter``: pixels, or ``once``."""
    if text.strip().lower() == "once":
        return "once"
    try:
        return _positive_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of pixels or 'once', got {text!r}") from None


def _number_in(text: str, high: float) -> float:
    """``text`` as a number in (0, ``high``], else the argument's error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, {high:g}], got {text!r}") from None
    if not 0 < value <= high:
        raise argparse.ArgumentTypeError(f"must be in (0, {high:g}], got {text!r}")
    return value


def _expand_px(text: str) -> float:
    """``--expand``: pixels in (0, 500], the service's bound (``service.outputs.MAX_EXPAND_PX``)."""
    return _number_in(text, 500)


def _ring_px(text: str) -> float:
    """``--background-ring``: pixels in (0, 500], the service's bound (``service.background.MAX_RING_PX``)."""
    return _number_in(text, 500)


def _min_iou(text: str) -> float:
    """``--stitch-z``: an IoU in (0, 1] (or :data:`STITCH_DEFAULT`, the flag alone)."""
    if text == STITCH_DEFAULT:
        return text  # type: ignore[return-value]  # resolved in parse_config
    return _number_in(text, 1)


def _job_above(text: str) -> int | None:
    """``--job-above``: pixels (``16777216``), a size (``4096x4096``), or ``never``."""
    text = text.strip().lower()
    if text == "never":
        return None
    try:
        if "x" in text:
            width, height = (int(part) for part in text.split("x"))
            value = width * height
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a pixel count, WIDTHxHEIGHT or 'never', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _shard(text: str) -> Shard:
    """``--shard``: ``INDEX/COUNT``, or ``COUNT`` with INDEX from ``$JOB_COMPLETION_INDEX``."""
    index_text, slash, count_text = text.strip().rpartition("/")
    if not slash:
        index_text = os.environ.get(SHARD_INDEX_ENV, "")
        if not index_text:
            raise argparse.ArgumentTypeError(
                f"{text!r} gives no INDEX and ${SHARD_INDEX_ENV} is not set (Kubernetes sets it in the "
                "pods of an indexed Job): write INDEX/COUNT, e.g. 0/4")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be INDEX/COUNT (e.g. 0/4) or COUNT, got {text!r}"
                                         + (f" with ${SHARD_INDEX_ENV}={index_text!r}" if not slash else "")
                                         ) from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"needs COUNT ≥ 1 and 0 ≤ INDEX < COUNT, got {index}/{count}")
    return Shard(index, count)


def _url(text: str) -> str:
    parsed = httpx.URL(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-segment",
        description="Segment images with a running U-Net service (--url), or in this process without "
                    "one (local mode); one output file per image.",
        epilog="Exit status: 0 all outputs present, 1 some images failed (see the report), 2 usage error.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or globs ('**' allowed); with "
                        "--output ome-zarr also OME-Zarr stores (*.zarr folders; with --url only under "
                        "--data-root)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder; input sub-folders are mirrored in it")
    parser.add_argument("--url", dest="urls", action="append", default=[], type=_url,
                        metavar="URL", help="service base URL; repeat to spread images over replicas "
                        "(none: local mode, the model runs in this process)")
    parser.add_argument("--model", type=Path, metavar="FILE",
                        help="local mode only: the ONNX model (default: the bundled one, or "
                        "$UNET_MODEL_PATH)")
    parser.add_argument("--output", dest="kind", choices=list(OUTPUT_KINDS), default="mask",
                        help="what to ask for (default: mask); ome-zarr: slides of any size (tiled "
                        "OME-TIFF), each as a job written to NAME.ome.zarr/ (probability, labels, mask, "
                        "pyramid) and NAME.objects.csv")
    parser.add_argument("--geojson", action="store_true",
                        help="with --output ome-zarr: also each slide's nucleus outlines, "
                        "NAME.objects.geojson (QuPath detections) beside the store")
    parser.add_argument("--data-root", dest="data_root", type=Path, metavar="DIR",
                        help="with --url and --output ome-zarr: DIR is the server's UNET_DATA_ROOT as "
                        "mounted here (a shared volume); inputs are sent as their path under it instead "
                        "of their bytes, and inputs outside it are an error")
    parser.add_argument("--split", choices=["center", "distance", "none"], default=None,
                        help="how touching nuclei are split into objects (default: the model's choice)")
    parser.add_argument("--diameter", type=_diameter, default=None, metavar="PX|once",
                        help="typical nucleus diameter in pixels, the same for every image; once: "
                             f"estimated on the first {ONCE_IMAGES} images (their median), then sent with "
                             "every other one: one scale for the batch, and the estimate (1.6-5x the "
                             "segmentation's time on images under 700 px) paid only for those "
                             "(default: the service estimates it per image)")
    plane = parser.add_argument_group(
        "multi-channel and stacked images",
        "Which plane of each file to segment (a file that needs a choice and gets none fails with the "
        "server's list of its channels / planes; POST /probe shows them)",
    )
    plane.add_argument("--channel", metavar="C",
                       help="the nuclei channel: 0-based index or name from the file (e.g. DAPI; "
                       "red/green/blue for colour; gray mixes colour to grey)")
    plane.add_argument("--measure", metavar="CHANNELS",
                       help="with --output objects, geojson, ome-zarr or --stitch-z: also measure each "
                       "nucleus in these channels (0-based indices or names, commas between, or all), at "
                       "the same z / t: the columns mean_intensity_NAME, integrated_intensity_NAME (e.g. "
                       "--channel DAPI --measure GFP)")
    plane.add_argument("--measure-project", choices=["max", "sum"],
                       help="with --measure: read the measured channels as this projection over Z whatever "
                       "is segmented, e.g. --project max --measure-project sum: segment on the maximum, "
                       "measure each nucleus's whole signal on the sum")
    plane.add_argument("--expand", type=_expand_px, metavar="PX",
                       help="with --output objects, geojson, rois or ome-zarr: a cell around each nucleus, "
                       "grown by up to PX pixels and never into a neighbour's (QuPath's cell expansion): "
                       "cell_area, cytoplasm_area and, with --measure, each channel's intensity over the "
                       "cytoplasm; QuPath cells in the GeoJSON, a cell ROI after each nucleus's in the ROI "
                       "set, labels/cells in a slide's store; with --stitch-z cells grown in 3-D "
                       "(NAME.cells3d.tif, cell volumes)")
    plane.add_argument("--background-ring", type=_ring_px, metavar="PX",
                       help="with --measure and --output objects, geojson or ome-zarr: each measured "
                       "channel's local background around each nucleus, the median of a ring PX pixels wide "
                       "starting 2 px "
                       "outside it (outside its cell with --expand): the columns background_NAME, "
                       "mean_intensity_corrected_NAME and integrated_intensity_corrected_NAME (the mean and "
                       "the sum less it: corrected total fluorescence)")
    plane.add_argument("--z", type=_plane_index, metavar="Z|all",
                       help="z-slice, 0-based; all: every z-slice, each its own output (NAME_z07...)")
    plane.add_argument("--t", type=_plane_index, metavar="T|all",
                       help="time point, 0-based; all: every time point of a movie, each its own output "
                       "(NAME_t007...), a file with one time point as it is")
    plane.add_argument("--project", choices=["max", "sum"],
                       help="max: the maximum projection over Z; sum: the sum (float32, for intensities)")
    plane.add_argument("--stitch-z", dest="stitch_z", type=_min_iou, nargs="?", const=STITCH_DEFAULT,
                       default=None, metavar="MIN_IOU",
                       help="with --z all --output labels: link each stack's slices into 3-D nuclei "
                       "(NAME.labels3d.tif, NAME.objects3d.csv): a nucleus continues into the next slice "
                       "where it overlaps one there by this IoU (default: 0.25, service.zstack's); every "
                       "slice at one diameter, estimated on the middle slice unless --diameter says")
    plane.add_argument("--series", type=_plane_index, metavar="S|all",
                       help="which image of a file holding several (an OME-TIFF's Images, a CZI's scenes: "
                       "the positions of a multi-position experiment, a LIF project's images), 0-based; "
                       "all: every one its own output (NAME_s03...); default: the first, with a warning")
    plane.add_argument("--pixel-size", dest="pixel_size", type=_positive_float, metavar="UM",
                       help="µm per pixel (overrides the files' calibration; adds µm columns)")
    plane.add_argument("--polarity", choices=["bright", "dark"],
                       help="dark: nuclei darker than their background (bright field, H&E), segmented as "
                       "the image's optical density, a colour image's colours mixed (default: bright, "
                       "fluorescence)")
    parser.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                        help="requests in flight at once, over all URLs; local mode: images in "
                        f"progress at once (default: {DEFAULT_CONCURRENCY}; local mode with --output "
                        "ome-zarr: 1, as each slide in progress holds ~2 GB at 32768 px wide, growing "
                        "with the width)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo images whose output exists (default: skip them, no request)")
    parser.add_argument("--timeout", dest="timeout_s", type=_positive_float, default=120.0, metavar="S",
                        help="seconds allowed to connect, to send, and per read of the answer (default: 120)")
    parser.add_argument("--retry-for", dest="retry_for_s", type=_non_negative_float,
                        default=os.environ.get("UNET_RETRY_FOR_S", str(RETRY_FOR_S)), metavar="S",
                        help="keep retrying an image on 429/502/503/504, timeouts and connection errors for "
                        "this many seconds after its first failure, with exponential backoff and jitter "
                        f"(default: $UNET_RETRY_FOR_S or {RETRY_FOR_S:g}: longer than a replica restart)")
    parser.add_argument("--retries", type=_non_negative_int, default=None, metavar="N",
                        help="also stop after this many extra tries (default: no count limit)")
    parser.add_argument("--job-above", dest="job_above", type=_job_above,
                        default=JOB_ABOVE_PIXELS, metavar="PIXELS",
                        help="send images with more pixels than this (a count or WIDTHxHEIGHT, read from "
                        "the header) as server jobs (POST /jobs), polled with their tiles shown on the "
                        "bar; 0: every image; never: none (default: 4096x4096)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="INDEX/COUNT",
                        help="segment only this share of the images: sorted by output path, every COUNT-th "
                        "from INDEX (0-based), so COUNT runs split a folder with no overlap; COUNT alone "
                        f"takes INDEX from ${SHARD_INDEX_ENV} (each pod of an indexed Kubernetes Job). "
                        "Summary and failure report get the shard in their names")
    parser.add_argument("--api-key", default=os.environ.get("UNET_API_KEY"), metavar="KEY",
                        help="sent as X-API-Key (default: $UNET_API_KEY)")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="JSONL list of failures (default: DIR/failures.jsonl, only when some failed)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (the summary line is still printed)")
    return parser


def default_concurrency(urls: Sequence[str], kind: str) -> int:
    """``--concurrency`` when not given: :data:`DEFAULT_CONCURRENCY`, but one slide at a time in
    local mode (each holds a slide job's memory in this process: ~2 GB at 32768 px wide,
    docs/benchmarks.md §9; four at once would need 8 GB)."""
    if not urls and isinstance(OUTPUT_KINDS[kind], SlideOutput):
        return 1
    return DEFAULT_CONCURRENCY


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line; exits with status 2 on a malformed one (argparse's convention)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is not None and args.urls:
        parser.error("--model is for local mode: the server at --url uses its own model")
    if args.geojson and args.kind != "ome-zarr":
        parser.error("--geojson is for slides (--output ome-zarr); for images use --output geojson")
    if args.data_root is not None and (not args.urls or args.kind != "ome-zarr"):
        parser.error("--data-root is for slide jobs on a server (--url with --output ome-zarr): "
                     "local mode reads the files where they are")
    every = [axis for axis in ("t", "z", "series") if getattr(args, axis) == ALL_PLANES]
    if len(every) > 1:
        parser.error(f"--{every[0]} all and --{every[1]} all together: one axis at a time; give the "
                     "other an index (or --project max for z)")
    if every and args.kind == "ome-zarr":
        parser.error(f"--{every[0]} all is for stacks of images; a slide is one plane (give an index)")
    if args.z == ALL_PLANES and args.project is not None:
        parser.error("--z all segments each z-slice; --project max segments their projection: choose one")
    tables = args.kind in ("objects", "geojson", "ome-zarr") or args.stitch_z is not None
    if args.measure is not None and not tables:
        parser.error("--measure adds columns to the objects table: it needs --output objects, geojson or "
                     "ome-zarr, or --stitch-z (the 3-D table)")
    if args.measure is not None and not args.measure.replace(",", "").strip():
        parser.error("--measure names no channel: give indices or names, commas between, or all")
    if args.measure_project is not None and (args.measure is None or args.kind == "ome-zarr"
                                             or args.stitch_z is not None):
        parser.error("--measure-project projects the channels of --measure over Z: it needs --measure, "
                     "and a 2-D table (not a slide, not --stitch-z)")
    if args.expand is not None and args.kind not in ("objects", "geojson", "rois", "ome-zarr") \
            and args.stitch_z is None:
        parser.error("--expand gives each nucleus a cell in the table or outlines: it needs --output "
                     "objects, geojson, rois or ome-zarr, or --stitch-z (cells grown in 3-D)")
    if args.background_ring is not None and (args.measure is None
                                             or args.kind not in ("objects", "geojson", "ome-zarr")):
        parser.error("--background-ring measures the local background of the channels of --measure: it "
                     "needs --measure and --output objects, geojson or ome-zarr (not --stitch-z)")
    if args.stitch_z is not None and (args.z != ALL_PLANES or args.kind != "labels"):
        parser.error("--stitch-z links the slices' labels: it needs --z all and --output labels")
    if args.stitch_z is not None and args.shard is not None and not isinstance(args.diameter, float):
        parser.error("--stitch-z with --shard needs --diameter PX: each shard would estimate its own, and "
                     "a stack's slices must all be segmented at one scale (a run on one stack without "
                     "--shard prints the diameter it estimated)")
    if args.stitch_z == STITCH_DEFAULT:
        from service.zstack import DEFAULT_MIN_IOU

        args.stitch_z = DEFAULT_MIN_IOU
    # Stitching needs one scale for every slice: without --diameter PX it is estimated once.
    once = args.diameter == "once" or (args.stitch_z is not None and args.diameter is None)
    if once and args.kind == "ome-zarr":
        parser.error("--diameter once is for images: a slide's own estimate costs a fraction of a "
                     "percent of its segmentation (give a number to segment every slide at one scale)")
    return Config(inputs=tuple(args.inputs), out=args.out, urls=tuple(args.urls), kind=args.kind,
                  split=args.split, diameter=None if once else args.diameter, diameter_once=once,
                  channel=args.channel, measure=args.measure, measure_project=args.measure_project,
                  expand=args.expand, background_ring=args.background_ring,
                  z=None if args.z == ALL_PLANES else args.z, t=None if args.t == ALL_PLANES else args.t,
                  series=None if args.series == ALL_PLANES else args.series,
                  every_plane=every[0] if every else None,
                  project=args.project, pixel_size=args.pixel_size, polarity=args.polarity,
                  concurrency=args.concurrency or default_concurrency(args.urls, args.kind),
                  overwrite=args.overwrite,
                  timeout_s=args.timeout_s, retries=args.retries, retry_for_s=args.retry_for_s,
                  api_key=args.api_key or None,
                  report=args.report, progress=args.progress, model=args.model,
                  job_above=args.job_above, shard=args.shard, data_root=args.data_root, geojson=args.geojson,
                  stitch_z=args.stitch_z)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        if config.out.exists() and not config.out.is_dir():
            raise UsageError(f"--out {config.out}: exists and is not a folder")
        kind = output_kind(config)
        left_out: dict[str, int] = {}
        found = find_images(config.inputs, stores=isinstance(kind, SlideOutput), left_out=left_out)
        for what, count in left_out.items():
            print(f"unet-segment: left out {count} {what}: no images of the sample (name one to send it)",
                  file=sys.stderr)
        every = plan_jobs(found, config.out, kind, config.every_plane,
                          planes_of=lambda source, axis: count_planes(source, axis, config.series))
        jobs = shard_jobs(every, config.out, config.shard)
        summary_path = config.summary_path()
        if kind.object_values and any(j.target == summary_path for j in every):
            raise UsageError(f"an image would write {summary_path}, where the object summary goes; rename it")
        if (config.urls and config.data_root is None
                and (store := next((j.source for j in jobs if j.source.is_dir()), None))):
            raise UsageError(f"{store}: an OME-Zarr store (a folder) cannot be uploaded (an upload is one "
                             "file): give the server's data root with --data-root to send its path, or "
                             "leave out --url (local mode)")
        if config.data_root is not None:
            from service.client_slides import data_path

            for job in jobs:
                data_path(job.source, config.data_root)  # inside the root, or a usage error now
    except UsageError as exc:
        print(f"unet-segment: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.shard is not None:
        print(f"unet-segment: shard {config.shard.index}/{config.shard.count}: {len(jobs)} of "
              f"{len(every)} images", file=sys.stderr)
    try:
        summary = run(config, jobs)
    except UsageError as exc:  # local mode: the model would not load
        print(f"unet-segment: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("unet-segment: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if kind.object_values:
        write_object_summary(summary_path, object_summary(jobs, kind, config.out))
    stitch_problems: list[str] = []
    if config.stitch_z is not None:
        from service import client_stacks

        # Over every job, not the shard's: a stack is stitched by whichever run finds all its slices.
        stitched, stitch_problems = client_stacks.stitch_outputs(
            every, kind.existing, config.stitch_z, config.pixel_size,
            pixels_of=lambda job: client_stacks.slice_pixels(job, config), expand=config.expand,
            series=config.series,
        )
        stacks_path = config.out / (config.shard.name(client_stacks.SUMMARY_NAME) if config.shard
                                    else client_stacks.SUMMARY_NAME)
        if stitched:
            client_stacks.write_summary(stacks_path, stitched)
        client_stacks.report(len(stitched), stitch_problems, stacks_path)
    print(summary.line(config.report_path()), file=sys.stderr)
    return EXIT_FAILED if summary.failures or stitch_problems else EXIT_OK


if __name__ == "__main__":
    # `python -m service.client` runs this file as __main__; service.client_slides imports it as
    # service.client. Run that one, so there is one copy of the module (one UsageError class).
    from service.client import main as module_main

    sys.exit(module_main())
