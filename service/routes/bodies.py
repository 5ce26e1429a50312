"""A request's file written to disk as it streams in, up to a byte limit: a job's upload
(``routes.jobs``) and a stored upload (``routes.uploads``) are received the same way.

The file is multipart field ``file`` (spooled by the form parser, then copied) or the raw body
(``image/*``, ``application/octet-stream``, or untyped: each caller says what it makes of that),
gathered into blocks written on a worker thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import Request

from service import filenames
from service.routes.segment import RAW_TYPES, multipart_file, unsupported_media_type, upload_content_type

#: Bytes gathered before a write to disk (on a worker thread).
WRITE_CHUNK = 1 << 20
#: Bytes of the file's start handed to ``check_head`` (a signature: DeltaVision's lies at byte 96).
HEAD_BYTES = 128


class TooBig(Exception):
    """The file has more bytes than the limit (what was written is the caller's to remove)."""


@dataclass(frozen=True)
class Received:
    filename: str | None  # the multipart file's name, or the raw body's Content-Disposition name
    size: int
    sha256: str | None  # hex digest, when asked for (``hashed``)
    typed: bool  # sent with a Content-Type (multipart, image/*, octet-stream), not untyped


async def receive_file(
    request: Request,
    path: Path,
    limit: int,
    *,
    hashed: bool = False,
    check_head: Callable[[bytes], None] | None = None,
) -> Received:
    """Write the request's file to ``path``; :class:`TooBig` past ``limit`` bytes, 415 for a type
    that is no file. ``check_head(first bytes)`` may refuse the file before the rest is waited for
    (raw body) or copied (multipart). ``hashed``: its SHA-256, computed as it is written."""
    sha = hashlib.sha256() if hashed else None
    content_type = upload_content_type(request)
    if content_type == "multipart/form-data":
        form_file = await multipart_file(request)
        size = await anyio.to_thread.run_sync(_copy_limited, form_file.file, path, limit, sha, check_head)
        return Received(form_file.filename, size, sha and sha.hexdigest(), typed=True)
    if not (content_type.startswith("image/") or content_type in RAW_TYPES or not content_type):
        raise unsupported_media_type(content_type)
    size, pending, checked = 0, bytearray(), check_head is None
    with open(path, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooBig
            pending += chunk
            if not checked and len(pending) >= HEAD_BYTES:
                check_head(bytes(pending[:HEAD_BYTES]))  # type: ignore[misc]  # checked: None → True
                checked = True
            if len(pending) >= WRITE_CHUNK:
                block = bytes(pending)
                pending.clear()
                await anyio.to_thread.run_sync(_write, out, sha, block)
        if pending and not checked:
            check_head(bytes(pending))  # type: ignore[misc]
        await anyio.to_thread.run_sync(_write, out, sha, bytes(pending))
    filename = filenames.request_filename(request.headers.get("content-disposition"))
    return Received(filename, size, sha and sha.hexdigest(), typed=bool(content_type))


def _write(out: BinaryIO, sha: Any, block: bytes) -> None:
    if sha is not None:
        sha.update(block)
    out.write(block)


def _copy_limited(
    source: BinaryIO, target: Path, limit: int, sha: Any, check_head: Callable[[bytes], None] | None
) -> int:
    """Copy a spooled multipart file to ``target``; its size, :class:`TooBig` past ``limit``."""
    if check_head is not None:
        check_head(source.read(HEAD_BYTES))
        source.seek(0)
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(WRITE_CHUNK):
            written += len(chunk)
            if written > limit:
                raise TooBig
            _write(out, sha, chunk)
    return written
