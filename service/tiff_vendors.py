"""Pixel sizes and channel names that microscope software keeps in its own TIFF structures.

Many TIFFs from microscopes carry no OME-XML, no ImageJ calibration and no usable resolution tags,
yet know their pixel size: the software wrote it where its own reader looks. tifffile parses each
of those structures (well kept, and tested on each vendor's files); this module only picks the
calibration and the channel names out of what it parsed, in µm:

- **Zeiss LSM** (LSM 510 … 880): ``CZ_LSMINFO`` ``VoxelSizeX/Y/Z`` (metres); channel names from
  its ``ChannelColors`` record (``Ch1-T1``: detector and track, as ZEN shows them).
- **MetaMorph / MetaXpress** (ImageXpress screens) MetaSeries TIFFs: the plane's
  ``spatial-calibration-x/y`` in ``spatial-calibration-units``; the channel named after the
  illumination setting (``_IllumSetting_``: ``DAPI``, ``FITC``).
- **Micro-Manager**: the acquisition summary's ``PixelSize_um``, ``z-step_um`` and ``ChNames``, which
  every file of a dataset carries; used where the OME-XML or ImageJ metadata does not give them
  (a multi-file dataset's other files hold only a pointer to the first file's OME-XML).
- **Aperio SVS**: ``MPP`` in the baseline image's description (µm per pixel of the full resolution).
- **FEI / Thermo Fisher SEM**: ``[Scan] PixelWidth/PixelHeight`` (metres); a **Zeiss SEM** (SmartSEM)
  image's ``Image Pixel Size`` in its ``CZ_SEM`` tag.
- **Akoya (PerkinElmer) QPTIFF** (Vectra, Polaris, PhenoImager; inForm's unmixed component images):
  each full-resolution page's ``PerkinElmer-QPI-ImageDescription`` XML names its channel (``<Name>``:
  ``DAPI``, ``Opal 520``, as Phenochart and Bio-Formats show it); the pixel size is the pages'
  resolution tags (centimetres), which the caller reads. Its RGB thumbnail is no image of the scan
  (the caller leaves that series out).

- **PerkinElmer (Revvity) Harmony** (Operetta, Operetta CLS, Opera Phenix: one TIFF per plane of a
  screen): each TIFF's private tag 65500 holds the plane's ``TiffImageDescription`` XML. Its
  resolution tags give the camera's pixel pitch (6.45 µm on an Operetta CLS), not the sample's, so
  the pixel size is worked out as Harmony's own ``Index.idx.xml`` gives it (``ImageResolutionX``):
  the camera's ``PixelSizeX`` × the channel's binning / (the objective's magnification × the
  instrument's); the channel is named by the ``<Name>`` Harmony shows (``Fluorescein (FITC)``).
  tifffile does not parse this tag.

Each reader returns None where its structure is absent, unreadable or gives no positive finite
size; the caller then goes on to the next source. Real files of each kind were read with it
(LSM 7xx, MetaXpress, Micro-Manager 1.4, Aperio and FEI files from public test sets).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

#: µm per unit, for the units MetaMorph writes in ``spatial-calibration-units``.
_METASERIES_UNITS = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}


@dataclass(frozen=True)
class Calibration:
    """What a vendor's metadata says: ``format`` (shown to users), µm per pixel along x and y,
    the z-step in µm (None if not given), ``source`` (``X-Pixel-Size-Source``) and channel names
    (empty where it names none; None for a channel it leaves unnamed)."""

    format: str
    source: str
    x_um: float | None = None
    y_um: float | None = None
    z_um: float | None = None
    names: tuple[str | None, ...] = ()
    #: whether the file's resolution tags are a pixel size where this gives none (Harmony's are the
    #: camera's pixel pitch: 5.4 times a 10x image's pixel size)
    resolution_tags: bool = True
    #: a notice for whoever sent it (a preview sent in place of the image)
    note: str | None = None


def lsm(tif: Any, n_channels: int) -> Calibration | None:
    if not tif.is_lsm:
        return None
    meta = _safe(lambda: tif.lsm_metadata) or {}
    x, y, z = (_length(meta.get(k), 1e6) for k in ("VoxelSizeX", "VoxelSizeY", "VoxelSizeZ"))
    names: tuple[str | None, ...] = ()
    colours = meta.get("ChannelColors")
    if isinstance(colours, dict):
        listed = [str(n).strip() or None for n in colours.get("ColorNames") or []]
        if len(listed) == n_channels:
            names = tuple(listed)
    if z is not None and int(meta.get("DimensionZ", 1) or 1) <= 1:
        z = None  # ZEN writes a z voxel size (1e-19 m) for single planes too
    return Calibration("Zeiss LSM", "lsm", x, y or x, z, names)


def metaseries(tif: Any, n_channels: int) -> Calibration | None:
    if not tif.is_metaseries:
        return None
    meta = _safe(lambda: tif.metaseries_metadata) or {}
    plane = meta.get("PlaneInfo") if isinstance(meta, dict) else None
    if not isinstance(plane, dict):
        return Calibration("MetaMorph TIFF", "metaseries")
    x = y = None
    factor = _METASERIES_UNITS.get(str(plane.get("spatial-calibration-units", "")).strip().lower())
    if factor is not None and plane.get("spatial-calibration-state", True) not in (False, "off"):
        x = _length(plane.get("spatial-calibration-x"), factor)
        y = _length(plane.get("spatial-calibration-y"), factor)
    illumination = str(plane.get("_IllumSetting_", "")).strip()
    names = (illumination,) if illumination and n_channels == 1 else ()
    note = None
    if str(plane.get("image-name", "")).strip() == METAXPRESS_THUMBNAIL:
        note = ("this is MetaXpress's preview thumbnail of a site (NAME_thumb<GUID>.tif, shrunk and "
                "squashed), not the image it recorded: send the image beside it (the same name without "
                "_thumb<GUID>)")
    return Calibration("MetaMorph TIFF", "metaseries", x or y, y or x, None, names, note=note)


def micromanager_metadata(tif: Any) -> dict[str, Any]:
    """What tifffile parses of a Micro-Manager file's own header (its summary, index map, NDTiff
    version), ``{}`` where there is none or tifffile fails on it."""
    meta = _safe(lambda: tif.micromanager_metadata)
    return meta if isinstance(meta, dict) else {}


def micromanager_summary(tif: Any) -> dict[str, Any]:
    """A Micro-Manager file's acquisition summary, ``{}`` where it has none that is a mapping."""
    summary = micromanager_metadata(tif).get("Summary")
    return summary if isinstance(summary, dict) else {}


