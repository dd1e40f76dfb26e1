"""The brand registry: a gallery folder of genuine marks, one folder a brand, with optional brands.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from markguard.datasets.decode import composite, load_mark
from markguard.config import yaml_error
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import atomic_write_text, excerpt, printable, real_under

MARK_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".svg"}


@dataclass
class MarkRef:
    """One reference image of a mark: ``mark`` is the file's stem, unique within its brand."""

    brand: str
    mark: str
    path: Path


@dataclass
class Brand:
    id: str
    name: str
    authorized_sellers: list[str] = field(default_factory=list)
    threshold: float | None = None
    marks: list[MarkRef] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # other names a listing's text may show the brand as
    wordmarks: list[str] = field(default_factory=list)  # the words the brand's wordmark marks spell, when not its name

    @property
    def names(self) -> list[str]:
        """Every text that points at the brand: its name, aliases and wordmark words (text evidence reads these)."""
        return list(dict.fromkeys([self.name, *self.aliases, *self.wordmarks]))


@dataclass
class Gallery:
    root: Path
    brands: dict[str, Brand]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why): names that cannot become a brand or mark id

    @property
    def marks(self) -> list[MarkRef]:
        return [m for b in self.brands.values() for m in b.marks]


BRAND_KEYS = {"name": str, "authorized_sellers": list, "threshold": (int, float), "aliases": list, "wordmarks": list}
TEXT_LISTS = ("aliases", "wordmarks")  # lists of names: each entry must be a non-empty string


def _read_brands_yaml(path: Path) -> dict[str, dict]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MarkguardError(yaml_error(path, e, "see the brands.yaml format in docs/contracts.md")) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("brands", {}), dict):
        raise MarkguardError(f"{path}: expected a mapping 'brands: {{<brand_id>: {{name: ...}}}}'")
    unknown = set(doc) - {"brands"}
    if unknown:
        raise MarkguardError(f"{path}: unknown top-level key(s) {sorted(unknown)}; only 'brands' is allowed")
    brands = doc.get("brands") or {}
    for brand_id, entry in brands.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            raise MarkguardError(f"{path}: brands.{brand_id} must be a mapping with keys {sorted(BRAND_KEYS)}")
        for key, value in entry.items():
            if key not in BRAND_KEYS:
                raise MarkguardError(f"{path}: brands.{brand_id}.{key} is not a known key; allowed: {', '.join(sorted(BRAND_KEYS))}")
            # bool is an int to isinstance, but "threshold: yes" is a mistake, not a similarity
            if not isinstance(value, BRAND_KEYS[key]) or isinstance(value, bool):
                raise MarkguardError(f"{path}: brands.{brand_id}.{key} has the wrong type ({type(value).__name__}: {excerpt(value)})")
        for key in TEXT_LISTS:
            for i, name in enumerate(entry.get(key) or []):
                if not isinstance(name, str) or not name.strip():
                    raise MarkguardError(f"{path}: brands.{brand_id}.{key}[{i}] must be a non-empty string, not {excerpt(name)}")
        for i, seller in enumerate(entry.get("authorized_sellers") or []):
            # a seller id as a listing carries it: text, or a whole number YAML read as one; null is no seller
            if isinstance(seller, bool) or not isinstance(seller, (str, int)) or (isinstance(seller, str) and not seller.strip()):
                raise MarkguardError(f"{path}: brands.{brand_id}.authorized_sellers[{i}] must be a seller id (text or a whole "
                                     f"number), not {excerpt(seller)}")
        threshold = entry.get("threshold")
        if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
            raise MarkguardError(f"{path}: brands.{brand_id}.threshold={threshold} must be a similarity in [-1, 1]")
        brands[brand_id] = entry
    return brands


def read_brands_yaml(path: str | Path) -> dict[str, dict]:
    """brands.yaml's ``brands`` mapping, validated; raises one line naming the file, the key and the allowed keys."""
    return _read_brands_yaml(Path(path))


