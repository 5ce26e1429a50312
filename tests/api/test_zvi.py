"""A Zeiss AxioVision ZVI through a real server, as an AxioVision user sends it
(``tests/zvi_files.py``): the channel and slice asked for are the ones segmented (labels equal those
of the plane sent alone as a PNG), channels are offered by AxioVision's names, sizes come in µm,
and a broken file is a 4xx that says why."""

from __future__ import annotations

import numpy as np

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.server import Server
from tests.zvi_files import Plane, zvi_bytes

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=71, dtype=np.uint16)
MARKER = im.blobs(H, W, seed=72, dtype=np.uint16)
SHIFTED = np.roll(NUCLEI, 9, axis=1)
ZVI = zvi_bytes([Plane(MARKER, c=1, z=0, name="eGFP"), Plane(NUCLEI, c=0, z=0, name="DAPI"),
                 Plane(MARKER, c=1, z=1, name="eGFP"), Plane(SHIFTED, c=0, z=1, name="DAPI")],
                pixel_um=0.3, z_um=1.0)


def test_the_422_lists_axiovisions_channel_names_and_the_slices(server: Server) -> None:
    r = segment_file(server, "cells.zvi", ZVI)
    assert r.status_code == 422, r.text
    assert r.json()["choices"]["channels"] == [{"index": 0, "name": "DAPI"}, {"index": 1, "name": "eGFP"}]
    assert r.json()["choices"]["planes"] == {"Z": 2}


def test_the_chosen_channel_and_slice_are_segmented_in_micrometres(server: Server) -> None:
    expected = alone(server, SHIFTED)
    r = segment_file(server, "cells.zvi", ZVI, channel="dapi", z=1, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist()) and count > 0
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.3", "zvi")
    probe = server.client.post("/probe", files={"file": ("cells.zvi", ZVI)})
    assert probe.status_code == 200 and probe.json()["format"] == "ZVI"


def test_a_mosaic_is_a_415_that_says_what_to_do(server: Server) -> None:
    mosaic = zvi_bytes([Plane(NUCLEI, extra_tags={2822: 0}), Plane(NUCLEI, extra_tags={2822: 1})])
    r = segment_file(server, "tiles.zvi", mosaic)
    assert r.status_code == 415 and "export the stitched image" in r.json()["detail"]
