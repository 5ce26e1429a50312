"""A DeltaVision file through a real server, as a softWoRx user sends it (``tests/dv_files.py``):
multipart, raw body, stored once. The bar the other vendor formats meet: the wavelength and slice
asked for are the ones segmented (labels equal those of the plane sent alone as a PNG), an open
choice is a 422 naming the channels by wavelength, sizes come in µm from the header, and a broken
file is a 4xx that says why."""

from __future__ import annotations

import csv
import io

import numpy as np

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.dv_files import dv_bytes
from tests.server import Server

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=61, dtype=np.uint16)
MARKER = im.blobs(H, W, seed=62, dtype=np.uint16)
#: One time point, two waves, two z-slices (the second slice's nuclei shifted): T, C, Z, Y, X.
STACK = np.stack([np.stack([np.stack([NUCLEI, np.roll(NUCLEI, 9, axis=1)]), np.stack([MARKER, MARKER])])])
DV = dv_bytes(STACK, pixel_um=0.2, z_um=0.5, wavelengths=(455, 525))


def test_without_a_choice_the_422_lists_the_wavelengths_and_slices(server: Server) -> None:
    r = segment_file(server, "cells.dv", DV)
    assert r.status_code == 422, r.text
    assert r.json()["choices"]["channels"] == [{"index": 0, "name": "455 nm"}, {"index": 1, "name": "525 nm"}]
    assert r.json()["choices"]["planes"] == {"Z": 2}


def test_the_chosen_wavelength_and_slice_are_segmented_and_measured_in_micrometres(server: Server) -> None:
    expected = alone(server, STACK[0, 0, 1])
    r = segment_file(server, "cells.dv", DV, channel="455 nm", z=1, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist()) and count > 0
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.2", "dv")
    objects = segment_file(server, "cells.dv", DV, channel="455 nm", z=1, output="objects", measure="525 nm")
    rows = list(csv.DictReader(io.StringIO(objects.text)))
    assert len(rows) == count
    assert all(abs(float(row["area_um2"]) - int(row["area"]) * 0.04) < 0.01 * float(row["area_um2"]) + 1e-9
               for row in rows)


def test_the_raw_body_a_stored_upload_and_probe_read_it_by_its_signature(server: Server) -> None:
    raw = server.client.post("/segment", params={"channel": "1", "z": "0", "output": "labels"}, content=DV,
                             headers={"Content-Type": "application/octet-stream"})
    expected = alone(server, STACK[0, 1, 0])
    assert labels_of(raw)[0].tolist() == expected[0].tolist()
    stored = server.client.post("/uploads", content=DV, headers={"Content-Type": "application/octet-stream"})
    assert stored.status_code == 201, stored.text
    upload_id = stored.json()["id"]
    again = server.client.post("/segment", params={"upload": upload_id, "channel": "525 nm", "z": "0",
                                                   "output": "labels"})
    assert labels_of(again)[0].tolist() == expected[0].tolist()
    probe = server.client.post("/probe", files={"file": ("cells.dv", DV)})
    assert probe.status_code == 200 and probe.json()["format"] == "DeltaVision"


def test_a_cut_short_file_is_a_400_that_says_so(server: Server) -> None:
    r = segment_file(server, "cells.dv", DV[:-100], channel="0", z=0)
    assert r.status_code == 400 and "cut short" in r.json()["detail"]
