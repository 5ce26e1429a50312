"""``measure=``: each nucleus measured in other channels of the file, through a real server.

The usual analysis of a multi-channel micrograph: segment the nuclei on the DNA stain and read a
marker's intensity per nucleus. The bar: the extra columns hold exactly the mean and the sum of
the measured channel's pixels over each object of the labels the service gives for the same
request (computed here from the file's own arrays), at the same z / t or projection; the
objects themselves do not change; every output that has no table, and every channel the file
lacks, is a 422 that says so.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tifffile

from tests.api import _images as im
from tests.api.test_jobs import finished, wait_until
from tests.server import Server

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=12, dtype=np.uint16)
MARKER = (np.arange(H * W, dtype=np.uint16).reshape(H, W) % 997).astype(np.uint16)  # varies per pixel
EMPTY = np.full((H, W), 3, np.uint16)
THREE_CHANNELS = np.stack([NUCLEI, MARKER, EMPTY])


def tiff(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **options)
    return out.getvalue()


IJ_THREE = tiff(THREE_CHANNELS, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "GFP 488", "Cy5"]})


def post(server: Server, data: bytes, path: str = "/segment", headers: dict | None = None, **params):
    return server.client.post(
        path, params=params, content=data, headers={"Content-Type": "image/tiff", **(headers or {})}
    )


def labels_of(server: Server, data: bytes, **params) -> np.ndarray:
    r = post(server, data, output="labels", **params)
    assert r.status_code == 200, r.text
    return im.decode(r.content).astype(np.int64)


def table(server: Server, data: bytes, **params) -> list[dict]:
    r = post(server, data, output="objects", **params)
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


def per_object(labels: np.ndarray, pixels: np.ndarray) -> dict[int, tuple[float, float]]:
    """``{id: (mean, sum)}`` of ``pixels`` over each object of ``labels``."""
    out = {}
    for i in np.unique(labels[labels > 0]):
        values = pixels[labels == i].astype(np.float64)
        out[int(i)] = (values.mean(), values.sum())
    return out


def test_every_channel_measured_over_the_objects_of_the_labels(server: Server) -> None:
    labels = labels_of(server, IJ_THREE, channel="DAPI")
    rows = table(server, IJ_THREE, channel="DAPI", measure="all")
    assert len(rows) == labels.max() > 0
    assert list(rows[0])[-6:] == [
        "mean_intensity_DAPI",
        "integrated_intensity_DAPI",
        "mean_intensity_GFP_488",
        "integrated_intensity_GFP_488",
        "mean_intensity_Cy5",
        "integrated_intensity_Cy5",
    ]
    for key, pixels in (("DAPI", NUCLEI), ("GFP_488", MARKER), ("Cy5", EMPTY)):
        expected = per_object(labels, pixels)
        for row in rows:
            mean, total = expected[int(row["id"])]
            assert float(row[f"mean_intensity_{key}"]) == pytest.approx(mean, abs=1e-3)
            assert float(row[f"integrated_intensity_{key}"]) == pytest.approx(total, abs=1e-2)
    # the segmented channel's own columns are what mean_intensity always was
    assert all(row["mean_intensity_DAPI"] == row["mean_intensity"] for row in rows)


def test_measuring_changes_no_object_and_no_other_column(server: Server) -> None:
    plain = table(server, IJ_THREE, channel="0")
    measured = table(server, IJ_THREE, channel="0", measure="1")
    assert [{k: v for k, v in row.items() if not k.endswith("_GFP_488")} for row in measured] == plain
    assert set(measured[0]) - set(plain[0]) == {"mean_intensity_GFP_488", "integrated_intensity_GFP_488"}


@pytest.mark.parametrize("measure", ["GFP 488", "gfp 488", "1", " 1 , GFP 488 "])
def test_a_channel_by_name_in_any_case_or_by_index_once(server: Server, measure: str) -> None:
    rows = table(server, IJ_THREE, channel="DAPI", measure=measure)
    assert [k for k in rows[0] if "GFP" in k] == ["mean_intensity_GFP_488", "integrated_intensity_GFP_488"]


def test_unnamed_channels_are_keyed_by_index(server: Server) -> None:
    data = tiff(THREE_CHANNELS, imagej=True, metadata={"axes": "CYX"})
    rows = table(server, data, channel="0", measure="2,1")
    assert list(rows[0])[-4:] == [
        "mean_intensity_c2",
        "integrated_intensity_c2",
        "mean_intensity_c1",
        "integrated_intensity_c1",
    ]


def test_json_table_and_geojson_carry_the_columns(server: Server) -> None:
    r = post(
        server,
        IJ_THREE,
        headers={"Accept": "application/json"},
        output="objects",
        channel="DAPI",
        measure="GFP 488",
    )
    rows = r.json()
    labels = labels_of(server, IJ_THREE, channel="DAPI")
    expected = per_object(labels, MARKER)
    assert rows and all(
        row["mean_intensity_GFP_488"] == pytest.approx(expected[row["id"]][0], abs=1e-3) for row in rows
    )
    geo = post(server, IJ_THREE, output="geojson", channel="DAPI", measure="GFP 488").json()
    first = geo["features"][0]["properties"]["measurements"]
    assert first["mean_intensity_GFP_488"] == pytest.approx(
        expected[int(geo["features"][0]["id"])][0], abs=1e-3
    )
    assert geo["properties"]["measured"] == [{"index": 1, "name": "GFP 488"}]


def test_a_projection_measures_the_projection_of_each_channel(server: Server) -> None:
    rng = np.random.default_rng(5)
    stack = np.stack([THREE_CHANNELS, THREE_CHANNELS[:, ::-1, :]])  # Z C Y X
    stack[:, 1] = rng.integers(0, 4000, size=(2, H, W), dtype=np.uint16)
    data = tiff(stack, imagej=True, metadata={"axes": "ZCYX", "Labels": ["DAPI", "GFP", "Cy5"] * 2})
    labels = labels_of(server, data, channel="DAPI", project="max")
    rows = table(server, data, channel="DAPI", project="max", measure="GFP")
    expected = per_object(labels, stack[:, 1].max(axis=0))
    assert rows and all(
        float(row["mean_intensity_GFP"]) == pytest.approx(expected[int(row["id"])][0], abs=1e-3)
        for row in rows
    )
    at_z1 = table(server, data, channel="DAPI", z=1, measure="GFP")
    expected_z1 = per_object(labels_of(server, data, channel="DAPI", z=1), stack[1, 1])
    assert all(
        float(row["integrated_intensity_GFP"]) == pytest.approx(expected_z1[int(row["id"])][1], abs=1e-2)
        for row in at_z1
    )


def test_an_rgb_image_measures_its_colours(server: Server) -> None:
    rgb = np.stack(
        [MARKER.astype(np.uint8), (NUCLEI >> 8).astype(np.uint8), NUCLEI.astype(np.uint8)], axis=-1
    )
    data = tiff(rgb, photometric="rgb")
    labels = labels_of(server, data, channel="blue")
    rows = table(server, data, channel="blue", measure="red")
    expected = per_object(labels, rgb[:, :, 0])
    assert rows and all(
        float(row["mean_intensity_red"]) == pytest.approx(expected[int(row["id"])][0], abs=1e-3)
        for row in rows
    )


def test_a_channel_the_file_lacks_is_a_422_listing_them(server: Server) -> None:
    r = post(server, IJ_THREE, output="objects", channel="DAPI", measure="GFP 488,Ki67")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "/problems/invalid-options"
    assert "Ki67" in body["detail"] and "2 (Cy5)" in body["detail"] and "all" in body["detail"]
    assert body["errors"][0]["loc"] == ["query", "measure"]


@pytest.mark.parametrize("output", ["mask", "labels", "rois", "overlay"])
def test_outputs_without_a_table_refuse_measure(server: Server, output: str) -> None:
    r = post(server, IJ_THREE, output=output, channel="DAPI", measure="all")
    assert r.status_code == 422, r.text
    assert "output=objects, geojson, ome-zarr, labels3d" in r.json()["detail"]


@pytest.mark.parametrize("measure", [",", " , ,"])
def test_a_measure_naming_nothing_is_a_422(server: Server, measure: str) -> None:
    r = post(server, IJ_THREE, output="objects", channel="DAPI", measure=measure)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "measure"], r.text


def test_a_job_gives_the_same_table(server: Server) -> None:
    direct = post(server, IJ_THREE, output="objects", channel="DAPI", measure="all").text
    r = post(server, IJ_THREE, path="/jobs", output="objects", channel="DAPI", measure="all")
    assert r.status_code == 202, r.text
    status = wait_until(server.client, r.json()["id"], finished)
    assert status["status"] == "succeeded", status
    assert server.client.get(f"{r.headers['Location']}/result").text == direct


def test_batch_measures_each_file(server: Server) -> None:
    files = [("files", ("a.tif", IJ_THREE, "image/tiff")), ("files", ("b.tif", IJ_THREE, "image/tiff"))]
    r = server.client.post(
        "/segment/batch", params={"output": "objects", "channel": "DAPI", "measure": "Cy5"}, files=files
    )
    assert r.status_code == 200, r.text
    assert r.text.count("mean_intensity_Cy5") == 2


def test_measuring_more_planes_than_the_pixel_limit_allows_is_a_413(server: Server) -> None:
    """A few kB of compressed pages could otherwise expand into gigabytes held at once: 100 channels of
    512² weigh, measured, more than the test server's pixel limit allows (2 MP ≙ 24 M measured pixels)."""
    many = np.zeros((100, 512, 512), np.uint16)
    many[0, 100:140, 100:140] = 3000
    data = tiff(many, imagej=True, metadata={"axes": "CYX"}, compression="zlib")
    assert len(data) < 200_000
    r = post(server, data, output="objects", channel="0", measure="all")
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "/problems/image-too-large" and "measure=" in r.json()["detail"]
    assert "100 channel planes" in r.json()["detail"]
    few = post(server, data, output="objects", channel="0", measure="1,2")
    assert few.status_code == 200 and "mean_intensity_c2" in few.text


