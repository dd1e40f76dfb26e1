"""Write: results.jsonl rows in input order, appended through a partial file that a resumed scan continues.

Rows go to ``results.jsonl.partial`` (flushed each batch, fsynced every few seconds). A resume keeps
the rows that match the input (``outdir.keep_matching_rows`` cuts a torn last line and anything after
a mismatch) and skips that many inputs; a finished scan renames
the partial file to ``results.jsonl``. Every input therefore appears exactly once.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

from markguard.errors import MarkguardError
from markguard.fsio import open_own_file, printable
from markguard.infer.results import PARTIAL, RESULTS, read_results


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open_own_file(path, "rb") as f:
        return sum(1 for _ in f)


def _line(row: dict) -> bytes:
    """One results.jsonl line; a string that is not text (a name that is not UTF-8, a lone surrogate from a
    manifest's JSON) is written with \\xNN or \\uNNNN escapes rather than stopping the writer."""
    try:
        return json.dumps(row, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(_text_only(row), ensure_ascii=False).encode() + b"\n"


def _text_only(value):
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {k: _text_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_only(v) for v in value]
    return value


class ResultsWriter:
    def __init__(self, out_dir: Path, *, resume: bool, fsync_every_s: float = 2.0):
        self.out_dir = out_dir
        self.path = out_dir / PARTIAL
        final = out_dir / RESULTS
        if resume and final.exists() and not self.path.exists():
            # killed between the rename and summary.json: the finished rows continue as the partial file
            os.replace(final, self.path)
        # open_output has already cut the file after the last row that matches the input (outdir.keep_matching_rows)
        self.rows = _lines(self.path) if resume else 0
        if not resume:
            self.path.unlink(missing_ok=True)
        self.f = open_own_file(self.path, "ab")  # never through a link planted in a shared output folder
        self.fsync_every_s = fsync_every_s
        self._last_sync = time.monotonic()

    def write(self, rows: list[dict]) -> None:
        self.f.write(b"".join(_line(r) for r in rows))
        self.f.flush()
        self.rows += len(rows)
        if time.monotonic() - self._last_sync > self.fsync_every_s:
            os.fsync(self.f.fileno())
            self._last_sync = time.monotonic()

    def finish(self) -> Path:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        final = self.out_dir / RESULTS
        os.replace(self.path, final)
        return final

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            self.f.close()


class BackgroundWriter:
    """A :class:`ResultsWriter` fed through a short queue from a thread, so encoding and writing overlap the model.

    A row counts as written only once its line is in the file; rows still queued when the process
    dies are simply scanned again by ``--resume``.
    """

    def __init__(self, writer: ResultsWriter, depth: int = 4):
        self.writer = writer
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.seconds = 0.0  # time spent writing, in the thread
        self.thread = threading.Thread(target=self._run, name="markguard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (rows := self.q.get()) is not None:
            if self.error is None:
                t = time.perf_counter()
                try:
                    self.writer.write(rows)
                except BaseException as e:  # handed to the main thread at its next call
                    self.error = e
                self.seconds += time.perf_counter() - t

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, rows: list[dict]) -> None:
        self._check()
        self.q.put(rows)

    def drain(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._check()

    def finish(self) -> Path:
        self.drain()
        return self.writer.finish()

    def close(self) -> None:
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        self.writer.close()


def parquet_schema():
    import pyarrow as pa

    box = pa.list_(pa.int32())
    # evidence is an open set of named signals: kept as its JSON text, as in results.jsonl
    match = pa.struct([("brand", pa.string()), ("mark", pa.string()), ("score", pa.float64()), ("box", box), ("index", pa.string()),
                       ("probability", pa.float64()), ("evidence", pa.string())])
    return pa.schema([("listing_id", pa.string()), ("image", pa.string()), ("seller_id", pa.string()), ("status", pa.string()),
                      ("score", pa.float64()), ("brand", pa.string()), ("mark", pa.string()), ("box", box),
                      ("matches", pa.list_(match)), ("error", pa.string())])


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MarkguardError("--format parquet needs pyarrow: pip install 'markguard[parquet]'") from None


def write_parquet(results: Path, out: Path, *, rows_per_group: int = 65_536) -> Path:
    """``results.jsonl`` → ``results.parquet`` (same rows, same order), streamed a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    tmp = out.with_name(out.name + ".partial")
    with open_own_file(tmp, "wb") as sink, pq.ParquetWriter(sink, schema) as pw:
        chunk = []
        for r in read_results(results):
            row = r.to_json()
            row["matches"] = [{**{k: m.get(k) for k in ("brand", "mark", "score", "box", "index", "probability")},
                               "evidence": None if m.get("evidence") is None else json.dumps(m["evidence"], ensure_ascii=False)}
                              for m in row["matches"]]
            chunk.append(row)
            if len(chunk) >= rows_per_group:
                pw.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            pw.write_table(pa.Table.from_pylist(chunk, schema=schema))
    os.replace(tmp, out)
    return out
