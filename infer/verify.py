"""Verify: a geometric check of a scan's best candidate marks (local features + RANSAC homography) that re-scores them and tightens their boxes.

Learned retrieval finds candidates that keypoints miss (small, blurred, recoloured marks);
keypoints confirm exact copies with a precision no embedding gives, and the homography says
exactly where the mark's corners are. OpenCV is optional (the ``verify`` extra) and loads here only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from markguard.errors import DecodeError, MarkguardError
from markguard.infer.evidence import Candidate, as_candidate, geometry

METHODS = ("sift", "orb")
REF_PAD = 16  # white border around a reference: detectors skip a band near the image edge


@dataclass(frozen=True)
class VerifyConfig:
    """How candidates are checked and how the check changes their score."""

    method: str = "sift"  # sift (robust to blur and scale) | orb (faster, weaker on small crops)
    candidates: int = 3  # best matches of a photo that get checked
    # The gate (:func:`plan`): verification costs far more than the search, so only candidates near or above the review
    # threshold (at most ``near`` below it, in the units the thresholds are on) are checked. The gate looks at one photo
    # at a time, so a row never depends on which photos shared its batch (a resumed or sharded scan gives the same rows).
    near: float = 0.05
    margin: float = 0.25  # look this far beyond the region on each side: a region may cut through the mark
    crop_side: int = 256  # upscale small crops so their long side is at least this (keypoints need ~30 px patches)
    crop_max: int = 400  # and shrink large ones to at most this: the reference is drawn at 256 px, and keypoint detection
    # on a 640 px crop costs twice a 400 px one for no more verified marks (benchmarks/results/evidence.md)
    ref_side: int = 256  # references are rendered with this long side
    ratio: float = 0.8  # Lowe's ratio test on the two nearest descriptors
    ransac_px: float = 5.0  # RANSAC reprojection tolerance, in crop pixels
    min_inliers: int = 8  # fewer: not verified, the match keeps its embedding score and box
    full_inliers: int = 40  # this many or more: the geometric evidence counts fully

    def __post_init__(self):
        if self.method not in METHODS:
            raise MarkguardError(f"verify method '{self.method}' is unknown; choose one of {', '.join(METHODS)}")
        if not self.near >= 0.0:
            raise MarkguardError(f"verify near {self.near} must be 0 or more (how far below the review threshold a candidate is still checked)")


def plan(values: list[list[float]], floors: list[list[float]], cfg: VerifyConfig, has_box: list[list[bool]] | None = None) -> list[set[int]]:
    """The gate: which matches of each photo are checked (their positions in the photo's list).

    ``values[i][j]`` is what the thresholds apply to for match j of photo i, before verification;
    ``floors[i][j]`` the value from which it is worth checking (its review threshold). A match is
    checked when it is among the photo's best ``cfg.candidates``, has a box, and its value is at
    least ``floor - cfg.near``: far below the threshold, geometry could lift it only past a
    threshold it is far from, and checking it costs as much as checking a real one.
    """
    out = []
    for i, (vals, fls) in enumerate(zip(values, floors)):
        order = sorted(range(len(vals)), key=lambda j: -vals[j])[: cfg.candidates]
        out.append({j for j in order if vals[j] >= fls[j] - cfg.near and (has_box is None or has_box[i][j])})
    return out


@dataclass
class Verification:
    """The outcome of matching one reference mark against one region of a photo."""

    inliers: int
    tentative: int  # descriptor matches that passed the ratio test
    box: tuple[float, float, float, float] | None  # the projected reference, in the photo's pixels; None unless verified
    homography: np.ndarray | None  # reference pixels → photo pixels
    ref: "RefFeatures | None" = None  # the reference (or its mirror image) this outcome is of

    @property
    def verified(self) -> bool:
        return self.box is not None


@dataclass
class RefFeatures:
    points: np.ndarray  # (N, 2) float32, reference pixels
    descriptors: np.ndarray | None
    corners: np.ndarray  # (4, 2): the mark's own box (its opaque pixels), reference pixels
    mirrored: bool = False  # of the mark flipped left to right


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MarkguardError("geometric verification needs OpenCV; pip install 'markguard[verify]' or scan with --no-verify") from None
    return cv2


_LOCAL = threading.local()


def _detector(method: str):
    """The keypoint detector, one a thread: photos are checked on several threads (:func:`verify_matches`)."""
    made = _LOCAL.__dict__.setdefault("detectors", {})
    if method not in made:
        cv2 = _cv2()
        if method == "sift":
            made[method] = cv2.SIFT_create(nfeatures=1000, contrastThreshold=0.02)  # flat printed marks: the default 0.04 finds too few
        else:
            made[method] = cv2.ORB_create(nfeatures=1000, edgeThreshold=15, patchSize=15, fastThreshold=10)
    return made[method]


def _features(gray: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray | None]:
    kps, desc = _detector(method).detectAndCompute(gray, None)
    return np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2), desc


@functools.lru_cache(maxsize=4096)
def reference_features(source: str, method: str = "sift", ref_side: int = 256, mirrored: bool = False,
                       inverted: bool = False) -> RefFeatures | None:
    """Keypoints of a reference mark flattened on white (as the index embeds it); cached per file in memory, and on
    disk by the file's content (:func:`_stored_features`): detecting them is most of what verification costs in a
    scan's first few hundred photos, and a gallery changes far less often than the dumps scanned against it.

    ``mirrored``: of the mark flipped left to right — a mirrored copy is still the mark, but no
    keypoint descriptor matches its mirror image. ``inverted``: of its grey levels inverted — a
    mark printed light on dark has the reference's gradients reversed; matching the photo against
    the inverted reference (cached) costs a descriptor match where inverting the photo would cost
    another keypoint detection. None when the file cannot be read any more (moved or corrupt):
    that mark cannot be verified.
    """
    content = _content_digest(source)
    if content is None:
        return None
    key = hashlib.sha256(f"{content}|{method}|{ref_side}|{int(mirrored)}|{int(inverted)}|{REF_CACHE_VERSION}".encode()).hexdigest()[:40]
    stored = _stored_features(key)
    if stored is not None:
        return stored
    feats = _reference_features(source, method, ref_side, mirrored, inverted)
    if feats is not None:
        _store_features(key, feats)
    return feats


@functools.lru_cache(maxsize=4096)
def _content_digest(source: str) -> str | None:
    """The reference file's sha256, read once a process for its four views; None when it cannot be read."""
    try:
        with open(source, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


REF_CACHE_VERSION = "2"  # bump when detection or rendering of references changes: older cached keypoints are then not found


def _ref_cache_file(key: str):
    from markguard.infer.backends import cache_root

    return cache_root() / "verify" / key[:2] / f"{key}.npz"


def _stored_features(key: str) -> RefFeatures | None:
    """Keypoints cached on disk under ``key`` (a hash of the reference's bytes and the detection settings); None when
    absent or unreadable (then they are detected again and the file replaced). Read without pickles."""
    import io

    from markguard.fsio import open_own_file

    path = _ref_cache_file(key)
    try:
        with open_own_file(path, "rb") as f:
            z = np.load(io.BytesIO(f.read()), allow_pickle=False)
            points, corners = z["points"].astype(np.float32), z["corners"].astype(np.float32)
            desc = z["descriptors"] if bool(z["has_descriptors"]) else None
            mirrored = bool(z["mirrored"])
    except (OSError, ValueError, KeyError, MarkguardError, EOFError):
        return None
    if points.ndim != 2 or points.shape[1:] != (2,) or corners.shape != (4, 2) or (desc is not None and len(desc) != len(points)):
        return None
    if desc is not None and z["descriptor_dtype"].item() == "float32":
        desc = desc.astype(np.float32)  # SIFT's descriptors are whole numbers 0-255, stored as bytes
    return RefFeatures(points, desc, corners, mirrored)


def _store_features(key: str, feats: RefFeatures) -> None:
    """Cache ``feats`` on disk (atomically; a folder that cannot be written only costs the detection next time)."""
    import io

    from markguard.fsio import atomic_write_bytes, own_folder

    desc = feats.descriptors
    dtype = "none" if desc is None else str(desc.dtype)
    if desc is not None and desc.dtype == np.float32 and np.array_equal(desc, np.clip(np.round(desc), 0, 255)):
        desc = desc.astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, points=feats.points, corners=feats.corners, mirrored=np.array(feats.mirrored),
             has_descriptors=np.array(desc is not None), descriptors=np.zeros((0, 0), np.uint8) if desc is None else desc,
             descriptor_dtype=np.array(dtype))
    path = _ref_cache_file(key)
    try:
        folder = own_folder(path.parent.parent.parent, path.parent.parent.name, path.parent.name)
        atomic_write_bytes(folder / path.name, buf.getvalue())
    except (OSError, MarkguardError):
        pass


def _reference_features(source: str, method: str, ref_side: int, mirrored: bool, inverted: bool) -> RefFeatures | None:
    from PIL import Image

    from markguard.datasets.decode import composite, load_mark

    try:
        mark = load_mark(source)
    except (DecodeError, OSError):
        return None
    bbox = mark.getchannel("A").getbbox() if mark.mode == "RGBA" else None
    bbox = bbox or (0, 0, mark.width, mark.height)
    flat = composite(mark)
    if mirrored:
        flat = flat.transpose(Image.FLIP_LEFT_RIGHT)
        bbox = (mark.width - bbox[2], bbox[1], mark.width - bbox[0], bbox[3])
    f = ref_side / max(flat.size)
    flat = flat.resize((max(1, round(flat.width * f)), max(1, round(flat.height * f))), Image.BICUBIC)
    canvas = Image.new("RGB", (flat.width + 2 * REF_PAD, flat.height + 2 * REF_PAD), (255, 255, 255))
    canvas.paste(flat, (REF_PAD, REF_PAD))
    gray = np.asarray(canvas.convert("L"))
    if inverted:
        gray = np.ascontiguousarray(255 - gray)
    pts, desc = _features(gray, method)
    x0, y0, x1, y1 = (np.array(bbox, dtype=np.float32) * f) + REF_PAD
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)
    return RefFeatures(pts, desc, corners, mirrored)


