"""Index building: embed a gallery's reference marks and write them to a brand index with the model's fingerprint."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from markguard.checkpoint import DEFAULT_MODEL_DIR, NAMED_MODELS, load_checkpoint, model_kind, resolve_model_dir
from markguard.datasets.decode import decode_image, load_mark
from markguard.datasets.registry import Gallery, MarkRef, check_gallery, load_gallery
from markguard.device import resolve_device
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import excerpt, printable, real_under
from markguard.infer.bank import BANK_K, background_bank, bank_images, reference_bias
from markguard.infer.embed import embed_references
from markguard.infer.index import MarkIndex
from markguard.infer.index.store import index_writer


@dataclass
class EmbeddedMarks:
    vectors: object  # np.ndarray (n, dim)
    records: list[dict]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) for marks that could not be read


def embed_marks(marks: list[MarkRef], model, card, *, device: str = "cpu", batch_size: int = 32) -> EmbeddedMarks:
    images, records, errors = [], [], []
    for ref in marks:
        try:
            images.append(load_mark(ref.path))
        except (DecodeError, OSError) as e:
            errors.append((str(ref.path), getattr(e, "reason", str(e))))
            continue
        records.append({"brand": ref.brand, "mark": ref.mark, "source": _source(ref.path)})
    vectors = embed_references(model, card, images, batch_size=batch_size, device=device)
    return EmbeddedMarks(vectors, records, errors)


def embed_catalogue(photos: list[MarkRef], model, card, *, device: str = "cpu", batch_size: int = 16) -> EmbeddedMarks:
    """Whole catalogue photos (a product model's references): decoded and letterboxed to the card's scan size and
    pooled over the photo, exactly as a scan pools a listing photo's whole-photo region."""
    import numpy as np
    import torch

    from markguard.datasets.transforms import letterbox
    from markguard.infer.embed import embed_regions

    records, errors, vectors, batch = [], [], [], []

    def flush():
        if batch:
            x = torch.stack([lb.tensor for lb in batch])
            boxes = [torch.tensor([[0.0, 0.0, float(lb.valid[0]), float(lb.valid[1])]]) for lb in batch]
            vectors.append(embed_regions(model, card, x, boxes, device=device).vectors.float().cpu().numpy())
            batch.clear()

    for ref in photos:
        try:
            img = decode_image(ref.path, target_size=card.scan_size).image
        except (DecodeError, OSError) as e:
            errors.append((str(ref.path), getattr(e, "reason", str(e))))
            continue
        batch.append(letterbox(img, card.scan_size, card.mean, card.std))
        records.append({"brand": ref.brand, "mark": ref.mark, "source": _source(ref.path)})
        if len(batch) == batch_size:
            flush()
    flush()
    out = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, card.dim), np.float32)
    return EmbeddedMarks(out, records, errors)


def embed_references_of(marks: list[MarkRef], net, card, *, device: str) -> EmbeddedMarks:
    """A logo model embeds clean marks as training renders them; a product model embeds whole catalogue photos."""
    if model_kind(card) == "product":
        return embed_catalogue(marks, net, card, device=device)
    return embed_marks(marks, net, card, device=device)


def _source(path) -> str:
    """A mark's file as the index records it (text, whatever bytes the folders' names hold)."""
    return printable(Path(path).resolve())


def checked_gallery(gallery_path: str | Path, *, check: bool) -> Gallery:
    """The gallery, once ``markguard gallery check`` finds nothing wrong with it; else one line naming the first problem.

    The same rules as ``gallery check``: a mark or brand folder that links out of the gallery, an
    unreadable or blank mark, one picture under two brands, a brand without marks; names that are
    not UTF-8 are skipped and named. ``check=False`` (a library caller's choice, for generated
    galleries whose random marks may look alike) keeps only the rule that is about safety: nothing
    outside the gallery is read; unreadable marks are then skipped and named, as before.
    """
    if not check:
        gallery = load_gallery(gallery_path)
        root_real = os.path.realpath(gallery_path)
        for m in gallery.marks:
            if real_under(root_real, m.path) is None:
                raise MarkguardError(f"{printable(m.path)}: refused: links outside the gallery {printable(gallery_path)}; "
                                     f"copy the file in, or run `markguard gallery check {printable(gallery_path)}`")
        _report_skipped(gallery)
        return gallery
    report = check_gallery(gallery_path)
    if not report.ok:
        first = next(line for line in report.lines() if line.startswith("error: "))
        more = f" and {report.errors - 1} more" if report.errors > 1 else ""
        raise MarkguardError(f"{printable(gallery_path)}: not indexed: {first.removeprefix('error: ')}{more}; "
                             f"run `markguard gallery check {printable(gallery_path)}` to see every problem")
    gallery = load_gallery(gallery_path)
    _report_skipped(gallery)
    return gallery


def _report_skipped(gallery: Gallery) -> None:
    for path, why in gallery.skipped:
        sys.stderr.write(f"skipped {printable(path)}: {why}\n")


