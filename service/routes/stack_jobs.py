"""Stack jobs: ``POST /jobs?output=labels3d``, a z-stack's nuclei in 3-D, and the files they leave.

The model is 2-D. A stack job segments every z-slice of an uploaded (or data-root) stack at one
nucleus diameter (``zstack.at_one_diameter``: the one given, or estimated on the middle slice),
links each slice's nuclei to those of the slice before (``zstack.Linker``, ``min_iou=``) and
writes, in the job's folder (``service.stack_files``),

- ``labels3d.tif``: the 3-D labels as an ImageJ ZYX hyperstack that Fiji and napari open,
  calibrated (x, y and the z-step) when the file says its voxel size;
- ``objects3d.csv``: one row per nucleus (volume, slices, centroid, intensities; µm and µm³
  with a calibration),

the same files ``unet-segment --stitch-z`` and ``Segmenter.segment_stack`` give. ``GET
/jobs/{id}/result`` answers a JSON summary with their URLs; ``GET /jobs/{id}/files/NAME`` and
``GET /jobs/{id}/files.zip`` serve them (``routes.slide_jobs``).

An upload is read from its bytes (:class:`UploadSlices`); a TIFF, CZI, LIF, ND2, OIB, ZVI, DeltaVision,
Imaris or OME-Zarr stack under the data root from the file, one slice at a time (:class:`FileSlices`), so it
may be of any size.

Memory: one slice at a time through the same pipeline as ``POST /segment``, plus the middle
slice's labels kept until its turn and the linker's slice before; the stitched slices wait on
disk. Each slice is admitted in its turn for that (:func:`admitted_pixels`), not the stack for its
voxels, so requests and other work get the budget between slices: a stack of 200 slices holds
no lane for the minutes it takes.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from service import cells3d, imaging, microscopy, pipeline, slide_files, stack_files, windows, zstack
from service.errors import ProblemError
from service.jobs import JobResult
from service.measured_channels import admitted_extra
from service.outputs import measured_keys
from service.preprocess import to_channels
from service.routes import slide_jobs
from service.routes.deps import Runtime
from service.routes.segment import SegmentOptions, object_params


def admitted_pixels(slice_pixels: int, measured: int = 0) -> int:
    """What a stack job holds of the admission budget for slices of ``slice_pixels`` (at the
    model's scale): one slice through the pipeline (what admission's ~48 bytes per pixel are
    measured on) and half as much again for what the stack keeps beside it: the middle slice's
    labels and grey pixels (8 bytes per pixel) until its turn, and the linker's slice before and
    its id map (8 to 16 bytes per pixel); plus ``measured`` channels' planes (``measure=``) of the
    slice and of the middle one."""
    return slice_pixels + slice_pixels // 2 + admitted_extra(measured, slice_pixels, copies=2)


@dataclass(frozen=True)
class SlicePlan:
    """What a stack is, from its header: its slices and their size, how many channels are
    measured besides the one segmented (``measure=``) and whether cells are grown (``expand=``)."""

    depth: int
    height: int
    width: int
    measured: int = 0
    cells: bool = False

    @property
    def disk_bytes(self) -> int:
        """The jobs folder's bytes the job takes while it runs: the stitched slices' scratch file,
        4 bytes per voxel (the label TIFFs written from it at the end are zlib-compressed: a
        fraction), and with cells the cells' scratch file, 4 more, and each measured channel's
        slices, up to 8 bytes per voxel."""
        voxels = self.depth * self.height * self.width
        return 4 * voxels + ((4 + 8 * self.measured) * voxels if self.cells else 0)


def plan(runtime: Runtime, data: bytes, options: SegmentOptions) -> SlicePlan:
    """The stack's depth (1 for an image without a Z axis) and slice size, with its plane choice
    checked on the middle slice without reading pixels: a channel or time point to choose is a
    ``microscopy.SelectionError`` (422) at submission, not a failed job."""
    settings = runtime.settings
    md = runtime.components()[0].metadata
    layout = microscopy.probe(data, settings.max_pixels, settings.decode_limits(), options.plane.series)
    depth = layout.planes.get("Z", 1)
    choice = microscopy.resolve(layout, _slice_selection(options, depth, depth // 2), md.in_channels)
    microscopy.check_measured(len(choice.measured), layout.width, layout.height, settings.max_pixels)
    stack = SlicePlan(depth, layout.height, layout.width, len(choice.measured), options.expand is not None)
    check_cells(stack, layout.pixel_size, options)
    return stack


def check_cells(stack: SlicePlan, pixel_size: microscopy.PixelSize | None, options: SegmentOptions) -> None:
    """A 413 at submission for cells (``expand=``) that reach too far for the stack to grow them
    within their working set (``cells3d.check_cells``), rather than a job that runs for hours."""
    try:
        cells3d.check_cells((stack.depth, stack.height, stack.width), options.expand,
                            zstack.VoxelSize.of(pixel_size, options.plane.pixel_size_um))
    except cells3d.CellsTooFar as exc:
        raise ProblemError(str(exc), status=413, slug="stack-cells-too-far",
                           title="Cells reach too far for this stack") from exc


def _slice_selection(options: SegmentOptions, depth: int, z: int) -> microscopy.Selection:
    return replace(options.plane, z=z if depth > 1 else None)


class Slices(Protocol):
    """A stack's slices read one at a time: ``plan`` (depth, size) and ``plane(z, should_stop)``."""

    plan: SlicePlan

    def plane(self, z: int, should_stop: Callable[[], bool]) -> microscopy.Plane: ...