def micromanager(tif: Any, n_channels: int) -> Calibration | None:
    if not tif.is_micromanager:
        return None
    summary = micromanager_metadata(tif).get("Summary")
    if not isinstance(summary, dict):
        return None
    size = _length(summary.get("PixelSize_um"), 1.0)
    z = _length(summary.get("z-step_um"), 1.0)
    listed = summary.get("ChNames")
    names: tuple[str | None, ...] = ()
    if isinstance(listed, list) and len(listed) == n_channels:
        names = tuple(str(n).strip() or None for n in listed)
    return Calibration("Micro-Manager TIFF", "micro-manager", size, size, z, names)


def svs(tif: Any, page: Any, series_index: int) -> Calibration | None:
    if not tif.is_svs:
        return None
    if series_index != 0:
        return Calibration("Aperio SVS", "svs")  # the thumbnail, label and macro have their own scale
    from tifffile.tifffile import svs_description_metadata  # not exported by tifffile's package

    meta = _safe(lambda: svs_description_metadata(page.description or "")) or {}
    size = _length(meta.get("MPP"), 1.0)
    return Calibration("Aperio SVS", "svs", size, size)


def fei(tif: Any) -> Calibration | None:
    if not tif.is_fei:
        return None
    meta = _safe(lambda: tif.fei_metadata) or {}
    scan = meta.get("Scan") if isinstance(meta, dict) else None
    if not isinstance(scan, dict):
        return Calibration("FEI TIFF", "fei")
    x, y = _length(scan.get("PixelWidth"), 1e6), _length(scan.get("PixelHeight"), 1e6)
    return Calibration("FEI TIFF", "fei", x or y, y or x)


#: µm per unit of a Zeiss SEM's ``(label, value, unit)`` entries.
_SEM_UNITS = {"pm": 1e-6, "nm": 1e-3, "um": 1.0, "µm": 1.0, "mm": 1e3}


def zeiss_sem(tif: Any) -> Calibration | None:
    """A Zeiss SEM's (SmartSEM's) image: its pixel size in tag 34118 (``CZ_SEM``, as tifffile
    parses it: ``ap_image_pixel_size`` = ``("Image Pixel Size", 55.82, "nm")``; a real SmartSEM
    file's, matching its width of 57.16 µm over 1024 px)."""
    if not tif.is_sem:
        return None
    meta = _safe(lambda: tif.sem_metadata) or {}
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(entry, tuple) and len(entry) >= 3:
            size = _length(entry[1], _SEM_UNITS.get(str(entry[2]).strip().lower(), math.nan))
            if size is not None:
                return Calibration("Zeiss SEM TIFF", "zeiss-sem", size, size)
    return Calibration("Zeiss SEM TIFF", "zeiss-sem")


def qpi(tif: Any, series: Any, n_channels: int) -> Calibration | None:
    if not tif.is_qpi:
        return None
    names: tuple[str | None, ...] = ()
    if series.name != "Thumbnail":
        listed = [_qpi_name(page) for page in series.pages]
        if len(listed) == n_channels and len({n for n in listed if n}) == len(listed):
            names = tuple(listed)
    return Calibration("Akoya QPTIFF", "tiff", names=names)  # the size: the resolution tags


