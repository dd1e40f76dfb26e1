"""The shipped default combiner and the evidence rules: loaded when an index has none, overridden by a user's, refused for
another model; text that flags on its own and vetoes a shape; a failed check that lowers a decision; bad combiner files;
per-photo OCR that gives the same evidence however photos are batched."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from markguard.errors import MarkguardError
from markguard.infer.combine import COMBINER_FILE, Combiner, digest, fit_combiner, load_for_scan
from markguard.infer.decide import Policy
from markguard.infer.evidence import Candidate, Geometry, Similarity, Text
from markguard.infer.results import Match

FP = "a1b2c3d4e5f60718"


def _combiner(fp: str = FP, **kw) -> Combiner:
    """A combiner fitted on a small population where similarity, verification and the text all speak."""
    cands, labels = [], []
    for i in range(60):
        pos = i % 2 == 0
        sim = 0.6 + 0.3 * pos + 0.01 * (i % 7)
        ev = {"similarity": Similarity(sim)}
        if i % 3 == 0:
            ev["geometry"] = Geometry(40 if pos else 3, 0.5 if pos else 0.02, pos)
        if i % 4 == 0:
            ev["text"] = Text("ACME", "acme" if pos else "globex", "ACME", 0)
        cands.append(Candidate("acme", "a", [0, 0, 10, 10], ev))
        labels.append(pos)
    return fit_combiner(cands, labels, model_fingerprint=fp, signals=["similarity", "geometry", "text"], **kw)


def _model(tmp_path: Path, combiner: Combiner | None, fp: str = FP, sha: str | None = None):
    """A model folder whose card names ``combiner`` as its default, and a searcher of an index built by it."""
    model = tmp_path / "model"
    model.mkdir(parents=True, exist_ok=True)
    thresholds = {"flag": 0.9, "review": 0.8}
    if combiner is not None:
        path = combiner.save(model / "combiner.json")
        thresholds["combiner"] = {"file": "combiner.json", "sha256": sha or digest(path)}
    index = tmp_path / "index"
    index.mkdir(parents=True, exist_ok=True)
    card = SimpleNamespace(fingerprint=fp, thresholds=thresholds, regions={})  # a logo model's card (model_kind reads regions)
    return SimpleNamespace(path=index, model_dir=model, card=card, bias=None, bank=None)


OPTS = SimpleNamespace(verify=True, ocr=True)


def test_the_models_default_combiner_is_used_when_the_index_has_none(tmp_path):
    searcher = _model(tmp_path, _combiner())
    combiner, path = load_for_scan("auto", [searcher], OPTS)
    assert path == searcher.model_dir / "combiner.json" and combiner.model_fingerprint == FP
    assert load_for_scan(None, [searcher], OPTS) == (None, None)  # --no-combiner
    # a model whose card names no default: thresholds on the similarity, as before
    assert load_for_scan("auto", [_model(tmp_path / "plain", None)], OPTS) == (None, None)


def test_a_users_combiner_beside_the_index_overrides_the_default(tmp_path):
    searcher = _model(tmp_path, _combiner())
    mine = _combiner(l2=10.0)
    mine.save(searcher.path / COMBINER_FILE)
    combiner, path = load_for_scan("auto", [searcher], OPTS)
    assert path == searcher.path / COMBINER_FILE and combiner.weights == mine.weights


def test_a_default_combiner_of_another_model_or_altered_is_refused_in_one_line(tmp_path):
    searcher = _model(tmp_path, _combiner(fp="ffffffffffffffff"))
    with pytest.raises(MarkguardError) as e:
        load_for_scan("auto", [searcher], OPTS)
    msg = str(e.value)
    assert "\n" not in msg and "the model's default combiner" in msg and "fit_defaults.py" in msg and "--no-combiner" in msg
    altered = _model(tmp_path / "x", _combiner(), sha="0" * 64)
    with pytest.raises(MarkguardError, match="sha256 differs.*--no-combiner"):
        load_for_scan("auto", [altered], OPTS)
    # a user's combiner for another model names itself and the refit
    user = _model(tmp_path / "u", None)
    _combiner(fp="ffffffffffffffff").save(user.path / COMBINER_FILE)
    with pytest.raises(MarkguardError, match=r"index/combiner.json: fitted for model ffffffffffffffff.*calibrate --combiner.*--no-combiner"):
        load_for_scan("auto", [user], OPTS)


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(fitted=[1, 2]), "'fitted' must be an object"),
    (lambda d: d.update(signals=[{}]), "signals"),
    (lambda d: d.update(isotonic={"x": [0.0, 0.5, 1.0], "y": [0.0, 0.5, 1e300]}), "knots must lie in [0, 1]"),
    (lambda d: d.update(isotonic={"x": [-3.0, 0.5], "y": [0.0, 1.0]}), "knots must lie in [0, 1]"),
    (lambda d: d.update(thresholds={"flag": 0.2, "review": 0.5}), "0 <= review <= flag <= 1"),
    (lambda d: d.update(weights="x"), "'weights' must be"),
])
def test_bad_combiner_files_are_one_line_naming_the_file(tmp_path, edit, words):
    doc = _combiner().to_json()
    edit(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(MarkguardError) as e:
        Combiner.load(path)
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_combiner_never_gives_a_probability_outside_0_1():
    c = _combiner(isotonic=True)
    cands = [Candidate("acme", "a", None, {"similarity": Similarity(s)}) for s in (-5.0, 0.0, 0.7, 5.0)]
    p = c.probabilities(cands)
    assert ((p >= 0) & (p <= 1)).all()


# --------------------------------------------------------------------------- the evidence rules


def _text(brand, text="ACME", distance=0):
    return {"text": text, "text_brand": brand, "text_distance": distance}


@pytest.mark.parametrize("combiner", [None, "fitted"])
def test_a_read_naming_a_registered_brand_flags_the_photo_on_its_own(combiner):
    c = _combiner() if combiner else None
    policy = Policy(0.9, 0.8, combiner=c) if c is None else Policy(0.99, 0.98, combiner=c)
    only_text = Match("acme", None, 0.0, [5, 5, 50, 20], None, _text("acme", "ACNE", 1))
    if c is not None:
        c.score_matches([only_text])
    status, m = policy.decide([only_text], None)
    assert status == "flag" and m.box == [5, 5, 50, 20]
    # the same photo without the read: nothing to decide on
    assert policy.decide([Match("acme", None, 0.0, None, None, {"text": None})], None)[0] == "pass"


@pytest.mark.parametrize("combiner", [None, "fitted"])
def test_a_read_naming_another_brand_vetoes_the_shape_match_there(combiner):
    c = _combiner() if combiner else None
    shape = Match("globex", "g-logo", 0.97, [10, 10, 60, 40], None, {"similarity": 0.97, **_text("acme")})
    name = Match("acme", None, 0.0, [12, 12, 58, 30], None, _text("acme"))
    plain = Match("globex", "g-logo", 0.97, [10, 10, 60, 40], None, {"similarity": 0.97})
    policy = Policy(0.9, 0.8) if c is None else Policy(0.5, 0.2, combiner=c)
    if c is not None:
        for m, u in zip([shape, plain], c.score_matches([shape, plain])):
            m.unchecked = u
    assert policy.decide([plain], None)[0] == "flag"  # unread, the shape flags
    assert policy.value(shape) < policy.thresholds("globex")[1]  # read as another brand: below review
    status, m = policy.decide([shape, name], None)
    assert status == "flag" and m.brand == "acme" and m.box == [12, 12, 58, 30]  # the brand the text names decides


def test_a_failed_verification_lowers_the_decision_and_moves_the_box_without_a_combiner():
    policy = Policy(0.95, 0.9)
    unchecked = Match("acme", "a", 0.96, [0, 0, 10, 10], None, {"similarity": 0.96})
    failed = Match("acme", "a", 0.96, [0, 0, 10, 10], None, {"similarity": 0.96, "inliers": 3, "coverage": 0.01, "verified": False})
    assert policy.decide([unchecked], None)[0] == "flag"
    assert policy.value(failed) < policy.value(unchecked)
    assert policy.decide([failed], None)[0] == "review"  # one review band lower: no flag on a failed check
    # another region of the same brand that verified decides the photo, with its box
    verified = Match("acme", "a", 0.955, [40, 40, 60, 60], None, {"similarity": 0.93, "inliers": 40, "coverage": 0.4, "verified": True})
    status, m = policy.decide([failed, verified], None)
    assert status == "flag" and m.box == [40, 40, 60, 60]


def test_a_failed_verification_scores_below_unchecked_whatever_the_combiners_weights():
    from markguard.infer.decide import decide_rows
    from markguard.infer.decode import Batch

    c = _combiner()
    c.weights = [abs(w) for w in c.weights]  # a (bad) fit in which every geometry feature, "checked" included, raises
    failed = Match("acme", "a", 0.9, [0, 0, 10, 10], None, {"similarity": 0.9, "inliers": 2, "coverage": 0.0, "verified": False})
    unchecked = Match("acme", "a", 0.9, [0, 0, 10, 10], None, {"similarity": 0.9})
    item = SimpleNamespace(listing_id="L1", image="L1.jpg", seller_id=None)
    batch = Batch([item, item], None, [0, 1], [], [], [], {})
    rows = decide_rows(batch, [[failed], [unchecked]], Policy(0.5, 0.2, combiner=c), 5)
    p_failed, p_unchecked = failed.probability, unchecked.probability
    assert p_failed < p_unchecked  # the probability written is the one that decided
    assert rows[0].matches[0].probability == pytest.approx(p_failed) if rows[0].matches else True


def test_evidence_rules_hold_on_bank_normalised_scores_as_on_raw_similarities():
    """Thresholds are raw similarities: an index with a bank (score normalised) is judged on the raw similarity."""
    policy = Policy(0.95, 0.9)
    raw = Match("acme", "a", 0.96, [0, 0, 10, 10], None, {"similarity": 0.96})
    banked = Match("acme", "a", 0.40, [0, 0, 10, 10], None, {"similarity": 0.96, "similarity_norm": 0.40, "background": 0.93})
    assert policy.decide([raw], None)[0] == policy.decide([banked], None)[0] == "flag"
    # verification raised the normalised score by its strength: the raw one rises alike
    verified = Match("acme", "a", 0.70, [0, 0, 10, 10], None, {"similarity": 0.92, "similarity_norm": 0.40, "background": 0.9,
                                                                 "inliers": 30, "coverage": 0.3, "verified": True})
    assert policy.base(verified) == pytest.approx(0.92 + 0.08 * 0.5)


# --------------------------------------------------------------------------- text read per photo


class TextEngine:
    """Stands in for RapidOCR's detector and recogniser: the same line found in every photo it is shown."""

    def __init__(self):
        self.photos = 0

    def text_det(self, bgr):
        self.photos += 1
        h, w = bgr.shape[:2]
        return [[[0, 0], [w // 2, 0], [w // 2, h // 4], [0, h // 4]]], 0.0

    def text_rec(self, crops):
        return [("ADIBAS", 0.9)] * len(crops), 0.0


def _read(photos, matches):
    from markguard.infer.evidence import collect
    from markguard.infer.ocr import OcrConfig, OcrReader
    from markguard.infer.textmatch import Lexicon

    engine = TextEngine()
    out = collect(photos, matches, lexicon=Lexicon({"adidas": ["adidas"], "globex": ["Globex"]}),
                  reader=OcrReader(OcrConfig(min_line_px=1), engine=engine))
    return out, engine


def test_every_photo_is_read_where_its_text_is_and_the_same_whatever_its_batch():
    photos = [Image.new("RGB", (200, 160), (i * 30, 90, 90)) for i in range(6)]
    matches = [[Match("globex", "g", 0.9, [0, 0, 100, 40])], [], [Match("adidas", "a", 0.4, [120, 100, 190, 150])],
               [Match("globex", "g", 0.2, [150, 120, 190, 150])], [], []]
    whole, engine = _read(photos, matches)
    assert engine.photos == 6  # every photo, matched or not: where to read comes from where text is
    assert [c.brand for c in whole[1]] == ["adidas"] and whole[1][0].mark is None  # text found what the embedding missed
    assert whole[0][0].evidence["text"].brand == "adidas"  # read at the globex region: a veto's evidence
    assert whole[3][0].evidence["text"] == Text(None)  # read elsewhere in the photo: nothing said of this region
    # batches of two, or the photos of one shard, give each photo the same evidence
    split = [c for i in range(0, 6, 2) for c in _read(photos[i:i + 2], matches[i:i + 2])[0]]
    shard = {i: c for i, c in zip(range(1, 6, 2), _read(photos[1::2], matches[1::2])[0])}
    assert split == whole
    assert all(shard[i] == whole[i] for i in shard)
