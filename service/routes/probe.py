"""``POST /probe``: what an image file holds — channels, planes, pixel size — before segmenting it.

The web page calls it when a file is chosen, to offer a channel and plane picker; scripts call it
to learn which ``channel=`` / ``z=`` / ``t=`` a file needs. No model is needed, so it answers
while the model is still loading.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from service import microscopy
from service.errors import problem_responses
from service.routes import stored as stored_uploads
from service.routes.deps import Runtime, get_runtime, only_query_params, require_api_key
from service.routes.segment import IMAGE_BODY, as_problems, read_single_upload, upload_pixels

router = APIRouter(tags=["segmentation"], dependencies=[Depends(require_api_key)])


class ChannelInfo(BaseModel):
    index: int
    name: str | None = Field(description="from the OME/ImageJ metadata; red/green/blue for colour")


class PixelSizeInfo(BaseModel):
    x: float = Field(description="µm per pixel along x (columns)")
    y: float = Field(description="µm per pixel along y (rows)")
    source: str = Field(description="ome | imagej | lsm | metaseries | micro-manager | svs | fei | tiff | "
                        "czi | lif | nd2 | oib | zvi | dv | ims | request")
    z: float | None = Field(
        default=None,
        description="µm between z-slices, where the file gives it (OME, ImageJ, LSM, Micro-Manager, CZI, "
                    "LIF, ND2, OIB, ZVI, DeltaVision, Imaris)",
    )

    @model_serializer(mode="wrap")
    def _z_only_when_known(self, handler: SerializerFunctionWrapHandler):  # noqa: ANN202
        # A 2-D file's answer stays as it was: no "z": null. No return annotation: pydantic would
        # take it for the schema (a bare object), where without one the fields stay documented.
        out = handler(self)
        if out.get("z") is None:
            out.pop("z", None)
        return out


class SeriesInfo(BaseModel):
    index: int = Field(description="the image described, 0-based (series= on /segment)")
    count: int = Field(description="images in the file: an OME-TIFF's Images, a CZI's scenes, a LIF "
                       "project's images; 1 for most")
    names: list[str | None] = Field(description="their names where the file gives them (empty for one)")
    about: list[str | None] = Field(
        default_factory=list,
        description="what each holds, to tell them apart: `1024×1024 · 2 ch · 30 z` (empty for one)",
    )


class ProbeResult(BaseModel):
    format: str = Field(description="OME-TIFF, ImageJ TIFF, Zeiss LSM, MetaMorph TIFF, Micro-Manager TIFF, "
                        "Aperio SVS, FEI TIFF, Akoya QPTIFF, TIFF, CZI, LIF, ND2, OIB, ZVI, DeltaVision, "
                        "Imaris, PNG, JPEG, BMP")
    width: int
    height: int
    dtype: str
    axes: str = Field(description="dimensions in tifffile letters, singletons dropped: TZCYX, YXS...")
    shape: list[int]
    channels: list[ChannelInfo]
    planes: dict[str, int] = Field(description="sizes of the plane axes with more than one plane: Z, T")
    rgb: bool = Field(description="the channels are a colour image's red, green, blue")
    grey_rgb: bool = Field(description="... and they are equal: grey saved as colour, no choice needed")
    signal_channel: int | None = Field(
        description="... or only this channel holds signal, the other two empty (one stain exported in "
        "its colour): it is read when no channel= is given, no choice needed"
    )
    pixel_size_um: PixelSizeInfo | None
    series: SeriesInfo
    required: list[str] = Field(
        description="query options POST /segment needs for this file (channel, z, t); z can be "
        "replaced by project=max"
    )
    warnings: list[str]


def probe_result(layout: microscopy.Layout, model_channels: int) -> dict[str, Any]:
    required = []
    if layout.needs_channel and not (layout.rgb and model_channels == 3):
        required.append("channel")
    required += [axis.lower() for axis in microscopy.PLANE_AXES if axis in layout.planes]
    return {**layout.describe(), "required": required}


@router.post(
    "/probe",
    summary="What an image holds: channels, planes, pixel size",
    response_model=ProbeResult,
    responses={**problem_responses(400, 401, 413, 415, 422, 503), **stored_uploads.UNKNOWN_UPLOAD_RESPONSE},
    openapi_extra={"requestBody": IMAGE_BODY},
)
async def probe(
    request: Request,
    runtime: Runtime = Depends(get_runtime),
    series: int | None = Query(
        None, ge=0, description="which image of a file holding several to describe (default: the first)"
    ),
    upload: str | None = stored_uploads.UPLOAD_QUERY,
    _known: None = Depends(only_query_params("series", "upload")),
) -> dict[str, Any]:
    data = await read_single_upload(request, upload)
    settings = runtime.settings
    # PNG/JPEG/BMP and colour TIFFs are decoded to describe them: admitted by their pixels.
    pixels = await upload_pixels(runtime, data)
    async with runtime.admitted(pixels, measure=False, disconnected=request.is_disconnected):
        with as_problems():
            layout = await anyio.to_thread.run_sync(
                microscopy.probe, data, settings.max_pixels, settings.decode_limits(), series
            )
    model_channels = runtime.engine.metadata.in_channels if runtime.engine else 1
    return probe_result(layout, model_channels)
