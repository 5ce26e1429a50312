"""Microscope vendors' TIFFs as their software writes them, for tests (no library writes them):

**Zeiss LSM** (LSM 510 … 880, ZEN 2009–2012 and AIM): a TIFF whose first page carries the
``CZ_LSMINFO`` record (tag 34412: sizes, voxel sizes in metres, scan
type, offsets of sub-records such as the channel names), each plane of all channels one page whose
samples are the channels (planar), every page followed by its thumbnail (a reduced image). A real
LSM 7xx file (three tracks, 0.415 µm) was read the same way by tifffile.

**MetaMorph / MetaXpress** MetaSeries TIFFs (ImageXpress screens), **Aperio SVS** and **FEI SEM**
TIFFs: a plane with the vendor's description or tag, laid out as in real files of each (a
MetaXpress plate's DAPI site, openslide's and libvips' SVS test slides, imageio's FEI image)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import tifffile
from tifffile.tifffile import TIFF

LSM_MAGIC = 67127628  # LSM 2.0 and later
SCAN_TYPES = {"ZCYX": 0, "TCYX": 3, "TZCYX": 6}


def _channel_colors(names: list[str]) -> bytes:
    """The ChannelColors sub-record: header, RGBA colours, then each name length-prefixed."""
    colours = b"".join(bytes((255, 255, 255, 0)) for _ in names)
    encoded = b"".join(struct.pack("<I", len(n) + 1) + n.encode() + b"\x00" for n in names)
    header = 24
    size = header + len(colours) + len(encoded)
    head = struct.pack("<IIIIII", size, len(names), len(names), header, header + len(colours), 0)
    return head + colours + encoded


def lsm_bytes(stack: np.ndarray, axes: str = "ZCYX",
              voxel_um: tuple[float, float, float] = (0.415, 0.415, 1.0),
              names: list[str] | None = None, photometric: str | None = None) -> bytes:
    """An LSM file of ``stack`` (uint8/uint16 with ``axes`` ``ZCYX``, ``TCYX`` or ``TZCYX``)."""
    if axes not in SCAN_TYPES:
        raise ValueError(axes)
    sizes = dict(zip(axes, stack.shape, strict=True))
    channels, height, width = sizes["C"], sizes["Y"], sizes["X"]
    planes = stack.reshape(-1, channels, height, width)
    record = np.zeros((), dtype=np.dtype(TIFF.CZ_LSMINFO))
    record["MagicNumber"], record["StructureSize"] = LSM_MAGIC, record.dtype.itemsize
    record["DimensionX"], record["DimensionY"] = width, height
    record["DimensionZ"], record["DimensionChannels"] = sizes.get("Z", 1), channels
    record["DimensionTime"] = sizes.get("T", 1)
    record["DataType"] = 1 if stack.dtype == np.uint8 else 2
    record["ThumbnailX"], record["ThumbnailY"] = max(1, width // 4), max(1, height // 4)
    record["VoxelSizeX"], record["VoxelSizeY"], record["VoxelSizeZ"] = (v * 1e-6 for v in voxel_um)
    record["ScanType"] = SCAN_TYPES[axes]
    record["DimensionP"] = record["DimensionM"] = 1  # as in real files: tifffile adds M and P axes of 1
    colours = _channel_colors(names) if names else b""
    info = record.tobytes()
    # The sub-record sits after the record in the tag's value; its offset is from the file's start,
    # known once the tag is placed: written twice, the second time with the offset filled in.
    data = _write(planes, info + colours, photometric)
    if names:
        at = data.find(info[:16])
        record["OffsetChannelColors"] = at + len(info)
        data = _write(planes, record.tobytes() + colours, photometric)
        assert data.find(record.tobytes()[:16]) == at
    return data


def _write(planes: np.ndarray, value: bytes, photometric: str | None) -> bytes:
    buffer = io.BytesIO()
    channels = planes.shape[1]
    # ZEN tags three tracks RGB, and one track a palette image: its display colour, a red ramp.
    photometric = photometric or {3: "rgb", 1: "palette"}.get(channels, "minisblack")
    colormap = None
    if photometric == "palette":
        levels = 1 << (8 * planes.dtype.itemsize)
        colormap = np.zeros((3, levels), np.uint16)
        colormap[0] = np.linspace(0, 65535, levels).astype(np.uint16)
    with tifffile.TiffWriter(buffer) as tif:
        for i, plane in enumerate(planes):
            extratags = [(34412, 1, len(value), value, True)] if i == 0 else []
            tif.write(plane, photometric=photometric, planarconfig="separate" if channels > 1 else None,
                      extratags=extratags, metadata=None, colormap=colormap)
            thumb = plane[:, ::4, ::4]
            tif.write(thumb, photometric=photometric, planarconfig="separate" if channels > 1 else None,
                      subfiletype=1, metadata=None, colormap=colormap)
    return buffer.getvalue()


def metaseries_bytes(plane: np.ndarray, pixel_um: float | tuple[float, float], illumination: str = "DAPI",
                     units: str = "um", image_name: str = "DAPI") -> bytes:
    """A MetaSeries TIFF of ``plane`` as MetaXpress exports a site: its calibration and illumination
    setting in the description's ``PlaneInfo`` (``image_name`` ``HTSThumbHTS``: the preview thumbnail
    MetaXpress writes beside each image)."""
    x, y = (pixel_um, pixel_um) if isinstance(pixel_um, float) else pixel_um
    props = {"spatial-calibration-state": ("bool", "on"), "spatial-calibration-x": ("float", x),
             "spatial-calibration-y": ("float", y), "spatial-calibration-units": ("string", units),
             "image-name": ("string", image_name),
             "_IllumSetting_": ("string", illumination), "wavelength": ("float", 452)}
    info = "".join(f'<prop id="{k}" type="{t}" value="{v}"/>' for k, (t, v) in props.items())
    description = f'<MetaData><PlaneInfo>{info}</PlaneInfo><SetInfo></SetInfo></MetaData>'
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, description=description, software="MetaSeries", metadata=None,
                     photometric="minisblack")
    return buffer.getvalue()


def svs_bytes(rgb: np.ndarray, mpp: float) -> bytes:
    """An Aperio SVS slide: the baseline (tiled RGB, ``MPP`` in its description) and a thumbnail."""
    height, width = rgb.shape[:2]
    header = (f"Aperio Image Library v10.0.50\r\n{width}x{height} [0,0 {width}x{height}] (240x240) "
              "JPEG/RGB Q=30")
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(rgb, tile=(64, 64), photometric="rgb", metadata=None,
                  description=f"{header}|AppMag = 20|MPP = {mpp}|ScanScope ID = CPAPERIOCS")
        tif.write(rgb[::4, ::4], photometric="rgb", metadata=None, description=f"{header} -> thumbnail")
    return buffer.getvalue()


_QPI_HEAD = '<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>'
_QPI_TAIL = "</PerkinElmer-QPI-ImageDescription>"


def qptiff_bytes(planes: np.ndarray, names: list[str], pixel_um: float, thumbnail: bool = True) -> bytes:
    """An Akoya (PerkinElmer) QPTIFF as Vectra Polaris writes one: a page per channel, each with its
    ``PerkinElmer-QPI-ImageDescription`` XML (the first also naming the scan's filters, deeper
    down), the resolution in pixels per centimetre, Software ``PerkinElmer-QPI``; then an RGB
    thumbnail."""
    buffer = io.BytesIO()
    per_cm = 1e4 / pixel_um
    profile = "<ScanProfile><Filter><Name>DAPI</Name></Filter><Name>einstein_panel</Name></ScanProfile>"
    with tifffile.TiffWriter(buffer) as tif:
        for k, (plane, name) in enumerate(zip(planes, names, strict=True)):
            description = (f"{_QPI_HEAD}<DescriptionVersion>2</DescriptionVersion><ImageType>FullResolution"
                           f"</ImageType><Name>{name}</Name>{profile if k == 0 else ''}{_QPI_TAIL}")
            tif.write(plane, description=description, software="PerkinElmer-QPI", metadata=None,
                      resolution=(per_cm, per_cm), resolutionunit="centimeter", photometric="minisblack")
        if thumbnail:
            rgb = np.stack([planes[0][::4, ::4]] * 3, axis=-1).astype(np.uint8)
            tif.write(rgb, software="PerkinElmer-QPI", photometric="rgb", metadata=None,
                      description=f"{_QPI_HEAD}<ImageType>Thumbnail</ImageType>{_QPI_TAIL}")
    return buffer.getvalue()


HARMONY_NS = "http://www.perkinelmer.com/PEHH/HarmonyV5"


def harmony_bytes(plane: np.ndarray, exposures: list[list[tuple[str, int]]], image: tuple[int, int] = (1, 1),
                  camera_pitch_m: float = 6.5e-6, objective_magnification: float = 10.0,
                  instrument_magnification: float = 1.087, camera: str = "Camera1") -> bytes:
    """A PerkinElmer Harmony TIFF as an Operetta CLS writes one per plane of a screen (modelled on a
    real Harmony 4.9 export): tag 65500 the plane's ``TiffImageDescription`` XML, whose ``Image``
    names its exposure and channel (1-based, ``image`` = (ExposureID, ChannelID)) among
    ``exposures`` (each a list of (channel name, binning)); the camera's pixel pitch and the
    magnifications from which Harmony's ``Index.idx.xml`` gives ``ImageResolutionX``; and, as
    Harmony writes them, resolution tags of the camera's pitch in centimetres (4294967295/2770410:
    6.45 µm), Make PerkinElmer."""
    def channel(name: str, binning: int) -> str:
        return (f'<Channel Version="1"><Name>{name}</Name><CameraSetting><CameraID>{camera}</CameraID>'
                f"<BinningX>{binning}</BinningX><BinningY>{binning}</BinningY></CameraSetting></Channel>")

    exposure_xml = "".join(
        '<Exposure Version="1"><Objective>EC_Plan_Neofluar_10x/0.3</Objective><Record Version="1">'
        f"<Channels>{''.join(channel(n, b) for n, b in channels)}</Channels></Record></Exposure>"
        for channels in exposures
    )
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?>\r\n<TiffImageDescription Version="1" xmlns="{HARMONY_NS}">'
        "<InstrumentDescription><Type>Sonata</Type>"
        f'<Magnification Unit="">{instrument_magnification}</Magnification><Objectives>'
        '<Objective Version="1"><ID>LD_Plan_Neofluar_20x/0.4</ID><Magnification Unit="">20</Magnification>'
        '</Objective><Objective Version="1"><ID>EC_Plan_Neofluar_10x/0.3</ID>'
        f'<Magnification Unit="">{objective_magnification}</Magnification></Objective></Objectives>'
        f'<Cameras><Camera Version="1"><ID>Camera1</ID><PixelSizeX Unit="m">{camera_pitch_m}</PixelSizeX>'
        f'<PixelSizeY Unit="m">{camera_pitch_m}</PixelSizeY></Camera></Cameras></InstrumentDescription>'
        f"<DeviceExperiment><Exposures>{exposure_xml}</Exposures></DeviceExperiment>"
        f'<Image Version="1"><Row>3</Row><Col>3</Col><FieldID>1</FieldID><PlaneID>1</PlaneID>'
        f"<ExposureID>{image[0]}</ExposureID><RecordID>1</RecordID><ChannelID>{image[1]}</ChannelID></Image>"
        "</TiffImageDescription>"
    ).encode()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, resolution=((4294967295, 2770410), (4294967295, 2770410)),
                     resolutionunit="centimeter", metadata=None, photometric="minisblack",
                     extratags=[(271, "s", 0, "PerkinElmer", True), (65500, "B", len(xml), xml, True)])
    return buffer.getvalue()


def fei_bytes(plane: np.ndarray, pixel_m: float) -> bytes:
    """An FEI SEM TIFF: its settings (an INI text) in tag 34680, the print resolution of 96 dpi."""
    text = f"[User]\r\nDate=01/01/2020\r\n[Scan]\r\nPixelWidth={pixel_m:g}\r\nPixelHeight={pixel_m:g}\r\n"
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, resolution=(96, 96), resolutionunit="inch", metadata=None,
                     extratags=[(34680, "s", 0, text, True)], photometric="minisblack")
    return buffer.getvalue()


def zeiss_sem_bytes(plane: np.ndarray, pixel_nm: float) -> bytes:
    """A Zeiss SmartSEM TIFF: its settings in tag 34118 (``CZ_SEM``), the image pixel size among
    them as SmartSEM writes it (``AP_IMAGE_PIXEL_SIZE`` / ``Image Pixel Size = 55.82 nm``)."""
    text = f"\r\n0\r\n\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = {pixel_nm:g} nm\r\n"
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, metadata=None, extratags=[(34118, "s", 0, text, True)],
                     photometric="minisblack")
    return buffer.getvalue()


def micromanager_bytes(plane: np.ndarray, summary: dict, description: str | None = None) -> bytes:
    """A Micro-Manager 1.4 stack file of one uint16 plane: its acquisition ``summary`` (JSON) in the
    header Micro-Manager writes after the TIFF's own (byte 8: index map, display settings, comments,
    summary), the MicroManagerMetadata tag (51123) on the page, and ``description`` (an OME-XML, or
    the ``BinaryOnly`` pointer the files after a dataset's first carry). Written by hand: tifffile
    leaves no room at byte 8."""
    import json

    text = json.dumps(summary).encode()
    head = struct.pack("<2sHI", b"II", 42, 0)  # the IFD's offset is filled in below
    mm = struct.pack("<8I", 54773648, 0, 483765892, 0, 99384722, 0, 2355492, len(text)) + text
    pixels = np.ascontiguousarray(plane, dtype="<u2").tobytes()
    extra = [(270, 2, (description or "").encode() + b"\0")] if description else []
    extra.append((51123, 2, b'{"Channel": "DAPI"}\0'))
    data_at = 8 + len(mm)
    blobs_at = data_at + len(pixels)
    blobs = b"".join(value for *_, value in extra)
    ifd_at = blobs_at + len(blobs) + (blobs_at + len(blobs)) % 2
    height, width = plane.shape
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, data_at), (277, 3, 1, 1), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    at = blobs_at
    for code, kind, value in extra:
        entries.append((code, kind, len(value), at))
        at += len(value)
    entries.sort()
    ifd = struct.pack("<H", len(entries))
    for code, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", code, kind, count) + packed
    ifd += struct.pack("<I", 0)
    body = head[:4] + struct.pack("<I", ifd_at) + mm + pixels + blobs
    return body + b"\0" * (ifd_at - len(body)) + ifd


#: Micro-Manager's headers: the index map's, its record's, display settings', comments', summary's,
#: and an NDTiff's (in place of the index map's).
_MM_INDEX, _MM_INDEX_RECORD, _MM_DISPLAY, _MM_COMMENTS, _MM_SUMMARY, _NDTIFF = (
    54773648, 3453623, 483765892, 99384722, 2355492, 483729)


def mmstack_bytes(planes: dict[tuple[int, int, int], np.ndarray], position: int, summary: dict) -> bytes:
    """One file of a Micro-Manager 1.4 / 2.0 image-stack acquisition (``PREFIX_MMStack_PosN.ome.tif``):
    the uint16 ``planes`` of stage ``position``, keyed ``(channel, slice, frame)``, as Micro-Manager
    lays them out: after the TIFF header its own (index map, display settings, comments, summary
    JSON), each page's IFD of 13 entries (162 bytes) directly before the page's pixels (tifffile
    reads the pages after the first at the IFD's offset + 162, as Micro-Manager's own reader does),
    and the index map (channel, slice, frame, position, IFD offset of each page) at the end. A real
    MM 1.4 multi-position set (Micro-Manager's VersionCompatTest files) reads the same way."""
    import json

    text = json.dumps(summary).encode()
    header_size = 8 + 32 + len(text)
    metadata = [{"ChannelIndex": c, "SliceIndex": z, "FrameIndex": t, "PositionIndex": position}
                for c, z, t in planes]
    body, ifds = _micromanager_pages(list(planes.values()), metadata, header_size)
    index = [(c, z, t, position, ifd) for (c, z, t), ifd in zip(planes, ifds, strict=True)]
    index_at = header_size + len(body)
    mm = struct.pack("<8I", _MM_INDEX, index_at, _MM_DISPLAY, 0, _MM_COMMENTS, 0, _MM_SUMMARY, len(text))
    table = struct.pack("<2I", _MM_INDEX_RECORD, len(index)) + b"".join(struct.pack("<5I", *e) for e in index)
    return struct.pack("<2sHI", b"II", 42, ifds[0]) + mm + text + body + table


def ndtiff_bytes(planes: list[tuple[dict, np.ndarray]], summary: dict) -> bytes:
    """One file of a Micro-Manager 2 / pycro-manager NDTiff (v3) dataset, as an upload has it
    (without the ``NDTiff.index`` beside it): the NDTiff header after the TIFF's (its version and
    summary JSON), then each uint16 plane a page whose Micro-Manager metadata (tag 51123) holds its
    coordinates, ``Axes`` (``{"channel": "DAPI", "z": 3, "time": 0}``), in the order given, as
    real NDTiff files do (Micro-Manager's NDStorage test data)."""
    return _ndtiff(planes, summary)[0]


def write_ndtiff(folder: Path, planes: list[tuple[dict, np.ndarray]], summary: dict) -> Path:
    """An NDTiff dataset in ``folder``: :func:`ndtiff_bytes`'s file and the ``NDTiff.index`` that
    tifffile reads by path (each page's axes, file name, pixel offset, size and pixel type)."""
    import json

    data, ifds = _ndtiff(planes, summary)
    path = folder / "cells_NDTiffStack.tif"
    path.write_bytes(data)
    index = b""
    for (axes, plane), ifd in zip(planes, ifds, strict=True):
        text, name = json.dumps(axes).encode(), path.name.encode()
        height, width = plane.shape
        index += struct.pack("<I", len(text)) + text + struct.pack("<I", len(name)) + name
        index += struct.pack("<IiiiiIii", ifd + 162, width, height, 1, 0, 0, 0, 0)
    (folder / "NDTiff.index").write_bytes(index)
    return path


def _ndtiff(planes: list[tuple[dict, np.ndarray]], summary: dict) -> tuple[bytes, list[int]]:
    import json

    text = json.dumps(summary).encode()
    header_size = 8 + 20 + len(text)
    metadata = [{"Axes": axes, "Camera": "Camera"} for axes, _ in planes]
    body, ifds = _micromanager_pages([plane for _, plane in planes], metadata, header_size)
    head = struct.pack("<2sHI", b"II", 42, ifds[0])
    return head + struct.pack("<5I", _NDTIFF, 3, 2, _MM_SUMMARY, len(text)) + text + body, ifds


def _micromanager_pages(planes: list[np.ndarray], metadata: list[dict], at: int) -> tuple[bytes, list[int]]:
    """Pages from byte ``at`` on, as Micro-Manager writes them: the page's resolution and metadata
    JSON (tag 51123), its IFD of 13 entries (162 bytes), its pixels; and each IFD's offset."""
    import json

    texts = [json.dumps(meta).encode() + b"\0" for meta in metadata]
    blobs = [struct.pack("<4I", 1, 1, 1, 1) + text for text in texts]  # X/YResolution, the metadata
    blobs = [blob + b"\0" * (len(blob) % 2) for blob in blobs]
    pixels = [np.ascontiguousarray(plane, dtype="<u2").tobytes() for plane in planes]
    starts = np.cumsum([at] + [len(b) + 162 + len(p) for b, p in zip(blobs, pixels, strict=True)])
    ifds = [int(start) + len(blob) for start, blob in zip(starts, blobs, strict=False)]
    pages: list[bytes] = []
    for number, (plane, text, blob) in enumerate(zip(planes, texts, blobs, strict=True)):
        height, width = plane.shape
        start, ifd_at = int(starts[number]), ifds[number]
        pixels_at = ifd_at + 162
        next_ifd = ifds[number + 1] if number + 1 < len(planes) else 0
        entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 16), (259, 3, 1, 1),
                   (262, 3, 1, 1), (273, 4, 1, pixels_at), (277, 3, 1, 1), (278, 3, 1, height),
                   (279, 4, 1, len(pixels[number])), (282, 5, 1, start), (283, 5, 1, start + 8),
                   (296, 3, 1, 1), (51123, 2, len(text), start + 16)]
        ifd = struct.pack("<H", len(entries))
        for code, kind, count, value in entries:
            packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
            ifd += struct.pack("<HHI", code, kind, count) + packed
        ifd += struct.pack("<I", next_ifd)
        assert len(ifd) == 162
        pages.append(blob + ifd + pixels[number])
    return b"".join(pages), ifds
