"""``background_ring=``: each measured channel's local background around each nucleus, through a
real server — the ring computed here from the server's own labels, by brute force, must give the
same medians; the corrected columns are the raw ones less it; every answer with a table carries it
and every other refuses it with a 422."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from tests.api.test_jobs import finished, wait_until
from tests.api.test_measure import labels_of, post, table, tiff
from tests.python_api.conftest import BUNDLED_MODEL
from tests.server import Server

H, W = 96, 192
_rng = np.random.default_rng(5)
_yy, _xx = np.mgrid[:H, :W]
# 3 × 6 nuclei of radius 5–8 px on a grid 32 px apart: room for a ring around each
_DISCS = np.zeros((H, W), bool)
for _cy in range(16, H, 32):
    for _cx in range(16, W, 32):
        _dy, _dx, _radius = _cy + _rng.integers(-3, 4), _cx + _rng.integers(-3, 4), _rng.integers(5, 9)
        _DISCS |= (_yy - _dy) ** 2 + (_xx - _dx) ** 2 <= _radius**2
NUCLEI = (_rng.normal(2000, 300, (H, W)) + 30000 * _DISCS).clip(0, 65535).astype(np.uint16)
# The marker: a background rising from 100 to 900 across the field (uneven illumination), plus noise,
# and on each nucleus 300 more than its surroundings.
_FLOOR = np.linspace(100, 900, W)[None, :].repeat(H, axis=0)
MARKER = (_FLOOR + _rng.normal(0, 10, (H, W)) + 300 * _DISCS).astype(np.uint16)
TWO = tiff(np.stack([NUCLEI, MARKER]), imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "GFP"]})
RING = 6
#: A ring of 10 pixels or more only with the pixels it shares with a neighbour: may be measured or not.
AMBIGUOUS = "ambiguous"


@pytest.fixture(scope="module")
def server(start_server) -> Server:
    """The bundled model, which finds these nuclei one by one (the tests' random mini model does not)."""
    return start_server({"UNET_MODEL_PATH": str(BUNDLED_MODEL)}).wait_ready()


def brute_force_backgrounds(labels: np.ndarray, width: float, reach: float = 0.0) -> dict[int, Any]:
    """Each object's ring as the docs define it — background pixels more than ``reach`` + 2 and at
    most ``reach`` + 2 + ``width`` px from it that are nearer to it than to any other object — and
    the range the marker's median over it may take, one distance transform per object.

    A pixel as near to two objects (a tie) goes to one of them, whichever the distance transform
    picks, and scipy's pick has changed between releases; with ``k`` such pixels in reach, the
    median lies between the sure ring's order statistics ``k/2`` either side of its middle. None:
    no ring (fewer than 10 pixels even with every tie); ``AMBIGUOUS``: 10 or more only with ties."""
    ids = [int(i) for i in np.unique(labels[labels > 0])]
    distance = {i: ndimage.distance_transform_edt(labels != i) for i in ids}
    nearest = np.minimum.reduce([distance[i] for i in ids])
    tied = np.add.reduce([distance[i] == nearest for i in ids]) > 1
    out: dict[int, Any] = {}
    for i in ids:
        d = distance[i]
        ring = (labels == 0) & (d > reach + 2) & (d <= reach + 2 + width) & (d == nearest)
        sure = np.sort(MARKER[ring & ~tied].astype(np.float64))
        n, k = sure.size, int((ring & tied).sum())
        if n + k < 10:
            out[i] = None
        elif n < 10:
            out[i] = AMBIGUOUS
        else:
            out[i] = (sure[max(0, (n - k - 1) // 2)], sure[min(n - 1, (n + k) // 2)])
    return out


def within(background: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-6 <= background <= bounds[1] + 1e-6


def test_each_nucleus_gets_its_rings_median_and_its_intensities_less_it(server: Server) -> None:
    labels = labels_of(server, TWO, channel="DAPI")
    rows = table(server, TWO, channel="DAPI", measure="GFP", background_ring=str(RING))
    assert len(rows) == labels.max() > 3
    assert list(rows[0])[-5:] == ["mean_intensity_GFP", "integrated_intensity_GFP", "background_GFP",
                                  "mean_intensity_corrected_GFP", "integrated_intensity_corrected_GFP"]
    expected = brute_force_backgrounds(labels, RING)
    measured = 0
    for row in rows:
        i = int(row["id"])
        if expected[i] is None:  # a ring this small is no background
            assert row["background_GFP"] == row["mean_intensity_corrected_GFP"] == ""
            continue
        if expected[i] is AMBIGUOUS:
            continue
        measured += 1
        background = float(row["background_GFP"])
        assert within(background, expected[i]), (i, background, expected[i])
        assert float(row["mean_intensity_corrected_GFP"]) == pytest.approx(
            float(row["mean_intensity_GFP"]) - background, abs=1e-3)
        assert float(row["integrated_intensity_corrected_GFP"]) == pytest.approx(
            float(row["integrated_intensity_GFP"]) - int(row["area"]) * background, abs=1e-2)
    assert measured >= len(rows) - 1
    # Every nucleus carries 300 over its surroundings: the raw means follow the illumination across
    # the field (a range of ~600), the corrected ones give each its 300 (a rim pixel or two less).
    raw = [float(row["mean_intensity_GFP"]) for row in rows if row["background_GFP"]]
    corrected = [float(row["mean_intensity_corrected_GFP"]) for row in rows if row["background_GFP"]]
    assert max(raw) - min(raw) > 500
    assert all(270 < value < 310 for value in corrected), corrected


def test_the_ring_changes_no_object_and_no_other_column_and_reuses_the_prediction(server: Server) -> None:
    plain = table(server, TWO, channel="DAPI", measure="GFP")
    r = post(server, TWO, output="objects", channel="DAPI", measure="GFP", background_ring=str(RING))
    assert r.status_code == 200 and r.headers["X-Prediction-Cache"] == "hit", r.text
    ringed = list(csv.DictReader(io.StringIO(r.text)))
    new = {"background_GFP", "mean_intensity_corrected_GFP", "integrated_intensity_corrected_GFP"}
    assert [{k: v for k, v in row.items() if k not in new} for row in ringed] == plain


def test_with_cells_the_ring_lies_beyond_them_and_the_cytoplasm_is_corrected(server: Server) -> None:
    labels = labels_of(server, TWO, channel="DAPI")
    rows = table(server, TWO, channel="DAPI", measure="GFP", expand="3", background_ring=str(RING))
    assert list(rows[0])[-9:-5] == ["mean_intensity_GFP", "integrated_intensity_GFP",
                                    "mean_intensity_cytoplasm_GFP", "integrated_intensity_cytoplasm_GFP"]
    assert list(rows[0])[-2:] == ["mean_intensity_cytoplasm_corrected_GFP",
                                  "integrated_intensity_cytoplasm_corrected_GFP"]
    expected = brute_force_backgrounds(labels, RING, reach=3)
    for row in rows:
        bounds = expected[int(row["id"])]
        if bounds is None or bounds is AMBIGUOUS or not row["mean_intensity_cytoplasm_GFP"]:
            continue
        background = float(row["background_GFP"])
        assert within(background, bounds), (row["id"], background, bounds)
        assert float(row["mean_intensity_cytoplasm_corrected_GFP"]) == pytest.approx(
            float(row["mean_intensity_cytoplasm_GFP"]) - background, abs=1e-3)


def test_json_geojson_batch_and_jobs_carry_the_same_columns(server: Server) -> None:
    params = {"channel": "DAPI", "measure": "GFP", "background_ring": str(RING)}
    rows = table(server, TWO, **params)
    as_json = post(server, TWO, output="objects", headers={"Accept": "application/json"}, **params).json()
    assert [str(row["background_GFP"]) if row["background_GFP"] is not None else "" for row in as_json] == [
        row["background_GFP"] for row in rows]
    geo = post(server, TWO, output="geojson", **params).json()
    first = next(f for f in geo["features"] if f["properties"]["name"] == f"Nucleus {rows[0]['id']}")
    assert first["properties"]["measurements"]["background_GFP"] == float(rows[0]["background_GFP"])
    direct = post(server, TWO, output="objects", **params).text
    job = post(server, TWO, path="/jobs", output="objects", **params)
    assert job.status_code == 202, job.text
    assert wait_until(server.client, job.json()["id"], finished)["status"] == "succeeded"
    assert server.client.get(f"{job.headers['Location']}/result").text == direct
    batch = server.client.post("/segment/batch", params={"output": "objects", **params},
                               files=[("files", ("a.tif", TWO, "image/tiff"))])
    assert batch.status_code == 200, batch.text
    assert batch.text.count("integrated_intensity_corrected_GFP") == 1


@pytest.mark.parametrize(("path", "params", "wanted"), [
    ("/segment", {"output": "objects"}, "give them with measure="),  # nothing measured
    ("/segment", {"output": "objects", "background_ring": "0", "measure": "GFP"}, "greater than 0"),
    ("/segment", {"output": "objects", "background_ring": "501", "measure": "GFP"}, "less than or equal"),
    ("/segment/batch", {"output": "objects"}, "give them with measure="),
    ("/jobs", {"output": "labels3d", "measure": "GFP"}, "a stack job's 3-D table"),
])
def test_without_measured_channels_or_a_table_of_one_image_it_is_a_422(
    server: Server, path: str, params: dict, wanted: str
) -> None:
    params = {"channel": "DAPI", "background_ring": str(RING), **params}
    if path == "/segment/batch":
        r = server.client.post(path, params=params, files=[("files", ("a.tif", TWO, "image/tiff"))])
    else:
        r = post(server, TWO, path=path, **params)
    assert r.status_code == 422, r.text
    assert wanted in r.text and r.json()["errors"][0]["loc"][-1] == "background_ring", r.text


def test_a_slide_job_measures_the_same_backgrounds_band_by_band(server: Server) -> None:
    """The same two channels as a tiled OME-TIFF slide job: its streamed table has the columns, each
    nucleus's background as ``POST /segment`` measures it on the whole image (same diameter)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([NUCLEI, MARKER]), tile=(64, 64), photometric="minisblack", ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    params = {"channel": "DAPI", "measure": "GFP", "background_ring": str(RING), "diameter": "12"}
    job = server.client.post("/jobs", params={"output": "ome-zarr", **params}, content=buffer.getvalue(),
                             headers={"Content-Type": "image/tiff"})
    assert job.status_code == 202, job.text
    assert wait_until(server.client, job.json()["id"], finished)["status"] == "succeeded"
    result = server.client.get(f"{job.headers['Location']}/result").json()
    streamed = list(csv.DictReader(io.StringIO(server.client.get(result["objects_url"]).text)))
    whole = {(r["bbox_x"], r["bbox_y"], r["bbox_width"], r["bbox_height"]): r
             for r in table(server, TWO, **params)}
    assert list(streamed[0])[-3:] == ["background_GFP", "mean_intensity_corrected_GFP",
                                      "integrated_intensity_corrected_GFP"]
    assert len(streamed) == len(whole) > 3
    for row in streamed:
        same = whole[(row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"])]
        assert row["background_GFP"] == same["background_GFP"] != ""
        assert row["mean_intensity_corrected_GFP"] == same["mean_intensity_corrected_GFP"]
