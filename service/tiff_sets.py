"""The other files tifffile opens for a TIFF read by path, checked before it opens them.

A TIFF read by *path* (a slide or stack job under ``UNET_DATA_ROOT``) can be one file of a set,
and tifffile then opens the others by the names the file gives it:

- an **OME-TIFF** split over several files names each in its OME-XML (``<UUID FileName=...>``),
  joined by tifffile to the file's folder as they stand: ``../other/x.ome.tif`` or an absolute
  name reaches any TIFF the server can read, outside the data root that :mod:`service.data_root`
  confines every path to;
- a **Micro-Manager** stack finds its other ``<prefix>_MMStack*.tif`` files by a glob in the folder
  (a symlink among them may point anywhere);
- an **NDTiff** dataset (Micro-Manager 2, pycro-manager) reads the folder's ``NDTiff.index`` (of
  any size, entry by entry in Python) and opens every file it names.

Those files were neither confined nor bounded: the data root checked the path the user gave, and
:mod:`service.structure` walked that one file's IFD chain. :func:`check_set` is called after
tifffile has read the file's first page and before anything asks for its series (which is when
tifffile opens the others): every file the set names must be a regular file in the file's own
folder once resolved (symlinks followed), and the set's pages together stay within
``UNET_MAX_TIFF_PAGES`` (counted along each file's IFD chain, as for one file); the NDTiff index
within ``UNET_MAX_METADATA_BYTES``. A named file that does not exist is left to tifffile, which
reads it as missing (the service then answers for its planes with a 400 naming them).

Uploads are not concerned: tifffile opens nothing else for a file it reads from bytes.
"""

from __future__ import annotations

import glob
import mmap
import os
import stat
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from service import extent, imaging, microscopy, structure
from service.imaging import UndecodableImage, UnsupportedImageType

#: Micro-Manager's index of an NDTiff dataset, in the dataset's folder.
NDTIFF_INDEX = "NDTiff.index"


def check_set(tif: Any, limits: structure.Limits) -> None:
    """Check the files that ``tif`` (a ``tifffile.TiffFile`` opened by path, its series not yet
    read) would open besides itself.

    Raises:
        UnsupportedImageType: a named file lies outside the file's folder, or is not a regular file.
        structure.TooManyPages / TooComplex: the set's pages past ``limits.max_tiff_pages``, the
            NDTiff index past ``limits.max_metadata_bytes``.
    """
    handle = tif.filehandle
    if not handle.is_file:
        return  # read from bytes: tifffile opens nothing else
    folder = Path(handle.dirname or ".")
    names = _named_files(tif, folder, limits)
    own = Path(handle.path).resolve()
    pages = _count_pages(own, limits)
    checked = {own}
    for name in sorted(names):
        resolved = _inside(folder, name)
        if resolved is None or resolved in checked:
            continue
        checked.add(resolved)
        pages += _count_pages(resolved, limits)
        if pages > limits.max_tiff_pages:
            raise structure.TooManyPages(limits.max_tiff_pages)


def open_by_path(path: Path, limits: structure.Limits) -> Any:
    """``path`` open as tifffile reads it by path, with its set, once the service's bounds hold: the
    file's IFD walk (pages, tags, a tag's bytes), a companion's metadata handed to tifffile
    (:func:`companion_xml`), and the set's files (:func:`check_set`); its series not yet read.
    The caller closes it.

    Raises:
        UndecodableImage: tifffile cannot open it.
        UnsupportedImageType, structure.TooManyPages / TooComplex: what the checks refuse.
    """
    import tifffile

    structure.walk_file(path, structure.count_tiff, limits)  # bounded before tifffile indexes it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tif = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on corrupt input
        raise UndecodableImage(f"unreadable TIFF: {imaging.reason(exc)}") from exc
    try:
        companion = companion_xml(tif, limits)
        if companion is not None:  # the set's metadata lies in another file: read the set by it
            tif.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tif = tifffile.TiffFile(path, omexml=companion)
        check_set(tif, limits)  # before its series: tifffile then opens a set's other files
    except BaseException:
        tif.close()
        raise
    return tif


