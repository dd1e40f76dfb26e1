"""The copy-detection trainer's photos: images of Debian packages (wallpapers, a planetarium's sky and landscape
pictures, a children's paint program's photo templates and stamps, desktop artwork) and scikit-image's samples.

Copy detection needs many *distinct* pictures more than it needs photographs of products: every other picture
of a batch is a negative. None of these is a product bench photo (opencv-doc, lomiri-wallpapers-20.04, scikit-image's
motorcycle pair) or from a reserved package (datasets/realbench.py RESERVED_DEBIAN).

    python -m markguard.datasets.productphotos --out data/product-train

writes ``OUT/debian/<package>/<name>.jpg`` (RGB, long side at most 1024, transparent images flattened on white,
flat and duplicate images left out) and ``OUT/skimage/``, and ``OUT/sources.json`` (packages, versions, licences,
counts). ``--hold-out N --val OUT2`` moves N of them, drawn per package, to ``OUT2/photos/<package>/`` and builds a
validation bench from them there (``markguard data productbench``'s generator): a bench for choosing training
settings that is not the product bench.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from markguard.datasets.realbench import RESERVED_DEBIAN
from markguard.errors import MarkguardError

# package -> (folders inside it holding the pictures, licence as its debian/copyright gives it)
PACKAGES = {
    "lomiri-wallpapers": (("usr/share/backgrounds", "usr/share/wallpapers"), "CC-BY-SA-3.0"),
    "lomiri-wallpapers-16.04": (("usr/share/backgrounds", "usr/share/wallpapers"), "CC-BY-4.0 / CC-BY-SA-4.0 per photo"),
    "sway-backgrounds": (("usr/share/backgrounds",), "per debian/copyright (one artwork, 8 sizes)"),
    "xfdesktop4-data": (("usr/share/backgrounds",), "GPL-2+"),
    "stellarium-data": (("usr/share/stellarium/nebulae/default", "usr/share/stellarium/textures", "usr/share/stellarium/landscapes",
                         "usr/share/stellarium/skycultures"), "GPL-2+ (per-file notes in debian/copyright)"),
    "tuxpaint-data": (("usr/share/tuxpaint/starters", "usr/share/tuxpaint/templates"), "GPL-2+"),
    "tuxpaint-stamps-default": (("usr/share/tuxpaint/stamps",), "GPL-2"),
    "desktop-base": (("usr/share/desktop-base", "usr/share/plymouth/themes", "usr/share/wallpapers", "usr/share/backgrounds"),
                     "GPL-2+ / GPL-3+ / CC-BY-SA-3.0 per theme"),
}
CAPS = {("stellarium-data", "nebulae"): 150}  # 500+ astrophotographs look alike: a few hundred would fill every batch
SKIP_PARTS = {"icons", "debian-logos", "emblems"}  # logos and icons are marks, not pictures
SKIMAGE = ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "color", "grass", "gravel", "hubble_deep_field", "ihc",
           "moon", "page", "retina", "rocket", "text"]  # not motorcycle_left/right: the product bench's
MIN_SIDE = 224
LONG_SIDE = 1024


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    return im.convert("RGB")


def select(root: Path, package: str, seed: int = 0) -> list[tuple[Path, str]]:
    """(file, name to write) of an unpacked package's pictures under its folders, before the size and content checks."""
    folders, _ = PACKAGES[package]
    files = []
    for sub in folders:
        base = root / sub
        if base.is_dir():
            files += sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    rng = np.random.default_rng(seed)
    for (pkg, part), cap in CAPS.items():
        if pkg == package:
            some = [p for p in files if part in p.parts]
            keep = {str(p) for p in (rng.choice(np.array(some, dtype=object), size=cap, replace=False) if len(some) > cap else some)}
            files = [p for p in files if part not in p.parts or str(p) in keep]
    return [(p, "__".join(p.relative_to(root).parts[-3:])) for p in files if not SKIP_PARTS & set(p.parts)]


def write_photos(files: list[tuple[Path, str]], out: Path, seen: set[str]) -> int:
    """Write each usable picture as ``out/<name>.jpg``; ``seen`` holds the digests of tiny thumbnails already written."""
    n = 0
    for src, name in files:
        try:
            with Image.open(src) as im:
                im.load()
                if min(im.size) < MIN_SIDE:
                    continue
                im = _flatten(im)
        except (OSError, Image.DecompressionBombError, ValueError):
            continue  # a package's broken or exotic image: not worth a training photo
        if np.asarray(im.resize((16, 16)), dtype=np.float32).std() < 8:
            continue  # a flat grey or black (the spread is over pixels and channels: a flat colour passes, as the shipped run had it)
        key = hashlib.sha1(np.asarray(im.resize((8, 8)).convert("L")).tobytes()).hexdigest()
        if key in seen:
            continue  # the same picture in another size or folder
        seen.add(key)
        im.thumbnail((LONG_SIDE, LONG_SIDE), Image.BILINEAR)
        out.mkdir(parents=True, exist_ok=True)
        im.save(out / (Path(name).stem + ".jpg"), quality=92)
        n += 1
    return n


