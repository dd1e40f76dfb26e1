"""The scan's output folder: one scan at a time, a resume only of the same scan, and only rows that belong.

A scan holds an exclusive ``flock`` on ``OUT/.scan.lock`` for its lifetime; the kernel drops it when
the process dies, so a SIGKILL leaves nothing stale (the file may stay, unlocked: it is only a name). ``scan.json`` pins what decides the rows (the
input's content, each index's save, thresholds, region and evidence settings); a resume that differs
is refused, naming what changed. A resume keeps the partial file's rows only as far as they are the
input's rows in the input's order.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from markguard.errors import MarkguardError
from markguard.fsio import FolderLock, atomic_write_text, open_own_file, printable
from markguard.infer.results import PARQUET, PARTIAL, RESULTS, ROW_KEYS, STATE, SUMMARY, parse_row, read_summary
from markguard.infer.writer import write_parquet

LOCK = ".scan.lock"
PINS_VERSION = 2

# ScanOptions fields that change how fast rows come, not what they say; every other field is pinned,
# so a new option (an evidence setting, say) is pinned without anyone remembering to.
OPERATIONAL = ("batch_size", "workers", "device", "precision", "engine", "address", "actors", "decode", "compile", "shard")

# the scan's options as the command line spells them (others: --KEY with dashes); k and max_matches have no option
OPTION_NAMES = {"flag": "--flag-threshold", "review": "--review-threshold", "k": "the search's k", "max_matches": "the matches kept a row"}
# what a pinned key is called in a refusal
NAMES = {
    "input": "the input path",
    "input_digest": "the input's content (the file, folder listing or shard list changed since the scan started)",
    "shard": "--shard",
    "indexes": "the indexes (paths, the model that built them, or a save since: `index add`/`remove`/`build`)",
    "policy": "the thresholds and policy (--flag-threshold/--review-threshold, the model card's calibration, brands.yaml)",
    "regions": "the region mode (--regions or the model card's)",
}


# --------------------------------------------------------------------------- lock


class OutputLock(FolderLock):
    """An exclusive lock on ``out_dir`` held while the object is open; refused at once if another process holds it."""

    def __init__(self, out_dir: Path):
        super().__init__(out_dir / LOCK, what="another scan", fix="wait for it to end or choose another -o folder")


def holds_output_folder(scan: Callable) -> Callable:
    """Run ``scan(source, index_paths, out_dir, ...)`` holding the folder's lock.

    A failure before any row was written leaves the folder as it was (no ``scan.json`` stub that
    would block a plain rerun); a full disk is one line naming the file and saying ``--resume``
    continues.
    """

    @functools.wraps(scan)
    def run(source, index_paths, out_dir, *args, **kwargs):
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise MarkguardError(f"{out_dir}: is a file; -o names the output folder")
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(out_dir)
        lock.acquire()
        remove = False
        try:
            return scan(source, index_paths, out_dir, *args, **kwargs)
        except BaseException as e:
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
            where = _writing(out_dir, e) if full else None
            remove = _discard_stub(out_dir, created)
            if full:
                raise MarkguardError(f"{where}: no space left on the device; free some and rerun with "
                                     f"--resume, which keeps the rows already written") from None
            raise
        finally:
            lock.release()
            if remove:
                try:
                    out_dir.rmdir()
                except OSError:
                    pass  # someone put something there meanwhile: leave it

    return run


def _writing(out_dir: Path, e: OSError) -> Path:
    if e.filename:
        return Path(e.filename)
    for name in (PARTIAL, RESULTS):  # summary.json and parquet come after the rows
        if (out_dir / name).exists():
            return out_dir / (name if name == PARTIAL else SUMMARY)
    return out_dir


def _discard_stub(out_dir: Path, created: bool) -> bool:
    """Remove ``scan.json`` and an empty partial file left by a scan that failed before its first row.

    Returns True when the folder was made by this scan and now holds nothing but the lock.
    """
    partial = out_dir / PARTIAL
    if (out_dir / RESULTS).exists() or partial.is_symlink() or (partial.exists() and partial.lstat().st_size > 0):
        return False
    partial.unlink(missing_ok=True)
    (out_dir / STATE).unlink(missing_ok=True)
    return created and all(p.name == LOCK for p in out_dir.iterdir())


# --------------------------------------------------------------------------- pins


def input_digest(source) -> dict:
    """What identifies the input's content: a manifest's size, mtime and sha256; the photos a folder's reader
    reads (so a .DS_Store, a text file or this scan's own output folder inside it change nothing); the shards' list."""
    from markguard.datasets.listings import _resolve_dump, _walk

    kind, target = _resolve_dump(source)
    h = hashlib.sha256()
    if kind == "manifest":
        st = target.stat()
        with open(target, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return {"kind": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
    if kind == "dir":
        entries = [(rel, p) for rel, p, _ in _walk(target)]  # the reader's own walk: its rows, in its order
    else:
        entries = [(printable(Path(p).resolve()), Path(p)) for p in target]
    for name, p in entries:
        try:
            st = p.lstat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}\0missing\n".encode())
    return {"kind": kind, "files": len(entries), "sha256": h.hexdigest()}


def index_save_id(index, path: Path) -> str:
    """Which save of an index folder this is: the id the save recorded, else the hash of its metadata file."""
    from markguard.infer.index import META_FILE

    if getattr(index, "save_id", None):
        return index.save_id
    try:
        return hashlib.sha256((Path(path) / META_FILE).read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def pins(source, searchers, policy, opts) -> dict:
    """``scan.json``: everything that decides what the rows say; a resume must find the same."""
    from markguard.infer.plan import region_mode

    options = {k: v for k, v in dataclasses.asdict(opts).items() if k not in OPERATIONAL and k != "regions"}
    return {
        "version": PINS_VERSION,
        "input": str(Path(source).resolve()),
        "input_digest": input_digest(source),
        "shard": list(opts.shard) if opts.shard else None,
        "indexes": [{"path": str(s.path.resolve()), "fingerprint": s.card.fingerprint, "save": index_save_id(s.index, s.path)}
                    for s in searchers],
        "regions": [region_mode(s, opts).label for s in searchers],
        "policy": {k: v for k, v in policy.to_json().items() if k != "sources"},
        "options": options,
    }


def differences(previous: dict, state: dict) -> list[str]:
    """The pinned things that differ, as a reader would name them."""
    out = []
    for key in dict.fromkeys([*state, *previous]):
        if key == "version" or previous.get(key) == state.get(key):
            continue
        if key == "options":
            old, new = previous.get(key) or {}, state[key]
            out += [f"{OPTION_NAMES.get(k, '--' + k.replace('_', '-'))} ({old.get(k)} then, {new.get(k)} now)" for k in dict.fromkeys([*new, *old])
                    if old.get(k) != new.get(k)]
        elif key == "indexes":
            out.append(_index_difference(previous.get(key) or [], state[key]))
        else:
            out.append(NAMES.get(key, key))
    return out


def _index_difference(old: list[dict], new: list[dict]) -> str:
    if [i.get("path") for i in old] != [i["path"] for i in new]:
        return "the indexes given with -i"
    for o, n in zip(old, new):
        if o.get("fingerprint") != n["fingerprint"]:
            return f"the model of index {n['path']} (fingerprint {o.get('fingerprint')} then, {n['fingerprint']} now)"
        if o.get("save") != n["save"]:
            return f"index {n['path']} (saved again since: `index add`, `remove` or `build`)"
    return NAMES["indexes"]


# --------------------------------------------------------------------------- rows kept


def _row_key(line: bytes) -> tuple[str, str] | None:
    """(listing_id, image) of a complete results row, or None for a torn line or anything that is not a row."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = parse_row(line)
    except ValueError:  # not JSON, not UTF-8, or not a row
        return None
    if tuple(json.loads(line)) != ROW_KEYS:
        return None
    return row.listing_id, row.image


def keep_matching_rows(path: Path, items: Iterable) -> int:
    """Truncate ``path`` at the first line that is not the input's next row; return the rows kept.

    A foreign, duplicated or reordered row, a line that is valid JSON but no row, and a torn last
    line all end what is kept: from there the input is scanned again.
    """
    if not path.exists():
        return 0
    good_bytes = rows = 0
    expected = iter(items)
    with open_own_file(path, "rb") as f:  # a planted link is refused, never read or cut
        for line in f:
            key = _row_key(line)
            want = next(expected, None)
            if key is None or want is None or key != tuple(want.key):
                break
            good_bytes += len(line)
            rows += 1
    with open_own_file(path, "r+b") as f:
        f.truncate(good_bytes)
    return rows


# --------------------------------------------------------------------------- the folder


def open_output(out_dir: Path, state: dict, *, resume: bool, formats: tuple[str, ...], items: Callable[[], Iterable]) -> dict | None:
    """Check ``out_dir`` against ``state`` and write ``scan.json``; returns the summary of a finished scan, else None.

    ``items()`` is the input in scan order, for checking the rows a resume keeps.
    """
    state_path = out_dir / STATE
    partial, results = out_dir / PARTIAL, out_dir / RESULTS
    has_rows = results.exists() or partial.is_symlink() or (partial.exists() and partial.lstat().st_size > 0)
    if state_path.exists() and has_rows:
        try:
            previous = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        changed = differences(previous if isinstance(previous, dict) else {}, state)
        if changed:
            verb = "cannot resume" if resume else "holds another scan"
            raise MarkguardError(f"{out_dir}: {verb}, changed since its scan started: {'; '.join(changed)}; "
                                 f"scan into a new -o folder (or delete this one to start over)")
        if results.exists() and (out_dir / SUMMARY).exists():
            summary = read_summary(out_dir)
            if "parquet" in formats and not (out_dir / PARQUET).exists():
                summary["parquet"] = str(write_parquet(results, out_dir / PARQUET))
                atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
            summary["note"] = "already finished; nothing to do"
            return summary
        if os.path.lexists(partial) and not resume:
            raise MarkguardError(f"{out_dir}: an unfinished scan is here; pass --resume to continue it, or delete the folder to start over")
        keep_matching_rows(partial if os.path.lexists(partial) else results, items())
    elif any(p.name != LOCK for p in out_dir.iterdir()) and not _is_stub(out_dir):
        raise MarkguardError(f"{out_dir}: folder is not empty and holds no markguard scan; choose a new -o folder")
    else:  # an empty folder, or the stub of a scan that wrote no row: start afresh
        partial.unlink(missing_ok=True)
    atomic_write_text(state_path, json.dumps(state, indent=2))
    return None


def _is_stub(out_dir: Path) -> bool:
    return {p.name for p in out_dir.iterdir()} <= {LOCK, STATE, PARTIAL}
