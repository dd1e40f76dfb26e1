"""Decode: listing photos decoded and letterboxed in worker processes while the model works, then shaped for each model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from markguard.datasets.decode import DEFAULT_MAX_PIXELS, decode_image, probe_jpeg
from markguard.datasets.decode import orient_tensor as orient
from markguard.datasets.listings import ListingItem
from markguard.datasets.transforms import letterbox, letterbox_geometry
from markguard.errors import DecodeError, MarkguardError
from markguard.infer import read

MIN_SIDE = 16  # smaller photos cannot show a recognisable mark


@dataclass
class Batch:
    items: list[ListingItem]
    x: torch.Tensor  # (n_ok, 3, S, S) for the items without an error, in order
    ok: list[int]  # positions in ``items`` that decoded
    valid: list[tuple[int, int]]  # letterbox content size of each ok image
    to_orig: list[tuple[float, float]]  # letterbox pixel → original pixel factors (x, y)
    orig_size: list[tuple[int, int]]
    errors: dict[int, str] = field(default_factory=dict)  # position → reason
    decode_s: float = 0.0
    pending: list[PendingJpeg] = field(default_factory=list)  # JPEGs left for the model's device to decode
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # what ``x`` is normalised with (each model renormalises to its own)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    # for second looks (infer/looks.py): each ok photo as decoded, uint8 CHW, long side at most the looks' resolution,
    # and its pixel → photo pixel factors; None when the scan takes no second look
    hires: list[torch.Tensor] | None = None
    hires_to_orig: list[tuple[float, float]] | None = None


@dataclass
class PendingJpeg:
    pos: int
    data: torch.Tensor  # the file's bytes, uint8
    orig_size: tuple[int, int]
    orientation: int


@dataclass
class RunFailure:
    """A problem with the dump as a whole met by a worker mid-stream (a bad manifest line): the scan stops with it."""

    message: str


class DecodedBatches(IterableDataset):
    """Batches of decoded photos; worker w builds batches w, w+W, … so the loader yields them in order."""

    def __init__(self, items_fn, *, size: int, mean, std, batch_size: int, skip: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 device_jpeg: bool = False, hires: int = 0):
        self.items_fn = items_fn  # a picklable callable returning a fresh iterator of ListingItem
        self.size, self.mean, self.std = size, mean, std
        self.batch_size = batch_size
        self.skip = skip
        self.max_pixels = max_pixels
        self.device_jpeg = device_jpeg  # leave whole RGB/grey JPEGs to finish_decode on the model's device
        self.hires = hires  # keep each photo at up to this long side for second looks (0: don't)

    def __iter__(self):
        import time

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        items = read.skip(self.items_fn(), self.skip)
        try:
            for b, chunk in enumerate(_chunks(items, self.batch_size)):
                if b % nw != wid:
                    continue
                t0 = time.perf_counter()
                batch = self._decode(chunk)
                batch.decode_s = time.perf_counter() - t0
                yield batch
        except MarkguardError as e:  # re-raised in the main process as itself, not as a worker traceback
            yield RunFailure(str(e))

    def _decode(self, chunk: list[ListingItem]) -> Batch:
        return decode_items(chunk, size=self.size, mean=self.mean, std=self.std, max_pixels=self.max_pixels,
                            device_jpeg=self.device_jpeg, hires=self.hires)


def hires_copy(img, cap: int):
    """``img`` (PIL) with its long side at most ``cap``, as uint8 CHW, and its pixel → ``img`` pixel factor."""
    from PIL import Image

    f = min(1.0, cap / max(img.size))
    if f < 1.0:
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), 1.0 / f


def hires_photos(batch: Batch, photos: list[int], *, size: int, hires: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Fill in ``batch.hires`` for the decoded photos ``photos`` (positions among ``batch.ok``) that lack their copy, decoded
    from the item again exactly as :func:`decode_items` decodes it with ``hires`` (the same pixels): a scan whose only use
    for the copy is verification decodes it for the photos with a candidate near the gate, not for every photo.
    A photo that cannot be read again keeps None (verification then uses the letterboxed batch)."""
    if batch.hires is None:
        batch.hires, batch.hires_to_orig = [None] * len(batch.ok), [None] * len(batch.ok)
    for i in photos:
        if batch.hires[i] is not None:
            continue
        try:
            dec = decode_image(batch.items[batch.ok[i]].read_bytes(), target_size=max(size, hires // 2), max_pixels=max_pixels)
        except (DecodeError, OSError):
            continue
        img, f = hires_copy(dec.image, hires)
        sx, sy = dec.scale
        batch.hires[i], batch.hires_to_orig[i] = img, (sx * f, sy * f)


def decode_items(chunk: list[ListingItem], *, size: int, mean, std, max_pixels: int = DEFAULT_MAX_PIXELS,
                 device_jpeg: bool = False, hires: int = 0) -> Batch:
    """Decode and letterbox one batch of items; a photo that cannot be used becomes an error with its reason.

    With ``device_jpeg``, whole RGB/greyscale JPEGs are only checked from their header and left in
    ``Batch.pending`` for :func:`finish_decode`; everything else is decoded here as usual. With
    ``hires``, each photo is also kept at up to that long side (``Batch.hires``) for second looks;
    JPEGs are then decoded at a reduced scale that still keeps half of it on the short side.
    """
    tensors, ok, valid, to_orig, orig, errors, pending = [], [], [], [], [], {}, []
    keep, keep_to_orig = [], []
    for pos, item in enumerate(chunk):
        if item.error:
            errors[pos] = item.error
            continue
        try:
            data = item.read_bytes()
            if device_jpeg:
                probe = probe_jpeg(data, max_pixels=max_pixels) if data else None
                if probe is not None and min(probe.orig_size) >= MIN_SIDE:
                    pending.append(PendingJpeg(pos, torch.frombuffer(bytearray(data), dtype=torch.uint8), probe.orig_size, probe.orientation))
                    continue
            dec = decode_image(data, target_size=max(size, hires // 2), max_pixels=max_pixels)
        except DecodeError as e:
            errors[pos] = e.reason
            continue
        except OSError as e:  # the file vanished or is unreadable between listing and decoding
            errors[pos] = f"cannot read file ({e.strerror or e})"
            continue
        if min(dec.orig_size) < MIN_SIDE:
            errors[pos] = f"image too small ({dec.orig_size[0]}x{dec.orig_size[1]}; at least {MIN_SIDE} px a side)"
            continue
        lb = letterbox(dec.image, size, mean, std)
        sx, sy = dec.scale
        if hires:
            img, f = hires_copy(dec.image, hires)
            keep.append(img)
            keep_to_orig.append((sx * f, sy * f))
        tensors.append(lb.tensor)
        ok.append(pos)
        valid.append(lb.valid)
        to_orig.append((sx / lb.factor, sy / lb.factor))
        orig.append(dec.orig_size)
    x = torch.stack(tensors) if tensors else torch.zeros(0, 3, size, size)
    return Batch(chunk, x, ok, valid, to_orig, orig, errors, pending=pending, mean=tuple(mean), std=tuple(std),
                 hires=keep if hires else None, hires_to_orig=keep_to_orig if hires else None)


def finish_decode(batch: Batch, *, size: int, device: str, hires: int = 0) -> None:
    """Decode ``batch.pending`` JPEGs in one batched call on ``device`` (nvJPEG on a GPU), orient,
    letterbox and normalise them there, and merge them with the rest of the batch in input order.

    A JPEG the batched decoder rejects is decoded by :func:`decode_items` instead, so it gets the
    same error row (or the same pixels) as on the CPU path.
    """
    if not batch.pending:
        return
    import torch.nn.functional as F

    imgs = _decode_jpegs([p.data for p in batch.pending], device)
    mean, std = batch.mean, batch.std
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(3, 1, 1)
    sd = torch.tensor(std, device=device, dtype=torch.float32).view(3, 1, 1)
    done = {pos: (x.to(device), v, t, o) for pos, x, v, t, o in zip(batch.ok, batch.x, batch.valid, batch.to_orig, batch.orig_size)}
    keep = dict(zip(batch.ok, zip(batch.hires, batch.hires_to_orig))) if hires else {}
    for p, img in zip(batch.pending, imgs):
        if img is None:
            one = decode_items([batch.items[p.pos]], size=size, mean=mean, std=std, hires=hires)
            if one.errors:
                batch.errors[p.pos] = one.errors[0]
            else:
                done[p.pos] = (one.x[0].to(device), one.valid[0], one.to_orig[0], one.orig_size[0])
                if hires:
                    keep[p.pos] = (one.hires[0].to(device), one.hires_to_orig[0])
            continue
        img = orient(img, p.orientation)
        h, w = img.shape[1:]
        f, nw, nh = letterbox_geometry(w, h, size)
        small = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        out = torch.zeros(3, size, size, device=device)
        out[:, :nh, :nw] = (small / 255 - m) / sd
        done[p.pos] = (out, (nw, nh), (p.orig_size[0] / (w * f), p.orig_size[1] / (h * f)), p.orig_size)
        if hires:
            c = min(1.0, hires / max(w, h))
            hw, hh = max(1, round(w * c)), max(1, round(h * c))
            big = img if c == 1.0 else F.interpolate(img[None].float(), size=(hh, hw), mode="bilinear", antialias=True,
                                                     align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            keep[p.pos] = (big, (p.orig_size[0] / hw, p.orig_size[1] / hh))
    batch.ok = sorted(done)
    batch.x = torch.stack([done[pos][0] for pos in batch.ok]) if done else torch.zeros(0, 3, size, size, device=device)
    batch.valid = [done[pos][1] for pos in batch.ok]
    batch.to_orig = [done[pos][2] for pos in batch.ok]
    batch.orig_size = [done[pos][3] for pos in batch.ok]
    if hires:
        batch.hires = [keep[pos][0] for pos in batch.ok]
        batch.hires_to_orig = [keep[pos][1] for pos in batch.ok]
    batch.pending = []


def renormalise(x: torch.Tensor, valid: list[tuple[int, int]], frm: tuple, to: tuple) -> torch.Tensor:
    """``x`` normalised with ``frm`` = (mean, std) as if normalised with ``to``; the letterbox padding stays
    zero (the mean colour of ``to``), exactly as a batch decoded with ``to`` would have it."""
    if tuple(frm[0]) == tuple(to[0]) and tuple(frm[1]) == tuple(to[1]):
        return x
    view = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)  # noqa: E731
    out = (x * view(frm[1]) + view(frm[0]) - view(to[0])) / view(to[1])
    for i, (w, h) in enumerate(valid):
        out[i, :, h:, :] = 0
        out[i, :, :, w:] = 0
    return out


@dataclass
class ModelInput:
    """One decoded batch as one model sees it: normalised by its card, rescaled to its scan size, and the
    geometry back to the photos' own pixels."""

    x: torch.Tensor  # (n_ok, 3, S, S) at this model's scan size S
    valid: list[tuple[int, int]]  # content size of each photo at S (the rest is padding)
    factor: float  # S / the decoded batch's size
    to_orig: list[tuple[float, float]]  # decoded letterbox pixel → photo pixel factors (x, y)
    orig_size: list[tuple[int, int]]

    def to_photo(self, boxes: list[torch.Tensor]) -> list[np.ndarray]:
        """Boxes in this input's pixels → the photos' pixels, clipped to each photo."""
        out = []
        for b, (fx, fy), (w, h) in zip(boxes, self.to_orig, self.orig_size):
            p = (b.numpy() / self.factor) * np.array([fx, fy, fx, fy], dtype=np.float32)
            out.append(np.clip(p, 0, [w, h, w, h], out=p))
        return out


def model_input(batch: Batch, prep) -> ModelInput:
    """``batch`` (decoded once for every model of the scan) for the model whose Preprocessing is ``prep``."""
    import torch.nn.functional as F

    x = renormalise(batch.x, batch.valid, (batch.mean, batch.std), prep.norm)
    factor = 1.0
    if len(x) and x.shape[-1] != prep.scan_size:
        factor = prep.scan_size / x.shape[-1]
        x = F.interpolate(x, size=(prep.scan_size, prep.scan_size), mode="bilinear", align_corners=False, antialias=True)
    valid = [(max(1, int(w * factor)), max(1, int(h * factor))) for w, h in batch.valid]
    return ModelInput(x, valid, factor, batch.to_orig, batch.orig_size)


def _decode_jpegs(datas: list[torch.Tensor], device: str) -> list[torch.Tensor | None]:
    """One batched decode; when a bad file fails the batch, one by one, None for the ones that fail."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 names TorchCodec its successor; decode_jpeg is still nvJPEG's batched path
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def _chunks(it, n):
    while chunk := list(itertools.islice(it, n)):
        yield chunk


DECODE_NICE = 10  # decode workers yield the CPU to the model's threads (see _lower_priority)


def _lower_priority(worker_id: int) -> None:
    # On a box with as many torch threads as cores, a decode worker that preempts one of them stalls the whole
    # parallel op at its barrier; at a lower priority it decodes in the gaps (Python between ops, search,
    # writing), which with batches prefetched ahead is enough, as decoding is a few percent of the model's work.
    import os

    try:
        os.nice(DECODE_NICE)
    except OSError:  # not permitted on this platform: decode at normal priority
        pass


def batch_loader(dataset: DecodedBatches, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                      persistent_workers=False, collate_fn=_identity, worker_init_fn=_lower_priority if workers else None)


def _identity(batch):
    return batch


def worker_death(e: BaseException) -> str | None:
    """One line for a decoding worker the system killed (the loader's RuntimeError), None for any other error."""
    import re

    text = str(e)
    m = re.search(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)", text)
    if m is None or not ("killed by signal" in text or "exited unexpectedly" in text):
        return None
    signal = re.search(r"killed by signal: ([\w ]+)", text)
    how = f"was killed ({signal.group(1).strip()})" if signal else "exited unexpectedly"
    return (f"decoding worker (pid {m.group(1).strip()}) {how}: most likely the system ran out of memory (very large photos, "
            "or too many --workers for this machine's memory); rerun with fewer --workers or a smaller --batch-size, and --resume "
            "to continue from the rows already written")
