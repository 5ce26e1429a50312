"""The bioimage.io package of the bundled model passes the zoo's own test, offline.

``bioimageio.core.test_model`` is what the model zoo's CI and the consuming tools run: the
description must validate, the package's test outputs must reproduce from its test inputs,
and inference must run at the sizes its axes allow. Every test here also records any
attempt to open a network connection and fails on one: CI can reach only PyPI, and a
package check that needs the internet is no check.
"""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

from model_export import bioimageio as bio  # noqa: E402
from service.model_metadata import ModelMetadata  # noqa: E402
from service.preprocess import normalize  # noqa: E402
from tests.models import write_conv_model  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"


def _refuse_network(mp: pytest.MonkeyPatch) -> list[str]:
    """Make every name lookup and every non-local connection fail; returns the attempts."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host}")
        raise OSError("network disabled in this test")

    def refuse_connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        attempts.append(f"connect {address}")
        raise OSError("network disabled in this test")

    mp.setattr(socket, "getaddrinfo", refuse_lookup)
    mp.setattr(socket.socket, "connect", refuse_connect)
    return attempts


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return _refuse_network(monkeypatch)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model's package, built once, with the network refused."""
    out = tmp_path_factory.mktemp("bioimageio") / "nuclei-unet"
    with pytest.MonkeyPatch.context() as mp:
        attempts = _refuse_network(mp)
        rdf = bio.build(MODEL, out)
    assert attempts == [], f"building the package tried the network: {attempts}"
    return rdf


def _failed(summary) -> list[str]:
    return [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status == "failed"]


def test_bundled_model_package_passes_bioimageio_core_test_offline(package: Path, no_network: list[str]):
    summary = bio.run_core_test(package)

    assert summary.status == "passed", _failed(summary)
    names = {d.name: d.status for d in summary.details}
    assert names["Reproduce test outputs from test inputs (onnx)"] == "passed"
    # batch 1 and 2 at the three smallest sizes the axes allow (min, min+step, min+2·step)
    assert sum(1 for n, s in names.items() if n.startswith("Run onnx inference") and s == "passed") == 6
    assert no_network == []


def test_package_describes_the_models_contract(package: Path):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model import v0_5

    descr = load_model_description(package, perform_io_checks=False)
    assert isinstance(descr, v0_5.ModelDescr)
    assert descr.format_version.startswith("0.5.")
    metadata = bio.read_onnx(MODEL).metadata

    (inp,) = descr.inputs
    batch, channel, *space = inp.axes
    assert isinstance(batch, v0_5.BatchAxis)
    assert len(channel.channel_names) == metadata.in_channels
    for axis in space:  # the network's multiple-of-16 constraint, and room for both halos
        assert axis.size.step == metadata.size_divisor
        assert axis.size.min % metadata.size_divisor == 0
        assert axis.size.min > 2 * metadata.context_margin
    scale_range, clip = [p for p in inp.preprocessing if p.id != "ensure_dtype"]
    norm = metadata.normalization
    assert scale_range.id == "scale_range"
    assert [str(a) for a in scale_range.kwargs.axes] == ["y", "x"]  # per image and channel
    assert (scale_range.kwargs.min_percentile, scale_range.kwargs.max_percentile) == (norm.low, norm.high)
    assert clip.id == "clip" and (clip.kwargs.min, clip.kwargs.max) == norm.clip

    (out,) = descr.outputs
    _, channels, *out_space = out.axes
    assert [str(n) for n in channels.channel_names] == metadata.class_names == ["nucleus", "center"]
    assert [a.halo for a in out_space] == [metadata.context_margin] * 2
    assert [p.id for p in out.postprocessing if p.id != "ensure_dtype"] == ["sigmoid"]

    assert descr.weights.onnx is not None
    assert descr.weights.onnx.opset_version == 17
    folder = package.parent
    assert (folder / "weights.onnx").read_bytes() == MODEL.read_bytes()
    test_input = np.load(folder / "test_input.npy")
    assert test_input.dtype == np.float32 and test_input.shape == (1, 1, 256, 256)
    assert test_input.max() > 1.5, "the test input holds raw intensities, not normalised ones"


