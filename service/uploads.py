"""Stored uploads: a file sent once and then named by its id in any number of requests.

A Leica project, a CZI plate or a large OME-TIFF is gigabytes: past the upload limit of one request
(``UNET_MAX_UPLOAD_BYTES``), and sent again by every request that reads it (the web page sends its
file to ``/probe``, the preview, each segmentation). ``POST /uploads`` writes a file to disk as it
streams in (up to ``UNET_MAX_STORED_UPLOAD_BYTES``); ``/probe``, ``/ui/preview``, ``/segment`` and
``/jobs`` then take ``upload=<id>`` instead of a body and read the stored file through a read-only
memory map (:meth:`UploadStore.open`), so a request costs the pages of the plane it reads, not
the file in memory — as the Python API reads large files by path.

Layout: ``<UNET_JOBS_DIR>/uploads/<id>/`` holding ``data`` (the bytes) and ``info.json``
(:class:`UploadInfo`, written once the bytes are all in: an upload without it is still arriving,
or was cut short). The folder shares the jobs folder's byte budget (``UNET_JOBS_MAX_BYTES``, which
``JobStore.usage`` counts it in) and its replicas: any replica sharing the folder serves any upload.

Ids are ``uuid4`` hex, never derived from user input and checked before a path is built. A stored
file is never written again once its info is saved, so a map of it cannot be cut short under a
reader (the SIGBUS hazard of mapping a file someone rewrites); deleting it unlinks the name, and
maps already open keep their pages until they close.

Expiry: an upload not used for ``retention_s`` (``UNET_JOBS_RETENTION_S``) is deleted by the
retention sweep; every use (a probe, a segmentation, a job) renews it. An upload cut short (no
info after ``retention_s`` without a byte written) is swept too.

Resumable uploads (the tus 1.0 protocol's core and its creation and termination extensions,
https://tus.io/protocols/resumable-upload, so tus clients — tus-js-client, Uppy, tuspy — resume
against it): :meth:`UploadStore.create` makes an upload of a declared length, holding
``pending.json`` (:class:`PendingUpload`) beside the ``data`` that grows;
:meth:`UploadStore.appending` adds bytes at the offset the client says it has reached (the data's
size on disk is the offset: a request cut short keeps what arrived), one request at a time (an
exclusive ``flock``: replicas on one host honour it, and across hosts where the shared file system
has locks, as NFSv4 does); :meth:`UploadStore.complete`, once every byte is in, hashes the data (a
second read: a hash's state cannot be kept between requests) and writes the info that makes it
usable, as a whole upload's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydantic import BaseModel, Field

from service import durable

#: The folder under the jobs folder that holds stored uploads (not a job id: ``JobStore`` skips it).
FOLDER = "uploads"
_ID = re.compile(r"^[0-9a-f]{32}$")
_DATA, _INFO, _PENDING = "data", "info.json", "pending.json"
#: Bytes read at once to hash a resumable upload when it is complete.
_HASH_BLOCK = 8 << 20


class UploadInfo(BaseModel):
    """What ``info.json`` holds; times are Unix seconds (UTC)."""

    id: str
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex digest of the bytes (the prediction cache's key)")
    filename: str | None = Field(None, description="the file's name as sent (names the outputs)")
    created: float


class PendingUpload(BaseModel):
    """What ``pending.json`` holds while a resumable upload's bytes arrive."""

    id: str
    length: int = Field(description="bytes the upload will have (tus Upload-Length)")
    filename: str | None = None
    created: float


#: The JSON records an upload keeps (:meth:`UploadStore._record`).
_Record = TypeVar("_Record", UploadInfo, PendingUpload)


class UnknownUpload(LookupError):
    """No stored upload with that id (never made, deleted, expired, or still arriving)."""


class UploadIncomplete(UnknownUpload):
    """A resumable upload whose bytes are not all in yet: not a file to read."""

    def __init__(self, upload_id: str, offset: int, length: int) -> None:
        super().__init__(upload_id)
        self.offset, self.length = offset, length


