"""Segment images from Python, in this process: the service's pipeline without HTTP.

    from service.api import Segmenter

    segmenter = Segmenter.load()                        # the bundled model; Segmenter.load("my.onnx")
    result = segmenter.segment("cells.tif", channel="DAPI")
    result.labels                                       # (H, W) int32, 0 = background
    result.objects                                      # one dict per nucleus (centroid, area, ...)

An image is read, scaled to the model's nucleus size, tiled, run, stitched, split into objects
and measured by the same functions as ``POST /segment`` (``service.microscopy``,
``service.pipeline``, ``service.objects``, ``service.outputs``), with the same settings
(``service.settings.Settings``), so an API call and a request with the same options give the
same result. Tiles go through the same dynamic batcher: ``segment`` may be called from several
threads at once, and their tiles share model runs as concurrent requests do.

Errors are the domain's own exceptions, all ``ValueError``\\ s that say what to change:
``microscopy.SelectionError`` (a stack or multi-channel image without ``z=``/``channel=``, with
the choices in ``.choices``), ``imaging.ImageError`` (undecodable, unsupported, too large, too
complex: ``structure.TooComplex``) and
plain ``ValueError`` for options out of range.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from service import background, cells3d, imaging, microscopy, objects, pipeline, windows, zstack
from service.batcher import DynamicBatcher
from service.engine import Engine
from service.model_metadata import ModelMetadata
from service.outputs import (
    BACKGROUND_KINDS,
    CELL_KINDS,
    MAX_EXPAND_PX,
    cells_and_rings,
    measured_keys,
    object_rows,
)
from service.outputs import encode as encode_output
from service.polarity import POLARITIES, Polarity
from service.preprocess import to_channels
from service.settings import Settings
from service.tile_options import resolve as resolve_tiling

#: Arrays and tables :meth:`Segmenter.segment` can return.
Output = Literal["mask", "probability", "labels", "objects"]
OUTPUTS: tuple[Output, ...] = ("mask", "probability", "labels", "objects")
#: A file path, the file's bytes, or the pixels (see :meth:`Segmenter.segment` for arrays).
ImageInput = str | os.PathLike | bytes | np.ndarray
Split = Literal["center", "distance", "none"]

#: Letters ``axes=`` may use for an array: time, z, channel, rows, columns, colour samples.
ARRAY_AXES = "TZCYXS"
#: The service's limits on request options, kept for API calls (same results, same refusals).
DIAMETER_RANGE_PX = (1.0, 1000.0)


@dataclass(frozen=True)
class Segmentation:
    """One image's result, on the image's own grid.

    Attributes:
        mask: ``(H, W)`` uint8, 255 = nucleus, 0 = background (``threshold`` applied).
        probability: ``(H, W)`` float32 in [0, 1], the model's foreground probability.
        labels: ``(H, W)`` int32, 0 = background, 1..N one per nucleus (touching nuclei split).
        objects: one dict per nucleus, in label order: ``id`` (its value in ``labels``),
            ``centroid_x``/``centroid_y``, ``area`` (px), bounding box, intensities, mean
            confidence; plus ``area_um2``, ``centroid_*_um``, ``equivalent_diameter_um`` when
            the pixel size is known, and two columns per channel of ``measure`` — the columns of
            ``POST /segment?output=objects``.
        Each of the four is None unless asked for in ``outputs``.
        object_count: number of nuclei (None when neither labels nor objects were asked for).
        diameter: typical nucleus diameter in input px that the image was scaled by (None: not
            known, the image was segmented as it is).
        diameter_source: ``request`` (``diameter=``), ``estimated``, or ``model-scale``.
        scale_factor: model px per input px (1.0: not resized).
        warnings: notices about a result that may be unreliable (not fluorescence, no nuclei
            found while estimating their size, a file's calibration overridden, ...).
        plane: which channel / z / t / projection was segmented and its pixel size
            (``plane.describe()`` as JSON); its ``image`` is empty, and ``plane.measured`` holds the
            pixels of the channels asked for with ``measure``.
        image: the plane segmented, ``(H, W)`` or ``(H, W, C)`` as read.
        tiles: how many tiles the model ran on.
        expand: the ``expand`` asked for: :meth:`encode` gives ``objects`` and ``geojson`` with
            the same cells.
        background_ring: the ``background_ring`` asked for: :meth:`encode` gives ``objects`` and
            ``geojson`` with the same local backgrounds.
    """

    mask: np.ndarray | None
    probability: np.ndarray | None
    labels: np.ndarray | None
    objects: list[dict[str, Any]] | None
    object_count: int | None
    diameter: float | None
    diameter_source: pipeline.DiameterSource
    scale_factor: float
    warnings: tuple[str, ...]
    plane: microscopy.Plane
    image: np.ndarray
    tiles: int
    expand: float | None = None  # the cells asked for (``segment(expand=)``), for :meth:`encode`
    background_ring: float | None = None  # ``segment(background_ring=)``, for :meth:`encode`

    def encode(self, output: str, *, bits: int = 8, json_table: bool = False) -> tuple[bytes, str]:
        """``(file bytes, media type)`` exactly as ``POST /segment?output=...`` answers.

        ``output``: ``mask``, ``probability``, ``labels``, ``overlay``, ``objects``, ``geojson`` or
        ``rois``; the arrays it is drawn from must have been asked for (``service.outputs.NEEDS``).
        With :attr:`expand`, ``objects`` and ``geojson`` carry the cells as ``segment`` made them,
        and with :attr:`background_ring` the measured channels' local backgrounds.
        """
        return encode_output(
            output,
            self.image,
            probability=self.probability,
            mask=self.mask,
            labels=self.labels,
            plane=self.plane,
            warnings=self.warnings,
            bits=bits,
            json_table=json_table,
            expand=self.expand if output in CELL_KINDS else None,
            background_ring=self.background_ring if output in BACKGROUND_KINDS else None,
        )


@dataclass(frozen=True)
class StackSegmentation:
    """A z-stack's nuclei in 3-D (:meth:`Segmenter.segment_stack`).

    Attributes:
        labels: ``(Z, H, W)`` int32, 0 = background, 1..N one per nucleus across its slices.
        objects: one dict per nucleus, in id order (``service.zstack.StackTable.rows``): volume in
            voxels, slices, z extent, centroid, largest cross-section, mean and integrated
            intensity, whether it reaches the first or last slice; with the pixel size centroids
            in µm, with the z-step too volume (µm³) and equivalent sphere diameter (µm).
        object_count: number of nuclei.
        diameter: the nucleus diameter (px) given, or estimated on the middle slice; the other slices
            were segmented at it to 0.1 px (as ``unet-segment --stitch-z`` sends it). None: no
            estimate, every slice at the model's own scale.
        diameter_source: ``request``, ``estimated`` (on the middle slice) or ``model-scale``.
        voxel_size: µm per voxel (z None where the file does not give its z-step); None: uncalibrated.
        warnings: the slices' notices, each once, with the slices it came from (``(z=0, 1)``).
        plane: the middle slice's description (channel, t, pixel size); its ``image`` is empty.
        cells: with ``expand``, ``(Z, H, W)`` int32, each nucleus's cell grown in 3-D (its id);
            else None.
    """

    labels: np.ndarray
    objects: list[dict[str, Any]]
    object_count: int
    diameter: float | None
    diameter_source: pipeline.DiameterSource
    voxel_size: zstack.VoxelSize | None
    warnings: tuple[str, ...]
    plane: microscopy.Plane
    cells: np.ndarray | None = None

    def objects_csv(self) -> str:
        """The objects table as CSV, as ``unet-segment --stitch-z`` writes ``NAME.objects3d.csv``."""
        return zstack.rows_to_csv(self.objects)


#: Files larger than this are memory-mapped by :meth:`Segmenter.segment`, not read whole.
MAP_ABOVE_BYTES = 32 * 1024 * 1024


class Segmenter:
    """A model loaded once, segmenting any number of images in this process; thread-safe.

    Build it with :meth:`load`; close it (or use it as a context manager) to stop its batching
    thread, which is a daemon and never keeps the interpreter alive.
    """

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings if settings is not None else Settings()
        s = self.settings
        self._batcher = DynamicBatcher(
            engine.run,
            max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
            # No admission control in-process: the calling threads are the bound, so a caller is
            # never refused for a full queue (the server's 503) — it waits its turn.
            max_queue_tiles=sys.maxsize,
            max_batch_pixels=s.max_batch_pixels,
            name="segmenter",
        )

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        settings: Settings | None = None,
    ) -> Segmenter:
        """Load an exported model.

        Args:
            model: ONNX file written by ``python -m model_export export``; None: the settings'
                ``model_path`` — the bundled ``models/nuclei-unet.onnx`` unless ``UNET_MODEL_PATH``
                says otherwise. On the CPU its int8 copy ``<stem>.int8.onnx`` is served when it
                sits beside it, as in the service (``UNET_PRECISION``: auto, fp32 or int8).
            providers: ONNX Runtime execution providers in order of preference (``"cuda"``,
                ``"cpu"``, or full names); None: the settings' (CUDA, falling back to CPU).
            threads: ONNX Runtime threads inside one operator; None: the settings' (0 = one per core).
            settings: limits, batching and tiling defaults; None: read from the ``UNET_*``
                environment as the service does.

        Raises:
            engine.ModelLoadError: the file is missing, not ONNX, fails its checksum, or lacks the
                model's metadata.
        """
        base = settings if settings is not None else Settings()
        updates: dict[str, Any] = {}
        if model is not None:
            updates["model_path"] = Path(model)
        if providers is not None:
            updates["providers"] = list(providers)
        if threads is not None:
            updates["intra_op_threads"] = threads
        # Built anew (not model_copy) so the overrides are validated: "cpu" → CPUExecutionProvider.
        merged = Settings(**{**base.model_dump(), **updates}) if updates else base
        wanted = merged.providers
        if providers is None:
            # The default list names CUDA first; on a CPU-only onnxruntime (macOS, Linux ARM) that
            # is not a degradation worth a warning on every load, so ask only for what this build
            # has. A CUDA build without its libraries still lists CUDA, and still warns.
            import onnxruntime

            built = set(onnxruntime.get_available_providers())
            wanted = [p for p in wanted if p in built] or ["CPUExecutionProvider"]
        # As the service: UNET_PRECISION picks the int8 copy on the CPU, the seal is verified.
        engine = Engine.load_with_precision(
            merged.model_path,
            merged.precision,
            wanted,
            merged.intra_op_threads,
            merged.inter_op_threads,
            require_checksum=merged.require_model_checksum,
        )
        return cls(engine, merged)

    @property
    def metadata(self) -> ModelMetadata:
        """The model's self-description: name, version, nucleus diameter, threshold, tiling, ..."""
        return self.engine.metadata

    def segment(
        self,
        image: ImageInput,
        *,
        channel: str | int | None = None,
        z: int | None = None,
        t: int | None = None,
        project: Literal["max", "sum"] | None = None,
        pixel_size: float | None = None,
        polarity: Polarity = "bright",
        series: int | None = None,
        measure: Iterable[str | int] | str | None = None,
        measure_project: Literal["max", "sum"] | None = None,
        expand: float | None = None,
        background_ring: float | None = None,
        axes: str | None = None,
        diameter: float | None = None,
        threshold: float | None = None,
        split: Split | None = None,
        tile_size: int | None = None,
        overlap: int | None = None,
        outputs: Iterable[Output] = OUTPUTS,
    ) -> Segmentation:
        """Segment one image; the options are ``POST /segment``'s.

        Args:
            image: a file path (PNG, JPEG, BMP, TIFF / OME-TIFF / ImageJ hyperstack, Zeiss CZI, Leica
                LIF, Nikon ND2, Olympus OIB; mapped, not read whole), the file's
                bytes, or a NumPy array: ``(H, W)`` grey, ``(H, W, 3|4)`` colour, or any other
                shape with ``axes`` saying what its dimensions are.
            channel: the channel holding the nuclei: index, or name from the file (any case);
                ``"red"``/``"green"``/``"blue"`` for colour, ``"gray"`` to mix colour to grey.
                Needed when the image has several channels that differ.
            z, t: the z-slice / time point (0-based); ``project="max"`` / ``"sum"``: the maximum /
                sum (float32) projection over Z instead of one slice. A stack needs one of them.
            pixel_size: µm per pixel, overriding the file's calibration (adds µm columns).
            polarity: ``"dark"`` for nuclei darker than their background (bright field, H&E): the
                image is segmented as its optical density (``service.polarity``), a colour image's
                colours mixed unless ``channel`` says otherwise.
            series: which image of a file holding several (an OME-TIFF's Images, a CZI's scenes, a
                LIF project's images, an ND2's XY positions), 0-based; None: the first (a notice in
                ``warnings`` says how many there are).
            measure: channels to measure each object in besides the one segmented (indices or
                names, or ``"all"``): ``objects`` gains ``mean_intensity_KEY`` and
                ``integrated_intensity_KEY`` per channel (KEY: the channel's name made column-safe,
                else ``c{index}``), read at the same z / t or projection.
            measure_project: ``"max"`` / ``"sum"``: read the ``measure`` channels as this
                projection over Z whatever is segmented (segment on the maximum, measure on the sum).
            expand: a cell around each nucleus, grown by up to this many px into the background and
                never into a neighbour's: ``objects`` gains ``cell_area``, ``cytoplasm_area`` and,
                with ``measure``, each channel's intensity over the cytoplasm.
            background_ring: with ``measure``, each channel's local background around each nucleus:
                the median of a ring this many px wide starting 2 px outside it (outside its cell
                with ``expand``; ``service.background``): ``objects`` gains ``background_KEY``,
                ``mean_intensity_corrected_KEY`` and ``integrated_intensity_corrected_KEY`` per
                channel (the cytoplasm's two corrected ones too with ``expand``).
            axes: an array's dimensions in the letters ``T Z C Y X S`` (S: colour samples), e.g.
                ``"ZYX"``, ``"CYX"``, ``"YXC"``; default ``"YX"`` for 2-D, ``"YXS"`` for
                ``(H, W, 3|4)``; other shapes must say. Only for arrays.
            diameter: typical nucleus diameter in px; None: estimated per image.
            threshold: foreground probability threshold in (0, 1); None: the model's.
            split: how touching nuclei become objects; None: the model's choice.
            tile_size, overlap: tiling in px; None: the settings', else the model's.
            outputs: which of ``mask``, ``probability``, ``labels``, ``objects`` to return
                (labels and objects cost a watershed split; probability holds H×W float32).

        Raises:
            microscopy.SelectionError: a multi-channel image or stack without a choice, or a
                choice the image lacks (``.choices`` lists what it has).
            imaging.ImageError: undecodable, unsupported, over the pixel limit, or over a
                structure limit (pages, chunks, segments, metadata: ``structure.TooComplex``).
            ValueError: an option out of range.
        """
        wanted = _check_outputs(outputs)
        md = self.metadata
        s = self.settings
        _check_range("threshold", threshold, 0.0, 1.0, open_interval=True)
        _check_range("diameter", diameter, *DIAMETER_RANGE_PX)
        _check_expand(expand)
        _check_background_ring(background_ring, measure)
        if pixel_size is not None and not pixel_size > 0:
            raise ValueError(f"pixel_size must be more than 0 µm, got {pixel_size}")
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
        tiling = resolve_tiling(s, md, tile_size, overlap)
        params = objects.params_for_model(md, split)
        selection = microscopy.Selection(
            channel=None if channel is None else str(channel),
            z=z,
            t=t,
            project=project,
            pixel_size_um=pixel_size,
            polarity=polarity,
            series=series,
            measure=microscopy.measure_choice(measure),
            measure_project=measure_project,
        )
        plane = microscopy.select(
            self._read(image, axes, selection), selection, s.max_pixels, s.decode_limits(), md.in_channels
        )
        pixels = plane.image
        level = threshold if threshold is not None else md.threshold
        planned = pipeline.predict_plane(
            pixels,
            self._batcher.infer,
            md,
            diameter,
            s.max_pixels,
            tile_size=tiling.tile_size,
            overlap=tiling.overlap,
            batch_size=s.max_batch_size,
            window_policy=windows.policy(s, tiling.source),
            polarity=plane.polarity,
        )
        scale, prediction = planned.scale, planned.prediction
        notes = [*plane.warnings, *planned.warnings]
        want_labels = bool(wanted & {"labels", "objects"})
        grid = pipeline.on_input_grid(
            prediction, md, pixels.shape[:2], level, params if want_labels else None,
            need={"mask", "probability"} if wanted & {"probability", "objects"} else {"mask"},
        )
        notes += grid.warnings
        table = None
        if "objects" in wanted:
            assert grid.labels is not None
            cells, rings = cells_and_rings(grid.labels, expand, background_ring)
            rows = object_rows(grid.labels, pixels, grid.probability, plane, cells, rings)
            calibrated = plane.pixel_size is not None
            dicts = objects.row_dicts(rows, calibrated, measured_keys(plane), cells is not None,
                                      rings is not None)
            table = [_plain(row) for row in dicts]
        return Segmentation(
            mask=grid.mask if "mask" in wanted else None,
            probability=grid.probability if "probability" in wanted else None,
            labels=grid.labels if "labels" in wanted else None,
            objects=table,
            object_count=None if grid.labels is None else int(grid.labels.max(initial=0)),
            diameter=scale.diameter,
            diameter_source=scale.source,
            scale_factor=scale.factor,
            warnings=tuple(notes),
            plane=plane.without_pixels(keep_measured=True),  # encode("objects") measures them again
            image=pixels,
            tiles=prediction.tiles,
            expand=expand,
            background_ring=background_ring,
        )

    def segment_stack(
        self,
        image: ImageInput,
        *,
        channel: str | int | None = None,
        t: int | None = None,
        pixel_size: float | None = None,
        polarity: Polarity = "bright",
        series: int | None = None,
        measure: Iterable[str | int] | str | None = None,
        axes: str | None = None,
        diameter: float | None = None,
        threshold: float | None = None,
        split: Split | None = None,
        tile_size: int | None = None,
        overlap: int | None = None,
        min_iou: float = zstack.DEFAULT_MIN_IOU,
        expand: float | None = None,
    ) -> StackSegmentation:
        """Segment every z-slice of a stack and link the slices' nuclei into 3-D ones (``service.zstack``).

        The options are :meth:`segment`'s (``t=`` picks the time point of a 4-D file; ``measure``
        adds each channel's mean and integrated intensity over each nucleus's voxels);
        ``min_iou``: the overlap (IoU) a nucleus needs with one in the slice before to be the same.
        ``expand``: a cell around each nucleus grown in 3-D by up to this many px (z in the
        z-step's proportion, as cubes where the file gives none: a warning says so;
        ``service.cells3d``): :attr:`StackSegmentation.cells`, and the table's cell columns.
        Every slice is segmented at one scale: ``diameter``, or the one estimated on the middle slice
        (a nucleus's top and bottom caps, smaller and dimmer, would otherwise each get their own).
        An image without a Z axis is a stack of one slice.

        Raises: what :meth:`segment` raises; ``ValueError`` for ``min_iou`` outside (0, 1], and
        ``cells3d.CellsTooFar`` (a ``ValueError``) for cells that reach too far for the stack.
        """
        _check_range("min_iou", min_iou, 0.0, 1.0)
        if not min_iou > 0:
            raise ValueError(f"min_iou must be more than 0, got {min_iou}")
        _check_expand(expand)
        data = self._read(image, axes)
        s = self.settings
        layout = microscopy.probe(data, s.max_pixels, s.decode_limits(), series)
        depth = layout.planes.get("Z", 1)
        # cells that reach too far are refused before any slice is segmented
        cells3d.check_cells((depth, layout.height, layout.width), expand,
                            zstack.VoxelSize.of(layout.pixel_size, pixel_size))
        options: dict[str, Any] = dict(
            channel=channel, t=t, pixel_size=pixel_size, polarity=polarity, series=series, measure=measure,
            threshold=threshold, split=split, tile_size=tile_size, overlap=overlap, outputs=("labels",),
        )

        # Each slice reads the file again by its path (a map of its own: a map is one file position).
        source = image if isinstance(image, str | os.PathLike) else data

        def segment_slice(z: int, at: float | None) -> Segmentation:
            return self.segment(source, z=z if depth > 1 else None, diameter=at, **options)

        linker: zstack.Linker | None = None  # made with the first slice: its measured channels' keys
        stacked: list[np.ndarray] = []
        measured_slices: list[list[np.ndarray]] = []  # with cells: for the cytoplasm's intensities
        notes = zstack.SliceNotices()
        slices = zstack.at_one_diameter(
            depth, segment_slice, diameter, lambda s: s.diameter, self.metadata.nucleus_diameter
        )
        for z, result in slices:
            assert result.labels is not None
            if linker is None:
                linker = zstack.Linker(min_iou, measured_keys(result.plane))
            measured = [m.image for m in result.plane.measured]
            stitched = linker.add(result.labels, to_channels(result.image, 1), measured)[1]
            stacked.append(stitched.astype(np.int32))
            if expand is not None:
                measured_slices.append(measured)
            notes.add(z, result.warnings)
            if z == depth // 2:
                middle = result
        assert linker is not None
        voxel = zstack.VoxelSize.of(middle.plane.pixel_size)
        rows = linker.table.rows(voxel)
        labels = np.stack(stacked)
        cells = None
        warnings = notes.lines()
        if expand is not None:
            cells = np.zeros_like(labels)

            def nuclei(z0: int, z1: int) -> np.ndarray:
                return labels[z0:z1]

            sums = cells3d.grow_and_measure(nuclei, cells, expand, voxel, linker.table.channel_keys,
                                            measured_slices.__getitem__)
            sums.extend(rows, voxel)
            if notice := cells3d.unknown_z_step_notice(voxel, expand):
                warnings.append(notice)
        return StackSegmentation(
            labels=labels,
            cells=cells,
            objects=[_plain(row) for row in rows],
            object_count=len(rows),
            diameter=middle.diameter,
            diameter_source=middle.diameter_source,
            voxel_size=voxel,
            warnings=tuple(warnings),
            plane=middle.plane.without_pixels(),
        )

    def _read(
        self, image: ImageInput, axes: str | None, selection: microscopy.Selection | None = None
    ) -> bytes | mmap.mmap:
        """What ``microscopy.select`` reads: bytes, an array as a TIFF, or a file — read whole up to
        :data:`MAP_ABOVE_BYTES`, above it a read-only memory map. Mapped, not read: a LAS X
        project or a CZI plate of gigabytes costs the pages of the plane asked for, not the file
        in memory (the container parsers take the map as their file;
        ``microscopy.container_stream``). Each call maps the file anew (a map is one file position:
        threads never share one), and the map closes when the call's last reference to it goes.
        Only large files are mapped because a map has one hazard a read has not: a file cut
        short while it is read (rewritten in place) ends the process with SIGBUS.

        One file of an OME-TIFF image split over several (``tiff_sets.image_files``) is read as
        the set, the pages ``selection`` needs cut out of it (``frames.cut_split_image``), as
        ``unet-segment`` sends it: alone, it holds some of the image's planes and, where the set's
        metadata lies in a companion file, none of its channel names."""
        if isinstance(image, np.ndarray):
            return array_as_tiff(image, axes)
        if axes is not None:
            raise ValueError("axes= describes an array's dimensions; a file says its own")
        if isinstance(image, bytes | bytearray | memoryview):
            return bytes(image)
        if isinstance(image, str | os.PathLike):
            from service import frames, tiff_sets  # tifffile: for a split image only

            if selection is not None and selection.series is None and tiff_sets.image_files(Path(image)):
                cut = frames.cut_split_image(Path(image), selection, self.settings.max_pixels)
                if cut is not None:
                    return cut
            with open(image, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size <= MAP_ABOVE_BYTES or size == 0:  # an empty file cannot be mapped
                    return handle.read()
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        raise TypeError(f"image must be a path, bytes or a NumPy array, got {type(image).__name__}")

    def close(self) -> None:
        """Stop the batching thread; ``segment`` raises ``BatcherClosed`` afterwards."""
        self._batcher.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        md = self.metadata
        return f"Segmenter({md.name} {md.version}, {self.engine.path}, providers={self.engine.providers})"


def array_as_tiff(array: np.ndarray, axes: str | None = None) -> bytes:
    """An array as the bytes of an uncompressed TIFF whose axes are ``axes``.

    Arrays then go through the same reader as files (``microscopy.select``): the same channel /
    plane choices and refusals, projections, colour handling and pixel limit, with no second
    implementation of them. The copy costs one pass over the pixels.
    """
    import tifffile  # as in service.microscopy: only where TIFF is needed

    array = np.asarray(array)
    if axes is None:
        if array.ndim == 2:
            axes = "YX"
        elif array.ndim == 3 and array.shape[2] in (3, 4):
            axes = "YXS"
        else:
            raise ValueError(
                f"an array of shape {array.shape} needs axes= to say what its dimensions are, e.g. "
                f"'ZYX' (a z-stack), 'CYX' or 'YXC' (channels), 'TZCYX'; letters {', '.join(ARRAY_AXES)} "
                "(S: colour samples)"
            )
    axes = axes.upper()
    if (
        len(axes) != array.ndim
        or len(set(axes)) != len(axes)
        or set(axes) - set(ARRAY_AXES)
        or not {"Y", "X"} <= set(axes)
    ):
        raise ValueError(
            f"axes={axes!r} does not describe an array of shape {array.shape}: one letter per dimension, "
            f"each once, from {ARRAY_AXES}, with Y and X"
        )
    samples = array.shape[axes.index("S")] if "S" in axes else None
    if samples not in (None, 3, 4):
        raise ValueError(f"S (colour samples) must have 3 (RGB) or 4 (RGBA) values, not {samples}")
    # tifffile stores planes of (Y, X[, S]) in C order over the other axes: put them last.
    order = [a for a in "TZC" if a in axes] + ["Y", "X"] + (["S"] if "S" in axes else [])
    array = np.transpose(array, [axes.index(a) for a in order])
    array = imaging.supported_dtype(array, "array")
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, array, metadata={"axes": "".join(order)}, photometric="rgb" if "S" in axes else "minisblack"
    )
    return buffer.getvalue()


def _check_outputs(wanted: Iterable[str]) -> frozenset[str]:
    if isinstance(wanted, str):
        wanted = (wanted,)  # outputs="labels" would otherwise be read letter by letter
    chosen = frozenset(wanted)
    unknown = sorted(chosen - set(OUTPUTS))
    if unknown:
        raise ValueError(f"outputs may be {', '.join(OUTPUTS)}; not {', '.join(unknown)}")
    return chosen


def _check_expand(expand: float | None) -> None:
    if expand is not None and not 0 < expand <= MAX_EXPAND_PX:
        raise ValueError(f"expand must be in (0, {MAX_EXPAND_PX}] px, got {expand}")


def _check_background_ring(background_ring: float | None, measure: object) -> None:
    if background_ring is None:
        return
    if not 0 < background_ring <= background.MAX_RING_PX:
        raise ValueError(
            f"background_ring must be in (0, {background.MAX_RING_PX}] px, got {background_ring}")
    if not measure:
        raise ValueError("background_ring measures the local background of the channels measured: give them "
                         "with measure")


def _check_range(
    name: str, value: float | None, low: float, high: float, open_interval: bool = False
) -> None:
    if value is None:
        return
    inside = low < value < high if open_interval else low <= value <= high
    if not inside:
        bounds = f"between {low:g} and {high:g}" + (" (exclusive)" if open_interval else "")
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """NumPy scalars as Python numbers: records that print cleanly and go straight to json / pandas."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}
