"""Fuzzing the readers that face untrusted bytes, by property-based generation (hypothesis), for a set time each.

Targets: listing manifests (CSV, JSONL, parquet), tar shards, image sniffing and decoding, model
cards, index metadata (``index.json``) and the index's ``markguard.json``. Inputs are random bytes,
random structured values, and mutations (byte flips, insertions, truncation) of a valid seed file.
The property: a reader returns, or raises a MarkguardError (DecodeError included); anything else is
a crash. An input that gives a new outcome (a new error message shape) is kept in the corpus, which
``tests/test_fuzz_corpus.py`` replays as regular fast tests.

    python benchmarks/bench_fuzz.py --seconds 60                  # each target 60 s
    python benchmarks/bench_fuzz.py --seconds 60 --corpus tests/fuzz_corpus   # and refresh the kept cases
    python benchmarks/bench_fuzz.py --quick                       # 2 s a target, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from markguard.errors import MarkguardError

# ---------------------------------------------------------------------------------------- seeds


def _jpeg(size=(24, 16), fmt="JPEG", mode="RGB") -> bytes:
    from PIL import Image

    img = Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 128)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"listing_id": ["L1", "L2", "L3"], "image_path": ["a.jpg", "b.jpg", "../c.jpg"],
                             "seller_id": ["S1", None, "S3"]}), buf)
    return buf.getvalue()


def seeds() -> dict[str, list[bytes]]:
    card = json.loads((Path(__file__).resolve().parents[1] / "markguard" / "weights" / "model_card.json").read_text())
    card["training"] = {}
    return {
        "manifest_csv": [b"listing_id,image_path,seller_id,title\nL1,a.jpg,S1,shoe\nL2,\"b,1.jpg\",,\"a \"\"quoted\"\" title\"\n"],
        "manifest_jsonl": [b'{"listing_id": "L1", "image_path": "a.jpg"}\n{"listing_id": 2, "image_path": "b.jpg", "seller_id": null}\n'],
        "manifest_parquet": [_parquet()],
        "tar": [_tar({"k1.jpg": _jpeg(), "k1.json": b'{"listing_id": "L1", "seller_id": "S1"}', "k2.png": _jpeg(fmt="PNG")})],
        "image": [_jpeg(), _jpeg(fmt="PNG"), _jpeg(fmt="WEBP"), _jpeg(fmt="GIF", mode="L"), _jpeg(fmt="TIFF"), _jpeg(fmt="BMP"),
                  ],
        "svg": [b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5" fill="#f00"/></svg>',
                b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M12 2L2 22h20z"/>'
                b'<text x="1" y="20">Acme</text></svg>'],
        "model_card": [json.dumps(card).encode()],
        "index_meta": [],  # filled by the target from a real saved index
        "brands_meta": [json.dumps({"model": None, "brands": {"acme": {"threshold": 0.5, "authorized_sellers": ["S1"]}}}).encode()],
    }


# ---------------------------------------------------------------------------------------- strategies

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def mutate(seed: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """Byte edits of a valid file: (position, kind, byte) with kind 0 flip, 1 insert, 2 delete; then an optional cut."""
    b = bytearray(seed)
    for pos, kind, byte in edits:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] ^= byte or 1
        elif kind == 1:
            b.insert(pos, byte)
        else:
            del b[pos]
    if cut is not None and b:
        del b[cut % len(b):]
    return bytes(b)


def byte_inputs(seed_list: list[bytes]) -> st.SearchStrategy[bytes]:
    edits = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 2), st.integers(0, 255)), max_size=12)
    return st.one_of(st.binary(max_size=2048), st.builds(mutate, st.sampled_from(seed_list), edits, st.none() | st.integers(0, 2**20)))


def json_field_inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    """A valid JSON document with one to three fields replaced by random JSON values (or removed)."""
    doc = json.loads(seed)
    keys = sorted(doc)

    def build(changes):
        d = dict(doc)
        for k, v in changes:
            if v is _REMOVE:
                d.pop(k, None)
            else:
                d[k] = v
        return json.dumps(d, allow_nan=True).encode()

    return st.builds(build, st.lists(st.tuples(st.sampled_from(keys), JSON | st.just(_REMOVE)), min_size=1, max_size=3))


_REMOVE = object()


def text_rows(columns: list[str], fmt: str) -> st.SearchStrategy[bytes]:
    """Manifests made of random text cells (quotes, commas, newlines, NULs, long fields) under a valid header."""
    cell = st.text(st.characters(codec="utf-8"), max_size=40) | st.just("\x00") | st.just('"') | st.just("a" * 140_000)
    rows = st.lists(st.lists(cell, min_size=0, max_size=len(columns) + 2), max_size=6)

    def build(rs):
        if fmt == "csv":
            import csv

            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(columns)
            w.writerows(rs)
            return buf.getvalue().encode("utf-8", errors="surrogatepass")
        return "\n".join(json.dumps(dict(zip(columns, r))) for r in rs).encode("utf-8", errors="surrogatepass")

    return st.builds(build, rows)


# ---------------------------------------------------------------------------------------- targets


def _dump(suffix: str) -> Callable[[bytes, Path], str | None]:
    def run(data: bytes, work: Path) -> str | None:
        from markguard.datasets.listings import count_dump, open_dump

        path = work / f"dump{suffix}"
        path.write_bytes(data)
        errors = []
        for item in open_dump(path):
            if item.error is None and item.data is not None:
                item.read_bytes()
            if item.error is not None:
                errors.append(item.error)
        count_dump(path)
        return f"error row: {_shape(errors[0])}" if errors else None  # read, with one or more rows refused
    return run


def _image(data: bytes, work: Path) -> None:
    from markguard.datasets.decode import decode_image, probe_jpeg

    probe_jpeg(data)
    decode_image(data, target_size=32, max_pixels=4_000_000)


def _svg(data: bytes, work: Path) -> None:
    from markguard.datasets.decode import load_mark

    path = work / "mark.svg"
    path.write_bytes(data)
    load_mark(path, size=32)


def _card(data: bytes, work: Path) -> None:
    from markguard.checkpoint import load_card

    (work / "model_card.json").write_bytes(data)
    load_card(work / "model_card.json")


class _Index:
    """A small saved index, copied for each input so a mutation never leaks into the next."""

    path: Path | None = None

    @classmethod
    def saved(cls, work_root: Path) -> Path:
        if cls.path is None:
            import numpy as np

            from markguard.infer.index import MarkIndex

            rng = np.random.default_rng(0)
            v = rng.standard_normal((20, 8)).astype("float32")
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            idx = MarkIndex.build(v, [{"brand": f"b{i % 4}", "mark": f"m{i}", "source": f"s{i}.png"} for i in range(20)],
                                  fingerprint="f" * 16, kind="flat")
            cls.path = work_root / "index-seed"
            idx.save(cls.path)
        return cls.path


def _index_meta(data: bytes, work: Path) -> None:
    from markguard.infer.index import META_FILE, MarkIndex

    dst = work / "index"
    shutil.copytree(_Index.saved(work.parent), dst)
    (dst / META_FILE).write_bytes(data)
    idx = MarkIndex.load(dst)
    import numpy as np

    idx.search(np.eye(1, idx.dim, dtype="float32"), 3)


def _brands_meta(data: bytes, work: Path) -> None:
    """markguard.json as an index load reads it from its save, then as a scan uses it (the brands' thresholds, sellers)."""
    from markguard.infer.decide import resolve_policy
    from markguard.infer.index.store import _json_of
    from markguard.infer.index_meta import check_index_meta

    where = work / "markguard.json"
    meta = check_index_meta(_json_of(io.BytesIO(data), where), where)
    resolve_policy({"flag": 0.6, "review": 0.5, "per_brand": {}}, meta.get("brands", {}))


def targets(seed: dict[str, list[bytes]], work_root: Path) -> dict[str, tuple[Callable, st.SearchStrategy[bytes]]]:
    from markguard.infer.index import META_FILE

    index_json = (_Index.saved(work_root) / META_FILE).read_bytes()
    return {
        "manifest_csv": (_dump(".csv"), st.one_of(byte_inputs(seed["manifest_csv"]),
                                                  text_rows(["listing_id", "image_path", "seller_id"], "csv"))),
        "manifest_jsonl": (_dump(".jsonl"), st.one_of(byte_inputs(seed["manifest_jsonl"]),
                                                      text_rows(["listing_id", "image_path", "seller_id"], "jsonl"))),
        "manifest_parquet": (_dump(".parquet"), byte_inputs(seed["manifest_parquet"])),
        "tar": (_dump(".tar"), byte_inputs(seed["tar"])),
        "image": (_image, byte_inputs(seed["image"])),
        "svg_mark": (_svg, byte_inputs(seed["svg"])),
        "model_card": (_card, st.one_of(byte_inputs(seed["model_card"]), json_field_inputs(seed["model_card"][0]))),
        "index_meta": (_index_meta, st.one_of(byte_inputs([index_json]), json_field_inputs(index_json))),
        "brands_meta": (_brands_meta, st.one_of(byte_inputs(seed["brands_meta"]), json_field_inputs(seed["brands_meta"][0]),
                                                st.builds(lambda v: json.dumps({"brands": v}).encode(), JSON))),
    }


# ---------------------------------------------------------------------------------------- running


def outcome(fn: Callable[[bytes, Path], None], data: bytes, work: Path) -> tuple[str, str | None]:
    """("ok" | "error_rows" | "refused" | "crash", signature): a refusal is a MarkguardError, an error row a row
    refused with its reason; anything else escaping is a crash."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        note = fn(data, work)
        return ("error_rows", note) if note else ("ok", None)
    except MarkguardError as e:
        return "refused", f"{type(e).__name__}: {_shape(str(e))}"
    except Exception as e:  # the property under test: nothing but MarkguardError may escape
        return "crash", f"{type(e).__name__}: {str(e)[:200]} @ {traceback.extract_tb(e.__traceback__)[-1].name}"


def _shape(msg: str) -> str:
    """An error message with paths, numbers and quoted values blanked: one shape per kind of refusal."""
    msg = re.sub(r"/[^\s:;,)]+", "PATH", msg)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", msg)
    msg = re.sub(r"\d+", "N", msg)
    return msg[:120]


def fuzz(name: str, fn, strategy, seconds: float, work_root: Path, corpus: Path | None, keep: int = 12) -> dict:
    counts: Counter = Counter()
    shapes: set[str] = set()
    crashes: list[dict] = []
    kept = 0
    deadline = time.monotonic() + seconds
    work = work_root / name

    @settings(max_examples=100, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(data):
        nonlocal kept
        if time.monotonic() > deadline:
            return
        kind, sig = outcome(fn, data, work)
        counts[kind] += 1
        if kind == "crash" and len(crashes) < 20:
            crashes.append({"signature": sig, "input_sha256": hashlib.sha256(data).hexdigest()[:16]})
        new = sig is not None and sig not in shapes
        if sig is not None:
            shapes.add(sig)
        if corpus is not None and (kind == "crash" or (new and kept < keep)) and len(data) <= 16_384:
            d = corpus / name
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)
            kept += kind != "crash"

    t0 = time.monotonic()
    while time.monotonic() < deadline:
        one()
    return {"target": name, "seconds": round(time.monotonic() - t0, 1), "examples": sum(counts.values()),
            "ok": counts["ok"], "error_rows": counts["error_rows"], "refused": counts["refused"], "crashes": counts["crash"],
            "outcome_shapes": len(shapes),
            "crash_signatures": sorted({c["signature"] for c in crashes})}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="time per target")
    ap.add_argument("--only", help="comma-separated targets")
    ap.add_argument("--corpus", type=Path, help="folder to keep one input per new outcome in (and every crash)")
    ap.add_argument("--quick", action="store_true", help="2 s a target, for the test suite")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds = 2.0
    import warnings

    warnings.simplefilter("ignore")  # Pillow warns on every damaged TIFF/EXIF it still reads; the outcome is what counts
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/bench_fuzz.py", *(argv if argv is not None else sys.argv[1:])])}
    from bench_scan import machine

    result["machine"] = machine()
    # imported before any clock starts: the first input of a target must not pay for torch's import
    import markguard.checkpoint  # noqa: F401
    import markguard.datasets.decode  # noqa: F401
    import markguard.datasets.listings  # noqa: F401
    import markguard.infer.index  # noqa: F401
    import markguard.infer.scan  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        root = Path(tmp)
        table = targets(seeds(), root)
        names = args.only.split(",") if args.only else list(table)
        result["targets"] = []
        for name in names:
            fn, strategy = table[name]
            outcome(fn, seeds().get(name, [b"{}"])[0] if seeds().get(name) else b"{}", root / "warm")  # warm the target's own imports
            r = fuzz(name, fn, strategy, args.seconds, root, args.corpus)
            result["targets"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
