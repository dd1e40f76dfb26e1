"""Read and decode: listing photos streamed in order, decoded and letterboxed in worker processes while the model works."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from markguard.datasets.decode import DEFAULT_MAX_PIXELS, decode_image
from markguard.datasets.listings import ListingItem
from markguard.datasets.transforms import letterbox
from markguard.errors import DecodeError

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


class DecodedBatches(IterableDataset):
    """Batches of decoded photos; worker w builds batches w, w+W, … so the loader yields them in order."""

    def __init__(self, items_fn, *, size: int, mean, std, batch_size: int, skip: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items_fn = items_fn  # a picklable callable returning a fresh iterator of ListingItem
        self.size, self.mean, self.std = size, mean, std
        self.batch_size = batch_size
        self.skip = skip
        self.max_pixels = max_pixels

    def __iter__(self):
        import time

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        items = itertools.islice(self.items_fn(), self.skip, None)
        for b, chunk in enumerate(_chunks(items, self.batch_size)):
            if b % nw != wid:
                continue
            t0 = time.perf_counter()
            batch = self._decode(chunk)
            batch.decode_s = time.perf_counter() - t0
            yield batch

    def _decode(self, chunk: list[ListingItem]) -> Batch:
        tensors, ok, valid, to_orig, orig, errors = [], [], [], [], [], {}
        for pos, item in enumerate(chunk):
            if item.error:
                errors[pos] = item.error
                continue
            try:
                dec = decode_image(item.read_bytes(), target_size=self.size, max_pixels=self.max_pixels)
            except DecodeError as e:
                errors[pos] = e.reason
                continue
            except OSError as e:  # the file vanished or is unreadable between listing and decoding
                errors[pos] = f"cannot read file ({e.strerror or e})"
                continue
            if min(dec.orig_size) < MIN_SIDE:
                errors[pos] = f"image too small ({dec.orig_size[0]}x{dec.orig_size[1]}; at least {MIN_SIDE} px a side)"
                continue
            lb = letterbox(dec.image, self.size, self.mean, self.std)
            sx, sy = dec.scale
            tensors.append(lb.tensor)
            ok.append(pos)
            valid.append(lb.valid)
            to_orig.append((sx / lb.factor, sy / lb.factor))
            orig.append(dec.orig_size)
        x = torch.stack(tensors) if tensors else torch.zeros(0, 3, self.size, self.size)
        return Batch(chunk, x, ok, valid, to_orig, orig, errors)


def _chunks(it, n):
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def batch_loader(dataset: DecodedBatches, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                      persistent_workers=False, collate_fn=_identity)


def _identity(batch):
    return batch
