"""File names for what the service sends back: ``Content-Disposition`` derived from the upload.

``cells.tif`` segmented with ``output=labels`` comes back as ``cells_labels.png`` (or ``.tif``),
so a browser's or ``curl -OJ``'s saved file says what it is and where it came from. The upload's
name is untrusted: only its last path component is used, without its extension, control
characters, quotes, separators or leading dots, and cut to a sane length. RFC 6266: an ASCII
``filename=`` for every client, plus ``filename*=UTF-8''…`` (RFC 8187) when the name is not ASCII.
"""

from __future__ import annotations

import email.message
import re
import unicodedata
from pathlib import PurePosixPath
from urllib.parse import quote

#: Output media type → file suffix (parameters such as ``; charset=utf-8`` are ignored).
SUFFIXES = {
    "image/png": ".png",
    "image/tiff": ".tif",
    "text/csv": ".csv",
    "application/json": ".json",
    "application/geo+json": ".geojson",
    "application/zip": ".zip",
}
#: Characters kept in a name; anything else becomes ``_`` (runs collapse).
_UNSAFE = re.compile(r"[^\w.()+,=@ -]+")
_NOT_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._()+,=@ -]+")
_MAX_STEM = 100
DEFAULT_STEM = "image"


def upload_stem(filename: str | None) -> str:
    """A safe stem (no directory, no extension) of an uploaded file's name; ``image`` if none is left."""
    name = unicodedata.normalize("NFC", filename or "")
    name = "".join(" " if unicodedata.category(c).startswith("C") else c for c in name)
    name = PurePosixPath(name.replace("\\", "/")).name  # Windows and POSIX directories alike
    stem = PurePosixPath(name).stem if "." in name.strip(".") else name
    stem = " ".join(_UNSAFE.sub("_", stem).split()).strip(" ._")[:_MAX_STEM].strip(" ._")
    return stem or DEFAULT_STEM


def request_filename(header: str | None) -> str | None:
    """The ``filename`` (or RFC 2231/8187 ``filename*``) of a request's own ``Content-Disposition``,
    which a raw-body upload may carry (``curl -H 'Content-Disposition: attachment; filename=a.tif'``)."""
    if not header:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = header
    try:
        return message.get_filename()
    except (ValueError, LookupError):  # a malformed header names nothing
        return None


def output_name(filename: str | None, output: str, media_type: str) -> str:
    """``<stem>_<output><suffix>``, e.g. ``cells_mask.png``; ``cells.geojson`` for output=geojson."""
    suffix = SUFFIXES.get(media_type.split(";")[0].strip().lower(), ".bin")
    stem = upload_stem(filename)
    return f"{stem}{suffix}" if suffix == f".{output}" else f"{stem}_{output}{suffix}"


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """The header value for a (safe) file name: ASCII fallback plus ``filename*`` when needed."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = _NOT_ASCII_SAFE.sub("_", folded).lstrip(" ._") or DEFAULT_STEM
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
