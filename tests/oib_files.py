"""Olympus FluoView OIB files for tests, laid out as FluoView saves them; no library writes OIB.

The layout, as Bio-Formats' FV1000 reader and oiffile (C. Gohlke) read real files: an OLE2
compound file (:mod:`tests.compound_files`) whose ``OibInfo.txt`` maps each stream to the file of
FluoView's folder format it holds (``Stream00001=Storage00001/s_C001Z001.tif`` is stream
``Storage00001/Stream00001``) and names the main settings file (``MainFileName=Stream00000``,
``Stream00000=cells.oif``). Settings files are INI text in UTF-16 with a byte-order mark: the main
one gives the axes (``[Axis N Parameters Common]``: ``AxisCode``, ``MaxSize``, start and end
positions), the calibration (``[Reference Image Parameter] WidthConvertValue``, µm) and the
channels (``[GUI Channel N Parameters] CH Name``). Each plane is a single-page grey TIFF named by
its 1-based indices, ``s_C001Z002T003.tif``, with its ``.pty`` settings beside it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from tests.compound_files import write_compound

#: FluoView's axis slots: [Axis N Parameters Common] N → AxisCode.
AXIS_SLOTS = ("X", "Y", "C", "Z", "T", "A", "L", "P", "Q")


@dataclass
class Oib:
    """An acquisition: ``pixels`` with ``axes`` outermost first among ``T``, ``Z``, ``C``, then ``YX``
    (``CYX``, ``TZCYX``...)."""

    pixels: np.ndarray
    axes: str = "YX"
    channel_names: tuple[str, ...] = ()  # each channel's dye ("-": none set, named by its detector)
    pixel_um: float | str | None = 0.207  # a string is written as is ("0,207": a decimal comma)
    z_step_nm: float = 500.0
    name: str = "cells"
    #: planes (c, z, t, 0-based) the file leaves out (an acquisition stopped early), and the sizes
    #: its settings planned (None: the pixels')
    missing: tuple[tuple[int, int, int], ...] = ()
    planned: dict[str, int] | None = None
    #: extra plane files by OIF name ("s_C001L002.tif": a λ-scan's), written as given
    extra: dict[str, bytes] = field(default_factory=dict)
    #: what is written for these members instead ("cells.oif", a plane's name: a broken file)
    replace: dict[str, bytes] = field(default_factory=dict)
    sibling_chain: bool = False
    line_scan: bool = False
    version: int = 3  # the compound file's: 3 (512-byte sectors) or 4 (4096)
    #: what a plane's file name starts with: ``s`` (``s_C001Z001.tif``); FluoView 1.7 wrote the
    #: acquisition's name (``Pea root zstack_C001Z001.tif``)
    plane_prefix: str = "s"


def settings_text(sections: dict[str, dict[str, object]]) -> bytes:
    """A FluoView settings file: INI in UTF-16 LE with its byte-order mark, strings quoted."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key}={_quoted(value)}")
    return b"\xff\xfe" + "\r\n".join(lines + [""]).encode("utf-16-le")


def tiff_bytes(plane: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, photometric="minisblack", metadata=None)
    return buffer.getvalue()


def write_oib(image: Oib) -> bytes:
    """The OIB file of ``image``."""
    oif, main, files = fluoview_files(image)
    members = {oif: main, **{f"Storage00001/{name}": data for name, data in files.items()}}
    for name, data in image.replace.items():
        members[name if name == oif else f"Storage00001/{name}"] = data
    info: dict[str, object] = {"Version": "2.0.0.0", "Name": image.name, "MainFileName": _Raw("Stream00000"),
                               "Compression": _Raw("None"), "Storage00001": f"{oif}.files"}
    streams: dict[str, bytes] = {}
    for k, (name, data) in enumerate(members.items()):
        key = f"Stream{k:05d}"
        info[key] = _Raw(name)
        folder = name.rpartition("/")[0]
        streams[f"{folder}/{key}" if folder else key] = data
    streams["OibInfo.txt"] = settings_text({"OibSaveInfo": info})
    return write_compound(streams, sibling_chain=image.sibling_chain, version=image.version)


def write_oif(image: Oib, folder: Path) -> Path:
    """``image`` in FluoView's folder format under ``folder``: ``NAME.oif`` (the main settings) and
    ``NAME.oif.files/`` (a TIFF and its ``.pty`` per plane, the LUTs, the thumbnail); the path of
    the ``.oif``."""
    oif, main, files = fluoview_files(image)
    files.update({name: data for name, data in image.replace.items() if name != oif})
    (folder / f"{oif}.files").mkdir(parents=True)
    for name, data in files.items():
        (folder / f"{oif}.files" / name).write_bytes(data)
    path = folder / oif
    path.write_bytes(image.replace.get(oif, main))
    return path


