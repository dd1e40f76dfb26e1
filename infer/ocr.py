"""OCR: read the text of a photo where its text detector finds text (PP-OCR through RapidOCR), a bounded amount per photo.

Where to read is decided by where text is, not by how close a region came to a mark: the
detector runs on each photo (at ``det_side`` px, tens of milliseconds), and the ``lines`` largest
lines it finds are recognised (a few milliseconds each). Every photo gets the same budget, so a
photo's reads never depend on the batch it came in: a resumed or sharded scan reads exactly what
one scan reads. (``where="candidates"`` / ``"photo"`` read the regions a caller names, the same
bound per photo.) A read that fails or runs past its time gives "no text evidence" with the
reason; the photo keeps its other evidence. RapidOCR's detection and recognition models ship
inside its wheel (the ``ocr`` extra): nothing is downloaded.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from markguard.errors import DecodeError, MarkguardError

LINES = 2  # text lines recognised a photo, largest first: a listing's wordmark is its largest text, or its second beside a tagline


@dataclass(frozen=True)
class OcrConfig:
    """How much OCR a scan may do in each photo and how each read is made."""

    lines: int = LINES  # per photo: text lines recognised (where="text") or regions read (candidates), largest / best first
    where: str = "text"  # text: where the detector finds text | candidates: the regions of a photo's best matches | photo: the whole photo
    timeout_s: float = 5.0  # a read running longer gives no text evidence
    margin: float = 0.25  # read this share of the region's long side beyond it on each side: a region may clip the word's ends
    det_side: int = 320  # the text detector sees the photo (where="text") or the crop at most this long
    line_margin: float = 0.2  # a detected line is cut out with this share of its height around it
    min_line_px: int = 8  # detected lines shorter than this (in the photo) are specks, not words
    min_confidence: float = 0.5  # recognised lines below this are dropped
    threads: int = 1  # ONNX Runtime threads: the scan's own workers already use the cores

    def __post_init__(self):
        if isinstance(self.lines, bool) or not isinstance(self.lines, int) or not 0 <= self.lines <= 64:
            raise MarkguardError(f"ocr lines {self.lines!r} must be a whole number of text lines a photo, 0 to 64")
        if self.where not in ("text", "candidates", "photo"):
            raise MarkguardError(f"ocr where={self.where!r}; choose text (where the detector finds it), candidates (the best matches' "
                                 "regions) or photo")
        if self.timeout_s <= 0 or self.det_side < 32:
            raise MarkguardError("ocr timeout_s must be > 0 and det_side >= 32")


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
    reason: str | None = None  # why there is no text: "timed out after 5 s", "failed: ...", "over the photo's budget"

    @property
    def ok(self) -> bool:
        return self.reason is None


def gate(requests: list[OcrRequest], config: OcrConfig) -> tuple[list[OcrRequest], list[OcrRequest]]:
    """(read, skipped): in each photo its ``config.lines`` highest-priority requests; nothing depends on the other photos."""
    per_photo: dict[int, list[OcrRequest]] = {}
    for r in sorted(requests, key=lambda r: -r.priority):
        per_photo.setdefault(r.photo, []).append(r)
    read = [r for p in sorted(per_photo) for r in per_photo[p][: config.lines]]
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


class HiresPhotos:
    """A batch's photos as the scan already keeps them for second looks and verification (``Batch.hires``: uint8 CHW at up
    to 1280 px), as PIL images, with each one's pixel -> original pixel factors; no second decode."""

    def __init__(self, tensors, to_orig):
        self.tensors, self.to_orig = tensors, to_orig

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.tensors[i].permute(1, 2, 0).contiguous().cpu().numpy())

    def factor(self, i: int) -> tuple[float, float]:
        return self.to_orig[i]