def _brands_meta(gallery: Gallery) -> dict:
    return {b.id: {"name": b.name, "authorized_sellers": b.authorized_sellers, "threshold": b.threshold,
                   "aliases": b.aliases, "wordmarks": b.wordmarks} for b in gallery.brands.values()}  # names: the scan's text match


def _report_errors(errors, stream=None, what: str = "mark") -> None:
    stream = stream or sys.stderr  # looked up now, so a redirected stderr gets the lines
    for path, reason in errors:
        stream.write(f"skipped {what} {printable(path)}: {reason}\n")


def _what(card) -> str:
    return "catalogue photo" if model_kind(card) == "product" else "mark"


def bank_meta(net, card, vectors, ids, *, images: int, device: str, previous: dict | None = None,
              photos: list[str] | None = None) -> dict:
    """The background bank's record in the index metadata: each reference's bias (infer/bank.py), by record id.

    ``photos``: photographs without any reference in them (a product index's bank: other photos), after the procedural ones."""
    photos = list(photos if photos is not None else (previous or {}).get("photos", []))
    bank = background_bank(net, card, bank_images(images, card.scan_size, photos=[Path(p) for p in photos]), device=device)
    bias = dict((previous or {}).get("bias", {}))
    bias.update({str(int(i)): round(float(b), 5) for i, b in zip(ids, reference_bias(vectors, bank))})
    out = {"images": images, "regions": len(bank), "k": BANK_K, "bias": bias}
    if photos:
        out["photos"] = photos
    return out


def build_index(gallery_path: str | Path, out: str | Path, *, model: str | Path | None = None, kind: str = "auto",
                device: str = "auto", memory_budget_mb: float | None = None, recall_target: float = 0.95, bank: int = 0,
                check: bool = False, bank_photos: list[str] | None = None, warm_verify: bool = True) -> dict:
    """Embed every mark of the gallery and save the index at ``out``; returns the index's info.

    ``warm_verify`` also detects the references' keypoints for verification and caches them (the info's
    ``verify_cache`` says how many and how long), so that the first scan is as fast as the later ones.

    ``bank`` > 0 embeds that many mark-free background pictures and stores each reference's bias
    against them, so a scan scores matches normalised against the background (infer/bank.py).
    With ``check`` (what ``markguard index build`` passes) the gallery must pass ``markguard gallery
    check``; without it (generated galleries, whose random marks may look alike) only the rule that
    is about safety holds: nothing outside the gallery is read (see :func:`checked_gallery`).
    """
    with index_writer(out, create=True):  # from the start: an `index add` meanwhile would otherwise be overwritten unseen
        info, sources = _build_index(gallery_path, out, model=model, kind=kind, device=device, memory_budget_mb=memory_budget_mb,
                                     recall_target=recall_target, bank=bank, check=check, bank_photos=bank_photos)
    if warm_verify:
        info["verify_cache"] = _warm_verify(sources)  # outside the lock: it only reads the references
    return info


def _build_index(gallery_path, out, *, model, kind, device, memory_budget_mb, recall_target, bank, check,
                 bank_photos=None) -> tuple[dict, list[str]]:
    device = resolve_device(device)
    gallery = checked_gallery(gallery_path, check=check)
    model_dir = resolve_model_dir(model)
    net, card = load_checkpoint(model_dir, device=device)
    emb = embed_references_of(gallery.marks, net, card, device=device)
    _report_errors(emb.errors, what=_what(card))
    if not emb.records:
        raise MarkguardError(f"{gallery_path}: none of the {_what(card)}s could be read; fix the files listed above")
    index = MarkIndex.build(emb.vectors, emb.records, fingerprint=card.fingerprint, kind=kind,
                            memory_budget_mb=memory_budget_mb, recall_target=recall_target)
    index.meta = index_meta(model_dir, card.fingerprint, _brands_meta(gallery), gallery.root)
    index.meta["model_kind"] = model_kind(card)
    if bank > 0 or bank_photos:
        ids = [r.id for r in index.records()]
        index.meta["bank"] = bank_meta(net, card, emb.vectors, ids, images=bank, device=device, photos=bank_photos)
    index.save(Path(out))
    info = index.info()
    info["skipped"] = len(emb.errors)
    return info, _sources_of(emb)


def _sources_of(emb: EmbeddedMarks) -> list[str]:
    return [r["source"] for r in emb.records if r.get("source")]


def _warm_verify(sources: list[str]) -> dict:
    """The references' keypoints detected now and cached (infer/verify.py), not in the first scan."""
    from markguard.infer.verify import warm_references

    return warm_references(sources)


def read_index_meta(index_path: str | Path) -> dict:
    """The metadata of the index at ``index_path`` (read with the index, from the same save)."""
    return MarkIndex.load(index_path).require_meta()


