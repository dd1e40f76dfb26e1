"""Import the simple-icons npm package (CC0 brand icons) as a gallery: one folder a brand, coloured and black renders."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from PIL import Image
from tqdm import tqdm

from markguard.datasets.decode import render_svg
from markguard.datasets.npm import fetch_package
from markguard.datasets.registry import merge_brand_names
from markguard.errors import DecodeError, MarkguardError

# From the package's sdk (titleToSlug): characters spelled out before everything outside a-z0-9 is dropped.
TITLE_TO_SLUG_REPLACEMENTS = {
    "+": "plus",
    ".": "dot",
    "&": "and",
    "đ": "d",
    "ħ": "h",
    "ı": "i",
    "ĸ": "k",
    "ŀ": "l",
    "ł": "l",
    "ß": "ss",
    "ŧ": "t",
    "ø": "o",
}
DATA_FILES = ("data/simple-icons.json", "_data/simple-icons.json")  # new layout, then the one before v14
VARIANTS = ("color", "black", "white-on-color", "white")
DEFAULT_VARIANTS = ("color", "black")
HEX_RE = re.compile(r"^[0-9A-Fa-f]{6}$")
# A brand colour this close to white (every channel within this of 255) vanishes when the mark is
# composited onto white, as training and indexing do: its "color" render would be a blank picture
# that matches any blank region. Yellow stays: its blue channel still separates it from white.
MIN_DISTANCE_FROM_WHITE = 24


@dataclass
class SimpleIcon:
    slug: str
    title: str
    hex: str  # brand colour, six hex digits without '#'
    svg: Path


@dataclass
class SimpleIconsImport:
    """What ``import_simple_icons`` wrote and what it left out, with the reason."""

    out_dir: Path
    version: str | None
    brands: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (slug or title, reason)


def title_to_slug(title: str) -> str:
    """The icon's file name for a brand title, as the package's sdk derives it."""
    lowered = "".join(TITLE_TO_SLUG_REPLACEMENTS.get(c, c) for c in title.lower())
    return re.sub(r"[^a-z0-9]", "", unicodedata.normalize("NFD", lowered))


def read_icons(package_dir: str | Path) -> tuple[list[SimpleIcon], list[tuple[str, str]]]:
    """The package's icons in its data file's order, and ``(title, reason)`` for entries that cannot be used."""
    package_dir = Path(package_dir)
    data_path = next((package_dir / p for p in DATA_FILES if (package_dir / p).is_file()), None)
    if data_path is None:
        raise MarkguardError(
            f"{package_dir}: no {' or '.join(DATA_FILES)}; give the unpacked simple-icons package folder "
            "(npm pack simple-icons && tar xzf simple-icons-*.tgz gives package/)"
        )
    try:
        doc = json.loads(data_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MarkguardError(f"{data_path}: not valid JSON ({e}); re-extract the package") from None
    entries = doc.get("icons") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise MarkguardError(f"{data_path}: expected a list of icons or {{\"icons\": [...]}}")
    icons, skipped = [], []
    real_icons = (package_dir / "icons").resolve()
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("title"):
            skipped.append((str(entry)[:40], "entry has no title"))
            continue
        title = str(entry["title"])
        slug = str(entry.get("slug") or title_to_slug(title))
        hex_ = str(entry.get("hex", ""))
        if not HEX_RE.match(hex_):
            skipped.append((slug, f"hex {hex_!r} is not six hex digits"))
            continue
        svg = package_dir / "icons" / f"{slug}.svg"
        if svg.resolve().parent != real_icons:  # a slug with '/' or '..' would point elsewhere
            skipped.append((slug, "refused: slug leaves icons/"))
            continue
        if not svg.is_file():
            skipped.append((slug, f"no icons/{slug}.svg"))
            continue
        icons.append(SimpleIcon(slug, title, hex_.upper(), svg))
    return icons, skipped


def _package_version(package_dir: Path) -> str | None:
    try:
        return json.loads((package_dir / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, json.JSONDecodeError):
        return None


def _near_white(hex_: str) -> bool:
    return max(255 - int(hex_[i : i + 2], 16) for i in (0, 2, 4)) < MIN_DISTANCE_FROM_WHITE


def _with_fill(svg: str, hex_: str) -> str:
    """The icon's SVG with its single path filled in ``#hex`` (icons ship without a fill: black)."""
    return re.sub(r"<svg\b", f'<svg fill="#{hex_}"', svg, count=1)


