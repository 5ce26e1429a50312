"""Package an exported ONNX model for the bioimage.io model zoo (model spec 0.5).

    python -m model_export bioimageio --model models/nuclei-unet.onnx --out DIR [--zip FILE]

Writes ``DIR/rdf.yaml`` and the files it names: the ONNX weights, a test input and the
expected test output (``.npy``, computed here by ONNX Runtime on a real micrograph),
a cover image and the documentation. Fiji (deepImageJ), ilastik, QuPath and
``bioimageio.core`` run such a package without this project's code; ``--zip`` also
writes the single-file package those tools import.

Everything comes from the model's own metadata (:class:`ModelMetadata`). The
description is built with ``bioimageio.spec``'s typed classes, so it is validated as it
is built; then the written package is tested with ``bioimageio.core.test_model`` (the
tools' own check: the test tensors must reproduce, and inference must run at the sizes
the axes allow) unless ``--no-test`` is given. Nothing is fetched from the network.

How the service's steps map onto the spec:

- **Normalisation** (``service.preprocess.normalize``): per image and per channel, the
  ``low``-th percentile → 0 and the ``high``-th → 1, then clipped. In the spec that is
  ``scale_range`` over the axes ``(y, x)`` (per sample and channel) followed by ``clip``.
  Differences, all outside the typical case: bioimage.io interpolates percentiles linearly,
  the service takes the lower neighbour (equal unless the percentile rank falls between two
  different pixel values); ``scale_range`` divides by ``high − low + eps`` (eps 1e-10 here,
  negligible for ranges above ~1e-6); the service maps NaN/±inf to the limits first and
  percentiles float images of more than 4 M pixels on a regular subsample.
- **Nucleus scale and colour**: the service turns colour into grey (BT.601) and resizes each
  image so its nuclei come out ``nucleus_diameter`` px across. The spec has no such steps;
  the package takes one channel at the model's scale, and the documentation says so.
- **Tiling**: the spec's ``halo`` on the outputs is the service's context margin: tools that
  tile crop that much from each tile's edges. They also pad the whole image by the halo
  (bioimageio.core: mirror) *before* normalising, where the service pads nothing: the
  percentiles shift slightly and the border sees mirrored context. On the 105 DSB
  validation images (own scale) masks agree on 99.80 % of pixels (min 99.08 %), foreground
  Dice vs the truth 0.918 against the service's 0.919.
- **Output**: ``sigmoid`` postprocessing turns the logits into the probabilities the service
  thresholds; the channels keep the model's class names.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import tifffile
from google.protobuf.message import DecodeError
from pydantic import ValidationError

from service import imaging
from service.model_metadata import MetadataError, ModelMetadata
from service.objects import Surroundings, label_prediction, params_for_model
from service.postprocess import mask, overlay
from service.preprocess import normalize, to_channels
from service.segment import apply_activation, model_input_grey

if TYPE_CHECKING:
    from bioimageio.spec import ValidationSummary

#: A real micrograph for the test tensors and the cover: DSB 2018 stage-1 training image
#: c7d54676… (CC0, BBBC038), 256², 52 nuclei of median diameter 20.0 px (the bundled model's
#: scale), from a series held out of the bundled model's training (its validation split).
SAMPLE_IMAGE = Path(__file__).parent / "samples" / "dsb2018-c7d54676.png"

#: Edge of the largest test tensor: a bigger image is centre-cropped to this (keeps the
#: package and the consumers' test runs small).
MAX_TEST_EDGE = 512

#: ``scale_range`` divides by ``high - low + EPS``; the service divides by ``high - low``.
EPS = 1e-10

INPUT_ID = "image"
OUTPUT_ID = "probabilities"

WEIGHTS = "weights.onnx"
TEST_INPUT = "test_input.npy"
TEST_OUTPUT = "test_output.npy"
SAMPLE_INPUT = "sample_input.tif"
SAMPLE_OUTPUT = "sample_output.tif"
COVER = "cover.png"
DOCUMENTATION = "documentation.md"


class PackageError(ValueError):
    """The model or the image cannot be packaged as asked, or the package failed its test."""


@dataclass(frozen=True)
class OnnxFacts:
    """What the package needs from the ONNX file besides its metadata."""

    metadata: ModelMetadata
    opset: int
    input_name: str
    output_name: str


def read_onnx(path: Path) -> OnnxFacts:
    try:
        proto = onnx.load(str(path), load_external_data=False)
        metadata = ModelMetadata.from_onnx_props({p.key: p.value for p in proto.metadata_props})
    except (OSError, MetadataError, DecodeError) as exc:
        raise PackageError(f"{path}: not a model written by `python -m model_export export` ({exc})") from exc
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets:
        raise PackageError(f"{path}: no default-domain opset in the ONNX file")
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise PackageError(
            f"{path}: expected one input and one output, got "
            f"{len(proto.graph.input)} and {len(proto.graph.output)}"
        )
    return OnnxFacts(metadata, opsets[0], proto.graph.input[0].name, proto.graph.output[0].name)


def load_test_input(path: Path, metadata: ModelMetadata) -> np.ndarray:
    """The test input ``(1, C, H, W)`` float32 of raw intensities: the image's channels as
    the model takes them, centre-cropped to multiples of ``size_divisor`` (at most
    :data:`MAX_TEST_EDGE`)."""
    image = imaging.decode(Path(path).read_bytes(), max_pixels=1 << 30)
    image = to_channels(image, metadata.in_channels)
    height, width = image.shape[:2]
    d = metadata.size_divisor
    h, w = (min(n, MAX_TEST_EDGE) // d * d for n in (height, width))
    if h < min_size(metadata) or w < min_size(metadata):
        raise PackageError(
            f"{path}: {height}×{width} px is too small for a test input; need at least "
            f"{min_size(metadata)} px per side"
        )
    top, left = (height - h) // 2, (width - w) // 2
    crop = image[top : top + h, left : left + w]
    planes = crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1)
    return np.ascontiguousarray(planes[None], dtype=np.float32)


def min_size(metadata: ModelMetadata) -> int:
    """Smallest input edge the package allows: one multiple of ``size_divisor`` more than
    both halos, so a tile always keeps some valid centre."""
    d = metadata.size_divisor
    return (2 * halo(metadata) // d + 1) * d


def halo(metadata: ModelMetadata) -> int:
    return metadata.context_margin


def expected_output(model: Path, x: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """``(1, C, H, W)`` raw test input → ``(1, K, H, W)`` float32 probabilities, computed the
    service's way: :func:`service.preprocess.normalize`, ONNX Runtime, the model's activation."""
    planes = x[0]
    image = planes[0] if planes.shape[0] == 1 else planes.transpose(1, 2, 0)
    normalised = normalize(image, metadata.normalization)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: normalised[None]})[0]
    return apply_activation(raw[0], metadata)[None].astype(np.float32)


def cover(x: np.ndarray, probabilities: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """A 2:1 RGB cover ``(2H, 4W, 3) uint8``: the input beside the nuclei the service would
    outline on it (threshold, then the model's own way of splitting touching nuclei)."""
    planes = x[0]
    image = planes[0] if planes.shape[0] == 1 else planes.transpose(1, 2, 0)
    probs = probabilities[0]
    binary = mask(probs[metadata.foreground_channel], metadata.threshold)
    params = params_for_model(metadata)
    around = None
    if params.min_snr > 0:  # the contrast cut reads the model's input, as the service gives it
        around = Surroundings(model_input_grey(normalize(image, metadata.normalization)), binary > 0)
    labels = label_prediction(binary, probs, params, around)
    panels = np.concatenate([imaging.to_display_rgb(image), overlay(image, binary, labels=labels)], axis=1)
    return cv2.resize(panels, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def documentation(facts: OnnxFacts, test_shape: tuple[int, ...]) -> str:
    """The package's ``documentation.md``: what goes in, what comes out, how to use it."""
    m = facts.metadata
    norm = m.normalization
    arch = m.architecture
    training = m.training
    data = training.get("data", {})
    centre = m.center_channel
    channels = ", ".join(f"{i} `{name}`" for i, name in enumerate(m.class_names))
    parts = [
        f"# {m.name} {m.version}",
        m.description,
        "Segments cell nuclei in 2-D fluorescence micrographs (DAPI, Hoechst and similar stains): a "
        "per-pixel foreground probability"
        + (" and a nucleus-centre map." if centre is not None else ".")
        + " Packaged from the ONNX model of the U-Net segmentation service, whose own pipeline adds "
        "nucleus-size estimation, tiling and object splitting around the same network.",
        f"## Input `{INPUT_ID}`",
        f"float32 `(batch, channel, y, x)`, {m.in_channels} channel(s) of raw intensities (8-bit, 16-bit "
        "or float, any range). For a colour or multi-channel image, pass the nuclear channel. `y` and `x` "
        f"must be multiples of {m.size_divisor} (the network pools by {m.size_divisor}) and at least "
        f"{min_size(m)}: pad smaller images.",
    ]
    if m.nucleus_diameter:
        parts.append(
            f"**Nucleus scale.** The model was trained on nuclei about **{m.nucleus_diameter:g} px** across "
            "(median equivalent diameter). Resize your image to that scale first (Fiji: *Image > Scale*), "
            f"e.g. by {m.nucleus_diameter / 10:g}x for nuclei 10 px across. The project's service estimates "
            "each image's nucleus size and resizes it; tools running this package do not."
        )
    parts += [
        f"**Preprocessing** (in `rdf.yaml`; the tools apply it): per image and channel, percentile "
        f"{norm.low:g} of the intensities maps to 0 and percentile {norm.high:g} to 1 (`scale_range` over "
        f"`y, x`), then values are clipped to [{norm.clip[0]:g}, {norm.clip[1]:g}] (`clip`). That is the "
        "service's normalisation, except that bioimage.io interpolates percentiles linearly where the "
        "service takes the lower neighbour (the same value unless the percentile falls between two "
        "different intensities), and NaN/inf pixels are not replaced. Measured on the 541 DSB 2018 "
        "fluorescence images: 58 get different percentiles, a normalised pixel moves by at most 0.032; "
        "with model 2.0.0 on the five most affected images the foreground probability moves by at most "
        "0.049 and the masks agree on at least 99.988 % of the pixels.",
        "Tools that pad the image by the halo before normalising (bioimageio.core mirrors it) shift "
        "the percentiles slightly and give the image border mirrored context, where the service pads "
        "nothing: on the 105 DSB 2018 validation images, masks agree with the service's on 99.80 % of the "
        "pixels (at least 99.08 %), foreground Dice against the truth 0.918 vs 0.919.",
        f"## Output `{OUTPUT_ID}`",
        "float32 `(batch, channel, y, x)`, the input's `y, x`, values in [0, 1]: the `sigmoid` of the "
        f"network's logits. Channels: {channels}. Channel {m.foreground_channel} is the foreground "
        f"(nucleus) probability; threshold it at **{m.threshold:g}** for a mask.",
    ]
    if centre is not None:
        parts.append(
            f"Channel {centre} is the nucleus-centre map: at each pixel of a nucleus, its distance to the "
            "edge of its own nucleus divided by that nucleus' largest such distance (1 at the centre, 0 at "
            "the edge). Its peaks give one seed per nucleus for splitting touching nuclei."
        )
    parts += [
        "**Objects.** The service splits touching nuclei by a watershed of the thresholded mask, seeded "
        f"at the peaks of its distance transform (its default here: `{m.objects.get('method', '')}`) or "
        "of the centre map; Fiji's *Binary > Watershed* on the mask is the same idea (not measured "
        "against the service).",
        f"**Tiling.** Receptive field {m.receptive_field} px. Tiled outputs match a whole-image pass once "
        f"{m.context_margin} px are cropped from each tile side (`halo`, measured at export). The service "
        f"uses tiles of up to {m.tile_size} px overlapping by {m.tile_overlap} px.",
        "## Weights",
        f"ONNX, opset {facts.opset}, {m.precision}, one self-contained file (graph input "
        f"`{facts.input_name}`, output `{facts.output_name}`: logits). U-Net of depth {arch.get('depth')}, "
        f"base width {arch.get('base_channels')}, {arch.get('parameters', 0):,} parameters, "
        f"{arch.get('flops_per_pixel', 0):,} FLOP per pixel.",
        "## Training",
        f"Data: {data.get('kind', 'not recorded')}"
        + (f" ({data['licence']})" if data.get("licence") else "")
        + f". {training.get('steps')} of {training.get('total_steps')} steps (best checkpoint by "
        "validation loss).",
        "## Validation",
        f"Foreground Dice {training.get('val_dice') or float('nan'):.3f} on the training run's validation "
        "crops. Object F1, Dice and DSB mAP on held-out image series, per series and against a classical "
        "baseline, are in the project's model card (`models/README.md`); they reproduce with `python -m "
        "model_export evaluate --model MODEL.onnx --dsb stage1_train --subset val --baseline otsu`.",
        "## Test tensors",
        f"`{TEST_INPUT}` {tuple(test_shape)}: a real fluorescence micrograph, raw intensities. "
        f"`{TEST_OUTPUT}`: what ONNX Runtime computes from it after the service's own normalisation. "
        f"As TIFF for viewing: `{SAMPLE_INPUT}`, `{SAMPLE_OUTPUT}`.",
        "## Limits",
        "Fluorescence only (bright nuclei on a dark background): bright-field and H&E images are out of "
        "scope. One 2-D plane at a time. Tiny touching nuclei (radius 4 px or less at the model's scale) "
        "tend to merge.",
    ]
    return "\n\n".join(parts) + "\n"


def build(
    model: Path,
    out: Path,
    *,
    image: Path = SAMPLE_IMAGE,
    authors: tuple[str, ...] = ("unet-segmentation-service maintainers",),
    licence: str = "Apache-2.0",
    zip_path: Path | None = None,
) -> Path:
    """Write the package for ``model`` into ``out``; returns the path of ``out/rdf.yaml``."""
    # Imported here: the spec library is an optional extra, and slow to import.
    try:
        from bioimageio.spec import ValidationContext, save_bioimageio_package, save_bioimageio_yaml_only
        from bioimageio.spec.model import v0_5 as spec
    except ImportError as exc:
        raise PackageError(f"{exc}: install the bioimageio extra (pip install -e '.[bioimageio]')") from exc

    model, out = Path(model), Path(out)
    try:
        licence_id = spec.LicenseId(licence)
    except ValidationError as exc:
        raise PackageError(f"{licence!r} is not an SPDX licence identifier (Apache-2.0, MIT, ...)") from exc
    facts = read_onnx(model)
    m = facts.metadata
    if m.output_kind == "logits" and m.activation != "sigmoid":
        raise PackageError(f"activation {m.activation!r} is not packaged (only sigmoid)")

    x = load_test_input(image, m)
    y = expected_output(model, x, m)

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / WEIGHTS)
    np.save(out / TEST_INPUT, x)
    np.save(out / TEST_OUTPUT, y)
    tifffile.imwrite(out / SAMPLE_INPUT, x[0])
    tifffile.imwrite(out / SAMPLE_OUTPUT, y[0])
    cover_bgr = cv2.cvtColor(cover(x, y, m), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(out / COVER), cover_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (out / DOCUMENTATION).write_text(documentation(facts, x.shape), encoding="utf-8")

    def file(name: str) -> spec.FileDescr:
        return spec.FileDescr(source=Path(name), sha256=spec.Sha256(_sha256(out / name)))

    d = m.size_divisor
    in_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(
            channel_names=[
                spec.Identifier("nuclei" if m.in_channels == 1 else f"channel{i}")
                for i in range(m.in_channels)
            ]
        ),
        *(
            spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=min_size(m), step=d))
            for a in ("y", "x")
        ),
    ]

    def output_space_axis(a: str) -> spec.SpaceOutputAxis | spec.SpaceOutputAxisWithHalo:
        size = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a))
        if halo(m):
            return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=size, halo=halo(m))
        return spec.SpaceOutputAxis(id=spec.AxisId(a), size=size)

    out_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in m.class_names]),
        output_space_axis("y"),
        output_space_axis("x"),
    ]
    norm = m.normalization
    preprocessing = [
        spec.ScaleRangeDescr(
            kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId("y"), spec.AxisId("x")],
                min_percentile=norm.low,
                max_percentile=norm.high,
                eps=EPS,
            )
        ),
        spec.ClipDescr(kwargs=spec.ClipKwargs(min=norm.clip[0], max=norm.clip[1])),
    ]
    postprocessing = [spec.SigmoidDescr()] if m.output_kind == "logits" else []
    data = m.training.get("data", {})
    cite = [
        spec.CiteEntry(
            text="Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical "
            "Image Segmentation. MICCAI 2015.",
            doi=spec.Doi("10.1007/978-3-319-24574-4_28"),
        )
    ]
    if str(data.get("kind", "")).startswith("dsb2018"):
        cite.append(
            spec.CiteEntry(
                text="Caicedo J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data "
                "Science Bowl. Nature Methods 16, 1247–1253 (2019).",
                doi=spec.Doi("10.1038/s41592-019-0612-7"),
            )
        )

    # The files are already in `out`: relative sources resolve against it, and their
    # hashes and the test tensors' shapes are checked while the description is built.
    # No URL anywhere: a URL would be fetched to check it, and tests run offline.
    with ValidationContext(root=out, perform_io_checks=True):
        descr = spec.ModelDescr(
            name=m.name,
            version=m.version,
            description=(m.description or "U-Net for fluorescence nuclei")[:1024],
            authors=[spec.Author(name=name) for name in authors],
            cite=cite,
            license=licence_id,
            covers=[file(COVER)],
            documentation=file(DOCUMENTATION),
            tags=[
                "unet",
                "2d",
                "fluorescence-light-microscopy",
                "nuclei",
                "semantic-segmentation",
                "instance-segmentation",
                "onnx",
            ],
            inputs=[
                spec.InputTensorDescr(
                    id=spec.TensorId(INPUT_ID),
                    description="raw fluorescence intensities of the nuclear channel, nuclei about "
                    f"{m.nucleus_diameter or '?'} px across",
                    axes=in_axes,
                    test_tensor=file(TEST_INPUT),
                    sample_tensor=file(SAMPLE_INPUT),
                    preprocessing=preprocessing,
                )
            ],
            outputs=[
                spec.OutputTensorDescr(
                    id=spec.TensorId(OUTPUT_ID),
                    description="per-channel probabilities: "
                    + ", ".join(f"{i} {n}" for i, n in enumerate(m.class_names))
                    + f"; threshold channel {m.foreground_channel} at {m.threshold:g}",
                    axes=out_axes,
                    test_tensor=file(TEST_OUTPUT),
                    sample_tensor=file(SAMPLE_OUTPUT),
                    data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                    postprocessing=postprocessing,
                )
            ],
            weights=spec.WeightsDescr(
                onnx=spec.OnnxWeightsDescr(
                    source=Path(WEIGHTS),
                    sha256=spec.Sha256(_sha256(out / WEIGHTS)),
                    opset_version=facts.opset,
                )
            ),
            config=spec.Config(
                bioimageio=spec.BioimageioConfig(
                    architecture_type="U-Net",
                    modality="fluorescence light microscopy",
                    target_structure=["cell nuclei"],
                    task="semantic segmentation (foreground and nucleus-centre maps)",
                    model_parameter_count=m.architecture.get("parameters"),
                )
            ),
        )
    rdf = out / "rdf.yaml"
    save_bioimageio_yaml_only(descr, rdf)
    if zip_path is not None:
        save_bioimageio_package(descr, output_path=Path(zip_path))
    return rdf


