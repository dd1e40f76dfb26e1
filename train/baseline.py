"""A classical matcher for the real-photo benchmark: SIFT + ratio test + RANSAC homography, the bar a learned model must beat.

Every gallery mark's SIFT descriptors go into one FLANN index. A photo's descriptors are matched
against it (2 nearest, Lowe's ratio test); the references that collect the most matches get a RANSAC
homography fit; a photo's score is the most inliers any reference reaches, its box the projected
reference. It writes the scan's ``results.jsonl`` row format, so ``train/realeval.score_bench`` scores
it exactly as it scores a scan. OpenCV is optional (the ``verify`` extra) and loads here only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from markguard.datasets.decode import composite, load_mark
from markguard.datasets.listings import iter_manifest
from markguard.datasets.registry import load_gallery
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import atomic_write_text


@dataclass(frozen=True)
class SiftConfig:
    ref_side: int = 256  # references rendered with this long side
    photo_side: int = 1024  # photos shrunk to at most this long side before detection
    features: int = 2000  # SIFT keypoints a photo at most
    ratio: float = 0.8  # Lowe's ratio test
    candidates: int = 5  # references (most ratio-test matches first) that get a RANSAC fit
    ransac_px: float = 5.0  # reprojection tolerance, photo pixels
    min_matches: int = 4  # a homography needs four


@dataclass
class SiftMatch:
    brand: str
    mark: str
    inliers: int
    box: list[int] | None  # the projected reference's bounds in photo pixels


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MarkguardError("the SIFT baseline needs OpenCV; pip install 'markguard[verify]'") from None
    return cv2


class SiftMatcher:
    """The gallery's marks as one SIFT descriptor index; ``match`` ranks references for a photo."""

    def __init__(self, gallery: str | Path, cfg: SiftConfig = SiftConfig()):
        cv2 = _cv2()
        self.cfg = cfg
        self.sift = cv2.SIFT_create(nfeatures=cfg.features, contrastThreshold=0.02)  # flat printed marks: 0.04 finds too few
        self.refs: list[tuple[str, str]] = []
        self.corners: list[np.ndarray] = []
        self.points: list[np.ndarray] = []
        owners, descs = [], []
        for ref in load_gallery(gallery).marks:
            try:
                mark = load_mark(ref.path)
            except (DecodeError, OSError) as e:
                raise MarkguardError(f"{ref.path}: {getattr(e, 'reason', e)}; fix or remove the mark") from None
            bbox = (mark.getchannel("A").getbbox() if mark.mode == "RGBA" else None) or (0, 0, mark.width, mark.height)
            flat = composite(mark)
            f = cfg.ref_side / max(flat.size)
            flat = flat.resize((max(1, round(flat.width * f)), max(1, round(flat.height * f))), Image.BICUBIC)
            pad = 16  # a white border: the detector skips a band near the image edge
            canvas = Image.new("RGB", (flat.width + 2 * pad, flat.height + 2 * pad), (255, 255, 255))
            canvas.paste(flat, (pad, pad))
            kps, desc = self.sift.detectAndCompute(np.asarray(canvas.convert("L")), None)
            if desc is None or len(kps) < cfg.min_matches:
                continue  # too plain for keypoints: SIFT cannot find it, which is part of what the baseline measures
            i = len(self.refs)
            self.refs.append((ref.brand, ref.mark))
            self.points.append(np.array([k.pt for k in kps], dtype=np.float32))
            x0, y0, x1, y1 = np.array(bbox, dtype=np.float32) * f + pad  # the mark's visible pixels, as truth boxes are
            self.corners.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32))
            owners.append(np.full(len(kps), i, dtype=np.int32))
            descs.append(desc)
        if not self.refs:
            raise MarkguardError(f"{gallery}: no mark has enough SIFT keypoints to match")
        self.owner = np.concatenate(owners)
        self.offset = np.concatenate([[0], np.cumsum([len(p) for p in self.points])])
        self.flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})  # 1 = KD-tree
        self.flann.add([np.concatenate(descs).astype(np.float32)])
        self.flann.train()

    def match(self, rgb: np.ndarray) -> list[SiftMatch]:
        """The candidate references for an (H, W, 3) uint8 photo, most inliers first."""
        cv2 = _cv2()
        H, W = rgb.shape[:2]
        f = min(1.0, self.cfg.photo_side / max(H, W))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if f < 1.0:
            gray = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None or len(kps) < 2:
            return []
        pts = np.array([k.pt for k in kps], dtype=np.float32) / f
        per_ref: dict[int, dict[int, tuple[float, int]]] = {}
        for p in self.flann.knnMatch(desc.astype(np.float32), k=2):
            if len(p) == 2 and p[0].distance < self.cfg.ratio * p[1].distance:
                r = int(self.owner[p[0].trainIdx])
                best = per_ref.setdefault(r, {})
                # one reference point per photo point, the closest: many-to-one matches fake a homography
                if p[0].queryIdx not in best or p[0].distance < best[p[0].queryIdx][0]:
                    best[p[0].queryIdx] = (p[0].distance, p[0].trainIdx - int(self.offset[r]))
        ranked = sorted(per_ref.items(), key=lambda kv: -len(kv[1]))[: self.cfg.candidates]
        out = []
        for r, pairs in ranked:
            if len(pairs) < self.cfg.min_matches:
                out.append(SiftMatch(*self.refs[r], 0, None))
                continue
            src = self.points[r][[t for _, t in pairs.values()]]
            dst = pts[list(pairs)]
            Hm, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.cfg.ransac_px)
            inliers = int(mask.sum()) if mask is not None else 0
            box = None
            if Hm is not None and inliers >= self.cfg.min_matches:
                quad = cv2.perspectiveTransform(self.corners[r][None], Hm)[0]
                if not _plausible(quad, W, H):
                    out.append(SiftMatch(*self.refs[r], 0, None))
                    continue
                x0, y0 = np.clip(quad.min(0), 0, [W, H])
                x1, y1 = np.clip(quad.max(0), 0, [W, H])
                if x1 - x0 >= 2 and y1 - y0 >= 2:
                    box = [int(round(v)) for v in (x0, y0, x1, y1)]
            out.append(SiftMatch(*self.refs[r], inliers if box else 0, box))
        return sorted(out, key=lambda m: -m.inliers)


