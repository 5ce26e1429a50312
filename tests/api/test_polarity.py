"""polarity=dark through a real server and the bundled model: dark nuclei on a bright field
(bright field, H&E) are segmented as their optical density, and the user is told what happened."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from model_export.data import synth_nuclei
from model_export.object_metrics import score_objects
from service.settings import DEFAULT_MODEL_PATH
from tests.api import _images as im
from tests.server import Server
from tests.unit.test_polarity import transmitted

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not here")

PNG = {"Content-Type": "image/png"}
TIFF = {"Content-Type": "image/tiff"}
#: A float image with no bright field at all: a NaN diagonal on a negative background.
NAN_AND_NEGATIVE = np.where(np.eye(64, 80) > 0, np.nan, -3.5).astype(np.float32)


@pytest.fixture(scope="module")
def bundled(start_server) -> Server:
    return start_server({}).wait_ready()


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence field and its labels (the generator's seed 11, 256²: 188 nuclei,
    dense and touching, where the model's object F1 on the fluorescence itself is about 0.6)."""
    return synth_nuclei(11, 256)


@pytest.fixture(scope="module")
def fluorescence_f1(bundled: Server, nuclei) -> float:
    """The model's object F1 on the fluorescence field itself: what a bright field of the same
    nuclei, read the right way round, should give again."""
    labels, _ = _labels(bundled, im.png(nuclei[0]))
    return score_objects(nuclei[1], labels).f1


def he_like(fluorescence: np.ndarray) -> np.ndarray:
    """An H&E-like colour image: haematoxylin (purple-blue) where the nuclei are, on a pink field."""
    stain = fluorescence.astype(np.float64) / float(np.percentile(fluorescence, 99.9))
    field = np.array([235.0, 205.0, 225.0])  # eosin-pink background, RGB
    absorbance = np.array([0.9, 1.2, 0.4])  # haematoxylin absorbs red and green more than blue
    rgb = field * 10.0 ** (-absorbance * np.clip(stain, 0, 1.2)[..., None])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _labels(server: Server, body: bytes, **params: str):
    r = server.client.post("/segment", params={"output": "labels", **params}, content=body, headers=PNG)
    assert r.status_code == 200, r.text
    return im.decode(r.content).astype(np.int32), r


def test_dark_nuclei_on_a_bright_field_are_found_with_polarity_dark(
    bundled: Server, nuclei, fluorescence_f1: float
) -> None:
    fluorescence, truth = nuclei
    body = im.png(transmitted(fluorescence))
    as_bright, plain = _labels(bundled, body)
    as_dark, turned = _labels(bundled, body, polarity="dark")
    f1 = {"bright": score_objects(truth, as_bright).f1, "dark": score_objects(truth, as_dark).f1}
    # Read the right way round, the bright field gives what the fluorescence gave.
    assert f1["dark"] >= fluorescence_f1 - 0.05, (f1, fluorescence_f1)
    assert f1["dark"] >= f1["bright"] + 0.3, f1
    # Read as fluorescence it is flagged, and the flag names the fix; read as dark, the user is
    # told how it was read.
    assert "polarity=dark" in plain.headers["X-Warnings"]
    assert "optical density" in turned.headers["X-Warnings"]


def test_a_colour_stain_with_polarity_dark_is_mixed_to_grey_without_a_channel(
    bundled: Server, nuclei, fluorescence_f1: float
) -> None:
    fluorescence, truth = nuclei
    body = im.png(he_like(fluorescence)[:, :, ::-1])  # OpenCV writes BGR
    r = bundled.client.post("/segment", content=body, headers=PNG)
    assert r.status_code == 422 and "polarity=dark" in r.json()["detail"], r.text
    labels, answer = _labels(bundled, body, polarity="dark")
    assert answer.headers["X-Channel"] == "gray"
    assert score_objects(truth, labels).f1 >= fluorescence_f1 - 0.05


def test_the_overlay_is_drawn_on_the_image_as_sent(bundled: Server, nuclei) -> None:
    bright_field = transmitted(nuclei[0])
    params = {"output": "overlay", "polarity": "dark"}
    r = bundled.client.post("/segment", params=params, content=im.png(bright_field), headers=PNG)
    assert r.status_code == 200, r.text
    overlay = im.decode(r.content)
    # Outlines are thin: most pixels are the user's bright field, not its optical density.
    assert np.median(overlay) > 150 and np.median(bright_field) > 150


def test_polarity_dark_on_fluorescence_is_flagged_and_a_bad_value_is_a_422(bundled: Server, nuclei) -> None:
    body = im.png(nuclei[0])
    _, r = _labels(bundled, body, polarity="dark")
    assert "looks like fluorescence" in r.headers["X-Warnings"]
    bad = bundled.client.post("/segment", params={"polarity": "sideways"}, content=body, headers=PNG)
    assert bad.status_code == 422, bad.text


def test_each_polarity_has_its_own_prediction_and_the_outputs_say_which(bundled: Server, nuclei) -> None:
    body = im.png(transmitted(nuclei[0])[:200, :220])  # bytes no other test sends
    first = bundled.client.post("/segment", params={"polarity": "dark"}, content=body, headers=PNG)
    other = bundled.client.post("/segment", content=body, headers=PNG)
    again = bundled.client.post("/segment", params={"polarity": "dark"}, content=body, headers=PNG)
    assert [r.headers["X-Prediction-Cache"] for r in (first, other, again)] == ["miss", "miss", "hit"]
    assert first.content == again.content != other.content
    geojson = bundled.client.post("/segment", params={"polarity": "dark", "output": "geojson"},
                                  content=body, headers=PNG)
    assert json.loads(geojson.content)["properties"]["polarity"] == "dark"


def test_batch_and_python_api_take_polarity(bundled: Server, nuclei, fluorescence_f1: float) -> None:
    from service.api import Segmenter

    fluorescence, truth = nuclei
    bright_field = transmitted(fluorescence)
    r = bundled.client.post("/segment/batch", params={"output": "labels", "polarity": "dark"},
                            files=[("files", ("bf.png", im.png(bright_field), "image/png"))])
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        entry = json.loads(archive.read("manifest.json"))["files"][0]
        batch_labels = im.decode(archive.read(entry["output"])).astype(np.int32)
    assert entry["image"]["polarity"] == "dark"
    assert score_objects(truth, batch_labels).f1 >= fluorescence_f1 - 0.05
    with Segmenter.load() as segmenter:
        answer = segmenter.segment(bright_field, polarity="dark", outputs=["labels"])
        with pytest.raises(ValueError, match="polarity"):
            segmenter.segment(bright_field, polarity="up")  # type: ignore[arg-type]
    assert score_objects(truth, answer.labels).f1 >= fluorescence_f1 - 0.05
    assert any("optical density" in w for w in answer.warnings)


@pytest.mark.parametrize(
    ("name", "body", "headers"),
    [
        ("flat", im.png(np.full((64, 80), 200, np.uint8)), PNG),
        ("black", im.png(np.zeros((64, 80), np.uint8)), PNG),
        ("one pixel", im.png(np.full((1, 1), 9, np.uint8)), PNG),
        ("float with NaN and negatives", im.tiff(NAN_AND_NEGATIVE), TIFF),
    ],
)
def test_images_without_a_bright_field_get_an_answer_not_an_error(
    bundled: Server, name: str, body: bytes, headers: dict
) -> None:
    r = bundled.client.post("/segment", params={"output": "labels", "polarity": "dark"}, content=body,
                            headers=headers)
    assert r.status_code == 200, (name, r.text)
    assert int(r.headers["X-Object-Count"]) == 0, name
