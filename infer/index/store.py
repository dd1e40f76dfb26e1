"""The durable save: an index folder written whole and swapped in atomically (markguard/fsio.py), read back as one save.

``self`` in these functions is a MarkIndex; they live here so that the index class keeps to searching
and mutating, and the file format has one module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

import faiss
import numpy as np

from markguard.errors import MarkguardError
from markguard.fsio import (FolderChanged, FolderLock, excerpt, FolderSnapshot, file_mode, fsync_path, leftover_saves,
                            new_folder_beside, old_of, recover_folder, remove_entry, swap_in_folder)
from markguard.infer.index.backends import _BACKENDS, INDEX_FILE
from markguard.infer.index.kinds import REBUILD, IndexKind
from markguard.infer.index.records import _SCHEMA, _memory_db, _now

log = logging.getLogger("markguard.infer.index")

FORMAT_VERSION = 1
MARKS_FILE = "marks.sqlite"
META_FILE = "index.json"
APP_META = "markguard.json"  # what the application keeps with the index: the model that built it, the brands' settings
LOAD_ATTEMPTS = 20  # a load that a concurrent save keeps replacing tries again this many times


def _settings_from_json(kind: IndexKind, doc: dict):
    return kind.settings({k: v for k, v in doc.items() if k in {f.name for f in dataclasses.fields(kind.value)}})


def lock_path(path: Path) -> Path:
    """The writers' lock of an index folder: beside it, since a save replaces the folder itself."""
    return path.with_name(f".{path.name}.lock")


_held: dict[str, int] = {}  # lock files this process holds -> nesting depth
_held_guard = threading.Lock()


@contextlib.contextmanager
def index_writer(path: str | os.PathLike, *, create: bool = False) -> Iterator[None]:
    """Hold the index folder's exclusive writer lock for a whole read-modify-write (``index build|add|remove``).

    A second writer, in any process, is refused at once with one line naming the holder; without
    the lock, an ``index add`` would save the copy it loaded before a concurrent ``remove`` and undo
    it. Taken again by the same process (a save inside an ``add``), it nests. Once held, temporary
    folders left by a killed save are removed: no other writer can be using them. ``create`` makes
    the folder that will hold the index (a build, a save); otherwise a missing one is "no index here".
    """
    path = Path(os.path.abspath(path))
    key = str(lock_path(path))
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    if not path.parent.is_dir():
        if not create:
            raise MarkguardError(f"{path}: no index here; build one with `markguard index build`")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MarkguardError(f"{path}: cannot create its folder ({e.strerror}); choose another path") from None
    lock = FolderLock(key, what="another index writer", where=path,
                      fix="wait for that `markguard index build|add|remove` to end, then run this again")
    try:
        lock.acquire()
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
        raise MarkguardError(f"{path}: cannot write the lock file {Path(key).name} beside it ({e.strerror}); "
                             f"choose a folder you can write") from None
    with _held_guard:
        _held[key] = 1
    try:
        for stale in leftover_saves(path):
            log.info("%s: removing %s, left by a save that was killed", path, stale.name)
            remove_entry(stale)
        yield
    finally:
        with _held_guard:
            del _held[key]
        lock.release()


