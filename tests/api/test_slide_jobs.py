"""Slide jobs on a real server: ``POST /jobs?output=ome-zarr`` on a tiled OME-TIFF (under the data
root, or uploaded) → an OME-Zarr store read back over HTTP by ``ome_zarr`` and an objects CSV, with
the labels ``POST /segment`` gives for the same image; the refusals around it."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from service import rescale
from service.settings import DEFAULT_MODEL_PATH
from tests.api import _images as im
from tests.api.test_jobs import finished, wait_until
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not here")

DIAMETER = "30"  # nuclei of 10–30 px: resized ×~0.6, so resampling is part of what is compared
#: One tile plan for the job and POST /segment (each path's default tile differs by image size).
SAME_PLAN = {"diameter": DIAMETER, "tile_size": "512"}


def _ome_tiff(image: np.ndarray, pixel_size: float = 0.65) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, tile=(256, 256), compression="zlib", photometric="minisblack",
                     metadata={"axes": "YX", "PhysicalSizeX": pixel_size, "PhysicalSizeY": pixel_size},
                     ome=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    return synthetic_nuclei(2300, 1900, seed=21)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, slide_image) -> Path:
    root = tmp_path_factory.mktemp("data-root")
    (root / "slides").mkdir()
    (root / "slides" / "s1.ome.tif").write_bytes(_ome_tiff(slide_image))
    (root / "slides" / "flat.png").write_bytes(im.png(slide_image[:300, :300]))
    return root


@pytest.fixture(scope="module")
def slide_server(start_server, data_root: Path, tmp_path_factory) -> Server:
    return start_server({
        "UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH),
        "UNET_DATA_ROOT": str(data_root),
        "UNET_JOBS_DIR": str(tmp_path_factory.mktemp("slide-jobs")),
    }).wait_ready()


def test_a_slide_under_the_data_root_becomes_an_ome_zarr_store_readable_over_http(
    slide_server: Server, slide_image: np.ndarray, tmp_path: Path
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    client = slide_server.client
    submitted = client.post("/jobs", params={"output": "ome-zarr", "geojson": "true", **SAME_PLAN},
                            json={"path": "slides/s1.ome.tif"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    status = wait_until(client, job_id, finished)
    assert status["status"] == "succeeded", status
    assert status["tiles_total"] == status["tiles_done"] > 1

    summary = client.get(f"/jobs/{job_id}/result")
    assert summary.status_code == 200 and summary.headers["content-type"].startswith("application/json")
    body = summary.json()
    assert (body["height"], body["width"]) == slide_image.shape
    assert body["diameter_source"] == "request" and body["objects"] > 300
    assert summary.headers["X-Object-Count"] == str(body["objects"])

    # The store opens over HTTP, as a viewer would open the URL.
    nodes = list(Reader(parse_url(slide_server.url + body["store_url"]))())
    image_node = nodes[0]
    assert image_node.data[0].shape == slide_image.shape and len(image_node.data) == len(body["levels"]) > 1
    scale = image_node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([0.65, 0.65])  # the file's calibration, in µm
    labels_url = slide_server.url + body["store_url"] + "/labels/nuclei"
    label_nodes = [node for node in Reader(parse_url(labels_url))() if node.load(Label)]
    (labels_node,) = [node for node in label_nodes if "/labels/nuclei/" in str(node.zarr)]
    assert labels_node.data[0].dtype == np.uint32
    labels = np.asarray(labels_node.data[0]).astype(np.int32)

    # The same image through POST /segment (in memory): the same objects, pixel for pixel.
    answer = client.post("/segment", params={"output": "labels", **SAME_PLAN},
                         content=im.png(slide_image), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    expected = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.int32)
    np.testing.assert_array_equal(rescale.renumber(labels), expected)
    assert int(answer.headers["X-Object-Count"]) == body["objects"]

    # The objects table: one row per object of the store, in µm too.
    table = list(csv.DictReader(io.StringIO(client.get(slide_server.url + body["objects_url"]).text)))
    assert len(table) == body["objects"] and {int(r["id"]) for r in table} == set(np.unique(labels)) - {0}
    assert "area_um2" in table[0]

    # The outlines (geojson=true): one QuPath detection per object of the store.
    outlines = client.get(slide_server.url + body["geojson_url"])
    assert outlines.headers["content-type"].startswith("application/geo+json")
    collection = outlines.json()
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == body["objects"]
    assert {int(f["id"]) for f in collection["features"]} == {int(r["id"]) for r in table}
    assert collection["properties"]["warnings"] == body["warnings"]

    # One ZIP of everything, and nothing outside the result is served.
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job_id}/files.zip").content))
    names = archive.namelist()
    assert "objects.csv" in names and "result.ome.zarr/.zattrs" in names
    assert archive.read("objects.geojson") == outlines.content  # read in pieces, CRC checked
    assert archive.read("objects.csv").decode() == client.get(slide_server.url + body["objects_url"]).text
    assert "result.ome.zarr/labels/nuclei/.zattrs" in names
    for outside in ("status.json", "result", "result.ome.zarr/%2e%2e/status.json", "objects.csv/x"):
        assert client.get(f"/jobs/{job_id}/files/{outside}").status_code == 404, outside


def test_a_slide_can_be_uploaded_and_what_is_no_slide_is_refused_at_submission(
    slide_server: Server, slide_image: np.ndarray
) -> None:
    client = slide_server.client
    small = slide_image[:700, :600]
    job = client.post("/jobs", params={"output": "ome-zarr", "diameter": DIAMETER}, content=_ome_tiff(small),
                      headers={"Content-Type": "image/tiff"})
    assert job.status_code == 202, job.text
    status = wait_until(client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    result = client.get(f"/jobs/{job.json()['id']}/result").json()
    assert result["width"] == 600 and result["geojson_url"] is None  # outlines only when asked
    assert client.get(result["objects_url"].replace("objects.csv", "objects.geojson")).status_code == 404

    # the options in the JSON body instead of the query (README's example); cancelled at once
    in_body = client.post("/jobs", json={"path": "slides/s1.ome.tif", "output": "ome-zarr", "diameter": 30})
    assert in_body.status_code == 202, in_body.text
    assert client.delete(f"/jobs/{in_body.json()['id']}").status_code in (200, 204)

    png = client.post("/jobs", params={"output": "ome-zarr"}, json={"path": "slides/flat.png"})
    assert png.status_code == 415 and png.json()["type"] == "/problems/unsupported-image-type"
    segment = client.post("/segment", params={"output": "ome-zarr"}, content=im.png(small),
                          headers={"Content-Type": "image/png"})
    assert segment.status_code == 422 and "POST /jobs" in segment.json()["detail"]
    for where, output in (("/segment", "geojson"), ("/jobs", "labels")):  # geojson= is for slide jobs
        refused = client.post(where, params={"output": output, "geojson": "true"}, content=im.png(small),
                              headers={"Content-Type": "image/png"})
        assert refused.status_code == 422 and "output=geojson" in refused.json()["detail"], where
    # a PNG job's result is one response: it has no files
    plain = client.post("/jobs", content=im.png(small[:200, :200]), headers={"Content-Type": "image/png"})
    plain_id = plain.json()["id"]
    wait_until(client, plain_id, finished)
    assert client.get(f"/jobs/{plain_id}/files/objects.csv").status_code == 404


def test_a_bright_field_slide_with_polarity_dark_gives_the_labels_of_post_segment(
    slide_server: Server, slide_image: np.ndarray
) -> None:
    """polarity=dark band by band (each window turned to optical density with the slide's one white
    level) gives the objects ``POST /segment`` gives in memory; the table measures the slide as stored."""
    from tests.unit.test_polarity import transmitted

    client = slide_server.client
    bright_field = transmitted(slide_image[:700, :600])
    plan = {"output": "ome-zarr", "polarity": "dark", **SAME_PLAN}
    job = client.post("/jobs", params=plan, content=_ome_tiff(bright_field),
                      headers={"Content-Type": "image/tiff"})
    assert job.status_code == 202, job.text
    status = wait_until(client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    result = client.get(f"/jobs/{job.json()['id']}/result").json()
    assert any("optical density" in w for w in result["warnings"])
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job.json()['id']}/files.zip").content))
    table = list(csv.DictReader(io.StringIO(archive.read("objects.csv").decode())))

    answer = client.post("/segment", params={"output": "labels", "polarity": "dark", **SAME_PLAN},
                         content=im.png(bright_field), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["X-Object-Count"]) == result["objects"] == len(table) > 50
    # Nuclei are where the stored bright field is dark: their mean intensity is below the field's.
    assert np.median([float(r["mean_intensity"]) for r in table]) < np.median(bright_field)


def test_a_slide_job_segments_the_image_series_names(slide_server: Server, slide_image: np.ndarray) -> None:
    """A file of two images (a two-position OME-TIFF) uploaded as a slide job: series=1 makes the job
    segment the second, as POST /segment segments that image alone."""
    second = np.ascontiguousarray(slide_image[:640, :520])
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, ome=True) as writer:
        writer.write(slide_image[:300, :400], tile=(256, 256), metadata={"axes": "YX", "Name": "Pos0"})
        writer.write(second, tile=(256, 256), metadata={"axes": "YX", "Name": "Pos1"})
    _assert_slide_job_matches_the_plane(slide_server, {"series": 1}, second, content=buffer.getvalue(),
                                        headers={"Content-Type": "image/tiff"})


def _assert_slide_job_matches_the_plane(server: Server, params: dict, plane: np.ndarray, **sent: Any) -> None:
    """A slide job (with ``params``; ``sent``: the upload, as httpx's ``files=`` or ``content=`` and
    ``headers=``, or nothing for a stored one) succeeds at the plane's size and finds the objects
    POST /segment finds in the plane sent alone as a PNG."""
    job = server.client.post("/jobs", params={"output": "ome-zarr", **params, **SAME_PLAN}, **sent)
    assert job.status_code == 202, job.text
    status = wait_until(server.client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    result = server.client.get(f"/jobs/{job.json()['id']}/result").json()
    assert (result["height"], result["width"]) == plane.shape
    answer = server.client.post("/segment", params={"output": "labels", **SAME_PLAN},
                                content=im.png(plane), headers={"Content-Type": "image/png"})
    assert int(answer.headers["X-Object-Count"]) == result["objects"] > 10


def test_a_czi_tile_scan_is_a_slide_job(slide_server: Server, slide_image: np.ndarray) -> None:
    """A Zeiss tile scan (overlapping fields, as ZEN stitches none) uploaded as a slide job: read
    window by window from its subblocks, it gives the objects POST /segment gives for the plane."""
    from tests.czi_files import ZSTD1, Tile, czi_bytes

    plane = np.ascontiguousarray(slide_image[:900, :1100])
    tiles = [Tile(plane[y : y + 400, x : x + 500].copy(), x=x, y=y)
             for y in (0, 350, 500) for x in (0, 450, 600)]
    scan = czi_bytes(tiles, {0: "DAPI"}, 0.65e-6, ZSTD1)
    _assert_slide_job_matches_the_plane(slide_server, {}, plane, files={"file": ("scan.czi", scan)})


def test_a_lif_projects_image_is_a_slide_job(slide_server: Server, slide_image: np.ndarray) -> None:
    """A merged tile scan in a Leica project, chosen with series=: read window by window from a
    memory map of the image's bytes, it gives the objects POST /segment gives for the plane."""
    from tests.lif_files import Image, lif_bytes

    plane = np.ascontiguousarray(slide_image[:900, :1100])
    merged = Image("TileScan 1 Merged", np.stack([plane // 3, plane]), "CYX", ("Gray", "Blue"), 0.65)
    project = lif_bytes([Image("Overview", np.zeros((64, 64), plane.dtype)), merged])
    _assert_slide_job_matches_the_plane(slide_server, {"series": 1, "channel": "blue"}, plane,
                                        files={"file": ("session.lif", project)})


def test_an_nd2_position_is_a_slide_job(slide_server: Server, slide_image: np.ndarray) -> None:
    """A large image stitched in NIS-Elements at the second position of a plate, chosen with
    series=: read window by window from a memory map of its frame, it gives the objects POST
    /segment gives for the plane."""
    from tests.nd2_files import Nd2, write_nd2

    plane = np.ascontiguousarray(slide_image[:900, :1100])
    positions = np.stack([np.zeros_like(np.dstack([plane, plane])), np.dstack([plane // 3, plane])])  # PYXC
    plate = write_nd2(Nd2(positions, "PYXC", ("FITC", "DAPI"), 0.65, position_names=("A1", "A2")))
    _assert_slide_job_matches_the_plane(slide_server, {"series": 1, "channel": "dapi"}, plane,
                                        files={"file": ("plate.nd2", plate)})


def test_an_imaris_stitched_image_is_a_slide_job(slide_server: Server, slide_image: np.ndarray) -> None:
    """An image stitched in Imaris (chunks of 256², deflated, as Imaris Stitcher writes a large one):
    read window by window, each window inflating the chunks it touches, it gives the objects POST
    /segment gives for the plane."""
    from tests.ims_files import ims_bytes

    plane = np.ascontiguousarray(slide_image[:900, :1100])
    stitched = ims_bytes(np.stack([plane // 3, plane])[None, :, None], (0.65, 0.65, 1.0), ["GFP", "DAPI"],
                         chunks=(1, 256, 256), levels=1)
    _assert_slide_job_matches_the_plane(slide_server, {"channel": "dapi"}, plane,
                                        files={"file": ("stitched.ims", stitched)})


def test_a_stored_projects_image_is_a_slide_job(slide_server: Server, slide_image: np.ndarray) -> None:
    """The same project stored once (POST /uploads) and named by upload=: the slide job reads the
    stored file where it is and finds what POST /segment finds in the plane."""
    from tests.lif_files import Image, lif_bytes

    client = slide_server.client
    plane = np.ascontiguousarray(slide_image[:700, :800])
    project = lif_bytes([Image("Overview", np.zeros((64, 64), plane.dtype)),
                         Image("TileScan 1 Merged", plane, "YX", ("Gray",), 0.65)])
    stored = client.post("/uploads", content=project, headers={"Content-Type": "application/octet-stream"})
    assert stored.status_code == 201, stored.text
    upload = stored.json()["id"]
    _assert_slide_job_matches_the_plane(slide_server, {"upload": upload, "series": 1}, plane)
    assert client.delete(f"/uploads/{upload}").status_code == 204
    assert client.post("/jobs", params={"upload": upload, "output": "ome-zarr"}).status_code == 404


def _two_channel_slide(slide_image: np.ndarray, seed: int) -> bytes:
    """A tiled OME-TIFF of a noise marker ("EdU") and the nuclei ("DAPI"), 700 × 600."""
    nuclei = np.ascontiguousarray(slide_image[:700, :600])
    marker = np.random.default_rng(seed).integers(0, 3000, nuclei.shape).astype(nuclei.dtype)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([marker, nuclei]), tile=(256, 256), compression="zlib", ome=True,
                     photometric="minisblack", metadata={"axes": "CYX", "Channel": {"Name": ["EdU", "DAPI"]}})
    return buffer.getvalue()


def test_a_slide_job_measures_other_channels_as_post_segment_does(
    slide_server: Server, slide_image: np.ndarray
) -> None:
    """measure= on a two-channel slide: the objects table and the outlines carry the marker's
    columns, equal to POST /segment's table of the same file; the store is the nuclei's as without it."""
    client = slide_server.client
    data = _two_channel_slide(slide_image, seed=8)
    plan = {"channel": "DAPI", "measure": "EdU", **SAME_PLAN}
    job = client.post("/jobs", params={"output": "ome-zarr", "geojson": "true", **plan}, content=data,
                      headers={"Content-Type": "image/tiff"})
    assert job.status_code == 202, job.text
    status = wait_until(client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job.json()['id']}/files.zip").content))
    table = list(csv.DictReader(io.StringIO(archive.read("objects.csv").decode())))

    answer = client.post("/segment", params={"output": "objects", **plan}, content=data,
                         headers={"Content-Type": "image/tiff"})
    assert answer.status_code == 200, answer.text
    expected = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(table) == len(expected) > 50
    # The same objects (a slide numbers them in its own order), matched by where they are; the
    # sums agree to their last digit but for the order they were added in
    columns = ("bbox_y", "bbox_x", "bbox_height", "bbox_width", "area", "mean_intensity_EdU",
               "integrated_intensity_EdU")
    got = np.array(sorted([float(r[c]) for c in columns] for r in table))
    want = np.array(sorted([float(r[c]) for c in columns] for r in expected))
    assert np.array_equal(got[:, :5], want[:, :5]) and np.allclose(got, want, rtol=0, atol=2e-4)
    outlines = json.loads(archive.read("objects.geojson"))
    assert outlines["properties"]["measured"] == [{"index": 0, "name": "EdU"}]
    by_id = {row["id"]: row for row in table}
    for feature in outlines["features"][:20]:
        assert feature["properties"]["measurements"]["mean_intensity_EdU"] == pytest.approx(
            float(by_id[feature["id"]]["mean_intensity_EdU"]))
    # a channel the slide lacks is refused at submission, before any work
    refused = client.post("/jobs", params={"output": "ome-zarr", "channel": "DAPI", "measure": "Ki67",
                                           **SAME_PLAN}, content=data, headers={"Content-Type": "image/tiff"})
    assert refused.status_code == 422 and "Ki67" in refused.json()["detail"], refused.text


def test_a_slide_job_grows_cells_as_post_segment_does(slide_server: Server, slide_image: np.ndarray) -> None:
    """expand= with measure= on a slide: the table's cell and cytoplasm columns equal POST /segment's
    for the same file, the GeoJSON holds QuPath cells, and the store gains labels/cells."""
    client = slide_server.client
    data = _two_channel_slide(slide_image, seed=9)
    plan = {"channel": "DAPI", "measure": "EdU", "expand": "6", **SAME_PLAN}
    job = client.post("/jobs", params={"output": "ome-zarr", "geojson": "true", **plan}, content=data,
                      headers={"Content-Type": "image/tiff"})
    assert job.status_code == 202, job.text
    status = wait_until(client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    result = client.get(f"/jobs/{job.json()['id']}/result").json()
    assert "labels/cells" in result["layout"]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job.json()['id']}/files.zip").content))
    table = list(csv.DictReader(io.StringIO(archive.read("objects.csv").decode())))
    assert any(name.startswith("result.ome.zarr/labels/cells/0/") for name in archive.namelist())

    answer = client.post("/segment", params={"output": "objects", **plan}, content=data,
                         headers={"Content-Type": "image/tiff"})
    assert answer.status_code == 200, answer.text
    expected = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(table[0]) == list(expected[0])  # the same columns in the same order
    assert len(table) == len(expected) > 50
    columns = ("bbox_y", "bbox_x", "bbox_height", "bbox_width", "area", "cell_area", "cytoplasm_area",
               "mean_intensity_cytoplasm_EdU", "integrated_intensity_cytoplasm_EdU")
    got = np.array(sorted([float(r[c]) for c in columns] for r in table))
    want = np.array(sorted([float(r[c]) for c in columns] for r in expected))
    assert np.array_equal(got[:, :7], want[:, :7]) and np.allclose(got, want, rtol=0, atol=2e-4)
    assert (got[:, 6] > 0).mean() > 0.5  # most nuclei have cytoplasm around them
    outlines = json.loads(archive.read("objects.geojson"))["features"]
    assert len(outlines) == len(table)
    assert all(f["properties"]["objectType"] == "cell" and "nucleusGeometry" in f for f in outlines)


def test_cells_are_refused_for_an_output_without_a_table(slide_server: Server) -> None:
    r = slide_server.client.post("/jobs", params={"output": "mask", "expand": "5"},
                                 content=im.png(np.zeros((64, 64), np.uint8)),
                                 headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "expand"], r.text
    assert "ome-zarr" in r.json()["detail"] and "labels3d" in r.json()["detail"]