def _quad_box(quad, scale: float) -> tuple[float, float, float, float]:
    q = np.asarray(quad, dtype=np.float64).reshape(-1, 2) / scale
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


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
        text, seconds, failure = self._call(self._run, array)
        if failure is not None:
            return OcrRead(None, crop_box, seconds, failure)
        return OcrRead(text, crop_box, seconds)

    def _call(self, fn, array: np.ndarray):
        """``fn(array)`` on the reader's thread, within the configured time: (its result, seconds, None), or (None,
        seconds, why) when it timed out, failed, or an earlier read that timed out still holds the reader."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return None, 0.0, "not read: an earlier read timed out and still holds the reader"
            self._pending = None
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="markguard-ocr")
            self.engine()  # loading the models is no read: it does not count against the read's time
            start = time.perf_counter()
            future = self._pool.submit(fn, array)
            try:
                return future.result(timeout=self.config.timeout_s), time.perf_counter() - start, None
            except concurrent.futures.TimeoutError:
                # an ONNX Runtime session cannot be interrupted: let it finish, and read nothing until it has
                self._pending = future
                return None, time.perf_counter() - start, f"timed out after {self.config.timeout_s:g} s"
            except MarkguardError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, OSError) as e:  # ONNX Runtime and OpenCV errors
                return None, time.perf_counter() - start, f"failed: {type(e).__name__}: {str(e)[:120]}"

    def read_batch(self, images: list, requests: list[OcrRequest]) -> dict[OcrRequest, OcrRead]:
        """Read what :func:`gate` lets through for this batch; skipped requests get a read with the reason."""
        chosen, skipped = gate(requests, self.config)
        out = {}
        for r in chosen:
            try:
                image = images[r.photo]  # may decode it now (OriginalPhotos)
            except DecodeError as e:
                out[r] = OcrRead(None, None, reason=f"not read: {e.reason}")
                continue
            out[r] = self.read(image, r.box)
        reason = f"not read: over the photo's OCR budget ({self.config.lines} regions)"
        out.update({r: OcrRead(None, None, reason=reason) for r in skipped})
        return out

    def _read_text(self, array: np.ndarray) -> list[tuple[str, tuple[float, float, float, float]]]:
        """(text, box in ``array``'s pixels) of the ``lines`` largest lines the detector finds in the RGB ``array``."""
        engine = self.engine()
        h, w = array.shape[:2]
        scale = min(1.0, self.config.det_side / max(h, w))
        small = array
        if scale < 1:
            from PIL import Image

            small = np.asarray(Image.fromarray(array).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))
        try:
            quads, _ = engine.text_det(np.ascontiguousarray(small[:, :, ::-1]))  # RapidOCR's models take BGR
            boxes = [_quad_box(q, scale) for q in (quads if quads is not None else [])]
            boxes = [b for b in boxes if b[3] - b[1] >= self.config.min_line_px and b[2] > b[0]]
            boxes = sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[: self.config.lines]
            crops = []
            for x0, y0, x1, y1 in boxes:
                pad = self.config.line_margin * (y1 - y0)
                cx0, cy0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
                cx1, cy1 = min(w, int(math.ceil(x1 + pad))), min(h, int(math.ceil(y1 + pad)))
                crops.append(np.ascontiguousarray(array[cy0:cy1, cx0:cx1, ::-1]))
            texts, _ = engine.text_rec(crops) if crops else ([], 0.0)
        except Exception as e:  # noqa: BLE001 - only OpenCV's error, which derives from Exception alone, is renamed
            if type(e).__name__ == "error" and type(e).__module__.startswith("cv2"):
                raise RuntimeError(f"OpenCV: {e}") from None
            raise
        return [(str(t).strip(), b) for (t, score), b in zip(texts, boxes)
                if float(score) >= self.config.min_confidence and str(t).strip()]

    def read_text(self, image, factor: tuple[float, float] = (1.0, 1.0)) -> list[OcrRead]:
        """Where the detector finds text in the PIL ``image``: one read a line (boxes in original pixels: ``image``'s times
        ``factor``), none when it finds none; one read with the reason when reading failed or timed out."""
        array = np.asarray(image.convert("RGB"))
        lines, seconds, failure = self._call(self._read_text, array)
        if failure is not None:
            return [OcrRead(None, None, seconds, failure)]
        seconds /= max(1, len(lines))
        fx, fy = factor
        return [OcrRead(text, (int(b[0] * fx), int(b[1] * fy), int(math.ceil(b[2] * fx)), int(math.ceil(b[3] * fy))), seconds)
                for text, b in lines]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