def reference_variants(source: str, cfg: VerifyConfig = VerifyConfig()) -> list[RefFeatures | None]:
    """The reference as registered and mirrored (a counterfeit flips a logo as often as it recolours it), each also with
    its grey levels inverted (printed light on dark): what a region is matched against."""
    return [reference_features(source, cfg.method, cfg.ref_side, mirrored=mi, inverted=inv)
            for mi, inv in ((False, False), (True, False), (False, True), (True, True))]


def warm_references(sources, cfg: VerifyConfig = VerifyConfig(), *, threads: int | None = None) -> dict:
    """Detect (or find cached) the keypoints of every reference file in ``sources``, all four views, so that the first
    scan against a new gallery starts as fast as the later ones (``markguard index build`` and ``index add`` call it:
    detecting them in a scan was two thirds of its first few hundred photos' verification).

    Returns what it did: references, how many could not be read (they cannot be verified in a scan either), seconds;
    or why it did nothing (OpenCV, the ``verify`` extra, is not installed: a scan then needs ``--no-verify``)."""
    import time

    try:
        _cv2()
    except MarkguardError:
        return {"skipped": "OpenCV is not installed (pip install 'markguard[verify]')"}
    todo = sorted(set(sources))
    t = time.perf_counter()
    views = _side_by_side(lambda s: reference_variants(s, cfg), todo, threads)
    unreadable = sum(all(v is None for v in vs) for vs in views)
    return {"references": len(todo), "unreadable": unreadable, "seconds": round(time.perf_counter() - t, 2)}


