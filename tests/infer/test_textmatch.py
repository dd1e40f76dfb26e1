"""Text match: look-alike folding, the length-scaled distance policy, and the lexicon against brute force."""

from __future__ import annotations

import random

import pytest

from markguard.infer.textmatch import Lexicon, TextMatch, edit_distance, fold, max_distance

BRANDS = {
    "adidas": ["adidas", "Adidas Originals"],
    "nike": ["Nike"],
    "aldi": ["ALDI"],
    "cocacola": ["Coca-Cola"],
    "hornet": ["Hornet"],
    "wolfskin": ["Jack Wolfskin"],
    "starmark": ["★"],  # a brand whose only name is a symbol: never text-matched
}


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon(BRANDS)


def _brands(lexicon: Lexicon, text: str) -> list[str]:
    return [m.brand for m in lexicon.match(text)]


@pytest.mark.parametrize("read", ["adidas", "ADIDAS", "Adldas", "ADIBAS", "AD1DAS", "adidás", "aclidas", "Adidsa", "ADIDA$"])
def test_swapped_and_look_alike_spellings_point_at_the_brand(lexicon, read):
    assert _brands(lexicon, read) == ["adidas"]


@pytest.mark.parametrize("read", ["aldi", "mike", "bike", "nice", "adidasxyz", "abibas"])
def test_similar_but_different_words_do_not(lexicon, read):
    # "aldi" is its own brand, not adidas; four-letter names need an exact match, so "mike" is not nike;
    # "abibas" is two edits from a six-letter name, past the one it is allowed
    assert "adidas" not in _brands(lexicon, read) and "nike" not in _brands(lexicon, read)