def test_expand_gives_cells_and_measures_each_channel_over_their_cytoplasm(server: Server) -> None:
    from skimage.segmentation import expand_labels

    labels = labels_of(server, IJ_THREE, channel="DAPI")
    cells = expand_labels(labels, 4)
    rows = table(server, IJ_THREE, channel="DAPI", measure="GFP 488", expand="4")
    assert len(rows) == labels.max() > 0
    assert list(rows[0])[-6:] == ["cell_area", "cytoplasm_area", "mean_intensity_GFP_488",
                                  "integrated_intensity_GFP_488", "mean_intensity_cytoplasm_GFP_488",
                                  "integrated_intensity_cytoplasm_GFP_488"]
    for row in rows:
        i = int(row["id"])
        cytoplasm = (cells == i) & (labels == 0)
        assert int(row["cell_area"]) == int((cells == i).sum())
        assert int(row["cytoplasm_area"]) == cytoplasm.sum()
        if cytoplasm.any():
            mean = float(row["mean_intensity_cytoplasm_GFP_488"])
            assert mean == pytest.approx(MARKER[cytoplasm].mean(), abs=1e-3)
    geo = post(server, IJ_THREE, output="geojson", channel="DAPI", expand="4").json()
    first = geo["features"][0]
    assert first["properties"]["objectType"] == "cell" and "nucleusGeometry" in first
    assert first["properties"]["measurements"]["cell_area"] == int(rows[0]["cell_area"])
    rois = post(server, IJ_THREE, output="rois", channel="DAPI", expand="4")
    assert rois.status_code == 200, rois.text
    names = zipfile.ZipFile(io.BytesIO(rois.content)).namelist()
    assert names[:2] == ["00001-nucleus.roi", "00001-cell.roi"] and len(names) == 2 * len(rows)


