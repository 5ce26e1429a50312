"""Olympus FluoView OIB files (FV1000, FV1200, FV10i) read as uploads, and OIF folders (the same
acquisition as separate files: :func:`open_oif`) read by path: channels, z-slices, time points and
pixel size.

An OIB is an OLE2 compound file (a small FAT file system in one file) holding what FluoView's
folder format (OIF) keeps as files: ``OibInfo.txt`` (which stream holds which OIF file), the main
``.oif`` settings (the axes, the calibration, the channels), and one single-page grey TIFF per
plane, ``s_C001Z002T003.tif`` (1-based indices), each with its ``.pty`` settings beside it. This
module turns that into the :class:`~service.microscopy.Layout` and plane reader every other format
has, so the channel, plane and pixel-size rules of :mod:`service.microscopy` apply unchanged.

- **Container**: an OLE2 compound file read by olefile (:mod:`service.compound`, shared with
  Zeiss's ZVI), one stream at a time; :func:`service.structure.check_compound` has walked the
  header, the directory and its trees first. A plane costs its own TIFF stream, not the file.
- **Settings**: FluoView's INI files (UTF-16 with a byte-order mark, quoted values) are parsed by
  oiffile's ``SettingsFile`` (C. Gohlke, BSD-3, the author of tifffile), each stream at most
  ``UNET_MAX_METADATA_BYTES``. oiffile's own compound-file reader is not used: it follows sector
  chains without bounds (a loop in a hostile file never ends).
- **Planes**: the TIFFs named ``s_`` + axis letters and indices; the stored planes are the
  truth (an acquisition stopped early has fewer than its settings planned: a plane it never took
  is a 422 naming it, never zeros); previews (``-R001``) and thumbnails are not planes. The pixel
  type is the TIFFs' (FluoView's ``ImageDepth`` has been seen to disagree with them).
- **Pixel size**: ``[Reference Image Parameter] WidthConvertValue`` / ``HeightConvertValue`` in
  their ``WidthUnit`` (µm), a decimal comma read as a point; the z-step is the Z axis's span over its
  slices (``|EndPosition - StartPosition| / (Z - 1)``, in nm unless the axis says), as Bio-Formats
  reads them.
- **Channel names**: each active channel's dye where FluoView has one (``DyeName``: ``Alexa Fluor
  546``), else its detector channel (``CH Name``: ``CH1``, ``TD1``, Bio-Formats' names), from
  ``[GUI Channel N Parameters]``, else ``[Channel N Parameters]``; never paired by guess (a count
  that differs from the planes' channels leaves indices only).
- **Checked against a real file**: oiffile's own FV1000 test file (``test.oib`` in its repository,
  three channels of 256², read here and never committed) reads as oiffile reads it, plane for
  plane, with its calibration (0.177 µm) and channels ``CH1``, ``Alexa Fluor 546``, ``TD1``.
- **What is refused, naming what to do**: λ-scans and other axes (``L``, ``A``, ``P``, ``Q``) with
  more than one index, line scans (no Y), planes of different sizes or types; a compound file that
  is neither an OIB nor a ZVI (an Office document).
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service import compound, structure
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType, supported_dtype
from service.microscopy import (
    Layout,
    PixelSize,
    PlaneReader,
    SelectionError,
    check_series,
    grey_planes_layout,
    unit_um,
)

_METADATA_BYTES = structure.Limits().max_metadata_bytes
#: A plane's TIFF: ``s_`` then axis letters with their 1-based indices (``C001Z002``); FluoView
#: 1.7 (its settings' ProfileSaveInfo version 1.0.0.0) names it after the acquisition instead
#: (``Pea root zstack_C001Z008.tif``). Previews (``s_C001-R001.tif``) and thumbnails
#: (``s_Thumb.bmp``) do not match.
_PLANE_NAME = re.compile(r".*_((?:[A-Za-z]\d{1,6})+)\.tif", re.IGNORECASE)
_AXIS_INDEX = re.compile(r"([A-Za-z])(\d+)")
#: Axis letters FluoView writes besides C, Z, T, and what a refusal calls them.
_OTHER_AXES = {"L": "emission wavelengths (a λ-scan)", "A": "rotations", "P": "stage positions",
               "Q": "indices along FluoView's Q axis"}
_NUMBER = re.compile(r"\s*(\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?)")



def open_planes(
    source: bytes | Path, max_pixels: int, series: int | None = None, metadata_bytes: int = _METADATA_BYTES
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """The layout of an OIB (an upload's bytes, or a file; ``series``: 0 or None, an OIB holds one
    image) and a reader of its planes by coordinates (``{"C": c, "Z": z, "T": t}``, 0 where left
    out): ``(H, W)`` uint8 / uint16 / float32; and what closes the file.

    The caller has walked the file with :func:`service.structure.check_compound`.
    ``metadata_bytes``: the most bytes a settings stream may hold (``UNET_MAX_METADATA_BYTES``).

    Raises:
        UndecodableImage: what olefile or the settings parser cannot read; planes the settings
            contradict (size, type), a plane whose TIFF is unreadable.
        UnsupportedImageType: not an OIB; λ-scans and other axes, line scans.
        ImageTooLarge: a plane over ``max_pixels``.
        TooComplex: a settings stream over ``metadata_bytes``.
        SelectionError: ``series`` is not 0; a plane the acquisition never took.
    """
    ole = compound.open_file(source)
    try:
        layout, read = planes(ole, max_pixels, series, metadata_bytes)
    except BaseException:
        ole.close()
        raise
    return layout, read, ole.close


def open_oif(
    path: Path, max_pixels: int, series: int | None = None, limits: structure.Limits | None = None
) -> tuple[Layout, PlaneReader, Callable[[], None]]:
    """An OIF, FluoView's folder format, read by path: the main settings file at ``path``
    (``cells.oif``) and the files FluoView keeps in the folder beside it (``cells.oif.files``: a
    TIFF per plane, as an OIB's streams), as :func:`open_planes` reads an OIB (``series``: 0 or
    None). Only the folder's own regular files are read (a link is not followed out of it), the
    main file under ``UNET_MAX_METADATA_BYTES``, the folder's entries under ``UNET_MAX_OIB_ENTRIES``,
    a plane's TIFF under what its pixels need.

    Raises: as :func:`open_planes`; UnsupportedImageType where the folder is not beside the file.
    """
    limits = limits or structure.Limits()
    check_series(1, (), series)
    settings = _settings(_file_bytes(path, limits.max_metadata_bytes, None), path.name, "OIF")
    files = _oif_files(_oif_folder(path), limits.max_oib_entries)

    def member(name: str, limit: int, shown: str) -> bytes:
        return _file_bytes(files[name], limit, shown)

    layout, read = _fluoview_planes(settings, list(files), member, max_pixels, "OIF")
    return layout, read, lambda: None


def _oif_folder(path: Path) -> Path:
    """The folder of an OIF's files: ``<name>.oif.files`` beside it (any case, as FluoView on
    Windows may have written it), a real folder, not a link."""
    wanted = path.name + ".files"
    folder = path.with_name(wanted)
    if not folder.is_dir():
        with os.scandir(path.parent) as entries:
            folder = next((Path(e.path) for e in entries if e.name.casefold() == wanted.casefold()), folder)
    if folder.is_symlink() or not folder.is_dir():
        raise UnsupportedImageType(
            f"an OIF is its .oif file and the folder FluoView writes beside it ({wanted}), which is not "
            "there: keep the two together, or save the acquisition as OIB in FluoView"
        )
    return folder


def _oif_files(folder: Path, max_entries: int) -> dict[str, Path]:
    """The folder's regular files by name (links and sub-folders left out), at most
    ``max_entries`` entries listed."""
    files: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for count, entry in enumerate(entries, 1):
            if count > max_entries:
                raise structure.TooComplex(
                    f"the OIF's folder {folder.name} holds more than {max_entries:,} entries", max_entries,
                    "UNET_MAX_OIB_ENTRIES",
                )
            if entry.is_file(follow_symlinks=False):
                files[entry.name] = Path(entry.path)
    return files


def _file_bytes(path: Path, limit: int, plane: str | None) -> bytes:
    """A file of an OIF, refused past ``limit`` before it is read: the settings (``plane`` None) as
    too much metadata (413), plane ``plane`` as malformed (400). Opened without following a link
    and checked to be a regular file once open (the name was one when listed)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise UndecodableImage(f"unreadable OIF: {path.name}: {exc.strerror}") from exc
    with os.fdopen(handle, "rb") as opened:
        status = os.fstat(opened.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UnsupportedImageType(f"the OIF's {path.name} is not a regular file")
        if status.st_size > limit and plane is None:
            raise structure.TooComplex(
                f"the OIF's settings file {path.name} holds {status.st_size:,} bytes, more than {limit:,}",
                limit, "UNET_MAX_METADATA_BYTES",
            )
        if status.st_size > limit:
            raise UndecodableImage(
                f"malformed OIF: plane {plane} holds {status.st_size:,} bytes, more than its pixels need"
            )
        return opened.read(limit)  # no more than was checked, should the file grow meanwhile


def admitted_pixels(ole: Any, max_pixels: int, metadata_bytes: int = _METADATA_BYTES) -> int:
    """What an open OIB costs admission: its plane (X × Y, from the main settings; every plane of
    an OIB has the size). Raises as :func:`open_planes`."""
    settings = _main_settings(ole, metadata_bytes)[0]
    width, height = _plane_size(_axes(settings))
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    return width * height


def _settings(data: bytes, name: str, kind: str = "OIB") -> dict[str, Any]:
    """A FluoView settings file (``.oif``, ``.txt``, ``.pty``) as ``{section: {key: value}}``."""
    from oiffile import SettingsFile  # FluoView's INI dialect: UTF-16 with BOM, quoted values

    try:
        return dict(SettingsFile(io.BytesIO(data), name))
    except Exception as exc:  # noqa: BLE001 - UnicodeDecodeError, ValueError on a broken file
        raise UndecodableImage(
            f"unreadable {kind}: its {name} is not a FluoView settings file ({exc})"
        ) from exc


def _members(ole: Any, metadata_bytes: int) -> tuple[dict[str, str], str]:
    """``OibInfo.txt``: each OIF file name (``Storage00001/s_C001.tif``) → the stream holding it
    (``Storage00001/Stream00001``), and the main settings file's name."""
    if not ole.exists("OibInfo.txt"):
        raise UnsupportedImageType(
            "this compound file is neither an Olympus OIB nor a Zeiss ZVI (an Office document is one "
            "too): send TIFF, OIB, ZVI, CZI, LIF, ND2, DeltaVision, PNG or JPEG"
        )
    info_text = compound.read_stream(ole, "OibInfo.txt", metadata_bytes)
    info = _settings(info_text, "OibInfo.txt").get("OibSaveInfo", {})
    # FluoView stores member ``Storage00001/s_C001.tif`` (listed as ``Stream00001=...``) as stream
    # ``Storage00001/Stream00001``; a stream is found by its own name wherever it lies, as oiffile
    # finds it, so a file that stores it elsewhere is read too.
    streams = {parts[-1]: "/".join(parts) for parts in ole.listdir(streams=True, storages=False)}
    members: dict[str, str] = {}
    for key, value in info.items():
        if key.startswith("Stream") and isinstance(value, str):
            folder = value.replace("\\", "/").rpartition("/")[0]
            members[value.replace("\\", "/")] = streams.get(key, f"{folder}/{key}" if folder else key)
    main = info.get(str(info.get("MainFileName", "")))
    if not isinstance(main, str) or not main.lower().endswith(".oif"):  # Bio-Formats: the .oif member
        main = next((name for name in members if name.lower().endswith(".oif")), None)
    if main is None or main not in members:
        raise UndecodableImage("malformed OIB: OibInfo.txt names no main .oif settings file")
    return members, main


def _main_settings(ole: Any, metadata_bytes: int) -> tuple[dict[str, Any], dict[str, str]]:
    members, main = _members(ole, metadata_bytes)
    return _settings(compound.read_stream(ole, members[main], metadata_bytes), main), members


def _axes(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``[Axis N Parameters Common]`` by axis code (``X``, ``Y``, ``C``, ``Z``, ``T``, ``L``...)."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in settings.items():
        if re.fullmatch(r"Axis \d+ Parameters Common", section) and isinstance(values, dict):
            code = str(values.get("AxisCode", "")).strip().upper()
            if code and code not in out:
                out[code] = values
    return out


def _size(axis: dict[str, Any] | None) -> int:
    try:
        return max(0, int(axis.get("MaxSize", 0))) if axis else 0
    except (TypeError, ValueError):
        return 0


def _plane_size(axes: dict[str, dict[str, Any]], kind: str = "OIB") -> tuple[int, int]:
    """(width, height) from the X and Y axes (:func:`_axes`)."""
    width, height = _size(axes.get("X")), _size(axes.get("Y"))
    if width < 1:
        raise UndecodableImage(f"malformed {kind}: its settings give no X axis")
    if height <= 1:
        raise UnsupportedImageType(
            f"this {kind} is a line scan (its planes have no Y axis: X against time); the service reads XY "
            "images: export the planes to segment as TIFF"
        )
    return width, height


def _plane_index(names: list[str], kind: str = "OIB") -> dict[tuple[int, int, int], str]:
    """Each plane's (c, z, t), 0-based, → its OIF file name; other axes refused where they hold more
    than one index."""
    planes: dict[tuple[int, int, int], str] = {}
    others: dict[str, set[int]] = {}
    for name in names:
        found = _PLANE_NAME.fullmatch(name.rpartition("/")[2])
        if not found:
            continue
        coords = {"C": 1, "Z": 1, "T": 1}
        for letter, index in _AXIS_INDEX.findall(found.group(1)):
            letter = letter.upper()
            if letter in coords:
                coords[letter] = int(index)
            else:
                others.setdefault(letter, set()).add(int(index))
        key = (coords["C"] - 1, coords["Z"] - 1, coords["T"] - 1)
        if min(key) < 0:
            raise UndecodableImage(f"malformed {kind}: plane {name} has an index 0 (FluoView counts from 1)")
        planes.setdefault(key, name)
    for letter, indices in others.items():
        if len(indices) > 1:
            what = _OTHER_AXES.get(letter, f"indices along an unknown axis ({letter})")
            raise UnsupportedImageType(
                f"the {kind} holds {len(indices)} {what}; the service reads X, Y, channels, z-slices and "
                "time points: export the planes to segment as TIFF"
            )
    if not planes:
        raise UndecodableImage(f"malformed {kind}: it holds no plane (no s_C001….tif)")
    return planes


def planes(ole: Any, max_pixels: int, series: int | None, metadata_bytes: int) -> tuple[Layout, PlaneReader]:
    """An open OIB's layout and plane reader (:func:`open_planes`, which says what it raises)."""
    check_series(1, (), series)
    settings, members = _main_settings(ole, metadata_bytes)

    def member(name: str, limit: int, shown: str) -> bytes:
        return compound.read_stream(ole, members[name], limit, shown)

    return _fluoview_planes(settings, list(members), member, max_pixels, "OIB")


def _fluoview_planes(
    settings: dict[str, Any], names: list[str], member: Callable[[str, int, str], bytes], max_pixels: int,
    kind: str,
) -> tuple[Layout, PlaneReader]:
    """The layout and plane reader of a FluoView acquisition (an OIB's streams, an OIF folder's
    files): its main ``settings``, the ``names`` of its files, and ``member(name, byte limit, name
    shown)``, which reads one. ``kind`` (``OIB``, ``OIF``) names the format."""
    axes = _axes(settings)
    width, height = _plane_size(axes, kind)
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels, width, height)
    planes = _plane_index(names, kind)
    sizes = {axis: 1 + max(key[k] for key in planes) for k, axis in enumerate("CZT")}
    if max(sizes.values()) > len(planes):
        # FluoView numbers every plane it takes; one index past the planes stored (s_C900.tif in a
        # file of two) would make that many channels to list.
        raise UndecodableImage(
            f"malformed {kind}: its plane names run to {max(sizes.values()):,} along one axis, with "
            f"{len(planes):,} planes stored"
        )
    # A plane's TIFF cannot need much more than its pixels (4 bytes for float) and a header: past
    # that, a stream is refused before olefile reads it.
    plane_limit = width * height * 4 + 1024 * 1024

    def plane(key: tuple[int, int, int]) -> np.ndarray:
        name = planes.get(key)
        if name is None:
            c, z, t = key
            raise SelectionError(
                f"the {kind} holds no plane at channel {c}, z {z}, t {t} (an acquisition stopped early?)",
                ("channel", "z", "t"), {"planes": {a: n for a, n in sizes.items() if n > 1 and a != "C"}},
            )
        shown = name.rpartition("/")[2]  # s_C001Z002.tif, as FluoView names the plane
        return _read_tiff(member(name, plane_limit, shown), shown, width, height, kind)

    first = plane(min(planes))
    notes = []
    planned = {axis: _size(axes.get(axis)) for axis in "CZT"}
    short = [f"{sizes[a]} of {planned[a]} {_AXIS_WORDS[a]}" for a in "ZT" if planned[a] > sizes[a]]
    if short or len(planes) < sizes["C"] * sizes["Z"] * sizes["T"]:
        notes.append(
            f"the {kind} holds fewer planes than its acquisition planned"
            + (f" ({', '.join(short)})" if short else "")
            + ": an acquisition stopped early; a plane it never took is refused"
        )
    pixel_size = _pixel_size(settings, axes.get("Z"), sizes["Z"])
    if pixel_size is None:
        notes.append(f"the {kind} does not give its pixel size: sizes are in pixels")
    names = _channel_names(settings, sizes["C"])

    def read(coords: dict[str, int]) -> np.ndarray:
        key = (int(coords.get("C", 0)), int(coords.get("Z", 0)), int(coords.get("T", 0)))
        image = first if key == min(planes) else plane(key)
        if image.dtype != first.dtype:
            raise UndecodableImage(
                f"malformed {kind}: its planes have different pixel types ({first.dtype}, {image.dtype})"
            )
        return image

    return grey_planes_layout(kind, width, height, first.dtype, sizes, names, pixel_size, notes), read


_AXIS_WORDS = {"Z": "z-slices", "T": "time points"}


def _read_tiff(data: bytes, name: str, width: int, height: int, kind: str = "OIB") -> np.ndarray:
    """One plane's TIFF, its size checked against the settings' before its pixels are decoded."""
    import tifffile

    structure.count_tiff(data, structure.Limits(max_tiff_pages=1_000))  # one page as written; bounded
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            if page.shape[:2] != (height, width) or page.samplesperpixel != 1:
                raise UndecodableImage(
                    f"malformed {kind}: plane {name} is {page.shape} where the settings give "
                    f"{height}×{width} grey"
                )
            image = page.asarray()
    except UndecodableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on corrupt input
        raise UndecodableImage(f"unreadable {kind}: plane {name}: {type(exc).__name__}: {exc}") from exc
    if image.shape != (height, width):  # tifffile gives an empty array for pixel data it cannot find
        raise UndecodableImage(
            f"unreadable {kind}: plane {name} decodes to {image.shape}, not {height}×{width}"
        )
    return supported_dtype(image, kind)


def _number(value: Any) -> float | None:
    """A settings value as a number: FluoView writes some with a decimal comma (``0,207``)."""
    if isinstance(value, (int, float)):
        return float(value)
    found = _NUMBER.match(str(value))
    return float(found.group(1).replace(",", ".")) if found else None


def _pixel_size(settings: dict[str, Any], axis: dict[str, Any] | None, depth: int) -> PixelSize | None:
    """µm per pixel from the reference image's calibration; the z-step from the Z ``axis`` over
    ``depth`` slices."""
    reference = settings.get("Reference Image Parameter", {})
    spacing = []
    for key in ("Width", "Height"):
        value = _number(reference.get(f"{key}ConvertValue"))
        factor = unit_um(str(reference.get(f"{key}Unit", "um")) or "um")
        spacing.append(value * factor if value and factor and value > 0 else None)
    x, y = spacing
    if x is None:
        return None
    z = None
    if depth > 1 and axis:
        start, end = _number(axis.get("StartPosition")), _number(axis.get("EndPosition"))
        factor = unit_um(str(axis.get("UnitName") or axis.get("PixUnit") or "nm")) or unit_um("nm")
        if start is not None and end is not None and end != start:
            z = abs(end - start) / (depth - 1) * factor
    return PixelSize(x, y if y is not None else x, "oib", z)


def _channel_names(settings: dict[str, Any], count: int) -> list[str | None]:
    """Each channel's name: the dye it was set up for (``DyeName``: ``Alexa Fluor 546``) where
    FluoView has one, else its detector channel (``CH Name``: ``CH1``, ``TD1`` for transmitted
    light, Bio-Formats' names); the active channels of ``[GUI Channel N Parameters]`` (the
    detectors FluoView offers, used or not), else ``[Channel N Parameters]``; none unless there is
    one per channel (FluoView's own test file: ``CH1``, ``Alexa Fluor 546``, ``TD1``)."""
    for prefix in ("GUI Channel", "Channel"):
        sections = []
        for section, values in settings.items():
            found = re.fullmatch(rf"{prefix} (\d+) Parameters", section)
            if found and isinstance(values, dict):
                sections.append((int(found.group(1)), values))
        active = [v for _n, v in sorted(sections, key=lambda item: item[0])
                  if str(v.get("CH Activate", 1)).strip() not in ("0", "")]
        if len(active) == count:
            names = [_dye(v) or str(v.get("CH Name", "")).strip() or None for v in active]
            if any(names):
                return names
    return []


def _dye(channel: dict[str, Any]) -> str | None:
    dye = str(channel.get("DyeName", "")).strip()
    return dye if dye and dye.casefold() != "none" else None
