"""The stages a batch goes through, each built once from the scan plan (infer/plan.py) with its settings resolved.

A stage is a callable on a :class:`BatchWork` (the batch in flight) with a ``name`` its time is kept under
(None: it keeps its own times) and ``per_index`` (it works on one index's share, skipped when no photo of
the batch decoded). An evidence signal's producer is a stage too (infer/evidence.py ``Signal.producer``).
The model's own stages say ``model_stage``: a scan runs the next batch through them while this batch's
evidence and decision stages finish on another thread (infer/pipeline.py ``process_batches``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from markguard.infer.decode import Batch, ModelInput, finish_decode, model_input
from markguard.infer.embed import RegionEmbeddings
from markguard.infer.evidence import Candidate
from markguard.infer.options import StageTimes


@dataclass
class IndexWork:
    """One index's share of a batch in flight."""

    inp: ModelInput | None = None  # the batch at this model's scan size
    look_inp: ModelInput | None = None  # the first look's largest pyramid level (where second looks choose)
    fmap: torch.Tensor | None = None
    emb: RegionEmbeddings | None = None
    photo_boxes: list[np.ndarray] | None = None
    found: list[list[Candidate]] = field(default_factory=list)  # per decoded photo, best first


@dataclass
class BatchWork:
    """A decoded batch on its way through the stages, and what they have found so far."""

    batch: Batch
    times: StageTimes
    index: list[IndexWork]
    per_photo: list[list[Candidate]] | None = None  # every index's candidates a photo, gathered after the per-index stages
    rows: list | None = None
    kept: list[list] | None = None  # with --keep-embeddings: each photo's searched regions (infer/rematch.py)

    def photos(self) -> list[list[Candidate]]:
        """Each decoded photo's candidates from every index, in the indexes' order."""
        if self.per_photo is None:
            self.per_photo = [[c for iw in self.index if iw.found for c in iw.found[i]] for i in range(len(self.batch.ok))]
        return self.per_photo


@dataclass
class DeviceDecode:
    """JPEGs the decode workers left for the model's device (nvJPEG on a GPU), decoded in one call."""

    model_stage: ClassVar[bool] = True

    size: int
    device: str
    hires: int
    name: str = "decode"
    per_index: bool = False

    @classmethod
    def plan(cls, plan) -> DeviceDecode:
        return cls(plan.size, plan.opts.device, plan.hires)

    def __call__(self, work: BatchWork) -> None:
        if work.batch.pending:
            finish_decode(work.batch, size=self.size, device=self.device, hires=self.hires)


@dataclass
class FirstLook:
    """The batch as this index's model sees it (its normalisation and scan size), then its first look over the model's
    pyramid (infer/pyramid.py: one backbone pass a level, the regions the resolved settings choose)."""

    model_stage: ClassVar[bool] = True

    sp: object  # plan.SearcherPlan
    device: str
    precision: str
    name: None = None  # times its parts: decode (the model's input), embed, regions
    per_index: bool = True

    @classmethod
    def plan(cls, plan, sp) -> FirstLook:
        return cls(sp, plan.opts.device, plan.opts.precision)

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.pyramid import first_look

        t = time.perf_counter()
        iw, sp = work.index[self.sp.pos], self.sp
        iw.inp = model_input(work.batch, sp.prep)
        work.times.add("decode", t)
        first = first_look(sp.model, None, sp.prep, sp.mode, iw.inp, device=self.device, precision=self.precision, tick=work.times.add)
        iw.look_inp, iw.fmap, iw.emb, iw.photo_boxes = first.inp, first.fmap, first.emb, first.photo_boxes


@dataclass
class SecondLook:
    """The best proposals cropped from the high-resolution copy and embedded again (infer/looks.py)."""

    model_stage: ClassVar[bool] = True

    sp: object
    device: str
    precision: str
    name: str = "look"
    per_index: bool = True

    @classmethod
    def plan(cls, plan, sp) -> SecondLook:
        return cls(sp, plan.opts.device, plan.opts.precision)

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.looks import second_look, with_looks

        iw = work.index[self.sp.pos]
        extra = second_look(self.sp.model, self.sp.prep, work.batch, iw.look_inp, iw.fmap, self.sp.looks, device=self.device,
                            precision=self.precision)
        iw.emb, iw.photo_boxes = with_looks(iw.emb, iw.photo_boxes, extra)


