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
import fcntl
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from markguard.errors import MarkguardError

log = logging.getLogger(__name__)


def excerpt(value, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters: what a one-line message quotes of an untrusted value."""
    try:
        text = repr(value) if not isinstance(value, (list, tuple, dict)) or len(value) <= limit else f"{type(value).__name__} of {len(value)} items"
    except (ValueError, RecursionError):  # a 100,000-digit int, a structure too deep to print
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def printable(text: str | os.PathLike) -> str:
    """``text`` (a path read from disk) with the bytes of a name that is not UTF-8 shown as ``\\xNN``: safe to print or store."""
    text = os.fspath(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if _only_escapes(text) else \
            text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON's \ud800)
        return False


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
        remove_entry(path)  # a dangling link, if any: the save replaces the name, never writes through it
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        remove_entry(tmp)  # now holds the previous save (or the link that named it)
    else:
        # Two renames: a kill between them leaves no ``path`` but a complete ``.name.old``,
        # which readers fall back to (see recover_folder).
        old = old_of(path)
        remove_entry(old)
        os.rename(path, old)
        os.rename(tmp, path)
        remove_entry(old)
    fsync_path(path.parent)


def remove_entry(path: Path) -> None:
    """Remove the name ``path``: a folder with what it holds, a file, or a link (never what a link points at)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # rmtree itself never follows links inside
    else:
        path.unlink(missing_ok=True)


def leftover_saves(path: Path) -> list[Path]:
    """Temporary folders beside ``path`` left by saves that were killed (``.name.tmp-*``): only real folders, never links."""
    found = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return found
    for name in names:
        if name.startswith(f".{path.name}.tmp-"):
            p = path.parent / name
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(p).st_mode):
                    found.append(p)
    return sorted(found)


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



# --------------------------------------------------------------------------- files created as ours, or not at all
# An output folder may sit where others can write (a shared /tmp-style folder): a link planted
# there must never redirect a write, a truncation or a deletion onto another file.

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP), getattr(errno, "EFTYPE", errno.ELOOP)}


def _refused(path: Path, what: str) -> MarkguardError:
    return MarkguardError(f"{path}: {what}; markguard writes only files it created itself (someone may have "
                          f"planted it): remove it, or choose another output folder")


def open_own(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link and opens only a regular file that nothing else links to.

    A link (or a FIFO, a device, a folder) at ``path`` is refused with one line. When the file
    already exists and is opened for writing, a second hard link to it is refused too: writing
    would change the other name's file.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | NOFOLLOW | CLOEXEC | os.O_NONBLOCK, mode)  # NONBLOCK: a planted FIFO must not hang us
    except OSError as e:
        if e.errno in _LINK_ERRNOS and path.is_symlink():
            raise _refused(path, "is a link") from None
        if e.errno == errno.ENXIO:  # a FIFO without a reader
            raise _refused(path, "is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refused(path, "is not a regular file")
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            raise _refused(path, f"has {st.st_nlink} hard links")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own_file(path: str | Path, mode: str) -> BinaryIO:
    """A binary file object through :func:`open_own`: ``rb``, ``r+b``, ``ab`` (created if missing) or ``wb`` (created or truncated)."""
    flags = {"rb": os.O_RDONLY, "r+b": os.O_RDWR, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "wb": os.O_WRONLY | os.O_CREAT}[mode]
    fd = open_own(path, flags, file_mode() if flags & os.O_CREAT else 0o666)
    if mode == "wb":
        os.ftruncate(fd, 0)  # only once the file is known to be ours
    return os.fdopen(fd, mode)


def own_folder(root: str | Path, *parts: str) -> Path:
    """``root/parts...``, each part created if missing and refused if it is a link or not a folder.

    ``root`` itself is the folder the user named and may be a link; only what lies below it is checked.
    """
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    for part in parts:
        path = path / part
        try:
            os.mkdir(path, folder_mode())
        except FileExistsError:
            pass
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise _refused(path, "is a link")
        if not stat.S_ISDIR(st.st_mode):
            raise _refused(path, "is not a folder")
    return path


def remove_own_files(folder: Path, keep: set[str], suffix: str) -> int:
    """Delete the regular files ending in ``suffix`` in ``folder`` (a real folder, not a link) whose names are not in ``keep``.

    The folder is opened once without following links and every name is removed relative to it,
    so a link swapped in meanwhile cannot turn the cleanup onto another folder. Links and folders
    inside are left alone. Returns how many files were removed.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | CLOEXEC)
    except OSError as e:
        if e.errno in _LINK_ERRNOS | {errno.ENOTDIR}:
            raise _refused(folder, "is a link or not a folder") from None
        raise
    removed = 0
    try:
        for name in os.listdir(fd):
            if name in keep or not name.endswith(suffix):
                continue
            try:
                if stat.S_ISREG(os.lstat(name, dir_fd=fd).st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed += 1
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed


# --------------------------------------------------------------------------- one writer at a time


def holder_line() -> str:
    """Who holds a lock, as written into its file: pid, host and command line."""
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)) or "python"
    return f"{os.getpid()}\n{socket.gethostname()}\n{cmd[:300]}\n"


class FolderLock:
    """An exclusive ``flock`` on the file ``path`` while held; a second holder is refused at once, naming the first.

    The kernel drops the lock when the process dies, so a SIGKILL leaves nothing stale (the file
    may stay, unlocked: it is only a name). The file is opened without following links, so a planted
    link cannot make the lock truncate another file. ``what`` names the holder in the refusal
    ("another scan", "another index writer") and ``fix`` says what to do.
    """

    def __init__(self, path: str | Path, *, what: str, fix: str, where: str | Path | None = None):
        self.path = Path(path)
        self.what, self.fix = what, fix
        self.where = where if where is not None else self.path.parent  # what the refusal names
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        while True:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lines = os.pread(fd, 512, 0).decode(errors="replace").splitlines()
                os.close(fd)
                pid = lines[0].strip() if lines and lines[0].strip() else "unknown"
                where = f" (on {lines[1].strip()}: {lines[2].strip()})" if len(lines) >= 3 else ""
                raise MarkguardError(f"{self.where}: {self.what} (pid {pid}) is writing here{where}; {self.fix}") from None
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the file was removed between our open and flock: lock the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line().encode(errors="replace"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock: a process that opened it meanwhile finds it gone once it locks, and retries."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