def merge_brand_names(root: str | Path, names: dict[str, str]) -> Path:
    """Add display names to ``root/brands.yaml`` for brands it lacks, keeping every entry already there."""
    path = Path(root) / "brands.yaml"
    brands = _read_brands_yaml(path) if path.exists() else {}
    for brand_id, name in names.items():
        brands.setdefault(brand_id, {}).setdefault("name", name)
    # through a file of our own and a rename: a reader never sees half a file, and a link is never written through
    atomic_write_text(path, yaml.safe_dump({"brands": brands}, allow_unicode=True, sort_keys=True))
    return path


def load_gallery(root: str | Path) -> Gallery:
    """Read a gallery; fails with one line when the folder is missing, empty or its brands.yaml is wrong."""
    gallery = _scan_gallery(Path(root))
    if not any(b.marks for b in gallery.brands.values()):
        raise MarkguardError(f"{root}: gallery has no mark images; add <brand_id>/<mark_id>.png|jpg|webp|svg files")
    return gallery


def split_brands(gallery: Gallery, holdout: int) -> tuple[list[MarkRef], list[str]]:
    """Training marks and the held-out brands (the last ``holdout`` brand ids in sorted order)."""
    brand_ids = sorted(b for b, br in gallery.brands.items() if br.marks)
    if holdout >= len(brand_ids):
        raise MarkguardError(f"holdout_brands={holdout} leaves no brand to train on ({len(brand_ids)} brands with marks)")
    held = brand_ids[len(brand_ids) - holdout :] if holdout else []
    return [m for m in gallery.marks if m.brand not in held], held


