"""Microscopy files through a real server: channels, stacks, colour composites and pixel size.

Every file is built here with tifffile the way ImageJ/Fiji and OME writers write them. The bar:
the channel or plane asked for is the one segmented (its object count and labels equal those
of the same plane sent alone), every ambiguous request is a 422 naming the choices, and the µm
columns follow the calibration.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import tifffile

from tests.api import _images as im
from tests.server import Server

H, W = 96, 120
CYTO = im.blobs(H, W, seed=11, dtype=np.uint16)
NUCLEI = im.blobs(H, W, seed=12, dtype=np.uint16)
UM = 0.65  # µm per pixel of the calibrated files


def tiff(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **options)
    return out.getvalue()


def post(server: Server, data: bytes, **params):
    return server.client.post("/segment", params=params, content=data, headers={"Content-Type": "image/tiff"})


def labels_of(server: Server, data: bytes, **params) -> tuple[np.ndarray, int]:
    r = post(server, data, output="labels", **params)
    assert r.status_code == 200, r.text
    return im.decode(r.content), int(r.headers["X-Object-Count"])


def assert_choose(r, params: set[str]) -> dict:
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert body["type"] == "/problems/choose-plane"
    assert {e["loc"][1] for e in body["errors"]} == params
    return body


IJ_TWO_CHANNEL = tiff(
    np.stack([CYTO, NUCLEI]), imagej=True, resolution=(1 / UM, 1 / UM),
    metadata={"axes": "CYX", "unit": "micron", "Labels": ["Cytoplasm", "DAPI"]},
)


@pytest.fixture(scope="module")
def alone(server: Server) -> dict[str, tuple[np.ndarray, int]]:
    """Labels and counts of single-plane files: what the chosen plane must reproduce."""
    planes = {"cyto": CYTO, "nuclei": NUCLEI, **{f"z{k}": ZSTACK[k] for k in (0, 6)},
              "zmax": ZSTACK.max(axis=0)}
    out = {name: labels_of(server, im.png(p)) for name, p in planes.items()}
    assert out["nuclei"][1] > 0
    assert out["cyto"][1] != out["nuclei"][1], "the test needs channels that segment differently"
    return out


def test_a_two_channel_imagej_tiff_without_channel_is_a_422_listing_both(server: Server) -> None:
    body = assert_choose(post(server, IJ_TWO_CHANNEL), {"channel"})
    assert body["choices"]["channels"] == [{"index": 0, "name": "Cytoplasm"}, {"index": 1, "name": "DAPI"}]
    assert "0 (Cytoplasm)" in body["detail"] and "1 (DAPI)" in body["detail"]


@pytest.mark.parametrize("channel", ["1", "DAPI", "dapi"])
def test_the_chosen_channel_is_the_one_segmented(server: Server, alone, channel: str) -> None:
    labels, count = labels_of(server, IJ_TWO_CHANNEL, channel=channel)
    assert (count, labels.tolist()) == (alone["nuclei"][1], alone["nuclei"][0].tolist())
    r = post(server, IJ_TWO_CHANNEL, channel=channel)
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"]) == ("1", "DAPI")


def test_an_unknown_channel_is_a_422_with_the_choices(server: Server) -> None:
    r = post(server, IJ_TWO_CHANNEL, channel="Hoechst")
    assert r.status_code == 422 and r.json()["type"] == "/problems/invalid-options"
    assert "Hoechst" in r.json()["detail"] and r.json()["choices"]["channels"][1]["name"] == "DAPI"


def test_a_three_channel_ome_tiff_by_channel_name(server: Server, alone) -> None:
    data = tiff(
        np.stack([CYTO, NUCLEI, CYTO[::-1].copy()]), ome=True,
        metadata={"axes": "CYX", "Channel": {"Name": ["Actin", "Hoechst 33342", "Tubulin"]}},
    )
    body = assert_choose(post(server, data), {"channel"})
    assert [c["name"] for c in body["choices"]["channels"]] == ["Actin", "Hoechst 33342", "Tubulin"]
    labels, count = labels_of(server, data, channel="hoechst 33342")
    assert count == alone["nuclei"][1] and np.array_equal(labels, alone["nuclei"][0])


ZSTACK = np.stack([im.blobs(H, W, seed=30 + k, dtype=np.uint16) for k in range(10)])
IJ_ZSTACK = tiff(ZSTACK, imagej=True, metadata={"axes": "ZYX"})


def test_a_z_stack_without_z_is_a_422_with_the_axes_and_sizes(server: Server) -> None:
    body = assert_choose(post(server, IJ_ZSTACK), {"z"})
    assert body["choices"]["planes"] == {"Z": 10} and body["choices"]["axes"] == "ZYX"
    assert "project=max" in body["detail"] and "3-D" in body["detail"] and "--stitch-z" in body["detail"]


@pytest.mark.parametrize("z", [0, 6])
def test_z_segments_that_slice(server: Server, alone, z: int) -> None:
    labels, count = labels_of(server, IJ_ZSTACK, z=z)
    assert count == alone[f"z{z}"][1] and np.array_equal(labels, alone[f"z{z}"][0])
    assert post(server, IJ_ZSTACK, z=z).headers["X-Z"] == str(z)


def test_project_max_segments_the_maximum_projection(server: Server, alone) -> None:
    labels, count = labels_of(server, IJ_ZSTACK, project="max")
    assert count == alone["zmax"][1] and np.array_equal(labels, alone["zmax"][0])
    assert post(server, IJ_ZSTACK, project="max").headers["X-Projection"] == "max-z"


@pytest.mark.parametrize(
    "params", [{"z": 10}, {"z": 1, "project": "max"}, {"project": "min"}, {"t": 1, "z": 0}, {"z": -1}]
)
def test_impossible_plane_choices_are_422(server: Server, params: dict) -> None:
    r = post(server, IJ_ZSTACK, **params)
    assert r.status_code == 422 and r.json()["type"] == "/problems/invalid-options", r.text


def test_a_hyperstack_names_all_three_missing_choices(server: Server) -> None:
    stack = np.stack([np.stack([np.stack([CYTO, NUCLEI])] * 3)] * 2)  # T=2, Z=3, C=2
    data = tiff(stack, imagej=True, metadata={"axes": "TZCYX"})
    body = assert_choose(post(server, data), {"channel", "z", "t"})
    assert body["choices"]["planes"] == {"Z": 3, "T": 2}
    r = post(server, data, channel="1", z="2", t="1")
    assert r.status_code == 200 and (r.headers["X-Z"], r.headers["X-T"]) == ("2", "1")


def test_an_rgb_composite_needs_a_channel_and_blue_is_the_nuclei(server: Server, alone) -> None:
    nuclei8 = (NUCLEI >> 8).astype(np.uint8)
    cyto8 = (CYTO >> 8).astype(np.uint8)
    bgr = np.dstack([nuclei8, cyto8, cyto8 // 2])  # OpenCV order: blue first
    data = im.png(bgr)
    r = server.client.post("/segment", content=data, headers={"Content-Type": "image/png"})
    body = assert_choose(r, {"channel"})
    assert [c["name"] for c in body["choices"]["channels"]] == ["red", "green", "blue"]
    ok = server.client.post("/segment", params={"channel": "blue", "output": "labels"}, content=data,
                            headers={"Content-Type": "image/png"})
    assert ok.status_code == 200, ok.text
    expected = labels_of(server, im.png(nuclei8))
    assert int(ok.headers["X-Object-Count"]) == expected[1]
    assert np.array_equal(im.decode(ok.content), expected[0])


def test_grey_saved_as_rgb_needs_no_channel(server: Server) -> None:
    grey = (NUCLEI >> 8).astype(np.uint8)
    r = server.client.post("/segment", content=im.png(np.dstack([grey] * 3)),
                           headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert "X-Channel" not in r.headers


def test_one_stain_exported_in_blue_is_segmented_as_its_grey_with_a_note(server: Server) -> None:
    grey = (NUCLEI >> 8).astype(np.uint8)
    zero = np.zeros_like(grey)
    data = im.png(np.dstack([grey, zero, zero]))  # OpenCV order: blue first
    probe = server.client.post("/probe", content=data, headers={"Content-Type": "image/png"})
    assert probe.status_code == 200, probe.text
    assert probe.json()["signal_channel"] == 2 and probe.json()["required"] == []
    r = server.client.post("/segment", params={"output": "labels"}, content=data,
                           headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"]) == ("2", "blue")
    assert any("only the blue channel" in w for w in json.loads(r.headers["X-Warnings"]))
    expected = labels_of(server, im.png(grey))
    assert int(r.headers["X-Object-Count"]) == expected[1]
    assert np.array_equal(im.decode(r.content), expected[0])


def test_single_plane_files_answer_as_before_with_no_new_headers(server: Server) -> None:
    body = im.png(im.blobs(50, 60))
    r = server.client.post("/segment", content=body, headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    new = {"x-channel", "x-z", "x-t", "x-projection", "x-pixel-size-um", "x-warnings"}
    assert "x-object-count" in {k.lower() for k in r.headers}
    assert not new & {k.lower() for k in r.headers}


CALIBRATED = tiff(NUCLEI, imagej=True, resolution=(1 / UM, 1 / UM), metadata={"unit": "micron"})


def table(server: Server, data: bytes, **params) -> list[dict]:
    r = post(server, data, output="objects", **params)
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


@pytest.mark.parametrize(
    ("data", "params", "um"),
    [
        (CALIBRATED, {}, UM),
        (tiff(NUCLEI, resolution=(1e4 / UM, 1e4 / UM), resolutionunit="CENTIMETER"), {}, UM),
        (tiff(NUCLEI), {"pixel_size": 0.4}, 0.4),
        (CALIBRATED, {"pixel_size": 0.4}, 0.4),
    ],
    ids=["imagej", "tiff-centimetre", "request", "request-overrides-file"],
)
def test_micrometre_columns_follow_the_calibration_to_one_percent(
    server: Server, data: bytes, params: dict, um: float
) -> None:
    rows = table(server, data, **params)
    assert rows
    for row in rows:
        area_um2 = int(row["area"]) * um * um
        assert float(row["area_um2"]) == pytest.approx(area_um2, rel=0.01)
        assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x"]) * um, rel=0.01, abs=1e-3)
        assert float(row["centroid_y_um"]) == pytest.approx(float(row["centroid_y"]) * um, rel=0.01, abs=1e-3)
        assert float(row["equivalent_diameter_um"]) == pytest.approx(2 * np.sqrt(area_um2 / np.pi), rel=0.01)
    r = post(server, data, output="mask", **params)
    assert float(r.headers["X-Pixel-Size-Um"]) == pytest.approx(um)


def test_without_a_pixel_size_the_table_has_no_micrometre_columns(server: Server) -> None:
    rows = table(server, tiff(NUCLEI))
    assert rows and "area_um2" not in rows[0]


def test_objects_json_and_geojson_carry_the_calibration(server: Server) -> None:
    r = server.client.post("/segment", params={"output": "objects"}, content=CALIBRATED,
                           headers={"Content-Type": "image/tiff", "Accept": "application/json"})
    rows = r.json()
    assert rows and rows[0]["area_um2"] == pytest.approx(rows[0]["area"] * UM * UM, rel=0.01)
    geo = post(server, CALIBRATED, output="geojson").json()
    assert geo["properties"]["pixel_size_um"] == {"x": UM, "y": UM, "source": "imagej"}
    measurements = geo["features"][0]["properties"]["measurements"]
    assert measurements["Area µm^2"] == pytest.approx(measurements["Area px^2"] * UM * UM, rel=0.01)


def test_warnings_are_one_json_array_header(server: Server) -> None:
    r = post(server, CALIBRATED, pixel_size=0.5)
    assert r.status_code == 200
    warnings = json.loads(r.headers["X-Warnings"])
    assert isinstance(warnings, list) and any("0.65" in w for w in warnings)
    r.headers["X-Warnings"].encode("ascii")  # µ escaped: headers stay ASCII


def test_probe_lists_channels_planes_and_pixel_size(server: Server) -> None:
    r = server.client.post("/probe", files={"file": ("cells.tif", IJ_TWO_CHANNEL)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "ImageJ TIFF" and body["axes"] == "CYX"
    assert body["channels"] == [{"index": 0, "name": "Cytoplasm"}, {"index": 1, "name": "DAPI"}]
    assert body["pixel_size_um"]["x"] == pytest.approx(UM) and body["required"] == ["channel"]
    stack = server.client.post("/probe", content=IJ_ZSTACK, headers={"Content-Type": "image/tiff"}).json()
    assert stack["planes"] == {"Z": 10} and stack["required"] == ["z"]
    assert "z" not in body["pixel_size_um"]  # no z-step in a 2-D file's answer
    calibrated = tiff(ZSTACK, imagej=True, resolution=(1 / UM, 1 / UM),
                      metadata={"axes": "ZYX", "unit": "micron", "spacing": 2.0})
    z_step = server.client.post("/probe", content=calibrated, headers={"Content-Type": "image/tiff"}).json()
    assert z_step["pixel_size_um"] == {"x": UM, "y": UM, "source": "imagej", "z": 2.0}


def test_probe_refuses_what_segment_refuses(server: Server) -> None:
    assert server.client.post("/probe", content=b"not an image",
                              headers={"Content-Type": "image/tiff"}).status_code == 400
    assert server.client.post("/probe", content=im.png_bomb(), headers={"Content-Type": "image/png"}
                              ).status_code == 413


def test_batch_reports_the_plane_per_file_and_a_422_with_choices(server: Server, alone) -> None:
    files = [("files", ("two.tif", IJ_TWO_CHANNEL)), ("files", ("stack.tif", IJ_ZSTACK))]
    r = server.client.post("/segment/batch", params={"channel": "DAPI", "output": "labels"}, files=files)
    assert r.status_code == 200, r.text
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    first, second = manifest["files"]
    assert first["status"] == 200 and first["object_count"] == alone["nuclei"][1]
    assert first["image"]["channel"] == {"index": 1, "name": "DAPI"}
    assert first["image"]["pixel_size_um"]["x"] == pytest.approx(UM)
    # the z-stack has no channel called DAPI
    assert second["status"] == 422 and second["problem"]["choices"]["planes"] == {"Z": 10}


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0].astype(float), xy[:, 1].astype(float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rois_is_an_imagej_roi_set_with_one_roi_per_object(server: Server, tmp_path) -> None:
    roifile = pytest.importorskip("roifile")
    r = post(server, IJ_ZSTACK, output="rois", z=6)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    path = tmp_path / "rois.zip"
    path.write_bytes(r.content)
    rois = roifile.roiread(path)
    rows = table(server, IJ_ZSTACK, z=6)
    assert len(rois) == int(r.headers["X-Object-Count"]) == len(rows) > 0
    for roi, row in zip(rois, rows, strict=True):
        # each outline runs along its object's pixel edges: its area is the object's pixel count
        assert _shoelace(roi.coordinates()) == pytest.approx(float(row["area"]))
        assert roi.z_position == 7  # Fiji's 1-based slice of z=6
        assert roi.name == f"Nucleus {row['id']}"
    # No clock in the bytes: the same objects give the same archive whenever it is written.
    with zipfile.ZipFile(path) as archive:
        assert {m.date_time for m in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_an_ome_tiff_of_several_images_is_read_at_the_one_asked_for(server: Server, alone) -> None:
    """A multi-position acquisition saved as one OME-TIFF: the first image by default (X-Series 0
    and a warning naming series=1), the second with series=1 segmented as that image alone."""
    out = io.BytesIO()
    with tifffile.TiffWriter(out, ome=True) as writer:
        writer.write(CYTO, metadata={"axes": "YX", "Name": "Pos0"})
        writer.write(np.stack([CYTO, NUCLEI]), metadata={"axes": "CYX", "Name": "Pos1",
                                                          "Channel": {"Name": ["Actin", "DAPI"]}})
    data = out.getvalue()
    first = post(server, data, output="labels")
    assert first.status_code == 200, first.text
    assert first.headers["X-Series"] == "0" and "series=1" in first.headers["X-Warnings"]
    second = post(server, data, output="labels", series=1, channel="DAPI")
    labels, count = labels_of(server, data, series=1, channel="DAPI")
    assert (count, labels.tolist()) == (alone["nuclei"][1], alone["nuclei"][0].tolist())
    assert second.headers["X-Series"] == "1" and "X-Warnings" not in second.headers
    body = assert_choose(post(server, data, series=1), {"channel"})
    assert [(s["index"], s["name"]) for s in body["choices"]["series"]] == [(0, "Pos0"), (1, "Pos1")]
    assert body["choices"]["series"][1]["about"].endswith("· 2 ch")
    r = post(server, data, series=2)
    assert r.status_code == 422 and r.json()["type"] == "/problems/invalid-options", r.text
    probe = server.client.post("/probe", params={"series": 1}, content=data,
                               headers={"Content-Type": "image/tiff"}).json()
    assert {k: probe["series"][k] for k in ("index", "count", "names")} == {
        "index": 1, "count": 2, "names": ["Pos0", "Pos1"]}
    assert len(probe["series"]["about"]) == 2
    assert probe["required"] == ["channel"] and [c["name"] for c in probe["channels"]] == ["Actin", "DAPI"]


def test_an_ome_companion_file_uploaded_alone_is_a_415_saying_so(server: Server, tmp_path) -> None:
    """A multi-file OME-TIFF set's ``.companion.ome`` is XML: it was a 400 "not a recognised image"."""
    from tests.ome_sets import write_channel_set

    planes = [np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8)]
    write_channel_set(tmp_path, planes, ["DAPI", "GFP"], companion="set.companion.ome")
    companion = (tmp_path / "set.companion.ome").read_bytes()
    r = server.client.post("/segment", files={"file": ("set.companion.ome", companion)})
    assert r.status_code == 415 and "holds no pixels" in r.json()["detail"], r.text


