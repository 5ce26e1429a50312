"""``unet-segment`` storing a file past the upload limit on the replica piece by piece (a resumable
upload, tus 1.0): a connection cut part-way through a piece — the replica keeping what arrived —
is resumed from the offset the replica reports, not from the file's start, and the image is then
segmented as it would have been. A real server; the cut is made in the client's own transport."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from service import client
from tests.api import _images as im
from tests.models import write_conv_model
from tests.server import Server


class CutOnce(httpx.BaseTransport):
    """Forwards every request, but the first PATCH past offset 0 reaches the replica only in part:
    half its bytes go through, then the connection is 'reset'."""

    def __init__(self, real: httpx.BaseTransport) -> None:
        self.real = real
        self.calls: list[tuple[str, str, str | None]] = []
        self.kept: int | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        offset = request.headers.get("upload-offset")
        self.calls.append((request.method, request.url.path.rsplit("/", 1)[-1][:8], offset))
        if request.method == "PATCH" and offset != "0" and self.kept is None:
            body = request.read()
            half = body[: len(body) // 2]
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            part = httpx.Request("PATCH", request.url, headers=headers, content=half)
            answer = self.real.handle_request(part)
            answer.read()
            self.kept = int(offset) + len(half)
            raise httpx.ReadError("connection reset by peer", request=request)
        return self.real.handle_request(request)


@pytest.fixture()
def server(tmp_path: Path) -> Server:
    model = write_conv_model(tmp_path / "conv.onnx")
    srv = Server({"UNET_MODEL_PATH": str(model), "UNET_MAX_UPLOAD_BYTES": "60000",
                  "UNET_JOBS_DIR": str(tmp_path / "jobs")}, tmp_path / "log")
    try:
        yield srv.wait_ready(60)
    finally:
        srv.stop()


def test_a_file_stored_piece_by_piece_resumes_from_what_the_replica_kept(
    server: Server, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    stack = np.stack([im.blobs(96, 128, seed=k, dtype=np.uint16) for k in range(12)])
    tifffile.imwrite(images / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    size = (images / "stack.tif").stat().st_size
    assert size > 3 * 60000  # past the upload limit: stored, not sent
    argv = [str(images), "--out", str(tmp_path / "out"), "--url", server.url, "--no-progress",
            "--project", "max", "--output", "labels"]
    segmenter = client.Segmenter(client.parse_config(argv), backoff_base=0.01)
    segmenter.store_piece_bytes = size // 3 + 1  # three pieces
    cut = CutOnce(segmenter.clients[0]._transport)
    segmenter.clients[0]._transport = cut
    result = segmenter(client.Job(images / "stack.tif", tmp_path / "out" / "stack.png"))
    segmenter.close()

    assert result.ok, result
    piece = size // 3 + 1
    assert cut.kept == piece + piece // 2
    upload = cut.calls[2][1]  # the stored file's id, as the replica named it
    assert cut.calls[:7] == [
        ("POST", "segment", None),  # 413: past the upload limit
        ("POST", "uploads", None),  # a resumable upload of the file's length
        ("PATCH", upload, "0"), ("PATCH", upload, str(piece)),  # cut half-way
        ("HEAD", upload, None), ("PATCH", upload, str(cut.kept)),  # on from what the replica kept
        ("PATCH", upload, str(cut.kept + piece)),
    ], cut.calls
    # the labels are what the replica gives the file stored whole
    whole = httpx.post(f"{server.url}/uploads", content=(images / "stack.tif").read_bytes(),
                       headers={"Content-Type": "image/tiff"}).json()
    reply = httpx.post(f"{server.url}/segment", params={"upload": whole["id"], "project": "max",
                                                         "output": "labels"})
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(im.decode((tmp_path / "out" / "stack.png").read_bytes()),
                                  im.decode(reply.content))
    # and the stored copy was deleted once segmented
    assert [p.name for p in (tmp_path / "jobs" / "uploads").iterdir()] == [whole["id"]]
