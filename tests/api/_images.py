"""Real image bytes for the API tests (encoded by OpenCV / Pillow, as a client's files would be)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image


def blobs(height: int, width: int, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """A smooth random ``(H, W)`` image: structure for the model to respond to, not noise."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 16), max(2, width // 16))).astype(np.float32)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (image - image.min()) / (np.ptp(image) or 1.0)
    top = np.iinfo(dtype).max
    return (image * top).astype(dtype)


def png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def tiff(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="TIFF")
    return out.getvalue()


def jpeg_rgb(height: int, width: int) -> bytes:
    rgb = np.stack([blobs(height, width, seed=k) for k in range(3)], axis=2)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


def jpeg_grey_rgb(height: int, width: int) -> bytes:
    """A grey image saved as a colour JPEG (what many microscope exports do): no channel needed."""
    ok, buf = cv2.imencode(".jpg", np.dstack([blobs(height, width, seed=9)] * 3))
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "response is not a decodable image"
    return image


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header (correct CRCs) claiming ``width × height`` pixels, and almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif() -> bytes:
    out = io.BytesIO()
    Image.fromarray(blobs(32, 32)).save(out, format="GIF")
    return out.getvalue()


def write_slow_model(path: str | Path, convs: int = 6, channels: int = 48, **metadata: Any) -> Path:
    """A deliberately heavy 1→1 channel conv stack (~20 ms per 64² tile on one core), so that a
    request lasts long enough to be cancelled or drained mid-way. Valid service metadata
    (``metadata``: more fields, e.g. ``nucleus_diameter``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import IR_VERSION, OPSET, test_metadata

    rng = np.random.default_rng(0)
    nodes, init = [], []
    x, cin = "image", 1
    for k in range(convs + 1):
        cout = 1 if k == convs else channels
        w = rng.normal(0, np.sqrt(1.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        init.append(numpy_helper.from_array(w, f"w{k}"))
        out = "logits" if k == convs else f"c{k}"
        nodes.append(helper.make_node("Conv", [x, f"w{k}"], [out], pads=[1, 1, 1, 1]))
        x, cin = out, cout
    io_ = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, "H", "W"]) for n in ("image", "logits")
    ]
    graph = helper.make_graph(nodes, "slow", [io_[0]], [io_[1]], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    metadata = test_metadata(
        name="test-slow",
        receptive_field=2 * convs + 3,
        context_margin=convs + 1,
        tile_size=64,
        tile_overlap=2 * convs + 2,
        **metadata,
    )
    helper.set_model_props(model, metadata.to_onnx_props())
    path = Path(path)
    onnx.save(model, str(path))
    return path
