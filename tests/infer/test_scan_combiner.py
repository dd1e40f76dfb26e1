"""The combiner in a scan: its probability on every match, the thresholds on it, the index's combiner.json by default,
refusal of one fitted for another model, signals the scan does not collect, and evidence from an index's background bank."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from markguard.checkpoint import load_card
from markguard.errors import MarkguardError
from markguard.infer.bank import normalise
from markguard.infer.build import build_index
from markguard.infer.combine import COMBINER_FILE, Combiner, load_for_scan
from markguard.infer.evidence import Candidate, Geometry, Similarity
from markguard.infer.scan import ScanOptions, run_scan
from test_scan import make_world, read_rows  # sibling module: pytest puts tests/infer on sys.path

OPTS = ScanOptions(batch_size=4, workers=1, device="cpu")


def similarity_combiner(fingerprint: str, *, mid: float) -> Combiner:
    """p = sigmoid(200 (similarity - mid)), written as the combiner's standardised logistic."""
    return Combiner(["similarity"], [0.0, 2.0], 0.0, [1.0, mid], [1.0, 0.01], fingerprint)


def by_hand(similarity: float, mid: float) -> float:
    return 1.0 / (1.0 + math.exp(-200.0 * (similarity - mid)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("combiner-world"))
    w.fingerprint = load_card(w.model).fingerprint
    return w


def test_the_scan_puts_the_probability_on_every_match_and_decides_on_it(world, tmp_path):
    plain = tmp_path / "plain"
    run_scan(world.dump, [world.index], plain, opts=ScanOptions(batch_size=4, workers=1, device="cpu", flag=-1, review=-1, verify=False),
             progress=False)
    best = [r["score"] for r in read_rows(plain) if r["status"] != "error"]
    mid = float(np.median(best))  # about half the photos on each side of the flag probability
    path = similarity_combiner(world.fingerprint, mid=mid).save(tmp_path / "c.json")
    out = tmp_path / "with"
    # no verification: the score stays the similarity the combiner reads (verification is tested on its own below)
    summary = run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=4, workers=1, device="cpu", combiner=str(path),
                                                                        verify=False), progress=False, formats=("jsonl", "parquet"))
    pq = pytest.importorskip("pyarrow.parquet")
    in_parquet = [m["probability"] for r in pq.read_table(out / "results.parquet").to_pylist() for m in r["matches"]]
    assert in_parquet == [m["probability"] for r in read_rows(out) for m in r["matches"]] and in_parquet
    assert summary["policy"]["on"] == "probability" and (summary["policy"]["flag"], summary["policy"]["review"]) == (0.5, 0.2)
    assert summary["options"]["combiner"] == str(path.resolve())
    statuses = set()
    for r in read_rows(out):
        if r["status"] == "error":
            continue
        for m in r["matches"]:
            assert m["probability"] == pytest.approx(by_hand(m["score"], mid), abs=5e-3)  # the score is rounded to 4 places
            assert m["probability"] >= 0.2  # a match is shown when its probability reaches review
        best = max((m["probability"] for m in r["matches"]), default=0.0)
        expected = "flag" if best >= 0.5 else "review" if best >= 0.2 else "pass"
        if r["status"] != "allowed":
            assert r["status"] == expected, r
        statuses.add(r["status"])
    assert {"flag", "pass"} <= statuses  # the probability decided both ways
    # the rows depend on the combiner's numbers: a rerun with a refitted one (same path) is another scan
    similarity_combiner(world.fingerprint, mid=mid + 0.05).save(path)
    with pytest.raises(MarkguardError, match="another scan"):
        run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=4, workers=1, device="cpu", combiner=str(path),
                                                                  verify=False), progress=False)


def test_the_index_combiner_is_the_default_and_no_combiner_turns_it_off(world, tmp_path):
    index = tmp_path / "index"
    build_index(world.gallery, index, model=world.model, device="cpu")
    similarity_combiner(world.fingerprint, mid=0.5).save(index)
    assert (index / COMBINER_FILE).is_file()
    run_scan(world.dump, [index], tmp_path / "auto", opts=OPTS, progress=False)
    rows = [r for r in read_rows(tmp_path / "auto") if r["matches"]]
    assert rows and all("probability" in m for r in rows for m in r["matches"])
    off = ScanOptions(batch_size=4, workers=1, device="cpu", combiner=None)
    s = run_scan(world.dump, [index], tmp_path / "off", opts=off, progress=False)
    assert "on" not in s["policy"] and all("probability" not in m for r in read_rows(tmp_path / "off") for m in r["matches"])


