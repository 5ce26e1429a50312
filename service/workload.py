"""What an upload will cost before any pixel is decoded: the pixels of one plane, from its header.

Admission (``service.admission``) charges a request by these pixels *before* decoding, because
decoding is where memory is first spent (eight 8192² RGBA16 previews decoded at once took
14.6 GB). Only headers are read here, after the file's structure is walked and bounded
(``service.structure``: Pillow's header parsing is what a hostile file makes slow): a TIFF's
first IFD, a CZI's subblock directory, an OIB's settings, another format's header through Pillow,
as ``imaging.probe`` does.
"""

from __future__ import annotations

import warnings

from service import imaging, microscopy, structure


def plane_pixels(data: bytes, max_pixels: int, limits: structure.Limits | int) -> int:
    """Width × height of the image (of one page, for a TIFF stack).

    Raises:
        imaging.ImageTooLarge: over ``max_pixels`` (413 before admission, not after it).
        structure.TooComplex: more pages, tags, chunks, segments or metadata than ``limits``
            (an int: the page limit, the other bounds at their defaults).
        imaging.UndecodableImage / UnsupportedImageType: no readable header.
    """
    structure.check(data, structure.as_limits(limits))
    if data[:10] == structure.CZI_MAGIC:
        return _czi_pixels(data, max_pixels)
    if structure.is_lif(data):
        return _lif_pixels(data, max_pixels)
    if structure.is_nd2(data):
        return _nd2_pixels(data, max_pixels, structure.as_limits(limits).max_metadata_bytes)
    if structure.is_compound(data):
        return _oib_pixels(data, max_pixels, structure.as_limits(limits).max_metadata_bytes)
    if structure.is_dv(data):
        return _dv_pixels(data, max_pixels)
    if structure.is_hdf5(data):
        return _ims_pixels(data, max_pixels, structure.as_limits(limits).max_metadata_bytes)
    width, height = _tiff_size(data) if microscopy.is_tiff(data) else (None, None)
    if width is None or height is None:
        try:
            info = imaging.probe(data)
        except imaging.ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a parser's bug on a hostile header is the upload's fault
            raise imaging.UndecodableImage(f"unreadable image header: {type(exc).__name__}: {exc}") from exc
        width, height = info.width, info.height
    if width * height > max_pixels:
        raise imaging.ImageTooLarge(width * height, max_pixels, width, height)
    return width * height


def _czi_pixels(data: bytes, max_pixels: int) -> int:
    """A CZI's plane from its subblock directory (the extent of its full-resolution tiles)."""
    from service import czi

    with microscopy.decoder_errors():
        layout, _read, close = czi.open_planes(data, max_pixels)
    close()
    return layout.width * layout.height


def _lif_pixels(data: bytes, max_pixels: int) -> int:
    """A LIF's largest plane within ``max_pixels`` among its images (``lif.admitted_pixels``)."""
    from service import lif

    with microscopy.decoder_errors():
        return lif.admitted_pixels(data, max_pixels)


def _nd2_pixels(data: bytes, max_pixels: int, metadata_bytes: int) -> int:
    """An ND2's plane (every position of the experiment has the same size; compressed frames: every
    channel of one), from its metadata (``nd2.admitted_pixels``)."""
    from service import nd2

    with microscopy.decoder_errors():
        return nd2.admitted_pixels(data, max_pixels, metadata_bytes)


def _oib_pixels(data: bytes, max_pixels: int, metadata_bytes: int) -> int:
    """An OIB's or a ZVI's plane, from its settings or its first item (``compound.admitted_pixels``)."""
    from service import compound

    with microscopy.decoder_errors():
        return compound.admitted_pixels(data, max_pixels, metadata_bytes)


def _tiff_size(data: bytes) -> tuple[int | None, int | None]:
    """``(width, height)`` of a TIFF's first page, or ``(None, None)`` when tifffile cannot say
    (the general decoder may still read it, as ``microscopy`` falls back to it)."""
    import tifffile  # imported only for TIFF uploads, as in service.microscopy

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(microscopy.container_stream(data)) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
    except Exception:  # noqa: BLE001 - tifffile raises many kinds on corrupt input
        return None, None


def _dv_pixels(data: bytes, max_pixels: int) -> int:
    """A DeltaVision file's plane, from its header (every section has the size)."""
    from service import dv

    width, height = dv.plane_pixels(data)
    if width * height > max_pixels:
        raise imaging.ImageTooLarge(width * height, max_pixels, width, height)
    return width * height


def _ims_pixels(data: bytes, max_pixels: int, metadata_bytes: int) -> int:
    """An Imaris file's plane, from its description (``ims.admitted_pixels``)."""
    from service import ims

    return ims.admitted_pixels(data, max_pixels, metadata_bytes)