class UploadSlices:
    """The file's bytes in memory (an upload, or a small file by path), read as ``POST /segment``
    reads them (``microscopy.select``), a slice at a time."""

    def __init__(self, runtime: Runtime, data: bytes, options: SegmentOptions) -> None:
        self.runtime, self.data, self.options = runtime, data, options
        self.plan = plan(runtime, data, options)

    def plane(self, z: int, should_stop: Callable[[], bool]) -> microscopy.Plane:
        settings = self.runtime.settings
        md = self.runtime.components()[0].metadata
        selection = _slice_selection(self.options, self.plan.depth, z)
        return microscopy.select(self.data, selection, settings.max_pixels, settings.decode_limits(),
                                 md.in_channels, should_stop)


class FileSlices:
    """A TIFF, CZI, LIF, ND2, OIB, ZVI, DeltaVision, Imaris or OME-Zarr stack under the data root, each
    slice read from the file when its turn comes (``slide_files.open_slide``, which bounds the file's
    structure before parsing it): the file is never read whole, so it may be larger than an upload.
    Grey planes only (a colour stack is read as an upload: :func:`file_slices`)."""

    def __init__(self, runtime: Runtime, path: Path, options: SegmentOptions) -> None:
        self.runtime, self.path, self.options = runtime, path, options
        try:  # a stack answers a plane without z= with the z-planes it has
            with self._open(None) as source:
                depth, shape, plane = 1, source.shape, source.plane
        except microscopy.SelectionError as exc:
            if not exc.missing or "z" not in exc.params:
                raise
            depth = int(exc.choices["planes"]["Z"])
            with self._open(depth // 2) as source:  # the middle slice's choice checked, as for an upload
                shape, plane = source.shape, source.plane
        self.grey = len(shape) == 2
        measured = len(plane.measured)
        microscopy.check_measured(measured, int(shape[1]), int(shape[0]), runtime.settings.max_pixels)
        self.plan = SlicePlan(depth, int(shape[0]), int(shape[1]), measured, options.expand is not None)
        check_cells(self.plan, plane.pixel_size, options)

    def _open(self, z: int | None) -> slide_files.SlideSource:
        settings = self.runtime.settings
        md = self.runtime.components()[0].metadata
        return slide_files.open_slide(self.path, replace(self.options.plane, z=z),
                                      max_pixels=settings.max_pixels, limits=settings.decode_limits(),
                                      model_channels=md.in_channels)

    def plane(self, z: int, should_stop: Callable[[], bool]) -> microscopy.Plane:
        h, w = self.plan.height, self.plan.width
        with self._open(z if self.plan.depth > 1 else None) as source:
            measured = tuple(replace(m, image=source.of_channel(m.channel).read(0, h, 0, w))
                             for m in source.plane.measured)
            return replace(source.plane, image=source.read(0, h, 0, w), measured=measured)


def file_slices(runtime: Runtime, path: Path, options: SegmentOptions) -> FileSlices | None:
    """The stack at ``path`` read slice by slice from the file, or None where it must be read as an
    upload: not a TIFF, CZI, LIF, ND2, OIB, ZVI, DeltaVision, Imaris or OME-Zarr, a layout read by
    region cannot take (a plane in one huge compressed strip), or a colour plane (``microscopy.select``
    mixes and picks colours). Raises what an unreadable file or a plane choice it lacks raises."""
    if not slide_files.is_slide_path(path):
        return None
    try:
        slices = FileSlices(runtime, path, options)
    except imaging.UnsupportedImageType:
        return None
    return slices if slices.grey else None


@dataclass
class _Slice:
    labels: np.ndarray
    grey: np.ndarray  # the plane's pixels as one channel: what the intensities are measured on
    measured: list[np.ndarray]  # the channels measured besides (measure=), in the plane's order
    scale: pipeline.ScaleChoice
    warnings: list[str]
    plane: microscopy.Plane
    tiles: int


@dataclass
class StackResult:
    summary: stack_files.StackSummary
    diameter: float | None
    diameter_source: str
    voxel: zstack.VoxelSize | None
    min_iou: float
    tiles: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    expand: float | None = None  # the cells' distance (px), None: no cells


class _StackProgress:
    """Each slice's tile progress as the stack's: slices done × tiles a slice + this slice's."""

    def __init__(self, report: Callable[[int, int], None], depth: int) -> None:
        self.report, self.depth, self.before = report, depth, 0

    def __call__(self, done: int, total: int) -> None:
        self.report(self.before + done, max(self.before + total, total * self.depth))

    def slice_done(self, tiles: int) -> None:
        self.before += tiles


#: ``admit(pixels)``: a block holding that much of the admission budget (waiting for it), which
#: gives the function that raises the hold once a slice's scale is known (``Runtime.grow``).
Admit = Callable[[int], AbstractContextManager[Callable[[int], None]]]


def run(
    runtime: Runtime,
    slices: Slices,
    options: SegmentOptions,
    folder: Path,
    should_stop: Callable[[], bool],
    progress: Callable[[int, int], None],
    admit: Admit,
) -> StackResult:
    """Segment every slice of the stack ``slices`` reads and write its 3-D nuclei to ``folder``.
    Blocking; raises the domain errors ``POST /segment`` maps to problems. Each slice is segmented
    inside ``admit(admitted_pixels(slice pixels))``. A failed or stopped run leaves no file."""
    started = time.perf_counter()
    engine, batcher = runtime.components()
    md = engine.metadata
    settings = runtime.settings
    tiling = runtime.tiling(md, options.tile_size, options.overlap)
    params = object_params(options, md)
    threshold = options.threshold if options.threshold is not None else md.threshold
    min_iou = options.min_iou if options.min_iou is not None else zstack.DEFAULT_MIN_IOU
    stack = slices.plan
    depth = stack.depth
    measured = stack.measured
    stack_progress = _StackProgress(progress, depth)

    def infer(batch: np.ndarray) -> np.ndarray:
        return batcher.infer(batch, should_stop)

    def segment_slice(z: int, diameter: float | None) -> _Slice:
        with admit(admitted_pixels(stack.height * stack.width, measured)) as reserve:
            try:
                plane = slices.plane(z, should_stop)
            except imaging.UndecodableImage as exc:  # one slice's data corrupt: say which, of how many
                raise imaging.UndecodableImage(f"z-slice {z} of {depth}: {exc}") from exc
            planned = pipeline.predict_plane(
                plane.image, infer, md, diameter, settings.max_pixels,
                tile_size=tiling.tile_size, overlap=tiling.overlap, batch_size=settings.max_batch_size,
                should_stop=should_stop, progress=stack_progress,
                reserve=lambda pixels: reserve(admitted_pixels(pixels, measured)),
                window_policy=windows.policy(settings, tiling.source), polarity=plane.polarity,
            )
            grid = pipeline.on_input_grid(planned.prediction, md, plane.image.shape[:2], threshold, params,
                                          need={"mask"})
        assert grid.labels is not None
        stack_progress.slice_done(planned.prediction.tiles)
        return _Slice(grid.labels, to_channels(plane.image, 1), [m.image for m in plane.measured],
                      planned.scale, [*plane.warnings, *planned.warnings, *grid.warnings],
                      plane.without_pixels(), planned.prediction.tiles)

    files: stack_files.StackFiles | None = None
    notices = zstack.SliceNotices()
    tiles = 0
    try:
        segmented = zstack.at_one_diameter(depth, segment_slice, options.diameter,
                                           lambda s: s.scale.diameter, md.nucleus_diameter)
        for z, result in segmented:
            if files is None:  # the first slice's size is the stack's (every slice is the same plane)
                files = stack_files.StackFiles(folder, (depth, *result.labels.shape), min_iou,
                                               measured_keys(result.plane), options.expand)
            files.add(result.labels, result.grey, result.measured)
            notices.add(z, result.warnings)
            tiles += result.tiles
            if z == depth // 2:
                middle = result
        assert files is not None
        voxel = zstack.VoxelSize.of(middle.plane.pixel_size)
        if options.expand is None:
            summary = files.finish(voxel)
        else:  # the cells are grown once every slice is in: admitted for their working set
            with admit(cells3d.admitted_pixels(files.shape, options.expand, voxel)):
                summary = files.finish(voxel, should_stop)
    except BaseException as exc:
        if files is not None:
            files.discard()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ProblemError(
                "the jobs folder's disk filled up while the stack's slices were written; retry once "
                "other jobs are deleted or expire", status=507, slug="insufficient-storage",
                title="Insufficient storage", headers={"Retry-After": "60"},
            ) from exc
        raise
    warnings = notices.lines()
    if options.expand is not None and (notice := cells3d.unknown_z_step_notice(voxel, options.expand)):
        warnings.append(notice)
    return StackResult(summary, middle.scale.diameter, middle.scale.source, voxel, min_iou, tiles,
                       warnings, time.perf_counter() - started, options.expand)


def job_result(job_id: str, result: StackResult, filename: str | None, model_version: str) -> JobResult:
    """The job's ``/result``: a JSON summary with the URLs of the files."""
    base = f"/jobs/{job_id}/files"
    s = result.summary
    voxel = result.voxel
    summary = {
        "depth": s.depth,
        "height": s.height,
        "width": s.width,
        "objects": s.objects,
        "objects_reaching_stack_ends": s.reaching_ends,
        "nucleus_diameter": None if result.diameter is None else round(result.diameter, 2),
        "diameter_source": result.diameter_source,
        "min_iou": result.min_iou,
        "voxel_size_um": None if voxel is None else {"x": voxel.x_um, "y": voxel.y_um, "z": voxel.z_um},
        "tiles": result.tiles,
        "warnings": result.warnings,
        "labels_url": f"{base}/{stack_files.LABELS_NAME}",
        "objects_url": f"{base}/{stack_files.TABLE_NAME}",
        "zip_url": f"/jobs/{job_id}/files.zip",
        "layout": {
            stack_files.LABELS_NAME: "ImageJ hyperstack, axes ZYX: one id per nucleus across its slices "
            "(0 = background; the table's id), uint16, or float32 past 65,535 nuclei",
            stack_files.TABLE_NAME: "one row per nucleus: volume, slices, z extent, centroid, largest "
            "cross-section, mean and integrated intensity; µm and µm³ when the voxel size is known",
        },
        "timings_ms": {"total": round(1000 * result.seconds, 1)},
    }
    if result.expand is not None:
        summary["expand"] = result.expand
        summary["cells_url"] = f"{base}/{stack_files.CELLS_NAME}"
        summary["layout"][stack_files.CELLS_NAME] = (  # type: ignore[index]
            f"each nucleus's cell, grown in 3-D by up to {result.expand:g} px (z in the z-step's "
            "proportion), as the labels: the nucleus's id; the table gains cell_volume_voxels, "
            "cytoplasm_volume_voxels (the cell less every nucleus), cell_volume_um3 with a voxel size, "
            "and the cytoplasm's intensity per measured channel")
    headers = {"X-Diameter-Source": result.diameter_source}
    if result.diameter is not None:
        headers["X-Nucleus-Diameter"] = f"{result.diameter:.1f}"
    return slide_jobs.summary_result(summary, "labels3d", filename, model_version, headers)
