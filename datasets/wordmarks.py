"""Render brand names as wordmarks in the fonts on this machine: cheap extra marks for brands whose logo is their name."""

from __future__ import annotations

import hashlib
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from markguard.errors import MarkguardError

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_SUFFIXES = {".ttf", ".otf"}
DEFAULT_FONT = "default"  # Pillow's built-in font, used when the machine has no font files
HEX_RE = re.compile(r"^#?([0-9A-Fa-f]{6})$")


@dataclass
class Wordmark:
    brand: str  # brand id: the gallery folder it was written to
    name: str  # the text rendered
    font: str  # font file stem, or "default"
    path: Path


@dataclass
class WordmarkRun:
    """What ``render_wordmarks`` wrote, and ``(name, font, reason)`` for what it could not."""

    out_dir: Path
    written: list[Wordmark] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


def brand_id_for(name: str) -> str:
    """A folder-safe brand id for a display name: lower-case letters and digits joined by '-'.

    Accents are dropped ("Café" -> "cafe"); letters of other scripts are kept as they are.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    slug = re.sub(r"[\W_]+", "-", plain).strip("-")
    if not slug:
        raise MarkguardError(f"brand name {name!r} has no letters or digits to make a folder name; give brand ids explicitly")
    return slug


# Fonts whose letters are pictures (URW's D050000L is Zapf Dingbats; Standard Symbols PS maps Latin letters to Greek):
# a wordmark set in one reads as no word at all, so it is neither a wordmark to train on nor one OCR could read
SYMBOL_FONTS = ("d050000l", "dingbat", "symbol", "wingding", "webding")


def is_symbol_font(path: str | Path) -> bool:
    """A font whose file or family name says its glyphs are symbols, not letters."""
    names = [Path(path).stem.lower()]
    try:
        names.append(" ".join(ImageFont.truetype(str(path), 12).getname()).lower())
    except OSError:
        pass
    return any(s in n for n in names for s in SYMBOL_FONTS)


def find_fonts(dirs: Iterable[str | Path] = FONT_DIRS) -> list[Path]:
    """Every .ttf/.otf text font under ``dirs`` (missing ones are fine; symbol and dingbat fonts left out), sorted so a
    run is reproducible."""
    found = set()
    for d in dirs:
        d = Path(d).expanduser()
        if not d.is_dir():
            continue
        for dirpath, _, filenames in os.walk(d):
            found.update(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in FONT_SUFFIXES)
    return sorted(p for p in found if not is_symbol_font(p))


def read_names(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """A names file: one brand name a line, optionally ending in a colour (``Acme Corp #E4002B``).

    Blank lines and lines starting with '#' are skipped. Returns brand id -> (name, hex or None).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MarkguardError(f"{path}: cannot read the names file ({e}); give a UTF-8 text file, one brand name a line") from None
    out: dict[str, tuple[str, str | None]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(.*?)\s+#([0-9A-Fa-f]{6})$", line)
        name, hex_ = (m.group(1), m.group(2).upper()) if m else (line, None)
        try:
            out[brand_id_for(name)] = (name, hex_)
        except MarkguardError as e:
            raise MarkguardError(f"{path}: line {n}: {e}") from None
    if not out:
        raise MarkguardError(f"{path}: no brand names; write one name a line")
    return out


def _load_font(font: Path | str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if font == DEFAULT_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(font), size=size)


_NOTDEF_PROBE = "\U0010fffd"  # a private-use code point no real font draws: shows the font's "missing" glyph


def missing_glyphs(face: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> str:
    """Characters of ``text`` that ``face`` would draw as its missing-glyph box ("tofu")."""
    if not isinstance(face, ImageFont.FreeTypeFont):
        return ""
    notdef = face.getmask(_NOTDEF_PROBE)
    notdef_key = (notdef.size, bytes(notdef))
    missing = []
    for c in dict.fromkeys(text):
        if c.isspace():
            continue
        mask = face.getmask(c)
        if (mask.size, bytes(mask)) == notdef_key:
            missing.append(c)
    return "".join(missing)


def render_wordmark(text: str, font: Path | str = DEFAULT_FONT, *, size: int = 96, color: str | None = None, margin: float = 0.15) -> Image.Image:
    """``text`` in ``font`` at ``size`` px as RGBA on a transparent background, trimmed to the ink plus ``margin``."""
    rgb = (0, 0, 0) if color is None else tuple(int(HEX_RE.match(color).group(1)[i : i + 2], 16) for i in (0, 2, 4))
    face = _load_font(font, size)
    # tofu boxes look alike in every brand's name: as training marks they would teach false matches
    missing = missing_glyphs(face, text)
    if missing:
        raise ValueError(f"the font has no glyph for {missing!r}")
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGBA", (1, 1))).textbbox((0, 0), text, font=face)
    if right <= left or bottom <= top:
        raise ValueError("the font draws nothing for this text")
    pad = max(2, round(margin * size))
    img = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=face, fill=rgb + (255,))
    return img


def _fonts_for(brand: str, font_ids: dict, k: int | None) -> list:
    items = list(font_ids.items())
    if not k or k >= len(items):
        return items
    seed = int.from_bytes(hashlib.blake2b(brand.encode(), digest_size=8).digest(), "little")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def render_wordmarks(
    names: Iterable[str] | Mapping[str, str | tuple[str, str | None]],
    out_dir: str | Path,
    *,
    fonts: Sequence[str | Path] | None = None,
    size: int = 96,
    color: str | None = None,
    fonts_per_brand: int | None = None,
) -> WordmarkRun:
    """Write ``out_dir/<brand>/<brand>-wm-<font>.png`` for every (name, font): a gallery any reader can take.

    ``names`` is a list of display names (brand ids derived with ``brand_id_for``) or a mapping
    brand id -> name or (name, hex colour). ``fonts`` defaults to every font ``find_fonts`` sees,
    and to Pillow's built-in font when there are none. Text is in the brand's colour when it has
    one, else ``color``, else black; the background stays transparent.

    ``fonts_per_brand`` draws each brand in only that many of the fonts, chosen per brand
    (deterministically, from a hash of its id): many fonts across the gallery at a fraction of
    the images, so a model learns that a name stays the same mark in any typeface.
    """
    out_dir = Path(out_dir)
    if color is not None and not HEX_RE.match(color):
        raise MarkguardError(f"colour {color!r} is not #RRGGBB")
    if isinstance(names, Mapping):
        entries = {b: (v, None) if isinstance(v, str) else (v[0], v[1]) for b, v in names.items()}
    else:
        entries = {brand_id_for(n): (n, None) for n in names}
    fonts = list(fonts) if fonts is not None else find_fonts()
    if not fonts:
        fonts = [DEFAULT_FONT]
    run = WordmarkRun(out_dir)
    font_ids: dict[str | Path, str] = {}
    for font in fonts:  # the same stem as .ttf and .otf, or in two folders, must not overwrite each other
        stem = DEFAULT_FONT if font == DEFAULT_FONT else Path(font).stem
        font_id, n = stem, 2
        while font_id in font_ids.values():
            font_id, n = f"{stem}-{n}", n + 1
        font_ids[font] = font_id
    for brand, (name, hex_) in entries.items():
        for font, font_id in _fonts_for(brand, font_ids, fonts_per_brand):
            try:
                img = render_wordmark(name, font, size=size, color=hex_ or color)
            except (OSError, ValueError) as e:  # an unreadable font file, or one without these glyphs
                run.skipped.append((name, font_id, str(e) or type(e).__name__))
                continue
            path = out_dir / brand / f"{brand}-wm-{font_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            img.save(tmp, format="PNG")
            os.replace(tmp, path)
            run.written.append(Wordmark(brand, name, font_id, path))
    return run
