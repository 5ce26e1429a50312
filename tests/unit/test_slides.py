"""service.slides: a slide file segmented band by band into OME-Zarr + an objects CSV gives what the
in-memory pipeline gives for the same image. Real parts: a tiled pyramidal OME-TIFF written by
tifffile, the bundled model run by ONNX Runtime, the store read back with zarr and ome_zarr."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import zarr

from service import objects, pipeline, rescale, slides
from service.engine import Engine
from service.outputs import object_rows
from service.regions import ArraySource
from service.settings import DEFAULT_MODEL_PATH
from service.slide_files import open_slide, overview
from tests.unit.test_segment import synthetic_nuclei

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not here")
CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(DEFAULT_MODEL_PATH, providers=CPU)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    image = synthetic_nuclei(1100, 900, seed=11)
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, tile=(256, 256), compression="zlib", photometric="minisblack",
                 metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path, image


def test_a_slide_gives_the_in_memory_pipelines_labels_mask_and_objects(engine, slide, tmp_path):
    path, image = slide
    md = engine.metadata
    params = objects.params_for_model(md)
    diameter = 2 * md.nucleus_diameter  # nuclei resized ×0.5: the resampling path too
    with open_slide(path, max_pixels=10**10, limits=64) as source:
        assert source.pixel_size is not None and source.pixel_size.x_um == 0.5
        result = slides.segment_slide(
            source, tmp_path / "job", engine.run, md, params, md.threshold, diameter,
            pixel_size_um=(0.5, 0.5), tile_size=256, overlap=None, batch_size=1, chunk=256,
            geojson=True, geojson_properties={"pixel_size_um": 0.5},
        )
    assert (result.height, result.width) == image.shape and result.scale.source == "request"
    assert result.estimate_window is None and result.tiles > 4

    scale = pipeline.ScaleChoice(diameter, "request", result.scale.factor)
    memory = pipeline.predict_scaled(image, scale, engine.run, md, tile_size=256, batch_size=1)
    grid = pipeline.on_input_grid(memory, md, image.shape, md.threshold, params)

    store = zarr.open_group(result.store, mode="r")
    labels = np.asarray(store["labels/nuclei/0"])
    np.testing.assert_array_equal(rescale.renumber(labels.astype(np.int32)), grid.labels)
    np.testing.assert_array_equal(np.asarray(store["labels/mask/0"]), grid.mask)
    assert len(store["labels/nuclei"].attrs["multiscales"][0]["datasets"]) == len(result.levels) > 1

    # The CSV is the in-memory objects table, object for object (ids are the store's).
    with open(result.table, newline="") as f:
        table = list(csv.DictReader(f))
    expected = object_rows(grid.labels, image, grid.probability, source.plane)
    assert result.objects == len(table) == len(expected) > 100
    by_box = {(r.bbox_x, r.bbox_y, r.bbox_width, r.bbox_height): r for r in expected}
    for row in table:
        box = tuple(int(row[k]) for k in ("bbox_x", "bbox_y", "bbox_width", "bbox_height"))
        want = by_box[box]
        assert int(row["area"]) == want.area and float(row["area_um2"]) == want.area_um2
        assert float(row["mean_intensity"]) == pytest.approx(want.mean_intensity, abs=1e-3)
        assert labels[int(float(row["centroid_y"])), int(float(row["centroid_x"]))] in (0, int(row["id"]))

    # The GeoJSON, written object by object across 64-row bands, is output=geojson's collection
    # feature for feature: the same outlines and measurements (ids are the store's).
    with open(result.geojson, encoding="utf-8") as f:
        streamed = json.load(f)
    whole = objects.to_geojson(grid.labels, expected)["features"]
    assert streamed["properties"] == {"pixel_size_um": 0.5, "warnings": result.warnings}
    assert len(streamed["features"]) == len(whole) == result.objects
    want_by_ring = {json.dumps(f["geometry"]): f for f in whole}
    table_ids = {row["id"] for row in table}
    for feature in streamed["features"]:
        want = want_by_ring[json.dumps(feature["geometry"])]
        got, wanted = feature["properties"]["measurements"], want["properties"]["measurements"]
        assert got.keys() == wanted.keys() and got["Area px^2"] == wanted["Area px^2"]
        # sums gathered band by band: the last rounded digit of a centroid may differ
        assert got == pytest.approx({k: float(v) for k, v in wanted.items()}, abs=0.011)
        assert feature["id"] in table_ids and feature["properties"]["name"] == f"Nucleus {feature['id']}"


def test_without_a_diameter_the_size_is_estimated_on_the_brightest_window(engine, tmp_path):
    md = engine.metadata
    image = np.zeros((3000, 2600), np.uint16)
    nuclei = synthetic_nuclei(700, 600, seed=4)
    image[1900:2600, 300:900] = nuclei  # one region holds nuclei, the rest is empty background
    view = overview(ArraySource(image), slides.OVERVIEW_PIXELS)
    window = slides.brightest_window(view, image.shape, 1024)
    y0, y1, x0, x1 = window
    assert (y1 - y0, x1 - x0) == (1024, 1024)
    assert y0 <= 1900 + 350 <= y1 and x0 <= 300 + 300 <= x1  # the nuclei's centre is inside
    result = slides.segment_slide(
        ArraySource(image[1600:2900, 0:1300]), tmp_path / "job", engine.run, md,
        objects.params_for_model(md), md.threshold, None, pixel_size_um=None, tile_size=512,
        overlap=None, batch_size=1, chunk=512,
    )
    assert result.scale.source == "estimated" and result.objects > 50
    assert result.estimate_window is not None


def test_the_writers_thread_runs_calls_in_order_and_stops_on_the_first_failure():
    done: list[int] = []

    def write(k: int) -> None:
        if k == 3:
            raise OSError("disk full")
        done.append(k)

    with pytest.raises(OSError, match="disk full"), slides._Behind(2) as behind:
        for k in range(10):
            behind.submit(write, k)
    # the failure surfaced within `ahead` more submissions, and the calls queued then were dropped
    assert done[:3] == [0, 1, 2]
    assert len(done) <= 3 + 2


def test_the_writers_thread_drops_queued_calls_when_the_producer_fails():
    import threading

    never = threading.Event()
    done: list[int] = []

    def write(k: int) -> None:
        if k == 0:
            never.wait(1.0)  # busy while the producer fails: calls 1 and 2 are still queued
        done.append(k)

    with pytest.raises(RuntimeError, match="cancelled"), slides._Behind(3) as behind:
        for k in range(3):
            behind.submit(write, k)
        raise RuntimeError("cancelled")  # e.g. segment.Cancelled from the model's side
    # the running call was waited for before the block was left; the queued ones never ran
    assert done == [0]


@pytest.mark.parametrize("expand", [9, 90])
def test_cells_of_a_slide_are_the_in_memory_cells_in_the_store_table_and_geojson(
    engine, slide, tmp_path, expand
):
    """expand= band by band (64-row bands; 90 px reaches past the bands held): the store's
    labels/cells, the table's cell and cytoplasm columns and the GeoJSON's QuPath cells are those
    the in-memory pipeline gives with ``expand_cells`` on the whole image."""
    path, image = slide
    md = engine.metadata
    params = objects.params_for_model(md)
    diameter = float(md.nucleus_diameter)
    with open_slide(path, max_pixels=10**10, limits=64) as source:
        result = slides.segment_slide(
            source, tmp_path / "job", engine.run, md, params, md.threshold, diameter,
            pixel_size_um=(0.5, 0.5), tile_size=256, overlap=None, batch_size=1, chunk=256,
            geojson=True, expand=expand,
        )
    scale = pipeline.ScaleChoice(diameter, "request", result.scale.factor)
    memory = pipeline.predict_scaled(image, scale, engine.run, md, tile_size=256, batch_size=1)
    grid = pipeline.on_input_grid(memory, md, image.shape, md.threshold, params)

    store = zarr.open_group(result.store, mode="r")
    labels = np.asarray(store["labels/nuclei/0"]).astype(np.int32)
    cells = np.asarray(store["labels/cells/0"]).astype(np.int32)
    np.testing.assert_array_equal(rescale.renumber(labels), grid.labels)
    np.testing.assert_array_equal(cells, objects.expand_cells(labels, expand))  # the store's own ids
    assert len(store["labels/cells"].attrs["multiscales"][0]["datasets"]) == len(result.levels)
    assert "cells" in store["labels"].attrs["labels"]

    whole_cells = objects.expand_cells(grid.labels, expand)
    expected = object_rows(grid.labels, image, grid.probability, source.plane, cells=whole_cells)
    with open(result.table, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(expected) > 100
    by_box = {(r.bbox_x, r.bbox_y, r.bbox_width, r.bbox_height): dict(r.extra_values) for r in expected}
    for row in table:
        want = by_box[tuple(int(row[k]) for k in ("bbox_x", "bbox_y", "bbox_width", "bbox_height"))]
        assert int(row["cell_area"]) == want["cell_area"]
        assert int(row["cytoplasm_area"]) == want["cytoplasm_area"]
        assert float(row["cell_area_um2"]) == want["cell_area_um2"]
    assert sum(int(r["cytoplasm_area"]) for r in table) == int(((cells > 0) & (labels == 0)).sum()) > 0

    with open(result.geojson, encoding="utf-8") as f:
        streamed = json.load(f)["features"]
    whole = objects.to_geojson(grid.labels, expected, cells=whole_cells)["features"]
    want_by_ring = {json.dumps(f["geometry"]): f for f in whole}
    assert len(streamed) == len(whole)
    for feature in streamed:
        want = want_by_ring[json.dumps(feature["geometry"])]  # the cell's outline
        assert feature["nucleusGeometry"] == want["nucleusGeometry"]
        assert feature["properties"]["objectType"] == "cell"
        assert feature["properties"]["name"].startswith("Cell ")
        got, wanted = feature["properties"]["measurements"], want["properties"]["measurements"]
        assert got["cell_area"] == wanted["cell_area"] and got["cytoplasm_area"] == wanted["cytoplasm_area"]


@pytest.mark.parametrize(("expand", "ring"), [(None, 6), (9, 80)])
def test_background_rings_of_a_slide_are_the_in_memory_rings_in_the_table_and_geojson(
    engine, slide, tmp_path, expand, ring
):
    """background_ring= band by band (64-row bands; 9 + 2 + 80 px reaches past the bands held): the
    table's background and corrected columns of a measured channel, and the GeoJSON's measurements,
    are those ``objects.measure`` gives with ``ring_labels`` of the whole image."""
    from service.background import ring_labels

    path, image = slide
    md = engine.metadata
    params = objects.params_for_model(md)
    diameter = float(md.nucleus_diameter)
    rng = np.random.default_rng(3)
    floor = np.linspace(100, 900, image.shape[1])[None, :]  # uneven illumination across the slide
    marker = (floor + rng.normal(0, 20, image.shape)).astype(np.uint16)
    with open_slide(path, max_pixels=10**10, limits=64) as source:
        result = slides.segment_slide(
            source, tmp_path / "job", engine.run, md, params, md.threshold, diameter,
            pixel_size_um=None, tile_size=256, overlap=None, batch_size=1, chunk=256, geojson=True,
            channels=[("GFP", ArraySource(marker))], expand=expand, background_ring=ring,
        )
    scale = pipeline.ScaleChoice(diameter, "request", result.scale.factor)
    memory = pipeline.predict_scaled(image, scale, engine.run, md, tile_size=256, batch_size=1)
    grid = pipeline.on_input_grid(memory, md, image.shape, md.threshold, params)
    cells = None if expand is None else objects.expand_cells(grid.labels, expand)
    expected = objects.measure(grid.labels, image, grid.probability, channels=[("GFP", marker)], cells=cells,
                               rings=ring_labels(grid.labels, ring, expand or 0.0))
    columns = ["background_GFP", "mean_intensity_corrected_GFP", "integrated_intensity_corrected_GFP"]
    if expand is not None:
        columns += ["mean_intensity_cytoplasm_corrected_GFP", "integrated_intensity_cytoplasm_corrected_GFP"]
    with open(result.table, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[-len(columns):] == columns
    assert len(table) == len(expected) > 100
    by_box = {(r.bbox_x, r.bbox_y, r.bbox_width, r.bbox_height): dict(r.extra_values) for r in expected}
    measured = 0
    for row in table:
        want = by_box[tuple(int(row[k]) for k in ("bbox_x", "bbox_y", "bbox_width", "bbox_height"))]
        for column in columns:
            assert (float(row[column]) if row[column] else None) == want[column], column
        measured += row["background_GFP"] != ""
    assert measured > 100
    with open(result.geojson, encoding="utf-8") as f:
        streamed = json.load(f)["features"]
    backgrounds = sorted(f["properties"]["measurements"].get("background_GFP", -1.0) for f in streamed)
    assert backgrounds == sorted(v["background_GFP"] if v["background_GFP"] is not None else -1.0
                                 for v in by_box.values())


def test_cells_admit_a_slide_job_for_the_rows_they_hold_back() -> None:
    """A slide job's admission grows with its width and, with cells, with the rows held back for
    them (expand= px above and below each band); never past what one request may take."""
    from service.routes.slide_jobs import admitted_pixels

    plain = admitted_pixels(20_000, None, 1, 10**12)
    assert plain < admitted_pixels(20_000, 10, 1, 10**12) < admitted_pixels(20_000, 500, 1, 10**12)
    assert admitted_pixels(40_000, None, 1, 10**12) == 2 * plain
    # measured (benchmarks/slide_cells.py): ~5.3 kB per column and ~66 bytes per px of expand more,
    # against admission's 48 bytes a pixel
    assert admitted_pixels(20_000, 500, 1, 10**12) - plain >= 20_000 * (5300 + 500 * 66) // 48
    assert admitted_pixels(20_000, 500, 1, 10**7) == 10**7


def test_cells_a_wide_slide_cannot_hold_are_a_413_naming_what_fits() -> None:
    """100,000 px wide in the default 8192² budget: the slide alone fits, expand=500 does not (it
    would run on more memory than admitted); the refusal names the largest expansion that fits."""
    from service.errors import ProblemError
    from service.routes.slide_jobs import admitted_pixels, check_cells

    budget = 8192 * 8192
    check_cells(100_000, None, budget)
    check_cells(100_000, 20, budget)
    check_cells(20_000, 500, budget)  # narrower: room for it
    with pytest.raises(ProblemError) as refused:
        check_cells(100_000, 500, budget)
    assert refused.value.status == 413 and "expand=" in refused.value.detail
    fits = int(refused.value.detail.split("at most expand=")[1].split()[0])
    assert admitted_pixels(100_000, fits, 1, 10**12) <= budget < admitted_pixels(100_000, fits + 1, 1, 10**12)
    check_cells(300_000, 5, budget)  # the slide alone is over the budget already: cells change nothing


def test_background_rings_admit_a_slide_job_for_the_rows_they_hold_back_and_a_413_names_the_reach() -> None:
    """A ring holds rows back as far as it reaches beyond each nucleus (the cells' expansion, the
    2 px gap and its width), as cells do for theirs; too far for the budget is a 413 naming the
    reach that fits."""
    from service.errors import ProblemError
    from service.routes.slide_jobs import admitted_pixels, check_cells

    plain = admitted_pixels(20_000, None, 1, 10**12)
    assert plain < admitted_pixels(20_000, None, 1, 10**12, ring=8) < admitted_pixels(20_000, None, 1, 10**12,
                                                                                         ring=100)
    # cells of 10 px with a 20 px ring hold the rows cells of 32 px would (10 + 2 + 20)
    assert admitted_pixels(20_000, 10, 1, 10**12, ring=20) == admitted_pixels(20_000, 32, 1, 10**12)
    budget = 8192 * 8192
    check_cells(100_000, None, budget, ring=20)
    for expand, ring in ((None, 500), (10, 100)):
        with pytest.raises(ProblemError) as refused:
            check_cells(100_000, expand, budget, ring=ring)
        assert refused.value.status == 413 and "background ring" in refused.value.detail
        reach = int(refused.value.detail.split("at most ")[1].split()[0])
        fits_ring = reach - (expand or 0) - 2
        assert admitted_pixels(100_000, expand, 1, 10**12, ring=fits_ring) <= budget
        assert admitted_pixels(100_000, expand, 1, 10**12, ring=fits_ring + 1) > budget
