"""Resumable stored uploads (tus 1.0: core, creation, termination) on a real server: a file past the
per-request limit sent in pieces, a connection lost part-way resumed from the offset the server
kept, and the file then used as any stored upload — by our own requests, and by ``tuspy``, the tus
project's Python client, as an independent implementation of the protocol."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from tusclient.client import TusClient

from tests.api.test_lif import alone, labels_of
from tests.api.test_stored_uploads import MAX_UPLOAD_BYTES, NUCLEI, PROJECT, stored_files
from tests.server import Server

OFFSET_STREAM = {"Content-Type": "application/offset+octet-stream", "Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resumable-uploads")


@pytest.fixture(scope="module")
def server(start_server, conv_model: Path, jobs_dir: Path) -> Server:
    return start_server({
        "UNET_MODEL_PATH": str(conv_model),
        "UNET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "UNET_MAX_STORED_UPLOAD_BYTES": str(2 * len(PROJECT)),
        "UNET_JOBS_MAX_BYTES": str(3 * len(PROJECT)),
        "UNET_JOBS_DIR": str(jobs_dir),
    }).wait_ready()


def metadata(name: str) -> str:
    return f"filename {base64.b64encode(name.encode()).decode()}"


def create(server: Server, length: int, name: str = "session.lif") -> dict:
    r = server.client.post("/uploads", headers={
        "Upload-Length": str(length), "Upload-Metadata": metadata(name), "Tus-Resumable": "1.0.0"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/uploads/{r.json()['id']}" and r.headers["Tus-Resumable"] == "1.0.0"
    return r.json()


def offset_of(server: Server, url: str) -> int:
    r = server.client.head(url)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store", r.headers
    return int(r.headers["Upload-Offset"])


def patch(server: Server, url: str, offset: int, data: bytes):
    return server.client.patch(url, content=data, headers={**OFFSET_STREAM, "Upload-Offset": str(offset)})


def test_a_file_sent_in_pieces_is_stored_and_read_as_the_file_sent_whole(server: Server) -> None:
    created = create(server, len(PROJECT))
    url = created["url"]
    assert (created["length"], created["offset"], created["filename"]) == (len(PROJECT), 0, "session.lif")
    piece = MAX_UPLOAD_BYTES // 2  # any size: the pieces are not what the per-request limit counts
    for start in range(0, len(PROJECT), piece):
        assert offset_of(server, url) == start
        # not usable until every byte is in: the 404 says how far it is
        early = server.client.post("/probe", params={"upload": created["id"]})
        assert early.status_code == 404
        assert f"{start:,} of its {len(PROJECT):,} bytes" in early.json()["detail"]
        r = patch(server, url, start, PROJECT[start:start + piece])
        assert r.status_code == 204, r.text
        assert int(r.headers["Upload-Offset"]) == min(start + piece, len(PROJECT))
    described = server.client.get(url).json()
    assert described["size"] == len(PROJECT) and described["filename"] == "session.lif"
    assert described["sha256"] == hashlib.sha256(PROJECT).hexdigest()
    head = server.client.head(url)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(PROJECT))
    named = labels_of(server.client.post("/segment", params={
        "output": "labels", "upload": created["id"], "series": 0, "channel": 1}))
    expected = alone(server, NUCLEI)
    np.testing.assert_array_equal(named[0], expected[0])
    assert named[1] == expected[1] > 0
    assert server.client.delete(url).status_code == 204


def test_a_connection_lost_part_way_keeps_what_arrived_and_the_upload_resumes_from_there(
    server: Server
) -> None:
    created = create(server, len(PROJECT))
    url = created["url"]
    cut = 3 * len(PROJECT) // 5
    # a PATCH announcing the whole file whose connection dies after `cut` bytes
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port)) as raw:
        raw.sendall((f"PATCH {url} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                     "Content-Type: application/offset+octet-stream\r\nTus-Resumable: 1.0.0\r\n"
                     f"Upload-Offset: 0\r\nContent-Length: {len(PROJECT)}\r\n\r\n").encode() + PROJECT[:cut])
    for _ in range(200):  # the server notices the disconnect and writes what it had
        kept = offset_of(server, url)
        if kept == cut:
            break
        time.sleep(0.05)
    assert kept == cut
    stale = patch(server, url, 0, PROJECT)  # a client that lost track: refused, told the offset
    assert stale.status_code == 409 and stale.headers["Upload-Offset"] == str(cut)
    assert stale.json()["type"] == "/problems/upload-offset-conflict"
    assert patch(server, url, cut, PROJECT[cut:]).status_code == 204
    assert server.client.get(url).json()["sha256"] == hashlib.sha256(PROJECT).hexdigest()
    server.client.delete(url)


def test_tuspy_the_tus_projects_client_uploads_and_resumes_against_it(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "session.lif"
    path.write_bytes(PROJECT)
    client = TusClient(f"{server.url}/uploads")
    piece = MAX_UPLOAD_BYTES // 3
    uploader = client.uploader(str(path), chunk_size=piece, metadata={"filename": "session.lif"})
    uploader.upload_chunk()  # one piece; a new uploader for the same URL resumes from the server's offset
    resumed = client.uploader(str(path), url=uploader.url, chunk_size=piece)
    assert resumed.get_offset() == piece
    resumed.upload()
    upload_id = resumed.url.rstrip("/").rsplit("/", 1)[1]
    described = server.client.get(f"/uploads/{upload_id}").json()
    assert described["sha256"] == hashlib.sha256(PROJECT).hexdigest()
    assert described["filename"] == "session.lif"
    assert server.client.delete(f"/uploads/{upload_id}").status_code == 204


def test_what_the_protocol_refuses(server: Server, jobs_dir: Path) -> None:
    client = server.client
    url = create(server, 40)["url"]
    assert patch(server, url, 0, b"\x89PNG\r\n\x1a\n" + b"x" * 8).status_code == 204  # a PNG's start
    bad_type = client.patch(url, content=b"x", headers={"Upload-Offset": "16", "Content-Type": "image/png"})
    assert bad_type.status_code == 415
    no_offset = client.patch(url, content=b"x", headers={"Content-Type": "application/offset+octet-stream"})
    assert no_offset.status_code == 400 and "Upload-Offset" in no_offset.json()["detail"]
    version = client.patch(url, content=b"x", headers={**OFFSET_STREAM, "Tus-Resumable": "0.2.2",
                                                       "Upload-Offset": "16"})
    assert version.status_code == 412 and version.headers["Tus-Version"] == "1.0.0"
    past = patch(server, url, 16, b"y" * 25)  # 16 + 25 > 40
    assert past.status_code == 413 and offset_of(server, url) == 16  # nothing of it written
    assert client.delete(url).status_code == 204  # termination, part-way
    assert client.head(url).status_code == 404
    assert patch(server, url, 16, b"y").status_code == 404

    # not a file the service reads: refused at its first bytes, and nothing kept
    text = create(server, 100)["url"]
    refused = patch(server, text, 0, b"just some text, not an image at all" + b"." * 65)
    assert refused.status_code == 415 and client.head(text).status_code == 404
    # more than the server stores, declared: refused before a byte; a body with the creation: 400
    assert client.post("/uploads", headers={"Upload-Length": str(4 * len(PROJECT))}).status_code == 413
    assert client.post("/uploads", headers={"Upload-Length": "nan"}).status_code == 400
    assert client.post("/uploads", headers={"Upload-Length": "10"}, content=b"0123456789").status_code == 400
    assert stored_files(jobs_dir) == []


def test_a_piece_larger_than_one_request_may_carry_is_taken(server: Server) -> None:
    """The per-request upload limit does not apply to a resumable upload's PATCH (tus clients send
    the rest of the file in one PATCH unless told otherwise); its own length bounds it."""
    assert len(PROJECT) > 2 * MAX_UPLOAD_BYTES
    created = create(server, len(PROJECT))
    assert patch(server, created["url"], 0, PROJECT).status_code == 204
    assert server.client.get(created["url"]).json()["size"] == len(PROJECT)
    server.client.delete(created["url"])


def test_a_file_shorter_than_a_signature_sent_in_pieces_is_still_checked(server: Server) -> None:
    """Ten bytes in two pieces: the check of a file's first bytes does not wait for sixteen."""
    url = create(server, 10)["url"]
    assert patch(server, url, 0, b"hello").status_code == 204
    refused = patch(server, url, 5, b"world")
    assert refused.status_code == 415 and server.client.head(url).status_code == 404


def test_options_tells_the_tus_versions_extensions_and_largest_upload(server: Server) -> None:
    """tus discovery: what a client may ask before it creates an upload."""
    r = server.client.options("/uploads")
    assert r.status_code == 204, r.text
    assert (r.headers["Tus-Resumable"], r.headers["Tus-Version"]) == ("1.0.0", "1.0.0")
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "termination"}
    too_big = int(r.headers["Tus-Max-Size"]) + 1
    creation = {"Upload-Length": str(too_big), "Tus-Resumable": "1.0.0"}
    refused = server.client.post("/uploads", headers=creation)
    assert refused.status_code == 413, refused.text  # the size told is the size kept