def companion_xml(tif: Any, limits: structure.Limits) -> str | None:
    """The OME-XML of the set ``tif`` (a ``tifffile.TiffFile`` opened by path) belongs to, where the
    file holds none of its own but points to it: Bio-Formats writes a set's metadata once, in a
    companion file (``NAME.companion.ome``) or in the set's first TIFF, and each other file's XML is
    a ``BinaryOnly`` element naming it. tifffile does not follow that pointer, so each such file read
    as a lone plane (a 5-slice set's files each "no Z axis"); handed the XML (``TiffFile(path,
    omexml=...)``), it reads the set. None where the file has its own metadata, or the one named is
    not there or holds none.

    Raises:
        UnsupportedImageType: the file named lies outside the file's folder, or is not a regular file.
        structure.TooComplex: a companion file larger than ``limits.max_metadata_bytes``.
    """
    import tifffile

    handle = tif.filehandle
    if not handle.is_file or not tif.is_ome:
        return None
    try:
        own = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    pointer = next((e for e in own if e.tag.endswith("BinaryOnly") and e.attrib.get("MetadataFile")), None)
    if pointer is None:
        return None
    folder = Path(handle.dirname or ".")
    named = _inside(folder, pointer.attrib["MetadataFile"])
    if named is None or named == Path(handle.path).resolve():
        return None
    with open(named, "rb") as source:
        head = source.read(4)
        if microscopy.is_tiff(head):  # the set's first TIFF holds it
            # bounded as the file itself was (pages, tags, a tag's bytes) before tifffile reads it
            structure.walk_file(named, structure.count_tiff, limits)
            try:
                with tifffile.TiffFile(named) as master:
                    xml = master.ome_metadata if master.is_ome else None
            except Exception:  # noqa: BLE001 - tifffile names a broken file; this one reads alone
                return None
        else:
            source.seek(0)
            data = source.read(limits.max_metadata_bytes + 1)
            if len(data) > limits.max_metadata_bytes:
                limit = limits.max_metadata_bytes
                what = f"the set's companion file {named.name!r} has more than {limit:,} bytes"
                raise structure.TooComplex(what, limit, "UNET_MAX_METADATA_BYTES")
            xml = data.decode("utf-8", errors="replace")
    try:
        root = ET.fromstring(xml or "")
    except ET.ParseError:
        return None
    if not root.tag.endswith("OME") or any(e.tag.endswith("BinaryOnly") for e in root):
        return None
    return xml


def image_files(path: Path, limits: structure.Limits = microscopy.DEFAULT_LIMITS) -> tuple[Path, ...]:
    """The files that together hold the image (or images) whose pages ``path`` holds, where an
    OME-TIFF image is split over several files: Bio-Formats writes one file per channel, z-slice or
    time point on request (``bfconvert`` with a pattern), and Micro-Manager continues a stack past
    4 GB in ``NAME_1.ome.tif``. Sorted by name, ``path`` among them, each a regular file in its
    folder; ``()`` where the file holds its images alone (a Micro-Manager acquisition's positions,
    each in its own file, are images of their own, not one split), or cannot be read so.

    For what reads a file by path (``unet-segment``, the Python API): one file of the set sent
    alone holds some of the image's planes and, where the set's metadata lies in a companion file,
    none of its names. Only names Bio-Formats and Micro-Manager give OME-TIFFs (``.ome.tif``) are
    opened: a screen's thousands of plain TIFFs are not read twice.
    """
    if not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return ()
    try:
        # opened as the service opens a file by path, within its bounds (the set's files included)
        with open_by_path(path, limits) as tif, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not tif.is_ome:
                return ()
            files = _split_image_members(ET.fromstring(tif.ome_metadata or ""), path)
            # Read as the set only where tifffile makes the set's series of it: a set whose pages
            # contradict its XML (Bio-Formats' set-1-meta-companion sample stores its grey planes
            # as RGB) is read file by file, as before, rather than as its first file alone. The
            # planes its XML describes are bounded first, as by path.
            if files:
                extent.check_ome(tif, limits.max_tiff_pages)
                if not any(series.kind == "ome" for series in tif.series):
                    return ()
    except Exception:  # noqa: BLE001 - unreadable or past a bound here: the file goes as it is,
        return ()  # and the service answers for it (a 413 where it is too much)
    return files


def _split_image_members(root: ET.Element, path: Path) -> tuple[Path, ...]:
    """The files an OME-XML's Images name, for those Images among whose files ``path`` is and which
    name more than one; sorted."""
    folder, own = path.parent, path.resolve()
    files: set[Path] = set()
    for image in (e for e in root if e.tag.endswith("Image")):
        named = set()
        for uuid in image.iter():
            name = uuid.attrib.get("FileName") if uuid.tag.endswith("UUID") else None
            try:
                found = _inside(folder, name) if name else None
            except UnsupportedImageType:
                found = None  # outside the folder: not read as part of the set
            if found is not None:
                named.add(found)
        if own in named and len(named) > 1:
            files |= named
    return tuple(sorted(files))


def _named_files(tif: Any, folder: Path, limits: structure.Limits) -> set[str]:
    """The names of the other files tifffile would open for ``tif``, as the file gives them."""
    names: set[str] = set()
    if tif.is_ome:
        names |= _ome_file_names(tif.ome_metadata or "")
    if tif.is_micromanager:
        meta = _micromanager_summary(tif)
        if meta is not None:
            summary, version = meta
            if version >= 2 and (folder / NDTIFF_INDEX).exists():
                names |= _ndtiff_file_names(folder, limits)
            names |= _mmstack_file_names(tif, folder, summary)
    return names