def test_short_names_need_an_exact_match_after_folding(lexicon):
    assert _brands(lexicon, "NIKE") == ["nike"] and _brands(lexicon, "N1KE") == ["nike"]  # folded: exact
    assert _brands(lexicon, "NIKEE") == [] and _brands(lexicon, "NKE") == []  # one edit: not for four letters
    # except two neighbours swapped, a typo no real word makes: "NKIE" and "INKE" are Nike, "ADLI" is Aldi
    assert _brands(lexicon, "NKIE") == ["nike"] and _brands(lexicon, "INKE") == ["nike"] and _brands(lexicon, "ADLI") == ["aldi"]
    assert lexicon.best("NKIE").distance == 1 and _brands(lexicon, "NIEK") == ["nike"] and _brands(lexicon, "KINE") == []
    # nor for a four-letter read of a longer name: "Sano" would otherwise be "Osano", "Tesa" "Tesla"
    lx = Lexicon({"osano": ["Osano"], "tesla": ["Tesla"]})
    assert lx.match("Sano") == [] and lx.match("Tesa") == [] and [m.brand for m in lx.match("Tes1a")] == ["tesla"]
    assert [max_distance(n) for n in (2, 4, 5, 8, 9, 12, 13, 30)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_names_with_spaces_and_punctuation_match_however_the_words_are_split(lexicon):
    for read in ("Coca-Cola", "COCA COLA", "cocacola", "Coca Cola Zero"):
        assert _brands(lexicon, read) == ["cocacola"], read
    m = lexicon.best("genuine JACK WOLFSK1N jacket")
    assert m == TextMatch("wolfskin", "Jack Wolfskin", "JACK WOLFSK1N", 0)


def test_a_two_letter_look_alike_made_by_the_swap_itself_does_not_hide_the_name():
    # "Falbrnio" is "Falbrino" with two letters swapped, but folds "rn" to "m"; "Kclmilo" folds "cl" to "d"
    lx = Lexicon({"falbrino": ["Falbrino"], "kelmilo": ["Kelmilo"], "modern": ["Modern"]})
    assert [m.brand for m in lx.match("Falbrnio")] == ["falbrino"] and [m.brand for m in lx.match("Kclmilo")] == ["kelmilo"]
    assert lx.best("Falbrnio").distance == 1 and lx.best("Modem").brand == "modern"  # "Modem" is "Modern" read with "rn" as "m"


def test_cased_look_alikes_fold_one_case_only(lexicon):
    assert fold("rn") == "m" and fold("RN") == "rn"  # lower-case rn reads as m, capitals do not
    assert fold("cl") == "d" and fold("vv") == "w" == fold("VV")
    # the name folds in every case it may be printed in: "HORNET" and "homet" both name it, exactly
    assert [(m.brand, m.distance) for m in lexicon.match("HORNET")] == [("hornet", 0)]
    assert [(m.brand, m.distance) for m in lexicon.match("homet")] == [("hornet", 0)]


def test_empty_or_symbol_only_text_is_no_evidence(lexicon):
    for read in ("", None, "   ", "!!!", "★ ★", "--- ///", "$$"):
        assert lexicon.match(read) == [], read


def test_a_brand_with_no_readable_name_is_not_text_matched(lexicon):
    assert "starmark" not in lexicon.brands and _brands(lexicon, "★") == []
    assert Lexicon({"x": ["X"]}).brands == set()  # one letter would match any stray letter read
    assert Lexicon.from_brands({"acme": {}, "blank": {"name": "✓"}}).brands == {"acme"}  # the name defaults to the id


def test_best_match_prefers_fewer_edits_then_the_longer_name():
    lx = Lexicon({"adidas": ["adidas"], "adibas": ["adibas"]})  # a brand registered under the look-alike itself
    assert [(m.brand, m.distance) for m in lx.match("ADIBAS")] == [("adibas", 0), ("adidas", 1)]


def _osa_reference(a: str, b: str) -> int:
    """Optimal string alignment distance, the textbook full-table way."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_edit_distance_matches_the_reference_and_its_limit():
    rng = random.Random(0)
    for _ in range(400):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 8)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 8)))
        ref = _osa_reference(a, b)
        assert edit_distance(a, b) == ref
        assert edit_distance(a, b, limit=2) == min(ref, 3)


def test_lexicon_finds_what_brute_force_finds():
    """The deletion index may only save work: it must find every name a full comparison finds."""
    rng = random.Random(1)
    letters = "abcdemnorst"
    names = {f"b{i}": ["".join(rng.choice(letters) for _ in range(rng.randint(2, 14)))] for i in range(60)}
    lx = Lexicon(names)
    folded = {b: (fold(n), fold(n.upper())) for b, (n,) in names.items()}
    for _ in range(300):
        base = rng.choice(list(names.values()))[0]
        read = list(base)
        for _ in range(rng.randint(0, 3)):  # a few random edits of a registered name, or random text
            pos = rng.randrange(len(read) + 1)
            op = rng.choice("ids")
            if op == "i":
                read.insert(pos, rng.choice(letters))
            elif read and pos < len(read):
                read[pos:pos + 1] = [] if op == "d" else [rng.choice(letters)]
        read = "".join(read) if rng.random() < 0.8 else "".join(rng.choice(letters) for _ in range(rng.randint(2, 12)))
        expected = {b for b, vs in folded.items() for v in vs  # a name folds per case
                    for r in (fold(read), fold(read, pairs=False))  # and a read with and without its two-letter look-alikes
                    # the distance is at least the length difference: the full comparison is skipped only where it cannot match
                    if abs(len(r) - len(v)) <= min(max_distance(len(v)), max_distance(len(r)))
                    and _osa_reference(r, v) <= min(max_distance(len(v)), max_distance(len(r)))
                    or (3 <= len(r) == len(v) <= 4 and sorted(r) == sorted(v) and _osa_reference(r, v) == 1)}  # a swap of neighbours
        assert {m.brand for m in lx.match(read)} == expected, read


def test_an_index_carries_the_brands_names_for_the_scans_text_match(tmp_path):
    import yaml

    from markguard.datasets.synth import make_marks, write_gallery
    from markguard.infer.build import build_index, read_index_meta
    from test_scan import make_model

    gallery = write_gallery(make_marks(2, 1, seed=1), tmp_path / "gallery")
    doc = yaml.safe_load((gallery / "brands.yaml").read_text())
    doc["brands"]["brand001"].update(aliases=["Globex Corp"], wordmarks=["GLOBEX"])
    (gallery / "brands.yaml").write_text(yaml.safe_dump(doc))
    build_index(gallery, tmp_path / "idx", model=make_model(tmp_path / "model"), device="cpu")
    brands = read_index_meta(tmp_path / "idx")["brands"]
    assert brands["brand001"]["aliases"] == ["Globex Corp"] and brands["brand001"]["wordmarks"] == ["GLOBEX"]
    assert [m.brand for m in Lexicon.from_brands(brands).match("GL0BEX")] == ["brand001"]
