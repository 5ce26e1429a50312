"""A slide segmented in bounded memory: read by region, segmented band by band, written as OME-Zarr.

The domain side of a slide job (``POST /jobs`` with ``output=ome-zarr``; issue 16). Nothing here
holds a full-size array: the slide is a :class:`~service.regions.RegionSource` (a file opened by
``service.slide_files``), the model's outputs come out as finished row bands
(``service.windows``), and each band goes straight to

- the OME-Zarr store (``service.omezarr``: probability, labels, mask, with a pyramid), and
- the objects table (``service.object_stream`` measures objects across bands, exactly as
  ``objects.measure`` on the whole image; ``service.object_table`` appends them to a CSV), and,
  when asked, their outlines as GeoJSON (``service.geojson_stream``, as ``output=geojson``).

With ``expand=`` each band waits there until the rows below it decide its cells
(``service.cell_bands``); the cells go to the store (``labels/cells``), the table (cell and
cytoplasm columns) and the GeoJSON (QuPath cells), as ``POST /segment`` gives them; with
``background_ring=`` likewise for its background rings (their pixels go to the table's background
columns).

Both take each band in a thread of their own (:class:`_Behind`), a band or two behind the model:
the store's compression and pyramid and the table overlap the model's next tiles and the object
split, which leave part of the CPU idle (ONNX Runtime's two threads keep ~1.6 cores busy).

The nucleus size, unless the request gives it, is estimated on one window of the slide at full
resolution (:data:`ESTIMATE_WINDOW` px): the brightest region of a whole-slide overview, where
the nuclei are — an overview itself is far too coarse to see nuclei, and most of a slide can be
background. The normalisation limits are the whole slide's (``windows.source_limits``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from service import pipeline
from service.cell_bands import CellBands
from service.geojson_stream import GeoJsonWriter, LabelRows
from service.modality import check_modality
from service.model_metadata import ModelMetadata
from service.object_stream import ObjectStream
from service.object_table import ObjectTableWriter
from service.objects import ObjectParams, ObjectRow
from service.omezarr import DEFAULT_OUTPUTS, OmeZarrWriter
from service.polarity import DarkToBright, DarkToBrightSource, Polarity
from service.preprocess import to_channels
from service.regions import RegionSource, by_chunk_rows
from service.segment import Infer
from service.slide_files import Overview, overview
from service.windows import RowBand, WindowedPrediction

#: Edge of the full-resolution window the nucleus size is estimated on (input px).
ESTIMATE_WINDOW = 2048
#: Pixels of the whole-slide overview used to choose that window and check the modality.
OVERVIEW_PIXELS = 1 << 20

#: Chunk edge of the store, and so the rows its writer buffers (one chunk row × the width × 6 bytes:
#: 96 MiB on a 32768-px-wide slide at 512, twice that at 1024); 512² chunks are what QuPath and
#: bioformats2raw write by default, so viewers fetch them well.
CHUNK = 512
#: Model rows handed to the object and output stages at once: their temporaries are a few
#: full-width arrays of this many rows (``windows.OUTPUT_ROWS`` is 256, sized for images of up to
#: 8192 px wide). Measured on a 2400 × 32768 strip (peak RSS of the process): 1.86 GB at 256 with
#: 1024² chunks, 1.51 GB at 128 and 1.39 GB at 64 with 512² chunks, for ~5 % more time at 64 (the
#: rows carried between slices are labelled again).
OUTPUT_ROWS = 64

#: Bands handed to the writer's thread that it has not finished yet, at most: the model and the
#: object split run while the store and the objects table take the bands before (each band owns
#: its ``output_rows`` × width arrays: ~19 MB at 64 × 32768, so the queue's memory is small).
WRITE_AHEAD = 2

STORE_NAME = "result.ome.zarr"
TABLE_NAME = "objects.csv"
GEOJSON_NAME = "objects.geojson"


@dataclass
class SlideResult:
    """What a slide job wrote and how: ``store`` (OME-Zarr) and ``table`` (CSV) in the job's folder."""

    store: Path
    table: Path
    geojson: Path | None  # None: not asked for
    height: int
    width: int
    objects: int
    tiles: int
    scale: pipeline.ScaleChoice
    estimate_window: tuple[int, int, int, int] | None  # y0, y1, x0, x1 (None: diameter given)
    levels: list[list[int]]
    warnings: list[str] = field(default_factory=list)
    expand: float | None = None  # the cells' expansion (px); None: no cells
    scale_ms: float = 0.0
    segment_ms: float = 0.0