def test_bioimageio_prediction_equals_the_services_on_a_16bit_image(package: Path, no_network: list[str]):
    """The package's own preprocessing (scale_range + clip) and postprocessing (sigmoid), run by
    bioimageio.core, give the service's probabilities on an input the package was not built
    from: the 8-bit test image as 16-bit with an offset, cropped to another allowed size."""
    import onnxruntime as ort
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_model_description

    descr = load_model_description(package, perform_io_checks=False)
    metadata: ModelMetadata = bio.read_onnx(MODEL).metadata
    raw = np.load(package.parent / "test_input.npy")[0, 0]
    image16 = (raw[: 208 + 16, : 208 + 32] * 200 + 1000).astype(np.uint16)

    service_logits = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(
        None, {"image": normalize(image16, metadata.normalization)[None]}
    )[0]
    service = 1.0 / (1.0 + np.exp(-service_logits))

    pipeline = create_prediction_pipeline(descr, devices=["CPUExecutionProvider"])
    pipeline.load()
    try:

        def run(**options) -> np.ndarray:
            sample = create_sample_for_model(descr, inputs={"image": image16.astype(np.float32)[None, None]})
            out = pipeline.predict_sample_without_blocking(sample, **options)
            return out.members["probabilities"].data.to_numpy()

        exact = run(skip_input_padding=True, skip_output_cropping=True)
        # What tools do by default: mirror-pad the raw input by the halo, normalise, crop.
        padded = run()
    finally:
        pipeline.unload()

    assert exact.shape == padded.shape == service.shape == (1, 2, 224, 240)
    np.testing.assert_allclose(exact, service, atol=1e-4)
    # The padding moves the percentiles a little and gives the border mirror context instead
    # of none: masks still agree almost everywhere (99.8 % on average over the DSB validation
    # images, see models/README.md).
    agreement = ((padded[0, 0] > 0.5) == (service[0, 0] > 0.5)).mean()
    assert agreement > 0.99
    assert no_network == []


def test_cli_writes_folder_and_zip_and_tests_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: list[str]
):
    from model_export.__main__ import main

    model = write_conv_model(tmp_path / "conv.onnx", classes=1)  # divisor 2, halo 8, one output
    out, zipped = tmp_path / "pkg", tmp_path / "pkg.zip"

    assert main(["bioimageio", "--model", str(model), "--out", str(out), "--zip", str(zipped)]) == 0

    assert "bioimageio.core test passed" in capsys.readouterr().out
    expected = {
        "rdf.yaml",
        "weights.onnx",
        "test_input.npy",
        "test_output.npy",
        "sample_input.tif",
        "sample_output.tif",
        "cover.png",
        "documentation.md",
    }
    assert {p.name for p in out.iterdir()} == expected
    assert set(zipfile.ZipFile(zipped).namelist()) == expected
    assert no_network == []


def test_an_image_smaller_than_the_model_allows_is_refused(tmp_path: Path):
    import cv2

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((100, 300), 40, np.uint8))
    with pytest.raises(bio.PackageError, match=r"100×300 px is too small.*at least 208 px"):
        bio.build(MODEL, tmp_path / "pkg", image=small)


@pytest.mark.parametrize(
    ("model", "licence", "message"),
    [
        ("garbage", "MIT", "not-a-model.onnx: not a model written by `python -m model_export export`"),
        ("bundled", "Proprietary", "'Proprietary' is not an SPDX licence identifier"),
    ],
)
def test_cli_says_what_is_wrong(tmp_path: Path, model: str, licence: str, message: str):
    path = MODEL
    if model == "garbage":
        path = tmp_path / "not-a-model.onnx"
        path.write_bytes(b"this is no ONNX file")
    with pytest.raises(SystemExit) as exit_info:
        bio.main(["--model", str(path), "--license", licence, "--out", str(tmp_path / "pkg")])
    assert str(exit_info.value).startswith("error: ")
    assert message in str(exit_info.value)
    assert not (tmp_path / "pkg").exists()
