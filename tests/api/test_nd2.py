"""A Nikon ND2 through a real server, as a NIS-Elements user sends it: the file as saved
(``tests/nd2_files.py``), multipart with its name, as the raw body, or stored once.

The bar is the one TIFFs, CZIs and LIFs meet: the position, channel and plane asked for are the
ones segmented (labels equal those of the same plane sent alone as a PNG), an open choice is a 422
naming the positions and channels, sizes come in µm from the file, and a broken or hostile file
is a 4xx that says why.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.nd2_files import Nd2, compressed_records, write_nd2
from tests.server import Server

H, W = 96, 120
UM = 0.5
NUCLEI = im.blobs(H, W, seed=31, dtype=np.uint16)
MARKER = im.blobs(H, W, seed=32, dtype=np.uint16)
OTHER_FIELD = im.blobs(H, W, seed=33, dtype=np.uint16)
#: Two XY positions × two time points, two channels (YXC per frame): the second time point's
#: nuclei shifted; the second position another field.
PIXELS = np.stack([
    np.stack([np.dstack([MARKER, NUCLEI]), np.dstack([OTHER_FIELD, OTHER_FIELD])]),
    np.stack([np.dstack([MARKER, np.roll(NUCLEI, 9, axis=1)]), np.dstack([OTHER_FIELD, OTHER_FIELD])]),
])
PLATE = write_nd2(Nd2(PIXELS, "TPYXC", ("FITC", "DAPI"), UM, position_names=("A1", "A2"), bits=12))


def segment(server: Server, data: bytes, **params):
    return segment_file(server, "plate.nd2", data, **params)


def test_without_a_choice_the_422_lists_the_channels_time_points_and_positions(server: Server) -> None:
    r = segment(server, PLATE)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "/problems/choose-plane"
    assert {e["loc"][1] for e in body["errors"]} == {"channel", "t"}
    assert body["choices"]["channels"] == [{"index": 0, "name": "FITC"}, {"index": 1, "name": "DAPI"}]
    assert body["choices"]["planes"] == {"T": 2}
    assert body["choices"]["series"] == [{"index": 0, "name": "A1", "about": f"{W}×{H} · 2 ch · 2 t"},
                                         {"index": 1, "name": "A2", "about": f"{W}×{H} · 2 ch · 2 t"}]


@pytest.mark.parametrize("t", [0, 1])
def test_the_chosen_channel_and_time_point_are_the_ones_segmented(server: Server, t: int) -> None:
    expected = alone(server, PIXELS[t, 0, :, :, 1])
    assert expected[1] > 0
    r = segment(server, PLATE, channel="dapi", t=t, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"], r.headers["X-T"]) == ("1", "DAPI", str(t))
    assert r.headers["X-Series"] == "0" and "series=1" in r.headers["X-Warnings"]


def test_the_second_position_is_chosen_with_series_and_measured_in_micrometres(server: Server) -> None:
    expected = alone(server, OTHER_FIELD)
    r = segment(server, PLATE, series=1, channel="DAPI", t=0, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert r.headers["X-Series"] == "1" and "X-Warnings" not in r.headers
    objects = segment(server, PLATE, series=1, channel="DAPI", t=0, output="objects")
    assert objects.status_code == 200, objects.text
    assert (objects.headers["X-Pixel-Size-Um"], objects.headers["X-Pixel-Size-Source"]) == ("0.5", "nd2")
    rows = list(csv.DictReader(io.StringIO(objects.text)))
    assert len(rows) == count
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * UM * UM, rel=0.01)


def test_the_raw_body_and_a_stored_upload_are_read_by_the_signature(server: Server) -> None:
    params = {"channel": "DAPI", "t": 1, "output": "labels"}
    by_name = labels_of(segment(server, PLATE, **params))
    raw = server.client.post("/segment", params=params, content=PLATE,
                             headers={"Content-Type": "application/octet-stream"})
    labels, count = labels_of(raw)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())
    stored = server.client.post("/uploads", files={"file": ("plate.nd2", PLATE)})
    assert stored.status_code == 201, stored.text
    named = server.client.post("/segment", params={**params, "upload": stored.json()["id"]})
    labels, count = labels_of(named)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())
    probe = server.client.post("/probe", files={"file": ("plate.nd2", PLATE)})
    assert probe.status_code == 200, probe.text
    body = probe.json()
    assert (body["format"], body["axes"], body["planes"]) == ("ND2", "TCYX", {"T": 2})
    assert body["pixel_size_um"] == {"x": UM, "y": UM, "source": "nd2"}
    assert body["series"]["count"] == 2 and body["series"]["names"] == ["A1", "A2"]


def test_measure_reads_the_other_channel_at_the_chosen_time_point(server: Server) -> None:
    labels, _ = labels_of(segment(server, PLATE, channel="DAPI", t=1, output="labels"))
    r = segment(server, PLATE, channel="DAPI", t=1, output="objects", measure="FITC")
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == labels.max() > 0
    for row in rows:
        inside = labels == int(row["id"])
        assert float(row["mean_intensity_FITC"]) == pytest.approx(MARKER[inside].mean(), abs=1e-3)


def test_broken_and_hostile_nd2s_are_4xx_that_say_why(server: Server) -> None:
    r = segment(server, PLATE[: len(PLATE) - 100], channel="DAPI", t=0)
    assert r.status_code == 400 and "truncated ND2" in r.json()["detail"], r.text
    # Stored by its signature (a file is stored before it is read); read, it says why.
    stored = server.client.post("/uploads", files={"file": ("plate.nd2", PLATE[: len(PLATE) - 100])})
    assert stored.status_code == 201, stored.text
    named = server.client.post("/segment", params={"channel": "DAPI", "t": 0, "upload": stored.json()["id"]})
    assert named.status_code == 400 and "truncated ND2" in named.json()["detail"], named.text
    wide = write_nd2(Nd2(np.zeros((1500, 1500), np.uint8)))
    r = segment(server, wide)
    assert r.status_code == 413 and r.json()["type"] == "/problems/image-too-large", r.text
    garbled = bytearray(PLATE)
    at = garbled.index(b"ImageAttributesLV!") + len(b"ImageAttributesLV!")
    garbled[at : at + 40] = bytes(40)
    r = segment(server, bytes(garbled), channel="DAPI", t=0)
    assert r.status_code == 400 and "unreadable ND2" in r.json()["detail"], r.text
    bomb = compressed_records(compressed_records(bytes(64 * 1024 * 1024)))  # metadata inflating to 64 MiB
    r = segment(server, write_nd2(Nd2(np.zeros((64, 64), np.uint16), text_info=bomb)))
    assert r.status_code == 413 and r.json()["type"] == "/problems/image-too-complex", r.text
    assert "UNET_MAX_METADATA_BYTES" in r.json()["detail"]