def brightest_window(view: Overview, shape: tuple[int, ...], edge: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the ``edge``² window (clipped to a slide of ``shape``) whose mean in
    the slide's overview ``view`` is highest."""
    height, width = shape[:2]
    if height <= edge and width <= edge:
        return 0, height, 0, width
    grey = to_channels(view.image, 1).astype(np.float32)
    sy, sx = view.scale
    box = (max(1, round(min(edge, width) / sx)), max(1, round(min(edge, height) / sy)))
    means = cv2.blur(grey, box, borderType=cv2.BORDER_REFLECT)
    cy, cx = np.unravel_index(int(np.argmax(means)), means.shape)
    y0 = int(np.clip(round(cy * sy) - edge // 2, 0, max(0, height - edge)))
    x0 = int(np.clip(round(cx * sx) - edge // 2, 0, max(0, width - edge)))
    return y0, min(height, y0 + edge), x0, min(width, x0 + edge)


def segment_slide(
    source: RegionSource,
    folder: Path,
    infer: Infer,
    metadata: ModelMetadata,
    params: ObjectParams,
    threshold: float,
    diameter: float | None,
    *,
    pixel_size_um: tuple[float, float] | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int,
    chunk: int = CHUNK,
    output_rows: int = OUTPUT_ROWS,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    geojson: bool = False,
    geojson_properties: Mapping[str, object] | None = None,
    polarity: Polarity = "bright",
    channels: Sequence[tuple[str, RegionSource]] = (),
    expand: float | None = None,
    background_ring: float | None = None,
) -> SlideResult:
    """Segment ``source`` band by band into ``folder``/:data:`STORE_NAME` and :data:`TABLE_NAME`.

    ``diameter`` (input px) from the request wins over the estimate; ``pixel_size_um`` ``(x, y)``
    calibrates the store's axes and the table's µm columns. ``should_stop``/``progress`` as for
    ``segment.predict`` (``segment.Cancelled`` when stopped; the partial store is left for the
    caller to delete). ``geojson``: also write :data:`GEOJSON_NAME`, the objects' outlines as
    ``output=geojson`` gives them (QuPath detections; ``geojson_properties`` and the warnings
    as the collection's properties) — ~100 µs of CPU and ~1 kB per object, so asked for.
    ``polarity``: ``dark`` reads every window as optical density (``service.polarity``, the white
    level from the overview); the table's intensities stay those of the slide as stored.
    ``channels``: ``(key, source)`` of other channels to measure each object in (``measure=``, the
    same plane in another channel: ``SlideSource.of_channel``), read band by band as the slide is,
    their columns named by ``measured_channels.channel_columns``. ``expand``: each nucleus's
    cell, grown by up to this many px (``objects.expand_cells``, computed band by band by
    ``cell_bands.CellBands``): the store's ``labels/cells``, the cell and cytoplasm columns, and
    QuPath cells in the GeoJSON. ``background_ring``: each measured channel's local background
    around each nucleus (beyond its cell with ``expand``), in a ring this many px wide
    (``background.ring_labels``, band by band), and its intensities less it, as columns of the table
    and measurements in the GeoJSON.
    """
    height, width = (int(n) for n in source.shape[:2])
    warnings: list[str] = []
    started = time.perf_counter()
    view = overview(source, OVERVIEW_PIXELS)  # read once: without a pyramid it is a pass over the slide
    modality_warning = check_modality(view.image).warning_for(polarity)
    if modality_warning:
        warnings.append(modality_warning)
    stored = source  # as the file holds it: the table's intensities
    if polarity == "dark":
        turn = DarkToBright.of(view.image, metadata.in_channels)
        source = DarkToBrightSource(source, turn)
        view = replace(view, image=turn(view.image))  # where the nuclei are is where stain is
    window = None
    if diameter is None and metadata.nucleus_diameter is not None:
        window = brightest_window(view, source.shape, ESTIMATE_WINDOW)
    sample = source.read(*window) if window else np.zeros((1, 1), source.dtype)
    # The window stands in for the slide: its size must not cap the factor (slides have their own limit).
    scale = pipeline.choose_scale(
        sample, infer, metadata, diameter, max_pixels=math.inf, batch_size=batch_size
    )
    if scale.warning:
        warnings.append(scale.warning)
    scale_ms = 1000 * (time.perf_counter() - started)

    started = time.perf_counter()
    prediction = WindowedPrediction.prepare(
        source, scale.factor, infer, metadata, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, should_stop=should_stop, progress=progress,
    )
    folder.mkdir(parents=True, exist_ok=True)
    store_path, table_path = folder / STORE_NAME, folder / TABLE_NAME
    writer = OmeZarrWriter(
        store_path, (height, width), pixel_size_um=pixel_size_um, chunk=chunk, overwrite=True,
        outputs=DEFAULT_OUTPUTS if expand is None else (*DEFAULT_OUTPUTS, "cells"),
    )
    keys = [key for key, _ in channels]
    stream = ObjectStream(pixel_size_um, keys, cell_distance=expand, background=background_ring is not None)
    held: CellBands[_Band] | None = None
    if expand is not None or background_ring is not None:
        held = CellBands(expand, ring_width=background_ring)
    geojson_path = folder / GEOJSON_NAME if geojson else None
    outlines = _Outlines(geojson_path, cells=expand is not None) if geojson_path is not None else None
    try:
        with ObjectTableWriter(table_path, calibrated=pixel_size_um is not None, channel_keys=keys,
                               cells=expand is not None, background=background_ring is not None) as table:

            def store(band: _Band, cells: np.ndarray | None, rings: np.ndarray | None = None) -> None:
                rows = band.rows
                assert rows.labels is not None and rows.probability is not None
                writer.write_rows(rows.y0, rows.mask, rows.labels, rows.probability, cells)
                if outlines is not None:
                    outlines.append(rows.y0, rows.labels, cells)
                finished = stream.add(rows.y0, rows.labels, band.intensity, rows.probability, band.measured,
                                      cells=cells, rings=rings)
                table.write(finished)
                if outlines is not None:
                    outlines.write(finished, stream.first_open_row)

            def take(band: _Band) -> None:
                """In the writer's thread: the band now, or (cells, rings) the bands its rows decide."""
                if held is None:
                    store(band, None)
                    return
                assert band.rows.labels is not None
                for ready in held.push(band.rows.y0, band.rows.labels, band):
                    store(ready.payload, ready.cells, ready.rings)

            def take_rest() -> None:
                if held is not None:
                    for ready in held.finish():
                        store(ready.payload, ready.cells, ready.rings)

            bands = prediction.bands(
                threshold, params, labels=True, probability=True, output_rows=output_rows
            )
            # The table's intensities, band by band: whole chunk rows, each decoded once.
            intensities = by_chunk_rows(stored)
            measured_rows = [by_chunk_rows(channel) for _, channel in channels]
            with _Behind(WRITE_AHEAD) as behind:
                for band in bands:
                    # the model's thread reads the source too: tifffile's store serialises its file
                    # reads with a lock, zarr's stores and arrays are safe to read from threads
                    y1 = band.y0 + band.mask.shape[0]
                    intensity = to_channels(intensities.read(band.y0, y1, 0, width), 1)
                    measured = [to_channels(rows.read(band.y0, y1, 0, width), 1) for rows in measured_rows]
                    behind.submit(take, _Band(band, intensity, measured))
                behind.submit(take_rest)
            rest = stream.finish()
            table.write(rest)
            if outlines is not None:
                outlines.write(rest, height)
        summary = writer.finish()
        warnings += prediction.warnings
        if outlines is not None:
            outlines.geojson.close({**(geojson_properties or {}), "warnings": list(warnings)})
    finally:
        if outlines is not None:
            outlines.geojson.abandon()
    return SlideResult(
        store=store_path, table=table_path, geojson=geojson_path, height=height, width=width,
        objects=stream.finished,
        tiles=prediction.tiles, scale=scale, estimate_window=window,
        levels=summary["levels"], warnings=warnings, scale_ms=scale_ms, expand=expand,
        segment_ms=1000 * (time.perf_counter() - started),
    )


@dataclass(frozen=True)
class _Band:
    """A band of the model's outputs with the slide's rows the table measures."""

    rows: RowBand
    intensity: np.ndarray  # the segmented channel as stored, grey
    measured: list[np.ndarray]  # the measured channels' rows (measure=)


class _Outlines:
    """The GeoJSON side of the objects table: label rows (and cell rows, with ``cells``) held
    until their objects are finished."""

    def __init__(self, path: Path, cells: bool = False) -> None:
        self.rows = LabelRows()
        self.cell_rows = LabelRows() if cells else None
        self.geojson = GeoJsonWriter(path)

    def append(self, y0: int, labels: np.ndarray, cells: np.ndarray | None) -> None:
        self.rows.append(y0, labels)
        if self.cell_rows is not None:
            assert cells is not None
            self.cell_rows.append(y0, cells)

    def write(self, finished: list[ObjectRow], first_open_row: int) -> None:
        if self.cell_rows is None:
            self.geojson.write((row, self.rows.outline(row)) for row in finished)
        else:
            self.geojson.write_cells(
                (row, self._cell_outline(row), self.rows.outline(row)) for row in finished
            )
            self.cell_rows.drop_above(first_open_row)
        self.rows.drop_above(first_open_row)

    def _cell_outline(self, row: ObjectRow) -> list[list[float]]:
        assert self.cell_rows is not None and row.cell_box is not None, "a stream with cells gives cell boxes"
        return self.cell_rows.outline_in(row.id, row.cell_box)


class _Behind:
    """Runs calls in one thread of their own, in order, at most ``ahead`` of them unfinished: the
    caller goes on (the model's next tiles) while the thread writes what came before.

    ``submit`` re-raises the first failure of a call before it (the caller stops producing), and
    leaving the block waits for every call, re-raising a failure; on the way out of an exception,
    calls not yet started are dropped and the running one is waited for, so nothing writes after
    the block (a stopped job's folder is deleted next).
    """

    def __init__(self, ahead: int) -> None:
        self.ahead = max(1, int(ahead))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slide-writer")
        self._pending: deque[Future[None]] = deque()

    def submit(self, call: Callable[..., None], *args: object) -> None:
        while len(self._pending) >= self.ahead:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(call, *args))

    def __enter__(self) -> _Behind:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if kind is None:
                while self._pending:
                    self._pending.popleft().result()
            else:
                for future in self._pending:
                    future.cancel()
        finally:
            self._pool.shutdown(wait=True)