def _qpi_name(page: Any) -> str | None:
    """A QPTIFF page's channel: the ``<Name>`` directly under its description's root (the first
    page's description also names filters and the scan profile deeper down)."""
    try:
        root = ET.fromstring(page.description or "")
    except (ET.ParseError, AttributeError):
        return None
    return (root.findtext("Name") or "").strip() or None


#: MetaXpress's ``image-name`` of the preview it writes beside each image (80×64, squashed).
METAXPRESS_THUMBNAIL = "HTSThumbHTS"
#: The private tag in which Harmony writes a plane's description XML.
HARMONY_TAG = 65500
#: Past this many bytes the tag is not parsed (a real one: ~70 kB, most of it the instrument's parts list).
HARMONY_XML_BYTES = 4 << 20
#: µm per unit, for the units Harmony writes in ``Unit=``.
_HARMONY_UNITS = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}


def harmony(page: Any, n_channels: int) -> Calibration | None:
    tag = page.tags.get(HARMONY_TAG)
    if tag is None:
        return None
    value = tag.value
    if not isinstance(value, bytes | str) or len(value) > HARMONY_XML_BYTES:
        return None
    try:
        root = ET.fromstring(value)
    except (ET.ParseError, ValueError, LookupError):  # (an encoding expat cannot read): not Harmony's
        return None
    namespace, _, local = root.tag.rpartition("}")
    if local != "TiffImageDescription" or "perkinelmer" not in namespace.lower():
        return None
    size_x, size_y, name = _harmony_plane(root, f"{namespace}}}") or (None, None, None)
    names = (name,) if n_channels == 1 else ()
    return Calibration("Harmony TIFF", "harmony", size_x, size_y, None, names, resolution_tags=False)


def _harmony_plane(root: ET.Element, ns: str) -> tuple[float | None, float | None, str | None] | None:
    """(µm per pixel along x and y, channel name) of the plane a Harmony description describes:
    its ``Image`` names (1-based) the exposure, the record in it and the channel in that; the
    channel its camera and binning; the exposure its objective."""
    def number(element: ET.Element | None, name: str, default: int = 1) -> int:
        try:
            return int((element.findtext(f"{ns}{name}") if element is not None else None) or default)
        except ValueError:
            return default

    def nth(parent: ET.Element | None, path: str, index: int) -> ET.Element | None:
        found = parent.findall(path) if parent is not None else []
        return found[index - 1] if 1 <= index <= len(found) else None

    image = root.find(f"{ns}Image")
    exposure = nth(root, f"{ns}DeviceExperiment/{ns}Exposures/{ns}Exposure", number(image, "ExposureID"))
    record = nth(exposure, f"{ns}Record", number(image, "RecordID"))
    channel = nth(record, f"{ns}Channels/{ns}Channel", number(image, "ChannelID"))
    if exposure is None or channel is None:
        return None
    name = (channel.findtext(f"{ns}Name") or "").strip() or None
    instrument = root.find(f"{ns}InstrumentDescription")
    setting = channel.find(f"{ns}CameraSetting")
    if instrument is None or setting is None:
        return None, None, name
    camera_id = (setting.findtext(f"{ns}CameraID") or "").strip()
    camera = next((c for c in instrument.iterfind(f"{ns}Cameras/{ns}Camera")
                   if (c.findtext(f"{ns}ID") or "").strip() == camera_id), None)
    objective_id = (exposure.findtext(f"{ns}Objective") or "").strip()
    objective = next((o for o in instrument.iterfind(f"{ns}Objectives/{ns}Objective")
                      if (o.findtext(f"{ns}ID") or "").strip() == objective_id), None)
    magnification = (_harmony_length(objective, f"{ns}Magnification", unitless=True) or 0.0) * (
        _harmony_length(instrument, f"{ns}Magnification", unitless=True) or 1.0)
    if camera is None or not magnification > 0:
        return None, None, name
    sizes = []
    for axis in ("X", "Y"):
        pitch = _harmony_length(camera, f"{ns}PixelSize{axis}")
        binning = number(setting, f"Binning{axis}")
        sizes.append(None if pitch is None or binning < 1 else _length(pitch * binning / magnification, 1.0))
    return sizes[0], sizes[1] or sizes[0], name


def _harmony_length(parent: ET.Element | None, path: str, unitless: bool = False) -> float | None:
    """The positive number at ``path`` in µm (by its ``Unit``), or as it stands (``unitless``)."""
    element = parent.find(path) if parent is not None else None
    if element is None:
        return None
    factor = 1.0 if unitless else _HARMONY_UNITS.get(element.get("Unit", "").strip().lower())
    return None if factor is None else _length(element.text, factor)


def _length(value: Any, factor: float) -> float | None:
    """``value`` × ``factor`` (µm per unit) where it is a positive finite number, else None."""
    try:
        um = float(value) * factor
    except (TypeError, ValueError):
        return None
    return um if math.isfinite(um) and um > 0 else None


def _safe(read: Any) -> Any:
    """What ``read()`` returns, None where tifffile fails on the structure (a broken or hostile
    file: the image may still be read without its calibration)."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - tifffile's parsers raise many kinds on damaged input
        return None
