"""Microscopy files as biologists have them: which channel, which plane, what pixel size.

A fluorescence file is rarely one grey plane: an ImageJ hyperstack or OME-TIFF holds channels
(C), z-slices (Z) and time points (T); an RGB composite holds one stain per colour. This module
reads what the file says about itself and turns a request's choice into the one 2-D plane the
model segments — and refuses, with the choices listed, whenever the choice is not obvious.
Nothing here guesses: an image with several channels or planes and no choice is a
:class:`SelectionError` (HTTP 422), never "the first page".

Pure functions on ``bytes`` and ``numpy`` arrays; no files, no HTTP.

- TIFF (OME-TIFF, ImageJ hyperstacks, multi-page, BigTIFF, any compression tifffile and
  imagecodecs decode) is read by **tifffile**: it knows the OME and ImageJ conventions for
  axes, channel names and calibration, which no general image library does. Every upload's
  structure is walked first (:mod:`service.structure`: the IFD chain and its tags, PNG chunks,
  JPEG segments) so a file of a million tiny pages or chunks is refused before a decoder parses
  them, and the plane's size is checked from the header before any pixel buffer exists. Only
  the pages the choice needs are decoded (a max projection reads its z-slices one at a time).
- CZI (Zeiss ZEN) is read by :mod:`service.czi`, LIF (Leica LAS X) by :mod:`service.lif`, ND2
  (Nikon NIS-Elements) by :mod:`service.nd2`, OIB (Olympus FluoView) by :mod:`service.oib`, into
  the same layout and plane reader.
- PNG, JPEG and BMP keep their decoder (``imaging.decode``); their only "axis" is colour.
- Whatever a decoder raises on hostile bytes becomes :class:`~service.imaging.UndecodableImage`
  (HTTP 400): a file is refused, never a crash (issue 15's fuzzing found TypeError, ValueError
  and struct.error escaping Pillow and tifffile).
- An RGB image whose channels are equal (grey saved as colour, also JPEG-grey within a few
  levels) is grey and needs no choice; so is one whose signal is all in one channel, the other two
  empty (one stain exported in its colour, as Fiji's "RGB Color" of a DAPI channel with a blue
  LUT): that channel is read, and a note says so. One whose channels differ otherwise is a
  composite.

Units: pixel sizes in micrometres (µm) per pixel; plane indices 0-based (Fiji's slice 1 is
``z=0``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import mmap
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from service import extent, imaging, mm_positions, ndtiff_pages, structure
from service.imaging import ImageError, ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.measured_channels import admitted_extra
from service.polarity import Polarity
from service.structure import Limits, TooManyPages

__all__ = ["TooManyPages"]  # re-exported: raised for TIFFs past UNET_MAX_TIFF_PAGES

log = logging.getLogger(__name__)
# tifffile logs every malformed upload at ERROR level; such input is reported to the caller as
# UndecodableImage, so its chatter would only flood the service log (as OpenCV's, in imaging).
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

#: TIFF signatures: classic (42) and BigTIFF (43), both byte orders.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: Axes a plane can be chosen along, and what a request calls them.
PLANE_AXES = ("Z", "T")
#: Reads one plane of a file by its coordinates (``{"C": c, "Z": z, "T": t}``, 0 where left out):
#: what every vendor reader's ``open_planes`` gives (CZI, LIF, ND2, OIB/OIF, ZVI, DeltaVision, Imaris).
PlaneReader = Callable[[dict[str, int]], np.ndarray]
#: tifffile's letters for a page sequence nobody labelled (Pillow, plain tifffile writes).
_UNLABELLED = ("I", "Q")
#: tifffile's letters for an OME Modulo sub-axis: lifetime (FLIM), lambda, angle, phase.
_MODULO = ("H", "E", "A", "P")
#: What tifffile's other axis letters stand for, for a refusal to name.
_AXIS_MEANINGS = {"H": "FLIM lifetime bins", "E": "λ-scan wavelengths", "A": "angles", "P": "phases",
                  "R": "stage positions or tiles", "L": "exposures", "V": "views", "J": "tile columns",
                  "K": "tile rows", "M": "mosaic tiles"}
#: Names of an RGB image's channels (alpha is never segmented).
RGB_NAMES = ("red", "green", "blue")
#: ``channel=`` value that mixes an RGB image's channels to grey (BT.601 luminance).
MIX = "gray"
#: What a request for a stack without ``z=`` is told about 3-D.
STACK_HINT = ("; for nuclei in 3-D, POST /jobs?output=labels3d (or `unet-segment --z all --output labels "
              "--stitch-z`, or the Python API's Segmenter.segment_stack) segments every slice and links "
              "them.")
#: The projections offered (over Z): the maximum (segments best: each nucleus at its brightest
#: slice) and the sum (float32; measures best: a nucleus's whole signal, as Fiji's Sum Slices).
PROJECTIONS = ("max", "sum")
#: ``measure=`` value that measures the objects in every channel of the image.
MEASURE_ALL = "all"
#: The structure limits of TIFF readers not handed any (the settings' defaults).
DEFAULT_LIMITS = Limits()

# TIFF photometric interpretations tifffile hands back as the stored samples.
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _YCBCR = 0, 1, 2, 3, 6
#: Length units → µm (OME's UnitsLength symbols, ImageJ's spellings).
_UNIT_UM = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "å": 1e-4, "angstrom": 1e-4,
    "pm": 1e-6,
    # OME-Zarr (NGFF) spells units out, UDUNITS-2 style
    "meter": 1e6, "centimeter": 1e4, "millimeter": 1e3, "picometer": 1e-6,
}


class SelectionError(ValueError):
    """The request does not say which channel/plane to segment, or names one the image lacks.

    ``params`` names the query parameters concerned (``channel``, ``z``, ``t``, ``project``);
    ``choices`` is what the image offers, JSON-ready (``channels``, ``planes``, ``axes``...);
    ``missing``: the request chose nothing where it must (else it chose what is not there).
    """

    def __init__(
        self, message: str, params: tuple[str, ...], choices: dict[str, Any], missing: bool = False
    ) -> None:
        super().__init__(message)
        self.params = params
        self.choices = choices
        self.missing = missing


class MeasuredTooLarge(ImageTooLarge):
    """``measure=`` would hold more channel planes at once than the pixel limit allows (HTTP 413)."""

    def __init__(self, channels: int, width: int, height: int, limit: int) -> None:
        super().__init__(channels * width * height, limit, width, height)
        self.args = (
            f"measure= holds {channels} channel planes of {width}×{height} at once, more than the "
            f"pixel limit ({limit:,}, UNET_MAX_PIXELS) allows beside the segmentation; measure fewer "
            "channels per request, or run the file as a slide job (POST /jobs?output=ome-zarr), which "
            "reads the channels band by band",
        )


def check_measured(channels: int, width: int, height: int, max_pixels: int) -> None:
    """Refuse a ``measure=`` whose ``channels`` planes of ``width`` × ``height``, held whole with
    the plane segmented, would weigh more than the largest image's own working set
    (``measured_channels.admitted_extra`` against ``max_pixels``): a file of many small compressed
    pages must not expand into gigabytes."""
    if admitted_extra(channels, width * height) > max_pixels:
        raise MeasuredTooLarge(channels, width, height, max_pixels)


class DecodeCancelled(Exception):
    """``should_stop`` asked to stop between planes (timeout, client gone); no plane."""


@dataclass(frozen=True)
class Channel:
    index: int
    name: str | None = None

    def label(self) -> str:
        return f"{self.index} ({self.name})" if self.name else str(self.index)


@dataclass(frozen=True)
class PixelSize:
    """Micrometres per pixel along x (columns) and y (rows); ``source`` says who said so: ``ome`` · ``imagej``
    · ``lsm`` · ``metaseries`` · ``micro-manager`` · ``svs`` · ``fei`` (:mod:`service.tiff_vendors`) ·
    ``tiff`` (ResolutionUnit centimetre) · ``czi`` (ZEN's Scaling) · ``lif`` (the image's dimensions) ·
    ``nd2`` (NIS-Elements' calibration) · ``oib`` (FluoView's) · ``zvi`` (AxioVision's scale tags) ·
    ``dv`` (DeltaVision's header) · ``ims`` (Imaris's extents) ·
    ``request`` (``pixel_size=``). ``z_um``: the z-step (µm between z-slices) where the file gives one
    (OME ``PhysicalSizeZ``, ImageJ ``spacing``, ZEN's Scaling Z), for volumes in µm³; None for a file
    without it (a plain TIFF's resolution tags have no z) or without z-slices (ImageJ and ZEN write one
    on 2-D images and time series too)."""

    x_um: float
    y_um: float
    source: str
    z_um: float | None = None

    def __post_init__(self) -> None:
        # 1 / (20/13 px per µm) is 0.6499999999999999: keep the digits a calibration has.
        object.__setattr__(self, "x_um", float(f"{self.x_um:.10g}"))
        object.__setattr__(self, "y_um", float(f"{self.y_um:.10g}"))
        if self.z_um is not None:
            object.__setattr__(self, "z_um", float(f"{self.z_um:.10g}"))

    def as_dict(self) -> dict[str, Any]:
        """``x``, ``y`` (µm), ``source``; ``z`` (µm) only where the file gives a z-step, so the
        answer for a 2-D file is as it was."""
        out: dict[str, Any] = {"x": self.x_um, "y": self.y_um, "source": self.source}
        if self.z_um is not None:
            out["z"] = self.z_um
        return out

    def header(self) -> str:
        """``0.65`` for square pixels, ``x,y`` otherwise."""
        x, y = f"{self.x_um:.6g}", f"{self.y_um:.6g}"
        return x if x == y else f"{x},{y}"


def stack_z_step(pixel_size: PixelSize | None, z_slices: int) -> PixelSize | None:
    """``pixel_size`` with its z-step only where there are z-slices: a z-step is the distance
    between slices, and ImageJ (its "spacing") and ZEN (a Z scaling) write one on single planes and
    time series too (real files: a Fiji time series of HeLa cells, czitools' 100x100.czi), which
    would read as a volume's."""
    if pixel_size is None or pixel_size.z_um is None or z_slices > 1:
        return pixel_size
    return replace(pixel_size, z_um=None)


@dataclass(frozen=True)
class Layout:
    """What a file holds, from its header (and, for colour, its pixels).

    ``axes``/``shape``: the image's dimensions in tifffile letters, singletons dropped
    (``TZCYX``, ``YXS``...); ``channels``: one entry per channel (one for grey); ``planes``:
    sizes of the plane axes with more than one plane (``{"Z": 31}``); ``rgb``: the channels are
    the samples of a colour image (red, green, blue); ``grey_rgb``: ... and they are equal;
    ``signal_channel``: ... or only this one holds signal, the other two empty (:func:`with_colour`).
    """

    format: str
    width: int
    height: int
    dtype: str
    axes: str
    shape: tuple[int, ...]
    channels: tuple[Channel, ...]
    planes: dict[str, int]
    pixel_size: PixelSize | None
    rgb: bool = False
    grey_rgb: bool = False
    signal_channel: int | None = None
    warnings: tuple[str, ...] = ()
    #: Images in the file (OME-TIFF Images / TIFF series, CZI scenes: positions of a multi-position
    #: experiment), which one this layout describes, and their names where the file gives them.
    series_count: int = 1
    series: int = 0
    series_names: tuple[str | None, ...] = ()
    #: each image's size and planes as a person tells them apart (:func:`image_summary`), where
    #: the file holds several: a LAS X project's images are all "Series001", "Series002"...
    series_about: tuple[str | None, ...] = ()
    #: the images are the stage positions of a Micro-Manager acquisition read by path, each in a
    #: file of its own beside this one (:mod:`service.mm_positions`): this file holds ``series``
    positions_in_files: bool = False

    @property
    def needs_channel(self) -> bool:
        """Whether segmenting needs ``channel=`` (for a one-channel model)."""
        return len(self.channels) > 1 and not self.grey_rgb and self.signal_channel is None

    def channel_choices(self) -> list[dict[str, Any]]:
        return [{"index": c.index, "name": c.name} for c in self.channels]

    def choices(self) -> dict[str, Any]:
        """The JSON a 422 and ``POST /probe`` carry: what a request may choose."""
        out: dict[str, Any] = {
            "axes": self.axes,
            "shape": list(self.shape),
            "channels": self.channel_choices(),
            "planes": dict(self.planes),
        }
        if self.rgb and not self.grey_rgb:
            out["mix"] = MIX
        if self.series_count > 1:
            out["series"] = series_choices(self.series_count, self.series_names, self.series_about)
        return out

    def describe(self) -> dict[str, Any]:
        """``POST /probe``'s answer (less what the route adds)."""
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "dtype": self.dtype,
            "axes": self.axes,
            "shape": list(self.shape),
            "channels": self.channel_choices(),
            "planes": dict(self.planes),
            "rgb": self.rgb,
            "grey_rgb": self.grey_rgb,
            "signal_channel": self.signal_channel,
            "pixel_size_um": self.pixel_size.as_dict() if self.pixel_size else None,
            "warnings": list(self.warnings),
            "series": {"index": self.series, "count": self.series_count,
                       "names": list(self.series_names), "about": list(self.series_about)},
        }


def series_choices(
    count: int, names: tuple[str | None, ...], about: tuple[str | None, ...] = ()
) -> list[dict[str, Any]]:
    """The images of a file as a 422's ``choices`` lists them: index, name, and what each holds
    (:func:`image_summary`) where the reader says."""
    return [{"index": k, "name": names[k] if k < len(names) else None,
             **({"about": about[k]} if k < len(about) else {})} for k in range(count)]


def image_summary(width: int, height: int, sizes: dict[str, int], colour: bool = False) -> str:
    """One image of several as a person tells them apart: ``1024×1024 · 2 ch · 30 z · 5 t``
    (the axes with more than one index; ``RGB`` for colour)."""
    parts = [f"{width}×{height}"]
    if colour:
        parts.append("RGB")
    parts += [f"{sizes[axis]} {unit}" for axis, unit in (("C", "ch"), ("Z", "z"), ("T", "t"))
              if sizes.get(axis, 1) > 1]
    return " · ".join(parts)


def grey_planes_layout(
    format: str, width: int, height: int, dtype: Any, sizes: dict[str, int],
    names: Sequence[str | None], pixel_size: PixelSize | None, warnings: Sequence[str],
) -> Layout:
    """The layout of a file whose planes are grey ``height`` × ``width`` along T, Z and C (``sizes``,
    1 where it has none: a DeltaVision file, an Imaris file, an OIB): axes and shape as tifffile
    gives a hyperstack's, T outermost and singletons dropped; channel ``c`` named ``names[c]`` where
    there is one."""
    lead = [a for a in ("T", "Z", "C") if sizes.get(a, 1) > 1]
    return Layout(
        format=format,
        width=width,
        height=height,
        dtype=str(np.dtype(dtype)),
        axes="".join(lead) + "YX",
        shape=tuple(sizes[a] for a in lead) + (height, width),
        channels=tuple(Channel(c, names[c] if c < len(names) else None) for c in range(sizes.get("C", 1))),
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=pixel_size,
        warnings=tuple(warnings),
    )


def check_series(
    count: int, names: tuple[str | None, ...], wanted: int | None, about: tuple[str | None, ...] = ()
) -> int:
    """The 0-based image (series) to read of ``count``: ``wanted``, or the first.

    Raises:
        SelectionError: ``wanted`` is not in the file.
    """
    if wanted is None:
        return 0
    if not 0 <= wanted < count:
        raise SelectionError(
            f"series={wanted}: the file holds {count} image{'s' if count > 1 else ''} "
            f"(series=0..{count - 1})", ("series",), {"series": series_choices(count, names, about)},
        )
    return wanted


def first_series_note(count: int, what: str, first: str) -> str:
    """The notice that a file of several images was read at its first, and how to choose another."""
    others = "series=1 chooses the other" if count == 2 else f"series=1..{count - 1} chooses another"
    return f"the file holds {count} {what}; the first ({first}) is segmented: {others}"


@dataclass(frozen=True)
class Selection:
    """What a request chose: ``channel`` (index as text, a name, or :data:`MIX`), ``z``/``t``
    (0-based), ``project`` (``"max"`` or ``"sum"`` over Z), ``pixel_size_um`` (overrides the file's),
    ``polarity`` (``dark``: the nuclei are darker than their background, ``service.polarity``);
    ``series``: which image of a file holding several (OME-TIFF Images, CZI scenes), 0-based;
    None: the first, with a notice."""

    channel: str | None = None
    z: int | None = None
    t: int | None = None
    project: str | None = None
    pixel_size_um: float | None = None
    polarity: Polarity = "bright"
    series: int | None = None
    #: Channels to measure each object in, besides segmenting (``measure=``): indices as text,
    #: names, or :data:`MEASURE_ALL`. Read at the segmented plane's z / t (or projection).
    measure: tuple[str, ...] = ()
    #: The projection over Z the measured channels are read as (``measure_project=``: segment on
    #: the maximum, measure on the sum); None: the segmented plane's z or projection.
    measure_project: str | None = None


@dataclass(frozen=True)
class Measured:
    """A channel the objects are measured in (``measure=``): ``image`` ``(H, W)`` in the file's
    own units, at the same z / t (or projection) as the plane segmented, or its own projection
    (``measure_project=``)."""

    channel: Channel
    image: np.ndarray


@dataclass(frozen=True)
class Plane:
    """The plane to segment and what it is.

    ``image``: ``(H, W)``, or ``(H, W, 3|4)`` when a colour image is kept whole (grey stored as
    RGB, :data:`MIX`, or a model that takes colour); uint8/uint16/float32.
    ``channel``: the channel chosen (None: the image has one, or colour kept whole).
    """

    image: np.ndarray
    layout: Layout
    channel: Channel | None = None
    mixed: bool = False
    z: int | None = None
    t: int | None = None
    projection: str | None = None
    pixel_size: PixelSize | None = None
    warnings: tuple[str, ...] = ()
    polarity: Polarity = "bright"  # dark: turned to optical density before the model
    measured: tuple[Measured, ...] = ()  # channels the objects are measured in (``measure=``)
    measured_projection: str | None = None  # their projection over Z, where not the plane's own

    def without_pixels(self, keep_measured: bool = False) -> Plane:
        """This description with an empty image, to keep after the pixels are done with;
        ``keep_measured``: with the measured channels' pixels still (to measure objects again)."""
        measured = self.measured if keep_measured else tuple(
            replace(m, image=np.empty((0, 0), m.image.dtype)) for m in self.measured
        )
        return replace(self, image=np.empty((0, 0), self.image.dtype), measured=measured)

    def position(self) -> tuple[int | None, int | None, int | None]:
        """0-based (channel, z, t) of this plane in the file, None where not applicable (no C
        axis, a projection): where Fiji should show ROIs drawn on it."""
        # A page's samples are channels where they are not colour: a Zeiss LSM's tracks (Fiji opens
        # them as channels), not an RGB picture's red, green and blue.
        channels = "C" in self.layout.axes or ("S" in self.layout.axes and not self.layout.rgb)
        c = self.channel.index if self.channel is not None and channels else None
        return c, self.z, self.t

    def describe(self) -> dict[str, Any]:
        """What was segmented, JSON-ready (GeoJSON properties, batch manifest)."""
        return {
            "channel": None if self.channel is None else asdict(self.channel),
            "mixed": self.mixed,
            "z": self.z,
            "t": self.t,
            "projection": self.projection,
            "pixel_size_um": self.pixel_size.as_dict() if self.pixel_size else None,
            "polarity": self.polarity,
            "series": self.layout.series if self.layout.series_count > 1 else None,
            "axes": self.layout.axes,
            "shape": list(self.layout.shape),
            **({"measured": [asdict(m.channel) for m in self.measured]} if self.measured else {}),
            **({"measured_projection": self.measured_projection} if self.measured_projection else {}),
        }


# --- reading -------------------------------------------------------------------------------------


def is_tiff(data: bytes) -> bool:
    return data[:4] in _TIFF_MAGIC


def count_tiff_pages(data: bytes, limit: int) -> int:
    """Pages (top-level IFDs) in a TIFF; :class:`TooManyPages` past ``limit``
    (:func:`service.structure.count_tiff` with only the page limit)."""
    return structure.count_tiff(data, Limits(max_tiff_pages=limit, max_tiff_tags=1 << 62))


@contextlib.contextmanager
def decoder_errors() -> Iterator[None]:
    """Anything a decoder raises on hostile bytes → :class:`UndecodableImage` (HTTP 400).

    Pillow, OpenCV and tifffile raise TypeError, KeyError, struct.error, ... on corrupt input,
    not only their documented errors; none of it may become a 500. What this module raises on
    purpose passes through, and so does MemoryError (the server's state, not the file's). The
    traceback is logged at DEBUG: a bug of ours would otherwise be silent.
    """
    try:
        yield
    except (ImageError, SelectionError, DecodeCancelled, MemoryError, _NotForTifffile):
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.debug("decoder error on an upload, answered as undecodable", exc_info=True)
        raise UndecodableImage(f"cannot read this image: {type(exc).__name__}: {exc}") from exc


@dataclass
class _Source:
    """A file opened for reading planes: its layout and how to fetch one page's samples."""

    layout: Layout
    # (plane coordinates {"Z": z, "T": t, "C": c}) → (H, W) or (H, W, S) array
    read: PlaneReader
    close: Callable[[], None] = lambda: None
    # RGB pixels read while probing (to tell grey from colour), reused by select
    first: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # a TIFF's: the tifffile series read (of image_series), for reading it by window, and whether
    # the page of a plane (its coordinates) is absent (in a file of its set that is not there)
    series: Any = None
    absent: Callable[[dict[str, int]], bool] | None = None


def probe(data: bytes, max_pixels: int, limits: Limits | int, series: int | None = None) -> Layout:
    """What the file holds (axes, channels, planes, pixel size) — ``POST /probe`` — at image
    ``series`` of a file holding several (None: the first).

    Reads pixels only for a colour image (to tell grey saved as RGB from a composite).
    ``limits``: bounds on the file's structure (an int: the page limit, other bounds default).

    Raises:
        imaging.ImageError subclasses: undecodable, unsupported, too large, too many pages,
        too complex (structure.TooComplex).
    """
    with decoder_errors():
        source = _open(data, max_pixels, structure.as_limits(limits), series)
        try:
            return source.layout
        finally:
            source.close()


def select(
    data: bytes,
    selection: Selection,
    max_pixels: int,
    limits: Limits | int,
    model_channels: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> Plane:
    """The plane a request asked for, read from the upload.

    ``model_channels``: input channels of the model; a 3-channel model takes an RGB image whole.
    ``should_stop``: asked between the planes of a projection (a request's timeout or
    disconnect), so a long projection can be abandoned.

    Raises:
        SelectionError: several channels/planes and no choice, or a choice the image lacks.
        imaging.ImageError subclasses: undecodable, unsupported, too large, too many pages,
        too complex (structure.TooComplex).
        DecodeCancelled: ``should_stop`` said so.
    """
    with decoder_errors():
        source = _open(data, max_pixels, structure.as_limits(limits), selection.series)
        try:
            return _select(source, selection, model_channels, should_stop, max_pixels)
        finally:
            source.close()


def preview_plane(data: bytes, selection: Selection, max_pixels: int, limits: Limits | int) -> Plane:
    """Like :func:`select`, but what is not chosen defaults for display: a composite stays in
    colour, the first channel of a C axis, the first plane. For the web page's preview only."""
    with decoder_errors():
        return _preview_plane(data, selection, max_pixels, structure.as_limits(limits))


def _preview_plane(data: bytes, selection: Selection, max_pixels: int, limits: Limits) -> Plane:
    source = _open(data, max_pixels, limits, selection.series)
    try:
        layout = source.layout
        filled = selection
        if filled.channel is None and layout.needs_channel and not layout.rgb:
            filled = replace(filled, channel="0")
        if filled.project is None and filled.z is None and "Z" in layout.planes:
            filled = replace(filled, z=0)
        if filled.t is None and "T" in layout.planes:
            filled = replace(filled, t=0)
        return _select(source, filled, model_channels=3 if layout.rgb else 1)
    finally:
        source.close()


def _open(data: bytes, max_pixels: int, limits: Limits, series: int | None = None) -> _Source:
    """The file opened at image ``series`` (None: the first, with a notice if there are more)."""
    # Pages, tags, chunks, segments and metadata bytes are bounded before any decoder parses them.
    structure.check(data, limits)
    if data[:10] == structure.CZI_MAGIC:
        return _open_czi(data, max_pixels, series)
    if structure.is_lif(data):
        return _open_lif(data, max_pixels, series)
    if structure.is_nd2(data):
        return _open_nd2(data, max_pixels, series, limits.max_metadata_bytes)
    if structure.is_compound(data):
        return _open_oib(data, max_pixels, series, limits.max_metadata_bytes)
    if structure.is_dv(data):
        return _open_dv(data, max_pixels, series)
    if structure.is_hdf5(data):
        return _open_ims(data, max_pixels, series, limits.max_metadata_bytes)
    if not is_tiff(data):
        check_series(1, (), series)
        return _open_flat(data, max_pixels, fmt=None)
    try:
        return _open_tiff(data, max_pixels, series, limits)
    except _NotForTifffile:
        # A single page in a layout tifffile returns raw (palette, CMYK, YCbCr, min-is-white,
        # old JPEG): the decoder the service always used reads it.
        check_series(1, (), series)
        return _open_flat(data, max_pixels, fmt="TIFF")


def _open_czi(data: bytes, max_pixels: int, scene: int | None) -> _Source:
    from service import czi  # it builds on this module's Layout

    return _vendor_source(*czi.open_planes(data, max_pixels, scene))


def _open_lif(data: bytes, max_pixels: int, series: int | None) -> _Source:
    from service import lif  # it builds on this module's Layout

    return _vendor_source(*lif.open_planes(data, max_pixels, series))


def _open_nd2(data: bytes, max_pixels: int, series: int | None, metadata_bytes: int) -> _Source:
    from service import nd2  # it builds on this module's Layout

    return _vendor_source(*nd2.open_planes(data, max_pixels, series, metadata_bytes))


def _open_oib(data: bytes, max_pixels: int, series: int | None, metadata_bytes: int) -> _Source:
    from service import compound  # an OIB or a ZVI; they build on this module's Layout

    return _vendor_source(*compound.open_planes(data, max_pixels, series, metadata_bytes))


def _open_dv(data: bytes, max_pixels: int, series: int | None) -> _Source:
    from service import dv  # it builds on this module's Layout

    return _vendor_source(*dv.open_planes(data, max_pixels, series))


def _open_ims(data: bytes, max_pixels: int, series: int | None, metadata_bytes: int) -> _Source:
    from service import ims  # it builds on this module's Layout

    return _vendor_source(*ims.open_planes(data, max_pixels, series, metadata_bytes))


def _vendor_source(
    layout: Layout, read: PlaneReader, close: Callable[[], None]
) -> _Source:
    """A vendor file's planes (CZI, LIF, ND2, OIB, ZVI, DeltaVision, Imaris) as a source; a colour
    image's pixels read once, to tell grey saved as colour from a composite."""
    source = _Source(layout, read=read, close=close)
    if layout.rgb:
        try:
            source.first = read({})
        except BaseException:
            close()
            raise
        source.layout = with_colour(layout, source.first)
    return source


class _NotForTifffile(Exception):
    """A single-page TIFF better read by the general decoder."""


def _open_flat(data: bytes, max_pixels: int, fmt: str | None) -> _Source:
    """PNG / JPEG / BMP (and simple single-page TIFF fallbacks): one plane, maybe colour."""
    info = imaging.probe(data)
    imaging.check_pixels(info, max_pixels)
    image = imaging.decode(data, max_pixels)
    height, width = image.shape[:2]
    if image.ndim == 3 and image.shape[2] >= 3:
        layout = Layout(
            format=fmt or info.format,
            width=width,
            height=height,
            dtype=str(image.dtype),
            axes="YXS",
            shape=tuple(image.shape),
            channels=tuple(Channel(i, n) for i, n in enumerate(RGB_NAMES)),
            planes={},
            pixel_size=None,
            rgb=True,
        )
        layout = with_colour(layout, image)
    else:
        layout = Layout(fmt or info.format, width, height, str(image.dtype), "YX", (height, width),
                        (Channel(0),), {}, None)
    return _Source(layout, read=lambda _coords: image, first=image)


#: An upload as the file a container parser (tifffile, czifile, liffile) reads (``imaging.as_file``).
container_stream = imaging.as_file


def _open_tiff(
    data: bytes, max_pixels: int, series: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> _Source:
    import tifffile  # the service imports it only for TIFF uploads

    stream = container_stream(data)
    if isinstance(stream, mmap.mmap):
        stream = MappedStream(stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tifffile warns about odd tags; errors still raise
            tif = tifffile.TiffFile(stream)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on corrupt input
        if _single_page(data):
            raise _NotForTifffile from exc
        raise UndecodableImage(f"unreadable TIFF: {imaging.reason(exc)}") from exc
    try:
        return _tiff_source(tif, data, max_pixels, wanted_series=series, limits=limits)
    except BaseException:
        tif.close()
        raise


class MappedStream(io.RawIOBase):
    """A memory map (a stored upload, a file the Python API maps) as the raw stream tifffile reads.
    tifffile reads LSM's and FluoView's header records with numpy's record reader, which takes a
    file object only through ``readinto``: a bare map lacks it, and the record came back as raw
    bytes (a stored LSM was a 400). Reads copy from the map as its own ``read`` does."""

    def __init__(self, view: mmap.mmap) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._position:self._position + len(target)]
        target[:len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _single_page(data: bytes) -> bool:
    try:
        return count_tiff_pages(data, 1) <= 1
    except structure.TooComplex:
        return False


def tiff_image(
    tif: Any, max_pixels: int, series: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[Layout, Any, Callable[[dict[str, int]], bool]]:
    """The layout of an open ``tifffile.TiffFile`` (at image ``series``, None: the first) from its
    header alone (slides: no page is decoded; ``grey_rgb`` is left False for the caller to decide
    from a sample of windows), the tifffile series it describes (of :func:`image_series`), and
    whether a plane's page is absent, by its C, Z, T coordinates (a page of a set's file that is not
    there: tifffile's Zarr store would read it as zeros).

    Raises:
        imaging.ImageError subclasses: unsupported layout, more than ``max_pixels``.
        SelectionError: ``series`` is not in the file.
    """
    try:
        with decoder_errors():  # a slide's header is as hostile as an upload's
            source = _tiff_source(tif, b"", max_pixels, colour_pixels=False, wanted_series=series,
                                  limits=limits)
            return source.layout, source.series, source.absent
    except _NotForTifffile as exc:
        raise UnsupportedImageType(
            "this TIFF's photometric interpretation (palette, CMYK, YCbCr, min-is-white or 1-bit) "
            "is read only for uploads decoded whole; save the slide as grey or RGB"
        ) from exc


def tiff_planes(
    tif: Any, max_pixels: int, series: int | None = None
) -> tuple[Layout, PlaneReader]:
    """The layout of an open ``tifffile.TiffFile`` (at image ``series``, None: the first) and a
    reader of its pages by plane coordinates (``{"T": t, "Z": z, "C": c}``, 0 where left out),
    each decoded as an upload's: ``(H, W)`` or ``(H, W, S)``, uint8 / uint16 / float32. For reading
    a file from disk page by page (``service.frames`` cuts one frame, or one image, with it).

    Raises:
        imaging.ImageError subclasses: undecodable, unsupported, more than ``max_pixels``.
        SelectionError: ``series`` is not in the file.
    """
    with decoder_errors():
        try:
            source = _tiff_source(tif, b"", max_pixels, wanted_series=series)
        except _NotForTifffile as exc:
            raise UnsupportedImageType("a single page of this kind is read whole, not by plane") from exc
    return source.layout, source.read


def _holds_data(page: Any) -> bool:
    """Whether a series' page has pixels to read: not absent, and stored somewhere. tifffile gives
    a Micro-Manager or NDTiff plane whose index places it past the end of its file (a file cut
    short) as a frame at offset 0, which its reader fills with zeros (a hostile-input audit: jobs
    succeeded with 0 objects on such planes); offset 0 is the TIFF's header, never a page's data."""
    return page is not None and any(int(offset) for offset in page.dataoffsets)


def _tiff_source(
    tif: Any, data: bytes, max_pixels: int, colour_pixels: bool = True, wanted_series: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> _Source:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            all_series = image_series(tif, limits)
            series_names = tuple(getattr(s, "name", None) or None for s in all_series)
            series_about = tuple(_tiff_series_summary(s) for s in all_series) if len(all_series) > 1 else ()
            own = mm_positions.own_image(tif, all_series) if wanted_series is None else None
            series_index = (own if own is not None
                            else check_series(len(all_series), series_names, wanted_series, series_about))
            series = all_series[series_index]
            keyframe = series.keyframe
            full_axes, full_shape = series.get_axes(False), series.get_shape(False)
            pages = series.pages
            n_pages = len(pages)
    except (SelectionError, UnsupportedImageType, structure.TooComplex):
        raise  # the file read, and refused for what it holds
    except Exception as exc:  # noqa: BLE001
        raise UndecodableImage(f"unreadable TIFF structure: {imaging.reason(exc)}") from exc
    photometric = int(keyframe.photometric)
    page_axes = keyframe.axes  # "YX", "YXS" or "SYX"
    samples = int(keyframe.shape[page_axes.index("S")]) if "S" in page_axes else 1
    height, width = int(keyframe.imagelength), int(keyframe.imagewidth)
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"the TIFF's first page has an empty size {width}×{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    exotic = photometric not in (_MINISBLACK, _RGB, _YCBCR) or int(keyframe.bitspersample) == 1
    # ZEN saves a one-track LSM as a palette image: the track's display colour (a red ramp), over
    # the intensities (real LSM 7xx files, 8- and 16-bit).
    display_lut = exotic and photometric == _PALETTE and (bool(tif.is_lsm) or _is_display_lut(tif, keyframe))
    if display_lut:
        exotic = False  # the stored values are the intensities; tifffile reads them as they are
    if exotic and n_pages == 1 and len(all_series) == 1:
        raise _NotForTifffile
    if exotic:
        raise UnsupportedImageType(
            f"TIFF stacks with photometric interpretation {keyframe.photometric.name} are not supported; "
            "save the stack as grey or RGB planes"
        )

    notes: list[str] = []
    if display_lut and not _is_grey_ramp(keyframe.colormap):  # a grey ramp shows them as they are
        tables = "ZEN's channel colour" if tif.is_lsm else "ImageJ LUTs"
        notes.append(f"the file's colour tables ({tables}, for display) are not applied: the stored "
                     "intensities are read")
    # Plane axes: the series' axes outside one page, in page order (C-order over pages).
    # ZEN stores an LSM plane's channels as the samples of one page (planar, tagged RGB for three),
    # which tifffile's series calls C: they are channels, not colour, and index no pages.
    lsm_channels = bool(tif.is_lsm) and samples > 1
    lead = [(a, int(n)) for a, n in zip(full_axes, full_shape, strict=True)
            if a not in page_axes and not (a == "S" and n == 1) and not (lsm_channels and a == "C")]
    if math.prod(n for _, n in lead) != n_pages:
        raise UnsupportedImageType(
            f"cannot map this TIFF's {n_pages} pages onto its axes {full_axes} {tuple(full_shape)}"
        )
    lead = modulo_merged(lead, bool(tif.is_ome))
    names = [a for a, _ in lead]
    unlabelled = [n for a, n in lead if a in _UNLABELLED and n > 1]
    if len(unlabelled) > 1 or (unlabelled and ("Z" in names or "T" in names)):
        raise UnsupportedImageType(
            f"the TIFF's pages form {len(unlabelled)} unlabelled axes ({' × '.join(map(str, unlabelled))}) "
            f"besides {', '.join(a for a in names if a not in _UNLABELLED) or 'none'}; save the stack "
            "with ImageJ or OME metadata so its axes are known"
        )
    renamed = []
    for a, n in lead:
        if a in _UNLABELLED and n > 1:
            notes.append(
                f"the file does not say whether its {n} pages are z-slices, time points or channels; "
                "they are offered as z-planes (z=0..{})".format(n - 1)
            )
            a = "Z"
        elif a not in ("C", "Z", "T") and n > 1:
            meaning = _AXIS_MEANINGS.get(a)
            raise UnsupportedImageType(
                f"the TIFF has an axis {a!r}{f' ({meaning})' if meaning else ''} of size {n} (axes "
                f"{full_axes}); the service reads channels, z-slices and time points"
            )
        renamed.append((a, n))
    lead = renamed
    sizes = dict(lead)
    n_channels_c = sizes.get("C", 1)
    if n_channels_c > 1 and samples > 1:
        raise UnsupportedImageType(
            f"the TIFF has {n_channels_c} channels of {samples}-sample colour pages; the service reads "
            "either channels or colour samples"
        )
    alone = mm_positions.alone_note(tif, series)
    if own is not None:
        notes.append(mm_positions.position_note(len(all_series), series_index, series_names[series_index]))
    elif alone is not None:
        notes.append(alone)
    elif len(all_series) > 1 and wanted_series is None:
        first = f"{width}×{height}, axes {series.axes}"
        notes.append(first_series_note(len(all_series), "images (series)", first))

    rgb = photometric in (_RGB, _YCBCR) and samples >= 3 and not lsm_channels
    if samples > 1:
        channel_axis, n_channels = "S", (3 if rgb else samples)
    else:
        channel_axis, n_channels = "C", n_channels_c
    ome_root = _ome_root(tif, notes)
    fmt, pixel_size, channel_names = _tiff_metadata(
        tif, series, lead, n_channels, channel_axis, notes, series_index, ome_root
    )
    if rgb:
        channel_names = list(RGB_NAMES)
    channels = tuple(
        Channel(i, channel_names[i] if i < len(channel_names) else None) for i in range(n_channels)
    )
    pixel_size = stack_z_step(pixel_size, sizes.get("Z", 1))

    index_shape = tuple(n for _, n in lead)
    index_axes = [a for a, _ in lead]
    planar = page_axes.startswith("S")

    def page_index(coords: dict[str, int]) -> int:
        key = tuple(coords.get(a, 0) for a in index_axes)
        return int(np.ravel_multi_index(key, index_shape)) if index_shape else 0

    def absent(coords: dict[str, int]) -> bool:
        return not _holds_data(pages[page_index(coords)])

    def read(coords: dict[str, int]) -> np.ndarray:
        index = page_index(coords)
        page = pages[index]
        if page is None:
            raise UndecodableImage(
                f"page {index} of the TIFF is missing (an OME-TIFF split over several files?)"
            )
        if not _holds_data(page):
            raise UndecodableImage(
                f"page {index} of the TIFF holds no data: the file's index places it past the end of its "
                "file, or nowhere (a file cut short?); it is not read as zeros"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                array = page.asarray()
        except Exception as exc:  # noqa: BLE001 - codec errors, truncated strips
            raise UndecodableImage(f"cannot decode page {index} of the TIFF: {imaging.reason(exc)}") from exc
        array = np.asarray(array)
        if planar and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
        if array.shape[:2] != (height, width):
            array = array.reshape(height, width, -1)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or array.size == 0:
            raise UndecodableImage(f"page {index} of the TIFF decodes to no plane (shape {array.shape})")
        return imaging.supported_dtype(array, "TIFF")

    if ome_root is not None and _names_other_files(ome_root):
        _note_pages_elsewhere(pages, lead, channels, notes)
    axes = "".join(a for a, n in lead if n > 1) + "YX" + ("S" if samples > 1 else "")
    shape = tuple(n for _, n in lead if n > 1) + (height, width) + ((samples,) if samples > 1 else ())
    layout = Layout(
        format=fmt,
        width=width,
        height=height,
        dtype=str(keyframe.dtype),
        axes=axes,
        shape=shape,
        channels=channels,
        planes={a: sizes[a] for a in PLANE_AXES if sizes.get(a, 1) > 1},
        pixel_size=pixel_size,
        rgb=rgb,
        warnings=tuple(notes),
        series_count=len(all_series),
        series=series_index,
        series_names=series_names if len(all_series) > 1 else (),
        series_about=series_about,
        positions_in_files=own is not None,
    )
    source = _Source(layout, read=read, close=tif.close, series=series, absent=absent)
    if rgb and colour_pixels:
        first = read({})
        source.first = first
        source.layout = with_colour(layout, first)
    return source


def modulo_merged(lead: list[tuple[str, int]], ome: bool) -> list[tuple[str, int]]:
    """An OME-TIFF's plane axes with each OME Modulo sub-axis folded back into the axis it divides.

    OME keeps FLIM lifetime bins, λ-scan wavelengths, angles or phases as a Modulo annotation on C,
    Z or T (a FLIM file: SizeC 16, "ModuloAlongC" of 8 lifetime bins), and Bio-Formats, Fiji and
    OMERO offer them as that axis's indices (16 channels). tifffile splits the axis in two
    (C 2 × H 8, its letters H, E, A, P for the sub-axis, right after the one divided), which the
    service refused ("an axis 'H'"): read as one axis again, channel k is OME's channel k, its name
    the k-th ``<Channel>``'s. A sub-axis standing alone (every index a bin) is left as it is."""
    if not ome:
        return lead
    groups = modulo_groups("".join(axis for axis, _ in lead))
    return [(lead[group[0]][0], math.prod(lead[d][1] for d in group)) for group in groups]


def modulo_groups(axes: str) -> list[tuple[int, ...]]:
    """The positions in ``axes`` grouped as :func:`modulo_merged` folds them: an OME Modulo
    sub-axis (H, E, A, P) right after the C, Z or T it divides joins that axis's group."""
    groups: list[tuple[int, ...]] = []
    for d, axis in enumerate(axes):
        if axis in _MODULO and groups and axes[groups[-1][0]] in ("C", "Z", "T"):
            groups[-1] += (d,)
        else:
            groups.append((d,))
    return groups


def _is_display_lut(tif: Any, page: Any) -> bool:
    """Whether a palette TIFF holds intensities shown through a colour table rather than the
    indices of an indexed-colour picture. Fiji saves every 8-bit image whose LUT is not grey as a
    palette TIFF: each channel of a composite (green, magenta...), an inverted grey, Fire; read
    through its colours, a composite was refused and an inverted image read as 255 minus its
    values (real Fiji files, NEUBIAS's training images). An ImageJ file is read as stored when it
    has several channels (ImageJ makes no indexed-colour composite) or when its table's brightness
    runs one way over the indices, as every display LUT's does (within 10% of steps: Fire has a
    few wiggles); a picture's palette (ImageJ's "8-bit Color") jumps about and keeps its colours."""
    if int(page.bitspersample) not in (8, 16):
        return False
    if _is_grey_ramp(page.colormap):
        return True  # any writer's: the values are the intensities (Cellomics ArrayScan's exports)
    if not tif.is_imagej:
        return False
    meta = tif.imagej_metadata or {}
    try:
        if int(meta.get("channels", 1) or 1) > 1:
            return True
    except (TypeError, ValueError):
        pass
    if page.colormap is None:
        return False
    colormap = np.asarray(page.colormap, dtype=np.float64)
    if colormap.ndim != 2 or colormap.shape[0] != 3:
        return False
    red, green, blue = colormap
    steps = np.diff(0.299 * red + 0.587 * green + 0.114 * blue)
    return bool(steps.size) and max(float((steps >= 0).mean()), float((steps <= 0).mean())) >= 0.9


def _is_grey_ramp(colormap: Any) -> bool:
    """Whether a palette is an identity table of greys (index i → grey i, at 8 or 16 bits), as
    Cellomics ArrayScan and Zeiss SmartSEM write their grey images (CellProfiler's examples): it
    shows the stored values as they are. Read through it, such a file was a 3-channel RGB
    picture with no calibration read, and refused by path (found reading real exports)."""
    if colormap is None:
        return False
    table = np.asarray(colormap, dtype=np.int64)
    if table.ndim != 2 or table.shape[0] != 3 or table.shape[1] < 2:
        return False
    red, green, blue = table
    if not ((red == green).all() and (green == blue).all()):
        return False
    # an identity, at the scales writers put a 8- or 16-bit value on the table's 16 bits (a mask's
    # palette of a few greys stays a picture: its values are labels, shown as greys)
    index = np.arange(len(red), dtype=np.int64)
    return any(np.array_equal(red, index * scale) for scale in (1, 256, 257))


def _tiff_series_summary(series: Any) -> str | None:
    """:func:`image_summary` of one tifffile series (an OME-TIFF Image), from its axes and shape;
    None where it has no X and Y."""
    sizes = dict(zip(series.axes, (int(n) for n in series.shape), strict=False))
    if "X" not in sizes or "Y" not in sizes:
        return None
    planes = {"C": sizes.get("C", 1), "Z": sizes.get("Z", 1) * sizes.get("I", 1) * sizes.get("Q", 1),
              "T": sizes.get("T", 1)}
    return image_summary(sizes["X"], sizes["Y"], planes, colour=sizes.get("S", 1) in (3, 4))


def image_series(tif: Any, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """The images of ``tif``, as ``series=`` indexes them: tifffile's series less an LSM's
    thumbnails (a series of reduced pages after the image's, for ZEN's file browser) and a
    QPTIFF's (an RGB rendering of the scan for Phenochart), neither an image of the acquisition;
    an NDTiff upload's pages laid out by their own coordinates (:mod:`service.ndtiff_pages`,
    their metadata within ``limits``); a Micro-Manager acquisition's stage positions each an image
    (:mod:`service.mm_positions`), the planes its metadata describe within ``limits`` before
    tifffile sizes a series by them (:mod:`service.extent`)."""
    mm_positions.check_extent(tif, limits.max_tiff_pages)
    extent.check_ome(tif, limits.max_tiff_pages)
    laid_out = ndtiff_pages.from_pages(tif, limits.max_metadata_bytes, limits.max_tiff_pages)
    kept = [laid_out] if laid_out is not None else [
        s for s in tif.series if not (s.kind == "lsm" and s.keyframe.is_reduced)
        and not (s.kind == "qpi" and s.name == "Thumbnail")]
    return [image for s in kept for image in mm_positions.split(s, tif)]


def _ome_root(tif: Any, notes: list[str]) -> ET.Element | None:
    """An OME-TIFF's OME-XML, parsed once for what reads it; None for another TIFF, or (with a
    notice) XML that is not well-formed."""
    if not tif.is_ome:
        return None
    try:
        return ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        notes.append("the OME-XML metadata is not well-formed; channel names and pixel size unknown")
        return None


def _tiff_metadata(
    tif: Any, series: Any, lead: list[tuple[str, int]], n_channels: int, channel_axis: str, notes: list[str],
    series_index: int = 0, ome_root: ET.Element | None = None,
) -> tuple[str, PixelSize | None, list[str | None]]:
    """(format name, pixel size, channel names) from OME-XML (its ``series_index``-th Image: tifffile
    makes one series per OME Image, in order), ImageJ metadata, a microscope vendor's own metadata
    (:mod:`service.tiff_vendors`) or resolution tags; a Micro-Manager file's acquisition summary
    fills in what its OME-XML or ImageJ metadata lacks. A pixel size no microscope has is dropped
    (:func:`_plausible`)."""
    from service import tiff_vendors

    page = series.keyframe
    names: list[str | None]
    if tif.is_ome:
        fmt = "OME-TIFF"
        size, names = (None, []) if ome_root is None else _ome_metadata(ome_root, notes, series_index)
    elif tif.is_imagej:
        fmt = "ImageJ TIFF"
        meta = tif.imagej_metadata or {}
        names = _imagej_channel_names(meta, lead, n_channels)
        size = _imagej_pixel_size(page, meta, notes)
    else:
        vendor = (tiff_vendors.lsm(tif, n_channels) or tiff_vendors.metaseries(tif, n_channels)
                  or tiff_vendors.svs(tif, page, series_index) or tiff_vendors.fei(tif)
                  or tiff_vendors.zeiss_sem(tif)
                  or tiff_vendors.qpi(tif, series, n_channels) or tiff_vendors.harmony(page, n_channels))
        if vendor is None:
            fmt, size, names = "TIFF", None, []
        else:
            fmt, size, names = vendor.format, _vendor_size(vendor), list(vendor.names)
            if vendor.note:
                notes.append(vendor.note)
        if size is None and vendor is not None and not vendor.resolution_tags:
            notes.append(
                f"the {vendor.format}'s resolution tags give the camera's pixel pitch, not the pixel size, "
                "and its own metadata gives none that reads; pass pixel_size= (µm) for measurements in µm "
                "(Harmony's Index.idx.xml has it: ImageResolutionX, in metres)"
            )
        elif size is None:
            size = _tiff_pixel_size(page, notes)
    if not any(names) and series.kind == "ndtiff":
        names = mm_positions.ndtiff_channel_names(tif, series, n_channels)  # its pages or index name them
    if size is None or not any(names):
        summary = tiff_vendors.micromanager(tif, n_channels)
        if summary is not None:
            size = size or _vendor_size(summary)
            names = names if any(names) else list(summary.names)
            fmt = summary.format if fmt == "TIFF" else fmt
    return fmt, _plausible(size, notes), names


def _vendor_size(calibration: Any) -> PixelSize | None:
    """A :class:`service.tiff_vendors.Calibration`'s pixel size, None where it gives none."""
    if calibration.x_um is None:
        return None
    return PixelSize(calibration.x_um, calibration.y_um or calibration.x_um, calibration.source,
                     calibration.z_um)


#: The pixel sizes a light or electron microscope image can have, in µm: from 0.1 nm to 1 mm.
#: A file outside them holds a unit mistake (Bio-Formats' Iron-Plate sample says 1.27e-12 µm: its
#: writer put metres where the OME schema's default unit is µm), and µm measurements from it
#: would be off by as much.
PLAUSIBLE_PIXEL_UM = (1e-4, 1e3)


def _plausible(size: PixelSize | None, notes: list[str]) -> PixelSize | None:
    if size is None:
        return None
    low, high = PLAUSIBLE_PIXEL_UM
    if not (low <= size.x_um <= high and low <= size.y_um <= high):
        notes.append(
            f"the file's pixel size, {size.header()} µm ({size.source}), is outside what microscopes "
            f"give ({low:g}–{high:g} µm) and is not used; pass pixel_size= (µm) for measurements in µm"
        )
        return None
    if size.z_um is not None and not low <= size.z_um <= high * 100:
        notes.append(f"the file's z-step, {size.z_um:g} µm, is not plausible and is not used")
        return replace(size, z_um=None)
    return size


def _names_other_files(root: ET.Element) -> bool:
    """Whether an OME-XML places planes in other files (``<UUID>`` of another file): a multi-file
    set. Planes it places nowhere are left out on purpose (``unet-segment`` cuts such files)."""
    own = root.get("UUID")
    return any(e.tag.endswith("UUID") and (e.text or "").strip() != own for e in root.iter())


def _note_pages_elsewhere(pages: Any, lead: list[tuple[str, int]], channels: tuple[Channel, ...],
                          notes: list[str]) -> None:
    """A note naming the channels of a multi-file OME-TIFF set that lie wholly in its other files
    (tifffile leaves their pages None when it reads one file alone): offered, they fail when chosen."""
    missing = [i for i, p in enumerate(pages) if p is None]
    if not missing:
        return
    axes = [a for a, _ in lead]
    shape = tuple(n for _, n in lead)
    if "C" in axes:
        n_channels = dict(lead)["C"]
        present = np.array([p is not None for p in pages], dtype=bool)
        present_c = np.moveaxis(present.reshape(shape), axes.index("C"), 0).reshape(n_channels, -1)
        elsewhere = [channels[c].label() for c in range(n_channels) if not present_c[c].any()]
        if elsewhere:
            notes.append(
                f"channel{'s' if len(elsewhere) > 1 else ''} {', '.join(elsewhere)} of this multi-file "
                "OME-TIFF lie in other files of its set, not in this one: send the file that holds "
                f"{'them' if len(elsewhere) > 1 else 'it'}"
            )
            return
    notes.append(f"{len(missing)} of the {len(pages)} planes of this multi-file OME-TIFF lie in other "
                 "files of its set, not in this one")


def _ome_metadata(
    root: ET.Element, notes: list[str], image: int = 0
) -> tuple[PixelSize | None, list[str | None]]:
    binary_only = root.find("{*}BinaryOnly")
    if binary_only is not None:
        notes.append(
            "this file is one of a multi-file OME-TIFF set whose OME metadata lies in another file, "
            f"{binary_only.get('MetadataFile') or 'unnamed'!r}: channel names and calibration are what "
            "this file's own metadata gives, if any (a Micro-Manager file's summary)"
        )
    images = root.findall("./{*}Image")
    pixels = images[image].find("{*}Pixels") if image < len(images) else None
    if pixels is None:
        return None, []
    names = [c.get("Name") or None for c in pixels.findall("{*}Channel")]
    size = None
    x = _ome_length(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"), notes)
    y = _ome_length(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"), notes)
    if x or y:
        # A z-step alone is dropped: a PixelSize is an x/y size first.
        z = _ome_length(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"), notes)
        size = PixelSize(x or y, y or x, "ome", z)  # type: ignore[arg-type]
    return size, names


def _ome_length(value: str | None, unit: str | None, notes: list[str]) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        notes.append(f"the OME pixel size {value!r} is not a number; ignored")
        return None
    factor = unit_um(unit or "µm")
    if factor is None:
        notes.append(f"the OME pixel size unit {unit!r} is not a length; ignored")
        return None
    um = number * factor
    return um if math.isfinite(um) and um > 0 else None


def unit_um(unit: str) -> float | None:
    """µm per ``unit`` (``µm``, ``micron``, ``\\u00B5m``, ``nm``, OME-Zarr's ``micrometer``...), None if
    not a length."""
    key = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("μ", "µ").lower()
    return _UNIT_UM.get(key)


def _imagej_pixel_size(page: Any, meta: dict, notes: list[str]) -> PixelSize | None:
    unit = str(meta.get("unit", "")).strip()
    if not unit or unit.lower() in ("pixel", "pixels", "px"):
        return None
    factor = unit_um(unit)
    if factor is None:
        notes.append(f"the ImageJ calibration unit {unit!r} is not a length; no pixel size")
        return None
    res = _resolution(page)
    if res is None:
        return None
    x, y = res
    return PixelSize(factor / x, factor / y, "imagej", _imagej_spacing(meta, factor))


def _imagej_spacing(meta: dict, factor: float) -> float | None:
    """The z-step in µm from ImageJ's ``spacing`` (in the calibration's ``unit``, ``factor`` µm
    each); None where absent or not a positive finite number."""
    try:
        um = float(meta["spacing"]) * factor
    except (KeyError, TypeError, ValueError):
        return None
    return um if math.isfinite(um) and um > 0 else None


def _imagej_channel_names(meta: dict, lead: list[tuple[str, int]], n_channels: int) -> list[str | None]:
    """ImageJ keeps a label per plane; a channel's name is its label when every plane of the
    channel carries the same one (Fiji names channel planes after the channel)."""
    labels = meta.get("Labels")
    axes = [a for a, _ in lead]
    if not isinstance(labels, list) or "C" not in axes or n_channels < 2:
        return []
    shape = tuple(n for _, n in lead)
    if len(labels) != math.prod(shape):
        return []
    grid = np.array(labels, dtype=object).reshape(shape)
    grid = np.moveaxis(grid, axes.index("C"), 0).reshape(n_channels, -1)
    names: list[str | None] = []
    for row in grid:
        values = {str(v).strip() for v in row}
        names.append(values.pop() if len(values) == 1 and "" not in values else None)
    return _without_position_labels(names)


#: The label Bio-Formats gives each plane it opens in Fiji: its position and the file's name
#: (``c:1/3 - cells.tif``), kept by Fiji as the plane's label when the image is saved again.
_POSITION_LABEL = re.compile(r"^(?:[czt]:\d+/\d+\s*)+(?:-\s*(.*))?$")


def _without_position_labels(names: list[str | None]) -> list[str | None]:
    """Channel names without Bio-Formats' position labels: ``c:1/3 - cells.tif`` names no channel
    (a real Fiji re-save of a ZEN export offered the file's name three times as channel names);
    what follows the position is a name where the channels differ in it."""
    found = [_POSITION_LABEL.match(n) if n else None for n in names]
    if not any(found):
        return names
    rests = [(m.group(1) or "").strip() if m else n for m, n in zip(found, names, strict=True)]
    if len({r for r in rests if r}) < len(rests) or not all(rests):
        return [None] * len(names)  # the file's name, or nothing: no channel named
    return rests


def _resolution(page: Any) -> tuple[float, float] | None:
    """Pixels per unit along x and y from the XResolution/YResolution tags."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    out = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name) or tags["XResolution"]
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if not den or not num:
            return None
        out.append(num / den)
    return out[0], out[1]


def _tiff_pixel_size(page: Any, notes: list[str]) -> PixelSize | None:
    """A plain TIFF's calibration: ResolutionUnit centimetre counts; inch is a print setting."""
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # the TIFF default is inch
    res = _resolution(page)
    if res is None:
        return None
    if unit == 3:
        return PixelSize(1e4 / res[0], 1e4 / res[1], "tiff")
    if unit == 2 and res != (1.0, 1.0):
        notes.append(
            f"the file gives a print resolution of {res[0]:g} dpi, not taken as a pixel size; "
            "pass pixel_size= (µm) if the image is calibrated"
        )
    return None


def channels_equal(rgb: np.ndarray) -> bool:
    """Whether an ``(H, W, 3)`` image is grey saved as colour: its channels differ nowhere by
    more than 2 levels or 1% of the image's range (JPEG's chroma rounding stays inside)."""
    lo, hi = float(np.min(rgb)), float(np.max(rgb))
    tol = max(2.0 if np.issubdtype(rgb.dtype, np.integer) else 0.0, 0.01 * (hi - lo))
    work = rgb.astype(np.float32) if rgb.dtype == np.float32 else rgb.astype(np.int32)
    for row in range(0, rgb.shape[0], 512):  # bounded temporaries on large images
        part = work[row : row + 512]
        for a, b in ((0, 1), (1, 2)):
            if np.abs(part[:, :, a] - part[:, :, b]).max() > tol:
                return False
    return True


def signal_channel(rgb: np.ndarray) -> int | None:
    """The one channel of an ``(H, W, 3)`` image that holds signal, the other two empty (each within
    :func:`channels_equal`'s tolerance of constant); None when two or more hold some, or none does.

    Lossless exports of one stain in its colour are so. A JPEG's chroma rounding leaks a few percent
    of the signal into the other channels at its edges (up to 48 of 246 levels at quality 50), so a
    colour JPEG is left to the caller's choice: telling a leak from a faint second stain would be
    a guess.
    """
    lo, hi = float(np.min(rgb)), float(np.max(rgb))
    tol = max(2.0 if np.issubdtype(rgb.dtype, np.integer) else 0.0, 0.01 * (hi - lo))
    lit = [k for k in range(3) if float(np.max(rgb[:, :, k])) - float(np.min(rgb[:, :, k])) > tol]
    return lit[0] if len(lit) == 1 else None


def with_colour(layout: Layout, rgb: np.ndarray) -> Layout:
    """``layout`` of a colour image with what its pixels ``rgb`` (``(H, W, 3|4)``, or a sample of
    windows) say: grey saved as colour, or one channel holding all the signal, or neither."""
    grey = channels_equal(rgb[:, :, :3])
    return replace(layout, grey_rgb=grey, signal_channel=None if grey else signal_channel(rgb[:, :, :3]))


# --- choosing ------------------------------------------------------------------------------------


def _channel_list(layout: Layout) -> str:
    return ", ".join(c.label() for c in layout.channels)


def _plane_list(layout: Layout) -> str:
    return ", ".join(f"{a}: {n}" for a, n in layout.planes.items())


def _resolve_channel(layout: Layout, wanted: str, param: str = "channel") -> Channel | str:
    """``wanted`` (an index, a name in any case, or :data:`MIX`) → the channel, or MIX.
    ``param``: the request's option that named it, for the error."""
    text = wanted.strip()
    if text.lower() == MIX and layout.rgb and param == "channel":
        return MIX
    if re.fullmatch(r"\d+", text) and int(text) < len(layout.channels):
        return layout.channels[int(text)]  # an index first; a name of digits past them (ZEN's λ: "415")
    matches = [c for c in layout.channels if c.name and c.name.casefold() == text.casefold()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise SelectionError(
            f"{param} {wanted!r} names {len(matches)} channels "
            f"({', '.join(c.label() for c in matches)}); choose one by index",
            (param,),
            layout.choices(),
        )
    mixable = layout.rgb and param == "channel"
    offer = _channel_list(layout) + (f", or {MIX} (colours mixed)" if mixable else "")
    if param == "measure":
        offer += f", or {MEASURE_ALL} (every channel)"
    raise SelectionError(
        ("" if param == "channel" else f"{param}: ")
        + f"the image has no channel {wanted!r}; its channels are {offer}",
        (param,),
        layout.choices(),
    )


def measure_choice(wanted: Iterable[str | int] | str | None) -> tuple[str, ...]:
    """``measure=`` as :attr:`Selection.measure` holds it: ``"DAPI,GFP"`` (one text, commas
    between), a list of indices / names, or None (nothing measured)."""
    if wanted is None:
        return ()
    parts = wanted.split(",") if isinstance(wanted, str) else [str(w) for w in wanted]
    chosen = tuple(part.strip() for part in parts if part.strip())
    if not chosen:
        raise ValueError(f"measure names no channel: {wanted!r} (indices or names, commas between, or all)")
    return chosen


def _resolve_measured(layout: Layout, wanted: tuple[str, ...]) -> tuple[Channel, ...]:
    """``measure=``'s channels, in the order asked, each once (:data:`MEASURE_ALL`: all of them)."""
    if any(text.strip().lower() == MEASURE_ALL for text in wanted):
        return layout.channels
    chosen: list[Channel] = []
    for text in wanted:
        channel = _resolve_channel(layout, text, "measure")
        assert isinstance(channel, Channel)  # MIX is a channel= choice only
        if channel not in chosen:
            chosen.append(channel)
    return tuple(chosen)


def _check_index(layout: Layout, axis: str, value: int, param: str) -> None:
    size = layout.planes.get(axis, 1)
    if not 0 <= value < size:
        if size > 1:
            have = f"{size} {axis}-planes ({param}=0..{size - 1})"
        else:
            have = f"no {axis} axis ({param}=0 only)"
        raise SelectionError(
            f"{param}={value} is outside the image: it has {have}", (param,), layout.choices()
        )


@dataclass(frozen=True)
class Choice:
    """A request's :class:`Selection` checked against a :class:`Layout`: which plane to read,
    decided before any pixel is (:func:`resolve`). Slide sources read it window by window.

    ``channel``: the channel to take (None: the image has one, or colour is kept whole);
    ``coords``: page coordinates besides Z (``{"T": t, "C": c}``); ``z``: the z-plane (None: no Z
    axis, or a projection); ``samples``: ``channel`` is a sample of colour pages (take it from
    the last axis of a page) rather than a page of its own; ``measured``: the channels each object is
    measured in (``measure=``), read at the same coordinates but their own channel, or as their
    projection over Z ``measured_projection`` (``measure_project=``; None: as the plane).
    """

    layout: Layout
    channel: Channel | None
    mixed: bool
    coords: dict[str, int]
    z: int | None
    t: int | None
    projection: str | None
    pixel_size: PixelSize | None
    warnings: tuple[str, ...]
    polarity: Polarity = "bright"
    measured: tuple[Channel, ...] = ()
    measured_projection: str | None = None

    @property
    def samples(self) -> bool:
        return self.channel is not None and "S" in self.layout.axes

    def plane(self, image: np.ndarray, measured: tuple[Measured, ...] = ()) -> Plane:
        """The :class:`Plane` of this choice holding ``image`` (an empty one for slides) and the
        ``measured`` channels' pixels."""
        channel = self.channel
        return Plane(
            image=image,
            layout=self.layout,
            channel=channel if (channel is not None and len(self.layout.channels) > 1) else None,
            mixed=self.mixed,
            z=self.z,
            t=self.t,
            projection=self.projection,
            pixel_size=self.pixel_size,
            warnings=self.warnings,
            polarity=self.polarity,
            measured=measured,
            measured_projection=self.measured_projection,
        )


def resolve(layout: Layout, sel: Selection, model_channels: int = 1) -> Choice:
    """Check ``sel`` against ``layout`` and say which plane it chooses; reads no pixels.

    Raises:
        SelectionError: several channels/planes and no choice, or a choice the image lacks.
    """
    notes = list(layout.warnings)
    # Choices the image lacks come first: a typo is a clearer error than a missing choice.
    chosen = None if sel.channel is None else _resolve_channel(layout, sel.channel)
    measured = _resolve_measured(layout, sel.measure)
    if chosen is None and sel.polarity == "dark" and layout.rgb:
        # Transmitted light (bright field, H&E): every colour absorbs a share of the light, and
        # the nuclei are what absorbs most; the colours mixed to grey are the image meant.
        chosen = MIX
    if chosen is None and layout.signal_channel is not None and model_channels != 3:
        chosen = layout.channels[layout.signal_channel]
        notes.append(
            f"only the {chosen.name} channel of this colour image holds signal (the other two are "
            "empty): it is the one segmented"
        )
    if sel.project is not None and sel.project not in PROJECTIONS:
        raise SelectionError(
            f"project must be one of {', '.join(PROJECTIONS)}", ("project",), layout.choices()
        )
    if sel.project is not None and sel.z is not None:
        raise SelectionError("choose z= or project=, not both", ("z", "project"), layout.choices())
    if sel.project is not None and "Z" not in layout.planes:
        raise SelectionError(
            f"project={sel.project} projects over Z, and the image has no z-planes"
            + (f" ({_plane_list(layout)})" if layout.planes else ""),
            ("project",),
            layout.choices(),
        )
    _check_measure_project(layout, sel)
    for axis, value, param in (("Z", sel.z, "z"), ("T", sel.t, "t")):
        if value is not None:
            _check_index(layout, axis, value, param)

    missing: list[str] = []
    parts: list[str] = []
    colour_whole = layout.rgb and (layout.grey_rgb or model_channels == 3)
    if chosen is None and layout.needs_channel and not colour_whole:
        missing.append("channel")
        offer = _channel_list(layout)
        if layout.rgb:
            offer += (f"; or channel={MIX} to mix the colours to grey; or polarity=dark for dark nuclei "
                      "on a bright field (bright field, H&E: the colours mixed, as optical density)")
        parts.append(f"{len(layout.channels)} channels — choose one with channel= (index or name): {offer}")
    if "Z" in layout.planes and sel.z is None and sel.project is None:
        missing.append("z")
        parts.append(f"{layout.planes['Z']} z-planes — choose one with z=0..{layout.planes['Z'] - 1} "
                     "or project=max")
    if "T" in layout.planes and sel.t is None:
        missing.append("t")
        parts.append(f"{layout.planes['T']} time points — choose one with t=0..{layout.planes['T'] - 1}")
    if missing:
        raise SelectionError(
            f"the image ({layout.format}, axes {layout.axes}, shape {'×'.join(map(str, layout.shape))}) has "
            + "; and ".join(parts)
            + ". One plane is segmented per request"
            + (STACK_HINT if "z" in missing else "."),
            tuple(missing),
            layout.choices(),
            missing=True,
        )

    channel = chosen if isinstance(chosen, Channel) else None
    coords: dict[str, int] = {}
    if sel.t is not None and "T" in layout.planes:
        coords["T"] = sel.t
    if channel is not None and "S" not in layout.axes:
        coords["C"] = channel.index

    pixel_size = layout.pixel_size
    if sel.pixel_size_um is not None:
        if pixel_size is not None:
            notes.append(
                f"pixel_size={sel.pixel_size_um:g} µm replaces the file's "
                f"{pixel_size.header()} µm ({pixel_size.source})"
            )
        # The request gives x/y only: the file's z-step, if any, still holds.
        z_um = pixel_size.z_um if pixel_size is not None else None
        pixel_size = PixelSize(sel.pixel_size_um, sel.pixel_size_um, "request", z_um)
    return Choice(
        layout=layout,
        channel=channel,
        mixed=chosen == MIX,
        coords=coords,
        z=sel.z if "Z" in layout.planes else None,
        t=sel.t if "T" in layout.planes else None,
        projection=sel.project if sel.project in PROJECTIONS else None,
        pixel_size=pixel_size,
        warnings=tuple(notes),
        polarity=sel.polarity,
        measured=measured,
        # measure_project= as the plane's own projection is no other reading
        measured_projection=sel.measure_project if sel.measure_project != sel.project else None,
    )


def _check_measure_project(layout: Layout, sel: Selection) -> None:
    """``measure_project=``: a projection, of the channels of ``measure=``, over an image's Z."""
    if sel.measure_project is None:
        return
    if sel.measure_project not in PROJECTIONS:
        raise SelectionError(f"measure_project must be one of {', '.join(PROJECTIONS)}", ("measure_project",),
                             layout.choices())
    if not sel.measure:
        raise SelectionError(
            f"measure_project={sel.measure_project} projects the channels measured: give them with measure=",
            ("measure_project",), layout.choices())
    if "Z" not in layout.planes:
        raise SelectionError(
            f"measure_project={sel.measure_project} projects over Z, and the image has no z-planes"
            + (f" ({_plane_list(layout)})" if layout.planes else ""),
            ("measure_project",), layout.choices())


def _select(
    source: _Source,
    sel: Selection,
    model_channels: int,
    should_stop: Callable[[], bool] | None = None,
    max_pixels: int | None = None,
) -> Plane:
    layout = source.layout
    choice = resolve(layout, sel, model_channels)
    if max_pixels is not None:
        check_measured(len(choice.measured), layout.width, layout.height, max_pixels)
    channel = choice.channel
    colour_whole = layout.rgb and (layout.grey_rgb or model_channels == 3)

    pages_per_channel = "S" not in layout.axes and len(layout.channels) > 1

    def plane_at(z: int | None, channel: Channel | None = channel) -> np.ndarray:
        at = dict(choice.coords)
        if channel is not None and channel != choice.channel and pages_per_channel:
            at["C"] = channel.index  # a measured channel: its own pages, at the same z / t
        if z is not None:
            at["Z"] = z
        array = source.first if (not at and source.first is not None) else source.read(at)
        if channel is not None and array.ndim == 3:
            array = np.ascontiguousarray(array[:, :, channel.index])
        return array

    def read(channel: Channel | None, projection: str | None = choice.projection) -> np.ndarray:
        if projection is None:
            return plane_at(choice.z, channel)
        # A sum in float32: a 16-bit stack's sum outgrows its type (exact up to 2²⁴, 256 full slices).
        first = plane_at(0, channel)
        image = first.astype(np.float32) if projection == "sum" else first.copy()
        combine = np.add if projection == "sum" else np.maximum
        for k in range(1, layout.planes["Z"]):
            if should_stop is not None and should_stop():
                raise DecodeCancelled(f"stopped after {k} of {layout.planes['Z']} planes of the projection")
            combine(image, plane_at(k, channel), out=image, casting="unsafe")
        return image

    image = read(channel)
    if image.ndim == 3 and channel is None and not choice.mixed and not colour_whole and image.shape[2] > 1:
        # a C-less multi-sample page with one sample is handled above; anything left is a bug
        raise AssertionError(f"unexpected plane shape {image.shape}")
    measured = []
    projection = choice.measured_projection or choice.projection
    for wanted in choice.measured:
        # The segmented channel's pixels are already here (a colour image kept whole is not one),
        # unless the measured channels are read as another projection.
        same = wanted == channel and image.ndim == 2 and projection == choice.projection
        pixels = image if same else read(wanted, projection)
        if pixels.ndim != 2:  # a one-channel page read whole, e.g. grey: its only plane
            raise AssertionError(f"unexpected measured plane shape {pixels.shape}")
        measured.append(Measured(wanted, pixels))
    return choice.plane(image, tuple(measured))
