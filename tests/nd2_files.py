"""Nikon ND2 files for tests, written as NIS-Elements lays out its current (version 3) files; no
library writes ND2.

The layout, as the ``nd2`` reader (T. Lambert, BSD-3) and Nikon's SDK read it: a file is a run of
chunks, each ``magic 0x0ABECEDA, name length (uint32), data length (uint64)``, the name, the data;
the first is the signature chunk (``ND2 FILE SIGNATURE CHUNK NAME01!``, data ``Ver3.0``), the last
the chunk map: every chunk's name (ending ``!``) with its offset and size, closed by
``ND2 CHUNK MAP SIGNATURE 0000001!`` and the map's own offset, the file's last 40 bytes.
Metadata chunks hold "CLX lite" records: a type byte, the name's length in UTF-16 units (with its
terminating null), the name, the value; a level (type 11) is ``item count (uint32), length
(uint64)``, its records, then one uint64 per item. ``ImageAttributesLV!`` gives the frame (width,
height, components, bits, row bytes, compression); ``ImageMetadataLV!`` the experiment's loops,
outermost first (time 1, XY positions 2, z 4), each the next one's parent; ``ImageMetadataSeqLV|0!``
the channels (``sPicturePlanes``: one plane per channel, its ``sDescription``) and the calibration
(µm per pixel). Frame ``ImageDataSeq|N!`` (N: the loops' indices raveled, the innermost fastest)
holds every channel of one time point / position / z-slice interleaved pixel by pixel (``YXC``),
its pixels 4,096 bytes after the chunk's start, after an 8-byte time stamp; zlib-compressed when
the attributes say lossless.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

CHUNK_MAGIC = 0x0ABECEDA
FILE_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
MAP_NAME = b"ND2 FILEMAP SIGNATURE NAME 0001!"
MAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
ALIGNMENT = 4096
#: A frame's pixels lie this far after its chunk's start (header, padded name, time stamp).
FRAME_DATA_OFFSET = 4096

#: The loops an experiment nests, by the letters the service gives them: ND2's loop types.
LOOP_TYPES = {"T": 1, "P": 2, "Z": 4}

_BOOL, _INT32, _UINT32, _DOUBLE, _STRING, _LEVEL = 1, 2, 3, 6, 8, 11


@dataclass
class Nd2:
    """An acquisition: ``pixels`` with ``axes`` outermost first, loops (``T``, ``P``, ``Z`` in the
    order they nest) then ``YX`` then ``C`` (channels) or ``S`` (colour), e.g. ``TPZYXC``,
    ``ZYXC``, ``YX``, ``YXS``."""

    pixels: np.ndarray
    axes: str = "YX"
    channel_names: tuple[str, ...] = ()
    pixel_um: float | None = 0.65
    z_um: float = 0.0
    position_names: tuple[str, ...] = ()
    lossless: bool = False
    bits: int | None = None  # significant bits (12 for a 12-bit camera in uint16)
    row_padding: int = 0  # bytes after each row (NIS pads 8-bit colour rows to 4 bytes)
    version: bytes = b"Ver3.0"
    #: what is written for these frames instead of their pixels (a hostile or broken file)
    frame_bodies: dict[int, bytes] | None = None
    #: the text-info chunk's records as written instead of NIS's (a hostile file)
    text_info: bytes | None = None


def write_nd2(image: Nd2) -> bytes:
    """The ND2 file of ``image``."""
    pixels, axes = image.pixels, image.axes
    if "C" not in axes and "S" not in axes:
        pixels, axes = pixels[..., None], axes + "C"
    loops = [a for a in axes if a in LOOP_TYPES]
    assert axes == "".join(loops) + "YX" + axes[-1], axes
    height, width, components = pixels.shape[-3:]
    rgb = axes[-1] == "S"
    channels = 1 if rgb else components
    itemsize = pixels.dtype.itemsize
    row_bytes = width * components * itemsize + image.row_padding

    attributes = {
        "uiWidth": width, "uiWidthBytes": row_bytes, "uiHeight": height, "uiComp": components,
        "uiBpcInMemory": itemsize * 8, "uiBpcSignificant": image.bits or itemsize * 8,
        "uiSequenceCount": int(np.prod(pixels.shape[: len(loops)], dtype=np.int64)),
        "uiTileWidth": width, "uiTileHeight": height,
        "eCompression": 0 if image.lossless else 2, "dCompressionParam": 0.0,
        "ePixelType": 2 if pixels.dtype.kind == "f" else 1, "uiVirtualComponents": components,
    }
    names = image.channel_names or tuple(f"Channel {c + 1}" for c in range(channels))
    planes = {
        f"a{c}": {
            "uiCompCount": 3 if rgb else 1, "uiSampleIndex": c, "uiModalityMask": 0,
            "sDescription": names[c], "uiColor": 0xFFFFFF,
            # NIS writes each channel's dye (its spectra); the reader needs one per plane.
            "pFluorescentProbe": {"m_sName": names[c], "m_ExcitationSpectrum": _spectrum(405.0 + 80 * c),
                                  "m_EmissionSpectrum": _spectrum(460.0 + 80 * c)},
        }
        for c in range(channels)
    }
    picture = {
        "bCalibrated": image.pixel_um is not None,
        "dCalibration": image.pixel_um if image.pixel_um is not None else 1.0,
        "dAspect": 1.0, "dObjectiveMag": 40.0, "dObjectiveNA": 0.95,
        "sPicturePlanes": {"uiCount": channels, "uiCompCount": components, "sPlaneNew": planes,
                           "sSampleSetting": {}},
    }

    chunks: list[tuple[bytes, bytes, int]] = [
        (b"ImageAttributesLV!", clx_records({"SLxImageAttributes": attributes}), 0),
        (b"ImageMetadataSeqLV|0!", clx_records({"SLxPictureMetadata": picture}), 0),
        (b"ImageTextInfoLV!",
         image.text_info or clx_records({"SLxImageTextInfo": {"TextInfoItem_5": "written by tests"}}), 0),
    ]
    if loops:
        sizes = dict(zip(loops, pixels.shape[: len(loops)], strict=True))
        experiment = clx_records({"SLxExperiment": _experiment(loops, sizes, image)})
        chunks.append((b"ImageMetadataLV!", experiment, 0))
    frames = pixels.reshape(-1, height, width, components)
    for index, frame in enumerate(frames):
        rows = np.ascontiguousarray(frame).reshape(height, -1).view(np.uint8)
        if image.row_padding:
            rows = np.concatenate([rows, np.zeros((height, image.row_padding), np.uint8)], axis=1)
        raw = rows.tobytes()
        body = zlib.compress(raw) if image.lossless else raw
        body = (image.frame_bodies or {}).get(index, body)
        stamp = struct.pack("<d", 100.0 * index)
        name = f"ImageDataSeq|{index}!".encode()
        chunks.append((name, stamp + body, FRAME_DATA_OFFSET - 16 - 8))

    out = bytearray(_chunk(FILE_SIGNATURE, image.version.ljust(64, b"\x00")))
    placed: list[tuple[bytes, int, int]] = []
    for name, data, name_length in chunks:
        out += bytes(-len(out) % ALIGNMENT)
        placed.append((name, len(out), len(data)))
        out += _chunk(name.ljust(name_length, b"\x00"), data)
    out += bytes(-len(out) % ALIGNMENT)
    map_at = len(out)
    entries = b"".join(name + struct.pack("<QQ", at, size) for name, at, size in placed)
    out += _chunk(MAP_NAME, entries + MAP_SIGNATURE + struct.pack("<Q", map_at))
    return bytes(out)


def _spectrum(peak_nm: float) -> dict:
    return {"uiCount": 1, "pPoint": {"Point0": {"eType": 1, "dWavelength": peak_nm, "dTValue": 1.0}}}


def _chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack("<IIQ", CHUNK_MAGIC, len(name), len(data)) + name + data


def _experiment(loops: list[str], sizes: dict[str, int], image: Nd2) -> dict:
    """The nested experiment: the outermost loop, its next level the one inside it, and so on."""
    letter, inner = loops[0], loops[1:]
    count = sizes[letter]
    if letter == "T":
        parameters: dict = {"uiCount": count, "dStart": 0.0, "dPeriod": 1000.0, "dDuration": 1000.0 * count}
    elif letter == "Z":
        parameters = {"uiCount": count, "dZStep": image.z_um, "dZLow": 0.0,
                      "dZHigh": image.z_um * (count - 1), "dZHome": 0.0, "bZInverted": False, "iType": 0}
    else:
        names = image.position_names or ("",) * count
        parameters = {"bUseZ": False, "bRelativeXY": False,
                      "Points": [{"dPosX": 100.0 * p, "dPosY": 0.0, "dPosZ": 0.0, "dPosName": names[p]}
                                 for p in range(count)]}
    level: dict = {"eType": LOOP_TYPES[letter], "uLoopPars": parameters}
    if inner:
        level["ppNextLevelEx"] = [_experiment(inner, sizes, image)]
    return level


def compressed_records(records: bytes) -> bytes:
    """``records`` as NIS compresses a run of CLX lite records: a record of type 76 with no name,
    10 bytes, then zlib's stream of the records."""
    return bytes([76, 0]) + bytes(10) + zlib.compress(records, 9)


