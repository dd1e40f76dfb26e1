"""Writing files and folders so that a killed process never leaves half of one, and reading a folder as one save.

Every output markguard promises to be whole (model cards, weights, index folders, scan summaries,
reports) goes through here: a file through a temporary file, fsync and rename; a folder (an index)
by building it complete beside the old one and swapping the two. Written files follow the umask,
as files written with a plain ``open`` do. No heavy imports: the scan's writer and the report use it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)


def _umask() -> int:
    # /proc first: the os.umask(0) round trip briefly gives files created by other threads mode 0666
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the umask (mkstemp's 0600 is not what users expect)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors, FAISS); on a clean
    exit it gets the umask's mode, is fsynced and renamed over ``path``; on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        fsync_path(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- whole folders


def new_folder_beside(path: Path) -> Path:
    """An empty folder next to ``path`` (same filesystem, so it can be swapped in), with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, folder_mode())
    return tmp


def old_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in_folder(tmp: Path, path: Path) -> None:
    """Make the complete, fsynced folder ``tmp`` become ``path``; at no instant is ``path`` half written."""
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp)  # now holds the previous save
    else:
        # Two renames: a kill between them leaves no ``path`` but a complete ``.name.old``,
        # which readers fall back to (see recover_folder).
        old = old_of(path)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    fsync_path(path.parent)


def recover_folder(path: Path, marker: str) -> Path:
    """``path``, or the previous save left as ``.name.old`` by a save killed between its two renames."""
    if not path.exists() and (old_of(path) / marker).exists():
        log.warning("%s: missing after an interrupted save; reading the previous save from %s", path, old_of(path))
        return old_of(path)
    return path


class FolderChanged(Exception):
    """The folder being read was replaced by a newer save part-way through; read it again."""


class FolderSnapshot:
    """One save of a folder that :func:`swap_in_folder` replaces whole: every file opened through it
    belongs to the save that was in place when it was opened, however many saves happen meanwhile.

    The folder is opened once and files are opened relative to it. A save swaps a new folder in and
    deletes the old one; a file already opened stays readable, and one not yet opened is gone, which
    :meth:`open` reports as :class:`FolderChanged` (as opposed to a file this save never had).
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.open in os.supports_dir_fd else None
        self._ino = os.fstat(self._fd).st_ino if self._fd is not None else None

    def replaced(self) -> bool:
        """True when ``path`` no longer names the folder this snapshot opened."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def open(self, name: str) -> BinaryIO:
        """``name`` of this save, opened for reading; FileNotFoundError only when this save lacks it."""
        try:
            if self._fd is None:
                return open(self.path / name, "rb")
            return os.fdopen(os.open(name, os.O_RDONLY, dir_fd=self._fd), "rb")
        except FileNotFoundError:
            if self.replaced():
                raise FolderChanged(str(self.path)) from None
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderSnapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reading only under a root

def inside(root: Path, candidate: Path) -> Path | None:
    """``candidate`` resolved (links followed) if it stays under ``root``, else None.

    Resolving only reads link targets and directory entries, never a file's content.
    """
    resolved = real_under(os.path.realpath(root), candidate)
    return None if resolved is None else Path(resolved)


def real_under(root_real: str, candidate: str | os.PathLike) -> str | None:
    """:func:`inside` on strings with the root already resolved (``os.path.realpath``): the readers call it once a row."""
    try:
        resolved = os.path.realpath(candidate)
    except (OSError, ValueError):  # NUL bytes in a manifest path
        return None
    if resolved == root_real or resolved.startswith(root_real.rstrip(os.sep) + os.sep):
        return resolved
    return None
