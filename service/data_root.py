"""Images read from a folder on the server (``UNET_DATA_ROOT``), named by a path relative to it.

For clusters whose slides already sit on a shared volume: ``POST /jobs`` with ``{"path": ...}``
reads the file where it is instead of receiving its bytes. The path is a user's input, so it is
never trusted:

- it must be relative, without NUL bytes, and at most :data:`MAX_PATH_CHARS` long;
- it is joined to the root and **resolved** (every symlink and ``..`` followed) before it is
  checked: the result must lie under the resolved root, so neither ``../`` nor a symlink inside
  the root that points out of it reaches anything outside;
- the resolved path must be a regular file (not a folder, device, FIFO or socket) of at most the
  upload limit's bytes;
- when the job runs, the file is opened again and must still be the same file (device and inode
  recorded at submission, checked on the open descriptor): a path component swapped for a symlink
  between submission and run cannot redirect the read.

A **store** (an OME-Zarr folder, for slide jobs only: ``locate(..., store=...)``) is a folder whose
files a reader opens by path, one chunk at a time, so every entry in it is checked too, at
submission and again when the job starts (:meth:`DataFile.check_unchanged`): a symlink anywhere in
the store must resolve inside the root like the path itself (a chunk linked to a file outside
would hand its bytes to the reader), and every entry must be a folder or a regular file (a FIFO
would block the reader). The caller's predicate decides whether the folder is a store at all;
stores have no byte limit (slides have a pixel limit). The folder itself must still be the same
folder (device and inode) when the job starts.

Errors are :class:`DataPathError` subclasses with a message that names the path as the user
gave it, never the server's absolute paths.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Longest relative path accepted (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


class DataPathError(Exception):
    """A path that cannot be read; ``str()`` is safe to show the user."""


class OutsideRoot(DataPathError):
    """Absolute, or resolves (through ``..`` or a symlink) to somewhere outside the data root."""


class NotFound(DataPathError):
    """Nothing exists at the path under the data root."""


class NotAFile(DataPathError):
    """The path is a folder, device, FIFO or socket."""


class NotAStore(DataPathError):
    """The path is a folder, and folders are read only as Zarr stores: this one is none."""


class TooLarge(DataPathError):
    """The file has more bytes than an upload may have."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size, self.limit = size, limit


class Changed(DataPathError):
    """The file was replaced or removed between the job's submission and its run."""


@dataclass(frozen=True)
class DataFile:
    """A file found under the data root: where it is, and which file it was when checked."""

    relative: str  # as the user gave it (for messages and the job's record)
    path: Path  # resolved, absolute, under the root
    device: int
    inode: int
    size: int  # bytes; 0 for a store
    #: For a store: the resolved data root, which every symlink in the store must stay under.
    store_root: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_store(self) -> bool:
        return self.store_root is not None

    def check_unchanged(self) -> None:
        """:class:`Changed` unless the path still names the file (or store folder) that was
        checked (same device and inode, same kind, the last component not a symlink) — for readers
        that open the path themselves (a slide read by region). A store's entries are checked
        again as at submission (:class:`OutsideRoot` / :class:`NotAFile`): a symlink out of the
        root planted in it since then is refused before the reader opens anything."""
        what = "folder" if self.is_store else "file"
        try:
            st = os.lstat(self.path)
        except OSError as exc:
            raise Changed(f"{self.relative}: the {what} is gone since the job was submitted") from exc
        kind_ok = stat.S_ISDIR(st.st_mode) if self.is_store else stat.S_ISREG(st.st_mode)
        if (st.st_dev, st.st_ino) != (self.device, self.inode) or not kind_ok:
            raise Changed(f"{self.relative}: the {what} was replaced since the job was submitted")
        if self.store_root is not None:
            _check_store(self.store_root, self.path, self.relative)

    def read(self, max_bytes: int) -> bytes:
        """The file's bytes, if it is still the file that was checked (same device and inode)
        and still within ``max_bytes``; :class:`Changed` / :class:`TooLarge` otherwise."""
        try:
            # O_NOFOLLOW: the last component must not have become a symlink; the inode check
            # below catches a swapped folder higher up. O_NONBLOCK: a FIFO put in the file's place
            # would block the open until a writer came (no effect on regular files).
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise Changed(f"{self.relative}: the file is gone or was replaced since the job was "
                          "submitted") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != (self.device, self.inode) or not stat.S_ISREG(st.st_mode):
                raise Changed(f"{self.relative}: the file was replaced since the job was submitted")
            _check_size(self.relative, st.st_size, max_bytes)
            data = f.read(max_bytes + 1)
        _check_size(self.relative, len(data), max_bytes)  # grew while being read
        return data


