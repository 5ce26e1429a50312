"""service.windows: the windowed pipeline gives the in-memory pipeline's outputs, band by band.

Real parts throughout: the tiler's plans, ONNX models run by ONNX Runtime (the seeded conv
U-Net of tests/models.py, and the bundled model where it exists), ``objects.label_objects`` for
the whole-image reference.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scipy import ndimage

from service import objects, pipeline, rescale, windows
from service.engine import Engine
from service.model_metadata import Normalization
from service.objects import ObjectParams
from service.preprocess import percentile_limits, to_channels
from service.regions import ArraySource, check_window
from service.segment import Cancelled
from service.settings import DEFAULT_MODEL_PATH
from service.tiling import BandStitcher, Stitcher, pad_image, plan_tiles, reflect_index
from tests.models import write_conv_model
from tests.unit.test_segment import synthetic_nuclei

CPU = ("CPUExecutionProvider",)


class LazySource:
    """A RegionSource that is not an array in memory (as a TIFF/Zarr source is): counts reads."""

    def __init__(self, image: np.ndarray) -> None:
        self._image = image
        self.reads: list[tuple[int, int, int, int]] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._image.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._image.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        check_window(self.shape, y0, y1, x0, x1)
        self.reads.append((y0, y1, x0, x1))
        return self._image[y0:y1, x0:x1].copy()


# --- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "margin", "divisor", "border"),
    [
        (301, 233, 64, 24, 8, 2, None),  # odd sizes, several tile rows and columns
        (97, 410, 40, 16, 4, 16, 0),  # coarse divisor, no mirror border
        (50, 50, 200, 10, 3, 1, 5),  # one tile
        (7, 300, 64, 8, 2, 4, 20),  # the mirror border is longer than the image is high
        (513, 129, 100, 30, 10, 8, 10),
    ],
)
def test_band_stitcher_equals_stitcher_bit_for_bit(height, width, tile, overlap, margin, divisor, border):
    plan = plan_tiles(height, width, tile, overlap, margin, divisor, border)
    rng = np.random.default_rng(height * width)
    whole, bands = Stitcher(plan, 2), BandStitcher(plan, 2)
    rows: list[tuple[int, np.ndarray]] = []
    for index in range(plan.n_tiles):
        output = rng.normal(size=(2, plan.tile_h, plan.tile_w)).astype(np.float32)
        whole.add(index, output)
        finished = bands.add(index, output)
        if finished is not None:
            rows.append((finished[0], finished[1].copy()))  # a view, valid until the next add
    assert bands.complete
    starts = [y0 for y0, _ in rows]
    assert starts[0] == 0 and starts == sorted(starts)
    stitched = np.concatenate([band for _, band in rows], axis=1)
    assert stitched.shape == (2, height, width)
    np.testing.assert_array_equal(stitched, whole.result())
    assert bands.mean.shape[1] <= plan.tile_h  # never more rows than a tile's height


def test_band_stitcher_takes_tiles_in_raster_order_only():
    plan = plan_tiles(100, 100, 40, 16, 4, 2)
    stitcher = BandStitcher(plan, 1)
    with pytest.raises(ValueError, match="raster order"):
        stitcher.add(1, np.zeros((1, plan.tile_h, plan.tile_w), np.float32))


@pytest.mark.parametrize("length", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("pad", [0, 1, 4, 13, 40])
def test_reflect_index_mirrors_as_numpy_pad_reflect(length, pad):
    axis = np.arange(length)
    expected = np.pad(axis, (pad, pad + 3), mode="reflect")
    np.testing.assert_array_equal(axis[reflect_index(np.arange(-pad, length + pad + 3), length)], expected)


@pytest.mark.parametrize("shape", [(37, 300), (5, 64), (130, 7)])
def test_tile_rows_cut_from_the_source_equal_the_padded_image(shape):
    image = np.random.default_rng(1).integers(0, 4000, shape, dtype=np.uint16)
    md = write_conv_model_metadata()
    plan = plan_tiles(*shape, 32, 12, 3, 4, 9)  # border 9: longer than a 5-px-high image
    limits = percentile_limits(image, md.normalization)
    reader = windows.ModelRows(LazySource(image), md, 1.0)
    assert reader.prepare_limits() == limits
    padded = pad_image(pipeline_normalized(image, md), plan)
    tile = np.empty((1, plan.tile_h, plan.tile_w), np.float32)
    for index in range(plan.n_tiles):
        row, col = divmod(index, plan.grid[1])
        strip = windows.tile_row_rows(reader, plan, row)
        windows.cut_tile(strip, plan, col, tile, reader)
        y, x = plan.tile_origin(index)
        np.testing.assert_array_equal(tile, padded[:, y : y + plan.tile_h, x : x + plan.tile_w])


def write_conv_model_metadata():
    from tests.models import test_metadata

    return test_metadata(size_divisor=4, context_margin=3, tile_size=32, tile_overlap=12)


def pipeline_normalized(image: np.ndarray, md) -> np.ndarray:
    from service.preprocess import prepare

    return prepare(image, md.in_channels, md.normalization)


# --- normalisation limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 65535, (1100, 333), dtype=np.uint16),
        np.random.default_rng(1).integers(0, 255, (517, 260, 3), dtype=np.uint8),
        # more than 2 × 2**22 float pixels: the limits come from a strided subsample
        np.random.default_rng(2).normal(100, 30, (3001, 2900)).astype(np.float32),
    ],
    ids=["uint16", "rgb-uint8", "float32-subsampled"],
)
def test_limits_read_window_by_window_equal_the_whole_image_limits(image):
    md = write_conv_model_metadata()
    source = LazySource(image)
    got = windows.source_limits(source, 1, md, pixels_per_read=50_000)
    assert got == percentile_limits(to_channels(image, 1), Normalization())
    rows = 50_000 // image.shape[1]
    assert len(source.reads) == -(-image.shape[0] // rows) > 1  # band by band, never whole


# --- windowed == in memory, on real models ------------------------------------------------------


@pytest.fixture(scope="module")
def conv20(tmp_path_factory) -> Engine:
    """The seeded conv U-Net, told it was trained on nuclei 20 px across (so factors apply)."""
    path = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", seed=3, nucleus_diameter=20.0)
    return Engine.load(path, providers=CPU, intra_op_threads=1)


def both_paths(engine, image, factor, tile, params, count_only=False, output_rows=windows.OUTPUT_ROWS,
               source=None):
    """(in-memory GridOutputs, windowed GridOutputs, the windowed prediction)."""
    md = engine.metadata
    scale = pipeline.ScaleChoice(20.0 / factor, "request", factor)
    memory = pipeline.predict_scaled(image, scale, engine.run, md, tile_size=tile, batch_size=1)
    in_memory = pipeline.on_input_grid(memory, md, image.shape[:2], md.threshold, params, count_only)
    windowed = windows.WindowedPrediction.prepare(source or ArraySource(image), factor, engine.run, md,
                                                  tile_size=tile)
    assert windowed.plan == memory.plan
    # no cap on tall components here: the random conv net's mask is one confluent sheet
    bands = list(windowed.bands(md.threshold, params, labels=params is not None and not count_only,
                                probability=True, count_only=count_only, output_rows=output_rows,
                                max_object_rows=10**9))
    height, width = image.shape[:2]
    grid = pipeline.GridOutputs(
        np.concatenate([b.probability for b in bands]), np.concatenate([b.mask for b in bands]),
        None if bands[0].labels is None else rescale.renumber(np.concatenate([b.labels for b in bands])),
        bands[-1].objects_done,
    )
    assert [b.y0 for b in bands] == sorted({b.y0 for b in bands}) and grid.mask.shape == (height, width)
    return in_memory, grid, bands


@pytest.mark.parametrize("factor", [0.55, 1.0, 1.6])
@pytest.mark.parametrize(("shape", "tile"), [((301, 187), 48), ((163, 250), 90), ((77, 61), 200)])
def test_windowed_outputs_equal_the_in_memory_ones(conv20, factor, shape, tile):
    image = synthetic_nuclei(*shape, seed=shape[0])
    params = ObjectParams(min_area=4)
    in_memory, windowed, bands = both_paths(conv20, image, factor, tile, params, output_rows=40)
    np.testing.assert_array_equal(windowed.probability, in_memory.probability)
    np.testing.assert_array_equal(windowed.mask, in_memory.mask)
    np.testing.assert_array_equal(windowed.labels, in_memory.labels)
    assert in_memory.count == int(windowed.labels.max()) > 0
    # ids are global: an object keeps one id in every band it spans
    raw = np.concatenate([b.labels for b in bands])
    pairs = set(zip(raw.ravel().tolist(), windowed.labels.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(raw))
    counted, windowed_count, _ = both_paths(conv20, image, factor, tile, params, count_only=True)
    assert windowed_count.count == counted.count


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not in this checkout")
# Bands of 13 rows and 96² tiles at ×1, 7 rows at ×1.6: narrower than a nucleus and its ring, so
# regions and rings span bands. At ×1.6, 128² tiles: with 96² ones this case alone took over a
# minute of the suite (the tiles' halo is most of each tile) and tested nothing more.
@pytest.mark.parametrize(("factor", "tile", "output_rows"), [(1.0, 96, 13), (0.62, 128, 40), (1.6, 128, 7)])
def test_a_contrast_cut_gives_the_same_objects_windowed(factor, tile, output_rows):
    engine = Engine.load(DEFAULT_MODEL_PATH, providers=CPU)
    # These clean synthetic nuclei stand 10-20 ring σ above their background: a cut of 10 drops
    # some and keeps others, which is what a comparison of the two paths needs.
    engine.metadata = engine.metadata.model_copy(
        update={"objects": {**engine.metadata.objects, "min_snr": 10.0, "snr_ring": 10}}
    )
    image = synthetic_nuclei(301, 257, seed=4)
    params = objects.params_for_model(engine.metadata)
    in_memory, windowed, bands = both_paths(engine, image, factor, tile, params, output_rows=output_rows)
    assert len(bands) > 2
    np.testing.assert_array_equal(windowed.labels, in_memory.labels)
    np.testing.assert_array_equal(windowed.probability, in_memory.probability)
    scale = pipeline.ScaleChoice(20.0 / factor, "request", factor)
    prediction = pipeline.predict_scaled(image, scale, engine.run, engine.metadata, tile_size=tile)
    without = pipeline.on_input_grid(
        prediction, engine.metadata, image.shape, engine.metadata.threshold, replace(params, min_snr=0.0)
    )
    assert without.count > in_memory.count > 0  # the cut dropped some objects here, not all
    counted, windowed_count, _ = both_paths(engine, image, factor, tile, params, count_only=True)
    assert windowed_count.count == counted.count == in_memory.count


def test_a_lazy_source_gives_the_outputs_of_the_image_in_memory(conv20):
    image = synthetic_nuclei(211, 173, seed=5)
    source = LazySource(image)
    in_memory, windowed, _ = both_paths(conv20, image, 0.8, 64, ObjectParams(min_area=4), source=source)
    np.testing.assert_array_equal(windowed.labels, in_memory.labels)
    np.testing.assert_array_equal(windowed.probability, in_memory.probability)
    tile_reads = source.reads[1:]  # after the one read of the normalisation pass (a small image)
    assert source.reads[0] == (0, 211, 0, 173)
    assert tile_reads and max(y1 - y0 for y0, y1, _, _ in tile_reads) < image.shape[0]


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not in this checkout")
@pytest.mark.parametrize(("factor", "tile"), [(1.0, 448), (0.62, 640)])
def test_the_bundled_model_windowed_equals_in_memory(factor, tile):
    engine = Engine.load(DEFAULT_MODEL_PATH, providers=CPU)
    image = synthetic_nuclei(1001, 777, seed=3)
    params = objects.params_for_model(engine.metadata)
    in_memory, windowed, bands = both_paths(engine, image, factor, tile, params)
    assert len(bands) > 2
    np.testing.assert_array_equal(windowed.probability, in_memory.probability)
    np.testing.assert_array_equal(windowed.mask, in_memory.mask)
    np.testing.assert_array_equal(windowed.labels, in_memory.labels)
    # what POST /segment runs: on_input_grid of the windowed prediction, renumbered band by band
    prediction = windows.WindowedPrediction.prepare(ArraySource(image), factor, engine.run, engine.metadata,
                                                    tile_size=tile)
    grid = pipeline.on_input_grid(prediction, engine.metadata, image.shape, engine.metadata.threshold, params,
                                  need={"labels"})
    np.testing.assert_array_equal(grid.labels, in_memory.labels)
    assert grid.count == in_memory.count and grid.probability is None and not grid.warnings


def test_stopping_stops_between_tiles_and_progress_counts_them(conv20):
    image = synthetic_nuclei(300, 200, seed=1)
    calls: list[int] = []
    seen: list[tuple[int, int]] = []

    def infer(batch):
        calls.append(len(batch))
        return conv20.run(batch)

    prediction = windows.WindowedPrediction.prepare(
        ArraySource(image), 1.0, infer, conv20.metadata, tile_size=48,
        should_stop=lambda: len(calls) >= 5, progress=lambda done, total: seen.append((done, total)),
    )
    with pytest.raises(Cancelled):
        list(prediction.bands(0.5))
    assert len(calls) == 5 < prediction.tiles
    assert seen[0] == (0, prediction.tiles) and [d for d, _ in seen] == list(range(6))


def test_only_the_outputs_asked_for_are_computed(conv20):
    image = synthetic_nuclei(120, 90, seed=2)
    prediction = windows.WindowedPrediction.prepare(ArraySource(image), 1.0, conv20.run, conv20.metadata)
    grid = pipeline.on_input_grid(prediction, conv20.metadata, image.shape, 0.5, None, need={"mask"})
    assert grid.probability is None and grid.labels is None and grid.count is None
    assert grid.mask.dtype == np.uint8 and grid.mask.shape == image.shape


# --- objects band by band -----------------------------------------------------------------------


def tricky_maps(height: int = 260, width: int = 200, seed: int = 0) -> np.ndarray:
    """``(2, H, W)`` float32 'probabilities' (foreground, centre) with what band borders must
    survive: touching pairs to split, a ring with a nucleus in its hole, a U open at the bottom
    of some bands, a tall snake, specks below the minimum area."""
    rng = np.random.default_rng(seed)
    fg = np.zeros((height, width), np.float32)
    centre = np.zeros((height, width), np.float32)
    for _ in range(40):
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(3, 12))
        cv2.circle(fg, (x, y), r, 1.0, -1)
        cv2.circle(centre, (x, y), max(1, r // 2), 1.0, -1)
        cv2.circle(fg, (x + r, y + r // 2), r, 1.0, -1)  # a touching twin
        cv2.circle(centre, (x + r, y + r // 2), max(1, r // 2), 1.0, -1)
    cv2.circle(fg, (100, 130), 40, 1.0, 6)  # a ring across several bands, with a nucleus inside
    cv2.circle(fg, (100, 130), 8, 1.0, -1)
    fg[60:110, 20:26] = 1.0  # a U: open towards the bottom until its base arrives
    fg[60:110, 44:50] = 1.0
    fg[104:110, 20:50] = 1.0
    fg[10:250, 185:189] = 1.0  # a tall snake
    fg[200, 5] = 1.0  # a speck
    centre = cv2.GaussianBlur(centre, (0, 0), 2.0)
    return np.stack([fg * 0.9, centre / max(1e-6, centre.max())])


def push_in_bands(finder: windows.BandObjects, maps: np.ndarray, band: int) -> tuple[list, list]:
    """Feed ``maps`` to ``finder`` ``band`` rows at a time: ((first row, rows) handed on, labels) per push."""
    rows, labels = [], []
    for y0 in range(0, maps.shape[1], band):
        first, probs, labs = finder.push(y0, maps[:, y0 : y0 + band], 0)
        rows.append((first, probs.shape[1]))
        labels.append(labs)
    return rows, labels


@pytest.mark.parametrize("method", ["distance_watershed", "center_watershed", "connected_components"])
@pytest.mark.parametrize("band", [7, 23, 64])
@pytest.mark.parametrize("min_confidence", [0.0, 0.7])
def test_band_objects_equal_whole_image_objects(method, band, min_confidence):
    maps = tricky_maps(seed=band)
    if min_confidence:
        # Foreground probabilities that vary across the image, so that some components (the
        # snake and the ring among them, spanning many bands) average under the cut and some over.
        ramp = np.linspace(0.55, 1.0, maps.shape[2], dtype=np.float32)[None, :]
        maps[0] = np.where(maps[0] > 0, ramp * (0.9 + 0.1 * np.cos(np.arange(maps.shape[1]))[:, None]), 0)
        every = objects.label_prediction(maps[0] > 0.5, maps, ObjectParams(method=method, min_area=10))
        sure = ObjectParams(method=method, min_area=10, min_confidence=min_confidence)
        assert every.max() > objects.label_prediction(maps[0] > 0.5, maps, sure).max() > 0
    params = ObjectParams(method=method, min_area=10, min_confidence=min_confidence)
    whole = objects.label_prediction(maps[0] > 0.5, maps, params)
    finder = windows.BandObjects(maps.shape[1], 0.5, params)
    rows, labels = push_in_bands(finder, maps, band)
    assert sum(h for _, h in rows) == maps.shape[1]  # every row once, in order
    assert all(a + h == b for (a, h), (b, _) in zip(rows, rows[1:], strict=False))
    np.testing.assert_array_equal(rescale.renumber(np.concatenate(labels)), whole)
    assert finder.done == whole.max() and not finder.warnings
    counter = windows.BandObjects(maps.shape[1], 0.5, params, count_only=True)
    for y0 in range(0, maps.shape[1], band):
        counter.push(y0, maps[:, y0 : y0 + band], 0)
    assert counter.done == objects.count_prediction(maps[0] > 0.5, maps, params)


def with_input(maps: np.ndarray, seed: int) -> np.ndarray:
    """``maps`` with a third channel, a 'model input': a background of noise and horizontal
    stripes (so a ring's statistics change with every row it reads, above a component as
    below), every marked component lifted by its own amount, from within the noise to far above."""
    rng = np.random.default_rng(seed)
    grey = rng.normal(0.1, 0.02, maps.shape[1:]).astype(np.float32)
    grey += 0.1 * ((np.arange(maps.shape[1]) // 4) % 2).astype(np.float32)[:, None]
    count, components = cv2.connectedComponents((maps[0] > 0.5).astype(np.uint8), connectivity=8)
    lift = rng.uniform(0.0, 0.4, size=count).astype(np.float32)
    lift[0] = 0
    grey += lift[components]
    return np.concatenate([maps, grey[None]])


@pytest.mark.parametrize("method", ["distance_watershed", "connected_components"])
@pytest.mark.parametrize("band", [5, 23, 64])
def test_band_objects_with_a_contrast_cut_equal_whole_image_objects(method, band):
    maps = with_input(tricky_maps(seed=band), seed=band)
    params = ObjectParams(method=method, min_area=10, min_snr=2.0, snr_ring=6)
    around = objects.Surroundings(maps[2], maps[0] > 0.5)
    whole = objects.label_prediction(maps[0] > 0.5, maps, params, around)
    every = objects.label_prediction(maps[0] > 0.5, maps, replace(params, min_snr=0.0))
    assert every.max() > whole.max() > 0  # the cut drops some components, not all
    finder = windows.BandObjects(maps.shape[1], 0.5, params)
    rows, labels = push_in_bands(finder, maps, band)
    assert sum(h for _, h in rows) == maps.shape[1]
    assert all(a + h == b for (a, h), (b, _) in zip(rows, rows[1:], strict=False))
    np.testing.assert_array_equal(rescale.renumber(np.concatenate(labels)), whole)
    counter = windows.BandObjects(maps.shape[1], 0.5, params, count_only=True)
    for y0 in range(0, maps.shape[1], band):
        counter.push(y0, maps[:, y0 : y0 + band], 0)
    assert counter.done == objects.count_prediction(maps[0] > 0.5, maps, params, around) == whole.max()


@pytest.mark.parametrize(
    ("glow_rows", "band", "cut_off"),
    [
        # glow above: the band border cuts the nucleus, whose rows above were handed on already
        ((24, 30), 35, slice(30, 60)),
        # glow below: the nucleus ends 2 rows above the band border, its ring does not
        ((42, 46), 42, slice(0, 42)),
    ],
)
def test_the_ring_of_a_component_crosses_band_borders(glow_rows, band, cut_off):
    # One nucleus (rows 30-39) lifted 0.3 above a noisy background, with an unmarked glow of
    # 0.5 along one side of it: read whole, its ring holds the glow and the nucleus is faint
    # (dropped); a ring cut at the band border would see only the background and keep it.
    maps = np.zeros((3, 60, 40), np.float32)
    maps[0, 30:40, 15:25] = 0.9
    maps[2] = np.random.default_rng(0).normal(0.1, 0.02, (60, 40))
    maps[2, glow_rows[0] : glow_rows[1]] += 0.5
    maps[2, 30:40, 15:25] += 0.3
    params = ObjectParams(method="connected_components", min_area=10, min_snr=2.0, snr_ring=6)
    around = objects.Surroundings(maps[2], maps[0] > 0.5)
    assert objects.label_prediction(maps[0] > 0.5, maps, params, around).max() == 0  # dropped
    seen = maps[:, cut_off]  # the rows a band would give it without the glow's side
    clipped = objects.Surroundings(seen[2], seen[0] > 0.5)
    assert objects.label_prediction(seen[0] > 0.5, seen, params, clipped).max() == 1  # kept
    finder = windows.BandObjects(maps.shape[1], 0.5, params)
    labels = [finder.push(y0, maps[:, y0 : y0 + band], 0)[2] for y0 in range(0, maps.shape[1], band)]
    assert np.concatenate(labels).shape == (60, 40) and np.concatenate(labels).max() == 0 and finder.done == 0


def test_a_component_taller_than_the_cap_is_cut_with_a_warning():
    maps = tricky_maps(seed=1)
    params = ObjectParams(method="connected_components", min_area=10)
    whole = objects.label_prediction(maps[0] > 0.5, maps, params)
    cap = 120
    finder = windows.BandObjects(maps.shape[1], 0.5, params, max_rows=cap)
    labels = [finder.push(y0, maps[:, y0 : y0 + 20], 0)[2] for y0 in range(0, maps.shape[1], 20)]
    banded = rescale.renumber(np.concatenate(labels))
    assert "cut" in finder.warnings[0]
    boxes = ndimage.find_objects(whole)
    snake = whole[100, 186]
    assert boxes[snake - 1][0].stop - boxes[snake - 1][0].start > 2 * cap
    assert len(np.unique(banded[whole == snake])) > 1  # the snake came out in pieces
    # every object shorter than the cap is exactly the whole image's
    short = [i + 1 for i, box in enumerate(boxes) if box[0].stop - box[0].start < cap]
    assert len(short) >= 10
    for i in short:
        ids = np.unique(banded[whole == i])
        assert len(ids) == 1 and np.array_equal(banded == ids[0], whole == i)


@pytest.mark.parametrize("factor", [0.37, 0.7, 1.0001, 1.45, 2.5])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_a_resampled_window_equals_the_resampled_image_cropped(factor, dtype):
    """Reading a window of the resized image (source rows read, then resampled) gives exactly the
    pixels of resizing the whole image and cropping: windows agree where they meet."""
    image = synthetic_nuclei(157, 211, seed=4, dtype=dtype)
    shape = rescale.scaled_shape(image.shape, factor)
    lazy = LazySource(image)
    source = windows.ResampledSource(lazy, 1, shape)
    whole = rescale.resample_image(image, shape)
    assert whole.dtype == dtype and source.shape == shape
    h, w = shape
    for y0, y1, x0, x1 in [(0, 1, 0, w), (3, 29, 5, 40), (h - 11, h, w - 7, w), (h // 2, h // 2 + 5, 0, 3)]:
        np.testing.assert_array_equal(source.read(y0, y1, x0, x1), whole[y0:y1, x0:x1])
    assert max(y1 - y0 for y0, y1, _, _ in lazy.reads) < image.shape[0]  # only the rows the taps need
    np.testing.assert_array_equal(source.read(0, h, 0, w), whole)


def test_a_colour_image_is_resampled_as_its_grey_channel():
    image = np.random.default_rng(3).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    source = windows.ResampledSource(ArraySource(image), 1, (45, 35))
    expected = rescale.resample_image(to_channels(image, 1), (45, 35))
    np.testing.assert_array_equal(source.read(0, 45, 0, 35), expected)


def test_bands_handed_over_from_the_models_thread_are_copies_taken_one_at_a_time():
    import threading

    buffer = np.zeros((1, 2, 3), np.float32)  # reused for every band, as the stitcher does
    made = []

    def bands():
        for k in range(5):
            buffer[:] = k
            made.append(k)
            yield 2 * k, buffer

    seen = []
    for y0, band in windows.handed_over(bands(), threading.Event()):
        # the next band is computed meanwhile, but not copied until this one is let go
        assert len(made) <= len(seen) + 2
        seen.append((y0, float(band.min()), float(band.max())))
        del band
    assert seen == [(2 * k, k, k) for k in range(5)]


def test_a_failure_in_the_models_thread_is_raised_to_the_caller():
    import threading

    def bands():
        yield 0, np.zeros((1, 1, 1), np.float32)
        raise RuntimeError("model failed")

    got = []
    with pytest.raises(RuntimeError, match="model failed"):
        for y0, _band in windows.handed_over(bands(), threading.Event()):
            got.append(y0)
    assert got == [0]


def test_a_caller_that_stops_early_stops_the_models_thread():
    import threading

    stopped = threading.Event()
    closed = threading.Event()

    def bands():  # as stitched_bands with should_stop=stopped.is_set: endless until stopped
        try:
            k = 0
            while not stopped.is_set():
                yield k, np.full((1, 1, 1), k, np.float32)
                k += 1
            raise windows.Cancelled("stopped")
        finally:
            closed.set()

    handed = windows.handed_over(bands(), stopped)
    assert next(handed)[0] == 0
    handed.close()  # the consumer gives up (an error downstream, a closed request)
    assert stopped.is_set() and closed.is_set()  # the thread ran its generator's cleanup and ended


class RowCountingArraySource(ArraySource):
    """An image in memory that counts the rows read from it."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__(image)
        self.rows_read = 0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.rows_read += y1 - y0
        return super().read(y0, y1, x0, x1)


@pytest.mark.parametrize(("factor", "held"), [(0.7, True), (1.6, False)])
def test_an_image_in_memory_that_shrinks_is_resized_once(conv20, factor, held):
    # Shrinking, the resized copy (the image's dtype) is smaller than the image: it is made once
    # and the limits and every tile row read it. Enlarged, it would outgrow the image: the rows
    # are resized for the limits, then again under each tile row.
    image = synthetic_nuclei(301, 187, seed=7)
    source = RowCountingArraySource(image)
    prediction = windows.WindowedPrediction.prepare(source, factor, conv20.run, conv20.metadata, tile_size=48)
    grid = pipeline.on_input_grid(prediction, conv20.metadata, image.shape, 0.5, None, need={"mask"})
    assert grid.mask.shape == image.shape
    if held:
        assert source.rows_read == image.shape[0]
    else:
        assert source.rows_read > 2 * image.shape[0]