def _scan_gallery(root: Path) -> Gallery:
    """The gallery's brands and marks as found, with brands.yaml checked; empty brands are kept."""
    if not root.is_dir():
        raise MarkguardError(f"{root}: gallery folder not found; give a folder with one sub-folder per brand (see docs/contracts.md)")
    meta_path = root / "brands.yaml"
    meta = _read_brands_yaml(meta_path) if meta_path.exists() else {}
    brands: dict[str, Brand] = {}
    skipped: list[tuple[Path, str]] = []
    for brand_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _utf8(brand_dir.name):
            skipped.append((brand_dir, NOT_UTF8))
            continue
        entry = meta.get(brand_dir.name, {})
        brand = Brand(
            id=brand_dir.name,
            name=entry.get("name", brand_dir.name),
            authorized_sellers=[str(s) for s in entry.get("authorized_sellers", [])],
            threshold=entry.get("threshold"),
            aliases=list(entry.get("aliases") or []),
            wordmarks=list(entry.get("wordmarks") or []),
        )
        for f in sorted(brand_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in MARK_SUFFIXES:
                if _utf8(f.name):
                    brand.marks.append(MarkRef(brand.id, f.stem, f))
                else:
                    skipped.append((f, NOT_UTF8))
        brands[brand.id] = brand
    for brand_id in meta:
        if brand_id not in brands:
            raise MarkguardError(f"{meta_path}: brand '{brand_id}' has no folder {root / brand_id}; add its marks or remove the entry")
    return Gallery(root, brands, skipped)


NOT_UTF8 = "name is not valid UTF-8, so it cannot be a brand or mark id; skipped (rename it)"


def _utf8(name: str) -> bool:
    """Whether a file name read from disk is text: one that is not holds surrogate escapes of its bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- gallery check

TINY_SIDE = 32  # below this short side a mark carries too little detail to embed reliably
BLANK_RANGE = 16  # grey levels: a mark with less contrast than this once flattened shows nothing
# Finding "the same picture" takes two steps. The perceptual hashes only pick candidates: on flat
# logo art a 64-bit hash is a weak witness (thousands of unrelated simple-icons pairs sit within a
# few bits), but a re-encoded copy of a mark (JPEG, resized) stays within these bits of the original.
HASH_PREFILTER = (8, 24)  # (dHash, pHash) bits
# The candidates are then compared pixel by pixel: the correlation of 32x32 grey thumbnails. On the
# simple-icons set every re-encoding (JPEG q50-90, 64-400 px) scored >= 0.96, and 11 of ~3,500
# brands' marks had a mark of another brand at >= 0.95 (most of them genuinely near-identical).
SAME_PICTURE = 0.95
THUMB_SIDE = 32


@dataclass
class GalleryIssue:
    path: Path
    reason: str


@dataclass
class DuplicateMark:
    """One picture registered under two brands: a listing showing it would match either."""

    a: MarkRef
    b: MarkRef
    similarity: float  # correlation of the two marks' grey thumbnails, 1.0 = identical
    hash_distance: tuple[int, int]  # (dHash, pHash) Hamming distances, of 64 bits each


@dataclass
class GalleryReport:
    """What ``check_gallery`` found, and what an index built from the gallery would hold."""

    root: Path
    indexed: dict[str, int]  # brand id -> readable marks, for brands that have any
    unreadable: list[GalleryIssue] = field(default_factory=list)
    empty_brands: list[str] = field(default_factory=list)
    duplicates: list[DuplicateMark] = field(default_factory=list)
    blank: list[GalleryIssue] = field(default_factory=list)  # nothing visible once flattened onto white
    id_clashes: list[GalleryIssue] = field(default_factory=list)  # two files of one brand with the same mark id
    tiny: list[GalleryIssue] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files in brand folders that are not mark images
    skipped: list[GalleryIssue] = field(default_factory=list)  # names that are not UTF-8: not indexed, named

    @property
    def brands(self) -> int:
        return len(self.indexed)

    @property
    def marks(self) -> int:
        return sum(self.indexed.values())

    @property
    def errors(self) -> int:
        """Problems that make the index wrong; tiny images and ignored files are warnings."""
        return len(self.unreadable) + len(self.empty_brands) + len(self.duplicates) + len(self.blank) + len(self.id_clashes)

    @property
    def warnings(self) -> int:
        return len(self.tiny) + len(self.ignored) + len(self.skipped)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def lines(self) -> list[str]:
        out = [f"{self.root}: {self.marks} marks of {self.brands} brands will be indexed"]
        out += [f"error: unreadable {i.path}: {i.reason}" for i in self.unreadable]
        out += [f"error: brand '{b}' has no mark images; add <brand>/<mark>.png or remove the folder" for b in self.empty_brands]
        by_brands: dict[tuple[str, str], list[DuplicateMark]] = {}
        for d in self.duplicates:  # one line a brand pair: colour variants would repeat every finding
            by_brands.setdefault((d.a.brand, d.b.brand), []).append(d)
        for (a, b), found in by_brands.items():
            best = max(found, key=lambda d: d.similarity)
            more = f" and {len(found) - 1} more pair(s)" if len(found) > 1 else ""
            out.append(
                f"error: {best.a.path} ({a}) and {best.b.path} ({b}) are the same or a near-identical picture "
                f"(similarity {best.similarity:.3f}){more}; keep it under one brand"
            )
        out += [f"error: {i.path}: {i.reason}" for i in self.blank + self.id_clashes]
        out += [f"warning: {i.path}: {i.reason}" for i in self.tiny]
        out += [f"warning: {p}: not a mark image ({', '.join(sorted(MARK_SUFFIXES))}); ignored" for p in self.ignored]
        out += [f"warning: {i.path}: {i.reason}" for i in self.skipped]
        out.append(f"{self.errors} error(s), {self.warnings} warning(s)")
        return [printable(line) for line in out]  # a file name that is not UTF-8 must not stop the printing


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash of a 9x8 (w x h) grey array: does brightness rise left to right."""
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a 32x32 grey array: the 8x8 lowest DCT frequencies against their median."""
    low = (_DCT32 @ gray.astype(np.float64) @ _DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term only says how bright the whole picture is
    return int(np.packbits(bits).view(">u8")[0])


def flatten_gray(img) -> np.ndarray:
    """The mark as the index sees it, flattened onto white (as ``decode.composite`` does), in grey levels."""
    return np.asarray(composite(img).convert("L"), dtype=np.uint8)


def image_hashes(gray: np.ndarray) -> tuple[int, int]:
    """(dHash, pHash) of a grey-level picture."""
    img = Image.fromarray(gray)
    small = np.asarray(img.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    mid = np.asarray(img.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    return dhash(small), phash(mid)


def thumbnail_vector(gray: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The picture shrunk to ``side`` x ``side``, zero-mean and unit-length: two such vectors' dot product is their correlation."""
    v = np.asarray(Image.fromarray(gray).resize((side, side), Image.Resampling.BOX), dtype=np.float64).ravel()
    v = v - v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def hamming_pairs(hashes: np.ndarray, max_distances: tuple[int, ...], chunk: int = 1024) -> list[tuple[int, int, tuple[int, ...]]]:
    """(i, j, distances) for every i < j whose hash in each column c of ``hashes`` (n, k uint64) is within ``max_distances[c]``.

    Brute force in row chunks: n marks cost n^2/2 XORs a column, which is seconds for tens of
    thousands of marks, and memory stays at chunk * n.
    """
    n, k = hashes.shape
    pairs = []
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk]
        dists = [_popcount(block[:, c, None] ^ hashes[None, :, c]).astype(np.int32) for c in range(k)]
        close = np.ones(dists[0].shape, dtype=bool)
        for c in range(k):
            close &= dists[c] <= max_distances[c]
        for i, j in zip(*np.nonzero(close)):
            if start + i < j:
                pairs.append((int(start + i), int(j), tuple(int(d[i, j]) for d in dists)))
    return pairs


