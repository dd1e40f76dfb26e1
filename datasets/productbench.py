"""The product bench: catalogue photos, and listings made from them by the edits sellers make, among distractors.

Built only from photos the product model never trained on (train/recipes/copydetect.yaml trains on
lomiri-wallpapers, lomiri-wallpapers-16.04, sway-backgrounds and other scikit-image samples):
the colour photographs of Debian's ``opencv-doc`` and ``lomiri-wallpapers-20.04`` named below,
and scikit-image's stereo pair ``motorcycle_left/right``. Never the reserved packages.

Layout written under OUT:

- ``catalogue/<brand>/<photo>.jpg`` — the brands' own photos (a gallery: ``markguard index build``)
- ``listings/<edit>/<id>.jpg`` — one folder per edit type and composition of two
- ``truth.jsonl`` — a row per listing: its file, edit, ``source`` (the catalogue photo it copies, or
  null) and ``kind``: ``copy``, ``distractor`` (another photo edited the same way) or
  ``near_duplicate`` (another shot of a catalogue photo's scene: not a copy)
- ``bench.json`` — sources, licences, counts, seed
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from markguard.datasets.edits import EDITS, apply_edit
from markguard.datasets.realbench import RESERVED_DEBIAN
from markguard.errors import MarkguardError

OPENCV_EXAMPLES = "usr/share/doc/opencv-doc/examples"
# colour photographs of opencv-doc (BSD-3-Clause / the images' own notes); blurred test images, synthetic
# drawings, logos and crops of other samples (scenetext_segmented_*, ela_modified) are left out
OPENCV_PHOTOS = [
    "alphamat/input_images/plant.jpg", "data/Blender_Suzanne1.jpg", "data/Blender_Suzanne2.jpg", "data/aero1.jpg",
    "data/aero3.jpg", "data/aloeL.jpg", "data/aloeR.jpg", "data/apple.jpg", "data/baboon.jpg", "data/board.jpg",
    "data/building.jpg", "data/butterfly.jpg", "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png",
    "data/graf3.png", "data/home.jpg", "data/left.jpg", "data/right.jpg", "data/leuvenA.jpg", "data/leuvenB.jpg",
    "data/messi5.jpg", "data/orange.jpg", "data/rubberwhale1.png", "data/rubberwhale2.png", "data/smarties.png",
    "data/squirrel_cls.jpg", "data/starry_night.jpg", "data/stuff.jpg", "data/sudoku.png", "hfs/data/000.jpg",
    "hfs/data/001.jpg", "hfs/data/002.jpg", "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg",
    "text/scenetext04.jpg", "text/scenetext05.jpg", "text/scenetext06.jpg",
]
SKIMAGE_PHOTOS = ["motorcycle_left.png", "motorcycle_right.png"]  # scikit-image (BSD-3-Clause; Middlebury stereo)
LOMIRI = "lomiri-wallpapers-20.04"
LOMIRI_ROOT = "usr/share/backgrounds"
# the same scene from another shot (stereo pairs, another view): the first is a catalogue photo, the second a listing
# that is *not* a copy of it
NEAR_DUPLICATES = [("Blender_Suzanne1", "Blender_Suzanne2"), ("aero1", "aero3"), ("aloeL", "aloeR"), ("graf1", "graf3"),
                   ("left", "right"), ("leuvenA", "leuvenB"), ("rubberwhale1", "rubberwhale2"),
                   ("motorcycle_left", "motorcycle_right")]
# compositions of two the bench makes (the trainer draws from all of datasets.edits.compositions())
COMPOSED = ["crop+text", "colour+mirror", "crop+collage", "text+screenshot", "resize+background", "colour+jpeg"]
LICENCES = {"opencv-doc": "BSD-3-Clause (OpenCV samples; Debian opencv-doc)", LOMIRI: "CC-BY-SA / CC-BY, per photo (debian/copyright of the package)",
            "skimage": "BSD-3-Clause (scikit-image data; motorcycle from the Middlebury stereo set)"}
RESERVED = set(RESERVED_DEBIAN)  # the reserved photo packages: one list, datasets/realbench.py


@dataclass
class ProductBenchConfig:
    catalogue: int = 26  # catalogue photos (every near-duplicate pair's first photo is one)
    seed: int = 0
    long_side: int = 800  # photos are scaled to at most this long side before editing
    quality: tuple[int, int] = (80, 95)  # the listings' JPEG quality


def fetch_bench_photos(out_dir: str | Path, *, debs: dict[str, str] | None = None, timeout: float = 300) -> dict[str, list[Path]]:
    """The bench's photos copied to ``out_dir/<source>/``: opencv-doc's and lomiri-wallpapers-20.04's (``apt-get download``,
    or a .deb / unpacked folder given in ``debs``) and scikit-image's stereo pair."""
    from markguard.datasets.realbench import _apt_download, _run

    out = Path(out_dir)
    got: dict[str, list[Path]] = {}
    debs = dict(debs or {})
    for pkg in debs:
        if pkg in RESERVED:
            raise MarkguardError(f"{pkg} is reserved for an independent evaluation; never build a bench or train on it")
    for pkg, wanted in (("opencv-doc", OPENCV_PHOTOS), (LOMIRI, None)):
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(debs[pkg]) if pkg in debs else _apt_download(pkg, Path(tmp), timeout)
            if src.is_file():
                root = Path(tmp) / "x"
                _run(["dpkg", "-x", str(src), str(root)], f"dpkg -x {src.name}", timeout)
            elif src.is_dir():
                root = src
            else:
                raise MarkguardError(f"{src}: not found; give the package's .deb or its unpacked folder")
            if wanted is None:
                files = sorted(p for p in (root / LOMIRI_ROOT).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            else:
                files = [root / OPENCV_EXAMPLES / w for w in wanted]
            missing = [str(f) for f in files if not f.is_file()]
            if missing or not files:
                raise MarkguardError(f"{pkg}: {missing[0] if missing else 'no photos'} not in the package; is it the version the bench names?")
            (out / pkg).mkdir(parents=True, exist_ok=True)
            got[pkg] = []
            for f in files:
                shutil.copyfile(f, out / pkg / f.name)
                got[pkg].append(out / pkg / f.name)
    import skimage.data

    (out / "skimage").mkdir(parents=True, exist_ok=True)
    got["skimage"] = []
    for name in SKIMAGE_PHOTOS:
        f = Path(skimage.data.data_dir) / name
        if not f.is_file():
            raise MarkguardError(f"{f}: not in the installed scikit-image; pip install 'scikit-image>=0.20'")
        shutil.copyfile(f, out / "skimage" / name)
        got["skimage"].append(out / "skimage" / name)
    return got


def _photos(photo_dir: Path) -> dict[str, tuple[str, Path]]:
    """stem -> (source, path) of every photo under ``photo_dir/<source>/``."""
    out = {}
    for f in sorted(photo_dir.glob("*/*")):
        if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.is_file():
            if f.stem in out:
                raise MarkguardError(f"{f}: two photos are named {f.stem!r}; the bench names photos by file stem")
            out[f.stem] = (f.parent.name, f)
    if not out:
        raise MarkguardError(f"{photo_dir}: no photos; run `markguard data productbench --out DIR` to fetch them first")
    return out


def _load(path: Path, long_side: int) -> Image.Image:
    img = Image.open(path).convert("RGB")
    img.thumbnail((long_side, long_side), Image.LANCZOS)
    return img


def edit_kinds() -> list[str]:
    return list(EDITS) + COMPOSED


def build_productbench(photo_dir: str | Path, out_dir: str | Path, cfg: ProductBenchConfig | None = None) -> dict:
    """Write the bench (catalogue, listings, truth.jsonl, bench.json) from the photos under ``photo_dir``."""
    cfg = cfg or ProductBenchConfig()
    photo_dir, out = Path(photo_dir), Path(out_dir)
    photos = _photos(photo_dir)
    rng = np.random.default_rng((cfg.seed, 4721))
    firsts = [a for a, b in NEAR_DUPLICATES if a in photos and b in photos]
    seconds = {b: a for a, b in NEAR_DUPLICATES if a in photos and b in photos}
    singles = [s for s in photos if s not in firsts and s not in seconds]
    rng.shuffle(singles)
    n_single = max(0, cfg.catalogue - len(firsts))
    if n_single >= len(singles):
        raise MarkguardError(f"{photo_dir}: {len(photos)} photos leave no distractors for {cfg.catalogue} catalogue photos; lower --catalogue")
    catalogue = sorted(firsts + singles[:n_single])
    others = sorted(singles[n_single:]) + sorted(seconds)
    fillers = [_load(photos[s][1], 400) for s in sorted(singles[n_single:])]  # the other tiles of collages, swapped backgrounds
    (out / "catalogue").mkdir(parents=True, exist_ok=True)
    brands = [f"brand-{chr(ord('a') + i)}" for i in range(8)]
    truth = []
    for k, stem in enumerate(catalogue):
        brand = brands[k % len(brands)]
        (out / "catalogue" / brand).mkdir(exist_ok=True)
        _load(photos[stem][1], 1600).save(out / "catalogue" / brand / f"{stem}.jpg", quality=95)
    kinds = edit_kinds()
    for kind in kinds:
        (out / "listings" / kind).mkdir(parents=True, exist_ok=True)
    n = 0
    for role, stems in (("copy", catalogue), ("other", others)):
        for stem in stems:
            base = _load(photos[stem][1], cfg.long_side)
            for kind in kinds:
                seed = [cfg.seed, n]
                e = apply_edit(base, kind, seed, fillers)
                name = f"{n:05d}_{stem}.jpg"
                q = int(np.random.default_rng(seed).integers(cfg.quality[0], cfg.quality[1] + 1))
                e.image.save(out / "listings" / kind / name, quality=q)
                row_kind = "copy" if role == "copy" else ("near_duplicate" if stem in seconds else "distractor")
                truth.append({"listing": f"listings/{kind}/{name}", "edit": kind, "source": stem if role == "copy" else None,
                              "photo": stem, "kind": row_kind, "near": seconds.get(stem), "box": list(e.box)})
                n += 1
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for row in truth:
            f.write(json.dumps(row) + "\n")
    info = {"seed": cfg.seed, "catalogue": len(catalogue), "listings": len(truth), "edits": kinds,
            "copies": sum(r["kind"] == "copy" for r in truth), "distractors": sum(r["kind"] == "distractor" for r in truth),
            "near_duplicates": sum(r["kind"] == "near_duplicate" for r in truth),
            "sources": {src: sorted(s for s, (g, _) in photos.items() if g == src) for src in sorted({g for g, _ in photos.values()})},
            "licences": LICENCES, "catalogue_photos": catalogue, "other_photos": others}
    (out / "bench.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info
