"""``unet-segment --z all --stitch-z``: a z-stack's slices' labels linked into 3-D nuclei.

After a run has written every slice's labels of a stack (``NAME_z00.png`` … from ``--z all
--output labels``, this run's or an earlier one's), each stack gets two files beside them:

- ``NAME.labels3d.tif``: the 3-D label image, an ImageJ hyperstack (axes ZYX, calibrated with the
  file's pixel size and z-step) that Fiji and napari open; uint16, float32 past 65535 nuclei;
- ``NAME.objects3d.csv``: one row per nucleus (``service.zstack.StackTable.rows``);
- with ``--expand PX``, ``NAME.cells3d.tif``: each nucleus's cell grown in 3-D (``service.cells3d``,
  as a stack job grows them), and the cell columns in the table;

and the output folder a ``stacks.csv`` (``stacks.shard-I-of-N.csv`` for a shard): one row per
stack linked, its nuclei counted and their mean volume, for a batch of thousands of stacks.

Linked as ``Segmenter.segment_stack`` links them (``service.zstack``); the slices are read from
the written files twice, one at a time (ids, then the image), so a stack of any depth needs two
slices of memory. Intensities come from each slice's pixels read again from the input, as the
service read them (the same cut, channel and time point), and so do those of the channels of
``--measure`` (their columns in the table, as a stack job writes them). A stack with a slice missing (it
failed) gets no 3-D files: the run says which, and a rerun segments what is missing and stitches
then. Each file is written whole (a temporary file renamed), the table last, so its presence means
done.
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service import zstack
from service.client import replace_atomic, write_atomic

if TYPE_CHECKING:  # imported when cells are grown: scikit-image is not the client's to load otherwise
    from service.cells3d import CellSums

LABELS_SUFFIX = ".labels3d.tif"
TABLE_SUFFIX = ".objects3d.csv"
CELLS_SUFFIX = ".cells3d.tif"
SUMMARY_NAME = "stacks.csv"
SUMMARY_FIELDS = ("file", "labels", "nuclei", "touching_stack_end", "mean_volume_voxels", "mean_volume_um3")


@dataclass(frozen=True)
class SlicePixels:
    """One slice's pixels as the service read them: ``grey`` (the segmented channel), and the
    ``measured`` channels' (``--measure``) with their column keys."""

    grey: np.ndarray
    measured: tuple[np.ndarray, ...] = ()
    keys: tuple[str, ...] = ()


def read_labels(path: Path) -> np.ndarray:
    """One slice's labels as written by ``--output labels``: a 16-bit PNG, or a 32-bit TIFF."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path).astype(np.int64)
    import cv2

    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError(f"{path}: not a label image")
    return labels.astype(np.int64)


def stack_groups(jobs: Sequence) -> dict[Path, list]:
    """``{source: its jobs in z order}`` for the files ``--z all`` cut into slices (jobs whose
    plane is ``(("z", k),)``); a file without a Z axis is one job and no stack."""
    groups: dict[Path, list] = {}
    for job in jobs:
        if len(job.plane) == 1 and job.plane[0][0] == "z":
            groups.setdefault(job.source, []).append(job)
    return {source: sorted(group, key=lambda j: j.plane[0][1]) for source, group in groups.items()}


def outputs_for(first_target: Path, source: Path) -> tuple[Path, Path]:
    """Where a stack's 3-D labels and table go: beside its slices, named after the file."""
    return (first_target.with_name(source.stem + LABELS_SUFFIX),
            first_target.with_name(source.stem + TABLE_SUFFIX))


