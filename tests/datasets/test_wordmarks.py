"""Wordmark rendering: one transparent PNG a (name, font), in the brand's colour, never tofu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from markguard.cli import main
from markguard.datasets.registry import load_gallery
from markguard.datasets.wordmarks import (
    DEFAULT_FONT,
    brand_id_for,
    find_fonts,
    read_names,
    render_wordmark,
    render_wordmarks,
)
from markguard.errors import MarkguardError



def _system_font() -> Path:
    fonts = find_fonts()
    if not fonts:
        pytest.skip("no .ttf/.otf fonts on this machine")
    return fonts[0]


def test_find_fonts_lists_ttf_and_otf_sorted(tmp_path):
    for rel in ("b/Beta.otf", "a/Alpha.TTF", "a/readme.txt", "c/deep/Gamma.ttf"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_fonts([tmp_path, tmp_path / "missing"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/Alpha.TTF", "b/Beta.otf", "c/deep/Gamma.ttf"]


def test_wordmark_is_transparent_and_in_the_brand_colour():
    img = render_wordmark("Acme", DEFAULT_FONT, size=48, color="#E4002B")
    px = np.asarray(img)
    assert img.mode == "RGBA"
    assert px[0, 0, 3] == 0  # background stays transparent
    ink = px[px[..., 3] == 255]
    assert len(ink) > 50
    assert {tuple(p) for p in ink[:, :3]} == {(0xE4, 0x00, 0x2B)}
    assert img.width > img.height  # a word, not a glyph box


def test_one_file_per_name_and_font(tmp_path):
    fonts = [DEFAULT_FONT, _system_font()]
    run = render_wordmarks({"acme": ("Acme", "E4002B"), "globex": "Globex"}, tmp_path, fonts=fonts, size=32)
    assert run.skipped == []
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    stem = fonts[1].stem
    assert names == sorted(["acme/acme-wm-default.png", f"acme/acme-wm-{stem}.png", "globex/globex-wm-default.png", f"globex/globex-wm-{stem}.png"])
    globex = np.asarray(Image.open(tmp_path / "globex" / "globex-wm-default.png"))
    assert {tuple(p) for p in globex[globex[..., 3] == 255][:, :3]} == {(0, 0, 0)}  # no colour given: black
    assert [w.brand for w in run.written] == ["acme", "acme", "globex", "globex"]


def test_missing_glyphs_and_broken_fonts_are_skipped_with_a_reason(tmp_path):
    broken = tmp_path / "Broken.ttf"
    broken.write_bytes(b"not a font")
    run = render_wordmarks(["株式会社", "Initech"], tmp_path / "out", fonts=[DEFAULT_FONT, broken], size=32)
    assert [w.path.name for w in run.written] == ["initech-wm-default.png"]
    reasons = {(name, font): reason for name, font, reason in run.skipped}
    assert "no glyph for '株式会社'" in reasons[("株式会社", "default")]
    assert ("Initech", "Broken") in reasons


def test_same_font_stem_twice_does_not_overwrite(tmp_path):
    font = _system_font()
    copy = tmp_path / "other" / font.name
    copy.parent.mkdir()
    copy.write_bytes(font.read_bytes())
    run = render_wordmarks(["Acme"], tmp_path / "out", fonts=[font, copy], size=24)
    assert sorted(w.path.name for w in run.written) == [f"acme-wm-{font.stem}-2.png", f"acme-wm-{font.stem}.png"]


def test_fonts_per_brand_picks_a_deterministic_subset_per_brand(tmp_path):
    font = _system_font()
    fonts = []
    for i in range(6):  # six copies of one real font under distinct names
        copy = tmp_path / "fonts" / f"Face{i}{font.suffix}"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(font.read_bytes())
        fonts.append(copy)
    brands = [f"Brand {i}" for i in range(8)]
    run = render_wordmarks(brands, tmp_path / "a", fonts=fonts, size=20, fonts_per_brand=2)
    again = render_wordmarks(brands, tmp_path / "b", fonts=fonts, size=20, fonts_per_brand=2)
    per_brand: dict[str, list[str]] = {}
    for w in run.written:
        per_brand.setdefault(w.brand, []).append(w.font)
    assert all(len(v) == 2 for v in per_brand.values()) and len(per_brand) == 8
    assert [(w.brand, w.font) for w in again.written] == [(w.brand, w.font) for w in run.written]
    assert len({f for v in per_brand.values() for f in v}) > 2  # brands do not all share the same two fonts


def test_read_names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# brands to protect\nAcme Corp #e4002b\n\nGlobex\nCafé Noir\n")
    assert read_names(path) == {"acme-corp": ("Acme Corp", "E4002B"), "globex": ("Globex", None), "cafe-noir": ("Café Noir", None)}
    path.write_text("# nothing\n")
    with pytest.raises(MarkguardError, match=r"names\.txt: no brand names"):
        read_names(path)


def test_brand_id_for():
    assert brand_id_for("Ben & Jerry's") == "ben-jerry-s"
    assert brand_id_for("Citroën ÖL") == "citroen-ol"
    assert brand_id_for("株式会社") == "株式会社"
    with pytest.raises(MarkguardError, match="no letters or digits"):
        brand_id_for("&&")


def test_cli_wordmarks_from_names_and_from_gallery(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("Acme Corp #E4002B\n")
    out = tmp_path / "g"
    assert main(["data", "wordmarks", "--names", str(names), "--out", str(out), "--max-fonts", "1", "--size", "24"]) == 0
    assert len(list((out / "acme-corp").glob("acme-corp-wm-*.png"))) == 1
    assert load_gallery(out).brands["acme-corp"].name == "Acme Corp"

    # from a gallery: its ids and display names, written back beside its marks
    (out / "brands.yaml").write_text(yaml.safe_dump({"brands": {"acme-corp": {"name": "Acme Corp", "authorized_sellers": ["s1"]}}}))
    assert main(["data", "wordmarks", "--from-gallery", str(out), "--out", str(out), "--max-fonts", "2", "--size", "24"]) == 0
    assert load_gallery(out).brands["acme-corp"].authorized_sellers == ["s1"]
    assert "wordmarks of 1 brands" in capsys.readouterr().out
