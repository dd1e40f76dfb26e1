"""The output folder: one scan at a time, a resume only of the same scan, only rows that belong, no stub left behind."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from markguard.errors import MarkguardError
from markguard.infer.outdir import LOCK, OutputLock, keep_matching_rows
from markguard.infer.scan import run_scan
from markguard.infer.results import PARTIAL, RESULTS
from markguard.infer.writer import ResultsWriter
from test_scan import OPTS, make_world, manifest_order, read_rows


@pytest.fixture(scope="module")
def own_world(tmp_path_factory):
    """A world of its own: these tests rewrite its manifest and add to its index."""
    return make_world(tmp_path_factory.mktemp("outdir-world"), listings=8)


@pytest.fixture()
def world(own_world, tmp_path):
    """A fresh copy of the dump and index for each test (the model is shared, unchanged)."""
    from test_scan import World

    root = tmp_path / "w"
    shutil.copytree(own_world.root / "synth", root / "synth")
    shutil.copytree(own_world.index, root / "index")
    return World(root, root / "synth" / "listings" / "manifest.csv", root / "synth" / "gallery", own_world.model,
                 root / "index", own_world.n_rows)


def interrupted(world, out, keep: int, **kw) -> list[dict]:
    """A finished scan turned back into one killed after ``keep`` rows; returns the full reference rows."""
    run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, **kw)
    rows = read_rows(out)
    (out / "summary.json").unlink()
    lines = (out / RESULTS).read_bytes().splitlines(keepends=True)
    (out / PARTIAL).write_bytes(b"".join(lines[:keep]))
    (out / RESULTS).unlink()
    return rows


def _holder(out) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from markguard.infer.outdir import OutputLock; "
            "OutputLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --------------------------------------------------------------------------- 1. lock


def test_second_scan_on_a_held_folder_is_refused_naming_the_holder(world, tmp_path):
    out = tmp_path / "out"
    interrupted(world, out, keep=3)
    proc = _holder(out)
    try:
        for resume in (True, False):
            with pytest.raises(MarkguardError, match=rf"another scan \(pid {proc.pid}\) is writing here"):
                run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=resume)
        assert len((out / PARTIAL).read_bytes().splitlines()) == 3  # the refused scans touched nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel dropped the dead holder's lock: nothing stale to clean up
    run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    assert [(r["listing_id"], r["image"]) for r in read_rows(out)] == manifest_order(world)


def test_two_fresh_scans_into_one_new_folder(world, tmp_path):
    out = tmp_path / "new"
    out.mkdir()
    proc = _holder(out)
    try:
        with pytest.raises(MarkguardError, match=f"pid {proc.pid}"):
            run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_released_when_the_scan_returns_or_fails(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    with pytest.raises(MarkguardError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path).acquire()  # flock is per open file: the same process is refused too
    lock.release()
    assert not (tmp_path / LOCK).exists()  # a finished scan leaves no lock file behind
    again = OutputLock(tmp_path)
    again.acquire()
    again.release()


# --------------------------------------------------------------------------- 2. pins


def test_resume_refuses_a_rewritten_manifest(world, tmp_path):
    out = tmp_path / "out"
    interrupted(world, out, keep=4)
    rows = list(csv.DictReader(world.dump.open()))
    with world.dump.open("w", newline="") as f:  # same path, same rows, another order: the overnight regeneration
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[::-1])
    with pytest.raises(MarkguardError, match="cannot resume, changed since its scan started: the input's content") as e:
        run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    assert "new -o folder" in str(e.value) and "\n" not in str(e.value)


def test_resume_refuses_an_index_saved_since(world, tmp_path):
    from markguard.infer.build import add_to_index

    out = tmp_path / "out"
    interrupted(world, out, keep=4)
    extra = tmp_path / "extra"
    mark = next(world.gallery.glob("*/*.png"))
    (extra / "newbrand").mkdir(parents=True)
    shutil.copy(mark, extra / "newbrand" / "copy.png")
    add_to_index(world.index, extra, model=world.model, device="cpu")
    with pytest.raises(MarkguardError, match=r"cannot resume, changed since its scan started: index .* \(saved again since"):
        run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)


def test_resume_refuses_other_thresholds_and_options(world, tmp_path):
    import dataclasses
    from importlib.util import find_spec  # the interrupted scan verified by default where OpenCV is installed: the other choice

    out = tmp_path / "out"
    interrupted(world, out, keep=4)
    for opts, what in ((dataclasses.replace(OPTS, flag=0.2), "thresholds"), (dataclasses.replace(OPTS, verify=find_spec("cv2") is None), "--verify"),
                       (dataclasses.replace(OPTS, regions="none"), "region mode")):
        with pytest.raises(MarkguardError, match=f"cannot resume, changed .*{what}"):
            run_scan(world.dump, [world.index], out, opts=opts, progress=False, resume=True)
    # what only changes speed may differ
    s = run_scan(world.dump, [world.index], out, opts=dataclasses.replace(OPTS, batch_size=3, workers=0), progress=False, resume=True)
    assert s["images"] == world.n_rows and s["images_this_run"] == world.n_rows - 4


# --------------------------------------------------------------------------- 3. rows by identity


@pytest.mark.parametrize("intruder", ["foreign", "duplicate", b'{"foo": 1}\n', b"[1, 2, 3]\n", b'"a string"\n'])
def test_resume_keeps_rows_only_while_they_are_the_inputs(world, tmp_path, intruder):
    out = tmp_path / "out"
    reference = interrupted(world, out, keep=5)
    lines = (out / PARTIAL).read_bytes().splitlines(keepends=True)
    if intruder == "foreign":
        row = json.loads(lines[1]) | {"listing_id": "FOREIGN"}
        bad = json.dumps(row).encode() + b"\n"
    elif intruder == "duplicate":
        bad = lines[1]
    else:
        bad = intruder
    (out / PARTIAL).write_bytes(b"".join(lines[:2] + [bad] + lines[2:]))
    s = run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    rows = read_rows(out)
    assert [(r["listing_id"], r["image"]) for r in rows] == manifest_order(world)
    assert [r["status"] for r in rows] == [r["status"] for r in reference]
    assert s["images"] == world.n_rows and sum(s["counts"].values()) == world.n_rows
    assert s["images_this_run"] == world.n_rows - 2


def test_keep_matching_rows_cuts_at_the_first_mismatch(tmp_path):
    from markguard.datasets.listings import ListingItem
    from markguard.infer.results import ROW_KEYS

    def row(lid):
        return json.dumps(dict.fromkeys(ROW_KEYS) | {"listing_id": lid, "image": f"{lid}.jpg", "status": "pass", "matches": []}).encode() + b"\n"

    items = [ListingItem(i, f"L{i}", f"L{i}.jpg") for i in range(5)]
    p = tmp_path / PARTIAL
    p.write_bytes(row("L0") + row("L1") + row("L3") + row("L4"))
    assert keep_matching_rows(p, items) == 2
    assert p.read_bytes() == row("L0") + row("L1")
    p.write_bytes(row("L0") + row("L1") + b'{"listing_id": "L2"')  # torn
    assert keep_matching_rows(p, items) == 2
    p.write_bytes(row("L0") + row("L1") + row("L2")[:-1])  # cut right before its newline: the next row would join its line
    assert keep_matching_rows(p, items) == 2 and p.read_bytes() == row("L0") + row("L1")
    p.write_bytes(row("L0") + row("L1") + row("L2"))
    assert keep_matching_rows(p, items[:2]) == 2  # more rows than inputs


# --------------------------------------------------------------------------- early failure, full disk


def test_early_failure_leaves_no_stub(world, tmp_path, monkeypatch):
    import markguard.infer.scan as scan

    def fail(*a, **k):
        raise MarkguardError("decoding process died")

    monkeypatch.setattr(scan, "process_batches", fail)
    out = tmp_path / "out"
    with pytest.raises(MarkguardError, match="decoding process died"):
        run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)
    assert not out.exists()  # made by the scan, so taken away again
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(MarkguardError):
        run_scan(world.dump, [world.index], given, opts=OPTS, progress=False)
    assert list(given.iterdir()) == []
    monkeypatch.undo()
    s = run_scan(world.dump, [world.index], given, opts=OPTS, progress=False)  # a plain rerun, no --resume needed
    assert s["images"] == world.n_rows


def test_stub_from_an_older_run_does_not_block_a_plain_rerun(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.json").write_text("{}")
    (out / PARTIAL).write_bytes(b"")
    assert run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)["images"] == world.n_rows


def test_disk_full_is_one_line_and_resume_recovers_every_row(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = ResultsWriter.write

    def write(self, rows):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    monkeypatch.setattr(ResultsWriter, "write", write)
    with pytest.raises(MarkguardError) as e:
        run_scan(world.dump, [world.index], out, opts=OPTS, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and PARTIAL in msg and "no space left" in msg and "--resume" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    monkeypatch.undo()
    s = run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    assert [(r["listing_id"], r["image"]) for r in read_rows(out)] == manifest_order(world)
    assert s["images_this_run"] == world.n_rows - OPTS.batch_size


# --------------------------------------------------------------------------- planted links


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).symlink_to(victim)
    with pytest.raises(MarkguardError, match="is a link"):
        OutputLock(out).acquire()
    assert victim.read_text() == "precious\n"


def test_resume_refuses_a_planted_partial_link(world, tmp_path):
    from markguard.infer.writer import ResultsWriter

    out = tmp_path / "out"
    interrupted(world, out, keep=3)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / PARTIAL).unlink()
    (out / PARTIAL).symlink_to(victim)
    with pytest.raises(MarkguardError, match="is a link"):
        run_scan(world.dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    with pytest.raises(MarkguardError, match="is a link"):
        ResultsWriter(out, resume=True)
    assert victim.read_text() == "precious\n"
    assert not (out / RESULTS).is_symlink()


# --------------------------------------------------------------------------- names and the digest


def _folder_dump(world, root):
    """A folder dump of three of the world's photos plus one whose name is not UTF-8."""
    photos = sorted(p for p in world.dump.parent.glob("*.jpg") if p.stat().st_size > 1000)[:3]
    root.mkdir()
    for p in photos:
        shutil.copy(p, root / p.name)
    shutil.copy(photos[0], os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
    return root


def test_a_name_that_is_not_utf8_is_an_error_row_and_an_inner_output_folder_resumes(world, tmp_path):
    dump = _folder_dump(world, tmp_path / "dump")
    out = dump / "out"  # the output folder inside the folder it scans
    run_scan(dump, [world.index], out, opts=OPTS, progress=False)
    rows = read_rows(out)
    assert len(rows) == 4
    bad = [r for r in rows if r["status"] == "error"]
    assert [r["image"] for r in bad] == ["caf\\xe9.jpg"] and "not valid UTF-8" in bad[0]["error"]
    # killed after two rows; then the dump gains what no reader reads: the resume still matches it
    (out / "summary.json").unlink()
    lines = (out / RESULTS).read_bytes().splitlines(keepends=True)
    (out / PARTIAL).write_bytes(b"".join(lines[:2]))
    (out / RESULTS).unlink()
    (dump / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (dump / "notes.txt").write_text("listing notes\n")
    run_scan(dump, [world.index], out, opts=OPTS, progress=False, resume=True)
    assert read_rows(out) == rows


def test_the_digest_covers_the_photos_the_reader_reads(world, tmp_path):
    from markguard.infer.outdir import input_digest

    dump = _folder_dump(world, tmp_path / "dump")
    before = input_digest(dump)
    (dump / "out").mkdir()
    for name in (".scan.lock", "results.jsonl.partial", "scan.json", "summary.json"):
        (dump / "out" / name).write_text("x")
    (dump / ".DS_Store").write_bytes(b"x")
    (dump / "README.txt").write_text("x")
    assert input_digest(dump) == before
    shutil.copy(next(dump.glob("*.jpg")), dump / "new.jpg")
    assert input_digest(dump) != before


def test_the_writer_thread_writes_strings_that_are_not_text_escaped(tmp_path):
    from markguard.infer.results import parse_row
    from markguard.infer.writer import BackgroundWriter

    row = {"listing_id": "L\ud800", "image": os.fsdecode(b"x\xff.jpg"), "seller_id": None, "status": "error", "score": None,
           "brand": None, "mark": None, "box": None, "matches": [], "error": "cannot read file"}
    w = BackgroundWriter(ResultsWriter(tmp_path, resume=False))
    w.write([row])
    final = w.finish()
    line = final.read_bytes()
    line.decode("utf-8")  # valid UTF-8, one row
    got = parse_row(line)
    assert (got.listing_id, got.image) == ("L\\ud800", "x\\xff.jpg")