def stitch_outputs(
    jobs: Sequence, existing, min_iou: float, pixel_size_um: float | None = None,
    pixels_of: Callable[[Any], SlicePixels] | None = None, expand: float | None = None,
    series: int | None = None,
) -> tuple[list[dict], list[str]]:
    """Stitch every stack whose slices all exist; ``(one summary row per stack stitched, problems)``.

    ``existing(target)``: the written file of a job's target, or None (the output kind's
    ``existing``); ``pixel_size_um``: ``--pixel-size``, over the file's x/y calibration;
    ``pixels_of(job)``: the pixels the job's slice was segmented on (:func:`slice_pixels`), and
    its measured channels', for intensities; None: a table without them; ``expand``: cells grown
    in 3-D by this many px (``--expand``), ``NAME.cells3d.tif`` and the table's cell columns;
    ``series``: the image of files holding several the stacks are (``--series``), for their voxel size.
    """
    done: list[dict] = []
    problems: list[str] = []
    for source, group in stack_groups(jobs).items():
        paths = [existing(job.target) for job in group]
        missing = [job.plane[0][1] for job, path in zip(group, paths, strict=True) if path is None]
        if missing:
            problems.append(f"{source}: {len(missing)} of {len(group)} slices have no labels "
                            f"(z={', '.join(map(str, missing[:10]))}{' …' if len(missing) > 10 else ''}); "
                            "no 3-D labels: rerun to segment them")
            continue
        try:
            images = None if pixels_of is None else [lambda job=job: pixels_of(job) for job in group]
            rows = stitch_stack(source, paths, group[0].target, min_iou, pixel_size_um, images, expand,
                                series)
        except (OSError, ValueError) as exc:
            problems.append(f"{source}: cannot stitch its slices: {exc}")
            continue
        done.append(summary_row(source, outputs_for(group[0].target, source)[0], rows))
    return done, problems


def summary_row(source: Path, labels_path: Path, rows: Sequence[dict]) -> dict:
    """One stack's line of ``stacks.csv``: its nuclei, how many reach its first or last slice (the
    stack may cut them), their mean volume (µm³ where the file gives its voxel size)."""
    def mean(key: str) -> float | str:
        values = [row[key] for row in rows if key in row]
        return round(sum(values) / len(values), 3) if values else ""

    return {
        "file": str(source),
        "labels": labels_path.name,
        "nuclei": len(rows),
        "touching_stack_end": sum(int(row["touches_stack_end"]) for row in rows),
        "mean_volume_voxels": mean("volume_voxels"),
        "mean_volume_um3": mean("volume_um3"),
    }


