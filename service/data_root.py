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

Errors are :class:`DataPathError` subclasses with a message that names the path as the user
gave it, never the server's absolute paths.
"""

from __future__ import annotations

import os
import stat
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
    size: int

    @property
    def name(self) -> str:
        return self.path.name

    def check_unchanged(self) -> None:
        """:class:`Changed` unless the path still names the file that was checked (same device and
        inode, a regular file, the last component not a symlink) — for readers that open the
        path themselves (a slide read by region)."""
        try:
            st = os.lstat(self.path)
        except OSError as exc:
            raise Changed(f"{self.relative}: the file is gone since the job was submitted") from exc
        if (st.st_dev, st.st_ino) != (self.device, self.inode) or not stat.S_ISREG(st.st_mode):
            raise Changed(f"{self.relative}: the file was replaced since the job was submitted")

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


def locate(root: Path, relative: str, max_bytes: int) -> DataFile:
    """The regular file at ``relative`` under ``root``, checked as the module's docstring says.

    Raises:
        OutsideRoot, NotFound, NotAFile, TooLarge: what is wrong with the path, in that order
        of checks (outside the root is refused before anything about the file is revealed).
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
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotAFile(f"{relative}: is {kind}; name an image file")
    _check_size(relative, st.st_size, max_bytes)
    return DataFile(relative, target, st.st_dev, st.st_ino, st.st_size)
