"""An Olympus OIB through a real server, as a FluoView user sends it: the file as saved
(``tests/oib_files.py``), multipart with its name, as the raw body, or stored once.

The bar is the one TIFFs, CZIs, LIFs and ND2s meet: the channel and plane asked for are the ones
segmented (labels equal those of the same plane sent alone as a PNG), an open choice is a 422
naming the channels by their dyes, sizes come in µm from the file, and a broken or hostile file is
a 4xx that says why.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.compound_files import write_compound
from tests.oib_files import Oib, settings_text, write_oib
from tests.server import Server

H, W = 96, 120
UM = 0.31
NUCLEI = im.blobs(H, W, seed=41, dtype=np.uint16)
MARKER = im.blobs(H, W, seed=42, dtype=np.uint16)
#: Two z-slices, two channels: the second slice's nuclei shifted.
PIXELS = np.stack([np.stack([MARKER, NUCLEI]), np.stack([MARKER, np.roll(NUCLEI, 11, axis=1)])])
STACK = write_oib(Oib(PIXELS, "ZCYX", channel_names=("Alexa Fluor 488", "DAPI"), pixel_um=UM, z_step_nm=800))


def segment(server: Server, data: bytes, **params):
    return segment_file(server, "cells.oib", data, **params)


def test_without_a_choice_the_422_lists_the_dyes_and_slices(server: Server) -> None:
    r = segment(server, STACK)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "/problems/choose-plane"
    assert {e["loc"][1] for e in body["errors"]} == {"channel", "z"}
    assert body["choices"]["channels"] == [{"index": 0, "name": "Alexa Fluor 488"},
                                           {"index": 1, "name": "DAPI"}]
    assert body["choices"]["planes"] == {"Z": 2}


@pytest.mark.parametrize("z", [0, 1])
def test_the_chosen_channel_and_slice_are_the_ones_segmented(server: Server, z: int) -> None:
    expected = alone(server, PIXELS[z, 1])
    assert expected[1] > 0
    r = segment(server, STACK, channel="dapi", z=z, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"], r.headers["X-Z"]) == ("1", "DAPI", str(z))
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == (str(UM), "oib")


def test_objects_are_measured_in_micrometres_and_in_the_other_channel(server: Server) -> None:
    labels, count = labels_of(segment(server, STACK, channel="DAPI", z=0, output="labels"))
    r = segment(server, STACK, channel="DAPI", z=0, output="objects", measure="Alexa Fluor 488")
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == count > 0
    for row in rows:
        inside = labels == int(row["id"])
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * UM * UM, rel=0.01)
        assert float(row["mean_intensity_Alexa_Fluor_488"]) == pytest.approx(MARKER[inside].mean(), abs=1e-3)


def test_the_raw_body_a_stored_upload_and_probe_read_it_by_its_signature(server: Server) -> None:
    params = {"channel": "DAPI", "z": 1, "output": "labels"}
    by_name = labels_of(segment(server, STACK, **params))
    raw = server.client.post("/segment", params=params, content=STACK,
                             headers={"Content-Type": "application/octet-stream"})
    labels, count = labels_of(raw)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())
    stored = server.client.post("/uploads", files={"file": ("cells.oib", STACK)})
    assert stored.status_code == 201, stored.text
    named = server.client.post("/segment", params={**params, "upload": stored.json()["id"]})
    labels, count = labels_of(named)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())
    probe = server.client.post("/probe", files={"file": ("cells.oib", STACK)})
    assert probe.status_code == 200, probe.text
    body = probe.json()
    assert (body["format"], body["axes"], body["planes"]) == ("OIB", "ZCYX", {"Z": 2})
    assert body["pixel_size_um"] == {"x": UM, "y": UM, "source": "oib", "z": 0.8}


def test_broken_and_hostile_oibs_are_4xx_that_say_why(server: Server) -> None:
    r = segment(server, STACK[: len(STACK) // 2], channel="DAPI", z=0)
    assert r.status_code == 400 and "OIB" in r.json()["detail"], r.text
    r = segment(server, write_oib(Oib(np.zeros((1500, 1500), np.uint8))))
    assert r.status_code == 413 and r.json()["type"] == "/problems/image-too-large", r.text
    office = write_compound({"WordDocument": bytes(5000)})
    r = segment(server, office)
    assert r.status_code == 415 and "neither an Olympus OIB nor a Zeiss ZVI" in r.json()["detail"], r.text
    r = segment(server, write_oib(Oib(np.zeros((8, 8), np.uint8), "YX", line_scan=True)))
    assert r.status_code == 415 and "line scan" in r.json()["detail"], r.text
    chained = write_oib(Oib(np.zeros((150, 8, 8), np.uint8), "ZYX", sibling_chain=True))
    r = segment(server, chained, z=0)
    assert r.status_code == 400 and "nests deeper" in r.json()["detail"], r.text
    oif = settings_text({"Acquisition Parameters Common": {"Acquisition Device": "FV1000"}})
    r = server.client.post("/segment", files={"file": ("cells.oif", oif)})
    assert r.status_code == 415 and "save the acquisition as OIB" in r.json()["detail"], r.text
    stopped = write_oib(Oib(PIXELS, "ZCYX", missing=((1, 1, 0),)))
    r = segment(server, stopped, channel="1", z=1)
    assert r.status_code == 422 and "no plane at channel 1, z 1" in r.json()["detail"], r.text
    ok = segment(server, stopped, channel="1", z=0, output="labels")
    assert ok.status_code == 200 and "stopped early" in ok.headers["X-Warnings"], ok.text
