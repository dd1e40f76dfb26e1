"""The scan plan (infer/plan.py): resolved once however many batches follow, a new evidence signal added through the
registry alone, the stage list it chooses, and the command line's choices taken from the registries."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest

from markguard.errors import MarkguardError
from markguard.infer.options import ScanOptions
from test_scan import make_world  # sibling module: pytest puts tests/infer on sys.path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("plan-world"), listings=12)


def _count_resolutions(monkeypatch) -> list[int]:
    """Counts every call of resolve_preprocessing, under whichever name a module imported it."""
    import markguard.preprocess as pp

    original, calls = pp.resolve_preprocessing, [0]

    def counting(*a, **kw):
        calls[0] += 1
        return original(*a, **kw)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("markguard") and getattr(mod, "resolve_preprocessing", None) is original:
            monkeypatch.setattr(mod, "resolve_preprocessing", counting)
    return calls


@pytest.mark.parametrize("verify", [False, True])
def test_the_plan_is_resolved_once_however_many_batches_follow(world, tmp_path, monkeypatch, verify):
    from markguard.infer.scan import run_scan

    pytest.importorskip("cv2") if verify else None
    calls = _count_resolutions(monkeypatch)
    counts = {}
    for batch_size in (2, 16):  # 8 batches, then 1
        calls[0] = 0
        out = tmp_path / f"b{batch_size}"
        run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=batch_size, workers=0, verify=verify, ocr=verify),
                 progress=False)
        counts[batch_size] = calls[0]
        assert json.loads((out / "summary.json").read_text())["images"] == world.n_rows
    # the searcher resolves its card when it is loaded; no batch resolves anything again
    assert counts[2] == counts[16] == 1, counts


def test_build_plan_lists_the_stages_and_refuses_bad_settings_before_any_batch(world):
    from markguard.infer.decide import Policy
    from markguard.infer.plan import build_plan
    from markguard.infer.searchers import load_searchers

    (s,) = load_searchers([world.index], None, "cpu")
    names = lambda plan: [type(st).__name__ for st in plan.stages]  # noqa: E731
    plan = build_plan([s], Policy(0.6, 0.5), ScanOptions(verify=False))
    assert names(plan) == ["FirstLook", "Search", "Decide"] and plan.hires == 0 and plan.signals == ()
    plan = build_plan([s], Policy(0.6, 0.5), ScanOptions(verify=True))
    assert names(plan) == ["FirstLook", "Search", "VerifyStage", "Decide"] and plan.hires == 0 and plan.stages[2].lazy_hires and plan.signals == ("geometry",)
    assert plan.searchers[0].regions.scales == (1.0, 0.5)  # the card's grid, resolved once
    with pytest.raises(MarkguardError, match="unknown region mode"):
        build_plan([s], Policy(0.6, 0.5), ScanOptions(regions="everywhere"))
    with pytest.raises(MarkguardError, match="no proposal head"):
        build_plan([s], Policy(0.6, 0.5), ScanOptions(looks=2))
    with pytest.raises(MarkguardError, match="--signal nope: unknown"):
        build_plan([s], Policy(0.6, 0.5), ScanOptions(signals=["nope"]))


@dataclass(frozen=True)
class Brightness:
    """A dummy signal's record: the photo's mean grey level, 0-1."""

    value: float


@dataclass
class BrightnessStage:
    """Its producer: puts the record on every candidate of each photo."""

    name: str = "brightness"
    per_index: bool = False

    @classmethod
    def plan(cls, plan, sp):
        return cls()

    def __call__(self, work) -> None:
        from dataclasses import replace

        for i, cands in enumerate(work.photos()):
            level = float(work.batch.x[i].mean()) if len(work.batch.x) else 0.0
            cands[:] = [replace(c, evidence={**c.evidence, "brightness": Brightness(level)}) for c in cands]


def test_a_new_signal_is_one_registry_entry(world, tmp_path):
    """A signal registered from outside the scan's modules is collected, written and encoded, with --signal."""
    from markguard.infer.evidence import SIGNALS, Signal, feature_names, register
    from markguard.infer.scan import run_scan
    from markguard.infer.results import read_results

    register(Signal("brightness", Brightness, ("brightness_seen", "brightness"), encode=lambda ev, c: (round(ev.value, 4),),
                    to_json=lambda ev: {"brightness": round(ev.value, 4)},
                    from_json=lambda raw: None if raw.get("brightness") is None else Brightness(raw["brightness"]),
                    producer=BrightnessStage, opt_in=True))
    try:
        assert "brightness" in feature_names()
        plain = run_scan(world.dump, [world.index], tmp_path / "plain", opts=ScanOptions(workers=0, verify=False, ocr=False, flag=-1, review=-1),
                         progress=False)
        summary = run_scan(world.dump, [world.index], tmp_path / "with", progress=False,
                           opts=ScanOptions(workers=0, verify=False, ocr=False, flag=-1, review=-1, signals=["brightness"]))
        assert "brightness" not in plain["stage_seconds"] and summary["stage_seconds"]["brightness"] >= 0
        rows = list(read_results(tmp_path / "with" / "results.jsonl"))
        with_ev = [m.evidence for r in rows for m in r.matches]
        assert with_ev and all(set(ev) == {"brightness"} for ev in with_ev)
        assert all(not m.evidence for r in read_results(tmp_path / "plain" / "results.jsonl") for m in r.matches)
        # the command line offers it by the registry
        from markguard.cli import build_parser

        args = build_parser().parse_args(["scan", "d", "-i", "i", "-o", "o", "--signal", "brightness"])
        assert args.signal == ["brightness"]
    finally:
        del SIGNALS["brightness"]