def check_gallery(root: str | Path, *, min_similarity: float = SAME_PICTURE, tiny_side: int = TINY_SIDE) -> GalleryReport:
    """Read every mark of a gallery once and report what would go wrong when it is indexed.

    Finds files that do not decode (or link outside the gallery), brands without marks, marks that
    show nothing once flattened onto white (a white logo on a transparent background), the same
    picture registered under two brands (hash candidates confirmed by thumbnail correlation >=
    ``min_similarity``), two files with one mark id, and marks under ``tiny_side`` pixels on their
    short side. A brands.yaml error raises as in ``load_gallery``.
    """
    root = Path(root)
    gallery = _scan_gallery(root)
    brands = gallery.brands
    report = GalleryReport(root, indexed={}, skipped=[GalleryIssue(p, why) for p, why in gallery.skipped])
    readable: list[MarkRef] = []
    hashes: list[tuple[int, int]] = []
    thumbs: list[np.ndarray] = []
    real_root = os.path.realpath(root)
    for brand in brands.values():
        report.ignored += [
            f for f in sorted((root / brand.id).iterdir())
            if f.is_file() and f.suffix.lower() not in MARK_SUFFIXES and not f.name.startswith(".") and _utf8(f.name)
        ]
        count = 0
        seen: dict[str, Path] = {}
        for mark in brand.marks:
            if mark.mark in seen:
                report.id_clashes.append(GalleryIssue(mark.path, f"mark id '{mark.mark}' is also {seen[mark.mark].name}; rename one"))
            seen.setdefault(mark.mark, mark.path)
            if real_under(real_root, mark.path) is None:
                report.unreadable.append(GalleryIssue(mark.path, "refused: links outside the gallery"))
                continue
            try:
                img = load_mark(mark.path)
            except (DecodeError, OSError, UnicodeDecodeError) as e:
                reason = e.reason if isinstance(e, DecodeError) else f"cannot read ({type(e).__name__})"
                report.unreadable.append(GalleryIssue(mark.path, reason))
                continue
            count += 1
            if min(img.size) < tiny_side:
                report.tiny.append(GalleryIssue(mark.path, f"tiny ({img.width}x{img.height}, short side under {tiny_side} px); use a larger image"))
            gray = flatten_gray(img)
            if int(gray.max()) - int(gray.min()) < BLANK_RANGE:
                # every blank picture matches every other and any plain region of a listing photo
                report.blank.append(GalleryIssue(mark.path, "shows nothing once flattened onto white (a white mark on a transparent background?); give it a background"))
                continue
            readable.append(mark)
            hashes.append(image_hashes(gray))
            thumbs.append(thumbnail_vector(gray))
        if count:
            report.indexed[brand.id] = count
        elif not brand.marks:
            report.empty_brands.append(brand.id)
    if hashes:
        table = np.array(hashes, dtype=np.uint64)
        for i, j, dist in hamming_pairs(table, HASH_PREFILTER):
            # variants of one mark inside a brand (colour, black) are expected to look alike
            if readable[i].brand == readable[j].brand:
                continue
            similarity = float(thumbs[i] @ thumbs[j])
            if similarity >= min_similarity:
                report.duplicates.append(DuplicateMark(readable[i], readable[j], round(similarity, 4), dist))
    return report
