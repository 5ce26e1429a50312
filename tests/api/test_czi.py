"""A Zeiss CZI through a real server, as a ZEN user sends it: the file as saved (libCZI writes it,
``tests/czi_files.py``), multipart with its name or as the raw body.

The bar is the one TIFFs meet (tests/api/test_microscopy.py): the channel and plane asked for are
the ones segmented (labels equal those of the same plane sent alone as a PNG), an open choice is a
422 naming the file's channels, and sizes come in µm from ZEN's calibration.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest

from tests.api import _images as im
from tests.api._vendor import alone, labels_of, segment_file
from tests.czi_files import ZSTD1, Tile, czi_bytes, libczi_plane
from tests.server import Server

H, W = 96, 120
UM = 0.65
CYTO = im.blobs(H, W, seed=11, dtype=np.uint16)
NUCLEI = im.blobs(H, W, seed=12, dtype=np.uint16)
#: Two named channels over two time points (the second frame's nuclei shifted), zstd1 as ZEN saves.
MOVIE = czi_bytes(
    [Tile(CYTO, c=0, t=0), Tile(NUCLEI, c=1, t=0),
     Tile(CYTO, c=0, t=1), Tile(np.roll(NUCLEI, 9, axis=1), c=1, t=1)],
    {0: "Cytoplasm", 1: "DAPI"}, UM * 1e-6, ZSTD1,
)


def segment(server: Server, data: bytes, **params):
    return segment_file(server, "cells.czi", data, **params)


def test_without_a_choice_the_422_lists_the_channels_and_time_points(server: Server) -> None:
    r = segment(server, MOVIE)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "/problems/choose-plane"
    assert {e["loc"][1] for e in body["errors"]} == {"channel", "t"}
    assert body["choices"]["channels"] == [{"index": 0, "name": "Cytoplasm"}, {"index": 1, "name": "DAPI"}]
    assert body["choices"]["planes"] == {"T": 2}


@pytest.mark.parametrize("t", [0, 1])
def test_the_chosen_channel_and_frame_are_the_ones_segmented(server: Server, t: int) -> None:
    expected = alone(server, libczi_plane(MOVIE, c=1, t=t))
    assert expected[1] > 0
    r = segment(server, MOVIE, channel="DAPI", t=t, output="labels")
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert (r.headers["X-Channel"], r.headers["X-Channel-Name"], r.headers["X-T"]) == ("1", "DAPI", str(t))
    assert r.headers["Content-Disposition"].endswith('cells_labels.png"')


def test_sizes_are_in_micrometres_from_zens_scaling(server: Server) -> None:
    r = segment(server, MOVIE, channel="DAPI", t=0, output="objects")
    assert r.status_code == 200, r.text
    assert (r.headers["X-Pixel-Size-Um"], r.headers["X-Pixel-Size-Source"]) == ("0.65", "czi")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * UM * UM, rel=0.01)


def test_the_raw_body_as_octet_stream_is_read_by_its_signature(server: Server) -> None:
    r = server.client.post("/segment", params={"channel": "DAPI", "t": 0, "output": "labels"}, content=MOVIE,
                           headers={"Content-Type": "application/octet-stream"})
    by_name = labels_of(segment(server, MOVIE, channel="DAPI", t=0, output="labels"))
    labels, count = labels_of(r)
    assert (count, labels.tolist()) == (by_name[1], by_name[0].tolist())


def test_probe_describes_the_czi(server: Server) -> None:
    r = server.client.post("/probe", files={"file": ("cells.czi", MOVIE)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["format"], body["axes"], body["planes"]) == ("CZI", "TCYX", {"T": 2})
    assert body["pixel_size_um"] == {"x": UM, "y": UM, "source": "czi"}
    assert sorted(body["required"]) == ["channel", "t"]


def test_scenes_are_chosen_with_series(server: Server) -> None:
    """A two-position experiment: the first scene by default (X-Series 0, a warning naming the
    other), the second with series=1 segmented as that scene alone, series=2 a 422 listing both."""
    scenes = czi_bytes([Tile(NUCLEI, scene=0), Tile(np.roll(NUCLEI, 30, axis=0), x=500, scene=1)],
                       {0: "DAPI"}, UM * 1e-6, ZSTD1)
    first = segment(server, scenes, output="labels")
    assert first.status_code == 200, first.text
    assert first.headers["X-Series"] == "0" and "series=1" in first.headers["X-Warnings"]
    expected = alone(server, np.roll(NUCLEI, 30, axis=0))
    second = segment(server, scenes, series=1, output="labels")
    labels, count = labels_of(second)
    assert (count, labels.tolist()) == (expected[1], expected[0].tolist())
    assert second.headers["X-Series"] == "1" and "X-Warnings" not in second.headers
    assert labels.tolist() != im.decode(first.content).tolist()
    r = segment(server, scenes, series=2)
    size = f"{NUCLEI.shape[1]}×{NUCLEI.shape[0]}"
    assert r.status_code == 422 and r.json()["choices"]["series"] == [
        {"index": 0, "name": None, "about": size}, {"index": 1, "name": None, "about": size}], r.text
    probe = server.client.post("/probe", params={"series": 1}, files={"file": ("plate.czi", scenes)}).json()
    assert probe["series"] == {"index": 1, "count": 2, "names": [], "about": [size, size]}


def test_a_truncated_czi_is_a_400_that_says_so(server: Server) -> None:
    r = segment(server, MOVIE[: len(MOVIE) // 2], channel="DAPI", t=0)
    assert r.status_code == 400 and "truncated" in r.json()["detail"], r.text


def test_hostile_czis_are_refused_before_anything_is_decoded(server: Server) -> None:
    """A directory that claims two billion subblocks, and a small zstd file whose plane is past
    the server's UNET_MAX_PIXELS (2,000,000 here): 413s naming the limit."""
    claims = bytearray(MOVIE)
    directory = int.from_bytes(claims[84:92], "little")
    claims[directory + 32 : directory + 36] = (2**31 - 1).to_bytes(4, "little")
    r = segment(server, bytes(claims), channel="DAPI", t=0)
    assert r.status_code == 413 and "UNET_MAX_CZI_SUBBLOCKS" in r.json()["detail"], r.text
    wide = czi_bytes([Tile(np.zeros((1500, 1500), np.uint16))], compression=ZSTD1)
    assert len(wide) < 100_000
    r = segment(server, wide)
    assert r.status_code == 413 and r.json()["type"] == "/problems/image-too-large", r.text


