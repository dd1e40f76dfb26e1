"""The results contract: a row's JSON form round-trips, and the one reader names the file and line of a bad row."""

from __future__ import annotations

import json

import pytest

from markguard.errors import MarkguardError
from markguard.infer.results import ROW_KEYS, Match, ScanRow, check_rows, read_results, read_summary

ROW = ScanRow("L1", "L1.jpg", "S1", "flag", 0.83, "acme", "acme-logo", [1, 2, 30, 40],
              [Match("acme", "acme-logo", 0.83, [1, 2, 30, 40], "logos", {"inliers": 34}, 0.9125),
               Match("globex", "g", 0.51, None)])


def test_row_round_trips_in_contract_order():
    d = ROW.to_json()
    assert tuple(d) == ROW_KEYS
    assert ScanRow.from_json(json.loads(json.dumps(d))) == ROW
    assert d["matches"][1] == {"brand": "globex", "mark": "g", "score": 0.51, "box": None}  # no index, evidence, probability
    assert d["matches"][0]["probability"] == 0.9125


def test_the_probability_round_trips_through_the_reader_and_is_checked(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ROW.to_json()) + "\n")
    (back,) = read_results(path)
    assert back.matches[0].probability == 0.9125 and back.matches[1].probability is None
    for bad in (1.5, "high", None):
        row = ROW.to_json()
        row["matches"][0]["probability"] = bad
        path.write_text(json.dumps(row) + "\n")
        if bad is None:  # null is "no combiner", as when the key is absent
            assert next(read_results(path)).matches[0].probability is None
            continue
        with pytest.raises(MarkguardError, match="probability"):
            next(read_results(path))


@pytest.mark.parametrize("bad, reason", [
    ({"foo": 1}, "missing key"),
    ([1, 2, 3], "not a JSON object"),
    (ROW.to_json() | {"status": "maybe"}, "status"),
    (ROW.to_json() | {"score": "high"}, "score"),
    (ROW.to_json() | {"box": [1, 2, 3]}, "box"),
    (ROW.to_json() | {"matches": [{"brand": "a"}]}, "mark"),
    (ROW.to_json() | {"extra": 1}, "unknown key"),
    (ROW.to_json() | {"matches": [{"brand": "a", "mark": "m", "score": 0.5, "box": None, "probability": -0.1}]}, "probability"),
])
def test_read_results_names_file_line_and_reason(tmp_path, bad, reason):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ROW.to_json()) + "\n\n" + json.dumps(bad) + "\n")
    rows = read_results(path, fix="run it again")
    assert next(rows) == ROW
    with pytest.raises(MarkguardError) as e:
        next(rows)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: not a valid result row") and reason in msg and msg.endswith("run it again")
    path.write_text(json.dumps(ROW.to_json()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(MarkguardError, match=":2: not a valid result row"):
        check_rows(path)  # merge's check: strict, a blank line is no row either


def test_missing_files_are_one_line(tmp_path):
    with pytest.raises(MarkguardError, match="results.jsonl: not found; fix"):
        list(read_results(tmp_path / "results.jsonl", fix="fix"))
    with pytest.raises(MarkguardError, match="summary.json: not found"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[1]")
    with pytest.raises(MarkguardError, match="expected a JSON object"):
        read_summary(tmp_path)
