"""Microscope vendors' TIFFs through a real server, as their users send them: a Zeiss LSM z-stack
and a MetaXpress site (``tests/vendor_tiffs.py``). The bar is the one OME-TIFFs meet: the channel
and slice asked for are the ones segmented (labels equal those of the same plane sent alone as a
PNG), channels are offered by the names the microscope gave them, and sizes come in µm from the
file, with ``X-Pixel-Size-Source`` saying whose metadata gave them."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.server import Server
from tests.vendor_tiffs import lsm_bytes, metaseries_bytes

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=51)
MARKER = im.blobs(H, W, seed=52)
#: Two z-slices of three tracks (blank, marker, nuclei): the second slice's nuclei shifted.
LSM = np.stack([np.stack([np.zeros_like(NUCLEI), MARKER, NUCLEI]),
                np.stack([np.zeros_like(NUCLEI), MARKER, np.roll(NUCLEI, 9, axis=1)])])
NAMES = ["Ch1-T1", "ChS1-T2", "Ch2-T3"]
LSM_FILE = lsm_bytes(LSM, "ZCYX", voxel_um=(0.2, 0.2, 0.5), names=NAMES)


def test_an_lsm_without_a_choice_lists_zens_channel_names(server: Server) -> None:
    r = segment_file(server, "cells.lsm", LSM_FILE)
    assert r.status_code == 422, r.text
    assert r.json()["choices"]["channels"] == [{"index": i, "name": n} for i, n in enumerate(NAMES)]
    assert r.json()["choices"]["planes"] == {"Z": 2}


@pytest.mark.parametrize("z", [0, 1])
def test_an_lsm_segments_the_chosen_track_and_slice_measured_in_micrometres(server: Server, z: int) -> None:
    expected = alone(server, LSM[z, 2])
    r = segment_file(server, "cells.lsm", LSM_FILE, channel="Ch2-T3", z=z, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist()) and count > 0
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.2", "lsm")
    objects = segment_file(server, "cells.lsm", LSM_FILE, channel="Ch2-T3", z=z, output="objects",
                           measure="ChS1-T2")
    rows = list(csv.DictReader(io.StringIO(objects.text)))
    assert len(rows) == count
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.04, rel=0.01)
        assert float(row["mean_intensity_ChS1_T2"]) == pytest.approx(
            MARKER[labels == int(row["id"])].mean(), abs=1e-3)


def test_a_metaxpress_site_is_segmented_with_its_calibration_and_dye(server: Server) -> None:
    plane = (im.blobs(H, W, seed=53).astype(np.uint16) * 16)
    r = segment_file(server, "A01_s1_w1.TIF", metaseries_bytes(plane, 0.65, "DAPI"), output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (alone(server, plane)[1], alone(server, plane)[0].tolist())
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.65", "metaseries")
    probe = server.client.post("/probe", files={"file": ("A01_s1_w1.TIF", metaseries_bytes(plane, 0.65))})
    assert probe.status_code == 200, probe.text
    assert probe.json()["format"] == "MetaMorph TIFF" and probe.json()["channels"][0]["name"] == "DAPI"
