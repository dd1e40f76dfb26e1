"""Feedback: a rejected look-alike is lowered by a later scan while a confirmed match stays; the round is listed, undone,
and bad decisions are refused in one line; an interrupted feedback leaves the index as it was."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from markguard.errors import MarkguardError
from markguard.infer.build import build_index
from markguard.infer.feedback import (Decision, Rule, WithNegatives, apply_feedback, feedback_info, labels_csv,
                                      negative_bank, read_decisions, undo_feedback)
from markguard.infer.index import MarkIndex
from markguard.infer.scan import ScanOptions, run_scan
from test_scan import make_model, make_world, read_rows  # sibling module: pytest puts tests/infer on sys.path

pytest.importorskip("pyarrow", reason="the scan keeps its embeddings in parquet (pip install 'markguard[parquet]')")

OPTS = ScanOptions(batch_size=4, workers=1, device="cpu", verify=False, ocr=False, combiner=None)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_rule_lowers_a_region_closer_to_a_negative_than_to_its_reference():
    dim = 8
    e = np.eye(dim, dtype=np.float32)
    refs = unit([e[0], e[1]])
    index = MarkIndex.build(refs, [{"brand": "acme", "mark": "logo"}, {"brand": "globex", "mark": "logo"}], fingerprint="fp", kind="flat")
    lookalike = unit(e[0] + 0.9 * e[2])  # the rejected region: cos 0.74 to acme's reference
    bank = {("acme", "logo"): lookalike[None]}
    rule = Rule(margin=0.0, strength=1.0)
    wrapped = WithNegatives(index, bank, rule)
    queries = unit([lookalike, e[0] + 0.8 * e[2], e[0] + 0.05 * e[3], e[1] + 0.9 * e[2]])
    raw_s, raw_i = index.search(queries, 2)
    s, i = wrapped.search(queries, 2)
    assert (i == raw_i).all()
    for r in range(len(queries)):
        for c in range(2):
            if raw_i[r, c] == 0:  # acme: brute force of the rule
                neg = float(queries[r] @ lookalike)
                want = raw_s[r, c] - (neg - raw_s[r, c]) if neg > raw_s[r, c] else raw_s[r, c]
                assert s[r, c] == pytest.approx(want, abs=1e-5)
            else:  # globex has no negatives
                assert s[r, c] == raw_s[r, c]
    acme = lambda r: float(s[r][list(i[r]).index(0)])  # noqa: E731
    assert acme(0) < raw_s[0][list(raw_i[0]).index(0)] - 0.2  # the look-alike itself falls far
    assert acme(1) < raw_s[1][list(raw_i[1]).index(0)]  # so does its near twin
    assert acme(2) == raw_s[2][list(raw_i[2]).index(0)]  # a true copy of the reference is left alone


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    w = make_world(root / "world", listings=16, hostile=False, seed=5)
    probe = root / "probe"
    run_scan(w.dump, [w.index], probe, opts=OPTS, progress=False)
    scores = sorted(r["score"] for r in read_rows(probe))
    opts = replace(OPTS, flag=scores[len(scores) // 2], review=scores[len(scores) // 4])  # half the photos flag
    return w, opts


def scan(w, index, out, opts, keep=None) -> list[dict]:
    run_scan(w.dump, [index], out, opts=replace(opts, keep_embeddings=keep), progress=False)
    return read_rows(out)


def decisions_file(path: Path, rows: list[dict], choices: dict[str, str], model: str, index: Path, **extra) -> Path:
    lines = []
    for r in rows:
        if r["listing_id"] in choices:
            kind = choices[r["listing_id"]]
            d = Decision(r["listing_id"], r["brand"], r["mark"], kind, "2026-12-06T05:00:00Z", model, r["image"], r["box"],
                         other_brand="brand-x" if kind == "other" else None, status=r["status"], score=r["score"],
                         indexes=[{"path": str(index), "name": index.name, "save": "s"}])
            lines.append({**d.to_json(), **extra})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def copy_index(w, tmp: Path) -> Path:
    index = tmp / "index"
    build_index(w.gallery, index, model=w.model, device="cpu")
    return index


def pick(rows: list[dict]) -> tuple[dict, dict]:
    """A flagged row to reject and a flagged row of another mark to confirm."""
    flagged = [r for r in rows if r["status"] == "flag"]
    reject = flagged[0]
    confirm = next(r for r in flagged if (r["brand"], r["mark"]) != (reject["brand"], reject["mark"]))
    return reject, confirm


def test_feedback_lowers_the_rejected_match_keeps_the_confirmed_and_undoes(world, tmp_path):
    w, opts = world
    index = copy_index(w, tmp_path)
    before = scan(w, index, tmp_path / "before", opts, keep="fp16")
    reject, confirm = pick(before)
    fingerprint = MarkIndex.load(index).fingerprint
    dec = decisions_file(tmp_path / "decisions.jsonl", before, {reject["listing_id"]: "reject", confirm["listing_id"]: "confirm"},
                         fingerprint, index)
    saved = (index / "index.json").read_text()
    result = apply_feedback(dec, index, scan=tmp_path / "before")
    assert result["negatives"] == 1 and result["labels"] == 2 and result["regions_from"] == "stored embeddings"
    meta = MarkIndex.load(index).meta
    info = feedback_info(meta)
    assert [r["id"] for r in info["rounds"]] == [result["id"]]
    assert info["negatives_by_reference"] == {f"{reject['brand']}/{reject['mark']}": 1}
    assert labels_csv(meta).splitlines() == ["listing_id,brand", f"{reject['listing_id']},", f"{confirm['listing_id']},{confirm['brand']}"] \
        or sorted(labels_csv(meta).splitlines()[1:]) == sorted([f"{reject['listing_id']},", f"{confirm['listing_id']},{confirm['brand']}"])

    after = {r["listing_id"]: r for r in scan(w, index, tmp_path / "after", opts)}
    was = {r["listing_id"]: r for r in before}
    # the rejected look-alike: its reference's match falls (the region is its own negative), so the row is no longer flagged for it
    r_after = after[reject["listing_id"]]
    assert not (r_after["status"] == "flag" and (r_after["brand"], r_after["mark"]) == (reject["brand"], reject["mark"]))
    old = next(m["score"] for m in was[reject["listing_id"]]["matches"] if (m["brand"], m["mark"]) == (reject["brand"], reject["mark"]))
    new = [m["score"] for m in r_after["matches"] if (m["brand"], m["mark"]) == (reject["brand"], reject["mark"])]
    assert not new or new[0] < old - 0.01
    # the confirmed match stays as it was
    c_after = after[confirm["listing_id"]]
    assert (c_after["status"], c_after["brand"], c_after["mark"], c_after["score"]) == \
        (confirm["status"], confirm["brand"], confirm["mark"], confirm["score"])

    removed = undo_feedback(index, result["id"])
    assert removed == {"id": result["id"], "negatives": 1, "labels": 2}
    assert feedback_info(MarkIndex.load(index).meta)["rounds"] == []
    undone = scan(w, index, tmp_path / "undone", opts)
    assert [(r["listing_id"], r["status"], r["brand"], r["score"]) for r in undone] == \
        [(r["listing_id"], r["status"], r["brand"], r["score"]) for r in before]
    assert json.loads(saved)["save_id"] != json.loads((index / "index.json").read_text())["save_id"]


def test_regions_embedded_again_match_the_stored_ones(world, tmp_path):
    """Without stored embeddings the rejected region is embedded again from the photo: the same vector, up to float16."""
    w, opts = world
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ia, ib = copy_index(w, a), copy_index(w, b)
    rows = scan(w, ia, tmp_path / "scan", opts, keep="fp16")
    reject, _ = pick(rows)
    fp = MarkIndex.load(ia).fingerprint
    dec = decisions_file(tmp_path / "d.jsonl", rows, {reject["listing_id"]: "reject"}, fp, ia, input=str(w.dump))
    ra = apply_feedback(dec, ia, scan=tmp_path / "scan")
    rb = apply_feedback(dec, ib, dump=str(w.dump))
    assert (ra["regions_from"], rb["regions_from"]) == ("stored embeddings", "photos embedded again")
    na = negative_bank(MarkIndex.load(ia).meta, 32)[(reject["brand"], reject["mark"])]
    nb = negative_bank(MarkIndex.load(ib).meta, 32)[(reject["brand"], reject["mark"])]
    assert float((na * nb).sum()) == pytest.approx(1.0, abs=2e-3)


@pytest.fixture(scope="module")
def scanned(world, tmp_path_factory):
    w, opts = world
    tmp = tmp_path_factory.mktemp("feedback-bad")
    index = copy_index(w, tmp)
    rows = scan(w, index, tmp / "scan", opts, keep="fp16")
    return w, index, tmp / "scan", rows, MarkIndex.load(index).fingerprint


def test_unknown_listing_refused_with_its_id_or_skipped(scanned, tmp_path):
    w, index, out, rows, fp = scanned
    reject, confirm = pick(rows)
    dec = decisions_file(tmp_path / "d.jsonl", rows, {reject["listing_id"]: "reject", confirm["listing_id"]: "confirm"}, fp, index)
    lines = dec.read_text().splitlines()
    ghost = json.loads(lines[0]) | {"listing_id": "GHOST-1", "image": "ghost.jpg"}
    dec.write_text("\n".join([json.dumps(ghost), *lines, json.dumps(ghost | {"listing_id": "GHOST-2"})]) + "\n")
    with pytest.raises(MarkguardError, match=r"listing 'GHOST-1' \(and 1 more\) is not in the scan"):
        apply_feedback(dec, index, scan=out)
    assert feedback_info(MarkIndex.load(index).meta)["rounds"] == []
    result = apply_feedback(dec, index, scan=out, skip_unknown=True)
    assert result["skipped_unknown"] == 2 and result["labels"] == 2
    with pytest.raises(MarkguardError, match="already applied"):
        apply_feedback(dec, index, scan=out, skip_unknown=True)
    undo_feedback(index, result["id"])
    with pytest.raises(MarkguardError, match="no feedback round 'fb-nope'"):
        undo_feedback(index, "fb-nope")


def test_unknown_mark_another_model_or_index_refused(scanned, tmp_path):
    w, index, out, rows, fp = scanned
    reject, _ = pick(rows)
    one = {reject["listing_id"]: "reject"}
    bad_mark = decisions_file(tmp_path / "m.jsonl", [reject | {"mark": "no-such-mark"}], one, fp, index)
    with pytest.raises(MarkguardError, match="names mark .*/no-such-mark, which .* does not hold"):
        apply_feedback(bad_mark, index, scan=out)
    other_model = decisions_file(tmp_path / "o.jsonl", rows, one, "another-fingerprint", index)
    with pytest.raises(MarkguardError, match="by model another-fingerprint"):
        apply_feedback(other_model, index, scan=out)
    other_index = decisions_file(tmp_path / "i.jsonl", rows, one, fp, tmp_path / "somewhere" / "other-index")
    with pytest.raises(MarkguardError, match="made on a scan of index other-index"):
        apply_feedback(other_index, index, scan=out)
    bad_line = tmp_path / "b.jsonl"
    bad_line.write_text('{"format": "markguard-decisions/1", "listing_id": "x"}\n')
    with pytest.raises(MarkguardError, match=r"b.jsonl:1: not a decision \(missing brand, mark, decision, time, model\)"):
        read_decisions(bad_line)


def test_interrupted_feedback_leaves_the_index_as_it_was(scanned, tmp_path, monkeypatch):
    import markguard.infer.index.store as store

    w, index, out, rows, fp = scanned
    reject, _ = pick(rows)
    dec = decisions_file(tmp_path / "d.jsonl", rows, {reject["listing_id"]: "reject"}, fp, index)
    files = {p.name: p.read_bytes() for p in index.iterdir()}

    def killed(tmp, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "swap_in_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_feedback(dec, index, scan=out)
    assert {p.name: p.read_bytes() for p in index.iterdir()} == files
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".index.tmp")]


def test_cli_feedback_one_line_errors_and_info(scanned, tmp_path, capsys):
    from markguard.cli import main

    w, index, out, rows, fp = scanned
    reject, confirm = pick(rows)
    dec = decisions_file(tmp_path / "d.jsonl", rows, {reject["listing_id"]: "reject", confirm["listing_id"]: "other"}, fp, index)
    ghost = tmp_path / "g.jsonl"
    ghost.write_text(json.dumps(json.loads(dec.read_text().splitlines()[0]) | {"listing_id": "GHOST"}) + "\n")
    assert main(["feedback", str(ghost), "-i", str(index), "--scan", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'GHOST'" in err[0]
    truth = tmp_path / "truth.csv"
    assert main(["feedback", str(dec), "-i", str(index), "--scan", str(out), "--truth-out", str(truth)]) == 0
    rid = json.loads(capsys.readouterr().out)["id"]
    assert sorted(truth.read_text().splitlines()[1:]) == sorted([f"{reject['listing_id']},", f"{confirm['listing_id']},brand-x"])
    assert main(["index", "info", str(index)]) == 0
    info = json.loads(capsys.readouterr().out)["feedback"]
    assert [r["id"] for r in info["rounds"]] == [rid] and info["negatives"] == 2
    assert main(["feedback", "--undo", rid, "-i", str(index)]) == 0


def test_feedback_waits_for_no_other_writer(scanned, tmp_path):
    """Feedback is a read-modify-write of the index: it takes the writer lock `index add|remove` take, and is refused
    in one line while another process holds it."""
    import subprocess
    import sys

    w, index, out, rows, fp = scanned
    reject, _ = pick(rows)
    dec = decisions_file(tmp_path / "d.jsonl", rows, {reject["listing_id"]: "reject"}, fp, index)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom markguard.infer.index.store import index_writer\n"
                               f"with index_writer({str(index)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MarkguardError, match="another index writer"):
            apply_feedback(dec, index, scan=out)
    finally:
        holder.kill()
        holder.wait()
    assert feedback_info(MarkIndex.load(index).meta)["rounds"] == []