def _plausible(quad: np.ndarray, W: int, H: int) -> bool:
    """A homography fit to chance matches folds the reference, shrinks it to a point or throws it far outside the photo."""
    cross = [(quad[(i + 1) % 4][0] - quad[i][0]) * (quad[(i + 2) % 4][1] - quad[(i + 1) % 4][1])
             - (quad[(i + 1) % 4][1] - quad[i][1]) * (quad[(i + 2) % 4][0] - quad[(i + 1) % 4][0]) for i in range(4)]
    if not (all(c > 0 for c in cross) or all(c < 0 for c in cross)):
        return False
    (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
    return x1 - x0 >= 4 and y1 - y0 >= 4 and x0 > -0.25 * W and y0 > -0.25 * H and x1 < 1.25 * W and y1 < 1.25 * H


def sift_scan(manifest: str | Path, gallery: str | Path, out_dir: str | Path, cfg: SiftConfig = SiftConfig(), *, progress: bool = False) -> dict:
    """Match every photo of a manifest against the gallery; writes ``OUT/results.jsonl`` (scan rows) and returns its summary."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    matcher = SiftMatcher(gallery, cfg)
    t_index = time.perf_counter() - t0
    items = list(iter_manifest(manifest))  # the scan's manifest reader: its columns, and nothing read outside its folder
    t0 = time.perf_counter()
    rows = []
    if progress:
        items = tqdm(items, desc="sift", unit="img")
    for item in items:
        row = {"listing_id": item.listing_id, "image": item.image, "seller_id": item.seller_id, "status": "pass", "score": None,
               "brand": None, "mark": None, "box": None, "matches": [], "error": None}
        try:
            rgb = np.asarray(item.decode().image.convert("RGB"))
        except DecodeError as e:
            rows.append({**row, "status": "error", "error": e.reason})
            continue
        found = matcher.match(rgb)
        row["matches"] = [{"brand": m.brand, "mark": m.mark, "score": m.inliers, "box": m.box, "evidence": {"inliers": m.inliers}} for m in found]
        if found:
            best = found[0]
            row.update(status="flag", score=best.inliers, brand=best.brand, mark=best.mark, box=best.box)
        rows.append(row)
    seconds = time.perf_counter() - t0
    atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"results": str(out_dir / "results.jsonl"), "images": len(rows), "references": len(matcher.refs),
               "index_seconds": round(t_index, 1), "seconds": round(seconds, 1), "images_per_s": round(len(rows) / seconds, 2) if seconds else None}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