def test_the_command_lines_choices_come_from_the_registries():
    from markguard.cli import build_parser
    from markguard.infer.backends import BACKENDS
    from markguard.infer.regions import RegionMode

    parser = build_parser()
    scan = next(a for a in parser._subparsers._group_actions[0].choices["scan"]._actions if a.dest == "regions")
    assert list(scan.choices) == [m.label for m in RegionMode]
    backend = next(a for a in parser._subparsers._group_actions[0].choices["scan"]._actions if a.dest == "backend")
    assert list(backend.choices) == list(BACKENDS)


def test_the_orchestrator_is_small_and_nothing_imports_it_for_options():
    from pathlib import Path

    import markguard.infer.pipeline as pipeline

    src = Path(pipeline.__file__).read_text()
    assert len(src.splitlines()) < 100
    root = Path(pipeline.__file__).parents[1]
    for f in list((root / "infer").rglob("*.py")) + list((root / "markguard").rglob("*.py")):
        for line in f.read_text().splitlines():
            if "infer.pipeline import" in line:  # the engines run batches through it; nothing takes options or helpers from it
                assert line.strip().endswith(("import process_batch", "import process_batches")), (f, line)


def test_verification_decodes_the_high_resolution_copy_only_for_photos_near_the_gate(world, tmp_path, monkeypatch):
    pytest.importorskip("cv2")
    from markguard.infer import decode
    from markguard.infer.scan import run_scan

    copies = []
    original = decode.hires_copy
    monkeypatch.setattr(decode, "hires_copy", lambda img, cap: copies.append(cap) or original(img, cap))
    run_scan(world.dump, [world.index], tmp_path / "none", opts=ScanOptions(workers=0, verify=True, ocr=False, verify_from=1.0),
             progress=False)
    assert copies == []  # no candidate near the review threshold: no photo is decoded a second time
    run_scan(world.dump, [world.index], tmp_path / "all", opts=ScanOptions(workers=0, verify=True, ocr=False, flag=-1, review=-1), progress=False)
    assert copies and set(copies) == {1280} and len(copies) <= world.n_rows - 4  # the photos checked, once each