def clx_records(records: dict) -> bytes:
    """``records`` as CLX lite: each value's type from its Python type (an ``int`` is uint32 where
    the name says ``ui``, else int32; a dict or a list is a level, a list's items unnamed)."""
    return b"".join(_record(name, value) for name, value in records.items())


def _record(name: str, value: object) -> bytes:
    def head(kind: int) -> bytes:
        return bytes([kind, len(name) + 1]) + (name + "\x00").encode("utf-16-le")

    if isinstance(value, bool):
        return head(_BOOL) + struct.pack("<B", value)
    if isinstance(value, int):
        kind, code = (_UINT32, "<I") if name.startswith("ui") else (_INT32, "<i")
        return head(kind) + struct.pack(code, value)
    if isinstance(value, float):
        return head(_DOUBLE) + struct.pack("<d", value)
    if isinstance(value, str):
        return head(_STRING) + (value + "\x00").encode("utf-16-le")
    items = list(value.items()) if isinstance(value, dict) else [("", v) for v in value]  # type: ignore[attr-defined]
    encoded = [_record(key, item) for key, item in items]
    start = head(_LEVEL)
    length = len(start) + 12 + sum(map(len, encoded))
    offsets, at = [], len(start) + 12
    for part in encoded:
        offsets.append(at)
        at += len(part)
    return (start + struct.pack("<IQ", len(encoded), length) + b"".join(encoded)
            + struct.pack(f"<{len(offsets)}Q", *offsets))
