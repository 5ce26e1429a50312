"""Leica LIF files (a LAS X or LAS AF project as saved) read as uploads: channels, z-slices, time
points, pixel size, and the project's images as ``series=``.

A LIF is one binary file holding a whole session's acquisitions: an XML header describing a tree of
images (folders, positions, "Series003"...) and one raw memory block per image. This module turns
the chosen image into the :class:`~service.microscopy.Layout` and plane reader every other format
has, so the channel, plane and pixel-size rules of :mod:`service.microscopy` apply unchanged.

- **Container**: liffile (C. Gohlke, BSD-3, the author of tifffile and czifile) parses the header,
  the XML and the memory blocks in pure Python, from memory or from a file, and reads one plane
  by its offset: a project of gigabytes costs the plane asked for, not the file.
  :func:`service.structure.check_lif` bounds the header and the memory blocks first. For slide
  and stack jobs by path, :func:`open_stored` says where an image's bytes lie, and
  :mod:`service.slide_files` reads windows from a memory map of them.
- **Images**: every image of the project, in the order of its tree, is a ``series=``, named by
  its path in the project (``Position 1/Series003``); the first is read unless the request says,
  with a notice naming how many there are.
- **Pixel size**: ``DimensionDescription`` X / Y / Z, ``Length / (NumberOfElements - 1)`` in its
  ``Unit`` (metres): Leica's Length spans the first to the last pixel's centre, as liffile's
  coordinates and Bio-Formats read it.
- **Channel names**: a widefield camera's channels by the dye they were set up with
  (``WideFieldChannelInfo/@UserDefName``, else the filter cube: ``DAPI``, ``GFP``), as Bio-Formats
  names them, where LAS X wrote one per channel in the channels' order; otherwise (confocal
  images) each channel's colour table (``LUTName``: ``Blue``, ``Green``, ``Gray``...), what the
  LAS X viewer shows a channel as. Indices always work.
- **What is refused, naming what to do**: a tile scan not yet merged (LAS X's Mosaic Merge makes
  the one image the service reads), wavelength sweeps, rotations, line and XZ scans, FLIM
  histograms, colour beside other channels, channels of different bit depths; a ``.lifext`` or
  an XML project (``.xlef``, ``.xlif``: they name other files to read, which a server never opens
  on an upload's word).
"""

from __future__ import annotations

import contextlib
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType, supported_dtype
from service.microscopy import (
    PLANE_AXES,
    RGB_NAMES,
    Channel,
    Layout,
    PixelSize,
    PlaneReader,
    check_series,
    container_stream,
    first_series_note,
    image_summary,
    series_choices,
    unit_um,
)

#: Leica's dimension ids (``DimensionDescription/@DimID``, "Leica Image File Formats" 3.2) → the
#: letters liffile gives them.
_DIMENSION_IDS = {1: "X", 2: "Y", 3: "Z", 4: "T", 5: "λ", 6: "A", 7: "N", 8: "Q", 9: "Λ", 10: "M", 11: "L"}
#: Those letters → what a refusal calls them; X, Y, Z, T are read, and liffile infers channels (C)
#: and colour samples (S) from the strides.
_DIMENSION_NAMES = {
    "λ": "emission wavelengths (a λ-scan)", "Λ": "excitation wavelengths (a Λ-scan)",
    "A": "rotations", "N": "XT slices", "Q": "T slices", "M": "tiles of a tile scan not yet merged",
    "L": "loops", "H": "TCSPC histogram bins",
}
_READ_AXES = ("C", "Z", "T", "Y", "X", "S")
_ADVICE = {
    "M": "; merge the tile scan in LAS X (Process → Mosaic Merge) and send the merged image",
}

#: Images a refusal lists (a session may hold hundreds; POST /probe with series= describes any one).
_LISTED_IMAGES = 10


