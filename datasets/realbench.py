"""The real-photo benchmark: colour marks of brands a model never trained on, pasted into real photographs, in tiers.

Marks come from the devicon npm package (MIT, full-colour logos of software brands): the brands
chosen for the gallery are registered with their "original" artwork; other devicon brands are the
*unregistered* marks a scan must not flag. The *cross* tier draws a registered brand by different
artwork: its Simple Icons glyph in the brand colour. Photos are real photographs (Debian photo and
wallpaper packages that training does not use). Each listing is one crop of one photo at a listing's
size with at most one mark, and ``truth.csv`` says which tier, brand and box it shows, and the mark's
size: its box's long side as a share of the photo's short side, and the size band that falls in
(0.05-0.15, 0.15-0.25, ..., 0.85-0.95). Marks are pasted from 5% (the small tier) to 95% (the large
tier: plain copies of at least 60%) of the short side, so that a scan is measured on every size.

Layout written by :func:`build_realbench`::

    OUT/gallery/<brand>/<brand>-original.png   + brands.yaml   (the registered marks)
    OUT/listings/<listing_id>.jpg + manifest.csv                (the dump to scan)
    OUT/truth.csv                                               (listing_id, tier, brand, mark, variant, x0, y0, x1, y1, photo, size, band)
    OUT/bench.json                                              (config, sources, counts per tier, brands)
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from markguard.datasets.decode import composite, decode_image, load_mark
from markguard.datasets.npm import fetch_package
from markguard.datasets.registry import SAME_PICTURE, flatten_gray, merge_brand_names, thumbnail_vector
from markguard.datasets.simple_icons import _near_white, read_icons, render_icon
from markguard.datasets.synth import NEAR_MATCHES, near_match, paste_mark, procedural_background
from markguard.errors import DecodeError, MarkguardError

# "large" was added after the others (issue 20): appended, so that every older tier keeps its seeds
TIERS = ("copy", "small", "near", "cross", "unregistered", "none", "large")
POSITIVE_TIERS = ("copy", "small", "near", "cross", "large")  # show a registered brand
NEGATIVE_TIERS = ("unregistered", "none")
COPY_TIERS = ("copy", "small", "large")  # the registered artwork itself, at three ranges of size
# listings per tier for every 39 asked for: 1,950 gives copy 300, small 250, near 300, cross 250, unregistered 250, none 300, large 300
TIER_SHARES = {"copy": 6, "small": 5, "near": 6, "cross": 5, "unregistered": 5, "none": 6, "large": 6}
SMALL_MAX = 0.15  # "small": the mark's box long side under this share of the photo's short side
LARGE_MIN = 0.6  # "large": at least this share
MAX_SIZE = 0.95  # no mark's box long side reaches beyond this share of the short side
# size bands of a mark (its box long side over the photo's short side), as reports tabulate them
BAND_EDGES = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
BANDS = tuple(f"{a:.2f}-{b:.2f}" for a, b in zip(BAND_EDGES, BAND_EDGES[1:]))
TRUTH_COLUMNS = ("listing_id", "tier", "brand", "mark", "variant", "x0", "y0", "x1", "y1", "photo", "size", "band")
REQUIRED_TRUTH_COLUMNS = TRUTH_COLUMNS[:10]  # a bench built before size bands has no size/band columns

# Reserved for an independent evaluation: never build a bench (or train) from these.
RESERVED_NPM = ("@iconify-json/logos", "super-tiny-icons", "@fortawesome/free-brands-svg-icons")
RESERVED_DEBIAN = ("mate-backgrounds", "ukui-wallpapers", "gnome-backgrounds", "plasma-workspace-wallpapers")
# The default model's training backgrounds: a bench built on them measures nothing new for it.
TRAINING_DEBIAN = ("lomiri-wallpapers", "lomiri-wallpapers-16.04", "sway-backgrounds")

# Where a package keeps its photographs, and what there is not a photograph of a scene (a rule per package
# beats a heuristic: these lists were checked by eye). Everything else must be RGB with a short side >= MIN_PHOTO_SIDE.
PHOTO_ROOTS = {"opencv-doc": ("usr/share/doc/opencv-doc/examples/data",)}
PHOTO_SUFFIXES_OF = {"opencv-doc": (".jpg",)}  # its .png files are test patterns, masks and synthetic shapes
DEFAULT_PHOTO_ROOTS = ("usr/share/backgrounds", "usr/share/wallpapers")
NOT_PHOTOS = {
    "lomiri-wallpapers-20.04": {"Fossa_by_Jasper_Roks.jpg": "digital artwork (the release mascot)",
                                "Painting-Colors_by__herobrine7gamer.jpg": "flat-colour artwork"},
    "opencv-doc": {
        "Blender_Suzanne1.jpg": "3-D render", "Blender_Suzanne2.jpg": "3-D render", "blox.jpg": "3-D render",
        "HappyFish.jpg": "cartoon", "LinuxLogo.jpg": "a logo", "WindowsLogo.jpg": "a logo",
        "ela_modified.jpg": "shows a logo (Tux)", "messi5.jpg": "shows kit logos",
        "ellipses.jpg": "synthetic", "pca_test1.jpg": "synthetic", "starry_night.jpg": "a painting",
        "text_defocus.jpg": "text scan", "text_motion.jpg": "text scan", "licenseplate_motion.jpg": "synthetic blur of a plate",
        "aloeR.jpg": "stereo partner of aloeL", "leuvenB.jpg": "near-duplicate of leuvenA", "right.jpg": "stereo partner of left",
    },
}
MIN_PHOTO_SIDE = 300
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_INK = 0.02  # a mark whose visible pixels (off-white once flattened) cover less of its box than this is blank


# --------------------------------------------------------------------------- marks: devicon

@dataclass
class Devicon:
    name: str  # folder name = brand id
    svg: Path  # its "original" artwork
    color: str | None  # brand colour from devicon.json, "#RRGGBB"


def read_devicon(package_dir: str | Path) -> list[Devicon]:
    """The package's brands that have ``icons/<name>/<name>-original.svg``, sorted by name; ids are a-z0-9 only."""
    package_dir = Path(package_dir)
    icons = package_dir / "icons"
    if not icons.is_dir():
        raise MarkguardError(f"{package_dir}: no icons/ folder; give the unpacked devicon package folder (npm pack devicon gives package/)")
    colours = {}
    meta = package_dir / "devicon.json"
    if meta.is_file():
        try:
            colours = {e["name"]: e.get("color") for e in json.loads(meta.read_text(encoding="utf-8")) if isinstance(e, dict) and "name" in e}
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise MarkguardError(f"{meta}: not valid JSON ({e}); re-extract the package") from None
    out = []
    for folder in sorted(p for p in icons.iterdir() if p.is_dir()):
        svg = folder / f"{folder.name}-original.svg"
        # ids as a Simple Icons slug is spelled, so training can leave out exactly these brands ("dot-net" is not one)
        if svg.is_file() and re.fullmatch(r"[a-z0-9]+", folder.name):
            out.append(Devicon(folder.name, svg, colours.get(folder.name)))
    return out


