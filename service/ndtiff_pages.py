"""An NDTiff file's axes from its pages' own metadata, where its index is not there (an upload).

Micro-Manager 2's NDTiff format (pycro-manager's and Magellan's too) keeps where each image lies in
the acquisition — channel, z, time point, stage position — in the dataset's ``NDTiff.index``,
beside its TIFFs. tifffile reads the index by path; from bytes (an upload, a stored upload) it has
only the file's pages and offered them as one unlabelled sequence, which the service read as
z-slices: channels, time points and positions became "z-planes", and ``project=max`` mixed them.
Each page carries its own coordinates too, ``Axes`` in its Micro-Manager metadata (tag 51123:
``{"channel": "DAPI", "z": 3, "time": 0}``). This module lays the pages out by them as tifffile
lays them out by the index: names numbered as first seen (``channel=DAPI`` then names one), integer
indices from their least, a combination the file lacks a missing plane (a 400 when asked for,
never zeros). Positions become the file's images (:mod:`service.mm_positions`).

Checked on Micro-Manager's own NDTiff test data (NDStorage, v2 and v3): every page of each upload
lies where tifffile puts it when it reads the dataset by path with its index.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service import extent, structure, tiff_vendors
from service.imaging import UnsupportedImageType

#: Micro-Manager's metadata tag on each page.
MICROMANAGER_TAG = 51123

#: The NDTiff axes read, as the service's letters, outermost first (positions become images).
AXES = {"position": "R", "time": "T", "z": "Z", "channel": "C"}

#: The attribute of the series built here (``TiffPageSeries.attr``) holding each axis's names
#: (``{"C": ["DAPI", "FITC"]}``), where the pages name its indices.
NAMES = "ndtiff names"


def from_pages(
    tif: Any, max_metadata_bytes: int, max_pages: int = structure.Limits().max_tiff_pages
) -> Any | None:
    """The series of an NDTiff read from bytes, its pages laid out along R, T, Z and C by their own
    ``Axes``; None for any other TIFF, an NDTiff read by path (tifffile reads its index), or one of
    a single page.

    Raises:
        UnsupportedImageType: the pages lie along axes the service does not read (an explore
            acquisition's tile grid, row and column), or give no coordinates.
        structure.TooComplex: their metadata together past ``max_metadata_bytes``, or their
            coordinates spanning more planes than :mod:`service.extent` allows (``max_pages``).
    """
    import tifffile

    if tif.filehandle.is_file or not _is_ndtiff(tif) or len(tif.pages) < 2:
        return None
    tags = _charged(tif.pages, max_metadata_bytes)
    coordinates = [_axes_of(tag, number) for number, tag in enumerate(tags)]
    keys = sorted({key for axes in coordinates for key in axes}, key=list(AXES).index)
    names: dict[str, list[str]] = {}
    indices = np.zeros((len(coordinates), len(keys)), dtype=np.int64)
    for column, key in enumerate(keys):
        values = [axes.get(key, 0) for axes in coordinates]
        if all(isinstance(v, str) for v in values):
            seen = list(dict.fromkeys(values))
            names[AXES[key]] = seen
            indices[:, column] = [seen.index(v) for v in values]
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            indices[:, column] = values
            indices[:, column] -= indices[:, column].min()
        else:
            raise UnsupportedImageType(f"the NDTiff's pages give their {key} as names and numbers mixed; "
                                       "read the dataset by path (its NDTiff.index)")
    repeated = len(coordinates) - len({tuple(row) for row in indices.tolist()})
    if repeated:
        raise UnsupportedImageType(
            f"{repeated} of the NDTiff's {len(coordinates)} pages lie where another does (the same "
            "channel, z, time and position, or none given); read the dataset by path (its NDTiff.index)"
        )
    shape = tuple(int(n) + 1 for n in indices.max(axis=0)) if keys else ()
    extent.check(math.prod(shape), max_pages, "the NDTiff's page coordinates")  # a list that long next
    pages: list[Any] = [None] * math.prod(shape)
    for page, index in zip(tif.pages, indices, strict=True):
        pages[int(np.ravel_multi_index(tuple(index), shape))] = page
    keyframe = tif.pages.first
    return tifffile.TiffPageSeries(
        pages, shape=shape + tuple(keyframe.shape), dtype=keyframe.dtype,
        axes="".join(AXES[k] for k in keys) + keyframe.axes, parent=tif, kind="ndtiff",
        attr={NAMES: names},
    )


def _is_ndtiff(tif: Any) -> bool:
    """An NDTiff's header (after the TIFF's) gives its version, 2 or later, and no index map."""
    meta = tiff_vendors.micromanager_metadata(tif)
    try:
        version = int(meta.get("MajorVersion", 0) or 0)
    except (TypeError, ValueError, OverflowError):
        return False
    return "IndexMap" not in meta and version >= 2


def _charged(pages: Any, max_metadata_bytes: int) -> Any:
    """Each page's Micro-Manager metadata tag (None where it has none), its bytes counted against
    ``max_metadata_bytes`` as it is read."""
    spent = 0
    for page in pages:
        tag = page.tags.get(MICROMANAGER_TAG)
        spent += int(tag.valuebytecount) if tag is not None else 0
        if spent > max_metadata_bytes:
            raise structure.TooComplex(
                f"the NDTiff pages' metadata has more than {max_metadata_bytes:,} bytes",
                max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
            )
        yield tag


def _axes_of(tag: Any, number: int) -> dict[str, Any]:
    """Page ``number``'s coordinates (``Axes`` in its metadata ``tag``), checked to be axes the
    service reads."""
    value = tag.value if tag is not None else None
    axes = value.get("Axes") if isinstance(value, dict) else None
    if not isinstance(axes, dict):
        raise UnsupportedImageType(f"page {number} of the NDTiff does not say where it lies in the "
                                   "acquisition (no Axes in its metadata); read the dataset by path")
    other = sorted(str(key) for key in axes if key not in AXES)
    if other:
        raise UnsupportedImageType(
            f"the NDTiff's pages lie along {', '.join(other)} besides channel, z, time and position "
            "(an explore acquisition's tiles: row and column); stitch them, or export the positions "
            "as OME-TIFF from Micro-Manager"
        )
    return axes