def test_a_decoding_worker_killed_by_the_system_is_one_line():
    from markguard.infer.decode import worker_death

    line = worker_death(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    assert "pid 4242" in line and "out of memory" in line and "--resume" in line and "\n" not in line
    assert worker_death(RuntimeError("DataLoader worker (pid(s) 7, 8) exited unexpectedly")).startswith("decoding worker (pid 7, 8)")
    assert worker_death(RuntimeError("shape mismatch")) is None


def test_each_decoding_worker_reads_a_disjoint_share_of_a_tar_input_once(tmp_path, monkeypatch):
    """Every worker walks the shard's headers, but a member's bytes are read by the worker that decodes it, once."""
    import io
    import tarfile

    from PIL import Image

    from markguard.datasets import listings
    from markguard.infer import decode
    from markguard.infer.read import item_source

    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tf:
        for k in range(10):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (k * 20, 0, 0)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"{k:03d}.jpg")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    reads = []
    original = listings.read_member
    monkeypatch.setattr(listings, "read_member", lambda shard, offset, size, image="": reads.append(image) or original(shard, offset, size, image=image))
    ds = decode.DecodedBatches(item_source(shard, None), size=32, mean=(0, 0, 0), std=(1, 1, 1), batch_size=2)
    shares = {}
    for wid in range(3):  # as DataLoader's worker `wid` of 3 runs it
        monkeypatch.setattr(decode, "get_worker_info", lambda wid=wid: type("Info", (), {"id": wid, "num_workers": 3})())
        before = len(reads)
        batches = list(ds)
        shares[wid] = reads[before:]
        assert all(not b.errors for b in batches) and sum(len(b.ok) for b in batches) == len(shares[wid])
    images = [i for s in shares.values() for i in s]
    assert sorted(images) == [f"shard-000.tar/{k:03d}.jpg" for k in range(10)]  # each member read once, by one worker
    assert [len(s) for s in shares.values()] == [4, 4, 2]  # batches 0 and 3, 1 and 4, 2


def test_the_progress_line_shows_each_stages_share():
    import io

    from markguard.infer.options import StageTimes
    from markguard.infer.scan import Progress

    p = Progress(total=10, done=0, stream=io.StringIO(), every_s=1e9)
    p.times = StageTimes()
    p.times.merge({"decode": 1.0, "embed": 3.0})
    assert p.shares_line() == "scan: time by stage: embed 75%, decode 25%"
    assert p.times.shares()["embed"] == 0.75


def test_the_next_batch_embeds_while_the_last_ones_evidence_finishes_and_the_rows_are_the_same(world, tmp_path):
    """The model's stages of batch N+1 overlap the evidence and decision stages of batch N on a second thread
    (infer/pipeline.py process_batches): the same rows, in the same order, as one stage after the other."""
    from markguard.infer.decide import Policy
    from markguard.infer.plan import build_plan
    from markguard.infer.scan import run_scan
    from markguard.infer.searchers import load_searchers

    pytest.importorskip("cv2")
    rows = {}
    for overlap in (False, True):
        out = tmp_path / f"o{int(overlap)}"
        run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=2, workers=0, verify=True, overlap=overlap), progress=False)
        rows[overlap] = (out / "results.jsonl").read_bytes()
    assert rows[True] == rows[False] and rows[True].count(b"\n") == world.n_rows
    plan = build_plan(load_searchers([world.index], None, "cpu"), Policy(0.6, 0.5), ScanOptions(verify=True))
    names = [type(s).__name__ for s in plan.stages]
    assert names[: plan.model_stages] == ["FirstLook", "Search"] and "VerifyStage" in names[plan.model_stages:]


def test_a_batch_that_fails_in_the_model_gives_the_rows_of_the_batch_before_first(world, tmp_path, monkeypatch):
    """A failure while the next batch is embedded surfaces after the batch already checked is written, so
    `--resume` has less to redo (and nothing is lost or written twice)."""
    from markguard.infer import stages
    from markguard.infer.scan import run_scan

    real, calls = stages.Search.__call__, [0]

    def third_fails(self, work):
        calls[0] += 1
        if calls[0] == 3:
            raise MarkguardError("the model failed on batch 3")
        return real(self, work)

    monkeypatch.setattr(stages.Search, "__call__", third_fails)
    out = tmp_path / "out"
    with pytest.raises(MarkguardError, match="batch 3"):
        run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=2, workers=0, verify=False), progress=False)
    assert len((out / "results.jsonl.partial").read_bytes().splitlines()) == 4  # batches 1 and 2