def fluoview_files(image: Oib) -> tuple[str, bytes, dict[str, bytes]]:
    """What FluoView writes for ``image``: the main settings file's name and bytes, and the files of
    its folder by name (an OIB holds the same, as streams)."""
    pixels, axes = image.pixels, image.axes
    for axis in "TZC":
        if axis not in axes:
            pixels, axes = pixels[None], axis + axes
    order = [axes.index(a) for a in "CZTYX"]
    pixels = pixels.transpose(order)  # C, Z, T, Y, X
    channels, depth, times, height, width = pixels.shape
    planned = {"C": channels, "Z": depth, "T": times, **(image.planned or {})}
    oif = f"{image.name}.oif"
    files: dict[str, bytes] = {}
    for c in range(channels):
        for z in range(depth):
            for t in range(times):
                if (c, z, t) in image.missing:
                    continue
                stem = f"{image.plane_prefix}_C{c + 1:03d}" + (f"Z{z + 1:03d}" if depth > 1 else "") + (
                    f"T{t + 1:03d}" if times > 1 else "")
                files[f"{stem}.tif"] = tiff_bytes(pixels[c, z, t])
                files[f"{stem}.pty"] = settings_text({
                    "Axis 3 Parameters": {"Number": z + 1, "AbsPositionValue": z * image.z_step_nm},
                    "Axis 4 Parameters": {"Number": t + 1},
                    "File Info": {"DataName": f"{stem}.tif"},
                })
    files["s_Thumb.bmp"] = b"BM" + b"\0" * 60
    files.update({f"s_LUT{c + 1}.lut": settings_text({"ColorLUT": {"Index": c}}) for c in range(channels)})
    files.update(image.extra)

    sizes = {"X": width, "Y": 1 if image.line_scan else height, **planned}
    axis_sections = {}
    for slot, code in enumerate(AXIS_SLOTS):
        size = sizes.get(code, 0)
        section: dict[str, object] = {"AxisCode": code, "MaxSize": size if size > 1 or code in "XY" else 0}
        if code == "Z":
            section.update(StartPosition=1000.0, EndPosition=1000.0 + image.z_step_nm * max(size - 1, 0),
                           UnitName="nm")
        axis_sections[f"Axis {slot} Parameters Common"] = section
    reference: dict[str, object] = {"ImageDepth": pixels.dtype.itemsize, "ValidBitCounts": 12,
                                    "ImageWidth": width, "ImageHeight": height}
    if image.pixel_um is not None:
        value = image.pixel_um if isinstance(image.pixel_um, str) else repr(float(image.pixel_um))
        reference.update(WidthConvertValue=_Raw(value), WidthUnit="um",
                         HeightConvertValue=_Raw(value), HeightUnit="um")
    # As FluoView writes them (its own test file): a section per detector it offers, used or not,
    # each named CH1, CH2... (TD1: transmitted light), the dye in DyeName ("" or "None" when unset).
    gui_channels: dict[str, dict[str, object]] = {}
    for c, dye in enumerate(image.channel_names):
        gui_channels[f"GUI Channel {len(gui_channels) + 1} Parameters"] = {
            "CH Activate": 1, "CH Name": f"CH{c + 1}", "DyeName": "" if dye == "-" else dye}
        if c == 0:  # an unused detector between two used ones
            gui_channels[f"GUI Channel {len(gui_channels) + 1} Parameters"] = {
                "CH Activate": 0, "CH Name": "OP4CH", "DyeName": ""}
    main = settings_text({
        "Version Info": {"SystemName": "FLUOVIEW FV1000", "FileVersion": "1.2.6.0"},
        "File Info": {"DataName": f"{image.name}.oib"},
        "Axis Parameter Common": {"AxisOrder": "XYCZT"[: 2 + sum(planned[a] > 1 for a in "CZT")]},
        **axis_sections,
        "Reference Image Parameter": reference,
        **gui_channels,
    })
    return oif, main, files


class _Raw(str):
    """A settings value written without quotes."""


def _quoted(value: object) -> str:
    return str(value) if isinstance(value, _Raw) or not isinstance(value, str) else f'"{value}"'
