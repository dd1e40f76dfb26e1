"""The results contract: a row's JSON form round-trips, and the one reader names the file and line of a bad row."""

from __future__ import annotations

import json

import pytest

from markguard.errors import MarkguardError
from markguard.infer.results import ROW_KEYS, Match, ScanRow, check_rows, read_results, read_summary

ROW = ScanRow("L1", "L1.jpg", "S1", "flag", 0.83, "acme", "acme-logo", [1, 2, 30, 40],
              [Match("acme", "acme-logo", 0.83, [1, 2, 30, 40], "logos", {"inliers": 34}),
               Match("globex", "g", 0.51, None)])


def test_row_round_trips_in_contract_order():
    d = ROW.to_json()
    assert tuple(d) == ROW_KEYS
    assert ScanRow.from_json(json.loads(json.dumps(d))) == ROW
    assert d["matches"][1] == {"brand": "globex", "mark": "g", "score": 0.51, "box": None}  # no index, no evidence


@pytest.mark.parametrize("bad, reason", [
    ({"foo": 1}, "missing key"),
    ([1, 2, 3], "not a JSON object"),
    (ROW.to_json() | {"status": "maybe"}, "status"),
    (ROW.to_json() | {"score": "high"}, "score"),
    (ROW.to_json() | {"box": [1, 2, 3]}, "box"),
    (ROW.to_json() | {"matches": [{"brand": "a"}]}, "mark"),
    (ROW.to_json() | {"extra": 1}, "unknown key"),
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