def writes_index(param: str):
    """Decorate a function that loads, changes and saves the index named by its argument ``param``: it runs
    holding :func:`index_writer` (``markguard feedback`` and its undo, as ``index add|remove``)."""
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with index_writer(sig.bind(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)
        return run
    return wrap


def save_index(self, path: str | os.PathLike) -> None:
    """Write the index folder atomically, ``meta`` included: a killed save leaves the previous index whole."""
    with index_writer(path, create=True):
        _save_index(self, Path(path))


def _save_index(self, path: Path) -> None:
    if path.exists() and not (path.is_dir() and ((path / META_FILE).exists() or not any(path.iterdir()))):
        raise MarkguardError(f"{path}: exists and is not a markguard index; choose another path")
    with self._lock:
        if self._backend.should_compact():
            log.info("compacting %s: %d tombstones", path, len(self._backend.tombstones()))
            self._backend.compact()
        tmp = new_folder_beside(path)
        try:
            files = self._backend.write(tmp)
            _write_db(self, tmp / MARKS_FILE)
            files.append(MARKS_FILE)
            if self.meta is not None:
                _write_text(tmp / APP_META, json.dumps(self.meta, indent=2) + "\n")
                files.append(APP_META)
            save_id = uuid.uuid4().hex
            header = {
                "format": FORMAT_VERSION,
                "save_id": save_id,
                "fingerprint": self.fingerprint,
                "dim": self.dim,
                "kind": self.kind.label,
                "factory": self._backend.factory,
                "settings": dataclasses.asdict(self._backend.settings),
                "params": {self._backend.param_name: self._backend.param} if self._backend.param_name else {},
                "count": len(self),
                "next_id": self._next_id,
                "recall_at_10": self._recall,
                "recall_target": self._recall_target,
                "saved": _now(),
                "sha256": {name: _sha256(tmp / name) for name in files},
            }
            _write_text(tmp / META_FILE, json.dumps(header, indent=2) + "\n")
            for name in files:
                os.chmod(tmp / name, file_mode())
                fsync_path(tmp / name)
            _carry_over(path, tmp, {*files, META_FILE})
            fsync_path(tmp)
            swap_in_folder(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._path, self.save_id = path, save_id

CALIBRATION_FILES = ("thresholds.json", "combiner.json")  # what `markguard calibrate` writes beside an index


def _carry_over(path: Path, tmp: Path, ours: set[str]) -> None:
    """Copy into the new save the files others keep in the index folder (``markguard calibrate``'s thresholds.json
    and combiner.json): the swap replaces the whole folder, and a save must not silently drop them.
    Only regular files at the top level; links and folders are left out (nothing is read through a link)."""
    if not path.is_dir():
        return
    for entry in os.scandir(path):
        # only the calibration files: an index's own metadata (markguard.json) left out of a save stays out
        if entry.name in ours or entry.name not in CALIBRATION_FILES or not entry.is_file(follow_symlinks=False):
            continue
        shutil.copy2(entry.path, tmp / entry.name, follow_symlinks=False)
        fsync_path(tmp / entry.name)


def _write_db(self, file: Path) -> None:
    with self._db:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(self._next_id),))
        self._db.execute("DELETE FROM tombstones")
        self._db.executemany("INSERT INTO tombstones VALUES (?)", [(int(i),) for i in self._backend.tombstones()])
    out = sqlite3.connect(file)
    try:
        self._db.backup(out)
    finally:
        out.close()


def load_index(cls, path: str | os.PathLike, *, expect_fingerprint: str | None = None):
    """Read an index folder, verifying checksums, counts and (if given) the model fingerprint.

    Every file comes from one save, even while another process saves the same folder (``index
    add`` during a scan's start): the folder is opened once, and read again if a save replaced it.
    """
    path = Path(path)
    for attempt in range(LOAD_ATTEMPTS):
        where = recover_folder(path, META_FILE)
        if not where.is_dir():
            if attempt + 1 < LOAD_ATTEMPTS and old_of(path).exists():  # between a save's two renames
                time.sleep(0.01)
                continue
            raise MarkguardError(f"{path}: no index here; build one with `markguard index build`")
        try:
            with FolderSnapshot(where) as snap:
                index = _read(cls, snap, where)
        except FolderChanged:
            time.sleep(0.002 * attempt)
            continue
        except FileNotFoundError:
            if attempt + 1 < LOAD_ATTEMPTS:  # the folder itself went between its check and its opening
                continue
            raise MarkguardError(f"{path}: no index here; build one with `markguard index build`") from None
        if expect_fingerprint is not None:
            index.require_fingerprint(expect_fingerprint)
        return index
    raise MarkguardError(f"{path}: replaced by another save {LOAD_ATTEMPTS} times while loading; "
                         f"wait for the `markguard index add/remove` running on it to finish")


