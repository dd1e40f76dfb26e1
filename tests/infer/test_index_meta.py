"""Index metadata from someone else: a field of the wrong type is one line naming it (found by benchmarks/bench_fuzz.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from markguard.errors import MarkguardError
from markguard.infer.index import META_FILE, MarkIndex
from markguard.infer.index_meta import check_index_meta, read_index_meta


@pytest.fixture()
def saved(tmp_path):
    v = np.eye(4, 8, dtype="float32")
    MarkIndex.build(v, [{"brand": f"b{i}", "mark": f"m{i}", "source": f"s{i}.png"} for i in range(4)],
                    fingerprint="f" * 16, kind="flat").save(tmp_path / "idx")
    return tmp_path / "idx"


@pytest.mark.parametrize("field,value,words", [("settings", ["x"], "index.json"), ("next_id", {"a": 1}, "index.json"),
                                               ("params", [1], "index.json"), ("dim", [8], "index.json"), ("kind", 3, "unknown index kind")])
def test_index_json_field_of_the_wrong_type(saved, field, value, words):
    meta = json.loads((saved / META_FILE).read_text())
    (saved / META_FILE).write_text(json.dumps(meta | {field: value}))
    with pytest.raises(MarkguardError, match=words):
        MarkIndex.load(saved)


def test_index_json_not_utf8(saved):
    (saved / META_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(MarkguardError, match="unreadable index metadata"):
        MarkIndex.load(saved)


@pytest.mark.parametrize("meta,words", [
    ([], "JSON object"),
    ({"brands": [1]}, "brands must be an object"),
    ({"brands": {"acme": 0.5}}, "brands['acme']: must be an object"),
    ({"brands": {"acme": {"threshold": "high"}}}, "threshold"),
    ({"brands": {"acme": {"threshold": float("nan")}}}, "threshold"),
    ({"brands": {"acme": {"authorized_sellers": "S1"}}}, "authorized_sellers"),
    ({"model": 3}, "model"),
])
def test_brands_meta_is_checked(meta, words):
    with pytest.raises(MarkguardError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_index_meta(meta, "markguard.json")


def test_brands_meta_not_utf8_and_good_meta(tmp_path):
    p = tmp_path / "markguard.json"
    p.write_bytes(b"\xc3(")
    with pytest.raises(MarkguardError, match="unreadable"):
        read_index_meta(p)
    good = {"model": None, "brands": {"acme": {"name": "Acme", "threshold": 0.5, "authorized_sellers": ["S1"], "aliases": ["ACME"]}}}
    p.write_text(json.dumps(good))
    assert read_index_meta(p) == good
    assert read_index_meta(tmp_path / "none.json") == {}