@pytest.mark.parametrize(("output", "expand"), [("mask", "4"), ("labels", "4"), ("overlay", "4"),
                                                ("objects", "0"), ("objects", "501"), ("objects", "x")])
def test_expand_outside_its_outputs_or_range_is_a_422(server: Server, output: str, expand: str) -> None:
    r = post(server, IJ_THREE, output=output, channel="DAPI", expand=expand)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][-1] == "expand"


@pytest.mark.parametrize(("extras", "transforms"), [({"expand": "3"}, 1),
                                                    ({"expand": "3", "background_ring": "5"}, 2)])
def test_measured_planes_and_cells_are_admitted_with_the_models_pixels(
    start_server, slow_model, extras: dict, transforms: int
) -> None:
    """The request's admission grows to the model's pixels plus what the measured planes and the
    cells' distance transform hold (4 and 28 of admission's ~48 bytes a pixel), seen in the gauge;
    a background ring (``background_ring=``) takes a second transform while the cells are held."""
    from tests.api.test_auth_metrics import metric

    srv = start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_ADMISSION_MAX_WAIT_S": "600",
                        "UNET_PREDICTION_CACHE_MB": "0"}).wait_ready()
    size = 768  # ~150 tiles of the slow model: seconds of work to see the admitted pixels in
    stack = np.stack([im.blobs(size, size, seed=s, dtype=np.uint16) for s in (1, 2, 3)])
    data = tiff(stack, imagej=True, metadata={"axes": "CYX"})
    pixels = size * size
    expected = pixels + 3 * pixels * 4 // 48 + transforms * (pixels * 28 // 48)  # as README and docs say
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: httpx.post(
            f"{srv.url}/segment", content=data, timeout=600, headers={"Content-Type": "image/tiff"},
            params={"output": "objects", "channel": "0", "measure": "all", **extras}))
        seen = 0
        while not answer.done():
            # both lanes: which one an image of this size takes is admission's business
            seen = max(seen, metric(srv.client.get("/metrics").text, "unet_admission_pixels_in_flight"))
            time.sleep(0.02)
        assert answer.result().status_code == 200, answer.result().text
    assert seen == expected