def write_summary(path: Path, rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


def stitch_stack(
    source: Path, paths: Sequence[Path], first_target: Path, min_iou: float, pixel_size_um: float | None,
    images: Sequence[Callable[[], SlicePixels]] | None = None, expand: float | None = None,
    series: int | None = None,
) -> list[dict]:
    """Link the slices at ``paths`` (z order), write the stack's 3-D labels and table; its rows.
    ``images``: each slice's pixels, read when needed (one slice at a time), for intensities;
    ``expand``: also grow each nucleus's cell in 3-D (:func:`write_cells`). Raises ``ValueError``
    (``cells3d.CellsTooFar``) before writing anything for cells that reach too far for the stack."""
    linker: zstack.Linker | None = None  # made with the first slice: its measured channels' keys
    id_maps = []
    for z, path in enumerate(paths):
        labels = read_labels(path)
        pixels = None if images is None else images[z]()
        if linker is None:
            linker = zstack.Linker(min_iou, () if pixels is None else pixels.keys)
        try:
            if pixels is None:
                id_maps.append(linker.add(labels)[0])
            else:
                id_maps.append(linker.add(labels, pixels.grey, pixels.measured)[0])
        except ValueError as exc:  # a slice of another size than the others
            raise ValueError(f"{source}: {exc}") from exc
    shape = (len(paths), *labels.shape)
    voxel = voxel_size(source, pixel_size_um, series)
    if expand is not None:
        from service import cells3d

        cells3d.check_cells(shape, expand, voxel)

    def stitched() -> Iterator[np.ndarray]:
        for id_map, path in zip(id_maps, paths, strict=True):
            yield id_map[read_labels(path)]

    assert linker is not None, "a stack has at least one slice"
    labels_path, table_path = outputs_for(first_target, source)
    replace_atomic(labels_path, lambda tmp: zstack.write_labels_tiff(
        str(tmp), stitched, shape, linker.count, voxel))
    rows = linker.table.rows(voxel)
    if expand is not None:
        measured = None if images is None else [lambda z=z: images[z]().measured for z in range(len(paths))]
        cells_path = first_target.with_name(source.stem + CELLS_SUFFIX)
        write_cells(cells_path, stitched, shape, linker.count, expand, voxel, linker.table.channel_keys,
                    measured).extend(rows, voxel)
        if notice := cells3d.unknown_z_step_notice(voxel, expand):
            print(f"unet-segment: --stitch-z: {source}: {notice}", file=sys.stderr)
    write_atomic(table_path, zstack.rows_to_csv(rows).encode())  # last: its presence means done
    return rows


def write_cells(
    path: Path, stitched: Callable[[], Iterator[np.ndarray]], shape: tuple[int, int, int], count: int,
    expand: float, voxel: zstack.VoxelSize | None, keys: Sequence[str],
    measured: Sequence[Callable[[], Sequence[np.ndarray]]] | None,
) -> CellSums:
    """Grow the stitched stack's cells in 3-D (``cells3d.grow_and_measure``) and write them as
    ``path`` (the labels' hyperstack layout, the nuclei's ids); their ``cells3d.CellSums``.
    ``measured``: each slice's measured channels (read again, one slice at a time), for the
    cytoplasm's intensities. The nuclei and the cells wait in scratch files beside ``path``
    (8 bytes a voxel, removed after): the stack is never held in memory."""
    from service import cells3d

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".cells3d-") as scratch:
        nuclei, cells = (np.lib.format.open_memmap(Path(scratch, name), "w+", np.int32, shape)
                         for name in ("nuclei.npy", "cells.npy"))
        for z, labels in enumerate(stitched()):
            nuclei[z] = labels

        def read(z0: int, z1: int) -> np.ndarray:
            return nuclei[z0:z1]

        sums = cells3d.grow_and_measure(read, cells, expand, voxel, keys,
                                        (lambda z: ()) if measured is None else (lambda z: measured[z]()))
        replace_atomic(path, lambda tmp: zstack.write_labels_tiff(
            str(tmp), lambda: iter(cells), shape, count, voxel))
    return sums


def slice_pixels(job: Any, config: Any) -> SlicePixels:
    """The pixels of ``job``'s slice as the service read them: the same cut (``client.job_bytes``)
    and the same choice of channel, time point and image (``microscopy.select``); with
    ``--measure``, the measured channels' too."""
    from service import microscopy
    from service.client import job_bytes
    from service.outputs import measured_keys
    from service.preprocess import to_channels
    from service.settings import get_settings

    settings = get_settings()
    payload = job_bytes(job, config)
    data, image_cut = payload.data, payload.image_cut
    selection = microscopy.Selection(
        channel=config.channel, z=dict(job.plane)["z"], t=config.t, pixel_size_um=config.pixel_size,
        polarity=config.polarity or "bright", series=None if image_cut else config.series,
        measure=microscopy.measure_choice(config.measure),
    )
    plane = microscopy.select(data, selection, settings.max_pixels, settings.decode_limits(), 1)
    return SlicePixels(to_channels(plane.image, 1), tuple(m.image for m in plane.measured),
                       tuple(measured_keys(plane)))


def voxel_size(
    source: Path, pixel_size_um: float | None, series: int | None = None
) -> zstack.VoxelSize | None:
    """µm per voxel: the file's x/y/z calibration (of image ``series``) as the service reads it
    (``--pixel-size`` overrides x/y); None where neither gives an x/y size."""
    from service import frames
    from service.settings import get_settings

    layout = frames.file_layout(source, get_settings().max_pixels, series)
    return zstack.VoxelSize.of(layout.pixel_size if layout is not None else None, pixel_size_um)


def report(done: int, problems: Sequence[str], summary: Path) -> None:
    for problem in problems:
        print(f"unet-segment: --stitch-z: {problem}", file=sys.stderr)
    if done:
        print(f"unet-segment: --stitch-z: {done} stack(s) linked into 3-D nuclei "
              f"(NAME{LABELS_SUFFIX}, NAME{TABLE_SUFFIX}; counts in {summary})", file=sys.stderr)
