"""A fixed-seed corpus of mutated image files for the decoder fuzz tests (issue 15).

Real PNG (8/16-bit; grey, RGB, RGBA), JPEG (grey, colour, progressive), TIFF (single page,
multi-page, tiled, compressed, OME-TIFF with channels, ImageJ hyperstack), Zeiss CZI (zstd1
channels and slices; a tile scan), Leica LIF (a project of a z-stack and a colour image) and
Nikon ND2 (positions of a two-channel z-stack; a lossless colour frame with padded rows) and
Olympus OIB (a two-channel z-stack) bytes,
small so a few hundred mutants decode in seconds, each mutated by one of: byte flips, truncation,
duplicating a chunk / marker segment / IFD entry / CZI directory entry / LIF memory block / ND2
chunk / OIB directory entry, corrupting a length field (PNG chunk length,
JPEG segment length, TIFF entry count / value count / offset, CZI entry count / dimension count /
subblock position, LIF block size / id length / XML length, ND2 chunk name / data length and the
chunk map's offset, an OIB directory entry's stream size / first sector / sibling or child link
and the header's FAT sector count / directory start).
The same seed always gives the same mutants, so a failure is reproducible from its name.
"""

from __future__ import annotations

import io
import random
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import tifffile

from tests.czi_files import ZSTD1, Tile, czi_bytes
from tests.dv_files import dv_bytes
from tests.ims_files import ims_bytes
from tests.lif_files import Image, lif_bytes
from tests.nd2_files import Nd2, write_nd2
from tests.oib_files import Oib, write_oib
from tests.vendor_tiffs import (
    harmony_bytes,
    lsm_bytes,
    metaseries_bytes,
    mmstack_bytes,
    ndtiff_bytes,
    qptiff_bytes,
)
from tests.zvi_files import Plane, zvi_bytes


def _blobs(height: int, width: int, seed: int, dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 8), max(2, width // 8))).astype(np.float32)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (image - image.min()) / (np.ptp(image) or 1.0)
    return (image * np.iinfo(dtype).max).astype(dtype)


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _jpeg(array: np.ndarray, progressive: bool = False) -> bytes:
    ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def _tiff(array: np.ndarray, **kwargs: object) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **kwargs)
    # OME-XML carries a random UUID: a fixed one of the same length keeps the corpus reproducible
    fixed = b"urn:uuid:00000000-0000-4000-8000-000000000000"
    return re.sub(rb"urn:uuid:[0-9a-f-]{36}", fixed, out.getvalue())


