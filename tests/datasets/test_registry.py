"""The brand registry: brands.yaml validation and the gallery check (unreadable, empty, duplicate, tiny)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from markguard.cli import main
from markguard.datasets.registry import (
    check_gallery,
    flatten_gray,
    hamming_pairs,
    image_hashes,
    load_gallery,
    merge_brand_names,
    thumbnail_vector,
)
from markguard.errors import MarkguardError

SQUARE = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M4 4h16v16H4z"/></svg>'


def _mark(path: Path, shape: str, size=128, *, color=(0, 0, 0), mode="RGB", fmt=None) -> Path:
    """A simple, distinct picture: each ``shape`` draws something different."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bg = (255, 255, 255, 0) if mode == "RGBA" else (255, 255, 255)
    img = Image.new(mode, (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size
    ink = color + (255,) if mode == "RGBA" else color
    if shape == "circle":
        d.ellipse((s * 0.2, s * 0.2, s * 0.8, s * 0.8), fill=ink)
    elif shape == "bars":
        for i in range(0, s, s // 8):
            d.rectangle((i, 0, i + s // 16, s), fill=ink)
    elif shape == "triangle":
        d.polygon([(s * 0.5, s * 0.1), (s * 0.9, s * 0.9), (s * 0.1, s * 0.9)], fill=ink)
    elif shape == "cross":
        d.rectangle((s * 0.4, 0, s * 0.6, s), fill=ink)
        d.rectangle((0, s * 0.1, s, s * 0.3), fill=ink)
    img.save(path, format=fmt)
    return path


def _gallery(root: Path) -> Path:
    _mark(root / "acme" / "logo.png", "circle")
    _mark(root / "acme" / "logo-red.png", "circle", mode="RGBA", color=(228, 0, 43))  # a variant, same brand
    _mark(root / "globex" / "logo.png", "bars")
    _mark(root / "initech" / "logo.png", "triangle", mode="RGBA", color=(0, 160, 226))
    (root / "initech" / "mark.svg").write_text(SQUARE)
    return root



# --------------------------------------------------------------------------- brands.yaml


def _yaml(root: Path, text: str) -> Path:
    _mark(root / "acme" / "logo.png", "circle")
    (root / "brands.yaml").write_text(text)
    return root


def test_brands_yaml_is_read(tmp_path):
    root = _yaml(tmp_path, "brands:\n  acme:\n    name: Acme Corp\n    authorized_sellers: [s1]\n    threshold: 0.6\n")
    brand = load_gallery(root).brands["acme"]
    assert (brand.name, brand.authorized_sellers, brand.threshold, [m.mark for m in brand.marks]) == ("Acme Corp", ["s1"], 0.6, ["logo"])


def test_aliases_and_wordmarks_are_read_and_name_the_brand(tmp_path):
    root = _yaml(tmp_path, "brands:\n  acme:\n    name: Acme Corp\n    aliases: [ACME, Acme Corp]\n    wordmarks: [acmé]\n")
    brand = load_gallery(root).brands["acme"]
    assert (brand.aliases, brand.wordmarks) == (["ACME", "Acme Corp"], ["acmé"])
    assert brand.names == ["Acme Corp", "ACME", "acmé"]  # the repeated name once
    bare = _yaml(tmp_path / "bare", "brands:\n  acme: {}\n")
    assert load_gallery(bare).brands["acme"].names == ["acme"]


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    root = _yaml(tmp_path, "brands:\n  acme:\n    nmae: Acme\n")
    with pytest.raises(MarkguardError) as e:
        load_gallery(root)
    msg = str(e.value)
    assert "brands.yaml" in msg and "brands.acme.nmae is not a known key" in msg
    assert "allowed: aliases, authorized_sellers, name, threshold, wordmarks" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("brands:\n  acme:\n    threshold: yes\n", "brands.acme.threshold has the wrong type"),
        ("brands:\n  acme:\n    threshold: 3\n", "must be a similarity in [-1, 1]"),
        ("brands:\n  acme:\n    authorized_sellers: s1\n", "brands.acme.authorized_sellers has the wrong type"),
        ("brands:\n  ghost:\n    name: Ghost\n", "brand 'ghost' has no folder"),
        ("brands:\n  acme:\n    aliases: ACME\n", "brands.acme.aliases has the wrong type"),
        ("brands:\n  acme:\n    authorized_sellers: [1, null, [2]]\n", "brands.acme.authorized_sellers[1] must be a seller id (text or a whole number), not None"),
        ("brands:\n  acme:\n    authorized_sellers: [s1, [2]]\n", "brands.acme.authorized_sellers[1] must be a seller id"),
        ("brands:\n  acme:\n    authorized_sellers: [2.5]\n", "brands.acme.authorized_sellers[0] must be a seller id"),
        ("brands:\n  acme:\n    aliases: [" + ", ".join(["x"] * 50_000) + ", 7]\n", "brands.acme.aliases[50000] must be a non-empty string, not 7"),
        ("brands:\n  acme:\n    threshold: [" + ", ".join(["1"] * 50_000) + "]\n", "list of 50000 items"),
        ("brands:\n  acme:\n    aliases: [ACME, 7]\n", "brands.acme.aliases[1] must be a non-empty string, not 7"),
        ("brands:\n  acme:\n    wordmarks: ['  ']\n", "brands.acme.wordmarks[0] must be a non-empty string"),
        ("brand:\n  acme: {}\n", "unknown top-level key(s) ['brand']"),
        ("brands: [acme]\n", "expected a mapping"),
        ("brands:\n  acme: [\n", "not valid YAML"),
    ],
)
def test_brands_yaml_errors(tmp_path, text, expected):
    with pytest.raises(MarkguardError, match="brands.yaml") as e:
        load_gallery(_yaml(tmp_path, text))
    assert expected in str(e.value)
    assert len(str(e.value)) < 600  # a bounded excerpt of a bad value, never the value


def test_whole_number_seller_ids_are_read_as_text(tmp_path):
    gallery = load_gallery(_yaml(tmp_path, "brands:\n  acme:\n    authorized_sellers: [s1, 42]\n"))
    assert gallery.brands["acme"].authorized_sellers == ["s1", "42"]


def test_names_that_are_not_utf8_are_skipped_and_named(tmp_path, capsys):
    import os

    root = _gallery(tmp_path / "g")
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9"))
    _mark(Path(os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe9", b"logo.png"))), "bars")
    _mark(Path(os.fsdecode(os.path.join(os.fsencode(root / "acme"), b"x\xff.png"))), "bars")
    gallery = load_gallery(root)
    assert sorted(gallery.brands) == ["acme", "globex", "initech"]
    assert sorted(p.name.encode("utf-8", "surrogateescape") for p, _ in gallery.skipped) == [b"caf\xe9", b"x\xff.png"]
    report = check_gallery(root)
    assert report.ok and len(report.skipped) == 2
    assert main(["gallery", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9: name is not valid UTF-8" in out and "x\\xff.png" in out


def test_merge_brand_names_never_writes_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "brands.yaml.tmp").symlink_to(victim)  # what the old writer wrote through
    merge_brand_names(tmp_path / "g", {"acme": "Acme"})
    assert victim.read_text() == "precious\n"
    assert yaml.safe_load((tmp_path / "g" / "brands.yaml").read_text()) == {"brands": {"acme": {"name": "Acme"}}}


def test_merge_brand_names_keeps_existing_entries(tmp_path):
    (tmp_path / "brands.yaml").write_text("brands:\n  acme:\n    authorized_sellers: [s1]\n  globex:\n    name: Globex Inc\n")
    merge_brand_names(tmp_path, {"acme": "Acme", "globex": "Other", "initech": "Initech"})
    brands = yaml.safe_load((tmp_path / "brands.yaml").read_text())["brands"]
    assert brands == {
        "acme": {"authorized_sellers": ["s1"], "name": "Acme"},
        "globex": {"name": "Globex Inc"},
        "initech": {"name": "Initech"},
    }


# --------------------------------------------------------------------------- gallery check


def test_clean_gallery_passes(tmp_path):
    report = check_gallery(_gallery(tmp_path))
    assert report.ok, report.lines()
    assert report.indexed == {"acme": 2, "globex": 1, "initech": 2}
    assert report.warnings == 0
    assert (report.brands, report.marks) == (3, 5)
    assert report.lines()[0].endswith("5 marks of 3 brands will be indexed")


def test_check_finds_every_problem(tmp_path):
    root = _gallery(tmp_path)
    # the same picture under a second brand, re-encoded as JPEG at another size
    Image.open(root / "acme" / "logo.png").resize((200, 200)).save(root / "globex" / "stolen.jpg", quality=70)
    (root / "hooli").mkdir()  # empty brand
    (root / "hooli" / "readme.txt").write_text("logos to follow")
    (root / "globex" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _mark(root / "initech" / "favicon.png", "cross", size=16)
    _mark(root / "initech" / "mark.png", "cross")  # same mark id as mark.svg

    report = check_gallery(root)
    assert not report.ok
    # both of acme's circles (black and red: the same shape) are caught against the stolen copy
    assert sorted((d.a.path.name, d.a.brand, d.b.path.name, d.b.brand) for d in report.duplicates) == [
        ("logo-red.png", "acme", "stolen.jpg", "globex"),
        ("logo.png", "acme", "stolen.jpg", "globex"),
    ]
    assert [i.path.name for i in report.unreadable] == ["broken.png"]
    assert report.empty_brands == ["hooli"]
    assert [i.path.name for i in report.tiny] == ["favicon.png"]
    assert [i.path.name for i in report.id_clashes] == ["mark.svg"]
    assert [p.name for p in report.ignored] == ["readme.txt"]
    assert report.errors == 5
    text = "\n".join(report.lines())
    assert "near-identical picture (similarity" in text and "and 1 more pair(s)" in text
    assert "has no mark images" in text and "tiny (16x16" in text
    assert "5 error(s), 2 warning(s)" in text


def test_look_alike_variants_inside_one_brand_are_not_duplicates(tmp_path):
    root = _gallery(tmp_path)
    _mark(root / "acme" / "logo-blue.jpg", "circle", color=(0, 0, 200))
    assert check_gallery(root).duplicates == []


def test_different_marks_of_any_colour_are_not_duplicates(tmp_path):
    """On mid-grey a mid-tone mark would vanish; on white only a white one does, and it is reported as blank."""
    root = tmp_path / "g"
    _mark(root / "a" / "x.png", "circle", mode="RGBA", color=(128, 128, 128))
    _mark(root / "b" / "x.png", "bars", mode="RGBA", color=(0, 160, 226))
    _mark(root / "c" / "x.png", "triangle", mode="RGBA", color=(255, 255, 0))
    _mark(root / "d" / "x.png", "cross")
    _mark(root / "e" / "white.png", "circle", mode="RGBA", color=(255, 255, 255))
    _mark(root / "f" / "white.png", "bars", mode="RGBA", color=(255, 255, 255))
    report = check_gallery(root)
    assert report.duplicates == []
    assert [(i.path.parent.name, "shows nothing once flattened onto white" in i.reason) for i in report.blank] == [("e", True), ("f", True)]
    assert report.indexed["e"] == 1  # still indexed, which is why it is an error


def test_links_out_of_the_gallery_are_refused(tmp_path):
    root = _gallery(tmp_path / "g")
    outside = _mark(tmp_path / "elsewhere.png", "cross")
    (root / "globex" / "linked.png").symlink_to(outside)
    report = check_gallery(root)
    assert [(i.path.name, i.reason) for i in report.unreadable] == [("linked.png", "refused: links outside the gallery")]


def test_all_brands_empty_is_reported_not_raised(tmp_path):
    (tmp_path / "acme").mkdir()
    report = check_gallery(tmp_path)
    assert report.empty_brands == ["acme"] and report.marks == 0
    with pytest.raises(MarkguardError, match="gallery has no mark images"):
        load_gallery(tmp_path)


def test_hashes_and_thumbnails_survive_reencoding_and_tell_shapes_apart(tmp_path):
    a = flatten_gray(Image.open(_mark(tmp_path / "a.png", "triangle", size=256)))
    Image.open(tmp_path / "a.png").resize((80, 80)).save(tmp_path / "a.jpg", quality=60)
    copy = flatten_gray(Image.open(tmp_path / "a.jpg"))
    other = flatten_gray(Image.open(_mark(tmp_path / "b.png", "cross", size=256)))
    bits = lambda x, y: bin(x ^ y).count("1")  # noqa: E731
    (da, pa), (dc, pc), (do, po) = image_hashes(a), image_hashes(copy), image_hashes(other)
    assert bits(da, dc) <= 8 and bits(pa, pc) <= 24  # inside the prefilter
    assert bits(pa, po) > 24 or bits(da, do) > 8
    assert thumbnail_vector(a) @ thumbnail_vector(copy) > 0.97
    assert thumbnail_vector(a) @ thumbnail_vector(other) < 0.5


def test_hamming_pairs_matches_brute_force():
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    # near copies: flip k bits of the first hashes so there are pairs at every distance 0..8
    hashes = base + [h ^ sum(1 << b for b in rng.sample(range(64), k)) for k, h in enumerate(base[:9])]
    rows = [(h, h ^ (0xF000 if i in (41, 43) else 0)) for i, h in enumerate(hashes)]  # column 2 spoils two near pairs
    table = np.array(rows, dtype=np.uint64)
    limits = (5, 3)
    expected = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            d = tuple(bin(rows[i][c] ^ rows[j][c]).count("1") for c in range(2))
            if d[0] <= limits[0] and d[1] <= limits[1]:
                expected.append((i, j, d))
    got = hamming_pairs(table, limits, chunk=7)  # a chunk that does not divide n
    assert sorted(got) == sorted(expected)
    assert 2 <= len(expected) < 6  # some pairs kept, some spoiled by the second column


def test_cli_gallery_check_exit_codes(tmp_path, capsys):
    root = _gallery(tmp_path / "g")
    assert main(["gallery", "check", str(root)]) == 0
    (root / "empty-brand").mkdir()
    assert main(["gallery", "check", str(root)]) == 1
    assert "brand 'empty-brand' has no mark images" in capsys.readouterr().out
