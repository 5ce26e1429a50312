"""The windowed pipeline: one image → finished row bands on its own grid, in bounded memory.

What ``segment.predict`` + ``pipeline.on_input_grid`` compute, without full-size float maps:

1. **Read by window.** The model-scale image is made window by window from a
   :class:`~service.regions.RegionSource`: rows read from the source, resized with the global
   separable taps of ``rescale.axis_taps`` (:class:`ResampledSource`: windows agree where they
   meet) and normalised with limits computed once for the whole resized image
   (:func:`source_limits`; per-window limits would leave seams). The rows under one tile row are
   read at a time, mirrored at the top and bottom by index arithmetic (``tiling.reflect_index``),
   and each tile's columns cut from them, mirrored at the left and right: exactly the pixels
   ``tiling.pad_image`` gives.
2. **Stitch by band.** Tiles run in raster order into a ``tiling.BandStitcher`` (the same plan
   and running mean as ``Stitcher``, bit for bit); each finished tile row hands back the rows no
   later tile touches. This runs in a thread of its own (:func:`handed_over`), one band ahead
   of steps 3–4, so the model's next tile row overlaps the split of the last one; only the
   channels read later are stitched (the foreground, and the centre map if the split uses it).
3. **Objects by band, exactly** (:class:`BandObjects`): label (or count) the finished rows plus
   the rows carried from the previous band; a connected component touching the last row may
   continue below, so it is deferred and its rows carried; pixels of finalised objects are
   removed from the carry. Objects are split per connected component on its own crop
   (``objects.label_objects``), so a component seen whole gives the same objects as in the
   whole image.
4. **Back to the input grid by band**: probabilities with the global taps, labels by nearest
   neighbour (``rescale.resize_labels``' index arithmetic), the mask thresholded after.

Memory: the source (and, for an image in memory that shrinks, its resized copy in its own
dtype, made once: smaller than the image), the rows of one tile row (``C × tile_h × W`` in the
source's dtype), the stitcher's buffer (``K' × tile_h × W`` float32 for the ``K'`` channels
read), one finished band handed over (``K' × step × W`` float32), the carried rows and the
outputs a caller keeps.
Tile rows use the model's whole width, so a band's width is the image's.

Use: ``pipeline.predict_plane(..., window_policy=...)`` answers a :class:`WindowedPrediction` for
images past the policy's size (``pipeline.on_input_grid`` runs it into full-size outputs);
:meth:`WindowedPrediction.prepare` plans one for any region source (a slide), and
:meth:`WindowedPrediction.bands` runs it, yielding :class:`RowBand` s for a writer.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from service import objects, postprocess, rescale
from service.model_metadata import ModelMetadata
from service.preprocess import (
    float_sample_step,
    histogram_percentiles,
    normalize,
    percentile_limits,
    sample_percentiles,
    to_channels,
)
from service.regions import ArraySource, RegionSource, by_chunk_rows, check_window
from service.segment import Cancelled, Infer, apply_activation, model_input_grey, resolve_tiling
from service.settings import Settings
from service.tiling import BandStitcher, TilePlan, plan_tiles, reflect_index

log = logging.getLogger(__name__)

#: A connected component taller than this many tile heights (a confluent sheet of cells) is cut
#: at the band border instead of being carried for ever (with a warning).
MAX_OBJECT_TILE_ROWS = 4
#: Pixels per read when the normalisation limits of a lazy source are accumulated (whole rows).
LIMIT_PIXELS = 1 << 22
#: Rows of a stitched band handled at once by the objects and output stages (bounds their
#: temporaries; the rows carried between slices are re-labelled, a few % of the object work).
OUTPUT_ROWS = 256


@dataclass
class RowBand:
    """Finished rows ``[y0, y0 + h)`` of the outputs on the input grid."""

    y0: int  # first row of the band on the input grid
    mask: np.ndarray  # (h, W) uint8 0/255
    labels: np.ndarray | None  # (h, W) int32, global ids (one object = one id in every band)
    probability: np.ndarray | None  # (h, W) float32 foreground probability
    objects_done: int  # objects finalised so far (for progress / counts)


@dataclass(frozen=True)
class WindowPolicy:
    """When and how ``pipeline.predict_plane`` takes the windowed path.

    ``min_pixels``: model-scale pixels from which an image is segmented by windows;
    ``tile_size``: the tile for those images (None: the caller's); ``batch_size``: tiles per run
    (1 on a CPU: a batch of tiles multiplies ONNX Runtime's working set and buys no speed).
    """

    min_pixels: int
    tile_size: int | None = None
    batch_size: int = 1


def policy(settings: Settings, tile_source: str) -> WindowPolicy:
    """The windowed-path policy from the settings; ``tile_source`` (``tile_options.Tiling.source``):
    an explicit tile (request or ``UNET_TILE_SIZE``) is kept, the model's default gives way to
    ``UNET_WINDOWED_TILE_SIZE``."""
    tile = settings.windowed_tile_size if tile_source == "model" else None
    if tile is not None:
        tile = min(tile, settings.max_tile_size)
    return WindowPolicy(settings.windowed_min_pixels, tile, settings.windowed_batch_size)


def source_limits(
    source: RegionSource, channels: int, metadata: ModelMetadata, pixels_per_read: int = LIMIT_PIXELS
) -> list[tuple[float, float]]:
    """Per-channel normalisation limits of the whole source, equal to
    ``preprocess.percentile_limits`` of the decoded image: an exact histogram for 8/16-bit
    pixels, the same raster-order subsample for float ones, read in whole rows of about
    ``pixels_per_read`` pixels.
    """
    norm = metadata.normalization
    if isinstance(source, ArraySource):
        return percentile_limits(to_channels(source.image, channels), norm)
    if norm.method != "percentile":
        raise ValueError(f"unsupported normalisation method {norm.method!r}")
    height, width = source.shape[:2]
    step = float_sample_step(height * width)
    counts: list[np.ndarray] = []
    samples: list[list[np.ndarray]] = []
    integer = False
    rows = max(1, pixels_per_read // width)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        window = to_channels(source.read(y0, y1, 0, width), channels)
        planes = [window] if window.ndim == 2 else [window[:, :, c] for c in range(window.shape[2])]
        integer = window.dtype in (np.uint8, np.uint16)
        if not counts:
            counts = [np.zeros(256, np.int64) for _ in planes]
            samples = [[] for _ in planes]
        for c, plane in enumerate(planes):
            flat = plane.reshape(-1)
            if integer:
                hist = np.bincount(flat, minlength=256)
                if hist.size > counts[c].size:
                    hist[: counts[c].size] += counts[c]
                    counts[c] = hist
                else:
                    counts[c][: hist.size] += hist
            else:
                first = -(-y0 * width // step) * step  # the next flat index of the global subsample
                samples[c].append(flat[np.arange(first, y1 * width, step) - y0 * width])
    if integer:
        return [histogram_percentiles(c, norm.low, norm.high) for c in counts]
    return [sample_percentiles(np.concatenate(s), norm.low, norm.high) for s in samples]


def read_whole(source: RegionSource, pixels_per_read: int = LIMIT_PIXELS) -> np.ndarray:
    """All of ``source`` as one array, read in whole rows of about ``pixels_per_read`` pixels (a
    :class:`ResampledSource`'s float32 temporaries stay the size of one read)."""
    height, width = source.shape[:2]
    whole = np.empty(source.shape, source.dtype)
    rows = max(1, pixels_per_read // width)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        whole[y0:y1] = source.read(y0, y1, 0, width)
    return whole


class ResampledSource:
    """A :class:`~service.regions.RegionSource` of the image resized to the model's nucleus scale,
    made window by window: ``(Hs, Ws)`` / ``(Hs, Ws, C)`` in the source's dtype (integers rounded,
    as ``cv2.resize`` of the whole image rounds).

    Row ``j`` of a window equals row ``j`` of ``rescale.resample_image`` of the whole image (the
    taps are global), so windows agree where they meet and match the in-memory path.
    """

    def __init__(self, source: RegionSource, channels: int, shape: tuple[int, int]) -> None:
        self.source = source
        self.channels = channels
        self.input_shape = (int(source.shape[0]), int(source.shape[1]))
        self._shape = shape
        self.row_taps = rescale.axis_taps(self.input_shape[0], shape[0])
        self.col_taps = rescale.axis_taps(self.input_shape[1], shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape if self.channels == 1 else (*self._shape, self.channels)

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        lo, hi = self.row_taps.span(y0, y1)
        raw = to_channels(self.source.read(lo, hi, 0, self.input_shape[1]), self.channels)
        rows = rescale.resample_axis(raw, self.row_taps, 0, y0, y1, offset=lo)
        del raw
        cols = rescale.resample_axis(rows, self.col_taps, 1, x0, x1)
        return rescale.round_to(cols, self.source.dtype)


class ModelRows:
    """Rows of the model-scale image, made from the source on demand: read raw (:meth:`raw`) and
    normalised window by window (:meth:`normalized`) into the model's ``(C, h, w)`` input.

    The same pixels as ``pipeline.predict_scaled`` gives the model: the image resized
    (:class:`ResampledSource`, ``rescale.resample_image`` for the whole image) and normalised
    with the limits of the resized image (:func:`source_limits`).
    """

    def __init__(self, source: RegionSource, metadata: ModelMetadata, factor: float) -> None:
        self.metadata = metadata
        self.input = source
        self.input_shape = (int(source.shape[0]), int(source.shape[1]))
        self.shape = self.input_shape if factor == 1.0 else rescale.scaled_shape(self.input_shape, factor)
        self.resized = self.shape != self.input_shape
        self.source: RegionSource = self._model_scale(source)
        self.limits: list[tuple[float, float]] | None = None
        #: The resized image is made once and held (:meth:`prepare_limits`): an image in memory that
        #: shrinks, whose copy in its own dtype is no larger than the image already held.
        self.holds_model_scale = (
            self.resized
            and isinstance(source, ArraySource)
            and self.shape[0] * self.shape[1] <= self.input_shape[0] * self.input_shape[1]
        )

    def _model_scale(self, source: RegionSource) -> RegionSource:
        return ResampledSource(source, self.metadata.in_channels, self.shape) if self.resized else source

    def prepare_limits(self, limits: list[tuple[float, float]] | None = None) -> list[tuple[float, float]]:
        """The normalisation limits: ``limits`` if given, else those of the whole (resized) image,
        in one pass over it window by window.

        The pass reads whole chunk rows of a compressed source (``regions.by_chunk_rows``): its
        windows are a few MP of whole rows, 128 rows of a 32768-px-wide slide, and each 512-row
        chunk row would be decoded four times. Tile rows are read without it: they are taller than
        a chunk row, and a kept block would add its rows × the width to the peak memory.

        Where the reader :attr:`holds_model_scale`, the resized image is made here, once, and the
        limits and tiles read it: resizing each tile row again (overlaps included) was half of the
        work around the network on a GPU (docs/benchmarks.md, section 11)."""
        if self.holds_model_scale and not isinstance(self.source, ArraySource):
            self.source = ArraySource(read_whole(self.source))
        if limits is None:
            whole = self.source if self.holds_model_scale else self._model_scale(by_chunk_rows(self.input))
            limits = source_limits(whole, self.metadata.in_channels, self.metadata)
        self.limits = limits
        return limits

    def raw(self, y0: int, y1: int) -> np.ndarray:
        """Model-scale rows ``[y0, y1)``, all columns, before normalisation: ``(h, Ws)`` or
        ``(h, Ws, C)`` in the source's dtype (a 16-bit strip is half a float32 one)."""
        return to_channels(self.source.read(y0, y1, 0, self.shape[1]), self.metadata.in_channels)

    def normalized(self, raw: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` float32 model input of raw pixels from :meth:`raw` (any window of them:
        normalisation is per pixel, with the whole image's limits)."""
        limits = self.limits if self.limits is not None else self.prepare_limits()
        return normalize(raw, self.metadata.normalization, limits)


def tile_row_rows(reader: ModelRows, plan: TilePlan, tile_row: int) -> np.ndarray:
    """The model-scale rows under tile row ``tile_row``, mirrored at the top and bottom as
    ``tiling.pad_image`` pads, **raw**: ``(tile_h, Ws)`` or ``(tile_h, Ws, C)`` in the source's
    dtype (:func:`cut_tile` normalises each tile; columns are padded per tile too, so neither a
    float32 nor a padded copy of the whole width is made: on a 32768-px-wide 16-bit slide the
    strip is 79 MB instead of 157)."""
    start = plan.rows.starts[tile_row]
    rows = reflect_index(np.arange(start, start + plan.tile_h) - plan.rows.pad_before, plan.height)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = reader.raw(lo, hi)
    if np.array_equal(rows, np.arange(lo, hi)):
        return block
    return block[rows - lo]


def cut_tile(rows: np.ndarray, plan: TilePlan, tile_col: int, out: np.ndarray, reader: ModelRows) -> None:
    """Write tile column ``tile_col`` of the padded image's raw rows ``rows`` (from
    :func:`tile_row_rows`) into ``out`` ``(C, tile_h, tile_w)``, normalised by ``reader``:
    columns mirrored at the left and right borders as ``tiling.pad_image`` pads."""
    x = plan.cols.starts[tile_col]
    cols = np.arange(x, x + plan.tile_w) - plan.cols.pad_before
    if cols[0] >= 0 and cols[-1] < plan.width:
        window = rows[:, cols[0] : cols[-1] + 1]
    else:
        window = np.take(rows, reflect_index(cols, plan.width), axis=1)
    out[...] = reader.normalized(window)


def stitched_bands(
    reader: ModelRows,
    plan: TilePlan,
    infer: Infer,
    metadata: ModelMetadata,
    batch_size: int = 1,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    channels: Sequence[int] | None = None,
    with_input: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Finished model-scale rows ``(y0, (K, h, Ws) float32 probabilities)``, top to bottom.

    Tiles run tile row by tile row, ``batch_size`` at a time; ``should_stop`` is polled before
    each batch (``segment.Cancelled``), ``progress(done, total)`` called as ``segment.predict`` does.
    ``channels``: the model outputs to stitch, in this order (None: all); a sigmoid model's
    channels are independent, so leaving out one nobody reads (the centre map, when the split is
    by distance) saves its third of the stitcher's memory and blending, with the same values.
    ``with_input``: one more channel after them, the rows' normalised model input (its channels'
    mean, ``segment.model_input_grey``), cut from the tile row's strip (no second read).
    """
    if channels is not None and metadata.activation != "sigmoid" and len(channels) != metadata.classes:
        raise ValueError("only a sigmoid model's outputs can be stitched apart (softmax couples them)")
    picked = list(range(metadata.classes)) if channels is None else list(channels)
    stitcher = BandStitcher(plan, len(picked))
    ny, nx = plan.grid
    expected = (metadata.classes, plan.tile_h, plan.tile_w)
    batch_size = max(1, int(batch_size))
    if progress is not None:
        progress(0, plan.n_tiles)
    for tile_row in range(ny):
        strip = tile_row_rows(reader, plan, tile_row)
        finished = None
        for first in range(0, nx, batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped after {stitcher.added} of {plan.n_tiles} tiles")
            columns = range(first, min(first + batch_size, nx))
            batch = np.empty((len(columns), metadata.in_channels, plan.tile_h, plan.tile_w), np.float32)
            for slot, col in enumerate(columns):
                cut_tile(strip, plan, col, batch[slot], reader)
            outputs = np.asarray(infer(batch))
            del batch
            if outputs.shape != (len(columns), *expected):
                raise RuntimeError(
                    f"model returned {outputs.shape} for a batch of {len(columns)} tiles; "
                    f"expected {(len(columns), *expected)}"
                )
            if channels is not None:
                outputs = outputs[:, picked]
            for col, output in zip(columns, outputs, strict=True):
                done = stitcher.add(tile_row * nx + col, output)
                if done is not None:  # only the tile row's last tile finishes rows
                    finished = done
            del outputs
            if progress is not None:
                progress(stitcher.added, plan.n_tiles)
        grey = None
        if with_input and finished is not None:
            # Finished rows were all under this tile row (a row no tile of it covers was finished
            # with the row before), so they are in its strip.
            first = finished[0] - (plan.rows.starts[tile_row] - plan.rows.pad_before)
            rows = strip[first : first + finished[1].shape[1]]
            assert first >= 0 and len(rows) == finished[1].shape[1], "finished rows outside the strip"
            grey = model_input_grey(reader.normalized(rows))
        # The tile row's input is dropped before its finished rows go down the object and output
        # stages (a full-width strip: 79 MB of 16-bit pixels on a 32768-px-wide slide at tile 1024).
        del strip
        if finished is not None:
            # a view of the stitcher's buffer: used up before the next add
            probabilities = apply_activation(finished[1], metadata)
            if grey is not None:
                probabilities = np.concatenate([probabilities, grey[None]])
            yield finished[0], probabilities
            del finished, grey


def _fill_holes_open_bottom(mask: np.ndarray) -> np.ndarray:
    """``objects.fill_holes`` of a band whose bottom edge is not the image's: background that
    reaches the image's top, left or right border (through the band) stays, the rest is filled —
    including pockets open only to the bottom, which may or may not be holes. Those are filled,
    so the component around them touches the last row and is deferred until it is seen whole."""
    framed = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 0, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(framed, None, (0, 0), 2)
    return framed[1:, 1:-1] != 2


@dataclass
class BandObjects:
    """Objects found band by band at the model's scale, exactly as on the whole mask.

    Feed finished rows top to bottom (:meth:`push`); it answers the rows whose objects are all
    final, with global ids (``labels``) or a running count (``count_only``). ``centers`` come
    from the probabilities as ``objects.label_prediction`` takes them.

    Exactness: a component (of the hole-filled mask) that does not touch the last available row
    cannot continue below, and every component above the carried rows was final, so it is a
    component of the whole image; it is split on its own crop as ``label_objects`` splits it.
    Ids are given in band order, raster order within a band; renumbering (``rescale.renumber``)
    gives ``label_objects``' raster-order ids.

    A contrast cut (``params.min_snr``) reads ``snr_ring`` rows around each component: the rows
    come with their normalised model input as their last channel (``stitched_bands(...,
    with_input=True)``), a component is final only once that many rows below it are here, and
    the last ``snr_ring`` rows handed on are kept as the context above the held ones.
    """

    height: int  # model-scale image rows
    threshold: float
    params: objects.ObjectParams
    count_only: bool = False
    max_rows: int | None = None  # cap on a deferred component's height (rows)
    warnings: list[str] = field(default_factory=list)
    top: int = 0  # first held row
    held_probs: np.ndarray | None = None  # (K, n, W) float32
    held_mask: np.ndarray | None = None  # (n, W) bool: mask minus finalised objects
    held_labels: np.ndarray | None = None  # (n, W) int32 global ids of finalised objects
    done: int = 0
    context_grey: np.ndarray | None = None  # (≤ snr_ring, W): model input of the rows above ``top``
    context_marked: np.ndarray | None = None  # (≤ snr_ring, W) bool: their thresholded mask

    @property
    def reads_input(self) -> bool:
        """Whether pushed rows must carry the model input as their last channel."""
        return self.params.min_snr > 0

    def push(self, y0: int, probs: np.ndarray, fg_channel: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        """Add finished rows ``[y0, y0 + h)``; returns ``(y_first, probs, labels or None)`` of the
        rows now final (possibly none: ``probs`` with 0 rows)."""
        mask = probs[fg_channel] > np.float32(self.threshold)
        if self.held_probs is None:
            self.top = y0
            held_probs, held_mask = probs, mask
            held_labels = np.zeros(mask.shape, np.int32)
        else:
            expected = self.top + self.held_mask.shape[0]
            if y0 != expected:
                raise ValueError(f"rows must come in order: expected row {expected}, got {y0}")
            held_probs = np.concatenate([self.held_probs, probs], axis=1)
            held_mask = np.concatenate([self.held_mask, mask])
            held_labels = np.concatenate([self.held_labels, np.zeros(mask.shape, np.int32)])
        n = held_mask.shape[0]
        last = self.top + n >= self.height
        filled = objects.fill_holes(held_mask) if last else _fill_holes_open_bottom(held_mask)
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            filled.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        tops = stats[:, cv2.CC_STAT_TOP]
        bottoms = tops + stats[:, cv2.CC_STAT_HEIGHT]
        deferred = np.zeros(count, bool)
        # rows a component needs below it before it is final: its ring's, for the contrast cut
        below = int(self.params.snr_ring) if self.reads_input else 0
        if not last:
            open_below = bottoms == n  # may continue in the next rows
            open_below[0] = False
            deferred[1:] = open_below[1:] | (bottoms[1:] + below > n)
            if self.max_rows is not None:
                # only a component that may continue is cut; one waiting for its ring's rows is not
                tall = open_below & (n - tops >= self.max_rows)
                if tall.any():
                    deferred &= ~tall
                    self._warn_cut(int(tall.sum()))
        final = ~deferred
        final[0] = False
        final_mask = final[components]
        if final_mask.any():
            # What the model marked of them: objects fill the holes again themselves, and a
            # component's confidence is the mean over its marked pixels, as on the whole image.
            marked = final_mask & held_mask
            around = self._surroundings(held_probs, fg_channel)
            if self.count_only:
                self.done += objects.count_prediction(marked, held_probs, self.params, around)
            else:
                local = objects.label_prediction(marked, held_probs, self.params, around)
                found = int(local.max(initial=0))
                if found:
                    inside = local > 0
                    held_labels[inside] = local[inside] + np.int32(self.done)
                    self.done += found
            held_mask &= ~final_mask
        keep_from = int(tops[deferred].min()) if deferred.any() else n
        if self.reads_input:
            self._keep_context(held_probs[:, :keep_from], fg_channel)
        out = (self.top, held_probs[:, :keep_from], None if self.count_only else held_labels[:keep_from])
        if keep_from < n:
            # copies: the carried rows must not keep the whole band's arrays alive
            self.held_probs = held_probs[:, keep_from:].copy()
            self.held_mask = held_mask[keep_from:].copy()
            self.held_labels = held_labels[keep_from:].copy()
            self.top += keep_from
        else:
            self.held_probs = self.held_mask = self.held_labels = None
            self.top += n
        return out

    def _surroundings(self, held_probs: np.ndarray, fg_channel: int) -> objects.Surroundings | None:
        """The held rows' model input and whole mask, below the context rows kept above them."""
        return self._below_context(held_probs, fg_channel) if self.reads_input else None

    def _keep_context(self, handed_on: np.ndarray, fg_channel: int) -> None:
        """Keep the last ``snr_ring`` rows handed on (after the context already kept)."""
        ring = int(self.params.snr_ring)
        rows = self._below_context(handed_on, fg_channel)
        self.context_grey, self.context_marked = rows.grey[-ring:].copy(), rows.marked[-ring:].copy()

    def _below_context(self, probs: np.ndarray, fg_channel: int) -> objects.Surroundings:
        """``probs``' rows (input last channel, mask thresholded) under the context rows kept."""
        grey, marked = probs[-1], probs[fg_channel] > np.float32(self.threshold)
        if self.context_grey is None:
            return objects.Surroundings(grey, marked)
        return objects.Surroundings(
            np.concatenate([self.context_grey, grey]),
            np.concatenate([self.context_marked, marked]),
            len(self.context_grey),
        )

    def _warn_cut(self, cut: int) -> None:
        message = (
            f"{cut} connected region(s) of foreground taller than {self.max_rows} px (a confluent sheet?) "
            "were cut at a band border into separate objects"
        )
        log.warning(message)
        if not self.warnings:
            self.warnings.append(message)


@dataclass
class WindowedPrediction:
    """A prediction that has not run yet: :meth:`bands` runs it band by band.

    Stands where ``segment.Prediction`` stands for ``pipeline.on_input_grid`` (``tiles``,
    ``tile_size``, ``overlap``, ``plan`` as there; no full-size ``probabilities``).
    """

    source: RegionSource
    infer: Infer
    metadata: ModelMetadata
    factor: float
    plan: TilePlan  # on the model-scale image
    tile_size: int
    batch_size: int = 1
    should_stop: Callable[[], bool] | None = None
    progress: Callable[[int, int], None] | None = None
    limits: list[tuple[float, float]] | None = None
    warnings: list[str] = field(default_factory=list)
    infer_ms: float = 0.0

    @classmethod
    def prepare(
        cls,
        source: RegionSource,
        factor: float,
        infer: Infer,
        metadata: ModelMetadata,
        tile_size: int | None = None,
        overlap: int | None = None,
        batch_size: int = 1,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        border: int | None = None,
    ) -> WindowedPrediction:
        """Plan the tiles of ``source`` resized by ``factor`` (arguments as ``segment.predict``'s)."""
        tile, ov = resolve_tiling(metadata, tile_size, overlap)
        shape = (int(source.shape[0]), int(source.shape[1]))
        height, width = shape if factor == 1.0 else rescale.scaled_shape(shape, factor)
        border = metadata.border if border is None else border
        plan = plan_tiles(height, width, tile, ov, metadata.context_margin, metadata.size_divisor, border)
        return cls(source, infer, metadata, factor, plan, tile, batch_size, should_stop, progress)

    @property
    def tiles(self) -> int:
        return self.plan.n_tiles

    @property
    def overlap(self) -> int:
        return self.plan.overlap

    def bands(
        self,
        threshold: float,
        params: objects.ObjectParams | None = None,
        *,
        labels: bool = False,
        probability: bool = False,
        count_only: bool = False,
        max_object_rows: int | None = None,
        output_rows: int = OUTPUT_ROWS,
    ) -> Iterator[RowBand]:
        """Run the model and yield the outputs on the input grid, band by band, top to bottom.

        ``params``: find objects (None: no objects, ``labels`` must be False); ``labels``: their
        global ids per band (else only counted, ``count_only``); ``probability``: the foreground
        probability per band. ``max_object_rows`` (model px): the height past which a connected
        component is cut; default :data:`MAX_OBJECT_TILE_ROWS` tile heights. ``output_rows``:
        model rows handed to the object and output stages at once (:data:`OUTPUT_ROWS`).

        Each band owns its arrays. A nucleus is never cut by a band border: its rows come out
        once it is complete.
        """
        if labels and (params is None or count_only):
            raise ValueError("labels need object parameters and count_only=False")
        md = self.metadata
        log.info(
            "segmenting %d×%d model px band by band: %d×%d tiles of %d×%d",
            self.plan.height, self.plan.width, *self.plan.grid, self.plan.tile_h, self.plan.tile_w,
        )
        reader = ModelRows(self.source, md, self.factor)
        self.limits = reader.prepare_limits(self.limits)
        # Only the channels read below: the foreground, and the centre map if the split uses it.
        channels = [md.foreground_channel]
        if params is not None and params.uses_centers:
            channels.append(params.center_channel)
        if md.activation != "sigmoid" or len(set(channels)) != len(channels):
            channels = list(range(md.classes))
        fg = channels.index(md.foreground_channel)
        if params is not None and params.uses_centers:
            params = replace(params, center_channel=channels.index(params.center_channel))
        finder = None
        if params is not None:
            cap = max_object_rows or MAX_OBJECT_TILE_ROWS * self.plan.tile_h
            # objects without their labels are only counted (objects.count_objects: the same
            # components and seeds, without flooding)
            counting = count_only or not labels
            finder = BandObjects(self.plan.height, threshold, params, counting, cap, self.warnings)
        grid = _InputGrid(reader, threshold, labels, probability)
        stopped = threading.Event()

        def should_stop() -> bool:
            return stopped.is_set() or (self.should_stop is not None and self.should_stop())

        with_input = finder is not None and finder.reads_input
        model_bands = stitched_bands(
            reader, self.plan, self._timed_infer, md, self.batch_size, should_stop, self.progress, channels,
            with_input,
        )
        probs = labs = None
        for y_band, band in handed_over(model_bands, stopped):
            # Objects and outputs in slices of the stitched band: their temporaries (a few full-
            # width int32 / float32 arrays each) scale with the slice, not with the tile height.
            for start in range(0, band.shape[1], output_rows):
                y0, probs = y_band + start, band[:, start : start + output_rows]
                labs = None
                if finder is not None:
                    y0, probs, labs = finder.push(y0, probs, fg)
                done = finder.done if finder is not None else 0
                yield from grid.push(y0, probs[fg], labs, done)
            # no view of the band may outlive it: handed_over copies the next one only then
            probs = labs = None
            del band

    def _timed_infer(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.infer(batch)
        finally:
            self.infer_ms += 1000 * (time.perf_counter() - started)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def handed_over(
    bands: Iterator[tuple[int, np.ndarray]], stopped: threading.Event
) -> Iterator[tuple[int, np.ndarray]]:
    """``bands`` (:func:`stitched_bands`) run in a thread of their own, one band ahead.

    The model and the stitching of the next tile row run while the caller splits and writes the
    rows of the last one (the split is single-threaded and ONNX Runtime's two threads leave part
    of the CPU idle; in one thread they took turns). Each band is handed over as a copy — the
    stitcher reuses its buffer — and the next copy is made only once the caller has asked for
    the next band (and so dropped the last: at most one copy exists; the caller must keep no view
    of it). The stitcher then holds only the channels the caller reads (``channels=`` of
    :func:`stitched_bands`), so the copy costs less than the channel it saves.

    ``stopped`` is set when the caller stops early (an error, a closed generator): the thread's
    ``should_stop`` sees it at its next batch, and the thread is joined before this returns.
    A failure in the thread (``Cancelled`` included) is raised here.
    """
    slot: queue.Queue[object] = queue.Queue(maxsize=1)
    released = threading.Semaphore(1)  # the caller holds no copy

    def produce() -> None:
        try:
            for y0, view in bands:
                while not released.acquire(timeout=0.05):
                    if stopped.is_set():
                        return
                if stopped.is_set():
                    return
                slot.put((y0, view.copy()))
                del view
            slot.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            slot.put(_Failed(exc))
        finally:
            bands.close()

    worker = threading.Thread(target=produce, name="model-bands", daemon=True)
    worker.start()
    try:
        while True:
            item = slot.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            assert isinstance(item, tuple)
            y0, band = item
            del item
            yield y0, band
            del band
            released.release()
    finally:
        stopped.set()
        while worker.is_alive():  # a producer blocked on the full slot: let it put and see stopped
            with contextlib.suppress(queue.Empty):
                slot.get(timeout=0.05)
        worker.join()


class _InputGrid:
    """Model-scale rows → rows of the input grid, as ``pipeline.on_input_grid`` maps the whole:
    probabilities with ``rescale.resize_maps``' taps, labels by ``rescale.resize_labels``' nearest
    rows and columns, the mask thresholded on the input grid."""

    def __init__(self, reader: ModelRows, threshold: float, labels: bool, probability: bool) -> None:
        self.threshold = threshold
        self.want_labels = labels
        self.want_probability = probability
        self.resized = reader.resized
        self.height, self.width = reader.input_shape
        self.model_shape = reader.shape
        self.next_row = 0
        if self.resized:
            (h, w), (hs, ws) = reader.input_shape, reader.shape
            self.row_taps = rescale.axis_taps(hs, h)
            self.col_taps = rescale.axis_taps(ws, w)
            # the model rows each input row needs (taps for probabilities, nearest for labels)
            self.label_rows = rescale.nearest_index(hs, h)
            self.label_cols = rescale.nearest_index(ws, w)
            need = [self.row_taps.index.min(axis=1), self.row_taps.index.max(axis=1)]
            if labels:
                need.append(self.label_rows)
            self.need_lo = np.minimum.reduce(need)
            self.need_hi = np.maximum.reduce(need) + 1
            self.top = 0
            self.fg: np.ndarray | None = None
            self.labs: np.ndarray | None = None

    def push(self, y0: int, fg: np.ndarray, labs: np.ndarray | None, done: int) -> Iterator[RowBand]:
        if fg.shape[0] == 0:
            return
        if not self.resized:
            # fg is a view of the stitcher's buffer: a band handed out must own its arrays
            yield self._band(y0, fg.copy() if self.want_probability else fg, labs, done)
            return
        if self.fg is None:  # copies: the rows come from the stitcher's buffer, reused after this
            self.top, self.fg = y0, fg.copy()
            self.labs = None if labs is None else labs.copy()
        else:
            self.fg = np.concatenate([self.fg, fg])
            if self.want_labels:
                self.labs = np.concatenate([self.labs, labs])
        available = self.top + self.fg.shape[0]
        stop = int(np.searchsorted(self.need_hi, available, side="right"))
        start = self.next_row
        if stop <= start:
            return
        rows = rescale.resample_axis(self.fg, self.row_taps, 0, start, stop, offset=self.top)
        prob = rescale.resample_axis(rows, self.col_taps, 1)
        lab = None
        if self.want_labels:
            lab = self.labs[self.label_rows[start:stop] - self.top][:, self.label_cols]
        self.next_row = stop
        if stop < self.height:
            drop = int(self.need_lo[stop]) - self.top
            if drop > 0:
                self.fg = self.fg[drop:].copy()
                if self.want_labels:
                    self.labs = self.labs[drop:].copy()
                self.top += drop
        yield self._band(start, prob, lab, done)

    def _band(self, y0: int, prob: np.ndarray, labs: np.ndarray | None, done: int) -> RowBand:
        return RowBand(
            y0=y0,
            mask=postprocess.mask(prob, self.threshold),
            labels=labs if self.want_labels else None,
            probability=prob if self.want_probability else None,
            objects_done=done,
        )

