"""The simple-icons importer, run on a tiny replica of the npm package's layout (never the network)."""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pytest
import yaml
from PIL import Image

from markguard.cli import main
from markguard.datasets.registry import check_gallery, load_gallery
from markguard.datasets.simple_icons import fetch_simple_icons, import_simple_icons, read_icons, title_to_slug
from markguard.errors import MarkguardError

# The package's icons: a 24x24 viewBox, one path, no fill (it renders black).
SQUARE = '<svg role="img" viewBox="0 0 24 24" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><path d="M4 4h16v16H4z"/></svg>'
DIAMOND = '<svg role="img" viewBox="0 0 24 24" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><path d="M12 0L24 12 12 24 0 12z"/></svg>'
CROSS = '<svg role="img" viewBox="0 0 24 24" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><path d="M10 0h4v24h-4zM0 4h24v4H0z"/></svg>'
BARS = '<svg role="img" viewBox="0 0 24 24" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><path d="M0 0h4v24H0zM8 0h4v24H8zM16 0h4v24h-4z"/></svg>'

ENTRIES = [
    ({"title": "Acme", "hex": "E4002B", "source": "https://acme.example"}, SQUARE),
    ({"title": ".Dot & Co+", "hex": "0A7B3E"}, DIAMOND),  # no slug: derived -> dotdotandcoplus
    ({"title": "Ghost White", "slug": "ghostwhite", "hex": "F8F8F8"}, BARS),  # too light for a colour render
    ({"title": "Inky", "hex": "000000"}, CROSS),  # black: the colour render would repeat the black one
    ({"title": "No Icon", "hex": "123456"}, None),  # listed, but icons/noicon.svg is missing
    ({"title": "Bad Hex", "hex": "#12345"}, SQUARE),
]


def make_package(root: Path, *, old_layout: bool = False, version: str = "16.0.0") -> Path:
    """The package as ``npm pack simple-icons`` unpacks it: package.json, data/simple-icons.json, icons/<slug>.svg."""
    (root / "icons").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": "simple-icons", "version": version, "license": "CC0-1.0"}))
    entries = []
    for entry, svg in ENTRIES:
        entries.append(entry)
        if svg:
            title = xml_escape(entry["title"])  # the package escapes titles: "&" is "&amp;" in the SVG
            (root / "icons" / f"{entry.get('slug') or title_to_slug(entry['title'])}.svg").write_text(svg.format(t=title))
    data = root / ("_data" if old_layout else "data") / "simple-icons.json"
    data.parent.mkdir()
    data.write_text(json.dumps({"icons": entries} if old_layout else entries))
    return root



@pytest.mark.parametrize(
    "title, slug",
    [
        (".NET", "dotnet"),
        ("1&1", "1and1"),
        ("1.1.1.1", "1dot1dot1dot1"),
        ("/e/", "e"),
        ("Citroën", "citroen"),
        ("Škoda", "skoda"),
        ("Ørsted", "orsted"),
        ("Deutsche Straße", "deutschestrasse"),
        ("C++", "cplusplus"),
    ],
)
def test_title_to_slug(title, slug):
    assert title_to_slug(title) == slug


def test_read_icons_skips_what_it_cannot_use(tmp_path):
    icons, skipped = read_icons(make_package(tmp_path / "package"))
    assert [(i.slug, i.title, i.hex) for i in icons] == [
        ("acme", "Acme", "E4002B"),
        ("dotdotandcoplus", ".Dot & Co+", "0A7B3E"),
        ("ghostwhite", "Ghost White", "F8F8F8"),
        ("inky", "Inky", "000000"),
    ]
    assert skipped == [("noicon", "no icons/noicon.svg"), ("badhex", "hex '#12345' is not six hex digits")]


def test_import_writes_a_gallery(tmp_path):
    out = tmp_path / "gallery"
    result = import_simple_icons(make_package(tmp_path / "package"), out, size=64)
    assert result.version == "16.0.0"
    assert result.brands == ["acme", "dotdotandcoplus", "ghostwhite", "inky"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        "acme/acme-black.png",
        "acme/acme-color.png",
        "dotdotandcoplus/dotdotandcoplus-black.png",
        "dotdotandcoplus/dotdotandcoplus-color.png",
        "ghostwhite/ghostwhite-black.png",
        "inky/inky-black.png",
    ]
    assert ("ghostwhite", "color #F8F8F8 too light to see on white; other variants kept") in result.skipped
    assert yaml.safe_load((out / "brands.yaml").read_text())["brands"]["dotdotandcoplus"] == {"name": ".Dot & Co+"}

    gallery = load_gallery(out)
    assert gallery.brands["acme"].name == "Acme"
    assert check_gallery(out).ok  # four different shapes: nothing shared between brands