def seeds() -> dict[str, bytes]:
    """The valid files the mutants start from: name → bytes (each under ~10 KB but the ND2s, whose
    frame chunks pad their names to 4 KiB as NIS writes them)."""
    h, w = 24, 32
    grey8, grey16 = _blobs(h, w, 1), _blobs(h, w, 2, np.uint16)
    rgb8 = np.dstack([_blobs(h, w, k) for k in (3, 4, 5)])
    rgba8 = np.dstack([rgb8, _blobs(h, w, 6)])
    rgba16 = np.dstack([_blobs(h, w, k, np.uint16) for k in (7, 8, 9, 10)])
    stack = np.stack([_blobs(h, w, k, np.uint16) for k in range(3)])
    channels = np.stack([_blobs(h, w, k, np.uint16) for k in (11, 12)])
    hyper = np.stack([np.stack([_blobs(h, w, 10 * z + c) for c in range(2)]) for z in range(2)])
    return {
        "png-grey8": _png(grey8),
        "png-grey16": _png(grey16),
        "png-rgb8": _png(rgb8),
        "png-rgba8": _png(rgba8),
        "png-rgba16": _png(rgba16),
        "jpeg-grey": _jpeg(grey8),
        "jpeg-rgb": _jpeg(rgb8),
        "jpeg-progressive": _jpeg(rgb8, progressive=True),
        "tiff-page": _tiff(grey16),
        "tiff-rgb": _tiff(rgb8, photometric="rgb"),
        "tiff-pages": _tiff(stack, photometric="minisblack"),
        "tiff-tiled": _tiff(_blobs(32, 48, 13, np.uint16), tile=(16, 16), compression="zlib"),
        "tiff-lzw": _tiff(grey8, compression="lzw"),
        "ome-tiff-channels": _tiff(
            channels, ome=True, photometric="minisblack",
            metadata={"axes": "CYX", "Channel": {"Name": ["Actin", "DAPI"]}, "PhysicalSizeX": 0.65},
        ),
        "imagej-hyperstack": _tiff(hyper, imagej=True, metadata={"axes": "ZCYX"}),
        "czi-zstd1": czi_bytes(
            [Tile(_blobs(h, w, 10 * z + c, np.uint16), c=c, z=z) for z in range(2) for c in range(2)],
            {0: "Actin", 1: "DAPI"}, 0.65e-6, ZSTD1,
        ),
        "czi-tiles": czi_bytes([Tile(grey8), Tile(_blobs(h, w, 14), x=w - 4, y=6)]),
        # Last: the mutants of the seeds above stay as they were (one random stream, seed by seed).
        "lif-project": lif_bytes([
            Image("Series001", np.stack([channels, channels[::-1]]), "ZCYX", ("Green", "Blue"), z_um=0.5),
            Image("Series002", rgb8, "YXS", folder="Position 2"),
        ]),
        "nd2-positions": write_nd2(Nd2(
            np.stack([np.stack([np.dstack(list(channels)), np.dstack(list(channels[::-1]))])] * 2), "PZYXC",
            ("FITC", "DAPI"), 0.65, 0.5, ("A1", "B1"))),
        "nd2-lossless-rgb": write_nd2(Nd2(rgb8[:, :31], "YXS", lossless=True, row_padding=3)),
        "oib-stack": write_oib(Oib(np.stack([channels, channels[::-1]]), "ZCYX", ("Alexa 488", "DAPI"))),
        "tiff-lsm": lsm_bytes(np.stack([np.stack([grey8] * 3)] * 2), "ZCYX",
                              names=["Ch1-T1", "ChS1-T2", "Ch2-T3"]),
        "tiff-metaseries": metaseries_bytes(_blobs(h, w, 16, np.uint16), 0.65),
        "oib-zvi": zvi_bytes(  # a ZVI: the OIB's container, mutated alike
            [Plane(channels[0], c=0, name="DAPI"), Plane(channels[1], c=3, name="eGFP")]),
        "dv-stack": dv_bytes(np.stack([channels[:, None], channels[::-1, None]]), wavelengths=(455, 525),
                             extended_bytes=64),  # T, C, Z, Y, X
        "ims-stack": ims_bytes(  # an Imaris file: HDF5, its chunks deflated after shuffling
            np.stack([np.stack([channels, channels[::-1]])]), names=["DAPI", "GFP"], chunks=(1, 16, 16)),
        "tiff-qptiff": qptiff_bytes(channels, ["DAPI", "FITC"], 0.4965),  # an Akoya scan: XML per page
        "tiff-ndtiff": ndtiff_bytes(  # a Micro-Manager 2 NDTiff: each page's coordinates in its JSON
            [({"channel": name, "z": z, "position": "Pos0"}, channels[c].astype(np.uint16))
             for z in range(2) for c, name in enumerate(("DAPI", "FITC"))], {"PixelSize_um": 0.65}),
        "tiff-harmony": harmony_bytes(  # an Operetta plane: its description XML in tag 65500
            channels[0].astype(np.uint16), [[("HOECHST 33342", 1)], [("Alexa 488", 2)]], image=(2, 1)),
        "tiff-mmstack": mmstack_bytes(  # a Micro-Manager stack: its index map at the end
            {(c, 0, 0): channels[c].astype(np.uint16) for c in range(2)}, 0,
            {"MicroManagerVersion": "2.0.0", "Frames": 1, "Channels": 2, "ChNames": ["DAPI", "FITC"]}),
    }


# --- structure: where the length fields and segments are ----------------------------------------


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, total length) of each PNG chunk."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        out.append((pos, 12 + length))
        pos += 12 + length
    return out


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, total length) of each marker segment before the first scan's data."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = struct.unpack_from(">H", data, pos + 2)[0]
        out.append((pos, 2 + length))
        pos += 2 + length
        if marker == 0xDA:
            break
    return out


def _tiff_entries(data: bytes) -> list[int]:
    """Offsets of the first IFD's 12-byte entries (classic TIFF)."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, ifd)[0]
    return [ifd + 2 + 12 * k for k in range(count) if ifd + 14 + 12 * k <= len(data)]


def _czi_entries(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each entry of a CZI's subblock directory."""
    directory = struct.unpack_from("<q", data, 84)[0]
    count = struct.unpack_from("<i", data, directory + 32)[0]
    out, pos = [], directory + 160
    for _ in range(count):
        length = 32 + 20 * struct.unpack_from("<i", data, pos + 28)[0]
        out.append((pos, length))
        pos += length
    return out


