"""A Leica LIF project through a real server, as a LAS X user sends it: the file as saved
(``tests/lif_files.py``), multipart with its name or as the raw body.

The bar is the one TIFFs and CZIs meet: the image, channel and plane asked for are the ones
segmented (labels equal those of the same plane sent alone as a PNG), an open choice is a 422
naming the project's images and channels, sizes come in µm from the file, and a broken or
hostile file is a 4xx that says why.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.lif_files import Image, lif_bytes
from tests.server import Server

H, W = 96, 120
UM = 0.5
CYTO = im.blobs(H, W, seed=21, dtype=np.uint16)
NUCLEI = im.blobs(H, W, seed=22, dtype=np.uint16)
FIELD = im.blobs(H, W, seed=23, dtype=np.uint16)
#: A project: a two-channel movie of two time points (the second frame's nuclei shifted), then a
#: single field in a folder, as LAS X keeps a session's acquisitions.
MOVIE = np.stack([np.stack([CYTO, NUCLEI]), np.stack([CYTO, np.roll(NUCLEI, 9, axis=1)])])
PROJECT = lif_bytes([
    Image("Series001", MOVIE, "TCYX", luts=("Green", "Blue"), pixel_um=UM, bits=12),
    Image("Series002", FIELD, "YX", luts=("Gray",), pixel_um=UM, folder="Position 2"),
])


def segment(server: Server, data: bytes, **params):
    return segment_file(server, "session.lif", data, **params)


def test_without_a_choice_the_422_lists_the_channels_time_points_and_images(server: Server) -> None:
    r = segment(server, PROJECT)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "/problems/choose-plane"
    assert {e["loc"][1] for e in body["errors"]} == {"channel", "t"}
    assert body["choices"]["channels"] == [{"index": 0, "name": "Green"}, {"index": 1, "name": "Blue"}]
    assert body["choices"]["planes"] == {"T": 2}
    assert body["choices"]["series"] == [{"index": 0, "name": "Series001", "about": f"{W}×{H} · 2 ch · 2 t"},
                                         {"index": 1, "name": "Position 2/Series002", "about": f"{W}×{H}"}]


@pytest.mark.parametrize("t", [0, 1])
def test_the_chosen_channel_and_frame_are_the_ones_segmented(server: Server, t: int) -> None:
    expected = alone(server, MOVIE[t, 1])
    assert expected[1] > 0
    r = segment(server, PROJECT, channel="blue", t=t, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"], r.headers["X-T"]) == ("1", "Blue", str(t))
    assert r.headers["X-Series"] == "0" and "series=1" in r.headers["X-Warnings"]


def test_the_second_image_is_chosen_with_series_and_measured_in_micrometres(server: Server) -> None:
    expected = alone(server, FIELD)
    r = segment(server, PROJECT, series=1, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert r.headers["X-Series"] == "1" and "X-Warnings" not in r.headers
    objects = segment(server, PROJECT, series=1, output="objects")
    assert objects.status_code == 200, objects.text
    assert (objects.headers["X-Pixel-Size-Um"], objects.headers["X-Pixel-Size-Source"]) == ("0.5", "lif")
    rows = list(csv.DictReader(io.StringIO(objects.text)))
    assert len(rows) == count
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * UM * UM, rel=0.01)


def test_the_raw_body_as_octet_stream_is_read_by_its_signature(server: Server) -> None:
    params = {"channel": "Blue", "t": 1, "output": "labels"}
    r = server.client.post("/segment", params=params, content=PROJECT,
                           headers={"Content-Type": "application/octet-stream"})
    by_name = labels_of(segment(server, PROJECT, **params))
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())
    probe = server.client.post("/probe", files={"file": ("session.lif", PROJECT)})
    assert probe.status_code == 200, probe.text
    body = probe.json()
    assert (body["format"], body["axes"], body["planes"]) == ("LIF", "TCYX", {"T": 2})
    assert body["pixel_size_um"] == {"x": UM, "y": UM, "source": "lif"}
    assert body["series"]["count"] == 2


def test_measure_reads_the_other_channel_at_the_chosen_frame(server: Server) -> None:
    labels, _ = labels_of(segment(server, PROJECT, channel="Blue", t=1, output="labels"))
    r = segment(server, PROJECT, channel="Blue", t=1, output="objects", measure="Green")
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == labels.max() > 0
    for row in rows:
        inside = labels == int(row["id"])
        assert float(row["mean_intensity_Green"]) == pytest.approx(CYTO[inside].mean(), abs=1e-3)


def test_broken_and_hostile_lifs_are_4xx_that_say_why(server: Server) -> None:
    r = segment(server, PROJECT[: len(PROJECT) - 100], channel="Blue", t=0)
    assert r.status_code == 400 and "truncated LIF" in r.json()["detail"], r.text
    claims = bytearray(PROJECT)
    claims[9:13] = (2**31 - 1).to_bytes(4, "little")  # an XML header of 4 GB
    r = segment(server, bytes(claims), channel="Blue", t=0)
    assert r.status_code == 413 and "UNET_MAX_METADATA_BYTES" in r.json()["detail"], r.text
    tiles = lif_bytes([Image("TileScan 1", np.zeros((4, 16, 16), np.uint8), "MYX")])
    r = segment(server, tiles)
    assert r.status_code == 415 and "Mosaic Merge" in r.json()["detail"], r.text
    wide = lif_bytes([Image("big", np.zeros((1500, 1500), np.uint8))])
    r = segment(server, wide)
    assert r.status_code == 413 and r.json()["type"] == "/problems/image-too-large", r.text


def test_a_project_opening_on_a_refused_image_lists_its_images_in_the_415(server: Server) -> None:
    """A λ-scan first: /probe and /segment without series= answer 415 with the reason and the
    project's images in 'choices.series' (what the web page offers), and series=1 reads."""
    field = im.blobs(H, W, seed=51, dtype=np.uint16)
    project = lif_bytes([Image("sweep", np.zeros((5, H, W), np.uint8), "λYX"), Image("field", field)])
    for route in ("/probe", "/segment"):
        r = server.client.post(route, files={"file": ("session.lif", project)})
        assert r.status_code == 415, r.text
        body = r.json()
        assert body["type"] == "/problems/unsupported-image-type" and "λ-scan" in body["detail"]
        assert body["choices"]["series"] == [{"index": 0, "name": "sweep", "about": f"{W}×{H}"},
                                             {"index": 1, "name": "field", "about": f"{W}×{H}"}]
    expected = alone(server, field)
    labels, count = labels_of(segment(server, project, series=1, output="labels"))
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    plain = server.client.post("/segment", files={"file": ("x.lif", lif_bytes([Image("sweep", np.zeros(
        (5, H, W), np.uint8), "λYX")]))})
    assert plain.status_code == 415 and "choices" not in plain.json()  # nothing else to offer
