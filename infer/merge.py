"""Merge: shard outputs (``scan --shard i/N``) joined into one scan output in the dump's global order.

Shard i holds the items at positions i, i+N, i+2N, … in position order, so the global order is a
round-robin over the shards: row j is row j // N of shard j % N. The rows are streamed, never
held; the result goes through a partial file and a rename, like a scan's.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from markguard.fsio import atomic_write_text, open_own_file
from markguard.errors import MarkguardError
from markguard.infer.results import PARQUET, RESULTS, STATE, SUMMARY, check_rows, parse_row
from markguard.infer.writer import require_pyarrow, write_parquet


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarkguardError(f"{path}: missing; is {path.parent} a finished scan output? (run or --resume its scan first)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise MarkguardError(f"{path}: unreadable ({e})") from None


def _shards(outs: list[Path]) -> list[tuple[Path, dict, dict]]:
    """(folder, state, summary) sorted by shard number, checked to be the N shards of one scan."""
    found = []
    for out in outs:
        if not (out / RESULTS).exists():
            raise MarkguardError(f"{out}: no {RESULTS}; the shard's scan is unfinished or this is not a scan output")
        state, summary = _read_json(out / STATE), _read_json(out / SUMMARY)
        if not state.get("shard"):
            raise MarkguardError(f"{out}: not a sharded scan (no --shard); nothing to merge")
        found.append((out, state, summary))
    n = found[0][1]["shard"][1]
    base = {k: v for k, v in found[0][1].items() if k != "shard"}
    for out, state, _ in found:
        if state["shard"][1] != n:
            raise MarkguardError(f"{out}: shard {state['shard'][0]}/{state['shard'][1]} is not one of {n} shards like {found[0][0]}")
        if {k: v for k, v in state.items() if k != "shard"} != base:
            raise MarkguardError(f"{out}: scanned another input or with other indexes than {found[0][0]}; merge only shards of one scan")
    numbers = sorted(s["shard"][0] for _, s, _ in found)
    if numbers != list(range(n)):
        missing = sorted(set(range(n)) - set(numbers))
        dup = sorted({x for x in numbers if numbers.count(x) > 1})
        raise MarkguardError(f"need each of the {n} shards exactly once; missing {missing or 'none'}, repeated {dup or 'none'}")
    return sorted(found, key=lambda f: f[1]["shard"][0])


def merge_outputs(outs: list[str | Path], out_dir: str | Path, *, formats: tuple[str, ...] = ("jsonl",)) -> dict:
    """Join the N shard outputs of one scan into ``out_dir``; returns the merged summary."""
    if "parquet" in formats:
        require_pyarrow()
    outs = [Path(o) for o in outs]
    if not outs:
        raise MarkguardError("give the shard output folders to merge")
    shards = _shards(outs)
    out_dir = Path(out_dir)
    if out_dir.resolve() in {o.resolve() for o in outs}:
        raise MarkguardError(f"{out_dir}: is one of the shard outputs; merge into a new folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MarkguardError(f"{out_dir}: folder is not empty; merge into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for o, _, _ in shards:
        check_rows(o / RESULTS)

    n = len(shards)
    files = [open(o / RESULTS, "rb") for o, _, _ in shards]
    partial = out_dir / (RESULTS + ".partial")
    counts: Counter = Counter()
    rows = 0
    try:
        with open_own_file(partial, "wb") as dst:
            while True:
                line = files[rows % n].readline()
                if not line:
                    break
                dst.write(line)
                counts[parse_row(line).status] += 1  # check_rows has vouched for every line
                rows += 1
            # shard j % N ran dry at row j: every shard must be dry by now, and the earlier ones one row longer at most
            for k, f in enumerate(files):
                if f.readline():
                    raise MarkguardError(f"{shards[k][0]}: has more rows than its place among {n} shards allows "
                                         f"(merged {rows}); the shards are not of one dump")
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        for f in files:
            f.close()
    results = out_dir / RESULTS
    os.replace(partial, results)

    summaries = [s for _, _, s in shards]
    first = summaries[0]
    stage = Counter()
    for s in summaries:
        stage.update(s.get("stage_seconds", {}))
    references = {}
    for s in summaries:
        for k, v in s.get("references", {}).items():
            references.setdefault(k, v)
    seconds = max(s.get("seconds", 0) for s in summaries)  # shards run side by side
    summary = {
        "input": first.get("input"),
        "results": str(results),
        "images": rows,
        "counts": {k: counts.get(k, 0) for k in ("flag", "review", "pass", "allowed", "error")},
        "seconds": seconds,
        "images_per_s": round(rows / seconds, 2) if seconds else None,
        "stage_seconds": {k: round(v, 3) for k, v in stage.items()},
        "model": first.get("model"),
        "indexes": first.get("indexes"),
        "policy": first.get("policy"),
        "options": first.get("options", {}) | {"shard": None},
        "versions": first.get("versions"),
        "references": references,
        "merged_from": [{"path": str(o.resolve()), "shard": st["shard"], "images": s.get("images")} for o, st, s in shards],
    }
    if "parquet" in formats:
        summary["parquet"] = str(write_parquet(results, out_dir / PARQUET))
    atomic_write_text(out_dir / STATE, json.dumps({k: v for k, v in shards[0][1].items()} | {"shard": None, "merged": True}, indent=2))
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    return summary
