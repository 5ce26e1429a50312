"""One frame of a stack, or one image of a file holding several, as a small file: what
``unet-segment --t all`` / ``--z all`` / ``--series`` sends.

A movie is one file of many frames. Segmenting it frame by frame used to send (over HTTP) or read
(in local mode) the whole file once per frame: a 500-frame movie of 1024² 16-bit frames (1 GB)
went over the wire 500 times, and a file past the service's upload limit (``UNET_MAX_UPLOAD_BYTES``,
256 MB) could not be segmented at all: every frame was a 413.

:func:`cut_frame` reads only the pages one frame needs and writes them as a **partial OME-TIFF**:
its OME-XML describes the whole series (every axis and its size, the channel names, the pixel
size) and places each page it holds at its own C/Z/T (``TiffData FirstC/FirstZ/FirstT``), as the
files of an OME-TIFF fileset split over several files do. The service reads the cut as it reads
the file (tifffile maps the pages; :mod:`service.microscopy` knows a missing page): the same
axes, channels and plane choices, ``t=7`` still means the eighth time point, and ROIs and GeoJSON
place the objects at that frame. A page the request needs and the cut lacks is the service's
clear 400, never a plane of zeros.

Which pages: those of the frame the command line's choices need (the channel chosen, the z-slice,
or every slice for ``--project max``), read with the service's own choice logic
(:func:`service.microscopy.resolve`); where the choices are incomplete (no channel for a
two-channel movie), every page of the frame, so the service answers with the file's choices.

:func:`cut_image` does the same for one image of a file holding several (an OME-TIFF's Images, a
CZI's scenes, a LIF project's images: a LAS X project is often gigabytes): the pages of that image
the choices need, written as an OME-TIFF of that image alone, read without ``series=``.

What does not carry over: the pixel size is given as OME's, so ``X-Pixel-Size-Source`` reads
``ome`` where the file said ``imagej`` or ``tiff``, and notices about the file's own metadata (a
print resolution ignored, a second series) are not repeated per frame, and the answer for an image
cut out of several has no ``X-Series``. A Zeiss CZI, a Leica LIF, a Nikon ND2 and an Olympus OIB
are cut the same way (their planes read by :mod:`service.czi`, :mod:`service.lif`,
:mod:`service.nd2` and :mod:`service.oib`), so a
time-lapse or a project past the upload limit is segmented frame by frame, image by image, each
sent as an OME-TIFF; so is a DeltaVision file. A file whose channels are the samples of one page (a
Zeiss LSM) is cut channel by channel, each a page. Anything this module cannot cut (neither TIFF,
CZI, LIF, ND2, OIB nor DeltaVision, pages of mixed pixel types) is sent whole, as before, and the
service says what it makes of it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from service import compound, czi, dv, imaging, ims, lif, microscopy, nd2, oib, structure, tiff_sets
from service.microscopy import Layout, Selection

OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
#: OME ``Pixels/@Type`` of each pixel type a decoded page has (``imaging.supported_dtype``).
OME_TYPES = {"uint8": "uint8", "uint16": "uint16", "float32": "float"}
#: Past this many bytes of pages the cut is written as BigTIFF (classic TIFF offsets are 32-bit).
BIGTIFF_ABOVE = 2**32 - 2**25
#: Enough of a file's first bytes for every signature read here (an ND2's runs to byte 48).
_HEAD_BYTES = 128

Page = dict[str, int]  # {"C": c, "Z": z, "T": t}
PageReader = Callable[[Page], np.ndarray]


def pages_for(layout: Layout, axis: str | None, index: int | None, selection: Selection) -> list[Page]:
    """The pages (C/Z/T coordinates) plane ``index`` along ``axis`` (``"T"`` or ``"Z"``; None: the
    image whole) needs with ``selection`` (the command line's channel / z / t / project), in the
    order they are written. A colour file's first page comes too: the service tells grey or one stain saved as
    RGB from a composite on that page (``microscopy.with_colour``), whichever frame is asked for.
    """
    sizes = {
        "C": 1 if "S" in layout.axes else len(layout.channels),  # colour: channels are samples of a page
        "Z": layout.planes.get("Z", 1),
        "T": layout.planes.get("T", 1),
    }
    keep: dict[str, list[int]] = {a: list(range(n)) for a, n in sizes.items()}
    if axis is not None and index is not None:
        keep[axis] = [index]
        selection = replace(selection, **{axis.lower(): index})
    try:
        choice = microscopy.resolve(layout, selection)
    except microscopy.SelectionError:
        pass  # incomplete or wrong choices: the whole frame, and the service lists the file's choices
    else:
        if "C" in choice.coords:  # and the channels measured (measure=), each from its own pages
            measured = [] if "S" in layout.axes else [m.index for m in choice.measured]
            keep["C"] = sorted({choice.coords["C"], *measured})
        if choice.z is not None and choice.measured_projection is None:
            keep["Z"] = [choice.z]  # (measured channels read as a projection need every z)
        if choice.t is not None:
            keep["T"] = [choice.t]
    pages = [{"C": c, "Z": z, "T": t} for t in keep["T"] for z in keep["Z"] for c in keep["C"]]
    first = {"C": 0, "Z": 0, "T": 0}
    if layout.rgb and first not in pages:
        pages.insert(0, first)
    return pages


def ome_xml(layout: Layout, pages: list[Page], dtype: np.dtype) -> str:
    """OME-XML describing ``layout``'s whole series, of which the file holds ``pages`` (IFD k is
    ``pages[k]``). ASCII: non-ASCII names and units become character references, as TIFF's
    ImageDescription is an ASCII tag."""
    ET.register_namespace("", OME_NAMESPACE)

    def tag(name: str) -> str:
        return f"{{{OME_NAMESPACE}}}{name}"

    samples = layout.shape[-1] if "S" in layout.axes else 1
    size_c = samples if samples > 1 else len(layout.channels)
    root = ET.Element(tag("OME"))
    image = ET.SubElement(root, tag("Image"), ID="Image:0")
    attributes = {
        "ID": "Pixels:0",
        "DimensionOrder": "XYCZT",
        "Type": OME_TYPES[str(dtype)],
        "SizeX": str(layout.width),
        "SizeY": str(layout.height),
        "SizeC": str(size_c),
        "SizeZ": str(layout.planes.get("Z", 1)),
        "SizeT": str(layout.planes.get("T", 1)),
    }
    if samples > 1:
        attributes["Interleaved"] = "true"
    if layout.pixel_size is not None:
        attributes |= {
            "PhysicalSizeX": repr(layout.pixel_size.x_um), "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": repr(layout.pixel_size.y_um), "PhysicalSizeYUnit": "µm",
        }
        if layout.pixel_size.z_um is not None:  # the z-step, for volumes measured from the cut frames
            attributes |= {"PhysicalSizeZ": repr(layout.pixel_size.z_um), "PhysicalSizeZUnit": "µm"}
    pixels = ET.SubElement(image, tag("Pixels"), attributes)
    if samples > 1:
        ET.SubElement(pixels, tag("Channel"), ID="Channel:0:0", SamplesPerPixel=str(samples))
    else:
        for channel in layout.channels:
            named = {"Name": channel.name} if channel.name else {}
            ET.SubElement(pixels, tag("Channel"), ID=f"Channel:0:{channel.index}", SamplesPerPixel="1",
                          **named)
    for ifd, page in enumerate(pages):
        ET.SubElement(pixels, tag("TiffData"), FirstC=str(page["C"]), FirstZ=str(page["Z"]),
                      FirstT=str(page["T"]), IFD=str(ifd), PlaneCount="1")
    text = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text.encode("ascii", "xmlcharrefreplace").decode()


def file_layout(path: Path, max_pixels: int, series: int | None = None) -> Layout | None:
    """What the TIFF, CZI, LIF, ND2, OIB or DeltaVision file at ``path`` holds (at image ``series``,
    None: the first), read from its header (and a TIFF's first page) as the service reads an upload,
    without reading the file whole; None: neither, unreadable, no such image, or a plane over
    ``max_pixels`` (sent whole, the service says why)."""
    with _opened(path, max_pixels, series) as opened:
        return None if opened is None else opened[0]


def cut_frame(
    path: Path, axis: str, index: int, selection: Selection, max_pixels: int, series: int | None = None
) -> bytes | None:
    """The partial OME-TIFF of plane ``index`` along ``axis`` (``"t"`` or ``"z"``) of the file at
    ``path`` (of its image ``series``, None: the first), holding the pages :func:`pages_for` names;
    None where the file is not cut (not a TIFF, CZI, LIF, ND2, OIB or DeltaVision stack with that
    plane, unreadable, a frame over ``max_pixels``, pages of mixed pixel types): the caller sends the
    file whole and the service says what it makes of it."""
    return _cut(path, selection, max_pixels, series, axis.upper(), index)


def cut_image(path: Path, series: int, selection: Selection, max_pixels: int) -> bytes | None:
    """The OME-TIFF of image ``series`` of a file holding several (an OME-TIFF's Images, a CZI's
    scenes, a LIF project's images), holding the pages ``selection`` needs (every page of the image
    where the choices are incomplete), read by the service as that image alone (without
    ``series=``): a project of gigabytes is sent one image at a time. None where the file holds one
    image, or is not cut (as :func:`cut_frame`)."""
    return _cut(path, selection, max_pixels, series, None, None)


def cut_split_image(path: Path, selection: Selection, max_pixels: int) -> bytes | None:
    """The OME-TIFF of the pages ``selection`` needs (every page where the choices are incomplete)
    of an OME-TIFF image split over several files (``tiff_sets.image_files``), read as the set from
    ``path``, one of them: sent alone, the file holds some of the image's planes and, where the
    set's metadata lies in a companion file, none of its channel names. None where it is not cut
    (as :func:`cut_frame`)."""
    return _cut(path, selection, max_pixels, None, None, None, whole=True)


def convert_oif(path: Path, selection: Selection, max_pixels: int) -> bytes:
    """The OME-TIFF of the pages ``selection`` needs (every page where the choices are incomplete)
    of an Olympus OIF, whose planes lie in the folder beside its ``.oif``: the service cannot take
    the file as it is, so there is nothing to fall back on.

    Raises:
        imaging.ImageError, microscopy.SelectionError, OSError: what keeps it from being read (no
            folder, a plane the acquisition lacks, planes of different types), in the service's words.
    """
    layout, read, close = oib.open_oif(path, max_pixels)
    try:
        written = _write(layout, pages_for(layout, None, None, selection), read)
    finally:
        close()
    if written is None:
        raise imaging.UnsupportedImageType("the OIF's planes are of different pixel types")
    return written


def _cut(
    path: Path, selection: Selection, max_pixels: int, series: int | None, axis: str | None,
    index: int | None, whole: bool = False,
) -> bytes | None:
    with _opened(path, max_pixels, series) as opened:
        if opened is None:
            return None
        layout, read = opened
        if axis is None and layout.series_count < 2 and not whole:
            return None  # one image: nothing to cut it from
        if axis is not None and not 0 <= (index or 0) < layout.planes.get(axis, 0):
            return None
        if "S" in layout.axes and not layout.rgb:
            layout, read = _samples_as_pages(layout, read)
        try:
            return _write(layout, pages_for(layout, axis, index, selection), read)
        except (imaging.ImageError, OSError, microscopy.SelectionError, ValueError):
            # A page the file cannot give (an acquisition stopped early: a SelectionError; a member
            # of a set of another size: tifffile's ValueError) is the service's to answer: the file
            # is sent whole.
            return None


def _samples_as_pages(layout: Layout, read: PageReader) -> tuple[Layout, PageReader]:
    """A file whose channels are the samples of one page (a Zeiss LSM: ZEN stores a plane's
    tracks so; a 2-sample TIFF) as one whose channels are pages: the cut then holds the chosen
    channel (and those measured) as pages of their own, named, like any OME-TIFF's."""
    by_page = replace(layout, axes=layout.axes.replace("S", ""), shape=layout.shape[:-1])

    def read_channel(page: Page) -> np.ndarray:
        return np.ascontiguousarray(read({**page, "C": 0})[..., page["C"]])

    return by_page, read_channel


@contextlib.contextmanager
def _opened(
    path: Path, max_pixels: int, series: int | None = None
) -> Iterator[tuple[Layout, Callable[[Page], np.ndarray]] | None]:
    """The file's layout (at image ``series``, None: the first) and page reader while open; None
    for what is not read by plane, or has no such image."""
    import tifffile  # only --t all / --z all / --series read files this way

    head = _head(path)
    if czi.is_czi(head):
        with _vendor_opened(path, max_pixels, series, structure.check_czi, czi.open_planes) as opened:
            yield opened
        return
    if structure.is_lif(head):
        with _vendor_opened(path, max_pixels, series, structure.check_lif, lif.open_planes) as opened:
            yield opened
        return
    if structure.is_nd2(head):
        with _vendor_opened(path, max_pixels, series, structure.check_nd2, nd2.open_planes) as opened:
            yield opened
        return
    if structure.is_compound(head):
        walk, open_planes = structure.check_compound, compound.open_planes  # an OIB or a ZVI
        with _vendor_opened(path, max_pixels, series, walk, open_planes) as opened:
            yield opened
        return
    if path.suffix.lower() == ".oif":  # FluoView's folder format: the settings here, the planes beside
        with _vendor_opened(path, max_pixels, series, None, oib.open_oif) as opened:
            yield opened
        return
    if structure.is_dv(head):  # no structure to walk: the header's sizes are checked against the file
        with _vendor_opened(path, max_pixels, series, None, dv.open_planes) as opened:
            yield opened
        return
    if structure.is_hdf5(head):  # an Imaris file: its reads are charged to a budget as they are made
        with _vendor_opened(path, max_pixels, series, None, ims.open_planes) as opened:
            yield opened
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd tags; what matters is whether the pages read
            tif = tifffile.TiffFile(path)
            try:
                companion = tiff_sets.companion_xml(tif, microscopy.DEFAULT_LIMITS)
            except (imaging.ImageError, structure.TooComplex):
                companion = None  # read alone, as the service reads it
            if companion is not None:  # a set's metadata in its companion file: read the set by it
                tif.close()
                tif = tifffile.TiffFile(path, omexml=companion)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: sent whole, and answered as such
        yield None
        return
    try:
        try:
            opened = microscopy.tiff_planes(tif, max_pixels, series)
        except (imaging.ImageError, OSError, microscopy.SelectionError):
            opened = None
        yield opened
    finally:
        tif.close()


def _head(path: Path) -> bytes:
    """The file's first bytes, enough for a CZI's, a LIF's or an ND2's signature (empty if it cannot be read:
    then it is not read by plane)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(_HEAD_BYTES)
    except OSError:
        return b""


@contextlib.contextmanager
def _vendor_opened(
    path: Path,
    max_pixels: int,
    series: int | None,
    walk: Callable[[bytes, structure.Limits], object] | None,
    open_planes: Callable[[Path, int, int | None], tuple[Layout, PageReader, Callable[[], None]]],
) -> Iterator[tuple[Layout, Callable[[Page], np.ndarray]] | None]:
    """A CZI's, a LIF's or an ND2's planes (at image ``series``), read from the file where it lies, its
    structure walked on a map of it as the service walks an upload's (``walk`` None: a format whose
    reader bounds itself, DeltaVision, Imaris, OIF): a movie or a project of any size is cut frame
    by frame, image by image. (A SelectionError, no such image, is a ValueError.)"""
    try:
        if walk is not None:
            structure.walk_file(path, walk, structure.Limits())
        layout, read, close = open_planes(path, max_pixels, series)
    except (imaging.ImageError, OSError, ValueError):
        yield None
        return
    try:
        yield layout, read
    finally:
        close()


def _write(layout: Layout, pages: list[Page], read: Callable[[Page], np.ndarray]) -> bytes | None:
    """The pages, read one at a time and written as they come (one page in memory besides the
    output), the OME-XML in the first page's description."""
    import tifffile

    first = read(pages[0])
    big = first.nbytes * len(pages) > BIGTIFF_ABOVE
    photometric = "rgb" if layout.rgb else "minisblack"
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, bigtiff=big, ome=False) as writer:
        for k, page in enumerate(pages):
            array = first if k == 0 else read(page)
            if array.dtype != first.dtype or array.shape != first.shape:
                return None  # one OME pixel type per series: send the file as it is
            description = ome_xml(layout, pages, first.dtype) if k == 0 else None
            writer.write(array, photometric=photometric, description=description, metadata=None)
    return buffer.getvalue()