def render_icon(icon: SimpleIcon, variant: str, size: int = 256) -> Image.Image:
    """One render of an icon as RGBA at ``size`` px: transparent around the mark except for white-on-color."""
    svg = icon.svg.read_text(encoding="utf-8")
    name = str(icon.svg)
    if variant == "color":
        return render_svg(_with_fill(svg, icon.hex), size=size, name=name)
    if variant == "black":
        return render_svg(_with_fill(svg, "000000"), size=size, name=name)
    if variant == "white":
        return render_svg(_with_fill(svg, "FFFFFF"), size=size, name=name)
    if variant == "white-on-color":
        # as on an app tile: the white mark with a margin on an opaque square of the brand colour
        inner = render_svg(_with_fill(svg, "FFFFFF"), size=round(size * 0.75), name=name)
        rgb = tuple(int(icon.hex[i : i + 2], 16) for i in (0, 2, 4))
        tile = Image.new("RGBA", (size, size), rgb + (255,))
        tile.alpha_composite(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        return tile
    raise MarkguardError(f"unknown simple-icons variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _save_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)  # a crash never leaves a half-written mark for the indexer to choke on


def import_simple_icons(
    package_dir: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    size: int = 256,
    variants: Iterable[str] = DEFAULT_VARIANTS,
    only: Iterable[str] | None = None,
    progress: bool = False,
) -> SimpleIconsImport:
    """Write the package's icons as a gallery: ``out_dir/<slug>/<slug>-<variant>.png`` plus brands.yaml names.

    ``only`` keeps the listed slugs; ``limit`` keeps the first N icons (in the data file's order)
    after that. A "color" render is skipped when it would add nothing: a black brand colour (same
    as "black") or one too light to see on white.
    """
    package_dir, out_dir = Path(package_dir), Path(out_dir)
    variants = tuple(variants)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise MarkguardError(f"unknown simple-icons variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    icons, skipped = read_icons(package_dir)
    if only is not None:
        wanted = set(only)
        found = {i.slug for i in icons}
        skipped += [(s, "no such icon in the package") for s in sorted(wanted - found)]
        icons = [i for i in icons if i.slug in wanted]
    if limit is not None:
        icons = icons[:limit]
    result = SimpleIconsImport(out_dir, _package_version(package_dir), skipped=skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    if progress:
        icons = tqdm(icons, desc="simple-icons", unit="icon")
    for icon in icons:
        written = []
        for variant in variants:
            if variant == "color" and icon.hex == "000000" and "black" in variants:
                continue  # identical to the black render
            if variant == "color" and _near_white(icon.hex):
                result.skipped.append((icon.slug, f"color #{icon.hex} too light to see on white; other variants kept"))
                continue
            try:
                img = render_icon(icon, variant, size)
            except DecodeError as e:
                result.skipped.append((icon.slug, f"{variant}: {e.reason}"))
                continue
            path = out_dir / icon.slug / f"{icon.slug}-{variant}.png"
            path.parent.mkdir(exist_ok=True)
            _save_png(img, path)
            written.append(path)
        if written:
            result.files += written
            result.brands.append(icon.slug)
            names[icon.slug] = icon.title
    if names:
        merge_brand_names(out_dir, names)
    return result


def fetch_simple_icons(dest: str | Path, *, version: str | None = None, timeout: float = 300) -> Path:
    """Download the package with ``npm pack simple-icons[@version]`` and unpack it; returns ``dest/package``."""
    return fetch_package("simple-icons", dest, version=version, timeout=timeout,
                         fix="download simple-icons-<version>.tgz from the npm registry, unpack it and pass its package/ folder with --package")