def test_a_combiner_for_another_model_is_refused_in_one_line_naming_the_file(world, tmp_path, capsys):
    from markguard.cli import main

    path = similarity_combiner("f" * 16, mid=0.5).save(tmp_path / "other.json")
    code = main(["scan", str(world.dump), "-i", str(world.index), "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu",
                 "--combiner", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert str(path) in err and "fitted for model ffffffffffffffff" in err and "--no-combiner" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
    # similarity thresholds given with a combiner are no probabilities: one line, not a scan full of flags
    good = similarity_combiner(world.fingerprint, mid=0.5).save(tmp_path / "good.json")
    code = main(["scan", str(world.dump), "-i", str(world.index), "-o", str(tmp_path / "out2"), "--quiet", "--device", "cpu",
                 "--combiner", str(good), "--review-threshold", "-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "0 <= review <= flag <= 1" in err and "\n" not in err


def test_a_signal_the_scan_does_not_collect_enters_at_its_fitted_mean(world):
    # fitted with verification: inliers count for a lot
    c = Combiner(["similarity", "geometry"], [0.0, 1.0, 0.5, 2.0, 0.3, 0.4], -0.2,
                 [1.0, 0.6, 0.7, 2.0, 0.2, 0.5], [1.0, 0.1, 0.45, 1.2, 0.15, 0.5], world.fingerprint)
    path = c.save(world.root / "geo.json")

    class S:  # what load_for_scan reads of a searcher
        def __init__(self, w):
            self.path, self.card, self.bias = w.index, load_card(w.model), None

    loaded, where = load_for_scan(str(path), [S(world)], ScanOptions(verify=False))
    assert where == path and loaded.absent == ("geometry",)
    plain = Candidate("acme", "m", None, {"similarity": Similarity(0.75)})
    z = (0.75 - 0.6) / 0.1
    assert loaded.probabilities([plain])[0] == pytest.approx(1 / (1 + math.exp(-(1.0 * z - 0.2))))  # geometry adds nothing
    # in a scan with --verify, an unchecked candidate is "not seen" and a checked one counts, as in the fit
    with_verify, _ = load_for_scan(str(path), [S(world)], ScanOptions(verify=True))
    assert with_verify.absent == ()
    checked = Candidate("acme", "m", None, {"similarity": Similarity(0.75), "geometry": Geometry(40, 0.5, True)})
    p_plain, p_checked = with_verify.probabilities([plain, checked])
    assert p_checked > loaded.probabilities([plain])[0] > p_plain
    assert load_for_scan("auto", [S(world)], ScanOptions()) == (None, None)  # no combiner.json beside the index
    with pytest.raises(MarkguardError, match="no combiner here"):
        load_for_scan(str(world.root / "nothing.json"), [S(world)], ScanOptions())


def test_an_index_with_a_bank_gives_each_match_its_raw_and_normalised_similarity(world, tmp_path):
    index = tmp_path / "bank-index"
    build_index(world.gallery, index, model=world.model, device="cpu", bank=4)
    from markguard.infer.index import MarkIndex

    bias = {int(k): v for k, v in json.loads((index / "markguard.json").read_text())["bank"]["bias"].items()}
    ids: dict[tuple[str, str], list[int]] = {}
    for rec in MarkIndex.load(index).records():
        ids.setdefault((rec.brand, rec.mark), []).append(rec.id)
    run_scan(world.dump, [index], tmp_path / "out", opts=ScanOptions(batch_size=4, workers=1, device="cpu", flag=-1, review=-1,
                                                                     verify=False),  # the score stays the normalised similarity
             progress=False, formats=("jsonl", "parquet"))
    pq = pytest.importorskip("pyarrow.parquet")
    got = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    for a, b in zip(got, read_rows(tmp_path / "out")):  # the evidence survives parquet, as JSON text
        assert [json.loads(m["evidence"]) for m in a["matches"]] == [m["evidence"] for m in b["matches"]]
    seen = 0
    for r in read_rows(tmp_path / "out"):
        for m in r["matches"]:
            ev = m["evidence"]
            assert ev["similarity_norm"] == pytest.approx(m["score"], abs=1e-4)  # the score a bank index decides on
            # the level is the bias of this mark's own reference
            assert any(abs(ev["background"] - bias[i]) < 1e-4 for i in ids[(m["brand"], m["mark"])])
            # both numbers are rounded to 4 places; dividing by (1 - background) magnifies that
            tol = 2e-4 / (1 - ev["background"]) ** 2
            assert ev["similarity_norm"] == pytest.approx(float(normalise(ev["similarity"], ev["background"])), abs=tol)
            seen += 1
    assert seen > 0


def test_a_combiner_fitted_against_another_background_bank_is_refused(world, tmp_path):
    """Normalised similarities are numbers of one bank: an index rebuilt with another --bank needs a refit."""
    index = tmp_path / "bank-index"
    build_index(world.gallery, index, model=world.model, device="cpu", bank=4)
    plain = run_scan(world.dump, [index], tmp_path / "fit", opts=ScanOptions(batch_size=4, workers=1, device="cpu", flag=-1, review=-1),
                     progress=False)
    assert plain["indexes"][0]["bank"]["images"] == 4  # summary.json says which bank the scores were normalised against
    c = Combiner(["similarity", "similarity_norm"], [0.0, 1.0, 0.0, 1.0], 0.0, [1.0, 0.5, 1.0, 0.3], [1.0, 0.1, 1.0, 0.1],
                 world.fingerprint, fitted={"bank": plain["indexes"][0]["bank"]})
    c.save(index)
    run_scan(world.dump, [index], tmp_path / "same", opts=OPTS, progress=False)  # the same bank: accepted
    build_index(world.gallery, index, model=world.model, device="cpu", bank=6)  # rebuilt with another bank
    c.save(index)
    with pytest.raises(MarkguardError, match=r"background bank .*'images': 4.*'images': 6.*refit") as e:
        run_scan(world.dump, [index], tmp_path / "other", opts=OPTS, progress=False)
    assert "\n" not in str(e.value)


def test_verification_is_gated_to_candidates_near_the_review_threshold(world, tmp_path):
    pytest.importorskip("cv2")

    def checked(out):
        return [sum("inliers" in (m.get("evidence") or {}) for m in r["matches"]) for r in read_rows(out) if r["status"] != "error"]

    every = ScanOptions(batch_size=4, workers=1, device="cpu", flag=-1, review=-1, verify=True)
    run_scan(world.dump, [world.index], tmp_path / "all", opts=every, progress=False)
    assert all(0 < n <= 3 for n in checked(tmp_path / "all"))  # thresholds off: each photo's best three
    scores = sorted(r["score"] for r in read_rows(tmp_path / "all") if r["status"] != "error")
    mid = scores[len(scores) // 2]
    gated = ScanOptions(batch_size=4, workers=1, device="cpu", flag=-1, review=-1, verify=True, verify_from=mid)
    s = run_scan(world.dump, [world.index], tmp_path / "gated", opts=gated, progress=False)
    assert s["options"]["verify_from"] == mid
    for r in read_rows(tmp_path / "gated"):
        for m in r["matches"]:
            ev = m.get("evidence") or {}
            if "inliers" in ev:
                assert ev["similarity"] >= mid - 1e-4  # nothing below the gate was checked
    n_all, n_gated = sum(checked(tmp_path / "all")), sum(checked(tmp_path / "gated"))
    assert 0 < n_gated < n_all


def test_the_gate_reads_the_probability_before_verification_or_the_similarity(world):
    from markguard.infer.decide import Policy
    from markguard.infer.verify import verify_gate
    from markguard.infer.results import Match

    found = [[Match("acme", "m", 0.94, [0, 0, 10, 10]), Match("acme", "n", 0.80, [0, 0, 10, 10])], [Match("beta", "m", 0.70, [0, 0, 5, 5])]]
    opts = ScanOptions(verify=True)
    _, checks = verify_gate(found, Policy(0.92, 0.9), opts)
    assert checks == [{0}, set()]  # 0.80 and 0.70 are more than `near` (0.05) below review 0.9
    _, checks = verify_gate(found, Policy(0.999, 0.999), opts)
    assert checks == [set(), set()]  # nothing is near a threshold: nothing is checked
    # with a combiner: its probability without geometry, here p = sigmoid(200 (similarity - 0.75)), against review 0.2
    c = Combiner(["similarity", "geometry"], [0.0, 2.0, 0.0, 5.0, 5.0, 5.0], 0.0, [1.0, 0.75, 0.5, 1.0, 0.1, 0.5],
                 [1.0, 0.01, 0.5, 1.0, 0.1, 0.5], world.fingerprint)
    _, checks = verify_gate(found, Policy(0.5, 0.2, combiner=c), opts)
    assert checks == [{0, 1}, set()]  # p(0.80) ~ 1 and p(0.94) ~ 1 pass; p(0.70) ~ 0 does not