@pytest.mark.parametrize("name, head, what", [
    ("Index.idx.xml", '\ufeff<?xml version="1.0" encoding="utf-8"?>\r\n<EvaluationInputData xmlns:xsd='
     '"http://www.w3.org/2001/XMLSchema" Version="1" xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5">'
     "<User>x</User><Plates/></EvaluationInputData>", "Harmony plate index"),
    ("MeasurementData.mlf", '<?xml version="1.0" encoding="utf-8"?>\r\n<bts:MeasurementData '
     'bts:Version="1.0" xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0"></bts:MeasurementData>',
     "CellVoyager"),
    ("9987.HTD", '"HTSInfoFile", Version 1.0\r\n"Description", "DAPI: 1z"\r\n"PlateType", 2\r\n',
     "MetaXpress"),
])
def test_a_screens_plate_index_uploaded_alone_is_a_415_saying_so(server: Server, name: str, head: str,
                                                                  what: str) -> None:
    """Harmony's Index.idx.xml, a CellVoyager's .mlf/.mrf and MetaXpress's .HTD sit beside a plate's
    images (heads as the real files have them): they were a 400 "not a recognised image"."""
    r = server.client.post("/segment", files={"file": (name, head.encode())})
    detail = r.json()["detail"]
    assert r.status_code == 415 and "holds no pixels" in detail and what in detail, r.text
