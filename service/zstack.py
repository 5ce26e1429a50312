"""Nuclei in 3-D from a z-stack segmented slice by slice.

The model is 2-D. A confocal z-stack of nuclei segmented one slice at a time (``--z all``) gives
each nucleus once per slice it crosses: counted 2-D, one nucleus ten slices deep is ten objects.
Here each slice's objects are linked to those of the slice before by overlap, as Cellpose links
its 2-D masks into 3-D ones (``stitch_threshold``): an object takes the id of the previous
slice's object it overlaps most by intersection over union (IoU), if that IoU reaches
``min_iou``; otherwise it starts a new nucleus. Links are one-to-one, chosen greedily by IoU,
highest first (ties: lower labels), so no two objects of a slice share an id and which voxels
make a nucleus does not depend on the slices' label order.

Pure functions over label arrays; the stack is never held whole: :func:`link_slice` gives a
slice's id map (its own label → stitched id) from that slice and the one before, so a caller
can link a stack of any depth holding two slices, and write the stitched slices in a second pass
(:func:`write_labels_tiff`) once the number of nuclei, and so the pixel type, is known.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from service.intensity_sums import finite_sums, intensity_columns
from service.measured_channels import channel_columns

Slice = TypeVar("Slice")

#: The IoU a slice's object needs with one of the slice before to be the same nucleus
#: (``docs/benchmarks.md``, "Nuclei in 3-D from a z-stack": chosen on synthetic stacks).
DEFAULT_MIN_IOU = 0.25


def link_slice(
    previous: np.ndarray | None, labels: np.ndarray, next_id: int, min_iou: float = DEFAULT_MIN_IOU
) -> tuple[np.ndarray, int]:
    """``(id_map, next_id)``: ``id_map[k]`` is the stitched id of object ``k`` of ``labels``.

    Args:
        previous: the slice before, already stitched (its values are stitched ids), or None for
            the first slice.
        labels: this slice's 2-D labels as segmented (0 background, any positive ids).
        next_id: the first stitched id not yet given out.
        min_iou: the IoU in (0, 1] a link needs.

    ``id_map[0]`` is 0 and ids absent from ``labels`` map to 0; the stitched slice is
    ``id_map[labels]``. ``next_id`` comes back advanced past the new nuclei.
    """
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    labels = np.asarray(labels)
    if previous is not None and previous.shape != labels.shape:
        raise ValueError(f"slices differ in size: {previous.shape} then {labels.shape}")
    top = int(labels.max(initial=0))
    id_map = np.zeros(top + 1, dtype=np.int64)
    area = np.bincount(labels.ravel(), minlength=top + 1)
    present = np.flatnonzero(area[1:]) + 1
    linked: dict[int, int] = {}
    if previous is not None and present.size:
        linked = _links(previous, labels, area, min_iou)
    if linked:
        count = len(linked)
        id_map[np.fromiter(linked, np.int64, count)] = np.fromiter(linked.values(), np.int64, count)
    new = present[id_map[present] == 0]  # new nuclei numbered in label order: the same stack, the same ids
    id_map[new] = np.arange(next_id, next_id + new.size)
    return id_map, next_id + int(new.size)


def _links(previous: np.ndarray, labels: np.ndarray, area: np.ndarray, min_iou: float) -> dict[int, int]:
    """{this slice's label: previous stitched id}, one-to-one, greedy by IoU (ties: lower ids);
    ``area``: each label's pixels in ``labels``."""
    both = (previous > 0) & (labels > 0)
    if not both.any():
        return {}
    # One int64 key per overlapping pixel (label, previous id): a 1-D unique, where unique pairs
    # (axis=1) took 0.37 s against 0.08 s on a 2048² slice of 7,744 nuclei.
    base = int(previous.max()) + 1
    keys, overlap = np.unique(labels[both].astype(np.int64) * base + previous[both], return_counts=True)
    label_of, previous_of = keys // base, keys % base
    previous_area = np.bincount(previous.ravel())  # a count per id: O(pixels), where a sort is not
    iou = overlap / (area[label_of] + previous_area[previous_of] - overlap)
    kept = iou >= min_iou
    label_of, previous_of, iou = label_of[kept], previous_of[kept], iou[kept]
    links: dict[int, int] = {}
    taken: set[int] = set()
    # Highest IoU first; ties by the lower label, then the lower previous id.
    for k in np.lexsort((previous_of, label_of, -iou)).tolist():
        label, prev = int(label_of[k]), int(previous_of[k])
        if label not in links and prev not in taken:
            links[label] = prev
            taken.add(prev)
    return links


def at_one_diameter(
    depth: int,
    segment: Callable[[int, float | None], Slice],
    diameter: float | None,
    estimate_of: Callable[[Slice], float | None],
    model_diameter: float | None,
) -> Iterator[tuple[int, Slice]]:
    """``(z, segment(z, d))`` for every slice, top to bottom, all at one nucleus diameter ``d``.

    The middle slice is segmented first, at ``diameter`` (None: the service estimates it there);
    the others at ``diameter``, else at that estimate to 0.1 px (what ``unet-segment --stitch-z``
    sends, as the service's header gives it), else, where the middle slice gave none, at
    ``model_diameter``. A nucleus's top and bottom caps, smaller and dimmer, would each get a
    scale of their own if every slice were estimated: the middle slice is the one most nuclei
    cross. ``estimate_of``: the diameter a segmented slice was estimated at (None: none).
    """
    middle_z = depth // 2
    middle = segment(middle_z, diameter)
    at = diameter
    if at is None:
        estimated = estimate_of(middle)
        at = round(estimated, 1) if estimated is not None else model_diameter
    for z in range(depth):
        yield z, middle if z == middle_z else segment(z, at)


def stitch(slices: Iterable[np.ndarray], min_iou: float = DEFAULT_MIN_IOU) -> Iterator[np.ndarray]:
    """Each slice of ``slices`` (2-D labels, top to bottom) with stitched ids, in order."""
    linker = Linker(min_iou)
    for labels in slices:
        yield linker.add(labels)[1]


class PixelSizeLike(Protocol):
    """What :meth:`VoxelSize.of` reads of ``microscopy.PixelSize`` (not imported: it is heavy)."""

    x_um: float
    y_um: float
    z_um: float | None


@dataclass(frozen=True)
class VoxelSize:
    """µm per voxel along x, y and z (the z-step); ``z_um`` None where the file does not say."""

    x_um: float
    y_um: float
    z_um: float | None

    @classmethod
    def of(cls, pixel_size: PixelSizeLike | None, override_um: float | None = None) -> VoxelSize | None:
        """A plane's pixel size (``microscopy.PixelSize``) as a voxel size, None where uncalibrated;
        ``override_um``: a request's ``pixel_size=``, which replaces x and y and keeps the z-step."""
        z_um = None if pixel_size is None else pixel_size.z_um
        if override_um is not None:
            return cls(override_um, override_um, z_um)
        return None if pixel_size is None else cls(pixel_size.x_um, pixel_size.y_um, z_um)


class StackTable:
    """Per-nucleus sums over a stack, slice by slice: size, extent, centroid, intensity.

    :meth:`add` takes each stitched slice once (and its image, for intensities; and the slices of
    the channels measured besides, ``channel_keys``, for their columns); :meth:`rows` gives one row
    per nucleus. Memory: a few numbers per nucleus, never a slice kept.
    """

    _FIELDS = ("voxels", "sum_z", "sum_y", "sum_x", "z_first", "z_last", "max_area")

    def __init__(self, channel_keys: Sequence[str] = ()) -> None:
        self.channel_keys = tuple(channel_keys)
        # Intensity k (0: the segmented channel's, then each measured one): its sum over a nucleus's
        # finite voxels and their count (``intensity_sums``).
        intensities = [f"{kind}_{k}" for k in range(1 + len(self.channel_keys)) for kind in ("sum", "finite")]
        fields = (*self._FIELDS, *intensities)
        self._data = {name: np.zeros(0, dtype=np.float64) for name in fields}
        self._data["z_first"] = np.zeros(0, dtype=np.int64)
        self._data["z_last"] = np.zeros(0, dtype=np.int64)
        self._slices = 0
        self._with_intensity = True

    def _grow(self, size: int) -> None:
        for name, values in self._data.items():
            if values.size < size:
                grown = np.zeros(max(size, 2 * values.size), dtype=values.dtype)
                if name == "z_first":
                    grown[:] = -1
                grown[: values.size] = values
                self._data[name] = grown

    def add(
        self, z: int, stitched: np.ndarray, image: np.ndarray | None = None,
        channels: Sequence[np.ndarray] = (),
    ) -> None:
        """Count slice ``z`` (its stitched labels; ``image``: its grey pixels on the same grid;
        ``channels``: the measured channels' pixels of this slice, one per ``channel_keys``)."""
        if len(channels) != len(self.channel_keys) or any(c.shape != stitched.shape for c in channels):
            raise ValueError(
                f"slice z={z} brings {[c.shape for c in channels]} for the measured channels "
                f"{list(self.channel_keys)}; each must be {stitched.shape}"
            )
        top = int(stitched.max(initial=0))
        self._slices = max(self._slices, z + 1)
        if image is None:
            self._with_intensity = False
        if top == 0:
            return
        self._grow(top + 1)
        # Sums over the nuclei's pixels only: half a slice or less, where the background is the rest.
        inside = np.flatnonzero(stitched)
        ids = stitched.ravel()[inside]
        rows, cols = np.divmod(inside, stitched.shape[1])
        area = np.bincount(ids, minlength=top + 1).astype(np.float64)
        seen = np.flatnonzero(area)
        d = self._data
        d["voxels"][: top + 1] += area
        d["sum_z"][: top + 1] += area * z
        d["sum_y"][: top + 1] += np.bincount(ids, weights=rows, minlength=top + 1)
        d["sum_x"][: top + 1] += np.bincount(ids, weights=cols, minlength=top + 1)
        for k, pixels in enumerate((image, *channels)):
            if pixels is None:
                continue
            sums, finite = finite_sums(ids, np.asarray(pixels).ravel()[inside], top + 1)
            d[f"sum_{k}"][: top + 1] += sums
            d[f"finite_{k}"][: top + 1] += area if finite is None else finite
        first = d["z_first"][seen]
        d["z_first"][seen] = np.where(first < 0, z, np.minimum(first, z))
        d["z_last"][seen] = np.maximum(d["z_last"][seen], z)
        d["max_area"][seen] = np.maximum(d["max_area"][seen], area[seen])

    def rows(self, voxel: VoxelSize | None = None) -> list[dict[str, float | int | None]]:
        """One row per nucleus (stitched id order): ``id``, ``volume_voxels``, ``slices``,
        ``z_first``/``z_last``, ``centroid_x``/``_y``/``_z`` (px, slice index), ``max_area_px`` (the
        largest cross-section), ``touches_stack_end`` (1: it reaches the first or last slice, so
        may be cut), ``mean_intensity`` and ``integrated_intensity`` (the sum over its voxels) where
        every slice came with its image, and the same two per measured channel
        (``measured_channels.channel_columns``); with a pixel size ``centroid_*_um``, and with a z-step too
        ``volume_um3`` and ``equivalent_diameter_um`` (of the sphere of that volume)."""
        d = self._data
        # Intensity k's columns: 0 the segmented channel's (where every slice came with its image),
        # then each measured channel's.
        intensities = [(0, ("mean_intensity", "integrated_intensity"))] if self._with_intensity else []
        intensities += [(k + 1, channel_columns(key)) for k, key in enumerate(self.channel_keys)]
        out: list[dict[str, float | int | None]] = []
        for label in np.flatnonzero(d["voxels"]):
            if label == 0:
                continue
            n = float(d["voxels"][label])
            z_first, z_last = int(d["z_first"][label]), int(d["z_last"][label])
            row: dict[str, float | int | None] = {
                "id": int(label),
                "volume_voxels": int(n),
                "slices": z_last - z_first + 1,
                "z_first": z_first,
                "z_last": z_last,
                "centroid_x": round(float(d["sum_x"][label]) / n, 2),
                "centroid_y": round(float(d["sum_y"][label]) / n, 2),
                "centroid_z": round(float(d["sum_z"][label]) / n, 2),
                "max_area_px": int(d["max_area"][label]),
                "touches_stack_end": int(z_first == 0 or z_last == self._slices - 1),
            }
            # Fiji's RawIntDen: over a whole nucleus, a DNA stain's total goes with its DNA content.
            for k, columns in intensities:
                row.update(intensity_columns(columns, d[f"sum_{k}"][label], d[f"finite_{k}"][label], 3))
            if voxel is not None:
                row["centroid_x_um"] = round(row["centroid_x"] * voxel.x_um, 3)
                row["centroid_y_um"] = round(row["centroid_y"] * voxel.y_um, 3)
                if voxel.z_um is not None:
                    row["centroid_z_um"] = round(row["centroid_z"] * voxel.z_um, 3)
                    volume = n * voxel.x_um * voxel.y_um * voxel.z_um
                    row["volume_um3"] = round(volume, 3)
                    row["equivalent_diameter_um"] = round((6 * volume / math.pi) ** (1 / 3), 3)
            out.append(row)
        return out


class Linker:
    """A stack linked slice by slice, top to bottom, each nucleus counted in :attr:`table` as it
    goes: the one loop behind ``Segmenter.segment_stack``, ``unet-segment --stitch-z`` and
    :func:`stitch`. Holds the slice before, never the stack."""

    def __init__(self, min_iou: float = DEFAULT_MIN_IOU, channel_keys: Sequence[str] = ()) -> None:
        self.min_iou = min_iou
        self.table = StackTable(channel_keys)
        self._previous: np.ndarray | None = None
        self._next_id = 1
        self._z = 0

    def add(
        self, labels: np.ndarray, image: np.ndarray | None = None, channels: Sequence[np.ndarray] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Link the next slice (its 2-D labels as segmented; ``image``: its grey pixels, for
        intensities; ``channels``: the measured channels' pixels, as :meth:`StackTable.add`):
        ``(id_map, stitched slice)``, as :func:`link_slice` defines ``id_map``."""
        labels = np.asarray(labels)
        if image is not None and image.shape != labels.shape:
            raise ValueError(f"slice z={self._z}: pixels {image.shape}, labels {labels.shape}")
        id_map, self._next_id = link_slice(self._previous, labels, self._next_id, self.min_iou)
        stitched = id_map[labels]
        self.table.add(self._z, stitched, image, channels)
        self._previous, self._z = stitched, self._z + 1
        return id_map, stitched

    @property
    def count(self) -> int:
        """Nuclei so far: the stitched ids are 1..count."""
        return self._next_id - 1


class SliceNotices:
    """The slices' notices for the user, each once, with the slices it came from (``(z=0, 1)``):
    a stack of 60 slices would otherwise say the same thing 60 times."""

    def __init__(self) -> None:
        self._slices: dict[str, list[int]] = {}

    def add(self, z: int, notices: Iterable[str]) -> None:
        for notice in notices:
            self._slices.setdefault(notice, []).append(z)

    def lines(self) -> list[str]:
        return [f"{notice} (z={', '.join(map(str, zs))})" for notice, zs in self._slices.items()]


def rows_to_csv(rows: list[dict[str, float | int | None]]) -> str:
    """The rows as CSV, a header even with no nucleus (its columns those of an uncalibrated table)."""
    fields = list(rows[0]) if rows else [
        "id", "volume_voxels", "slices", "z_first", "z_last", "centroid_x", "centroid_y", "centroid_z",
        "max_area_px", "touches_stack_end",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def label_dtype(count: int) -> np.dtype:
    """uint16 up to 65535 nuclei; past that float32, which Fiji opens (ImageJ has no 32-bit
    integer images) and which holds every id exactly up to 2**24."""
    if count <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if count <= 2**24:
        return np.dtype(np.float32)
    raise ValueError(f"{count} nuclei are more than a label stack can number exactly (2**24)")


def write_labels_tiff(
    path: str, slices: Callable[[], Iterator[np.ndarray]], shape: tuple[int, int, int], count: int,
    voxel: VoxelSize | None = None,
) -> None:
    """Write stitched slices as an ImageJ hyperstack (axes ZYX) that Fiji and napari open as a
    3-D label image, calibrated when ``voxel`` is known. ``slices()`` yields the ``shape[0]``
    slices in order (read one at a time: the stack is never held whole)."""
    import tifffile  # the Python API and the client need it only here

    dtype = label_dtype(count)
    metadata: dict[str, object] = {"axes": "ZYX"}
    resolution = None
    if voxel is not None:
        resolution = (1 / voxel.x_um, 1 / voxel.y_um)
        metadata["unit"] = "um"
        if voxel.z_um is not None:
            metadata["spacing"] = voxel.z_um
    pages = (np.asarray(s).astype(dtype) for s in slices())
    tifffile.imwrite(
        path, data=pages, shape=shape, dtype=dtype, imagej=True, resolution=resolution, metadata=metadata,
        compression="zlib",
    )
