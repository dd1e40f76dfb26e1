"""The real-photo bench's wordmark tier: registered names in one font in the gallery, re-typeset on real photos."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from markguard.datasets.realbench import TRUTH_COLUMNS
from markguard.datasets.wordbench import WordConfig, build_wordbench, read_truth
from markguard.datasets.wordmarks import find_fonts
from markguard.infer.textmatch import Lexicon

REGISTERED = ["kubernetes", "grafana", "ballerina", "clickhouse", "elixir", "go"]


@pytest.fixture
def bench(tmp_path):
    b = tmp_path / "bench"
    for name in REGISTERED:
        (b / "gallery" / name).mkdir(parents=True)
        Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(b / "gallery" / name / f"{name}-original.png")
    (b / "listings").mkdir()
    with open(b / "truth.csv", "w", newline="") as f:
        csv.writer(f).writerow(TRUTH_COLUMNS)
    (b / "bench.json").write_text(json.dumps({"gallery_brands": REGISTERED, "unregistered_brands": ["angularjs", "blender"],
                                              "listings_per_tier": {}}))
    photos = tmp_path / "photos" / "pkg"
    photos.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (900, 700), (40 + 80 * i, 120, 90)).save(photos / f"p{i}.jpg")
    return b, photos


@pytest.mark.skipif(len(find_fonts()) < 2, reason="the wordmark tier needs two text fonts on the machine")
def test_the_wordmark_tier_names_registered_brands_in_other_fonts(bench, tmp_path):
    b, photos = bench
    info = build_wordbench(b, [photos], tmp_path / "out", cfg=WordConfig(brands=3, wordmark=4, swap=4, unregistered=2, none=2))
    truth = read_truth(tmp_path / "out" / "truth.csv")
    tiers = [t.tier for t in truth.values()]
    assert {t: tiers.count(t) for t in set(tiers)} == {"wordmark": 4, "wordmark-swap": 4, "word-unregistered": 2, "word-none": 2}
    chosen = info["wordmarks"]["brands"]
    assert len(chosen) == 3 and "go" not in chosen  # two letters allow no swap: not a wordmark of the tier
    for b_ in chosen:
        assert (tmp_path / "out" / "gallery" / b_ / f"{b_}-wordmark.png").is_file()
    lexicon = Lexicon({r: [r] for r in REGISTERED})
    for lid, row in truth.items():
        word = info["wordmarks"]["words"][lid]
        assert word["font"] != "DejaVuSans-Bold" and (tmp_path / "out" / "listings" / f"{lid}.jpg").is_file()
        w, h = Image.open(tmp_path / "out" / "listings" / f"{lid}.jpg").size
        assert row.box is not None and 0 <= row.box[0] < row.box[2] <= w and 0 <= row.box[1] < row.box[3] <= h
        best = lexicon.best(word["text"])
        if row.tier.startswith("wordmark"):  # exact or one swap away: still the brand's name to the text match
            assert best is not None and best.brand == row.brand
        else:  # an unregistered brand's name or a made-up word names no registered brand
            assert best is None
    with pytest.raises(Exception, match="not empty"):
        build_wordbench(b, [photos], tmp_path / "out", cfg=WordConfig(brands=3))