def test_a_batch_of_czis_reports_each_files_plane(server: Server) -> None:
    single = czi_bytes([Tile(NUCLEI)], {0: "DAPI"}, UM * 1e-6)
    files = [("files", ("movie.czi", MOVIE)), ("files", ("field.czi", single))]
    params = {"channel": "DAPI", "t": 1, "output": "labels"}
    r = server.client.post("/segment/batch", params=params, files=files)
    assert r.status_code == 200, r.text
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    movie, field = manifest["files"]
    by_itself = labels_of(segment(server, MOVIE, channel="DAPI", t=1, output="labels"))
    assert movie["status"] == 200 and movie["object_count"] == by_itself[1]
    assert (movie["image"]["channel"], movie["image"]["t"]) == ({"index": 1, "name": "DAPI"}, 1)
    assert movie["image"]["pixel_size_um"] == {"x": UM, "y": UM, "source": "czi"}
    assert field["status"] == 422 and field["problem"]["choices"]["planes"] == {}  # no time point 1


def test_a_czi_sent_as_a_job_answers_what_segment_answers(server: Server) -> None:
    """The web page and unet-segment send large images as jobs: a CZI goes through the same reader."""
    from tests.api.test_jobs import finished, wait_until

    params = {"channel": "DAPI", "t": 1, "output": "labels"}
    job = server.client.post("/jobs", params=params, files={"file": ("movie.czi", MOVIE)})
    assert job.status_code == 202, job.text
    status = wait_until(server.client, job.json()["id"], finished)
    assert status["status"] == "succeeded", status
    result = server.client.get(f"/jobs/{job.json()['id']}/result")
    direct = segment(server, MOVIE, **params)
    assert labels_of(result)[0].tolist() == labels_of(direct)[0].tolist()


@pytest.mark.parametrize("t", [0, 1])
def test_measure_reads_the_other_channel_at_the_chosen_frame(server: Server, t: int) -> None:
    labels, _ = labels_of(segment(server, MOVIE, channel="DAPI", t=t, output="labels"))
    r = segment(server, MOVIE, channel="DAPI", t=t, output="objects", measure="Cytoplasm")
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    cytoplasm = libczi_plane(MOVIE, c=0, t=t).astype(np.float64)  # as libCZI reads the plane
    assert len(rows) == labels.max() > 0
    for row in rows:
        inside = labels == int(row["id"])
        assert float(row["mean_intensity_Cytoplasm"]) == pytest.approx(cytoplasm[inside].mean(), abs=1e-3)