def test_a_sum_projection_is_segmented_and_measured_as_the_sum_sent_alone(server: Server) -> None:
    stack = np.stack([THREE_CHANNELS, THREE_CHANNELS[:, ::-1, :]])  # Z C Y X
    data = tiff(stack, imagej=True, metadata={"axes": "ZCYX", "Labels": ["DAPI", "GFP", "Cy5"] * 2})
    summed = stack.astype(np.float32).sum(axis=0)  # C Y X
    r = post(server, data, output="labels", channel="DAPI", project="sum")
    assert r.status_code == 200 and r.headers["X-Projection"] == "sum-z", r.text
    alone = labels_of(server, tiff(summed[0]))
    assert np.array_equal(im.decode(r.content), alone)
    rows = table(server, data, channel="DAPI", project="sum", measure="GFP")
    expected = per_object(alone, summed[1])
    assert rows
    for row in rows:
        assert float(row["mean_intensity_GFP"]) == pytest.approx(expected[int(row["id"])][0], abs=1e-2)


ZSTACK = np.stack([THREE_CHANNELS, THREE_CHANNELS[:, ::-1, :], THREE_CHANNELS[:, :, ::-1]])  # Z C Y X
IJ_ZSTACK = tiff(ZSTACK, imagej=True, metadata={"axes": "ZCYX", "Labels": ["DAPI", "GFP", "Cy5"] * 3})


@pytest.mark.parametrize(("plane", "projected"), [
    ({"project": "max"}, "sum"), ({"z": "1"}, "sum"), ({"z": "2"}, "max"), ({"project": "sum"}, "max"),
])
def test_measured_channels_are_read_as_their_own_projection_whatever_is_segmented(
    server: Server, plane: dict, projected: str
) -> None:
    """measure_project= (segment on the maximum, measure on the sum): the objects are those of the
    plane segmented, the measured columns the channel's projection over every z of the stack."""
    labels = labels_of(server, IJ_ZSTACK, channel="DAPI", **plane)
    rows = table(server, IJ_ZSTACK, channel="DAPI", measure="GFP,DAPI", measure_project=projected, **plane)
    unprojected = table(server, IJ_ZSTACK, channel="DAPI", measure="GFP", **plane)
    stack = ZSTACK.astype(np.float64)
    over_z = stack.sum(axis=0) if projected == "sum" else stack.max(axis=0)
    gfp, dapi = per_object(labels, over_z[1]), per_object(labels, over_z[0])
    assert len(rows) == len(unprojected) == len(gfp) > 3
    for row, before in zip(rows, unprojected, strict=True):
        # the objects and the segmented channel's own columns are the plane's
        own = [k for k in before if "GFP" not in k]
        assert {k: row[k] for k in own} == {k: before[k] for k in own}
        i = int(row["id"])
        assert float(row["mean_intensity_GFP"]) == pytest.approx(gfp[i][0], abs=1e-2)
        assert float(row["integrated_intensity_GFP"]) == pytest.approx(gfp[i][1], rel=1e-6)
        # the segmented channel measured as the projection too (not its plane's pixels reused)
        assert float(row["mean_intensity_DAPI"]) == pytest.approx(dapi[i][0], abs=1e-2)
    geo = post(server, IJ_ZSTACK, output="geojson", channel="DAPI", measure="GFP", measure_project=projected,
               **plane).json()
    assert geo["properties"]["measured_projection"] == projected


@pytest.mark.parametrize(("data", "params", "wanted"), [
    (IJ_ZSTACK, {"project": "max", "measure_project": "sum"}, "measure="),  # nothing measured
    (IJ_THREE, {"measure": "GFP 488", "measure_project": "sum"}, "no z-planes"),
    (IJ_ZSTACK, {"project": "max", "measure": "GFP", "measure_project": "mean"}, "max"),
])
def test_measure_project_without_measure_or_z_planes_is_a_422(server: Server, data, params, wanted) -> None:
    r = post(server, data, output="objects", channel="DAPI", **params)
    assert r.status_code == 422, r.text
    assert wanted in r.json()["detail"] and "measure_project" in r.text, r.text


def test_measure_project_reuses_the_prediction_and_is_refused_for_stack_and_slide_jobs(
    server: Server
) -> None:
    first = post(server, IJ_ZSTACK, output="objects", channel="DAPI", project="max")
    again = post(server, IJ_ZSTACK, output="objects", channel="DAPI", project="max", measure="GFP",
                 measure_project="sum")
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers["X-Prediction-Cache"] == "hit"  # it changes no prediction
    for output in ("labels3d", "ome-zarr"):
        r = post(server, IJ_ZSTACK, path="/jobs", output=output, channel="DAPI", measure="GFP",
                 measure_project="sum")
        assert r.status_code == 422 and "measure_project" in r.text, (output, r.text)
