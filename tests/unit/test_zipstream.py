"""service.zipstream: a ZIP written as a stream, members from bytes or read from a file in pieces."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from service.zipstream import ZipStream


def test_a_file_member_is_streamed_in_pieces_and_reads_back_whole(tmp_path):
    table = tmp_path / "objects.geojson"
    payload = np.random.default_rng(0).integers(0, 10, 50_000).astype(str).tobytes()  # compressible
    table.write_bytes(payload)
    archive = ZipStream()
    parts = [archive.add("result/.zattrs", b'{"a": 1}')]
    pieces = list(archive.add_file("objects.geojson", table, deflate=True, piece=4096))
    parts += pieces + [archive.close()]
    assert len([p for p in pieces if p]) > 1  # sent as it was read, not at the end
    read = zipfile.ZipFile(io.BytesIO(b"".join(parts)))
    assert read.testzip() is None  # every CRC checks
    assert read.read("objects.geojson") == payload and read.read("result/.zattrs") == b'{"a": 1}'
    info = read.getinfo("objects.geojson")
    assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size < len(payload)