def open_planes(
    source: bytes | Path, max_pixels: int, series: int | None = None
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of a LIF (an upload's bytes, or a file) at image ``series`` (0-based among the
    project's images; None: the first, with a notice when there are more) and a reader of its
    planes by coordinates (``{"C": c, "Z": z, "T": t}``, 0 where left out): ``(H, W)`` grey or
    ``(H, W, 3)`` RGB, uint8 / uint16 / float32 as every decoder's (``imaging.supported_dtype``);
    and what closes the file.

    The caller has walked the file with :func:`service.structure.check_lif`.

    Raises:
        UndecodableImage: what liffile cannot parse, an image whose pixels the file lacks.
        UnsupportedImageType: other dimensions, FLIM, mixed bit depths, a ``.lifext``.
        ImageTooLarge: a plane over ``max_pixels``.
        SelectionError: ``series`` is not in the file.
    """
    lif = _open(source)
    try:
        with _other_images_hint(lif):
            layout, read, _stored = _planes(lif, max_pixels, series)
    except BaseException:
        lif.close()
        raise
    return layout, read, lif.close


class Stored(NamedTuple):
    """Where and how an image's pixels lie in the file: a C-order array of ``shape`` (its axes in
    the order stored, outermost first: ``TZCYX``, ``ZYX``, ``YXS``...) of ``dtype`` at byte
    ``offset``; ``bgr``: colour samples stored blue first. ``mappable``: the layout is that plain
    array (LAS X pads colour rows to 4 bytes on some systems: then it is not)."""

    offset: int
    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    bgr: bool
    mappable: bool


def open_stored(path: Path, max_pixels: int, series: int | None = None) -> tuple[Layout, Stored]:
    """The layout of image ``series`` of the LIF at ``path`` and where its pixels lie, for reading
    windows from a memory map of the file (slide and stack jobs by path: a plane of any size
    within ``max_pixels``). The file is closed on return.

    Raises: as :func:`open_planes`.
    """
    lif = _open(path)
    try:
        with _other_images_hint(lif):
            layout, _read, stored = _planes(lif, max_pixels, series)
    finally:
        lif.close()
    return layout, stored


def admitted_pixels(data: bytes, max_pixels: int) -> int:
    """What an upload costs admission before its image is chosen: the largest plane (X × Y) among
    the project's images within ``max_pixels``. A project often holds a merged tile scan beside its
    fields, and the request may choose either; what the chosen image holds is checked when it is
    read (:func:`open_planes`).

    Raises:
        ImageTooLarge: every image's plane is over ``max_pixels``.
        UndecodableImage / UnsupportedImageType: as :func:`open_planes`.
    """
    lif = _open(data)
    try:
        planes = []
        for image in lif.images:
            dimensions = _dimensions(image.xml_element)
            width, height = (dimensions[a].count if a in dimensions else 1 for a in ("X", "Y"))
            planes.append((width * height, width, height))
    finally:
        lif.close()
    if not planes:
        raise UnsupportedImageType("the LIF project holds no image")
    fitting = [p for p in planes if p[0] <= max_pixels]
    if not fitting:
        pixels, width, height = min(planes)
        raise ImageTooLarge(pixels, max_pixels, width, height)
    return max(fitting)[0]


def _open(source: bytes | Path) -> Any:
    """The ``liffile.LifFile`` of a LIF project; anything else liffile opens (a ``.lifext``, an
    XML project naming other files) refused."""
    import liffile  # imported only for LIF files

    try:
        lif = liffile.LifFile(str(source) if isinstance(source, Path) else container_stream(source))
    except Exception as exc:  # noqa: BLE001 - liffile raises struct.error, KeyError, ... on bad bytes
        raise UndecodableImage(f"unreadable LIF: {type(exc).__name__}: {exc}") from exc
    if lif.type != liffile.LifFileType.LIF:
        lif.close()
        raise UnsupportedImageType(f"this is a Leica {lif.type.name} file, not a LIF project; send the .lif")
    return lif


@contextlib.contextmanager
def _other_images_hint(lif: Any) -> Iterator[None]:
    """A refusal of the image asked for (by default the first) lists the project's images when it
    holds others: a λ-scan first in a project of fields would otherwise read as "this file is not
    read", and ``POST /probe`` opens the same first image, so it cannot list them either."""
    try:
        yield
    except UnsupportedImageType as exc:
        images = list(lif.images)
        if len(images) > 1:
            names = tuple(image.path for image in images)
            about = tuple(_summary(image) for image in images)
            listed = "; ".join(f"series={k}: {names[k]} ({about[k] or 'not XY'})"
                               for k in range(min(len(images), _LISTED_IMAGES)))
            more = f"; and {len(images) - _LISTED_IMAGES} more" if len(images) > _LISTED_IMAGES else ""
            raise UnsupportedImageType(
                f"{exc}. The project holds {len(images)} images; choose another with series= "
                f"({listed}{more})",
                choices={"series": series_choices(len(images), names, about)},
            ) from exc
        raise


def _planes(lif: Any, max_pixels: int, series: int | None) -> tuple[Layout, PlaneReader, Stored]:
    images = list(lif.images)
    if not images:
        raise UnsupportedImageType("the LIF project holds no image")
    names = tuple(image.path for image in images)
    about = tuple(_summary(image) for image in images) if len(images) > 1 else ()
    index = check_series(len(images), names, series, about)
    if series is None and about and about[0] is None:
        # LAS X's Mark-and-Find projects begin with the environment's log (temperature, CO₂ over
        # time: no XY image). Without series= the first image that is an XY image is read, and
        # the notice names it; a project without one refuses its first, listing the others.
        index = next((k for k, summary in enumerate(about) if summary not in (None, "FLIM")), 0)
    image = images[index]
    if image.is_flim:
        raise UnsupportedImageType(
            f"image {index} of the LIF ({names[index]}) is a FLIM histogram; export its intensity "
            "image from LAS X"
        )
    dimensions = _dimensions(image.xml_element)
    _check_dimensions(dimensions, names[index])
    channel_types = _channel_types(image.xml_element)
    if len(set(channel_types)) > 1:
        raise UnsupportedImageType(
            f"the LIF image's channels have different bit depths ({', '.join(channel_types)}); "
            "export the channel to segment as a TIFF"
        )
    sizes: dict[str, int] = dict(image.sizes)
    unknown = [axis for axis in sizes if axis not in _READ_AXES]
    # A plane is the two innermost dimensions stored: Y then X. An XZ scan repeated along Y (LAS X's
    # "xzy") also has a Y, outermost, and its planes are XZ sections (a real file read so gave
    # 128×128 planes for a layout of 23 rows).
    innermost = tuple(axis for axis in sizes if axis != "S")[-2:]
    if unknown or innermost != ("Y", "X"):
        raise UnsupportedImageType(
            f"the LIF image {names[index]} has dimensions {''.join(sizes)} (sizes {list(sizes.values())}), "
            "its planes not XY; the service reads XY images and their channels, z-slices, time points "
            "(an XZ or XT scan is not one)"
        )
    height, width = sizes["Y"], sizes["X"]
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    samples = sizes.get("S", 1)
    rgb = samples == 3
    if samples not in (1, 3) or (rgb and sizes.get("C", 1) > 1):
        raise UnsupportedImageType(
            f"the LIF image {names[index]} has {samples} samples per pixel in {sizes.get('C', 1)} "
            "channels; the service reads grey channels, or one colour (RGB) image"
        )
    dtype = np.dtype(image.dtype)
    try:
        block = image.memory_block
    except (KeyError, IndexError) as exc:
        raise UndecodableImage(
            f"truncated LIF: image {names[index]} has no pixel data in the file ({exc})"
        ) from exc
    needed = math.prod(sizes.values()) * dtype.itemsize
    if needed > block.size:
        raise UndecodableImage(
            f"truncated LIF: image {names[index]} needs {needed:,} bytes, its memory block holds "
            f"{block.size:,}"
        )

    notes: list[str] = []
    if len(images) > 1 and series is None:
        notes.append(first_series_note(len(images), "images", names[0]) if index == 0 else
                     f"the file holds {len(images)} images; the first XY image, {names[index]} "
                     f"(series={index}), is segmented: series= chooses another")
    pixel_size = _pixel_size(dimensions)
    if pixel_size is None:
        notes.append("the LIF does not give its pixel size: sizes are in pixels")
    if rgb:
        channels = tuple(Channel(i, n) for i, n in enumerate(RGB_NAMES))
    else:
        channel_names = _channel_names(image.xml_element)
        channels = tuple(
            Channel(c, channel_names[c] if c < len(channel_names) else None) for c in range(sizes.get("C", 1))
        )
    lead = [a for a in ("T", "Z", "C") if sizes.get(a, 1) > 1]
    axes = "".join(lead) + "YX" + ("S" if rgb else "")
    shape = tuple(sizes[a] for a in lead) + (height, width) + ((3,) if rgb else ())
    present = [a for a in ("C", "Z", "T") if a in sizes]

    def read(coords: dict[str, int]) -> np.ndarray:
        plane = image.frame(**{a: int(coords.get(a, 0)) for a in present})
        # As every decoder's planes: uint8 / uint16 / float32 (LAS X's float16 of processed images,
        # 32-bit counts), which the normalisation and the OME-TIFF cuts take.
        return supported_dtype(plane, "LIF")

    layout = Layout(
        format="LIF",
        width=width,
        height=height,
        dtype=str(dtype),
        axes=axes,
        shape=shape,
        channels=channels,
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=pixel_size,
        rgb=rgb,
        warnings=tuple(notes),
        series_count=len(images),
        series=index,
        series_names=names if len(images) > 1 else (),
        series_about=about,
    )
    stored = Stored(
        offset=block.offset, shape=tuple(sizes.values()), axes="".join(sizes), dtype=dtype,
        bgr=rgb and _stored_blue_first(image.xml_element),
        mappable=_contiguous(sizes, dimensions, dtype.itemsize),
    )
    return layout, read, stored


class _Dim(NamedTuple):
    """One ``DimensionDescription``: how many, the length they span (in ``unit``), the stride."""

    count: int
    length: float
    unit: str
    bytes_inc: int


def _summary(image: Any) -> str | None:
    """:func:`~service.microscopy.image_summary` of one image of the project, from its XML alone
    (none for a FLIM histogram or an image without X and Y)."""
    if image.is_flim:
        return "FLIM"
    dimensions = _dimensions(image.xml_element)
    if "X" not in dimensions or "Y" not in dimensions:
        return None
    channels = sum(1 for _ in image.xml_element.iterfind(
        "./Data/Image/ImageDescription/Channels/ChannelDescription"))
    colour = channels == 3 and _stored_blue_first(image.xml_element)
    sizes = {a: dimensions[a].count for a in ("Z", "T") if a in dimensions}
    sizes["C"] = 1 if colour else channels
    summary = image_summary(dimensions["X"].count, dimensions["Y"].count, sizes, colour)
    tiles = dimensions["M"].count if "M" in dimensions else 1
    return f"{summary} · {tiles} tiles" if tiles > 1 else summary


def _dimensions(element: ET.Element) -> dict[str, _Dim]:
    """The image's ``DimensionDescription`` entries by letter."""
    out: dict[str, _Dim] = {}
    for dim in element.iterfind("./Data/Image/ImageDescription/Dimensions/DimensionDescription"):
        letter = _DIMENSION_IDS.get(int(dim.get("DimID", "0")), "?")
        try:
            length = float(dim.get("Length", "nan"))
        except ValueError:
            length = math.nan
        out[letter] = _Dim(int(dim.get("NumberOfElements", "0")), length, dim.get("Unit", ""),
                           int(dim.get("BytesInc", "0")))
    return out


def _check_dimensions(dimensions: dict[str, _Dim], name: str) -> None:
    for letter, (count, *_rest) in dimensions.items():
        if letter in ("X", "Y", "Z", "T") or count <= 1:
            continue
        what = _DIMENSION_NAMES.get(letter, f"indices along an unknown dimension ({letter})")
        raise UnsupportedImageType(
            f"the LIF image {name} holds {count} {what}; the service reads X, Y, channels, z-slices "
            f"and time points{_ADVICE.get(letter, ': export the planes to segment as a TIFF')}"
        )


def _channel_types(element: ET.Element) -> list[str]:
    """Each channel's stored type, ``uint16`` / ``float32``... (``Resolution`` bits rounded up to
    the bytes that hold them, as liffile reads them)."""
    out = []
    for channel in element.iterfind("./Data/Image/ImageDescription/Channels/ChannelDescription"):
        bits = int(channel.get("Resolution", "0"))
        kind = "float" if channel.get("DataType") == "1" else "uint"
        out.append(f"{kind}{next(b for b in (8, 16, 32, 64) if bits <= b or b == 64)}")
    return out


def _contiguous(sizes: dict[str, int], dimensions: dict[str, _Dim], itemsize: int) -> bool:
    """Whether each dimension's stride is that of a C-order array of ``sizes`` (storage order)."""
    stride, strides = itemsize, {}
    for letter, count in reversed(sizes.items()):
        strides[letter] = stride
        stride *= count
    return all(dim.bytes_inc == strides[letter] for letter, dim in dimensions.items() if letter in strides)


def _stored_blue_first(element: ET.Element) -> bool:
    """Colour channels stored blue first (``ChannelTag`` 3, 2, 1 in storage order), as LAS X and
    liffile have it."""
    described = element.iterfind("./Data/Image/ImageDescription/Channels/ChannelDescription")
    tags = [c.get("ChannelTag") for c in sorted(described, key=lambda c: int(c.get("BytesInc", "0")))]
    return tags[:2] == ["3", "2"]


def _channel_names(element: ET.Element) -> list[str | None]:
    """Each channel's name, in the order stored: the dye a widefield camera's channel was set up
    with (``WideFieldChannelInfo``: its ``UserDefName``, else its filter cube's ``FluoCubeName``),
    where LAS X wrote one per channel with the same colour tables in the same order, or, where it
    wrote more set-ups than channels were recorded, each channel's colour table is that of exactly
    one set-up (a real LAS X 2.0 file keeps an autofocus set-up beside the one recorded: ``Gray``
    beside ``Green``); else the channel's colour table (``LUTName``: ``Blue``, ``Green``...). Names
    are never paired by guess: one channel described differently keeps every name a colour."""
    described = list(element.iterfind("./Data/Image/ImageDescription/Channels/ChannelDescription"))
    names = [c.get("LUTName") or None for c in described]
    infos = element.findall(".//ATLCameraSettingDefinition/WideFieldChannelConfigurator/WideFieldChannelInfo")
    luts = [(c.get("LUTName") or "").casefold() for c in described]
    info_luts = [(i.get("LUT") or "").casefold() for i in infos]
    if len(infos) == len(described) and luts == info_luts:
        paired = list(infos)
    elif len(infos) > len(described) and len(set(luts)) == len(luts) and all(
            info_luts.count(lut) == 1 for lut in luts):  # set-ups not recorded beside those that were
        paired = [infos[info_luts.index(lut)] for lut in luts]
    else:
        paired = []
    dyes = [_dye(info) for info in paired]
    if paired and all(dyes):
        names = list(dyes)
    order = sorted(range(len(described)), key=lambda k: int(described[k].get("BytesInc", "0")))
    return [names[k] for k in order]


def _dye(info: ET.Element) -> str | None:
    """A widefield set-up's name: the user's (``UserDefName``), unless LAS X's placeholder for a
    set-up nobody named (``new 1``, ``new 2``...), else its filter cube's (``FluoCubeName``)."""
    for attribute in ("UserDefName", "FluoCubeName"):
        value = (info.get(attribute) or "").strip()
        placeholder = attribute == "UserDefName" and re.fullmatch(r"new \d+", value, re.IGNORECASE)
        if value and value.casefold() != "none" and not placeholder:
            return value
    return None


def _pixel_size(dimensions: dict[str, _Dim]) -> PixelSize | None:
    """µm per pixel along X and Y (and the z-step), from the dimensions' |Length| / (N - 1)."""
    spacing: dict[str, float] = {}
    for letter in ("X", "Y", "Z"):
        if letter not in dimensions:
            continue
        count, length, unit, _stride = dimensions[letter]
        factor = unit_um(unit) if unit else None
        # A stack recorded from the top down has a negative Z Length (a real LAS X file: -12.46 µm
        # over 3 slices); the step between slices is its size.
        if count > 1 and factor is not None and math.isfinite(length) and length != 0:
            spacing[letter] = abs(length) / (count - 1) * factor
    if "X" not in spacing:
        return None
    return PixelSize(spacing["X"], spacing.get("Y", spacing["X"]), "lif", spacing.get("Z"))
