"""OCR: read the text in chosen regions of the original photo (PP-OCR through RapidOCR), on a bounded share of each batch.

A full OCR pass costs hundreds of milliseconds a photo on a CPU, many times the embedding, so it
never runs on everything: the caller passes the regions worth reading (its candidates, with a
priority) and :func:`gate` keeps at most ``budget`` of a batch's photos. A read that fails or runs
past its time gives "no text evidence" with the reason; the photo keeps its other evidence.
RapidOCR's detection and recognition models ship inside its wheel (the ``ocr`` extra): nothing
is downloaded.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from markguard.errors import DecodeError, MarkguardError


@dataclass(frozen=True)
class OcrConfig:
    """How much OCR a scan may do and how each read is made."""

    budget: float = 0.25  # share of a batch's photos that may be read
    where: str = "candidates"  # candidates: the regions of a photo's best matches | photo: the whole photo
    regions_per_photo: int = 1  # candidate regions read in one photo, best first
    timeout_s: float = 5.0  # a read running longer gives no text evidence
    margin: float = 0.25  # read this share of the region's long side beyond it on each side: a region may clip the word's ends
    det_side: int = 480  # the text detector sees the crop at most this long (its default upscales to 736 short side)
    min_confidence: float = 0.5  # recognised lines below this are dropped
    threads: int = 1  # ONNX Runtime threads: the scan's own workers already use the cores

    def __post_init__(self):
        if not 0.0 <= self.budget <= 1.0:
            raise MarkguardError(f"ocr budget {self.budget} must be a share of photos in [0, 1]")
        if self.where not in ("candidates", "photo"):
            raise MarkguardError(f"ocr where={self.where!r}; choose candidates (the best matches' regions) or photo")
        if self.regions_per_photo < 1 or self.timeout_s <= 0:
            raise MarkguardError("ocr regions_per_photo must be >= 1 and timeout_s > 0")


@dataclass(frozen=True)
class OcrRequest:
    """A region of one photo of the batch worth reading; higher ``priority`` is read first (e.g. the candidate's similarity)."""

    photo: int  # position in the batch
    box: tuple[float, float, float, float] | None  # original pixels; None reads the whole photo
    priority: float


@dataclass
class OcrRead:
    """The text read in one region, or why there is none."""

    text: str | None  # lines joined by spaces; None when nothing was read
    box: tuple[int, int, int, int] | None  # the crop that was read, original pixels
    seconds: float = 0.0
    reason: str | None = None  # why there is no text: "timed out after 5 s", "failed: ...", "over the batch's budget"

    @property
    def ok(self) -> bool:
        return self.reason is None


def gate(requests: list[OcrRequest], n_photos: int, config: OcrConfig) -> tuple[list[OcrRequest], list[OcrRequest]]:
    """(read, skipped): at most ``ceil(budget * n_photos)`` photos, those with the highest-priority requests,
    and in each at most ``regions_per_photo`` regions."""
    limit = math.ceil(config.budget * n_photos - 1e-9)
    per_photo: dict[int, list[OcrRequest]] = {}
    for r in sorted(requests, key=lambda r: -r.priority):
        per_photo.setdefault(r.photo, []).append(r)
    chosen_photos = sorted(per_photo, key=lambda p: -per_photo[p][0].priority)[:limit]
    read = [r for p in chosen_photos for r in per_photo[p][: config.regions_per_photo]]
    kept = {id(r) for r in read}
    return read, [r for r in requests if id(r) not in kept]


def crop_for_reading(image, box, margin: float, max_side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The region of ``image`` (PIL) widened by ``margin`` of its long side, as an RGB array at most ``max_side`` long, and the crop box."""
    from PIL import Image

    w, h = image.size
    if box is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        bx0, by0, bx1, by1 = box
        # a share of the long side on every side: a wordmark's box is wide and flat, and the text detector
        # misses lines that touch the crop's top and bottom (30 letter-swapped synthetic wordmarks: 28-29 read with
        # 0.15-0.3 of the long side, 24 with 0.15 of each side's own length)
        pad = margin * max(bx1 - bx0, by1 - by0)
        x0, y0 = max(0, int(math.floor(bx0 - pad))), max(0, int(math.floor(by0 - pad)))
        x1, y1 = min(w, int(math.ceil(bx1 + pad))), min(h, int(math.ceil(by1 + pad)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"region {box} is empty in a {w}x{h} photo")
    crop = image.convert("RGB").crop((x0, y0, x1, y1))
    scale = max_side / max(crop.size)
    if scale < 1:
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.BILINEAR)
    return np.asarray(crop), (x0, y0, x1, y1)


class OriginalPhotos:
    """A batch's photos at their original resolution, decoded only when the gate picks one to read: the scan keeps
    just the model-sized tensor, and a decode costs far less than the read it serves."""

    def __init__(self, items):
        self.items = items  # anything with ``read_bytes()`` (a ``datasets.listings.ListingItem``)
        self._cache: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if i not in self._cache:
            from markguard.datasets.decode import decode_image

            try:
                data = self.items[i].read_bytes()
            except OSError as e:
                raise DecodeError(f"cannot read the photo again ({type(e).__name__})") from None
            self._cache[i] = decode_image(data).image  # no target size: the full original
        return self._cache[i]


class OcrReader:
    """Reads text from crops of original photos; the engine loads on first use, one read at a time."""

    def __init__(self, config: OcrConfig = OcrConfig(), engine=None):
        self.config = config
        self._engine = engine  # a callable like RapidOCR's: array -> (lines [[box, text, score], ...] | None, timings)
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future | None = None  # a read that timed out and is still running

    def engine(self):
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise MarkguardError("reading wordmarks needs RapidOCR; pip install 'markguard[ocr]' or scan without --ocr") from None
            t = self.config.threads
            # limit_type "max": the detector's default scales a crop's *short* side up to 736 px, seconds a crop
            self._engine = RapidOCR(intra_op_num_threads=t, inter_op_num_threads=t, det_limit_side_len=self.config.det_side,
                                    det_limit_type="max", print_verbose=False)
        return self._engine

    def _run(self, array: np.ndarray) -> str | None:
        engine = self.engine()
        try:
            # marks on listings are upright: the angle model would cost a pass; RapidOCR's own score filter follows ours
            result, _ = engine(array, use_cls=False, text_score=self.config.min_confidence)
        except Exception as e:  # noqa: BLE001 - only OpenCV's error, which derives from Exception alone, is renamed
            if type(e).__name__ == "error" and type(e).__module__.startswith("cv2"):
                raise RuntimeError(f"OpenCV: {e}") from None
            raise
        lines = [str(line[1]).strip() for line in (result or []) if float(line[2]) >= self.config.min_confidence]
        text = " ".join(s for s in lines if s)
        return text or None

    def read(self, image, box=None) -> OcrRead:
        """Read the region ``box`` (original pixels, None for the whole photo) of the PIL ``image``."""
        try:
            array, crop_box = crop_for_reading(image, box, self.config.margin, self.config.det_side)
        except ValueError as e:
            return OcrRead(None, None, reason=f"not read: {e}")
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return OcrRead(None, crop_box, reason="not read: an earlier read timed out and still holds the reader")
            self._pending = None
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="markguard-ocr")
            start = time.perf_counter()
            future = self._pool.submit(self._run, array)
            try:
                text = future.result(timeout=self.config.timeout_s)
            except concurrent.futures.TimeoutError:
                # an ONNX Runtime session cannot be interrupted: let it finish, and read nothing until it has
                self._pending = future
                return OcrRead(None, crop_box, time.perf_counter() - start, f"timed out after {self.config.timeout_s:g} s")
            except MarkguardError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, OSError) as e:  # ONNX Runtime and OpenCV errors
                return OcrRead(None, crop_box, time.perf_counter() - start, f"failed: {type(e).__name__}: {str(e)[:120]}")
            return OcrRead(text, crop_box, time.perf_counter() - start)

    def read_batch(self, images: list, requests: list[OcrRequest]) -> dict[OcrRequest, OcrRead]:
        """Read what :func:`gate` lets through for this batch; skipped requests get a read with the reason."""
        chosen, skipped = gate(requests, len(images), self.config)
        out = {}
        for r in chosen:
            try:
                image = images[r.photo]  # may decode it now (OriginalPhotos)
            except DecodeError as e:
                out[r] = OcrRead(None, None, reason=f"not read: {e.reason}")
                continue
            out[r] = self.read(image, r.box)
        reason = f"not read: over the batch's OCR budget ({self.config.budget:.0%} of photos)"
        out.update({r: OcrRead(None, None, reason=reason) for r in skipped})
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
