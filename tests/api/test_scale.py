"""Nucleus scale and honest warnings through a real server: diameter=, the headers, /v1/model."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from tests.api import _images as im
from tests.models import write_conv_model
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def scaled_server(start_server, tmp_path_factory) -> Server:
    """The conv test model, recording that it was trained at nuclei 20 px across."""
    model = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", seed=1, nucleus_diameter=20.0)
    return start_server({"UNET_MODEL_PATH": str(model), "UNET_MAX_TILE_SIZE": "1024"}).wait_ready()


def test_a_requested_diameter_resizes_and_outputs_keep_the_input_size(scaled_server: Server) -> None:
    image = im.blobs(150, 210)
    for output in ("mask", "labels"):
        r = scaled_server.client.post(
            "/segment", params={"diameter": 40, "output": output}, content=im.png(image), headers=PNG
        )
        assert r.status_code == 200, r.text
        assert im.decode(r.content).shape == image.shape
        assert r.headers["X-Diameter-Source"] == "request"
        assert float(r.headers["X-Nucleus-Diameter"]) == 40.0
        assert float(r.headers["X-Scale-Factor"]) == pytest.approx(0.5)
    labels = im.decode(r.content)
    assert int(r.headers["X-Object-Count"]) == int(labels.max())


def test_without_a_diameter_the_server_estimates_or_says_it_could_not(scaled_server: Server) -> None:
    r = scaled_server.client.post("/segment", content=im.png(im.blobs(200, 200, seed=2)), headers=PNG)
    assert r.status_code == 200, r.text
    source = r.headers["X-Diameter-Source"]
    assert source in ("estimated", "model-scale")
    if source == "estimated":
        assert float(r.headers["X-Nucleus-Diameter"]) > 0
    else:  # nothing found: the image is used as it is, and the user is told
        assert "no nuclei" in json.loads(r.headers["X-Warnings"])[0]


def test_model_info_reports_the_trained_diameter(scaled_server: Server, server: Server) -> None:
    defaults = scaled_server.client.get("/v1/model").json()["defaults"]
    assert defaults["nucleus_diameter"] == 20.0 and defaults["diameter"] == "estimated"
    plain = server.client.get("/v1/model").json()["defaults"]
    assert plain["nucleus_diameter"] is None and plain["diameter"] == "model-scale"


def test_diameter_on_a_model_that_does_not_know_its_scale_is_a_422(server: Server) -> None:
    r = server.client.post("/segment", params={"diameter": 30}, content=im.png(im.blobs(64, 64)), headers=PNG)
    assert r.status_code == 422 and "diameter" in r.json()["detail"]
    ok = server.client.post("/segment", content=im.png(im.blobs(64, 64)), headers=PNG)
    assert ok.headers["X-Diameter-Source"] == "model-scale" and "X-Nucleus-Diameter" not in ok.headers
    small = im.png(im.blobs(64, 64))
    bad = server.client.post("/segment", params={"diameter": 0}, content=small, headers=PNG)
    assert bad.status_code == 422


def test_a_colour_stain_is_never_segmented_silently(scaled_server: Server) -> None:
    nuclei = synthetic_nuclei(120, 160).astype(np.float32)
    grey = nuclei / nuclei.max()  # sparse bright nuclei on a dark field
    he = (np.array([235, 200, 220]) * (1 - grey[:, :, None]) + np.array([90, 50, 150]) * grey[:, :, None])
    body = im.png(he.astype(np.uint8))
    # Its channels differ: the service asks which one holds the nuclei.
    r = scaled_server.client.post("/segment", params={"diameter": 20}, content=body, headers=PNG)
    assert r.status_code == 422, r.text
    # Mixed to grey on request: segmented, with a warning that this is not fluorescence.
    r = scaled_server.client.post(
        "/segment", params={"diameter": 20, "channel": "gray"}, content=body, headers=PNG
    )
    assert r.status_code == 200, r.text
    assert any("fluorescence" in w and "unreliable" in w for w in json.loads(r.headers["X-Warnings"]))
    grey = im.png(im.blobs(120, 160))
    grey_ok = scaled_server.client.post("/segment", params={"diameter": 20}, content=grey, headers=PNG)
    assert "X-Warnings" not in grey_ok.headers


def test_batch_manifest_says_the_diameter_per_file(scaled_server: Server) -> None:
    files = [("files", (f"{i}.png", im.png(im.blobs(96, 96, seed=i)), "image/png")) for i in range(2)]
    r = scaled_server.client.post("/segment/batch", params={"diameter": 10}, files=files)
    assert r.status_code == 200, r.text
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    assert [f["diameter_source"] for f in manifest["files"]] == ["request", "request"]
    assert [f["nucleus_diameter"] for f in manifest["files"]] == [10.0, 10.0]


def test_the_size_estimate_hands_the_queue_no_more_than_one_tile_batch(
    start_server, tmp_path_factory
) -> None:
    # The queue is sized for each admitted request handing over at most UNET_MAX_BATCH_SIZE tiles
    # at a time (2 × requests × batch): the estimate's probes must keep to that, or an admitted
    # request is refused half-way with a 503.
    model = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", seed=1, nucleus_diameter=20.0)
    tight = start_server(
        {
            "UNET_MODEL_PATH": str(model),
            "UNET_MAX_BATCH_SIZE": "1",
            "UNET_MAX_QUEUE_TILES": "1",
            "UNET_MAX_CONCURRENT_REQUESTS": "1",
        }
    ).wait_ready()
    r = tight.client.post("/segment", content=im.png(im.blobs(900, 900, seed=3)), headers=PNG)
    assert r.status_code == 200, r.text
    assert r.headers["X-Diameter-Source"] in ("estimated", "model-scale")