def _ome_file_names(xml: str) -> set[str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return set()  # tifffile does not read an OME series from it either
    return {
        element.attrib["FileName"]
        for element in root.iter()
        if element.tag.endswith("UUID") and element.attrib.get("FileName")
    }


def _micromanager_summary(tif: Any) -> tuple[dict[str, Any], int] | None:
    """(Summary, MajorVersion) of a Micro-Manager file, None if it has neither."""
    try:
        meta = tif.micromanager_metadata
    except Exception:  # noqa: BLE001 - tifffile then reads no Micro-Manager series either
        return None
    if not isinstance(meta, dict):
        return None
    summary = meta.get("Summary")
    try:
        version = int(meta.get("MajorVersion", 0) or 0)
    except (TypeError, ValueError):
        version = 0
    return (summary if isinstance(summary, dict) else {}), version


def _mmstack_file_names(tif: Any, folder: Path, summary: dict[str, Any]) -> set[str]:
    """The files tifffile's Micro-Manager stack reader globs for: ``<prefix>_MMStack*.tif``, with
    the prefix chosen as tifffile chooses it, each relative to ``folder``. tifffile does not escape
    the folder's name in its pattern: in a folder named ``star*`` it also matches the files of a
    folder (or a link to one) named ``star_evil`` beside it, which then name a path out of the folder
    (``../star_evil/x_MMStack_Pos1.tif``) that :func:`check_set` refuses."""
    filename = tif.filehandle.name
    if "_MMStack" not in filename:
        return set()
    prefix = summary.get("Prefix")
    if not isinstance(prefix, str) or not filename.startswith(prefix):
        prefix = filename.split("_MMStack")[0]
    pattern = os.path.join(str(folder), prefix + "_MMStack*.tif")  # as tifffile writes it, unescaped
    return {os.path.relpath(p, str(folder)) for p in glob.glob(pattern)}


def _ndtiff_file_names(folder: Path, limits: structure.Limits) -> set[str]:
    import tifffile

    index = _inside(folder, NDTIFF_INDEX)
    if index is None:
        return set()
    size = index.stat().st_size
    if size > limits.max_metadata_bytes:
        raise structure.TooComplex(
            f"the dataset's {NDTIFF_INDEX} has {size:,} bytes, more than {limits.max_metadata_bytes:,}",
            limits.max_metadata_bytes, "UNET_MAX_METADATA_BYTES",
        )
    try:
        entries = list(tifffile.read_ndtiff_index(index))
    except Exception:  # noqa: BLE001 - a broken index: tifffile fails on it too, and says so
        return set()
    # tifffile lays the dataset out on a grid from each axis's lowest to its highest coordinate (a
    # name is a category: one more each): one entry far out asked for a list of 10^8 pages
    columns: dict[str, list[int]] = {}
    names: dict[str, dict[str, int]] = {}
    for axes in (entry[0] for entry in entries if isinstance(entry[0], dict)):
        for axis, value in axes.items():
            if isinstance(value, str):
                value = names.setdefault(axis, {}).setdefault(value, len(names[axis]))
            if isinstance(value, int):
                columns.setdefault(axis, []).append(value)
    extent.check(extent.spans(columns.values()), limits.max_tiff_pages, f"the dataset's {NDTIFF_INDEX}")
    return {str(entry[1]) for entry in entries}


def _inside(folder: Path, name: str) -> Path | None:
    """``name`` joined to ``folder`` as tifffile joins it, resolved; None where nothing is there.

    Raises:
        UnsupportedImageType: it resolves outside ``folder``, or to something not a regular file.
    """
    try:
        resolved = Path(os.path.join(str(folder), name)).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long; a link loop (RuntimeError)
        raise UnsupportedImageType(f"the file names another file of its set, {name[:200]!r}, that "
                                   "cannot be found") from exc
    if resolved.parent != folder.resolve():
        raise UnsupportedImageType(
            f"the file names another file of its set, {name[:200]!r}, outside its own folder; the files "
            "of a multi-file OME-TIFF or Micro-Manager dataset are read only from one folder"
        )
    try:
        mode = os.stat(resolved).st_mode
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(mode):
        raise UnsupportedImageType(
            f"the file names another file of its set, {name[:200]!r}, that is not a regular file"
        )
    return resolved


def _count_pages(path: Path, limits: structure.Limits) -> int:
    """``path``'s pages along its IFD chain (:func:`structure.count_tiff`: bounded, loops stopped);
    0 for an empty file or one that is not a TIFF (tifffile names it)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return 0
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if not microscopy.is_tiff(view[:4]):
                return 0
            return structure.count_tiff(view, limits)  # type: ignore[arg-type]  # bytes-like