def run_core_test(rdf: Path) -> ValidationSummary:
    """Run ``bioimageio.core``'s own model test on a written package, on the CPU.

    Returns the summary; its ``status`` is ``"passed"`` when the description is valid, the
    test outputs reproduce from the test inputs within the spec's tolerance, and inference
    runs for batch sizes 1 and 2 at the three smallest sizes the axes allow.
    """
    from bioimageio.core import test_model

    # The CPU provider by name: onnxruntime-gpu lists CUDA even without its libraries.
    return test_model(Path(rdf), devices=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m model_export bioimageio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file written by export")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the package into")
    parser.add_argument("--zip", type=Path, default=None, help="also write the package as one .zip file")
    parser.add_argument(
        "--image",
        type=Path,
        default=SAMPLE_IMAGE,
        help="a micrograph with nuclei at the model's scale, for the test tensors and the cover "
        "(default: a DSB 2018 image bundled with the project)",
    )
    parser.add_argument("--author", action="append", default=None, help="an author's name (repeatable)")
    parser.add_argument("--license", default="Apache-2.0", help="SPDX licence identifier of the weights")
    parser.add_argument(
        "--no-test", action="store_true", help="skip bioimageio.core's test of the written package"
    )
    args = parser.parse_args(argv)
    try:
        rdf = build(
            args.model,
            args.out,
            image=args.image,
            authors=tuple(args.author or ("unet-segmentation-service maintainers",)),
            licence=args.license,
            zip_path=args.zip,
        )
    except (PackageError, ValidationError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {rdf}" + (f" and {args.zip}" if args.zip else ""))
    if not args.no_test:
        summary = run_core_test(rdf)
        if summary.status != "passed":
            raise SystemExit(f"error: {rdf}: bioimageio.core's test {summary.status}:\n{summary.format()}")
        print(f"bioimageio.core test {summary.status}: the test outputs reproduce")
    return rdf
