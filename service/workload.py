"""What an upload will cost before any pixel is decoded: the pixels of one plane, from its header.

Admission (``service.admission``) charges a request by these pixels *before* decoding, because
decoding is where memory is first spent (eight 8192² RGBA16 previews decoded at once took
14.6 GB). Only headers are read here: a TIFF's first IFD (after its pages are counted against
the page limit), another format's header through Pillow, as ``imaging.probe`` does.
"""

from __future__ import annotations

import io
import warnings

from service import imaging, microscopy


def plane_pixels(data: bytes, max_pixels: int, max_pages: int) -> int:
    """Width × height of the image (of one page, for a TIFF stack).

    Raises:
        imaging.ImageTooLarge: over ``max_pixels`` (413 before admission, not after it).
        microscopy.TooManyPages: a TIFF with more than ``max_pages`` pages.
        imaging.UndecodableImage / UnsupportedImageType: no readable header.
    """
    width, height = _tiff_size(data, max_pages) if microscopy.is_tiff(data) else (None, None)
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


def _tiff_size(data: bytes, max_pages: int) -> tuple[int | None, int | None]:
    """``(width, height)`` of a TIFF's first page, or ``(None, None)`` when tifffile cannot say
    (the general decoder may still read it, as ``microscopy`` falls back to it)."""
    import tifffile  # imported only for TIFF uploads, as in service.microscopy

    microscopy.count_tiff_pages(data, max_pages)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
    except Exception:  # noqa: BLE001 - tifffile raises many kinds on corrupt input
        return None, None