def _lif_blocks(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each memory block of a LIF (version 2): header, id and bytes."""
    out, pos = [], 13 + 2 * struct.unpack_from("<I", data, 9)[0]
    while pos + 22 <= len(data):
        size, id_units = struct.unpack_from("<QxI", data, pos + 9)
        out.append((pos, 22 + 2 * id_units + size))
        pos += 22 + 2 * id_units + size
    return out


def _nd2_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each chunk of an ND2 the chunk map names: header, name and data."""
    map_at = struct.unpack_from("<Q", data, len(data) - 8)[0]
    entries = data[map_at + 48 : len(data) - 40]
    out, pos = [], 0
    while (end := entries.find(b"!", pos)) >= 0:
        start = struct.unpack_from("<Q", entries, end + 1)[0]
        name_length, length = struct.unpack_from("<IQ", data, start + 4)
        out.append((start, 16 + name_length + length))
        pos = end + 17
    return out


def _oib_entries(data: bytes) -> list[tuple[int, int]]:
    """(start, 128) of each used directory entry of an OIB (the writer's directory is contiguous)."""
    directory = 512 * (struct.unpack_from("<I", data, 48)[0] + 1)
    out, pos = [], directory
    while pos + 128 <= len(data) and data[pos + 66] in (1, 2, 5):
        out.append((pos, 128))
        pos += 128
    return out


def _segments(name: str, data: bytes) -> list[tuple[int, int]]:
    if name.startswith("png"):
        return _png_chunks(data)
    if name.startswith("jpeg"):
        return _jpeg_segments(data)
    if name.startswith("czi"):
        return _czi_entries(data)
    if name.startswith("lif"):
        return _lif_blocks(data)
    if name.startswith("nd2"):
        return _nd2_chunks(data)
    if name.startswith("oib"):
        return _oib_entries(data)
    if name.startswith("dv"):  # the header's size fields, the extended header
        return [(0, 16), (180, 4), (196, 12), (1024, 64)]
    if name.startswith("ims"):
        return _hdf5_structures(data)
    return [(offset, 12) for offset in _tiff_entries(data)]


def _hdf5_structures(data: bytes) -> list[tuple[int, int]]:
    """(start, 32) of the superblock and of each signed HDF5 structure: B-tree nodes (``TREE``), local
    heaps (``HEAP``), symbol-table nodes (``SNOD``), version-2 object headers (``OHDR``)."""
    found = [(0, 32)]
    for signature in (b"TREE", b"HEAP", b"SNOD", b"OHDR"):
        start = data.find(signature)
        while start != -1:
            found.append((start, 32))
            start = data.find(signature, start + 4)
    return found


# --- mutations ------------------------------------------------------------------------------------


def flip_bytes(rng: random.Random, name: str, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, name: str, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def duplicate_segment(rng: random.Random, name: str, data: bytes) -> bytes:
    start, length = rng.choice(_segments(name, data))
    segment = data[start : start + length]
    return data[: start + length] + segment * rng.randint(1, 3) + data[start + length :]


def corrupt_length(rng: random.Random, name: str, data: bytes) -> bytes:
    out = bytearray(data)
    start, _ = rng.choice(_segments(name, data))
    value = rng.choice([0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 16)])
    if name.startswith("png"):
        struct.pack_into(">I", out, start, value)
    elif name.startswith("jpeg"):
        struct.pack_into(">H", out, start + 2, value & 0xFFFF)
    elif name.startswith("czi"):  # an entry's dimension count or subblock position, or the entry count
        directory = struct.unpack_from("<q", data, 84)[0]
        where, fmt = rng.choice([(start + 28, "<i"), (start + 6, "<q"), (directory + 32, "<i")])
        struct.pack_into(fmt, out, where, value if fmt == "<q" else value - (1 << 32) * (value >= 1 << 31))
    elif name.startswith("lif"):  # a memory block's size or id length, or the XML header's length
        where, fmt = rng.choice([(start + 9, "<Q"), (start + 18, "<I"), (9, "<I")])
        struct.pack_into(fmt, out, where, value)
    elif name.startswith("nd2"):  # a chunk's name or data length, or where the chunk map lies
        where, fmt = rng.choice([(start + 4, "<I"), (start + 8, "<Q"), (len(data) - 8, "<Q")])
        struct.pack_into(fmt, out, where, value)
    elif name.startswith("oib"):  # an entry's size, first sector or links; the FAT's size, the directory
        where = rng.choice([start + 120, start + 116, start + 68, start + 72, start + 76, 44, 48])
        struct.pack_into("<I", out, where, value)
    elif name.startswith("dv"):  # a size, the sections, the pixel type, the extended header's length
        where = rng.choice([0, 4, 8, 12, 92])
        struct.pack_into("<I", out, where, value)
    elif name.startswith("ims"):  # a structure's counts, sizes or addresses (a B-tree's entries used at
        # +6, its siblings and first child from +8; a heap's data size at +8 and address at +24)
        struct.pack_into("<I", out, start + rng.choice([6, 8, 16, 24]), value)
    else:  # an IFD entry's value count or value/offset, or the IFD's entry count
        order = "<" if data[:2] == b"II" else ">"
        where = rng.choice([start + 4, start + 8, _tiff_entries(data)[0] - 2])
        fmt = "H" if where == _tiff_entries(data)[0] - 2 else "I"
        struct.pack_into(order + fmt, out, where, value & (0xFFFF if fmt == "H" else 0xFFFFFFFF))
    return bytes(out)


MUTATIONS: dict[str, Callable[[random.Random, str, bytes], bytes]] = {
    "flip": flip_bytes,
    "truncate": truncate,
    "duplicate": duplicate_segment,
    "length": corrupt_length,
}


@dataclass(frozen=True)
class Mutant:
    name: str  # seed file, mutation, index: enough to rebuild it
    data: bytes


def mutants(per_seed: int, seed: int = 15) -> Iterator[Mutant]:
    """``per_seed`` mutants of every seed file, mutations taken in turn, from a fixed seed."""
    rng = random.Random(seed)
    kinds = list(MUTATIONS)
    for name, data in seeds().items():
        for k in range(per_seed):
            kind = kinds[k % len(kinds)]
            yield Mutant(f"{name}-{kind}-{k}", MUTATIONS[kind](rng, name, data))
