"""Flood guard: a reference flagging far more photos than its share (or its history) has its later flags held as review,
deterministically in input order (a resumed scan holds the same rows), and summary.json names it with its counts."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from markguard.errors import MarkguardError
from markguard.infer.flood import FloodGuard, FloodSettings, read_history
from markguard.infer.results import Match, ScanRow


def rows(n: int, hub_every: int = 1) -> list[ScanRow]:
    """n rows: every ``hub_every``-th flagged for the hub, every 7th for a normal brand, the rest pass."""
    out = []
    for i in range(n):
        if i % hub_every == 0:
            m = Match("hub", "circle", 0.97, [0, 0, 10, 10])
            out.append(ScanRow(f"L{i}", f"L{i}.jpg", None, "flag", 0.97, "hub", "circle", [0, 0, 10, 10], [m]))
        elif i % 7 == 0:
            m = Match("acme", "logo", 0.96, [1, 1, 9, 9])
            out.append(ScanRow(f"L{i}", f"L{i}.jpg", None, "flag", 0.96, "acme", "logo", [1, 1, 9, 9], [m]))
        else:
            out.append(ScanRow(f"L{i}", f"L{i}.jpg", None, "pass", 0.3, None, None, None, []))
    return out


def brute_force(rs: list[ScanRow], share: float, min_flags: int) -> list[str]:
    counts, out = {}, []
    for i, r in enumerate(rs, 1):
        if r.status != "flag":
            out.append(r.status)
            continue
        counts[r.mark] = counts.get(r.mark, 0) + 1
        out.append("review" if counts[r.mark] > max(min_flags, share * i) else "flag")
    return out


def test_a_hub_is_held_past_its_limit_and_a_normal_brand_is_not():
    settings = FloodSettings(share=0.1, min_flags=10)
    rs = rows(1000, hub_every=2)
    guard = FloodGuard(settings)
    got = [guard.apply(replace(r)).status for r in rs]
    assert got == brute_force(rs, 0.1, 10)
    hub = [s for r, s in zip(rs, got) if r.brand == "hub"]
    assert hub[:10] == ["flag"] * 10 and hub.count("review") > 400  # a hub flagging half the photos is held after its first ten
    assert all(s == "flag" for r, s in zip(rs, got) if r.brand == "acme")  # acme flags 1 photo in 14 (7%), under 10%
    summary = guard.to_json()
    assert list(summary["references"]) == ["hub/circle"]
    assert summary["references"]["hub/circle"]["flags"] == 500
    assert summary["references"]["hub/circle"]["held"] == hub.count("review") == summary["held"]
    assert summary["flags"] == {"acme/logo": sum(r.brand == "acme" for r in rs), "hub/circle": 500}


def test_resume_replays_written_rows_and_holds_the_same():
    rs = rows(600, hub_every=3)
    policy_flag = lambda m: m.score >= 0.9  # noqa: E731  (the scan's flag threshold)
    whole = FloodGuard(FloodSettings(share=0.05, min_flags=5), policy_flag)
    expected = [whole.apply(replace(r)).status for r in rs]
    for cut in (1, 37, 250, 599):
        first = FloodGuard(FloodSettings(share=0.05, min_flags=5), policy_flag)
        written = [first.apply(replace(r)) for r in rs[:cut]]
        resumed = FloodGuard(FloodSettings(share=0.05, min_flags=5), policy_flag)
        for r in written:  # what --resume reads back from results.jsonl.partial
            resumed.replay(r)
        rest = [resumed.apply(replace(r)).status for r in rs[cut:]]
        assert [r.status for r in written] + rest == expected
        assert resumed.to_json() == whole.to_json()


def test_history_sets_the_limit_and_off_means_off(tmp_path):
    for name, flags, images in (("a", {"hub/circle": 3, "acme/logo": 40}, 1000), ("b", {"hub/circle": 1}, 1000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"images": images, "flood": {"flags": flags}}))
    history, images = read_history([tmp_path / "a", tmp_path / "b"])
    assert images == 2000 and history["hub/circle"] == pytest.approx(5 / 2000) and history["acme/logo"] == pytest.approx(41 / 2000)
    guard = FloodGuard(FloodSettings(share=0.5, min_flags=2, factor=5.0, history=history, history_images=images))
    got = [guard.apply(replace(r)).status for r in rows(400, hub_every=4)]
    # hub's usual rate is 0.25% of photos: its c-th flag (the photo 4c-3) is held past max(2, 5 x 0.0025 x (4c-3)), not
    # past share 0.5 of the scan; acme (usual rate 2.05%) is held only past 5 x 2.05% of the photos seen
    hub = [s for r, s in zip(rows(400, 4), got) if r.brand == "hub"]
    assert hub == ["flag" if c <= max(2, 5 * (5 / 2000) * (4 * c - 3)) else "review" for c in range(1, len(hub) + 1)]
    assert hub.count("flag") == 2
    counts, want = {}, []
    for i, r in enumerate(rows(400, 4), 1):
        if r.status == "flag":
            counts[r.brand] = counts.get(r.brand, 0) + 1
            rate = history[f"{r.brand}/{r.mark}"]
            want.append("review" if counts[r.brand] > max(2, 5 * rate * i) else "flag")
        else:
            want.append(r.status)
    assert got == want
    off = FloodGuard(FloodSettings(share=0.0))
    assert all(off.apply(replace(r)).status == r.status for r in rows(300))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "summary.json").write_text(json.dumps({"images": 3}))
    with pytest.raises(MarkguardError, match="has no flood counts"):
        read_history([tmp_path / "c"])
    with pytest.raises(MarkguardError, match="share 2.0 must lie in"):
        FloodSettings(share=2.0)


def test_scan_holds_a_flood_and_names_it_in_the_summary(tmp_path):
    from test_scan import make_world, read_rows

    from markguard.infer.scan import ScanOptions, run_scan

    w = make_world(tmp_path / "world", listings=16, hostile=False, seed=2)
    opts = ScanOptions(batch_size=4, workers=1, device="cpu", verify=False, ocr=False, combiner=None, flag=-1.0, review=-1.0, flood_share=0.0)
    free = tmp_path / "free"
    run_scan(w.dump, [w.index], free, opts=opts, progress=False)  # every photo flags: the guard off
    base = read_rows(free)
    assert all(r["status"] == "flag" for r in base)
    top = max({(r["brand"], r["mark"]) for r in base}, key=lambda k: sum((r["brand"], r["mark"]) == k for r in base))
    guarded = tmp_path / "guarded"
    run_scan(w.dump, [w.index], guarded, opts=replace(opts, flood_share=0.05, flood_min=2), progress=False)
    got = read_rows(guarded)
    counts: dict = {}
    for i, (a, b) in enumerate(zip(base, got), 1):
        ref = (a["brand"], a["mark"])
        counts[ref] = counts.get(ref, 0) + 1
        want = "review" if counts[ref] > max(2, 0.05 * i) else "flag"
        assert (b["status"], b["brand"], b["mark"], b["score"]) == (want, a["brand"], a["mark"], a["score"])
    summary = json.loads((guarded / "summary.json").read_text())
    flood = summary["flood"]
    assert f"{top[0]}/{top[1]}" in flood["references"]
    assert flood["held"] == sum(r["status"] == "review" for r in got) == summary["counts"]["review"] > 0
    assert flood["references"][f"{top[0]}/{top[1]}"]["flags"] == counts[top]