def _match(ref: RefFeatures, desc: np.ndarray, method: str, ratio: float) -> list[tuple[int, int]]:
    cv2 = _cv2()
    norm = cv2.NORM_L2 if method == "sift" else cv2.NORM_HAMMING
    best: dict[int, tuple[float, int]] = {}
    for p in cv2.BFMatcher(norm).knnMatch(ref.descriptors, desc, k=2):
        if len(p) == 2 and p[0].distance < ratio * p[1].distance:
            # one reference point per photo point: many-to-one matches let RANSAC "fit" a homography
            # that collapses the reference onto a single blob, with every such match an inlier
            if p[0].trainIdx not in best or p[0].distance < best[p[0].trainIdx][0]:
                best[p[0].trainIdx] = (p[0].distance, p[0].queryIdx)
    return [(q, t) for t, (_, q) in best.items()]


def _plausible(quad: np.ndarray, window: tuple[float, float, float, float]) -> bool:
    """A homography RANSAC may still return for chance matches folds, explodes or shrinks the mark to nothing."""
    cross = []
    for i in range(4):
        a, b, c = quad[i], quad[(i + 1) % 4], quad[(i + 2) % 4]
        cross.append((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]))
    if not (all(v > 0 for v in cross) or all(v < 0 for v in cross)):
        return False  # not convex: a twisted or mirrored-through-itself quad
    wx0, wy0, wx1, wy1 = window
    w, h = wx1 - wx0, wy1 - wy0
    x0, y0 = quad.min(0)
    x1, y1 = quad.max(0)
    if (x1 - x0) < 4 or (y1 - y0) < 4:
        return False
    # the mark must lie (mostly) inside the window it was found in
    return x0 > wx0 - 0.25 * w and y0 > wy0 - 0.25 * h and x1 < wx1 + 0.25 * w and y1 < wy1 + 0.25 * h


