"""POST /segment through the windowed path (service/windows.py) answers what the in-memory path does.

Two real servers on the same model and tiling: one sends every image band by band
(``UNET_WINDOWED_MIN_PIXELS=1``), the other never does. The same 16-bit PNG must give byte-
identical bodies and the same headers for every output, at the model's scale and resized.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.api import _images as im
from tests.models import write_conv_model
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

PNG = {"Content-Type": "image/png"}
#: The windowed server says so in its log (INFO), once per request it segments band by band.
BAND_LOG = "band by band"


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory) -> dict[str, Server]:
    model = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", seed=2, nucleus_diameter=20.0)
    common = {
        "UNET_MODEL_PATH": str(model),
        # several tile rows and columns on the test image, and tiles tall enough that the random
        # conv net's mask (one confluent sheet) stays under the windowed path's cap on object height
        "UNET_TILE_SIZE": "320",
        "UNET_MAX_TILE_SIZE": "1024",
        "UNET_LOG_LEVEL": "INFO",
    }
    return {
        "windowed": start_server({**common, "UNET_WINDOWED_MIN_PIXELS": "1"}).wait_ready(),
        "in-memory": start_server({**common, "UNET_WINDOWED_MIN_PIXELS": str(1 << 40)}).wait_ready(),
    }


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(701, 533, seed=11)  # odd sizes, 16-bit


HEADERS = ("X-Object-Count", "X-Tiles", "X-Tile-Size", "X-Scale-Factor", "X-Nucleus-Diameter")


@pytest.mark.parametrize("diameter", [20, 31, 13])  # factor 1, shrink ×0.65, enlarge ×1.54
@pytest.mark.parametrize("output", ["mask", "labels", "probability", "objects"])
def test_windowed_and_in_memory_requests_answer_the_same_bytes(servers, image, diameter, output):
    answers = {}
    for name, server in servers.items():
        r = server.client.post(
            "/segment",
            params={"output": output, "diameter": diameter, "bits": 16 if output == "probability" else 8},
            content=im.png(image),
            headers=PNG,
        )
        assert r.status_code == 200, r.text
        answers[name] = r
    windowed, in_memory = answers["windowed"], answers["in-memory"]
    assert windowed.content == in_memory.content
    assert {h: windowed.headers.get(h) for h in HEADERS} == {h: in_memory.headers.get(h) for h in HEADERS}
    if output == "labels":
        labels = im.decode(windowed.content)
        assert labels.shape == image.shape
        assert int(windowed.headers["X-Object-Count"]) == int(labels.max()) > 0


def test_only_the_windowed_server_segments_band_by_band(servers, image):
    before = {name: server.log().count(BAND_LOG) for name, server in servers.items()}
    for server in servers.values():
        r = server.client.post("/segment", params={"diameter": 20}, content=im.png(image), headers=PNG)
        assert r.status_code == 200, r.text
    after = {name: server.log().count(BAND_LOG) for name, server in servers.items()}
    assert after["windowed"] == before["windowed"] + 1
    assert after["in-memory"] == before["in-memory"] == 0


@pytest.mark.parametrize("output", ["labels", "probability"])
def test_polarity_dark_band_by_band_answers_what_it_answers_in_memory(servers, image, output):
    """Band by band, each window is turned to optical density as it is read, with the whole
    image's white level: the same bytes as turning the whole image in memory."""
    dark = (int(image.max()) - image.astype(np.int64)).astype(np.uint16)  # dark nuclei, bright field
    before = servers["windowed"].log().count(BAND_LOG)
    answers = {}
    for name, server in servers.items():
        params = {"output": output, "diameter": 31, "polarity": "dark", "bits": 16}
        r = server.client.post("/segment", params=params, content=im.png(dark), headers=PNG)
        assert r.status_code == 200, r.text
        answers[name] = r
    assert servers["windowed"].log().count(BAND_LOG) == before + 1
    assert answers["windowed"].content == answers["in-memory"].content
    assert "optical density" in answers["windowed"].headers["X-Warnings"]
