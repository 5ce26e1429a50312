"""The prediction cache through real servers: asking again for the same upload skips the model and
answers exactly what a server without the cache answers (service.prediction_cache)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from tests.api import _images as im
from tests.api.test_auth_metrics import metric
from tests.models import write_conv_model
from tests.server import Server

PNG = {"Content-Type": "image/png"}
IMAGE = im.png(im.blobs(180, 230, seed=5))


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory) -> tuple[Server, Server]:
    """(cache on, cache off): the conv test model recording a 20-px nucleus diameter, so the
    size estimate runs when no diameter is sent."""
    model = write_conv_model(tmp_path_factory.mktemp("m") / "conv20.onnx", seed=1, nucleus_diameter=20.0)
    env = {"UNET_MODEL_PATH": str(model), "UNET_MAX_TILE_SIZE": "1024"}
    cached = start_server(env).wait_ready()
    plain = start_server({**env, "UNET_PREDICTION_CACHE_MB": "0"}).wait_ready()
    return cached, plain


def tiles_run(server: Server) -> float:
    return metric(server.client.get("/metrics").text, "unet_tiles_total")


def cache_outcomes(server: Server) -> dict[str, float]:
    """``unet_prediction_cache_total`` by outcome (0 before the first of its kind)."""
    text = server.client.get("/metrics").text
    return {
        k: metric(text, "unet_prediction_cache_total", outcome=k) if f'outcome="{k}"' in text else 0.0
        for k in ("hit", "miss")
    }


def post(server: Server, data: bytes = IMAGE, content_type: str = "image/png", **params):
    r = server.client.post("/segment", params=params, content=data, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    return r


SAME = ("X-Object-Count", "X-Nucleus-Diameter", "X-Diameter-Source", "X-Scale-Factor", "X-Tiles")


def assert_same_answer(a, b) -> None:
    assert a.content == b.content
    for name in SAME:
        assert a.headers.get(name) == b.headers.get(name), name


def test_another_output_of_the_same_upload_reuses_the_prediction(servers) -> None:
    cached, plain = servers
    first = post(cached, output="probability", diameter=30)
    assert first.headers["X-Prediction-Cache"] == "miss"
    before = tiles_run(cached)
    for output in ("labels", "geojson", "mask", "overlay", "objects", "rois", "probability"):
        again = post(cached, output=output, diameter=30)
        assert again.headers["X-Prediction-Cache"] == "hit", output
        assert_same_answer(again, post(plain, output=output, diameter=30))
    assert tiles_run(cached) == before  # seven answers, no tile through the model
    assert "X-Prediction-Cache" not in post(plain, diameter=30).headers


def test_a_new_threshold_or_split_at_a_given_diameter_reuses_the_prediction(servers) -> None:
    cached, plain = servers
    data = im.png(im.blobs(160, 200, seed=6))
    post(cached, data, output="labels", diameter=24)
    before = tiles_run(cached)
    for params in ({"threshold": 0.3}, {"threshold": 0.7}, {"split": "none"}):
        again = post(cached, data, output="labels", diameter=24, **params)
        assert again.headers["X-Prediction-Cache"] == "hit"
        assert_same_answer(again, post(plain, data, output="labels", diameter=24, **params))
    assert tiles_run(cached) == before


def test_without_a_diameter_a_new_threshold_or_split_keeps_the_estimate_and_the_prediction(servers) -> None:
    cached, plain = servers
    data = im.png(im.blobs(200, 200, seed=7))
    first = post(cached, data, output="labels")
    assert first.headers["X-Prediction-Cache"] == "miss"
    before = tiles_run(cached)
    for params in ({}, {"threshold": 0.35}, {"threshold": 0.8}, {"split": "none"}):
        again = post(cached, data, output="labels", **params)
        assert again.headers["X-Prediction-Cache"] == "hit", params
        assert_same_answer(again, post(plain, data, output="labels", **params))
    # Neither the estimate nor the prediction ran again: the size estimate reads the model's own
    # threshold and object settings, so a threshold slider does not move the scale.
    assert tiles_run(cached) == before


def test_the_scale_does_not_follow_the_requests_threshold_or_split(servers) -> None:
    _, plain = servers  # no cache: every request estimates afresh
    data = im.png(im.blobs(220, 180, seed=8))
    scales = {
        (r.headers.get("X-Nucleus-Diameter"), r.headers["X-Scale-Factor"], r.headers["X-Diameter-Source"])
        for params in ({}, {"threshold": 0.2}, {"threshold": 0.9}, {"split": "none"}, {"split": "distance"})
        for r in [post(plain, data, output="mask", **params)]
    }
    assert len(scales) == 1, scales


def test_other_bytes_another_diameter_or_another_channel_run_the_model(servers) -> None:
    cached, plain = servers
    post(cached, output="mask", diameter=30)
    other = im.png(im.blobs(180, 230, seed=99))
    assert post(cached, other, output="mask", diameter=30).headers["X-Prediction-Cache"] == "miss"
    assert post(cached, output="mask", diameter=45).headers["X-Prediction-Cache"] == "miss"

    two = io.BytesIO()
    channels = np.stack([im.blobs(120, 150, seed=s, dtype=np.uint16) for s in (1, 2)])
    tifffile.imwrite(two, channels, imagej=True, metadata={"axes": "CYX"})
    tif = two.getvalue()
    answers = {}
    for channel in ("0", "1"):
        r = post(cached, tif, "image/tiff", output="labels", channel=channel, diameter=30)
        assert r.headers["X-Prediction-Cache"] == "miss", channel  # a plane of its own
        assert_same_answer(r, post(plain, tif, "image/tiff", output="labels", channel=channel, diameter=30))
        answers[channel] = r.content
    assert answers["0"] != answers["1"]
    for channel in ("0", "1"):
        r = post(cached, tif, "image/tiff", output="labels", channel=channel, diameter=30)
        assert r.headers["X-Prediction-Cache"] == "hit" and r.content == answers[channel]


def test_a_table_measuring_other_channels_reuses_the_prediction_and_measures_them(servers) -> None:
    cached, plain = servers
    two = io.BytesIO()
    channels = np.stack([im.blobs(120, 150, seed=s, dtype=np.uint16) for s in (3, 4)])
    tifffile.imwrite(two, channels, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "GFP"]})
    tif = two.getvalue()
    shown = post(cached, tif, "image/tiff", output="geojson", channel="DAPI", diameter=30)
    assert shown.headers["X-Prediction-Cache"] == "miss"
    before = tiles_run(cached)
    for measure in ("GFP", "all", "GFP"):  # the channels read afresh each time, the prediction kept
        r = post(cached, tif, "image/tiff", output="objects", channel="DAPI", diameter=30, measure=measure)
        assert r.headers["X-Prediction-Cache"] == "hit", measure
        assert_same_answer(r, post(plain, tif, "image/tiff", output="objects", channel="DAPI", diameter=30,
                                   measure=measure))
        assert "mean_intensity_GFP" in r.text.splitlines()[0]
    assert tiles_run(cached) == before
    # and the plane kept for later requests is the segmented channel's, whatever was measured
    again = post(cached, tif, "image/tiff", output="objects", channel="DAPI", diameter=30)
    assert "GFP" not in again.text and again.headers["X-Prediction-Cache"] == "hit"


def test_images_segmented_band_by_band_are_not_kept(start_server, tmp_path_factory) -> None:
    model = write_conv_model(tmp_path_factory.mktemp("m") / "conv.onnx", seed=1)
    server = start_server({"UNET_MODEL_PATH": str(model), "UNET_WINDOWED_MIN_PIXELS": "10000"}).wait_ready()
    for _ in range(2):
        r = post(server, output="labels")  # 180 × 230: band by band at this setting
        assert "X-Prediction-Cache" not in r.headers
    small = im.png(im.blobs(60, 80, seed=3))
    post(server, small)
    assert post(server, small).headers["X-Prediction-Cache"] == "hit"
    text = server.client.get("/metrics").text
    assert metric(text, "unet_prediction_cache_total", outcome="hit") == 1
    assert metric(text, "unet_prediction_cache_total", outcome="miss") == 1


def test_concurrent_requests_for_one_upload_all_get_the_same_answer(servers) -> None:
    """Eight clients send one new image at once, asking for different outputs: each gets the
    answer of a server without the cache, whatever it shared with the others."""
    cached, plain = servers
    data = im.png(im.blobs(190, 170, seed=21))
    outputs = ["labels", "mask", "geojson", "objects"] * 2
    before = cache_outcomes(cached)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda o: post(cached, data, output=o, diameter=28), outputs))
    for output, answer in zip(outputs, answers, strict=True):
        assert_same_answer(answer, post(plain, data, output=output, diameter=28))
    after = cache_outcomes(cached)
    assert after["hit"] + after["miss"] - before["hit"] - before["miss"] == 8
    assert post(cached, data, output="labels", diameter=28).headers["X-Prediction-Cache"] == "hit"


def test_requests_that_arrive_while_the_model_runs_wait_for_its_prediction(start_server, slow_model) -> None:
    """The heavy test model (~20 ms per 64² tile: over a second for this image) and four requests
    for one image at once, as a script asking for several outputs in parallel: the model runs
    once, the three others wait for its prediction."""
    server = start_server({"UNET_MODEL_PATH": str(slow_model)}).wait_ready()
    data = im.png(im.blobs(384, 384, seed=4))
    before, tiles_before = cache_outcomes(server), tiles_run(server)
    with ThreadPoolExecutor(4) as pool:
        outputs = ["mask", "labels", "geojson", "objects"]
        answers = list(pool.map(lambda o: post(server, data, output=o), outputs))
    after = cache_outcomes(server)
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, 3)
    assert tiles_run(server) - tiles_before == int(answers[0].headers["X-Tiles"])  # one pass
    assert sorted(a.headers["X-Prediction-Cache"] for a in answers) == ["hit", "hit", "hit", "miss"]