def verify_region(image: np.ndarray, box, ref: RefFeatures | list[RefFeatures], cfg: VerifyConfig = VerifyConfig(),
                  memo: dict | None = None) -> Verification:
    """Match ``ref`` against the region ``box`` (x0, y0, x1, y1, pixels) of ``image`` (H, W, 3 uint8 RGB); with a list
    of references (``reference_variants``: as registered, mirrored, inverted), the best of them, the region's keypoints
    found once a view. The outcome's ``ref`` says which; None only when no reference had keypoints to match.

    ``memo`` (one dict per photo) keeps each crop's keypoints: a photo's candidates often share a region (the same
    mark's other reference files, the next brands found there), and detection is most of a check's cost."""
    cv2 = _cv2()
    H, W = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = cfg.margin * (x1 - x0), cfg.margin * (y1 - y0)
    cx0, cy0 = int(max(0, np.floor(x0 - mx))), int(max(0, np.floor(y0 - my)))
    cx1, cy1 = int(min(W, np.ceil(x1 + mx))), int(min(H, np.ceil(y1 + my)))
    refs = [r for r in (ref if isinstance(ref, list) else [ref]) if r is not None and r.descriptors is not None and len(r.points) >= 4]
    if cx1 - cx0 < 4 or cy1 - cy0 < 4 or not refs:
        return Verification(0, 0, None, None)
    long = max(cx1 - cx0, cy1 - cy0)
    up = max(1.0, cfg.crop_side / long) if long <= cfg.crop_max else cfg.crop_max / long
    best = Verification(0, 0, None, None)
    memo = {} if memo is None else memo
    window = (cx0, cy0, cx1, cy1, cfg.method, cfg.crop_side, cfg.crop_max)
    for k in range(2):
        if (window, k) not in memo:
            if (window, "views") not in memo:
                crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
                if up != 1.0:
                    crop = cv2.resize(crop, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC if up > 1.0 else cv2.INTER_AREA)
                memo[(window, "views")] = _gray_views(crop)
            views = memo[(window, "views")]
            memo[(window, k)] = _features(views[k], cfg.method) if k < len(views) else None
        if memo[(window, k)] is None:
            break
        pts, desc = memo[(window, k)]
        for r in refs:
            v = _verify_view(pts, desc, up, (cx0, cy0, cx1, cy1), (W, H), r, cfg)
            if (v.verified, v.inliers) > (best.verified, best.inliers) or best.ref is None:
                best = dataclasses.replace(v, ref=r)
        if best.verified:
            break  # conclusive already: the main colour axis is for marks the luminance does not show, and costs a detection
    return best


