"""Leica LIF files for tests, written as LAS X lays them out (no library writes LIF).

The layout follows "Leica Image File Formats — LIF, XLEF, XLLF, LOF" 3.2 and a LAS X 3.5 file
(TCS SP8) read while writing this: a binary header holding the project's XML (UTF-16), then one
memory block per element, each ``0x70, length, 0x2A, size (uint64), 0x2A, id length`` + the id +
the raw pixels. In the XML each image is an ``Element`` whose ``ImageDescription`` gives its
dimensions (``DimID`` 1 = X, 2 = Y, 3 = Z, 4 = T, 5 = λ, 10 = M ..., each ``NumberOfElements``,
``Length`` in metres from the first to the last pixel's centre, and ``BytesInc``, its stride) and
its channels (``Resolution`` bits, ``LUTName``, ``BytesInc``: the channel's offset). Channels are
the stride the dimensions skip: the pixels of ``TZCYX`` are stored as that C-order array, the
channels' offsets ``c × X × Y × bytes``; colour is ``YXS`` with three channels stored blue first.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import numpy as np

#: Leica's dimension ids by the letters tests use.
DIM_IDS = {"X": 1, "Y": 2, "Z": 3, "T": 4, "λ": 5, "M": 10}


@dataclass
class Image:
    """One image of a project: ``pixels`` with ``axes`` outermost first (letters of
    :data:`DIM_IDS`, plus ``C`` for channels and ``S`` for colour samples, e.g. ``TZCYX``, ``YXS``)."""

    name: str
    pixels: np.ndarray
    axes: str = "YX"
    luts: tuple[str, ...] = ()
    pixel_um: float | None = 0.65
    z_um: float | None = None
    bits: int | None = None  # Resolution (12 for a 12-bit camera in uint16); the dtype's by default
    channel_bits: tuple[int, ...] = ()  # per channel, where they differ (Resolution only)
    folder: str | None = None  # the image lies in this folder of the project
    #: a widefield camera's channel set-up, one ``(LUT, UserDefName, FluoCubeName)`` per channel, as
    #: LAS X writes it in the image's HardwareSetting attachment (DMi8, THUNDER); none: a confocal's
    widefield: tuple[tuple[str, str, str], ...] = ()


def lif_bytes(images: list[Image], project: str = "Project", version: int = 2) -> bytes:
    """A LIF project holding ``images`` (in this order, folders as named)."""
    blocks: list[tuple[str, bytes]] = [("MemBlock_0", b"")]
    children: dict[str | None, list[str]] = {}
    for k, image in enumerate(images, start=1):
        block_id = f"MemBlock_{k}"
        data = _stored(image)
        blocks.append((block_id, data))
        children.setdefault(image.folder, []).append(_image_element(image, block_id, len(data)))
    top = children.pop(None, [])
    for n, (folder, elements) in enumerate(children.items()):
        blocks.append((f"MemBlock_f{n}", b""))
        top.append(
            f'<Element Name={quoteattr(folder)} Visibility="1" CopyOption="1" '
            f'UniqueID="{_uid(project, folder)}"><Data><Collection ChildTypeTest="AcceptAll"/></Data>'
            f'<Memory Size="0" MemoryBlockID="MemBlock_f{n}"/>'
            f'<Children>{"".join(elements)}</Children></Element>'
        )
    xml = (
        f'<LMSDataContainerHeader Version="{version}"><Element Name={quoteattr(project)} Visibility="1" '
        f'CopyOption="1" UniqueID="{_uid(project)}"><Data><Experiment Path="C:\\Users\\TCS-User\\Documents" '
        f'IsSavedFlag="0"/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/>'
        f'<Children>{"".join(top)}</Children></Element></LMSDataContainerHeader>'
    )
    out = bytearray(struct.pack("<IIBI", 0x70, 2 * len(xml) + 5, 0x2A, len(xml)))
    out += xml.encode("utf-16-le")
    size_format = "Q" if version == 2 else "I"
    for block_id, data in blocks:
        out += struct.pack(f"<IIB{size_format}BI", 0x70, 0, 0x2A, len(data), 0x2A, len(block_id))
        out += block_id.encode("utf-16-le") + data
    return bytes(out)


def _uid(*names: str) -> uuid.UUID:
    """LAS X gives every element a UUID; derived from the names here, so the same files come out
    byte for byte (the fuzz corpus is reproducible)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(names))


