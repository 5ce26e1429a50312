"""Yokogawa CellVoyager plates (CV7000, CV8000, CQ1): the pixel size their TIFFs do not carry.

A CellVoyager writes each plane of a plate as a TIFF of its own, named after its well, time point,
field, z-slice and channel (``W_B02_T0001F001L01A01Z01C01.tif``), and the measurement's pixel size
per channel only in ``MeasurementDetail.mrf`` beside them (``bts:MeasurementChannel``'s
``HorizontalPixelDimension`` / ``VerticalPixelDimension``, in µm), where Fractal's and faim-ipa's
readers of these plates take it. ``unet-segment`` sends it as ``pixel_size=`` for each plane, so the
tables of a plate come in µm as a MetaXpress plate's do (MetaXpress keeps its calibration in each
TIFF). Pure standard library: the batch client imports it without NumPy.
"""

from __future__ import annotations

import functools
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

#: The measurement settings file a CellVoyager writes beside a plate's images.
MRF = "MeasurementDetail.mrf"
#: Larger than any real one (a few kB: a line a channel); past it the file is not read.
MAX_MRF_BYTES = 4 << 20
#: The channel a plane's file name ends with (``...Z01C02.tif``: channel 2).
_CHANNEL = re.compile(r"Z\d+C(\d+)\.tiff?$", re.IGNORECASE)


def pixel_size_um(path: Path) -> tuple[float, float] | None:
    """(x, y) µm per pixel of the CellVoyager plane at ``path``, from the measurement settings beside
    it; None for any other file, or where they do not give one for its channel."""
    found = _CHANNEL.search(path.name)
    if found is None:
        return None
    return _channel_sizes(path.parent).get(int(found.group(1)))


@functools.lru_cache(maxsize=256)
def _channel_sizes(folder: Path) -> dict[int, tuple[float, float]]:
    mrf = folder / MRF
    try:
        if not mrf.is_file() or mrf.stat().st_size > MAX_MRF_BYTES:
            return {}
        root = ET.fromstring(mrf.read_bytes())
    except (OSError, ET.ParseError, ValueError, LookupError):  # an encoding expat cannot read: none
        return {}
    sizes: dict[int, tuple[float, float]] = {}
    for channel in (e for e in root.iter() if e.tag.endswith("MeasurementChannel")):
        values = {name.rpartition("}")[2]: value for name, value in channel.attrib.items()}
        try:
            number = int(values["Ch"])
            x = float(values["HorizontalPixelDimension"])
            y = float(values.get("VerticalPixelDimension", x))
        except (KeyError, ValueError):
            continue
        if all(math.isfinite(v) and 1e-4 <= v <= 1e3 for v in (x, y)):  # as microscopy's plausible sizes
            sizes[number] = (x, y)
    return sizes
