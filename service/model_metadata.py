"""The ONNX model's self-description: the contract between export and service.

``model_export.export`` writes a :class:`ModelMetadata` into the ONNX file's
``metadata_props``; the service reads it back and needs no other configuration.
Each field is stored under its own key (``unet.<field>``) as JSON, so the file stays
readable in tools such as Netron.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

PREFIX = "unet."


class MetadataError(ValueError):
    """The ONNX file lacks a usable description (missing or invalid keys)."""


class Normalization(BaseModel):
    """Per-image, per-channel percentile scaling (see ``service.preprocess``)."""

    method: Literal["percentile"] = "percentile"
    low: float = Field(1.0, ge=0, lt=100, description="percentile mapped to 0")
    high: float = Field(99.8, gt=0, le=100, description="percentile mapped to 1")
    clip: tuple[float, float] = Field((-1.0, 4.0), description="output range after scaling")


class ModelMetadata(BaseModel):
    """Everything the service needs to run a model correctly."""

    name: str
    version: str
    description: str = ""
    in_channels: int = Field(ge=1, le=4)
    classes: int = Field(ge=1, description="output channels")
    class_names: list[str]
    output_kind: Literal["logits", "probabilities"] = "logits"
    activation: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="how to turn outputs into probabilities (per channel / across channels)"
    )
    foreground_channel: int = Field(0, ge=0, description="output channel holding the foreground")
    objects: dict = Field(
        default_factory=lambda: {"method": "connected_components"},
        description="how outputs become objects (e.g. distance-transform watershed on foreground)",
    )
    normalization: Normalization = Normalization()
    size_divisor: int = Field(16, ge=1, description="height/width of an input must be multiples of this")
    receptive_field: int = Field(ge=1, description="theoretical receptive field, pixels")
    context_margin: int = Field(ge=0, description="recommended context halo per tile side, pixels")
    border: int | None = Field(
        None,
        ge=0,
        description="mirror padding at the image border, pixels (U-Net paper); None → context_margin",
    )
    tile_size: int = Field(ge=16, description="recommended tile edge, pixels")
    tile_overlap: int = Field(ge=0, description="recommended overlap between neighbouring tiles, pixels")
    threshold: float = Field(0.5, gt=0, lt=1, description="decision threshold on foreground probability")
    nucleus_diameter: float | None = Field(
        None,
        gt=0,
        description="median nucleus equivalent diameter (px) the model was trained at; the service "
        "resizes each image so its nuclei come out this size. None: the model is used at the image's scale",
    )
    architecture: dict = Field(default_factory=dict, description="depth, base_channels, fusion, upsample")
    training: dict = Field(default_factory=dict, description="command, data, metrics")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    quantization: dict = Field(
        default_factory=dict,
        description="int8 models: how they were quantised and calibrated (model_export.quantize); else empty",
    )

    @property
    def center_channel(self) -> int | None:
        """The output channel of the nucleus-centre map (class name ``center``), if any."""
        return self.class_names.index("center") if "center" in self.class_names else None

    def to_onnx_props(self) -> dict[str, str]:
        return {PREFIX + key: json.dumps(value) for key, value in self.model_dump(mode="json").items()}

    @classmethod
    def from_onnx_props(cls, props: dict[str, str]) -> ModelMetadata:
        raw = {}
        for key, value in props.items():
            if not key.startswith(PREFIX):
                continue
            try:
                raw[key[len(PREFIX):]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"metadata key {key!r} is not valid JSON: {exc}") from exc
        if not raw:
            raise MetadataError(
                f"the ONNX file has no '{PREFIX}*' metadata; export it with `python -m model_export export`"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise MetadataError(f"invalid model metadata: {exc}") from exc
