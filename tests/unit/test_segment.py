"""segment.predict end to end on tiny ONNX models (and the real U-Net when it exists)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine import Engine
from service.postprocess import foreground_probability, mask
from service.preprocess import prepare
from service.segment import Cancelled, apply_activation, predict, resolve_tiling
from tests.models import write_conv_model, write_identity_model

REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"
CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> Engine:
    path = write_identity_model(
        tmp_path_factory.mktemp("m") / "id.onnx",
        size_divisor=16, context_margin=6, tile_size=48, tile_overlap=16,
    )
    return Engine.load(path, providers=CPU, intra_op_threads=1)


@pytest.fixture(scope="module")
def conv(tmp_path_factory) -> Engine:
    return Engine.load(write_conv_model(tmp_path_factory.mktemp("m") / "conv.onnx"), providers=CPU)


def synthetic_nuclei(height: int, width: int, seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """Blurred bright disks of radius 5–15 px on a dim noisy background."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width), np.float32)
    for _ in range(max(1, height * width // 1500)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(canvas, centre, int(rng.integers(5, 16)), float(rng.uniform(0.5, 1.0)), -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 1.5) + rng.normal(0.05, 0.02, canvas.shape).astype(np.float32)
    top = np.iinfo(dtype).max * 0.8 if np.issubdtype(dtype, np.integer) else 1.0
    return np.clip(canvas * top, 0, top).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 150), st.integers(1, 150), st.integers(16, 96), st.integers(0, 40), st.integers(1, 5),
    st.integers(0, 1000),
)
def test_identity_model_through_tiles_equals_input_exactly(identity, h, w, tile, overlap, batch, seed):
    image = np.random.default_rng(seed).integers(0, 65535, (h, w), dtype=np.uint16)
    pred = predict(image, identity.run, identity.metadata, tile_size=tile, overlap=overlap, batch_size=batch)
    expected = apply_activation(prepare(image, 1, identity.metadata.normalization), identity.metadata)
    np.testing.assert_array_equal(pred.probabilities, expected)
    assert pred.probabilities.shape == (1, h, w) and pred.probabilities.dtype == np.float32


@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (97, 131), (256, 256), (300, 181)])
@pytest.mark.parametrize("tile", [32, 64, 100])
def test_tiled_equals_single_pass_with_conv_model(conv, shape, tile):
    image = synthetic_nuclei(*shape, seed=shape[0])
    tiled = predict(image, conv.run, conv.metadata, tile_size=tile)
    single = predict(image, conv.run, conv.metadata, tile_size=max(shape))
    assert single.tiles == 1
    a = mask(foreground_probability(tiled, conv.metadata), 0.5)
    b = mask(foreground_probability(single, conv.metadata), 0.5)
    assert (a == b).mean() >= 0.999
    # with divisor-aligned tiles and margin ≥ the receptive radius it is in fact the same
    np.testing.assert_allclose(tiled.probabilities, single.probabilities, atol=1e-5)


def test_tiled_equals_single_pass_without_border_padding(conv):
    image = synthetic_nuclei(150, 170)
    tiled = predict(image, conv.run, conv.metadata, tile_size=48, border=0)
    single = predict(image, conv.run, conv.metadata, tile_size=170, border=0)
    assert tiled.plan.rows.pad_before == 0
    np.testing.assert_allclose(tiled.probabilities, single.probabilities, atol=1e-5)


def test_too_little_context_does_show_seams(tmp_path):
    """The seam test has teeth: claim no context margin and tiles disagree with one pass."""
    path = write_conv_model(tmp_path / "c.onnx", context_margin=0, tile_overlap=0)
    engine = Engine.load(path, providers=CPU)
    image = synthetic_nuclei(200, 200)
    tiled = predict(image, engine.run, engine.metadata, tile_size=40)
    single = predict(image, engine.run, engine.metadata, tile_size=200)
    assert np.abs(tiled.probabilities - single.probabilities).max() > 1e-3


@pytest.mark.skipif(not REAL_MODEL.is_file(), reason=f"{REAL_MODEL} not exported yet")
def test_tiled_equals_single_pass_with_real_unet():
    engine = Engine.load(REAL_MODEL, providers=CPU)
    md = engine.metadata
    image = synthetic_nuclei(520, 390, seed=3)
    single = predict(image, engine.run, md, tile_size=1024)
    threshold = md.threshold
    ref = mask(foreground_probability(single, md), threshold)
    # The model's own overlap at several tile sizes, all smaller than the image so it is tiled.
    for tile in (128, 256, 384):
        tiled = predict(image, engine.run, md, tile_size=tile, batch_size=2)
        assert tiled.tiles > 1
        agree = (mask(foreground_probability(tiled, md), threshold) == ref).mean()
        assert agree >= 0.999, f"tile {tile}: {agree:.5f}"


def test_8_bit_and_16_bit_of_the_same_image_give_the_same_prediction(conv):
    image8 = synthetic_nuclei(120, 150, dtype=np.uint8)
    image16 = image8.astype(np.uint16) * 257  # the same scene at 16 bits
    as_float = image8.astype(np.float32) / 255.0
    p8 = predict(image8, conv.run, conv.metadata).probabilities
    for other in (image16, as_float):
        p = predict(other, conv.run, conv.metadata).probabilities
        np.testing.assert_allclose(p, p8, atol=1e-5)


def test_colour_input_is_converted_to_model_channels(conv):
    gray = synthetic_nuclei(64, 80, dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    np.testing.assert_allclose(
        predict(rgba, conv.run, conv.metadata).probabilities,
        predict(gray, conv.run, conv.metadata).probabilities,
        atol=1e-5,
    )


def test_should_stop_cancels_before_remaining_tiles(conv):
    calls = []

    def infer(batch):
        calls.append(len(batch))
        return conv.run(batch)

    with pytest.raises(Cancelled):
        predict(
            synthetic_nuclei(200, 200), infer, conv.metadata, tile_size=32, batch_size=2,
            should_stop=lambda: len(calls) >= 1,
        )
    assert calls == [2]


def test_softmax_probabilities_sum_to_one(tmp_path):
    path = write_identity_model(tmp_path / "s.onnx", in_channels=3, activation="softmax")
    engine = Engine.load(path, providers=CPU)
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    probs = predict(image, engine.run, engine.metadata, tile_size=32).probabilities
    assert probs.shape == (3, 70, 90)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)


def test_defaults_come_from_metadata_unless_overridden(conv):
    md = conv.metadata
    assert resolve_tiling(md) == (md.tile_size, md.tile_overlap)
    assert resolve_tiling(md, 100, 30) == (100, 30)
    pred = predict(np.zeros((150, 150), np.uint8), conv.run, md)
    assert pred.tile_size == md.tile_size and pred.overlap == max(md.tile_overlap, 2 * md.context_margin)
    assert pred.tiles == 9


def test_wrong_model_output_shape_is_an_error(conv):
    with pytest.raises(RuntimeError, match="model returned"):
        predict(np.zeros((40, 40), np.uint8), lambda b: b[:, :, :8], conv.metadata)