def index_meta(model_dir: Path, fingerprint: str, brands: dict, gallery_root: Path | None, meta: dict | None = None) -> dict:
    """What an index keeps beside its vectors: the model that built it, the brands' settings, the galleries."""
    meta = dict(meta or {})
    merged = meta.get("brands", {}) | brands
    model_ref = None if Path(model_dir).resolve() == DEFAULT_MODEL_DIR.resolve() else str(Path(model_dir).resolve())
    for name, folder in NAMED_MODELS.items():  # a shipped model by its name: the index moves with markguard
        if model_ref is not None and Path(model_dir).resolve() == folder.resolve():
            model_ref = name
    meta.update({"model": model_ref, "model_fingerprint": fingerprint, "brands": merged})
    if gallery_root is not None:
        meta.setdefault("galleries", [])
        if printable(Path(gallery_root).resolve()) not in meta["galleries"]:
            meta["galleries"].append(printable(Path(gallery_root).resolve()))
    return meta


def add_to_index(index_path: str | Path, gallery_path: str | Path, *, model: str | Path | None = None, device: str = "auto",
                 check: bool = False, warm_verify: bool = True) -> dict:
    """Add a gallery's marks (new brands, or new marks of known ones) to an existing index, without a rebuild.

    ``check`` as for :func:`build_index` (``markguard index add`` passes it).
    """
    with index_writer(index_path):  # the whole read-modify-write: a `remove` meanwhile must not be undone
        out, added = _add_to_index(Path(index_path), gallery_path, model=model, device=device, check=check)
    if warm_verify and added:
        out["verify_cache"] = _warm_verify(added)  # the new references only; outside the lock: it only reads them
    return out


def _add_to_index(index_path: Path, gallery_path, *, model, device, check) -> tuple[dict, list[str]]:
    device = resolve_device(device)
    index = MarkIndex.load(index_path)
    meta = index.require_meta()
    model_dir = resolve_model_dir(model if model is not None else meta.get("model"))
    net, card = load_checkpoint(model_dir, device=device)
    index.require_fingerprint(card.fingerprint)
    gallery = checked_gallery(gallery_path, check=check)
    known = {(r.brand, r.mark, r.source) for r in index.records()}
    new = [m for m in gallery.marks if (m.brand, m.mark, _source(m.path)) not in known]
    emb = embed_references_of(new, net, card, device=device)
    _report_errors(emb.errors, what=_what(card))
    ids = index.add(emb.vectors, emb.records) if emb.records else []
    index.meta = index_meta(model_dir, card.fingerprint, _brands_meta(gallery), gallery.root, meta)
    if meta.get("bank") and len(ids):  # new references get their bias against the same bank
        index.meta["bank"] = bank_meta(net, card, emb.vectors, ids, images=int(meta["bank"]["images"]), device=device, previous=meta["bank"])
    index.save(index_path)
    out = {"added": len(ids), "already_indexed": len(gallery.marks) - len(new), "skipped": len(emb.errors), "total": len(index)}
    return out, _sources_of(emb)


def remove_from_index(index_path: str | Path, *, brand: str | None = None, mark: str | None = None) -> dict:
    if brand is None and mark is None:
        raise MarkguardError("say what to remove: --brand BRAND and/or --mark MARK")
    with index_writer(index_path):
        return _remove_from_index(Path(index_path), brand=brand, mark=mark)


def _remove_from_index(index_path: Path, *, brand: str | None, mark: str | None) -> dict:
    index = MarkIndex.load(index_path)
    meta = dict(index.require_meta())
    n = index.remove(brand=brand, mark=mark)
    if n == 0:
        raise MarkguardError(f"{index_path}: nothing matches {_asked(brand, mark)}; {what_exists(index, brand)}")
    if brand is not None and mark is None:
        meta["brands"] = {b: v for b, v in meta.get("brands", {}).items() if b != brand}
    index.meta = meta
    index.save(index_path)
    return {"removed": n, "total": len(index)}


def _asked(brand: str | None, mark: str | None) -> str:
    return " and ".join(f"{k} {excerpt(v)}" for k, v in (("--brand", brand), ("--mark", mark)) if v is not None)


def what_exists(index: MarkIndex, brand: str | None, shown: int = 20) -> str:
    """The brands the index holds (or the marks of ``brand``, when it has it), for a refusal to name what exists."""
    by_brand: dict[str, list[str]] = {}
    for r in index.records():
        by_brand.setdefault(r.brand, []).append(r.mark)
    if not by_brand:
        return "the index is empty"

    def listed(names) -> str:
        names = sorted(set(names))
        more = f" and {len(names) - shown} more (`markguard index ls` lists them all)" if len(names) > shown else ""
        return ", ".join(n if len(n) <= 60 else n[:56] + "…" for n in names[:shown]) + more

    if brand is not None and brand in by_brand:
        return f"brand {excerpt(brand)} holds marks: {listed(by_brand[brand])}"
    return f"the index holds brands: {listed(by_brand)}"
