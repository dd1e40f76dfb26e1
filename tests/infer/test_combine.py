"""Evidence and the combiner: each signal's round trip, the fits against scikit-learn, a fit on a tiny labelled scan
that reloads to the same probabilities, refusal for another model, and text that flags or vetoes at the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from markguard.errors import MarkguardError
from markguard.infer.decide import Policy
from markguard.infer.combine import (
    Combiner,
    calibrate_combiner,
    fit_combiner,
    fit_isotonic,
    fit_logistic,
    read_truth,
)
from markguard.infer.evidence import (
    SIGNALS,
    Candidate,
    Geometry,
    Similarity,
    SimilarityNorm,
    Text,
    add_text_candidates,
    candidate_from_json,
    encode,
    feature_names,
    normalised_similarity,
    text_evidence,
)
from markguard.infer.ocr import OcrRead
from markguard.infer.textmatch import Lexicon

FP = "model-fp-1"


def test_logistic_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X @ [1.5, -2.0, 0.5, 0.0] + 0.3 + rng.logistic(size=300) > 0).astype(float)
    w, b = fit_logistic(X, y, l2=2.0)
    ref = sklearn.LogisticRegression(C=1 / 2.0, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-5)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_isotonic_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(1)
    x = np.round(rng.uniform(size=200), 2)  # with ties
    y = (rng.uniform(size=200) < x).astype(float)
    kx, ky = fit_isotonic(x, y)
    assert np.all(np.diff(kx) >= 0) and np.all(np.diff(ky) >= 0)
    ref = sklearn.IsotonicRegression(out_of_bounds="clip").fit(x, y)
    grid = np.linspace(-0.1, 1.1, 500)
    np.testing.assert_allclose(np.interp(grid, kx, ky), ref.predict(grid), atol=1e-9)


def _full_candidate() -> Candidate:
    return Candidate("acme", "acme-logo", [1, 2, 30, 40], {
        "similarity": Similarity(0.71),
        "similarity_norm": SimilarityNorm(0.31, 0.4),
        "geometry": Geometry(34, 0.25, True),
        "text": Text("ACNE", "acme", "Acme", 1),
    })


def test_every_signal_round_trips_through_a_results_row():
    c = _full_candidate()
    assert set(c.evidence) == set(SIGNALS)  # the test covers every registered signal
    ev = c.evidence_json()
    assert ev == {"similarity": 0.71, "similarity_norm": 0.31, "background": 0.4, "inliers": 34, "coverage": 0.25,
                  "verified": True, "text": "ACNE", "text_brand": "acme", "text_distance": 1}
    back = candidate_from_json(json.loads(json.dumps({"brand": "acme", "mark": "acme-logo", "box": c.box, "evidence": ev})))
    np.testing.assert_array_equal(encode(back), encode(c))
    assert len(encode(c)) == len(feature_names())


def test_missing_signals_encode_as_not_seen_and_old_rows_keep_their_score():
    old = candidate_from_json({"brand": "acme", "mark": "m", "score": 0.62, "box": None})  # a row from before evidence
    assert list(old.evidence) == ["similarity"] and old.evidence["similarity"].value == 0.62
    x = dict(zip(feature_names(), encode(old)))
    assert x["similarity_seen"] == 1 and x["similarity"] == 0.62
    assert x["geometry_seen"] == x["log_inliers"] == x["text_seen"] == 0
    failed = candidate_from_json({"brand": "acme", "mark": "m", "evidence": {"similarity": 0.5, "text": None, "text_error": "timed out after 5 s"}})
    assert failed.evidence["text"] == Text(None, reason="timed out after 5 s")
    assert failed.evidence_json()["text_error"] == "timed out after 5 s"
    with pytest.raises(MarkguardError, match="evidence 'inliers' is 'many', not a number"):
        candidate_from_json({"brand": "a", "evidence": {"similarity": 0.5, "inliers": "many"}})


def test_text_evidence_names_this_brand_or_another():
    lexicon = Lexicon({"acme": ["Acmetex"], "globex": ["Globex"]})
    same = Candidate("acme", "m", None, {"text": text_evidence(OcrRead("ACMETEK", None), lexicon)})
    other = Candidate("globex", "m", None, {"text": text_evidence(OcrRead("ACMETEK", None), lexicon)})
    x_same, x_other = (dict(zip(feature_names(["text"]), encode(c, ["text"]))) for c in (same, other))
    assert x_same["text_same_brand"] == 0.5 and x_same["text_other_brand"] == 0  # one edit: half the strength
    assert x_other["text_same_brand"] == 0 and x_other["text_other_brand"] == 0.5
    unread = text_evidence(OcrRead(None, None, reason="not read: over the batch's OCR budget (25% of photos)"), lexicon)
    assert unread.text is None and encode(Candidate("acme", "m", None, {"text": unread}), ["text"]).tolist() == [1, 0, 0, 0]


def test_normalised_similarity_is_the_background_banks_score():
    from markguard.infer.bank import normalise, reference_bias

    rng = np.random.default_rng(2)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    ref = bank[:1] + 0.1 * rng.normal(size=(1, 8)).astype(np.float32)  # a hub: close to a background region
    ref /= np.linalg.norm(ref)
    bias = float(reference_bias(ref, bank, k=5)[0])
    ev = normalised_similarity(0.8, bias)
    assert ev.background == pytest.approx(bias) and ev.value == pytest.approx(float(normalise(0.8, bias)))
    assert bias > 0.5 and ev.value < 0.8  # a hub keeps less of its raw similarity


# --------------------------------------------------------------------------- text flags and vetoes


def _population(seed=0, n=400):
    """Candidates as a scan with OCR would see them: shape matches with or without text, and text-only candidates.

    Positives: the mark (similarity ~0.7), some with their name read; wordmarks the embedding missed
    (no region matched) read by the OCR. Negatives: ordinary regions (~0.45), and shapes that look like
    a mark (~0.7) whose text names another brand.
    """
    rng = np.random.default_rng(seed)
    cands, labels = [], []
    for _ in range(n):
        kind = rng.choice(["mark", "mark+text", "text-only", "clean", "lookalike+other-text"], p=[0.25, 0.15, 0.1, 0.35, 0.15])
        sim = {"mark": 0.7, "mark+text": 0.7, "clean": 0.45, "lookalike+other-text": 0.72}.get(kind)
        ev = {} if sim is None else {"similarity": Similarity(float(sim + rng.normal(0, 0.07)))}
        if kind in ("mark+text", "text-only"):
            ev["text"] = Text("ADIBAS", "acme", "Acme", int(rng.integers(0, 2)))
        elif kind == "lookalike+other-text":
            ev["text"] = Text("GLOBEX", "globex", "Globex", 0)
        elif rng.random() < 0.5:
            ev["text"] = Text("sale 50%", None)  # text that names no brand
        cands.append(Candidate("acme", None if kind == "text-only" else "acme-logo", None, ev))
        labels.append(kind in ("mark", "mark+text", "text-only"))
    return cands, labels


def test_text_flags_a_wordmark_the_embedding_missed_and_vetoes_a_shape_whose_text_names_another_brand():
    cands, labels = _population()
    combiner = fit_combiner(cands, labels, model_fingerprint=FP)
    policy = Policy(0.5, 0.2, combiner=combiner)
    lexicon = Lexicon({"acme": ["Acmetex"], "globex": ["Globex"]})

    # no region matched any mark of acme (the embedding missed it), but the OCR read its name, misspelt
    missed = add_text_candidates([], text_evidence(OcrRead("ACMETEK", [5, 5, 60, 20]), lexicon), [5, 5, 60, 20])
    status, decided = policy.decide(combiner.apply(missed), None)
    assert (status, decided.brand, decided.mark) == ("flag", "acme", None)

    # a strong shape match of acme, and the same shape in a photo whose text reads another registered brand
    shape = [Candidate("acme", "acme-logo", [0, 0, 9, 9], {"similarity": Similarity(0.74)})]
    plain = combiner.apply(add_text_candidates(shape, text_evidence(OcrRead("50% off", None), lexicon), None))
    vetoed = combiner.apply(add_text_candidates(shape, text_evidence(OcrRead("GLOBEX", None), lexicon), None))
    p_plain = next(c.probability for c in plain if c.brand == "acme")
    p_vetoed = next(c.probability for c in vetoed if c.brand == "acme")
    assert policy.decide(plain, None)[0] == "flag" and p_plain >= 0.5
    assert p_vetoed < 0.2 < p_plain  # the acme match alone no longer flags
    assert "globex" in {c.brand for c in vetoed}  # the text's own brand became a candidate instead


def test_the_combined_probability_separates_better_than_the_similarity_alone():
    train, y_train = _population(seed=3)
    test, y_test = _population(seed=4)
    combiner = fit_combiner(train, y_train, model_fingerprint=FP)

    def auc(scores, y):
        s, y = np.asarray(scores), np.asarray(y, dtype=bool)
        return float((s[y][:, None] > s[~y][None, :]).mean() + 0.5 * (s[y][:, None] == s[~y][None, :]).mean())

    sim_only = [c.evidence["similarity"].value if "similarity" in c.evidence else -1.0 for c in test]
    assert auc(combiner.probabilities(test), y_test) > auc(sim_only, y_test) + 0.1


# --------------------------------------------------------------------------- fit on a labelled scan, save, reload


def _scan_dir(tmp_path, fingerprint=FP):
    """A tiny finished scan: summary.json, results.jsonl with evidence, and its truth CSV."""
    cands, labels = _population(seed=5, n=120)
    out = tmp_path / "scan"
    out.mkdir()
    index = tmp_path / "index"
    index.mkdir()
    (out / "summary.json").write_text(json.dumps({"model": {"fingerprint": fingerprint}, "indexes": [{"path": str(index)}]}))
    rows, truth = [], ["listing_id,brand"]
    for i, (c, pos) in enumerate(zip(cands, labels)):
        lid = f"L{i:04d}"
        match = {"brand": c.brand, "mark": c.mark, "score": 0.5, "box": None, "evidence": c.evidence_json()}
        rows.append(json.dumps({"listing_id": lid, "status": "review", "matches": [match]}))
        truth.append(f"{lid},{'acme' if pos else ''}")
    rows.append(json.dumps({"listing_id": "L9999", "status": "error", "matches": []}))
    (out / "results.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "truth.csv").write_text("\n".join(truth) + "\n")
    return out, index, cands


@pytest.mark.parametrize("isotonic", [False, True])
def test_fit_on_a_labelled_scan_saves_beside_the_index_and_reloads_to_the_same_probabilities(tmp_path, isotonic):
    out, index, cands = _scan_dir(tmp_path)
    combiner, path = calibrate_combiner(out, tmp_path / "truth.csv", isotonic=isotonic)
    assert path == index / "combiner.json"
    again = Combiner.load(index, expect_fingerprint=FP)
    np.testing.assert_array_equal(again.probabilities(cands), combiner.probabilities(cands))
    p = combiner.probabilities(cands)
    assert np.all((p >= 0) & (p <= 1)) and combiner.fitted["candidates"] == 120
    assert (again.isotonic is not None) == isotonic


def test_a_combiner_for_another_model_or_index_is_refused_in_one_line(tmp_path):
    out, index, _ = _scan_dir(tmp_path)
    combiner, _ = calibrate_combiner(out, tmp_path / "truth.csv")
    for call in (lambda: Combiner.load(index, expect_fingerprint="other-model"),
                 lambda: combiner.check(FP, ["other-model"])):
        with pytest.raises(MarkguardError) as e:
            call()
        assert "fitted for model model-fp-1" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.update(version=99), "combiner version 99"),
    (lambda d: d.update(signals=["similarity", "telepathy"]), "are not all known"),
    (lambda d: d.update(weights=d["weights"][:-1]), "'weights' must be"),
    (lambda d: d.update(scale=[0.0] * len(d["scale"])), "'scale' positive"),
    (lambda d: d.update(isotonic={"x": [0.2, 0.1], "y": [0, 1]}), "'isotonic' must be"),
    (lambda d: d.update(format="something"), "not a combiner file"),
])
def test_a_damaged_combiner_file_is_refused_naming_the_field(tmp_path, edit, expected):
    out, index, _ = _scan_dir(tmp_path)
    calibrate_combiner(out, tmp_path / "truth.csv")
    doc = json.loads((index / "combiner.json").read_text())
    edit(doc)
    (index / "combiner.json").write_text(json.dumps(doc))
    with pytest.raises(MarkguardError, match="combiner.json") as e:
        Combiner.load(index)
    assert expected in str(e.value)


def test_fitting_needs_positives_and_negatives():
    c = [Candidate("a", "m", None, {"similarity": Similarity(0.5)})] * 3
    with pytest.raises(MarkguardError, match="needs both"):
        fit_combiner(c, [True] * 3, model_fingerprint=FP)


def test_truth_files_csv_and_jsonl(tmp_path):
    (tmp_path / "t.csv").write_text("listing_id,brand\nA,acme\nA,globex\nB,\n")
    assert read_truth(tmp_path / "t.csv") == {"A": {"acme", "globex"}, "B": set()}
    (tmp_path / "t.jsonl").write_text(json.dumps({"listing_id": "A", "marks": [{"brand": "acme", "registered": True},
                                                                                {"brand": "x", "registered": False}]}) + "\n")
    assert read_truth(tmp_path / "t.jsonl") == {"A": {"acme"}}
    (tmp_path / "bad.csv").write_text("id,label\n")
    with pytest.raises(MarkguardError, match="needs the columns listing_id and brand"):
        read_truth(tmp_path / "bad.csv")


def test_the_policy_on_probabilities_flags_reviews_and_honours_the_allowlist():
    def cand(brand, p):
        return Candidate(brand, "m", None, {}, p)

    policy = Policy(0.6, 0.3, per_brand={"acme": 0.99}, authorized={"acme": ["s1"]}, combiner=object())
    assert policy.thresholds("acme") == (0.6, 0.3)  # a per-brand similarity is not applied to a probability
    assert policy.decide([cand("acme", 0.4), cand("globex", 0.7)], None)[0] == "flag"
    assert policy.decide([cand("acme", 0.4)], None)[0] == "review"
    status, c = policy.decide([cand("acme", 0.9)], "s1")
    assert (status, c.brand) == ("allowed", "acme")
    assert policy.decide([cand("acme", 0.9), cand("globex", 0.35)], "s1")[0] == "review"  # another brand still counts
    assert policy.decide([], None) == ("pass", None)
    with pytest.raises(MarkguardError, match="review 0.7 and flag 0.5"):
        Policy(0.5, 0.7, combiner=object())
    with pytest.raises(MarkguardError, match="0 <= review <= flag <= 1"):
        Policy(0.5, -1.0, combiner=object())  # similarity thresholds are no probabilities


def test_calibrate_cli_fits_the_combiner_and_refuses_a_scan_by_another_model(tmp_path, capsys):
    from markguard.checkpoint import DEFAULT_MODEL_DIR, load_card
    from markguard.cli import main

    fingerprint = load_card(DEFAULT_MODEL_DIR).fingerprint
    out, index, cands = _scan_dir(tmp_path, fingerprint=fingerprint)
    argv = ["calibrate", str(out), "--truth", str(tmp_path / "truth.csv"), "--model", str(DEFAULT_MODEL_DIR), "--combiner"]
    assert main(argv + ["--dry-run"]) == 0 and not (index / "combiner.json").exists()
    assert json.loads(capsys.readouterr().out)["combiner"] is None
    assert main(argv + ["--isotonic"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["combiner"] == str(index / "combiner.json") and printed["fitted"]["candidates"] == 120
    assert Combiner.load(index, expect_fingerprint=fingerprint).isotonic is not None
    (index / "combiner.json").unlink()
    (out / "summary.json").write_text((out / "summary.json").read_text().replace(fingerprint, "f" * 16))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "fitted for model ffffffffffffffff, not this model" in err and "\n" not in err
    assert not (index / "combiner.json").exists()  # nothing written for the wrong model


# --------------------------------------------------------------------------- the evidence stage


def test_collect_reads_the_gated_photos_and_adds_what_the_text_names():
    from PIL import Image

    from markguard.infer.decide import Match
    from markguard.infer.evidence import collect
    from markguard.infer.ocr import OcrConfig, OcrReader

    class Engine:  # reads "ADIBAS" in whatever it is shown, and counts the reads
        calls = 0

        def __call__(self, array, **kw):
            Engine.calls += 1
            return [[None, "ADIBAS", 0.95]], [0.0]

    lexicon = Lexicon({"adidas": ["adidas"], "globex": ["Globex"]})
    photos = [Image.new("RGB", (100, 80)) for _ in range(4)]
    matches = [[Match("globex", "g-logo", 0.81, [10, 10, 50, 40])],  # a shape of globex; the text says adidas
               [Match("adidas", "a-logo", 0.55, [0, 0, 30, 30])],
               [],  # nothing matched: the whole photo is read
               [Match("globex", "g-logo", 0.30, [5, 5, 20, 20])]]
    reader = OcrReader(OcrConfig(where="candidates", lines=1), engine=Engine())
    out = collect(photos, matches, lexicon=lexicon, reader=reader)
    assert Engine.calls == 4  # every photo, each in its best region (the budget is per photo, not a share of the batch)
    assert [c.brand for c in out[0]] == ["globex", "adidas"]  # the text's brand became a candidate
    assert out[0][0].evidence["text"].brand == "adidas" and out[0][1].mark is None and out[0][1].box == [10, 10, 50, 40]
    assert out[1][0].evidence["text"] == Text("ADIBAS", "adidas", "adidas", 1)
    assert [c.brand for c in out[2]] == ["adidas"] and out[2][0].box is not None  # nothing matched: the whole photo was read
    assert [c.brand for c in out[3]] == ["globex", "adidas"]

    everything = OcrReader(OcrConfig(where="candidates"), engine=Engine())
    combiner = fit_combiner(*_population(), model_fingerprint=FP)
    out = collect(photos, matches, lexicon=lexicon, reader=everything, combiner=combiner)
    assert all(c.probability is not None for cands in out for c in cands)
    assert Policy(0.5, 0.2, combiner=combiner).decide(out[2], None)[0] == "flag"


def test_collect_attaches_geometric_evidence_from_a_verification():
    from markguard.infer.decide import Match
    from markguard.infer.evidence import collect, geometry
    from markguard.infer.verify import Verification

    matches = [[Match("acme", "a", 0.7, [0, 0, 9, 9]), Match("globex", "g", 0.5, [0, 0, 9, 9])]]
    checked = geometry(Verification(30, 41, (0.0, 0.0, 9.0, 9.0), None), reference_points=120)
    out = collect([None], matches, verified=[[checked, None]])
    assert out[0][0].evidence_json() == {"similarity": 0.7, "inliers": 30, "coverage": 0.25, "verified": True}
    assert "geometry" not in out[0][1].evidence  # not checked: no evidence, not a failed check


def test_a_match_only_the_text_found_can_be_flagged_by_a_combiner_with_the_text_signal():
    """The wordmark the embedding missed: no mark, no similarity (``similarity_seen`` 0), the text naming the brand."""
    from markguard.infer.decide import Policy
    from markguard.infer.results import Match

    # weights on standardised features: similarity_seen, similarity, text_seen, text_read, text_same_brand, text_other_brand;
    # a fit on a scan holding text-only matches learns what no similarity means (here: similarity_seen offsets it)
    c = Combiner(["similarity", "text"], [-5.0, 1.0, 0.0, 0.0, 3.0, -1.0], -1.0, [1.0, 0.5, 0.5, 0.5, 0.1, 0.1],
                 [1.0, 0.1, 0.5, 0.5, 0.3, 0.3], "f" * 16)
    text = {"text": "ADIBAS", "text_brand": "adidas", "text_distance": 1}
    only_text = Match("adidas", None, 0.0, [10, 10, 60, 30], evidence=dict(text))
    weak_logo = Match("puma", "puma-cat", 0.45, [0, 0, 40, 40], evidence={"similarity": 0.45, **text})
    c.score_matches([only_text, weak_logo])
    assert only_text.probability > 0.5 > weak_logo.probability  # the text names adidas, and not puma
    status, decider = Policy(0.5, 0.2, combiner=c).decide([weak_logo, only_text], None)
    assert (status, decider.brand, decider.mark) == ("flag", "adidas", None)
    # as results.jsonl holds it, and back
    back = Match.from_json(only_text.to_json())
    assert back.mark is None and back.probability == pytest.approx(only_text.probability, abs=1e-4)