def _check_size(relative: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(
            f"{relative}: the file has {size:,} bytes; at most {max_bytes:,} are read "
            "(UNET_MAX_UPLOAD_BYTES)", size, max_bytes,
        )


def _check_store(base: Path, folder: Path, relative: str, deep: bool = True) -> None:
    """Every entry under ``folder`` (only its top level unless ``deep``) is a folder or a regular
    file, and every symlink among them resolves under ``base``: else :class:`OutsideRoot` /
    :class:`NotAFile`, naming the entry relative to the store. ``os.scandir`` gives each entry's
    kind from the directory listing, so a store of 10⁵ chunks costs no stat per chunk; only
    symlinks cost a ``resolve``. A symlinked folder inside the root is checked as a link and then
    searched as the folder it names (once: a cycle of links ends)."""
    pending = [folder]
    seen: set[tuple[int, int]] = set()  # folders already searched (a symlink cycle inside the root)
    while pending:
        current = pending.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(current))
        except OSError as exc:
            raise NotFound(f"{relative}: the store cannot be listed ({exc.strerror})") from exc
        for entry in entries:
            path = Path(entry.path)
            inner = f"{relative}/{path.relative_to(folder).as_posix()}"
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (RuntimeError, OSError) as exc:  # dangling or a loop: nothing a reader could use
                    raise NotFound(f"{inner}: a symlink in the store that leads nowhere") from exc
                if not target.is_relative_to(base):
                    raise OutsideRoot(f"{inner}: a symlink in the store leads outside the data root")
            if entry.is_dir():  # follows a symlink (checked above); no stat call for a plain entry
                if deep:
                    pending.append(path)
            elif not entry.is_file():
                raise NotAFile(f"{inner}: an entry of the store is not a regular file or folder")


def locate(
    root: Path, relative: str, max_bytes: int, store: Callable[[Path], bool] | None = None
) -> DataFile:
    """The regular file at ``relative`` under ``root``, checked as the module's docstring says;
    with ``store`` (a predicate: is this folder a store the caller reads?), also a folder that
    it accepts, every entry of it checked (:func:`_check_store`), with no byte limit.

    Raises:
        OutsideRoot, NotFound, NotAFile, NotAStore, TooLarge: what is wrong with the path, in that
        order of checks (outside the root is refused before anything about the file is revealed).
        OSError: the root itself cannot be resolved (an operator's problem).
    """
    if not relative or "\0" in relative or len(relative) > MAX_PATH_CHARS:
        raise OutsideRoot(f"the path must be 1 to {MAX_PATH_CHARS} characters without NUL bytes")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or Path(relative).is_absolute() or Path(relative).drive:
        raise OutsideRoot(f"{relative}: the path must be relative to the data root, not absolute")
    base = root.resolve(strict=True)
    try:
        target = (base / relative).resolve(strict=False)  # symlinks and '..' followed where they exist
    except (RuntimeError, OSError) as exc:  # a symlink loop
        raise NotFound(f"{relative}: the path cannot be resolved (a symlink loop?)") from exc
    if not target.is_relative_to(base) or target == base:
        raise OutsideRoot(f"{relative}: the path leads outside the data root")
    try:
        st = target.stat()
    except FileNotFoundError as exc:
        raise NotFound(f"{relative}: no such file under the data root") from exc
    except NotADirectoryError as exc:  # a file used as a folder on the way
        raise NotFound(f"{relative}: no such file under the data root") from exc
    except PermissionError as exc:
        raise NotFound(f"{relative}: the service may not read this path (file permissions)") from exc
    except OSError as exc:
        if exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
            raise  # the root's storage failing: the operator's to fix
        # a name longer than the file system takes (255 bytes), a link loop: the request's, not a 503
        raise NotFound(f"{relative}: no such file under the data root ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode) and store is not None:
        # The top level first (the predicate looks at its marker files), then the whole store.
        _check_store(base, target, relative, deep=False)
        if not store(target):
            raise NotAStore(f"{relative}: is a folder but not a Zarr store (no .zattrs, .zgroup or "
                            "zarr.json in it); name an OME-Zarr folder or an image file")
        _check_store(base, target, relative)
        return DataFile(relative, target, st.st_dev, st.st_ino, 0, store_root=base)
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotAFile(f"{relative}: is {kind}; name an image file")
    _check_size(relative, st.st_size, max_bytes)
    return DataFile(relative, target, st.st_dev, st.st_ino, st.st_size)
