"""The real-photo bench's wordmark tier: registered brands' names set in one font in the gallery, re-typeset in others on real photos.

A copy of a bench from :func:`markguard.datasets.realbench.build_realbench` with wordmarks added:

* the gallery gets, for ``brands`` of its registered brands, the brand's name set in one font
  (``<brand>/<brand>-wordmark.png``): the registered wordmark;
* listings (real photographs, as the bench's own) show
  ``wordmark``: the name as registered, re-typeset in another of the machine's text fonts;
  ``wordmark-swap``: the same with one look-alike letter substituted or two neighbours swapped
  (``datasets/synth.py: swap_letters``), each still naming the brand under ``infer/textmatch.py``'s rule;
  ``word-unregistered``: the name of a brand the gallery does not hold (the bench's unregistered brands);
  ``word-none``: an unrelated made-up word, registered nowhere.

Everything the bench had is kept (listings hard-linked or copied, truth rows as they were), so the
folder is one bench with more tiers. Fonts come from this machine (``datasets/wordmarks.find_fonts``):
the tier's numbers move with the fonts installed, which ``bench.json`` lists.

Layout: as the bench's (``OUT/gallery``, ``OUT/listings`` + manifest.csv, ``OUT/truth.csv``, ``OUT/bench.json``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from markguard.datasets import realbench
from markguard.datasets.realbench import (NEGATIVE_TIERS, POSITIVE_TIERS, TIERS, TRUTH_COLUMNS, TruthRow, _crop_photo,
                                         _load_photos, _paste)
from markguard.errors import MarkguardError

WORD_POSITIVE = ("wordmark", "wordmark-swap")
WORD_NEGATIVE = ("word-unregistered", "word-none")
ALL_TIERS = TIERS + WORD_POSITIVE + WORD_NEGATIVE
ALL_POSITIVE = POSITIVE_TIERS + WORD_POSITIVE
ALL_NEGATIVE = NEGATIVE_TIERS + WORD_NEGATIVE
GALLERY_FONT = "DejaVuSans-Bold"  # the registered wordmarks' font, when installed (else the first font found)
# ink colours: dark, light (on dark photos) and saturated brand-like ones
COLOURS = [(20, 20, 20), (250, 250, 250), (200, 16, 46), (0, 82, 155), (0, 120, 60), (240, 160, 0), (110, 40, 140)]
SYLLABLES = ("ka", "lo", "mi", "zu", "ra", "te", "no", "vi", "sa", "po", "bri", "tor", "den", "fal", "gor", "lux", "pex",
             "van", "zen", "ori", "ast", "kel", "mar", "sil", "dro", "pen", "tal", "cor")


@dataclass
class WordConfig:
    brands: int = 60  # registered brands that get a wordmark in the gallery
    wordmark: int = 120  # listings per tier
    swap: int = 120
    unregistered: int = 60
    none: int = 60
    seed: int = 0
    scale: tuple[float, float] = (0.35, 0.8)  # the word's long side over the photo's short side
    strength: float = 0.4  # paste_mark's rotation/perspective/bend/blur
    jpeg_quality: tuple[int, int] = (70, 93)
    size: int = 96  # the font size words are set in before pasting


def read_truth(path: str | Path) -> dict[str, TruthRow]:
    """``truth.csv`` of a bench with or without the wordmark tier, by listing id (a box is required except for tier none)."""
    return realbench.read_truth(path, ALL_TIERS, build="`markguard data realbench` (and `markguard data wordbench`)")


def shows(row: TruthRow) -> str | None:
    """The registered brand a listing shows, or None."""
    return row.brand if row.tier in ALL_POSITIVE else None


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(int(rng.integers(2, 4))))


def _set(text: str, font, size: int, colour) -> Image.Image:
    from markguard.datasets.wordmarks import render_wordmark

    hexc = "#%02X%02X%02X" % colour
    return render_wordmark(text, font, size=size, color=hexc, margin=0.1)


def _plate(word: Image.Image, rng: np.random.Generator, colour) -> Image.Image:
    """Sometimes a label behind the word (a contrasting plate), as wordmarks are printed on tags and boxes."""
    if rng.random() >= 0.35:
        return word
    lum = sum(colour) / 3
    plate = (235, 235, 230) if lum < 128 else (30, 30, 35)
    img = Image.new("RGBA", word.size, plate + (255,))
    img.alpha_composite(word)
    return img


def _pick_brands(gallery_brands: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """Registered names a wordmark can carry: letters only, 5-14 long (a name of four letters or fewer allows no letter
    swap in the text match), none within two edits of another registered name."""
    from markguard.infer.textmatch import edit_distance, fold

    ok = [b for b in gallery_brands if b.isalpha() and 5 <= len(fold(b)) <= 14]
    ok = [b for b in ok if all(o == b or edit_distance(fold(b), fold(o), 2) > 2 for o in gallery_brands)]
    if len(ok) < n:
        raise MarkguardError(f"only {len(ok)} registered brands have a name fit for a wordmark; lower --brands to at most that")
    return sorted(ok[i] for i in rng.permutation(len(ok))[:n])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_wordbench(bench: str | Path, photo_dirs: list[str | Path], out_dir: str | Path, *, fonts: list | None = None,
                    cfg: WordConfig | None = None, progress: bool = False) -> dict:
    """Write ``out_dir``: the bench at ``bench`` plus the wordmark tier (module docstring); returns what bench.json records."""
    from markguard.datasets.registry import merge_brand_names
    from markguard.datasets.synth import swap_letters
    from markguard.datasets.wordmarks import find_fonts
    from markguard.infer.textmatch import Lexicon, fold

    cfg = cfg or WordConfig()
    bench, out_dir = Path(bench), Path(out_dir)
    info = json.loads((bench / "bench.json").read_text()) if (bench / "bench.json").is_file() else None
    if info is None or not (bench / "gallery").is_dir():
        raise MarkguardError(f"{bench}: not a real-photo bench (no bench.json or gallery/); build one with `markguard data realbench`")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MarkguardError(f"{out_dir}: folder is not empty; choose a new --out folder")
    fonts = [Path(f) for f in (fonts if fonts is not None else find_fonts())]
    fonts = list(dict.fromkeys(fonts))
    if len(fonts) < 2:
        raise MarkguardError("the wordmark tier needs at least two text fonts (one for the gallery, others for listings); "
                             "install some (e.g. apt-get install fonts-dejavu fonts-liberation)")
    gallery_font = next((f for f in fonts if f.stem == GALLERY_FONT), fonts[0])
    listing_fonts = [f for f in fonts if f.stem != gallery_font.stem]
    rng = np.random.default_rng((cfg.seed, 31))
    registered = list(info["gallery_brands"])
    chosen = _pick_brands(registered, cfg.brands, rng)
    lexicon = Lexicon({b: [b] for b in registered})
    unregistered = [b for b in info.get("unregistered_brands", []) if len(fold(b)) >= 4 and not lexicon.match(b)]
    if cfg.unregistered and not unregistered:
        raise MarkguardError(f"{bench}: no unregistered brand name for the word-unregistered tier")
    photos = _load_photos(photo_dirs)

    shutil.copytree(bench / "gallery", out_dir / "gallery")
    for b in chosen:
        _set(b, gallery_font, 128, (20, 20, 20)).save(out_dir / "gallery" / b / f"{b}-wordmark.png")
    merge_brand_names(out_dir / "gallery", {b: b for b in registered})
    listings = out_dir / "listings"
    listings.mkdir(parents=True)
    truth = []
    with open(bench / "truth.csv", newline="", encoding="utf-8") as f:
        old = list(csv.DictReader(f))
    for r in old:
        _link_or_copy(bench / "listings" / f"{r['listing_id']}.jpg", listings / f"{r['listing_id']}.jpg")

    counts = {"wordmark": cfg.wordmark, "wordmark-swap": cfg.swap, "word-unregistered": cfg.unregistered, "word-none": cfg.none}
    words = {}
    jobs = [(t, k) for t, n in counts.items() for k in range(n)]
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="wordbench", unit="listing")
    for tier, k in it:
        r = np.random.default_rng((cfg.seed, 32, ALL_TIERS.index(tier), k))
        lid = f"{tier}-{k:05d}"
        brand, mark, variant = "", "", "exact"
        if tier in WORD_POSITIVE:
            brand = chosen[k % len(chosen)]
            mark = f"{brand}-wordmark"
            text = brand
            if tier == "wordmark-swap":
                for _ in range(20):
                    text = swap_letters(brand, r)
                    best = lexicon.best(text)
                    if best is not None and best.brand == brand and text != brand:
                        break
                variant = "lookalike" if fold(text) == fold(brand) else "swap"
        elif tier == "word-unregistered":
            brand = text = unregistered[k % len(unregistered)]
            mark = f"{brand}-name"
            variant = "name"
        else:
            text = _word(r)
            while lexicon.match(text):
                text = _word(r)
            variant = "word"
        # a name drawn in upper case sometimes, as wordmarks often are
        if r.random() < 0.3:
            text = text.upper()
        elif r.random() < 0.3:
            text = text.capitalize()
        colour = COLOURS[int(r.integers(len(COLOURS)))]
        word = None
        for _ in range(len(listing_fonts)):
            font = listing_fonts[int(r.integers(len(listing_fonts)))]
            try:
                word = _plate(_set(text, font, cfg.size, colour), r, colour)
                break
            except (OSError, ValueError):  # a font without these glyphs: another one
                continue
        if word is None:
            raise MarkguardError(f"no font on this machine draws {text!r}")
        name, photo = photos[int(r.integers(len(photos)))]
        bg = _crop_photo(photo, r, (640, 1024))
        img, box = _paste(bg, word, r, cfg.scale, cfg.strength)
        img.save(listings / f"{lid}.jpg", quality=int(r.integers(*cfg.jpeg_quality)))
        truth.append(TruthRow(lid, tier, brand, mark, variant, box, name, max(box[2] - box[0], box[3] - box[1]) / min(img.size)))
        words[lid] = {"text": text, "font": font.stem}

    with open(listings / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "image_path"])
        w.writerows([r["listing_id"], f"{r['listing_id']}.jpg"] for r in old)
        w.writerows([t.listing_id, f"{t.listing_id}.jpg"] for t in truth)
    with open(out_dir / "truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(TRUTH_COLUMNS)
        w.writerows([r.get(c) or "" for c in TRUTH_COLUMNS] for r in old)
        w.writerows(t.csv_row() for t in truth)
    info = {**info, "listings_per_tier": {**info["listings_per_tier"], **counts},
            "wordmarks": {"from": str(bench), "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
                          "brands": chosen, "gallery_font": gallery_font.name,
                          "listing_fonts": sorted({f.name for f in listing_fonts}), "words": words}}
    (out_dir / "bench.json").write_text(json.dumps(info, indent=2))
    return info