def _read(cls, snap: FolderSnapshot, path: Path):
    meta_file = path / META_FILE
    try:
        with snap.open(META_FILE) as f:
            header = json.loads(f.read().decode("utf-8"))
        kind = IndexKind.named(header["kind"])
        fingerprint, dim, count = str(header["fingerprint"]), int(header["dim"]), int(header["count"])
        sums = dict(header["sha256"])
        settings = _settings_from_json(kind, header.get("settings") or {})
        header_next_id, params = int(header.get("next_id", 0)), dict(header.get("params") or {})
    except FileNotFoundError:
        raise MarkguardError(f"{meta_file}: missing, so {path} is not a complete index; {REBUILD}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # a field of the wrong type: the file is damaged
        raise MarkguardError(f"{meta_file}: unreadable index metadata ({excerpt(str(e).splitlines()[0] if str(e) else type(e).__name__, 120)}); "
                             f"{REBUILD}") from None
    if header.get("format") != FORMAT_VERSION:
        raise MarkguardError(f"{meta_file}: index format {header.get('format')} is not {FORMAT_VERSION}; {REBUILD}")
    for name in (INDEX_FILE, MARKS_FILE):
        sums.setdefault(name, None)  # a metadata file listing neither is itself damaged
    files: dict[str, BinaryIO] = {}
    try:
        for name, want in sums.items():
            if not isinstance(name, str) or "/" in name or name.startswith("."):
                raise MarkguardError(f"{meta_file}: lists {name!r}, not a file of an index; {REBUILD}")
            try:
                files[name] = snap.open(name)
            except (FileNotFoundError, IsADirectoryError):
                raise MarkguardError(f"{path / name}: missing from the index; restore it or {REBUILD}") from None
            if want is None or _sha256_of(files[name]) != want:
                raise MarkguardError(f"{path / name}: checksum mismatch (corrupted or truncated); restore it or {REBUILD}")
        app_meta = None
        if APP_META in files:
            app_meta = _json_of(files[APP_META], path / APP_META)
        elif APP_META not in sums:  # an index saved before the metadata moved inside the save
            try:
                with snap.open(APP_META) as f:
                    app_meta = _json_of(f, path / APP_META)
            except FileNotFoundError:
                pass
        db = _memory_db()
        try:
            # copied into memory: later add/remove must not touch the saved file, which a save replaces whole
            files[MARKS_FILE].seek(0)
            data = files[MARKS_FILE].read()
            if not data:
                raise sqlite3.DatabaseError("empty file")
            db.deserialize(data)
            db.executescript(_SCHEMA)
            n_marks = db.execute("SELECT COUNT(*) FROM marks").fetchone()[0]
            max_id = db.execute("SELECT COALESCE(MAX(id), -1) FROM marks").fetchone()[0]
            tomb = np.array([r[0] for r in db.execute("SELECT id FROM tombstones")], np.int64)
            row = db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        except (sqlite3.DatabaseError, MemoryError) as e:  # MemoryError: sqlite's answer to some garbage
            raise MarkguardError(f"{path / MARKS_FILE}: unreadable metadata ({e}); {REBUILD}") from None

        def read_faiss(name: str):
            if name not in files:
                raise MarkguardError(f"{path / name}: missing from the index; restore it or {REBUILD}")
            files[name].seek(0)
            return faiss.read_index(faiss.PyCallbackIOReader(files[name].read))

        try:
            backend = _BACKENDS[kind].read(read_faiss, settings, tomb)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise MarkguardError(f"{path / INDEX_FILE}: FAISS cannot read it ({first}); {REBUILD}") from None
    finally:
        for f in files.values():
            f.close()
    if backend.index.d != dim:
        raise MarkguardError(f"{path / INDEX_FILE}: holds {backend.index.d}-dim vectors but {META_FILE} says {dim}; {REBUILD}")
    if not backend.live == n_marks == count:
        raise MarkguardError(f"{path}: {INDEX_FILE} holds {backend.live:,} vectors, {MARKS_FILE} {n_marks:,} "
                             f"marks, {META_FILE} says {count:,}; the files are from different saves; {REBUILD}")
    next_id = max(int(row[0]) if row else 0, header_next_id, max_id + 1)
    index = cls(fingerprint=fingerprint, dim=dim, backend=backend, db=db, next_id=next_id,
                recall=header.get("recall_at_10"), recall_target=header.get("recall_target"), path=path,
                meta=app_meta)
    index.save_id = str(header.get("save_id") or header.get("saved") or "")
    param = params.get(backend.param_name) if backend.param_name else None
    if param is not None:
        try:
            backend.set_param(param)
        except (TypeError, ValueError):
            raise MarkguardError(f"{meta_file}: search parameter {backend.param_name}={param!r} is not a number; {REBUILD}") from None
    return index


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return _sha256_of(f)


def _write_text(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)


def _sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _json_of(f: BinaryIO, file: Path) -> dict:
    f.seek(0)
    try:
        doc = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MarkguardError(f"{file}: not valid JSON ({e}); {REBUILD}") from None
    except (RecursionError, ValueError) as e:  # nested too deep; a number of more digits than Python converts
        raise MarkguardError(f"{file}: not index metadata ({type(e).__name__}); {REBUILD}") from None
    if not isinstance(doc, dict):
        raise MarkguardError(f"{file}: holds a {type(doc).__name__}, not an object; {REBUILD}")
    return doc