class OffsetMismatch(Exception):
    """The client's offset is not the upload's (tus: 409); ``offset`` is the upload's."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class UploadBusy(Exception):
    """Another request is adding bytes to this upload now."""


class UploadTooLarge(Exception):
    """A declared length past the largest stored upload (``UNET_MAX_STORED_UPLOAD_BYTES``)."""


class UploadsFull(Exception):
    """No room for another upload (the jobs folder's bytes or count)."""


class StoredImage(mmap.mmap):
    """A stored upload's bytes as a read-only memory map, with what is known of it.

    A map, so everything that reads uploads reads it (the container parsers take it as their file:
    ``microscopy.container_stream``); ``sha256`` saves hashing gigabytes for the prediction cache's
    key; ``filename`` names the outputs. One map per request: a map has one file position.
    """

    sha256: str
    filename: str | None
    upload_id: str


class UploadStore:
    """Stored uploads under ``<root>/uploads``.

    ``room()``: bytes the jobs folder has free (shared with jobs); ``max_uploads``: most stored
    uploads at once; ``max_bytes``: most bytes of one upload.
    """

    def __init__(
        self, root: Path, max_bytes: int, max_uploads: int, retention_s: float, room: Callable[[], int]
    ) -> None:
        self.root = Path(root) / FOLDER
        self.max_bytes, self.max_uploads, self.retention_s = max_bytes, max_uploads, retention_s
        self._room = room

    # --- paths ---------------------------------------------------------------------------------

    def folder(self, upload_id: str) -> Path:
        if not _ID.fullmatch(upload_id):  # never build a path from anything but our own ids
            raise UnknownUpload(upload_id)
        return self.root / upload_id

    def data_path(self, upload_id: str) -> Path:
        return self.folder(upload_id) / _DATA

    # --- writing ---------------------------------------------------------------------------------

    def new(self, declared_bytes: int | None) -> tuple[str, int]:
        """A new upload's id and how many bytes it may take; :class:`UploadsFull` when there is no
        room (``declared_bytes``: the request's Content-Length, when it sent one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        count = sum(1 for p in self.root.iterdir() if _ID.fullmatch(p.name))
        if count >= self.max_uploads:
            raise UploadsFull(
                f"the server already keeps {count} stored uploads (UNET_JOBS_MAX); delete ones you no longer "
                "need (DELETE /uploads/{id}) or retry once older ones expire"
            )
        room = self._room()
        if room <= 0 or (declared_bytes is not None and declared_bytes > room):
            raise UploadsFull(
                f"the jobs folder, which keeps stored uploads, has {max(room, 0):,} bytes free "
                "(UNET_JOBS_MAX_BYTES)" + (f"; this upload has {declared_bytes:,}" if declared_bytes else "")
            )
        upload_id = uuid.uuid4().hex
        self.folder(upload_id).mkdir()
        return upload_id, min(room, self.max_bytes)

    def finish(self, upload_id: str, filename: str | None, size: int, sha256: str) -> UploadInfo:
        """The bytes are all in (``size`` of them, hashed as they came): write the info that makes
        the upload usable."""
        info = UploadInfo(id=upload_id, size=size, sha256=sha256, filename=filename, created=time.time())
        # The bytes reach the disk before the info that makes them usable (service.durable): the
        # client may delete its copy on the 201.
        durable.sync_file(self.data_path(upload_id))
        durable.write_atomic(self.folder(upload_id) / _INFO, info.model_dump_json().encode())
        durable.sync_folder(self.root)  # the upload's own folder in the uploads folder
        return info

    def create(self, length: int, filename: str | None) -> PendingUpload:
        """A resumable upload of ``length`` bytes, none of them in yet; :class:`UploadTooLarge` past
        the stored limit, :class:`UploadsFull` past the jobs folder's room or count."""
        if length > self.max_bytes:
            raise UploadTooLarge(f"a stored upload has at most {self.max_bytes:,} bytes "
                                 f"(UNET_MAX_STORED_UPLOAD_BYTES); this one has {length:,}")
        upload_id, _ = self.new(length)
        pending = PendingUpload(id=upload_id, length=length, filename=filename, created=time.time())
        self.data_path(upload_id).touch()
        durable.write_atomic(self.folder(upload_id) / _PENDING, pending.model_dump_json().encode())
        return pending

    def progress(self, upload_id: str) -> tuple[int, int]:
        """``(offset, length)``: the bytes in and the bytes it will have (equal once complete; a
        whole upload's are its size)."""
        with contextlib.suppress(UploadIncomplete):
            size = self.info(upload_id).size
            return size, size
        pending = self._pending(upload_id)
        try:
            return self.data_path(upload_id).stat().st_size, pending.length
        except FileNotFoundError as exc:  # deleted meanwhile
            raise UnknownUpload(upload_id) from exc

    @contextlib.contextmanager
    def appending(self, upload_id: str, offset: int) -> Iterator[tuple[BinaryIO, PendingUpload]]:
        """The data open to add bytes at ``offset``, and the upload's pending info, while no other
        request may add any: :class:`UploadBusy` if one does, :class:`OffsetMismatch` if the data
        has another size, :class:`UnknownUpload` for an upload complete or unknown."""
        pending = self._pending(upload_id)
        try:
            out = open(self.data_path(upload_id), "r+b")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise UnknownUpload(upload_id) from exc
        try:
            try:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise UploadBusy(upload_id) from exc
            size = os.fstat(out.fileno()).st_size
            if size != offset:
                raise OffsetMismatch(size)
            out.seek(size)
            yield out, pending
            out.flush()
        finally:
            out.close()  # releases the lock

    def complete(self, upload_id: str) -> UploadInfo:
        """A resumable upload whose bytes are all in: hash them and write the info that makes it
        usable (as :meth:`finish` does for a whole upload)."""
        pending = self._pending(upload_id)
        sha = hashlib.sha256()
        with open(self.data_path(upload_id), "rb") as data:
            while block := data.read(_HASH_BLOCK):
                sha.update(block)
            size = data.tell()
        if size != pending.length:
            raise ValueError(f"upload {upload_id} has {size} of its {pending.length} bytes")
        info = self.finish(upload_id, pending.filename, size, sha.hexdigest())
        (self.folder(upload_id) / _PENDING).unlink(missing_ok=True)
        return info

    def head(self, upload_id: str, count: int) -> bytes:
        """The data's first ``count`` bytes (what a signature check reads)."""
        with open(self.data_path(upload_id), "rb") as data:
            return data.read(count)

    def _pending(self, upload_id: str) -> PendingUpload:
        return self._record(upload_id, _PENDING, PendingUpload)

    def _record(self, upload_id: str, name: str, model: type[_Record]) -> _Record:
        """The upload's JSON record ``name`` (its info, or its pending info); :class:`UnknownUpload`
        when it has none."""
        try:
            text = (self.folder(upload_id) / name).read_text()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UnknownUpload(upload_id) from exc
        return model.model_validate_json(text)

    def discard(self, upload_id: str) -> None:
        """An upload that did not arrive whole (refused, cut short)."""
        shutil.rmtree(self.folder(upload_id), ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------------

    def info(self, upload_id: str) -> UploadInfo:
        """A usable upload's info; :class:`UploadIncomplete` for a resumable one still arriving."""
        try:
            return self._record(upload_id, _INFO, UploadInfo)
        except UnknownUpload as exc:
            try:
                length = self._pending(upload_id).length
                offset = self.data_path(upload_id).stat().st_size
            except (UnknownUpload, FileNotFoundError):
                raise exc from None
            raise UploadIncomplete(upload_id, offset, length) from exc

    def open(self, upload_id: str) -> StoredImage:
        """The upload's bytes as a read-only map (:class:`StoredImage`); renews its expiry."""
        info = self.info(upload_id)
        try:
            with open(self.data_path(upload_id), "rb") as handle:
                stored = StoredImage(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, ValueError) as exc:  # deleted meanwhile; ValueError: an empty file
            raise UnknownUpload(upload_id) from exc
        stored.sha256, stored.filename, stored.upload_id = info.sha256, info.filename, upload_id
        self.touch(upload_id)
        return stored

    def touch(self, upload_id: str) -> None:
        """Used now: the expiry counts from here."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.folder(upload_id) / _INFO)

    # --- removal ---------------------------------------------------------------------------------

    def delete(self, upload_id: str) -> None:
        """Remove an upload, whole or still arriving (tus termination); :class:`UnknownUpload` when
        there is none."""
        with contextlib.suppress(UploadIncomplete):
            self.info(upload_id)
        shutil.rmtree(self.folder(upload_id), ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete uploads unused for ``retention_s``, and uploads cut short (no info, no byte
        written for ``retention_s``); their ids."""
        now = time.time() if now is None else now
        gone = []
        with contextlib.suppress(FileNotFoundError):
            for folder in self.root.iterdir():
                if not _ID.fullmatch(folder.name):
                    continue
                last = _last_use(folder)
                if last is not None and now - last > self.retention_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    gone.append(folder.name)
        return gone


def _last_use(folder: Path) -> float | None:
    """When an upload was last used (its info's time), or for one still arriving its last byte."""
    for name in (_INFO, _DATA):
        with contextlib.suppress(FileNotFoundError):
            return (folder / name).stat().st_mtime
    try:
        return folder.stat().st_mtime
    except FileNotFoundError:
        return None