def _gray_views(crop: np.ndarray) -> list[np.ndarray]:
    """Luminance, and the crop's main colour axis: a teal mark on a purple shirt has almost no luminance
    contrast. (A mark printed light on dark is matched by the inverted reference, not a third view.)"""
    cv2 = _cv2()
    views = [cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)]
    px = crop.reshape(-1, 3).astype(np.float32)
    px -= px.mean(0)
    _, _, vt = np.linalg.svd(px[:: max(1, len(px) // 4096)], full_matrices=False)
    axis = px @ vt[0]
    lo, hi = np.percentile(axis, [1, 99])
    if hi - lo > 1e-3:
        main = np.clip((axis - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8).reshape(crop.shape[:2])
        views.append(main)
    return views


def _verify_view(pts: np.ndarray, desc, up: float, window, size, ref: RefFeatures, cfg: VerifyConfig) -> Verification:
    cv2 = _cv2()
    cx0, cy0 = window[:2]
    W, H = size
    if desc is None or len(pts) < 4:
        return Verification(0, 0, None, None)
    pairs = _match(ref, desc, cfg.method, cfg.ratio)
    if len(pairs) < 4:
        return Verification(0, len(pairs), None, None)
    src = ref.points[[q for q, _ in pairs]]
    dst = pts[[t for _, t in pairs]] / up + np.array([cx0, cy0], dtype=np.float32)  # back to image pixels
    Hm, mask = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_px / up)
    inliers = int(mask.sum()) if mask is not None else 0
    if Hm is None or inliers < cfg.min_inliers:
        return Verification(inliers, len(pairs), None, None)
    quad = cv2.perspectiveTransform(ref.corners[None], Hm)[0]
    if not _plausible(quad, window):
        return Verification(inliers, len(pairs), None, None)
    bx0, by0 = np.clip(quad.min(0), 0, [W, H])
    bx1, by1 = np.clip(quad.max(0), 0, [W, H])
    return Verification(inliers, len(pairs), (float(bx0), float(by0), float(bx1), float(by1)), Hm)


def rescore(score: float, v: Verification, cfg: VerifyConfig = VerifyConfig()) -> float:
    """Verified: move the score toward 1 by the strength of the geometric evidence. Not verified: unchanged,
    since near-matches (mirrored, recoloured, redrawn marks) defeat keypoints while still being infringements."""
    if not v.verified:
        return score
    g = min(1.0, v.inliers / cfg.full_inliers)
    return score + (1.0 - score) * g


_SOURCES: "weakref.WeakKeyDictionary[object, tuple[int, dict]]" = weakref.WeakKeyDictionary()


def _sources(index) -> dict[tuple[str, str], list[str]]:
    """Reference files per (brand, mark), read once per index (again after it grows or shrinks)."""
    n = len(index)
    cached = _SOURCES.get(index)
    if cached is None or cached[0] != n:
        out: dict[tuple[str, str], list[str]] = {}
        for rec in index.records():
            if rec.source:
                out.setdefault((rec.brand, rec.mark), []).append(rec.source)
        cached = (n, out)
        _SOURCES[index] = cached
    return cached[1]


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an (H, W, 3) uint8 RGB image."""
    m = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
    img = (x.detach().float().cpu() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return img.permute(1, 2, 0).contiguous().numpy()


def verify_matches(x: torch.Tensor, found: list[list], searcher, to_orig: list[tuple[float, float]], factor: float,
                   cfg: VerifyConfig | None = None, *, orig_size: list[tuple[int, int]] | None = None,
                   checks: list[set[int]] | None = None, hires: list[torch.Tensor] | None = None,
                   hires_to_orig: list[tuple[float, float]] | None = None, threads: int | None = None) -> list[list[Candidate]]:
    """Check each photo's chosen matches against their reference marks: a verified match gets a higher score and
    the projected reference's box; every checked match gets its geometric evidence (inliers, the share of the
    reference's keypoints they cover, the projected outline); the rest pass through unchanged. Returns ``found``'s
    shape, as candidates (``found`` may hold ``results.Match``es read back; they are typed first).

    ``checks[i]`` holds the positions of photo i's matches to check (the gate, :func:`plan`); None: its best
    ``cfg.candidates``. Keypoints come from ``hires[i]`` (the photo as decoded, uint8 CHW, before it was shrunk to
    the scan size; ``hires_to_orig[i]`` its pixel → photo pixel factors) when given, else from the letterboxed
    batch ``x`` the boxes were found in (normalised as ``searcher.prep`` says; a box in photo pixels maps to it by
    dividing by ``to_orig[i]`` and multiplying by ``factor``). With ``orig_size``, a tightened box is clipped to its photo.

    Photos are checked on ``threads`` threads (default: as many as torch uses), each detecting keypoints on one
    core: OpenCV's SIFT gains about 1.5x from a second core within one detection, two photos at once gain 2x. A
    photo's outcome does not depend on the thread count (the rows are the same as one thread's).
    """
    cfg = cfg or VerifyConfig()
    sources = _sources(searcher.index)

    def one(i: int) -> list[Candidate]:
        matches = [as_candidate(m) for m in found[i]]
        todo = set(range(min(cfg.candidates, len(matches)))) if checks is None else checks[i]
        if not matches or not todo:
            return matches
        if hires is not None and hires[i] is not None:
            fx, fy = hires_to_orig[i]
            scale = np.array([fx, fy, fx, fy], dtype=np.float64)  # copy pixels → photo pixels
            image = np.ascontiguousarray(hires[i].detach().cpu().permute(1, 2, 0).numpy())
        else:
            fx, fy = to_orig[i]
            scale = np.array([fx, fy, fx, fy], dtype=np.float64) / factor  # letterbox → photo pixels
            image = to_uint8(x[i], searcher.prep.mean, searcher.prep.std)
        checked, memo = [], {}
        for rank, m in enumerate(matches):
            if rank not in todo or m.box is None:
                checked.append(m)
                continue
            checked.append(_verify_one(m, image, scale, sources, cfg, None if orig_size is None else orig_size[i], memo))
        return sorted(checked, key=lambda mm: -mm.score)

    busy = [i for i, ms in enumerate(found) if ms and (checks is None or checks[i])]
    done = dict(zip(busy, _side_by_side(one, busy, threads)))
    return [done[i] if i in done else one(i) for i in range(len(found))]


_POOL: list = [None, 0]
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's verification threads (made again when the count changes)."""
    with _POOL_LOCK:
        if _POOL[1] != threads:
            if _POOL[0] is not None:
                _POOL[0].shutdown(wait=False)
            _POOL[:] = [ThreadPoolExecutor(threads, thread_name_prefix="markguard-verify"), threads]
        return _POOL[0]


def _side_by_side(fn, items: list, threads: int | None) -> list:
    """``fn`` of each item, in order, on up to ``threads`` threads (default: as many as torch uses) with OpenCV's own
    threads off meanwhile (two detections on two cores each would fight over them) and restored after; with one
    thread or one item, here, on OpenCV's threads."""
    threads = min(len(items), torch.get_num_threads() if threads is None else threads)
    if threads <= 1:
        return [fn(x) for x in items]
    cv2 = _cv2()
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return list(_pool(threads).map(fn, items))
    finally:
        cv2.setNumThreads(before)


def _verify_one(m: Candidate, image: np.ndarray, scale: np.ndarray, sources, cfg: VerifyConfig, size, memo: dict | None = None) -> Candidate:
    """One match checked against each of its mark's reference files; the best verification decides."""
    box = np.asarray(m.box, dtype=np.float64) / scale
    best, best_ref = Verification(0, 0, None, None), None
    for src in sources.get((m.brand, m.mark), []):
        ref = reference_features(src, cfg.method, cfg.ref_side)
        if ref is None:
            continue
        v = verify_region(image, box, reference_variants(src, cfg), cfg, memo)
        if v.ref is None:
            v = dataclasses.replace(v, ref=ref)
        if best_ref is None or (v.inliers > best.inliers and (v.verified or not best.verified)):
            best, best_ref = v, v.ref
    if best_ref is None:  # no reference could be read: not checked, so no geometric evidence
        return m
    m = m.with_similarity()  # the score is about to change: keep the embedding's own (a copy: ``found`` stays as the search gave it)
    outline = None
    if best.verified:
        outline = _cv2().perspectiveTransform(best_ref.corners[None], best.homography)[0] * scale[:2]
        new_box = [int(round(v)) for v in np.asarray(best.box) * scale]
        if size is not None:
            w, h = size
            new_box = [min(max(0, v), lim) for v, lim in zip(new_box, (w, h, w, h))]
        m = dataclasses.replace(m, score=rescore(m.score, best, cfg), box=new_box)
    record = geometry(best, len(best_ref.points), outline, mirrored=best.verified and best_ref.mirrored)
    return dataclasses.replace(m, evidence={**m.evidence, "geometry": record})


# --------------------------------------------------------------------------- the geometry signal's producer

@dataclass
class VerifyStage:
    """The geometry signal's producer in a scan: the gate (:func:`plan`) on each candidate's value before verification,
    then :func:`verify_matches` on the photo's high-resolution copy."""

    sp: object  # plan.SearcherPlan
    cfg: VerifyConfig
    policy: object  # decide.Policy
    before: object | None  # the combiner as it scores a candidate before verification (geometry absent); None: similarity
    verify_from: float | None
    size: int = 0  # the batch's decode size, and the copy's long side, for photos whose copy is decoded here (lazy_hires)
    hires: int = 0
    lazy_hires: bool = False  # the decode workers kept no copy: decode it here, for the photos the gate lets through
    name: str = "verify"
    per_index: bool = True

    @classmethod
    def plan(cls, plan, sp) -> VerifyStage:
        combined = plan.policy.combines(sp.searcher.name or None)  # another model's index beside it: judged on similarity
        return cls(sp, plan.verify, plan.policy, before_verification(plan.policy.combiner) if combined else None,
                   plan.opts.verify_from, plan.size, plan.verify_hires, plan.hires == 0)

    def checks(self, found: list[list[Candidate]]) -> list[set[int]]:
        return gate_checks(found, self.policy, self.cfg, self.before, self.verify_from)

    def __call__(self, work) -> None:
        import time

        from markguard.infer.decode import hires_photos

        iw, batch = work.index[self.sp.pos], work.batch
        inp = iw.inp
        checks = self.checks(iw.found)
        if self.lazy_hires:
            t = time.perf_counter()
            hires_photos(batch, [i for i, c in enumerate(checks) if c], size=self.size, hires=self.hires)
            work.times.add("decode", t)
        iw.found = verify_matches(inp.x, iw.found, self.sp.searcher, inp.to_orig, inp.factor, self.cfg, orig_size=inp.orig_size,
                                  checks=checks, hires=batch.hires, hires_to_orig=batch.hires_to_orig)


def before_verification(combiner):
    """The combiner as it scores a candidate before verification: geometry absent (it enters at its fitted mean)."""
    return None if combiner is None else dataclasses.replace(combiner, absent=tuple({*combiner.absent, "geometry"}))


def gate_checks(found: list[list[Candidate]], policy, cfg: VerifyConfig, before=None, verify_from: float | None = None) -> list[set[int]]:
    """The gate (:func:`plan`) for one index's candidates: each one's value before verification — ``before``'s
    probability (:func:`before_verification`), or the similarity — against its review threshold, or ``verify_from``."""
    if before is not None:
        values = [before.probabilities(cs).tolist() for cs in found]
    else:
        values = [[float(c.score) for c in cs] for cs in found]
    if verify_from is not None:
        floors = [[verify_from + cfg.near] * len(cs) for cs in found]
    else:
        floors = [[policy.thresholds(c.brand, c.index)[1] for c in cs] for cs in found]
    return plan(values, floors, cfg, [[c.box is not None for c in cs] for cs in found])


def verify_gate(found: list[list], policy, opts) -> tuple[VerifyConfig, list[set[int]]]:
    """The gate for matches outside a scan plan (``results.Match``es or candidates) with ``ScanOptions`` ``opts``."""
    cfg = VerifyConfig()
    found = [[as_candidate(m) for m in ms] for ms in found]
    return cfg, gate_checks(found, policy, cfg, before_verification(policy.combiner), opts.verify_from)
