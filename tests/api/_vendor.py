"""What the API tests of vendor files (CZI, LIF, ND2) ask a server: a file segmented as sent, a
plane segmented alone as a PNG, and labels answers decoded, to compare the two."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.api import _images as im
from tests.server import Server


def segment_file(server: Server, name: str, data: bytes, **params: Any) -> Any:
    """``POST /segment`` with ``data`` as a multipart file called ``name``."""
    return server.client.post("/segment", params=params, files={"file": (name, data)})


def labels_of(response: Any) -> tuple[np.ndarray, int]:
    """A 200 labels answer's labels and its ``X-Object-Count``."""
    assert response.status_code == 200, response.text
    return im.decode(response.content), int(response.headers["X-Object-Count"])


def alone(server: Server, plane: np.ndarray) -> tuple[np.ndarray, int]:
    """The labels of ``plane`` sent by itself as a PNG: what the file's plane must give."""
    return labels_of(server.client.post("/segment", params={"output": "labels"}, content=im.png(plane),
                                        headers={"Content-Type": "image/png"}))