def package_version(package_dir: str | Path) -> str | None:
    try:
        return json.loads((Path(package_dir) / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, json.JSONDecodeError):
        return None


def fetch_npm(package: str, dest: str | Path, *, version: str | None = None, archive: str | Path | None = None, timeout: float = 300) -> Path:
    """``package`` unpacked to ``dest/package``: from a local ``archive`` (.tgz, e.g. a cached ``npm pack``), else ``npm pack``."""
    if package in RESERVED_NPM:
        raise MarkguardError(f"{package} is reserved for an independent evaluation; never build a bench or train on it")
    return fetch_package(package, dest, version=version, archive=archive, timeout=timeout,
                         fix=f"download {package}-<version>.tgz and pass it with --archive")


def visible_share(mark: Image.Image) -> float:
    """Share of the mark's box that is visibly off-white once flattened on white (as the index sees it)."""
    bbox = mark.getchannel("A").getbbox() if mark.mode == "RGBA" else (0, 0, mark.width, mark.height)
    if bbox is None:
        return 0.0
    flat = np.asarray(composite(mark.crop(bbox)), dtype=np.int16)
    return float(((255 - flat).max(axis=2) > 24).mean())


# --------------------------------------------------------------------------- photos: Debian packages

@dataclass
class PhotoImport:
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def select_photos(root: str | Path, package: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """The photographs of an unpacked package under ``root``, and ``(file, reason)`` for the images left out."""
    root = Path(root)
    keep, skipped = [], []
    excluded = NOT_PHOTOS.get(package, {})
    suffixes = PHOTO_SUFFIXES_OF.get(package, PHOTO_SUFFIXES)
    for sub in PHOTO_ROOTS.get(package, DEFAULT_PHOTO_ROOTS):
        base = root / sub
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if not p.is_file() or p.suffix.lower() not in suffixes:
                continue
            if p.name in excluded:
                skipped.append((p.name, excluded[p.name]))
                continue
            try:
                with Image.open(p) as im:
                    size, mode = im.size, im.mode
            except (OSError, Image.DecompressionBombError) as e:
                skipped.append((p.name, f"unreadable ({e})"))
                continue
            if mode not in ("RGB", "YCbCr", "CMYK"):
                skipped.append((p.name, f"not a colour photo (mode {mode})"))
            elif min(size) < MIN_PHOTO_SIDE:
                skipped.append((p.name, f"too small ({size[0]}x{size[1]}, short side < {MIN_PHOTO_SIDE})"))
            else:
                keep.append(p)
    return keep, skipped


def fetch_photos(packages: list[str], out_dir: str | Path, *, debs: dict[str, str | Path] | None = None, timeout: float = 600) -> PhotoImport:
    """Copy the photographs of Debian ``packages`` to ``out_dir/<package>/``.

    ``debs`` maps a package to a local ``.deb`` file or an already unpacked folder (``dpkg -x``);
    the others are downloaded with ``apt-get download`` and unpacked with ``dpkg -x``.
    """
    debs = dict(debs or {})
    for pkg in list(packages) + list(debs):
        if pkg in RESERVED_DEBIAN:
            raise MarkguardError(f"{pkg} is reserved for an independent evaluation; never build a bench or train on it")
    out = PhotoImport(Path(out_dir))
    out.out_dir.mkdir(parents=True, exist_ok=True)
    for pkg in dict.fromkeys(list(packages) + list(debs)):
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(debs[pkg]) if pkg in debs else _apt_download(pkg, Path(tmp), timeout)
            if src.is_dir():
                root = src
            elif src.is_file():
                root = Path(tmp) / "x"
                _run(["dpkg", "-x", str(src), str(root)], f"dpkg -x {src.name}", timeout)
            else:
                raise MarkguardError(f"{src}: not found; give the package's .deb or its unpacked folder")
            photos, skipped = select_photos(root, pkg)
            if not photos:
                raise MarkguardError(f"{pkg}: no photographs under {', '.join(PHOTO_ROOTS.get(pkg, DEFAULT_PHOTO_ROOTS))}; is it a photo or wallpaper package?")
            (out.out_dir / pkg).mkdir(exist_ok=True)
            for p in photos:
                target = out.out_dir / pkg / p.name
                shutil.copyfile(p, target)
                out.written.append(target)
            out.skipped += [(f"{pkg}/{name}", why) for name, why in skipped]
    return out


def _apt_download(pkg: str, tmp: Path, timeout: float) -> Path:
    _run(["apt-get", "download", pkg], f"apt-get download {pkg}", timeout, cwd=tmp,
         hint="check the package name and `apt-get update`, or pass the .deb with --deb PKG=FILE")
    deb = next(tmp.glob(f"{pkg}_*.deb"), None)
    if deb is None:
        raise MarkguardError(f"apt-get download {pkg} wrote no {pkg}_*.deb; pass the .deb with --deb PKG=FILE")
    return deb


def _run(cmd: list[str], what: str, timeout: float, cwd: Path | None = None, hint: str = "") -> None:
    if shutil.which(cmd[0]) is None:
        raise MarkguardError(f"{cmd[0]} not found (a Debian/Ubuntu tool); pass the package's unpacked folder with --deb PKG=DIR")
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MarkguardError(f"{what} took over {timeout:.0f}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MarkguardError(f"{what} failed ({last}){'; ' + hint if hint else ''}")


# --------------------------------------------------------------------------- the benchmark

# What bench.json says changed since the bench of 1,650 listings (issue 20), so that old and new figures are read side by side.
CHANGES = ("issue 20: marks from 5% to 95% of the short side, and truth records each mark's size and size band. "
           "A large tier (plain copies, 60-95%) is added after the others; every older tier keeps its listing count, seeds, "
           "photos, crops and brands (1,950 listings give the old 1,650's counts plus 300 large), but with wider sizes: "
           "copy 0.20-0.60 -> 0.15-0.60, small 0.08-0.135 -> 0.05-0.15, near/cross/unregistered 0.20-0.60 -> 0.15-0.95; "
           "a paste whose box leaves its range is redone a little smaller or larger (was: only small ones, 15% smaller).")

@dataclass
class BenchConfig:
    """What :func:`build_realbench` writes."""

    brands: int = 300  # registered brands (the gallery)
    listings: int = 1950  # split over the tiers by TIER_SHARES
    seed: int = 0
    long_side: tuple[int, int] = (640, 1024)  # a listing photo's long side, pixels
    scale: tuple[float, float] = (0.15, 0.6)  # copy: mark long side over the short side
    wide_scale: tuple[float, float] = (0.15, 0.95)  # near / cross / unregistered: every size but the small tier's
    small_scale: tuple[float, float] = (0.05, 0.15)  # the small tier (its box stays under SMALL_MAX)
    large_scale: tuple[float, float] = (LARGE_MIN, MAX_SIZE)  # the large tier (its box at LARGE_MIN or more)
    strength: float = 0.5  # paste_mark's rotation/perspective/bend/blur: mild
    jpeg_quality: tuple[int, int] = (70, 93)
    mark_side: int = 512  # marks are rendered this wide before pasting (pasting scales them down)

    def per_tier(self) -> dict[str, int]:
        total = sum(TIER_SHARES.values())
        counts = {t: self.listings * s // total for t, s in TIER_SHARES.items()}
        for t in TIERS[: self.listings - sum(counts.values())]:  # what integer division left over
            counts[t] += 1
        return counts


@dataclass
class TruthRow:
    listing_id: str
    tier: str
    brand: str  # the brand shown ("" for none); for unregistered, a brand that is not in the gallery
    mark: str
    variant: str  # exact | a near-match variant | simple-icons
    box: tuple[int, int, int, int] | None
    photo: str
    size: float | None = None  # the box's long side over the photo's short side (None: no mark, or an older bench)

    @property
    def band(self) -> str | None:
        return size_band(self.size)

    def csv_row(self) -> list:
        box = list(self.box) if self.box else ["", "", "", ""]
        size = "" if self.size is None else f"{self.size:.4f}"
        return [self.listing_id, self.tier, self.brand, self.mark, self.variant, *box, self.photo, size, self.band or ""]


def size_band(size: float | None) -> str | None:
    """The band of BANDS a mark's relative size falls in; sizes beyond the edges count in the first or last band."""
    if size is None:
        return None
    i = int(np.searchsorted(BAND_EDGES, size, side="right")) - 1
    return BANDS[min(max(i, 0), len(BANDS) - 1)]


def read_truth(path: str | Path, tiers: tuple[str, ...] = TIERS, *, build: str = "`markguard data realbench`") -> dict[str, TruthRow]:
    """``truth.csv`` by listing id, checked column by column; ``tiers`` are those it may hold (a bench with the
    wordmark tier: datasets/wordbench.py), ``build`` the command that makes it."""
    path = Path(path)
    if not path.is_file():
        raise MarkguardError(f"{path}: not found; build the bench with {build}")
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MarkguardError(f"{path}: missing column(s) {', '.join(missing)}; rebuild the bench with `markguard data realbench`")
        for line, r in enumerate(reader, start=2):
            if r["tier"] not in tiers:
                raise MarkguardError(f"{path}:{line}: tier {r['tier']!r} is not one of {', '.join(tiers)}")
            try:
                box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1")) if r["x0"] else None
            except ValueError:
                raise MarkguardError(f"{path}:{line}: box {[r[k] for k in ('x0', 'y0', 'x1', 'y1')]} is not four whole numbers") from None
            if (r["tier"] == "none") != (box is None):
                raise MarkguardError(f"{path}:{line}: tier {r['tier']} {'has' if box else 'needs'} a box")
            if r["listing_id"] in out:
                raise MarkguardError(f"{path}:{line}: listing {r['listing_id']!r} appears twice")
            try:
                size = float(r["size"]) if r.get("size") else None
            except ValueError:
                raise MarkguardError(f"{path}:{line}: size {r['size']!r} is not a number") from None
            out[r["listing_id"]] = TruthRow(r["listing_id"], r["tier"], r["brand"], r["mark"], r["variant"], box, r["photo"], size)
    return out


def _crop_photo(photo: Image.Image, rng: np.random.Generator, long_side: tuple[int, int]) -> Image.Image:
    """A listing-sized view of a photo: a random aspect, 35-100% of the largest crop of that aspect, resized."""
    aspect = float(rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2, 2 / 3, 16 / 9]))
    W, H = photo.size
    cw, ch = (W, W / aspect) if W / H < aspect else (H * aspect, H)
    f = float(np.sqrt(rng.uniform(0.35, 1.0)))
    cw, ch = max(16, int(cw * f)), max(16, int(ch * f))
    x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
    target = int(rng.integers(long_side[0], long_side[1] + 1))
    s = target / max(cw, ch)
    size = (max(1, round(cw * s)), max(1, round(ch * s)))
    return photo.resize(size, Image.BICUBIC, box=(x, y, x + cw, y + ch), reducing_gap=2.0)


def _paste(bg: Image.Image, mark: Image.Image, rng: np.random.Generator, scale: tuple[float, float], strength: float,
           max_rel: float = MAX_SIZE, min_rel: float = 0.0) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``mark`` pasted into a copy of ``bg``, its box's long side in [min_rel, max_rel) of the short side: rotation and
    perspective can make the box larger than the drawn scale, so a paste outside the range is redone a little smaller or larger."""
    s = float(rng.uniform(*scale))
    for _ in range(12):
        img = bg.copy()
        box = paste_mark(img, mark, rng, scale=s, strength=strength)
        if box is None:
            s *= 0.85
            continue
        rel = max(box[2] - box[0], box[3] - box[1]) / min(img.size)
        if min_rel <= rel < max_rel:
            return img, box
        s *= 0.97 * max_rel / rel if rel >= max_rel else 1.03 * min_rel / rel
    raise MarkguardError(f"could not paste a mark at scale {scale} into a {bg.size[0]}x{bg.size[1]} photo")


def _load_photos(folders: list[str | Path]) -> list[tuple[str, Image.Image]]:
    photos = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise MarkguardError(f"{folder}: not a folder of photos; write one with `markguard data photos`")
        for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() in PHOTO_SUFFIXES):
            try:
                photos.append((str(p.relative_to(folder.parent)), decode_image(p, target_size=2048).image.convert("RGB")))
            except DecodeError as e:
                raise MarkguardError(f"{p}: {e.reason}; remove it from the photo folder") from None
    if not photos:
        raise MarkguardError(f"no .jpg/.png photos under {', '.join(map(str, folders))}")
    return photos


def _trim(img: Image.Image) -> Image.Image:
    """The mark without its transparent margin: paste scales then refer to what is visible."""
    bbox = img.getchannel("A").getbbox()
    return img.crop(bbox) if bbox else img


def _render(path: Path, side: int) -> Image.Image | None:
    try:
        img = load_mark(path, size=side)
    except DecodeError:
        return None
    return _trim(img) if visible_share(img) >= MIN_INK else None


def _cross_marks(simple_icons_dir: str | Path | None, brands: list[str], side: int) -> dict[str, Image.Image]:
    """The Simple Icons glyph of each registered brand that has one, in its brand colour (black when that is near white)."""
    if simple_icons_dir is None:
        return {}
    icons, _ = read_icons(simple_icons_dir)
    by_slug = {i.slug: i for i in icons}
    out = {}
    for b in brands:
        icon = by_slug.get(b)
        if icon is None:
            continue
        try:
            img = render_icon(icon, "black" if _near_white(icon.hex) else "color", side)
        except DecodeError:
            continue
        if visible_share(img) >= MIN_INK:
            out[b] = _trim(img)
    return out


def build_realbench(marks_dir: str | Path, photo_dirs: list[str | Path], out_dir: str | Path, *,
                    cross_dir: str | Path | None = None, cfg: BenchConfig | None = None, progress: bool = False) -> dict:
    """Write the benchmark (module docstring) from an unpacked devicon package, photo folders and, for the cross tier,
    an unpacked simple-icons package; returns what ``bench.json`` records."""
    cfg = cfg or BenchConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MarkguardError(f"{out_dir}: folder is not empty; choose a new --out folder")
    counts = cfg.per_tier()
    if counts["cross"] and cross_dir is None:
        raise MarkguardError("the cross tier needs the simple-icons package: pass --cross DIR (or --listings small enough to leave it empty)")
    photos = _load_photos(photo_dirs)
    rng = np.random.default_rng((cfg.seed, 0))

    icons = read_devicon(marks_dir)
    order = [icons[i] for i in rng.permutation(len(icons))]
    rendered: dict[str, Image.Image] = {}
    skipped: list[tuple[str, str]] = []
    gallery_brands: list[str] = []
    unregistered: list[str] = []
    thumbs = None
    for icon in order:  # rendered as needed: the registered brands first, then as many unregistered ones as listings need
        if len(gallery_brands) == cfg.brands and len(unregistered) >= counts["unregistered"]:
            break
        img = _render(icon.svg, cfg.mark_side)
        if img is None:
            skipped.append((icon.name, "original artwork unreadable or blank on white"))
            continue
        rendered[icon.name] = img
        if len(gallery_brands) < cfg.brands:
            gallery_brands.append(icon.name)
            continue
        if thumbs is None:
            thumbs = np.stack([thumbnail_vector(flatten_gray(rendered[b])) for b in gallery_brands])
        # an unregistered mark that is the same picture as a registered one (a brand's two devicon names) is no negative
        if float((thumbs @ thumbnail_vector(flatten_gray(img))).max()) >= SAME_PICTURE:
            skipped.append((icon.name, "same picture as a registered brand's mark: left out of the unregistered tier"))
        else:
            unregistered.append(icon.name)
    if len(gallery_brands) < cfg.brands or (counts["unregistered"] and not unregistered):
        raise MarkguardError(f"{marks_dir}: {len(rendered)} usable devicon brands, need {cfg.brands} registered + unregistered ones; lower --brands")
    gallery_brands.sort()
    cross = _cross_marks(cross_dir, gallery_brands, cfg.mark_side)
    cross_brands = sorted(cross)
    if counts["cross"] and not cross_brands:
        raise MarkguardError(f"{cross_dir}: none of the {len(gallery_brands)} registered brands has a Simple Icons glyph")

    gallery = out_dir / "gallery"
    for b in gallery_brands:
        (gallery / b).mkdir(parents=True, exist_ok=True)
        rendered[b].save(gallery / b / f"{b}-original.png")
    merge_brand_names(gallery, {b: b for b in gallery_brands})

    listings = out_dir / "listings"
    listings.mkdir(parents=True)
    pools = {"copy": gallery_brands, "small": gallery_brands, "near": gallery_brands, "cross": cross_brands, "unregistered": unregistered,
             "large": gallery_brands}  # (a new tier goes last: the others' seeds depend on their position)
    cycles = {t: [p[i] for i in np.random.default_rng((cfg.seed, 1, ti)).permutation(len(p))] for ti, (t, p) in enumerate(pools.items())}
    jobs = [(t, k) for t in TIERS for k in range(counts[t])]
    truth: list[TruthRow] = []
    it = jobs
    if progress:
        it = tqdm(jobs, desc="realbench", unit="listing")
    for n, (tier, k) in enumerate(it):
        r = np.random.default_rng((cfg.seed, 2, TIERS.index(tier), k))
        name, photo = photos[int(r.integers(len(photos)))]
        bg = _crop_photo(photo, r, cfg.long_side)
        lid = f"{tier}-{k:05d}"
        brand = mark_id = ""
        variant = "exact"
        box = None
        if tier == "none":
            img = bg
        else:
            brand = cycles[tier][k % len(cycles[tier])]
            mark_id = f"{brand}-original"
            mark = rendered[brand]
            scale, lo, hi = cfg.wide_scale, 0.0, MAX_SIZE
            if tier == "near":
                variant = NEAR_MATCHES[k % len(NEAR_MATCHES)]
                mark = near_match(mark, variant, r)
            elif tier == "cross":
                variant, mark_id, mark = "simple-icons", f"{brand}-simple-icons", cross[brand]
            elif tier == "small":
                scale, hi = cfg.small_scale, SMALL_MAX
            elif tier == "copy":
                scale = cfg.scale
            elif tier == "large":
                scale, lo = cfg.large_scale, LARGE_MIN
            img, box = _paste(bg, mark, r, scale, cfg.strength * (0.6 if tier == "small" else 1.0), hi, lo)
        img.save(listings / f"{lid}.jpg", quality=int(r.integers(*cfg.jpeg_quality)))
        size = max(box[2] - box[0], box[3] - box[1]) / min(img.size) if box else None
        truth.append(TruthRow(lid, tier, brand, mark_id, variant if tier != "none" else "", box, name, size))

    with open(listings / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "image_path"])
        w.writerows([t.listing_id, f"{t.listing_id}.jpg"] for t in truth)
    with open(out_dir / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRUTH_COLUMNS)
        w.writerows(t.csv_row() for t in truth)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "listings_per_tier": counts,
        "listings_per_band": {b: sum(t.band == b for t in truth) for b in BANDS},
        "changes": CHANGES,
        "sources": {"marks": {"package": "devicon", "version": package_version(marks_dir), "licence": "MIT"},
                    "cross": {"package": "simple-icons", "version": package_version(cross_dir) if cross_dir else None, "licence": "CC0-1.0"},
                    "photos": sorted({p for p, _ in photos})},
        "gallery_brands": gallery_brands, "cross_brands": cross_brands, "unregistered_brands": sorted(unregistered),
        "skipped": [f"{n}: {why}" for n, why in skipped],
    }
    (out_dir / "bench.json").write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------- a miniature of the sources

def write_sample_sources(root: str | Path, *, brands: int = 12, photos: int = 4, seed: int = 0) -> dict[str, Path]:
    """Generated stand-ins for the three sources in their real layouts (a devicon package, a simple-icons package,
    a photo folder), small enough for the quick benchmark and the tests to build a bench without network."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    dev, si, ph = root / "devicon" / "package", root / "simple-icons" / "package", root / "photos" / "sample"
    for d in (dev / "icons", si / "icons", si / "data", ph):
        d.mkdir(parents=True, exist_ok=True)
    meta, icons = [], []
    for b in range(brands):
        name = f"brand{b:02d}"
        colours = ["#%02X%02X%02X" % tuple(int(c) for c in rng.integers(0, 200, 3)) for _ in range(3)]
        shapes = []
        for k in range(10):  # sharp-cornered polygons in several colours: keypoints for SIFT, a distinct picture per brand
            cx, cy, r = rng.uniform(25, 75), rng.uniform(25, 75), rng.uniform(10, 28)
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = " ".join(f"{cx + r * np.cos(a):.1f},{cy + r * np.sin(a):.1f}" for a in angles)
            shapes.append(f'<polygon points="{pts}" fill="{colours[k % 3]}"/>')
        (dev / "icons" / name).mkdir(exist_ok=True)
        (dev / "icons" / name / f"{name}-original.svg").write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">{"".join(shapes)}</svg>')
        meta.append({"name": name, "color": colours[0]})
        if b % 2 == 0:  # half the brands have a one-colour glyph: the cross tier
            glyph = "".join(re.sub(r' fill="[^"]*"', "", sh) for sh in shapes[:4])  # one colour, set by the importer
            (si / "icons" / f"{name}.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">{glyph}</svg>')
            icons.append({"title": name.capitalize(), "slug": name, "hex": colours[0][1:]})
    (dev / "devicon.json").write_text(json.dumps(meta))
    (dev / "package.json").write_text(json.dumps({"name": "devicon", "version": "0.0.0-sample"}))
    (si / "data" / "simple-icons.json").write_text(json.dumps(icons))
    (si / "package.json").write_text(json.dumps({"name": "simple-icons", "version": "0.0.0-sample"}))
    for i in range(photos):
        procedural_background(800, 600, rng).save(ph / f"photo{i}.jpg", quality=92)
    return {"marks": dev, "cross": si, "photos": ph.parent}