def _stored(image: Image) -> bytes:
    pixels = image.pixels
    if "S" in image.axes:
        pixels = pixels[..., ::-1]  # colour stored blue first
    return np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()


def _image_element(image: Image, block_id: str, size: int) -> str:
    pixels, axes = image.pixels, image.axes
    assert pixels.ndim == len(axes), (pixels.shape, axes)
    itemsize = pixels.dtype.itemsize
    strides = {a: int(np.prod(pixels.shape[k + 1 :], dtype=np.int64)) * itemsize for k, a in enumerate(axes)}
    shape = dict(zip(axes, pixels.shape, strict=True))
    channel_count = shape.get("S", shape.get("C", 1))
    channel_stride = strides["S"] if "S" in axes else strides.get("C", 0)
    kind = "1" if pixels.dtype.kind == "f" else "0"
    channels = []
    for c in range(channel_count):
        bits = image.channel_bits[c] if image.channel_bits else image.bits or 8 * itemsize
        if "S" in axes:
            tag, lut = 3 - c, ("Blue", "Green", "Red")[c]  # stored blue first: tag 3 = blue
        else:
            tag, lut = 0, image.luts[c] if c < len(image.luts) else "Gray"
        channels.append(
            f'<ChannelDescription DataType="{kind}" ChannelTag="{tag}" Resolution="{bits}" '
            f'NameOfMeasuredQuantity="" Min="0.000000e+000" Max="{2.0 ** bits - 1:e}" Unit="" '
            f'LUTName="{lut}" IsLUTInverted="0" BytesInc="{c * channel_stride}" BitInc="0"/>'
        )
    dimensions = []
    for letter in [a for a in axes if a not in "CS"][::-1]:  # X first, as LAS X lists them
        count = shape[letter]
        step_um = {"X": image.pixel_um, "Y": image.pixel_um, "Z": image.z_um}.get(letter)
        length = step_um * 1e-6 * (count - 1) if step_um else 0.0
        dimensions.append(
            f'<DimensionDescription DimID="{DIM_IDS[letter]}" NumberOfElements="{count}" '
            f'Origin="0.000000e+000" Length="{length:e}" Unit="{"m" if step_um else ""}" BitInc="0" '
            f'BytesInc="{strides[letter]}"/>'
        )
    hardware = ""
    if image.widefield:
        infos = "".join(
            f'<WideFieldChannelInfo LUT={quoteattr(lut)} UserDefName={quoteattr(dye)} '
            f'FluoCubeName={quoteattr(cube)} ContrastingMethodName="FLUO" ExposureTime="0.05"/>'
            for lut, dye, cube in image.widefield
        )
        hardware = (
            '<Attachment Name="HardwareSetting" Application="LAS AF" Software="LAS X 3.7" '
            'DataSourceTypeName="Camera"><ATLCameraSettingDefinition ObjectiveName="HC PL APO 40x/0.95 DRY">'
            f'<WideFieldChannelConfigurator CameraName="DFC9000GTC">{infos}</WideFieldChannelConfigurator>'
            '</ATLCameraSettingDefinition></Attachment>'
        )
    return (
        f'<Element Name={quoteattr(image.name)} Visibility="1" CopyOption="1" UniqueID="{_uid(image.name)}">'
        f'<Data><Image TextDescription=""><ImageDescription><Channels>{"".join(channels)}</Channels>'
        f'<Dimensions>{"".join(dimensions)}</Dimensions></ImageDescription>{hardware}</Image></Data>'
        f'<Memory Size="{size}" MemoryBlockID="{block_id}"/><Children/></Element>'
    )
