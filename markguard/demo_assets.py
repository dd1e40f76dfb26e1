"""How the demo's embedded data (``markguard/demo_data/``) was made; run once by a maintainer, not by the demo.

    python -m markguard.demo_assets --devicon data/devicon/package --photos PHOTO_DIR --out markguard/demo_data

The gallery: full-colour devicon logos (MIT) of brands the shipped model never trained on (every one is in
``train/recipes/heldout_brands.txt``) and two invented wordmarks set in Pillow's own scalable font
(``ImageFont.load_default(size=...)``, Aileron Regular, inside Pillow >= 10.1: nothing from the machine's fonts).
The listings: crops of real photographs (OpenCV's sample photos from Debian's ``opencv-doc``; neither the shipped
model's training backgrounds nor a reserved package) with at most one mark pasted, in tiers; ``truth.csv`` says
which. Everything is drawn from fixed seeds, so a rebuild from the same sources gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from markguard.datasets.realbench import _crop_photo, _paste, _render, package_version
from markguard.datasets.registry import merge_brand_names
from markguard.datasets.synth import WordmarkSpec, draw_wordmark, near_match

# Registered: devicon "original" artwork, all in heldout_brands.txt (tests/test_demo.py checks).
REGISTERED = ("docker", "firefox", "python", "slack", "android", "chrome", "redis", "vuejs", "figma", "gitlab")
# Shown in listings but not registered: a scan must not flag them.
UNREGISTERED = ("kotlin", "ubuntu", "angular", "jenkins", "postgresql", "mongodb", "html5", "tensorflow")
# Invented brand names, drawn in Pillow's bundled font (colours, underline).
WORDMARKS = {"norvale": ("Norvale", (176, 30, 46), (40, 40, 40), True),
             "quillbrook": ("QUILLBROOK", (22, 84, 150), (22, 84, 150), False)}
# OpenCV's sample photographs (Debian opencv-doc, examples/data): scenes, not logos or test patterns.
PHOTOS = ("aero1.jpg", "building.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg", "orange.jpg", "squirrel_cls.jpg",
          "stuff.jpg", "butterfly.jpg", "board.jpg")
# listings per tier
TIERS = {"copy": 14, "small": 6, "near": 10, "wordmark": 8, "unregistered": 8, "none": 10}
POSITIVE_TIERS = ("copy", "small", "near", "wordmark")
NEAR = ("recolour", "mirror", "stretch", "crop", "occluded")
LONG_SIDE = (480, 640)
SEED = 2026


def wordmark_spec(brand: str) -> WordmarkSpec:
    text, colour, bar, underline = WORDMARKS[brand]
    return WordmarkSpec(text, None, 120, (colour, bar), underline)


def build(devicon: str | Path, photos: str | Path, out: str | Path) -> dict:
    devicon, photos, out = Path(devicon), Path(photos), Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "gallery").mkdir(parents=True)
    (out / "listings").mkdir()
    marks: dict[str, Image.Image] = {}
    for b in REGISTERED + UNREGISTERED:
        img = _render(devicon / "icons" / b / f"{b}-original.svg", 512)
        if img is None:
            raise SystemExit(f"{b}: devicon artwork unreadable")
        marks[b] = img
    for b in WORDMARKS:
        marks[b] = draw_wordmark(wordmark_spec(b))
    names = {}
    for b in REGISTERED + tuple(WORDMARKS):
        (out / "gallery" / b).mkdir()
        ref = marks[b].copy()
        ref.thumbnail((192, 192), Image.LANCZOS)
        ref.save(out / "gallery" / b / f"{b}.png", optimize=True)
        names[b] = WORDMARKS[b][0] if b in WORDMARKS else b
    merge_brand_names(out / "gallery", names)

    src = []
    for name in PHOTOS:
        im = Image.open(photos / name).convert("RGB")
        src.append((name, im))
    rows = []
    for tier, count in TIERS.items():
        pool = {"copy": REGISTERED, "small": REGISTERED, "near": REGISTERED, "wordmark": tuple(WORDMARKS),
                "unregistered": UNREGISTERED, "none": ()}[tier]
        for k in range(count):
            r = np.random.default_rng((SEED, list(TIERS).index(tier), k))
            name, photo = src[int(r.integers(len(src)))]
            bg = _crop_photo(photo, r, LONG_SIDE)
            lid = f"{tier}-{k:02d}"
            brand, variant, box, img = "", "", None, bg
            if pool:
                brand = pool[(k * 3 + list(TIERS).index(tier)) % len(pool)]
                mark, variant, scale, small = marks[brand], "exact", (0.25, 0.55), None
                if tier == "near":
                    variant = NEAR[k % len(NEAR)]
                    mark = near_match(mark, variant, r)
                elif tier == "wordmark" and k % 2:
                    variant = "letters"
                    mark = near_match(mark, "letters", r, wordmark=wordmark_spec(brand))
                elif tier == "small":
                    scale, small = (0.09, 0.13), 0.15
                img, box = _paste(bg, mark, r, scale, 0.5 * (0.6 if tier == "small" else 1.0), small)
            img.save(out / "listings" / f"{lid}.jpg", quality=80)
            rows.append([lid, tier, brand, variant, *(box or ("", "", "", "")), name])
    with open(out / "listings" / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "image_path"])
        w.writerows([r[0], f"{r[0]}.jpg"] for r in rows)
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "tier", "brand", "variant", "x0", "y0", "x1", "y1", "photo"])
        w.writerows(rows)
    info = {"seed": SEED, "tiers": TIERS, "registered": list(REGISTERED) + list(WORDMARKS), "unregistered": list(UNREGISTERED),
            "sources": {"marks": {"package": "devicon (npm)", "version": package_version(devicon), "licence": "MIT"},
                        "photos": {"package": "opencv-doc (Debian)", "files": list(PHOTOS),
                                   "licence": "Apache-2.0 AND BSD-3-Clause (Debian copyright, Files: *)"},
                        "font": {"name": "Aileron Regular, inside Pillow (ImageFont.load_default(size=...))", "licence": "CC0-1.0"}}}
    (out / "sources.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devicon", required=True, help="the unpacked devicon package (data/devicon/package)")
    ap.add_argument("--photos", required=True, help="a folder holding OpenCV's sample photos (opencv-doc's examples/data)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "demo_data"))
    a = ap.parse_args()
    info = build(a.devicon, a.photos, a.out)
    size = sum(p.stat().st_size for p in Path(a.out).rglob("*") if p.is_file())
    print(f"{a.out}: {sum(info['tiers'].values())} listings, {len(info['registered'])} registered brands, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
