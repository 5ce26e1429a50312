"""An Imaris file through a real server, as an Imaris or Dragonfly user sends it
(``tests/ims_files.py``): multipart, raw body, stored once. The bar the other vendor formats meet:
the channel, slice and time point asked for are the ones segmented (labels equal those of the plane
sent alone as a PNG), an open choice is a 422 naming the channels as Imaris does, sizes come in µm
from the extents, and a broken or foreign HDF5 file is a 4xx that says why."""

from __future__ import annotations

import csv
import io

import numpy as np

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.ims_files import ims_bytes
from tests.server import Server

H, W = 96, 120
NUCLEI = im.blobs(H, W, seed=81, dtype=np.uint16)
MARKER = im.blobs(H, W, seed=82, dtype=np.uint16)
#: Two time points (the second's nuclei shifted), two channels, two z-slices: T, C, Z, Y, X.
SHIFTED = np.roll(NUCLEI, 9, axis=1)
STACK = np.stack([np.stack([np.stack([NUCLEI, NUCLEI]), np.stack([MARKER, MARKER])]),
                  np.stack([np.stack([NUCLEI, SHIFTED]), np.stack([MARKER, MARKER])])])
IMS = ims_bytes(STACK, voxel_um=(0.2, 0.2, 0.5), names=["DAPI", "Ki67"], chunks=(2, 64, 64))


def test_without_a_choice_the_422_lists_imaris_channel_names_and_planes(server: Server) -> None:
    r = segment_file(server, "cells.ims", IMS)
    assert r.status_code == 422, r.text
    assert r.json()["choices"]["channels"] == [{"index": 0, "name": "DAPI"}, {"index": 1, "name": "Ki67"}]
    assert r.json()["choices"]["planes"] == {"Z": 2, "T": 2}


def test_the_chosen_channel_slice_and_time_are_segmented_and_measured_in_micrometres(server: Server) -> None:
    expected = alone(server, SHIFTED)
    r = segment_file(server, "cells.ims", IMS, channel="dapi", z=1, t=1, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist()) and count > 0
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.2", "ims")
    objects = segment_file(server, "cells.ims", IMS, channel="DAPI", z=1, t=1, output="objects",
                           measure="Ki67")
    rows = list(csv.DictReader(io.StringIO(objects.text)))
    assert len(rows) == count
    assert all(abs(float(row["area_um2"]) - int(row["area"]) * 0.04) < 0.01 * float(row["area_um2"]) + 1e-9
               for row in rows)


def test_the_raw_body_a_stored_upload_and_probe_read_it_by_its_signature(server: Server) -> None:
    raw = server.client.post("/segment", params={"channel": "1", "z": "0", "t": "0", "output": "labels"},
                             content=IMS, headers={"Content-Type": "application/octet-stream"})
    expected = alone(server, MARKER)
    assert labels_of(raw)[0].tolist() == expected[0].tolist()
    stored = server.client.post("/uploads", content=IMS, headers={"Content-Type": "application/octet-stream"})
    assert stored.status_code == 201, stored.text
    again = server.client.post("/segment", params={"upload": stored.json()["id"], "channel": "Ki67", "z": "0",
                                                   "t": "0", "output": "labels"})
    assert labels_of(again)[0].tolist() == expected[0].tolist()
    probe = server.client.post("/probe", files={"file": ("cells.ims", IMS)})
    assert probe.status_code == 200, probe.text
    assert (probe.json()["format"], probe.json()["pixel_size_um"]) == (
        "Imaris", {"x": 0.2, "y": 0.2, "source": "ims", "z": 0.5})


def test_a_cut_short_file_and_a_foreign_hdf5_file_are_4xx_that_say_why(server: Server) -> None:
    cut = segment_file(server, "cells.ims", IMS[: len(IMS) // 3], channel="1", z=1, t=1)  # written last
    assert cut.status_code == 400 and "Imaris" in cut.json()["detail"], cut.text
    import h5py

    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        f["exported_data"] = np.zeros((8, 8), np.uint8)  # an ilastik export
    foreign = segment_file(server, "pred.h5", out.getvalue())
    assert foreign.status_code == 415 and "not an Imaris dataset" in foreign.json()["detail"]
