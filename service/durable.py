"""Files that outlive a crash of the machine once the service has said they are there.

The service tells a client that something is finished — a stored upload's ``201`` and its id, a
resumable upload's new offset, a job's ``succeeded`` — and the client then deletes its copy,
resumes from that offset, or stops polling. Written bytes sit in the kernel's page cache for up
to half a minute before they reach the disk, so without a sync a power loss or kernel crash in
that window left a stored upload whose ``info.json`` (renamed into place) promised bytes that
were zeros or missing, or a job ``succeeded`` whose result file was empty. A rename is durable
only once its folder is synced, too (fsync(2): "calling fsync() on a file descriptor for the
directory is also needed").

The order is what matters: the bytes first, then the record that says they are there. What it
costs is mostly the writing the kernel would have done anyway: 4,000 freshly written files of
20 kB synced in 1.4 s on this project's 2-core test machine; a 32768² slide job's store holds about
4,000 chunk files (1024² chunks, three outputs and their pyramids), a 100,000² one ten times as
many, against hours of segmentation on a CPU.

A process that dies (an out-of-memory kill, a restarted pod) loses nothing either way, as the
page cache belongs to the kernel; these syncs are for the machine or its storage going down.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO


def sync_file(path: Path) -> None:
    """The file's bytes and size on disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def sync_open(handle: BinaryIO) -> None:
    """What was written through ``handle`` (a file open for writing) on disk."""
    handle.flush()
    os.fsync(handle.fileno())


def sync_folder(path: Path) -> None:
    """The folder's entries on disk: files created, renamed or removed in it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data``, on disk: readers and a crash see the old file or the new one whole,
    never part of it (a temporary file beside it, synced, renamed over it, its folder synced)."""
    # unique: two threads, or two replicas on a shared folder (each may be pid 1), never share one
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_tree(root: Path, skip: Iterable[str] = ()) -> int:
    """Every regular file under ``root`` and every folder (their entries) on disk, but the entries
    of ``root`` named in ``skip`` (a job's input, about to be deleted: syncing gigabytes only to
    delete them would cost the disk for nothing). Links are not followed. The number of files."""
    skipped = set(skip)
    synced = 0
    for folder, dirs, files in os.walk(root, topdown=True, followlinks=False):
        here = Path(folder)
        if here == Path(root):
            dirs[:] = [d for d in dirs if d not in skipped]
            files = [f for f in files if f not in skipped]
        for name in files:
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            sync_file(path)
            synced += 1
        sync_folder(here)
    return synced
