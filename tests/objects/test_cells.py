"""Cells around nuclei (``expand=``): each nucleus grown into the background, never into a
neighbour's; the cell and cytoplasm columns, and QuPath cells in the GeoJSON."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import ndimage

from service import objects
from service.measured_channels import extra_columns


def _nuclei() -> np.ndarray:
    labels = np.zeros((60, 80), np.int32)
    labels[10:20, 10:20] = 1
    labels[10:20, 22:30] = 2  # two pixels from nucleus 1: their cells meet between them
    labels[40:50, 50:62] = 3
    return labels


def _shoelace(ring: list[list[float]]) -> float:
    xy = np.asarray(ring)
    return 0.5 * abs(float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1])))


def test_a_cell_keeps_its_nucleus_grows_at_most_the_distance_and_never_into_a_neighbour() -> None:
    labels = _nuclei()
    cells = objects.expand_cells(labels, 5)
    assert cells.dtype == np.int32 and set(np.unique(cells)) == {0, 1, 2, 3}
    assert np.array_equal(cells[labels > 0], labels[labels > 0])
    for i in (1, 2, 3):
        distance = ndimage.distance_transform_edt(labels != i)
        assert distance[cells == i].max() <= 5
    # between nuclei 1 and 2 (columns 20, 21), each pixel goes to the nearer one
    assert (cells[15, 20], cells[15, 21]) == (1, 2)
    assert (cells[55, 78], cells[0, 0]) == (0, 0)  # farther than 5 px from every nucleus


def test_the_cell_and_cytoplasm_columns_sum_over_the_cell_less_its_nucleus() -> None:
    labels = _nuclei()
    cells = objects.expand_cells(labels, 5)
    marker = np.random.default_rng(0).random(labels.shape).astype(np.float32) * 100
    rows = objects.measure(labels, marker, np.ones(labels.shape), (0.5, 0.5), channels=[("GFP", marker)],
                           cells=cells)
    for row in rows:
        values = dict(row.extra_values)
        cytoplasm = (cells == row.id) & (labels == 0)
        assert values["cell_area"] == int((cells == row.id).sum()) == row.area + values["cytoplasm_area"]
        assert values["cytoplasm_area"] == int(cytoplasm.sum()) > 0
        assert values["cell_area_um2"] == pytest.approx(values["cell_area"] * 0.25)
        assert values["mean_intensity_cytoplasm_GFP"] == pytest.approx(marker[cytoplasm].mean(), abs=1e-3)
        total = values["integrated_intensity_cytoplasm_GFP"]
        assert total == pytest.approx(marker[cytoplasm].sum(), abs=1e-2)
        assert values["mean_intensity_GFP"] == pytest.approx(marker[labels == row.id].mean(), abs=1e-3)
    assert [name for name, _ in rows[0].extra_values] == extra_columns(["GFP"], cells=True, calibrated=True)


def test_a_cell_without_cytoplasm_has_no_cytoplasm_mean() -> None:
    labels = np.ones((8, 8), np.int32)  # a nucleus filling the image: nothing to grow into
    marker = np.full((8, 8), 7.0)
    rows = objects.measure(labels, marker, np.ones((8, 8)), channels=[("c1", marker)],
                           cells=objects.expand_cells(labels, 3))
    values = dict(rows[0].extra_values)
    assert values["cytoplasm_area"] == 0 and values["mean_intensity_cytoplasm_c1"] is None
    assert values["integrated_intensity_cytoplasm_c1"] == 0
    table = list(csv.DictReader(io.StringIO(objects.rows_to_csv(rows, channel_keys=["c1"], cells=True))))
    assert table[0]["mean_intensity_cytoplasm_c1"] == ""  # an empty cell, not "nan"
    measurements = objects.to_geojson(labels, rows, cells=objects.expand_cells(labels, 3))["features"][0][
        "properties"]["measurements"]
    assert "mean_intensity_cytoplasm_c1" not in measurements and measurements["cytoplasm_area"] == 0


def test_the_geojson_holds_qupath_cells_with_their_nuclei() -> None:
    labels = _nuclei()
    cells = objects.expand_cells(labels, 5)
    rows = objects.measure(labels, np.ones(labels.shape), np.ones(labels.shape), cells=cells)
    collection = objects.to_geojson(labels, rows, cells=cells)
    assert len(collection["features"]) == 3
    for feature, row in zip(collection["features"], rows, strict=True):
        properties = feature["properties"]
        assert properties["objectType"] == "cell" and properties["name"] == f"Cell {row.id}"
        cell_ring = feature["geometry"]["coordinates"][0]
        nucleus_ring = feature["nucleusGeometry"]["coordinates"][0]
        assert _shoelace(cell_ring) == dict(row.extra_values)["cell_area"]
        assert _shoelace(nucleus_ring) == row.area
    plain = objects.to_geojson(labels, rows)["features"][0]
    assert plain["properties"]["objectType"] == "detection" and "nucleusGeometry" not in plain


def test_the_roi_set_holds_each_nucleus_and_then_its_cell() -> None:
    import zipfile

    import roifile

    labels = _nuclei()
    cells = objects.expand_cells(labels, 5)
    rows = objects.measure(labels, np.ones(labels.shape), np.ones(labels.shape), cells=cells)
    data = objects.to_imagej_rois(labels, rows, (0, 2, None), cells=cells)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        rois = [roifile.ImagejRoi.frombytes(archive.read(name)) for name in names]
    assert names == ["00001-nucleus.roi", "00001-cell.roi", "00002-nucleus.roi", "00002-cell.roi",
                     "00003-nucleus.roi", "00003-cell.roi"]
    assert [roi.name for roi in rois[:2]] == ["Nucleus 1", "Cell 1"]
    for roi, name in zip(rois, names, strict=True):
        row = rows[int(name[:5]) - 1]
        ring = [[float(x), float(y)] for x, y in roi.coordinates()]
        area = dict(row.extra_values)["cell_area"] if name.endswith("cell.roi") else row.area
        assert _shoelace([*ring, ring[0]]) == area
        assert (roi.c_position, roi.z_position) == (1, 3)  # 1-based in ImageJ
    assert objects.to_imagej_rois(labels, rows) != data  # without cells: nuclei only