@dataclass
class Search:
    """Every region of the batch against this index in one query: each photo's candidates, best first."""

    model_stage: ClassVar[bool] = True

    sp: object
    k: int
    max_matches: int
    keep: bool = False  # keep the searched regions for `markguard rematch`
    name: str = "search"
    per_index: bool = True

    @classmethod
    def plan(cls, plan, sp) -> Search:
        return cls(sp, plan.opts.k, plan.opts.max_matches, bool(plan.opts.keep_embeddings))

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.search import search_batch

        iw, s = work.index[self.sp.pos], self.sp.searcher
        vectors = iw.emb.vectors.float().cpu().numpy()
        if self.keep:
            from markguard.infer.rematch import keep_regions

            if work.kept is None:
                work.kept = [[] for _ in work.batch.ok]
            keep_regions(work.kept, s.name, vectors, iw.emb.counts, iw.photo_boxes)
        iw.found = search_batch(s.index, vectors, iw.emb.counts, iw.photo_boxes, k=self.k,
                                max_matches=self.max_matches, index_name=s.name or None, bias=s.bias)


@dataclass
class TextStage:
    """The text signal's producer: each photo read where its detector finds text (infer/ocr.py), matched to the brands' names."""

    reader: object  # infer.ocr.OcrReader: one engine, loaded on the first read
    lexicon: object  # infer.textmatch.Lexicon of every index's brands
    size: int  # the batch's decode size, and the copy's long side, for the photos' high-resolution copies
    hires: int  # 0: read the originals, decoded again
    name: str = "evidence"
    per_index: bool = False

    @classmethod
    def plan(cls, plan, sp=None) -> TextStage:
        from markguard.infer.textmatch import Lexicon

        brands = {b: m for p in plan.searchers for b, m in p.searcher.brands.items()}
        # the copy looks and verification use, when the scan makes one (the same pixels, decoded once a photo)
        hires = plan.hires or (plan.verify_hires if plan.verify is not None else 0)
        return cls(make_reader(plan.ocr), Lexicon.from_brands(brands), plan.size, hires)

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.evidence import collect
        from markguard.infer.ocr import OriginalPhotos

        batch = work.batch
        photos = (SharedHires(batch, self.size, self.hires) if self.hires
                  else OriginalPhotos([batch.items[pos] for pos in batch.ok]))
        # candidates keep the matches' order, then come those only the text found (a brand it names that no region
        # matched): a candidate of its own, with no mark and no similarity (score 0), that a combiner with the text
        # signal can flag; decided on similarity alone, it stays below any usual threshold
        work.per_photo = collect(photos, work.photos(), lexicon=self.lexicon, reader=self.reader, read_unmatched=False)


def make_reader(config):
    """The OCR reader a scan plan reads with (one engine a scan)."""
    from markguard.infer.ocr import OcrReader

    return OcrReader(config)


class SharedHires:
    """The batch's high-resolution copies as OCR reads photos (``ocr.HiresPhotos``), each decoded once for the whole batch:
    by the decode workers, by verification, or here on first use."""

    def __init__(self, batch: Batch, size: int, hires: int):
        self.batch, self.size, self.hires = batch, size, hires

    def __len__(self) -> int:
        return len(self.batch.ok)

    def _photo(self, i: int):
        from markguard.infer.decode import hires_photos
        from markguard.infer.ocr import HiresPhotos

        hires_photos(self.batch, [i], size=self.size, hires=self.hires)
        if self.batch.hires[i] is None:
            from markguard.errors import DecodeError

            raise DecodeError("cannot read the photo again", self.batch.items[self.batch.ok[i]].image)
        return HiresPhotos(self.batch.hires, self.batch.hires_to_orig)

    def __getitem__(self, i: int):
        return self._photo(i)[i]

    def factor(self, i: int) -> tuple[float, float]:
        return self._photo(i).factor(i)


@dataclass
class Decide:
    """Each photo's status from its candidates (infer/decide.py), as the batch's rows in input order."""

    policy: object
    max_matches: int
    name: str = "decide"
    per_index: bool = False

    @classmethod
    def plan(cls, plan) -> Decide:
        return cls(plan.policy, plan.opts.max_matches)

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.decide import decide_rows

        work.rows = decide_rows(work.batch, work.photos(), self.policy, self.max_matches)


@dataclass
class KeepRegions:
    """With --keep-embeddings: each decoded photo's searched regions onto its row, for the embedding store."""

    name: str = "decide"
    per_index: bool = False

    def __call__(self, work: BatchWork) -> None:
        from markguard.infer.rematch import attach_regions

        attach_regions(work.rows, work.batch.ok, work.kept or [[] for _ in work.batch.ok])