def fetch(packages: list[str], out_dir: str | Path, *, debs: dict[str, Path] | None = None, timeout: float = 900) -> dict:
    """Download (``apt-get download``) and unpack each package, write its pictures; scikit-image's samples too."""
    out = Path(out_dir)
    for pkg in packages:
        if pkg in RESERVED_DEBIAN:
            raise MarkguardError(f"{pkg} is reserved for an independent evaluation; never train on it")
        if pkg not in PACKAGES:
            raise MarkguardError(f"{pkg}: not a package this knows the pictures of; choose from {', '.join(PACKAGES)}")
    seen: set[str] = set()
    sources = {}
    for pkg in packages:
        with tempfile.TemporaryDirectory() as tmp:
            deb = (debs or {}).get(pkg)
            if deb is None:
                r = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True, timeout=timeout)
                deb = next(Path(tmp).glob(f"{pkg}_*.deb"), None)
                if r.returncode or deb is None:
                    raise MarkguardError(f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}; run `apt-get update` or pass --deb {pkg}=FILE")
            root = Path(tmp) / "x"
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=timeout)
            n = write_photos(select(root, pkg), out / "debian" / pkg, seen)
        sources[pkg] = {"deb": Path(deb).name, "licence": PACKAGES[pkg][1], "pictures": n}
    import skimage

    data = Path(skimage.data.__file__).parent
    (out / "skimage").mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE:
        src = next(data.glob(name + ".*"), None)
        if src is None:
            raise MarkguardError(f"scikit-image {skimage.__version__} has no sample {name}; pip install 'scikit-image>=0.20'")
        shutil.copyfile(src, out / "skimage" / src.name)
    sources["skimage"] = {"version": skimage.__version__, "licence": "BSD-3-Clause / public domain per skimage/data/README",
                          "pictures": len(SKIMAGE)}
    (out / "sources.json").write_text(json.dumps(sources, indent=2), encoding="utf-8")
    return sources


def hold_out(train_dir: str | Path, val_dir: str | Path, per_package: dict[str, int], *, seed: int = 7,
             skip_part: str = "nebulae") -> list[Path]:
    """Move ``per_package`` pictures of ``train_dir/debian/<package>`` to ``val_dir/photos/<package>`` (not training's)."""
    rng = np.random.default_rng(seed)
    moved = []
    for pkg, k in per_package.items():
        files = sorted((Path(train_dir) / "debian" / pkg).glob("*.jpg"))
        files = [f for f in files if skip_part not in f.name]  # astrophotographs look alike: not as a catalogue
        for f in rng.choice(np.array(files, dtype=object), size=min(k, len(files)), replace=False):
            dest = Path(val_dir) / "photos" / pkg / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dest)
            moved.append(dest)
    return moved


VAL_HOLD_OUT = {"tuxpaint-data": 10, "lomiri-wallpapers-16.04": 4, "desktop-base": 4, "tuxpaint-stamps-default": 8, "stellarium-data": 14}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (debian/<package>/, skimage/, sources.json)")
    ap.add_argument("--packages", nargs="*", default=list(PACKAGES))
    ap.add_argument("--deb", action="append", default=[], metavar="PKG=FILE", help="a local .deb instead of apt-get download")
    ap.add_argument("--val", help="also hold out pictures (VAL_HOLD_OUT per package) into VAL/photos and build VAL/bench from them")
    args = ap.parse_args(argv)
    debs = dict(d.split("=", 1) for d in args.deb)
    sources = fetch(args.packages, args.out, debs={k: Path(v) for k, v in debs.items()})
    print(json.dumps(sources, indent=1))
    if args.val:
        from markguard.datasets.productbench import ProductBenchConfig, build_productbench

        moved = hold_out(args.out, args.val, VAL_HOLD_OUT)
        info = build_productbench(Path(args.val) / "photos", Path(args.val) / "bench", ProductBenchConfig(catalogue=20))
        print(f"validation: {len(moved)} pictures held out; {args.val}/bench: {info['listings']} listings ({info['copies']} copies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