def test_renders_fill_the_brand_colour_and_keep_alpha(tmp_path):
    out = tmp_path / "gallery"
    import_simple_icons(make_package(tmp_path / "package"), out, size=48, only=["acme"], variants=("color", "black", "white-on-color"))
    color = np.asarray(Image.open(out / "acme" / "acme-color.png"))
    black = np.asarray(Image.open(out / "acme" / "acme-black.png"))
    tile = np.asarray(Image.open(out / "acme" / "acme-white-on-color.png"))
    assert color.shape == (48, 48, 4)
    assert color[0, 0, 3] == 0  # outside the square: transparent, not white
    assert tuple(color[24, 24]) == (0xE4, 0x00, 0x2B, 255)  # inside: the brand colour
    assert tuple(black[24, 24]) == (0, 0, 0, 255)
    assert tuple(tile[1, 1]) == (0xE4, 0x00, 0x2B, 255)  # an opaque brand-colour tile ...
    assert tuple(tile[24, 24]) == (255, 255, 255, 255)  # ... with the mark in white


def test_old_layout_limit_and_only(tmp_path):
    package = make_package(tmp_path / "package", old_layout=True)
    assert import_simple_icons(package, tmp_path / "a", limit=1).brands == ["acme"]
    result = import_simple_icons(package, tmp_path / "b", only=["inky", "nosuch"])
    assert result.brands == ["inky"]
    assert ("nosuch", "no such icon in the package") in result.skipped


def test_existing_brands_yaml_entries_are_kept(tmp_path):
    out = tmp_path / "gallery"
    (out / "acme").mkdir(parents=True)
    (out / "brands.yaml").write_text("brands:\n  acme:\n    name: ACME Corporation\n    authorized_sellers: [official-store]\n")
    import_simple_icons(make_package(tmp_path / "package"), out, only=["acme", "inky"])
    brands = yaml.safe_load((out / "brands.yaml").read_text())["brands"]
    assert brands["acme"] == {"name": "ACME Corporation", "authorized_sellers": ["official-store"]}
    assert brands["inky"] == {"name": "Inky"}


def test_a_broken_svg_is_skipped_with_the_reason(tmp_path):
    package = make_package(tmp_path / "package")
    (package / "icons" / "acme.svg").write_text("<svg><title>A & B</title></svg>")
    result = import_simple_icons(package, tmp_path / "out", only=["acme", "inky"])
    assert result.brands == ["inky"]
    assert [reason.split(":")[0] for slug, reason in result.skipped if slug == "acme"] == ["color", "black"]


def test_not_a_package_says_how_to_get_one(tmp_path):
    with pytest.raises(MarkguardError, match=r"no data/simple-icons\.json or _data/simple-icons\.json; .*npm pack simple-icons"):
        import_simple_icons(tmp_path, tmp_path / "out")


def test_unknown_variant(tmp_path):
    with pytest.raises(MarkguardError, match="unknown simple-icons variant"):
        import_simple_icons(make_package(tmp_path / "package"), tmp_path / "out", variants=("sepia",))


def test_fetch_without_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MarkguardError, match="npm not found; install Node.js.*--package"):
        fetch_simple_icons(tmp_path / "dest")


def _fake_npm(bin_dir: Path, tgz: Path) -> None:
    """An ``npm`` that answers ``npm pack simple-icons`` by copying a prepared archive into its folder."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "assert sys.argv[1:] == ['pack', 'simple-icons'], sys.argv\n"
        f"shutil.copy({str(tgz)!r}, 'simple-icons-16.0.0.tgz')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_fetch_unpacks_what_npm_pack_gives(tmp_path, monkeypatch):
    staged = make_package(tmp_path / "staged" / "package")
    tgz = tmp_path / "simple-icons.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(staged, arcname="package")
    _fake_npm(tmp_path / "bin", tgz)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    package = fetch_simple_icons(tmp_path / "dest")
    assert package == tmp_path / "dest" / "package"
    assert [i.slug for i in read_icons(package)[0]] == ["acme", "dotdotandcoplus", "ghostwhite", "inky"]


def test_cli_data_simple_icons(tmp_path, capsys):
    package = make_package(tmp_path / "package")
    assert main(["data", "simple-icons", "--package", str(package), "--out", str(tmp_path / "g"), "--limit", "2", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "2 brands, 4 images from simple-icons 16.0.0" in out
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["acme", "brands.yaml", "dotdotandcoplus"]
