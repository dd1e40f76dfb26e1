"""Copy-detection training: a photo and its edited copy (cropped, recoloured, stamped with text, in a
collage or a screenshot, ...) land together; every other photo in the batch is pushed away.

Self-supervised, in the manner of SSCD (Pizzi et al., 2022): pairs are made on the fly from
unlabelled photographs (``datasets/edits.py``), the loss is InfoNCE (NT-Xent) over the batch plus
the KoLeo entropy regulariser, which spreads the descriptors over the sphere so that a score
means the same for every reference. The model is markguard's embedding model, pooled over the
photo's box in its letterboxed square exactly as ``markguard index build`` and the scan pool it.

``markguard train -r copydetect -o OUT photos=DIR,DIR`` runs it (a recipe with ``task: copydetect``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from markguard.checkpoint import ModelCard, ModelShape, create_model, save_checkpoint
from markguard.datasets.decode import decode_image
from markguard.datasets.edits import random_edit
from markguard.datasets.transforms import to_tensor
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import atomic_write_text
from markguard.train.config import PRODUCT_REGIONS  # the product card's regions (train/loop.py writes them too)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class CopyDetectConfig(ModelShape):
    """What a copy-detection run trains on and how (the model's shape from ModelShape)."""

    task: str = "copydetect"
    photos: str = ""  # folders of photographs (comma-separated); sub-folders are sources
    group_by_folder: str = ""  # folders (comma-separated) whose photos are versions of one picture (sway's sizes): one group
    init: str | None = "efficientnet-lite0"
    freeze_stages: int = 2
    photo_side: int = 768  # photos are held in memory at this long side
    view_min: float = 0.35  # a training photo is a window of 35-100% of a source's side
    view_side: tuple[int, int] = (224, 448)  # its long side before editing
    p_compose: float = 0.5  # share of copies made by two edits
    p_box_pool: float = 0.5  # share of framed copies (collage, screenshot, background) pooled over the copy's box, not the whole
    pairs: int = 24  # photos a batch (each with its copy)
    steps: int = 800
    lr: float = 0.0005
    weight_decay: float = 0.05
    warmup_steps: int = 40
    clip_grad: float = 1.0
    temperature: float = 0.05
    koleo_weight: float = 10.0
    # the projection's start: "whiten" fits it to the ImageNet features by learned whitening of (photo, copy) pairs,
    # so step 0 is already the whitened ImageNet descriptor; "random" is a fresh linear layer
    head_init: str = "random"
    whiten_pairs: int = 3000
    whiten_shrink: float = 0.1
    # pull every embedding toward the starting model's (frozen) embedding of the same image: fine-tuning on a few
    # thousand photos otherwise forgets ImageNet features that already matched copies
    distill_weight: float = 0.0
    freeze_bn: bool = False
    start_from: str = ""  # a copy-detection checkpoint folder (e.g. a whitened step-0 model) whose weights start the run  # keep every batch-norm layer's ImageNet statistics (the trained stages' too)
    ema: float = 0.99
    threads: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        if self.task != "copydetect":
            raise MarkguardError(f"task={self.task!r}: this trainer runs task=copydetect")
        for key in ("pairs", "steps", "input_size", "scan_size", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise MarkguardError(f"{key}={getattr(self, key)} must be at least 1")
        if self.pairs < 2:
            raise MarkguardError("pairs must be at least 2: the other photos of a batch are the negatives")
        if self.head_init not in ("random", "whiten"):
            raise MarkguardError(f"head_init={self.head_init!r}: choose random or whiten")
        if self.head_init == "whiten" and self.whiten_pairs < 2 * self.dim:
            raise MarkguardError(f"whiten_pairs={self.whiten_pairs}: whitening {self.dim} dimensions needs at least {2 * self.dim} pairs")
        if not 0 < self.view_min <= 1:
            raise MarkguardError(f"view_min={self.view_min} must be in (0, 1]")


def list_photos(roots: list[str]) -> list[Path]:
    out = []
    for r in roots:
        p = Path(r)
        if not p.is_dir():
            raise MarkguardError(f"photos: {r} is not a folder; give folders of photographs")
        out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES)
    return out


@dataclass
class PhotoPool:
    images: list[Image.Image]
    groups: list[int]  # photos of one group are one picture (never negatives of each other)
    paths: list[str] = field(default_factory=list)


def load_photos(cfg: CopyDetectConfig) -> PhotoPool:
    roots = [r for r in cfg.photos.split(",") if r]
    grouped = [Path(g).resolve() for g in cfg.group_by_folder.split(",") if g]
    images, groups, paths, keys = [], [], [], {}
    for f in list_photos(roots):
        try:
            img = decode_image(f, target_size=cfg.photo_side).image.convert("RGB")
        except DecodeError as e:
            raise MarkguardError(f"{f}: cannot train on it ({e.reason}); remove it from the photo folders") from None
        img.thumbnail((cfg.photo_side, cfg.photo_side), Image.BILINEAR)
        parent = f.parent.resolve()
        key = str(parent) if any(parent == g or g in parent.parents for g in grouped) else str(f)
        groups.append(keys.setdefault(key, len(keys)))
        images.append(img)
        paths.append(str(f))
    if len(set(groups)) < 2:
        raise MarkguardError(f"photos: {len(images)} photo(s) in {len(set(groups))} group(s) under {cfg.photos}; "
                             "copy-detection training needs at least 2 distinct photographs (the negatives)")
    return PhotoPool(images, groups, paths)


def letterbox(img: Image.Image, size: int, mean, std) -> tuple[torch.Tensor, list[float]]:
    """The photo's long side to ``size``, padded bottom/right with the mean colour (as the scan letterboxes)."""
    f = size / max(img.size)
    w, h = max(1, round(img.width * f)), max(1, round(img.height * f))
    x = torch.zeros(3, size, size)
    x[:, :h, :w] = to_tensor(img.resize((w, h), Image.BILINEAR), mean, std)
    return x, [0.0, 0.0, float(w), float(h)]


def make_pair(pool: PhotoPool, i: int, rng: np.random.Generator, cfg: CopyDetectConfig, mean, std, size: int | None = None):
    """(original, its box), (copy, its box) as letterboxed tensors (``size``, default the input size): a random window
    of photo ``i`` and an edited copy."""
    size = size or cfg.input_size
    src = pool.images[i]
    w, h = src.size
    s = rng.uniform(cfg.view_min, 1.0)
    cw, ch = max(32, int(w * s * rng.uniform(0.85, 1.15))), max(32, int(h * s * rng.uniform(0.85, 1.15)))
    cw, ch = min(cw, w), min(ch, h)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = src.crop((x, y, x + cw, y + ch))
    side = int(rng.integers(cfg.view_side[0], cfg.view_side[1] + 1))
    view = view.resize((max(16, round(cw * side / max(cw, ch))), max(16, round(ch * side / max(cw, ch)))), Image.BILINEAR)
    others = []
    for _ in range(3):
        j = int(rng.integers(len(pool.images)))
        if pool.groups[j] != pool.groups[i]:
            others.append(pool.images[j])
    edited = random_edit(view, rng, others, p_compose=cfg.p_compose)
    a, abox = letterbox(view, size, mean, std)
    b, bbox = letterbox(edited.image, size, mean, std)
    framed = any(k in edited.kind for k in ("collage", "screenshot", "background"))
    if framed and rng.random() < cfg.p_box_pool:
        f = size / max(edited.image.size)
        bbox = [edited.box[0] * f, edited.box[1] * f, edited.box[2] * f, edited.box[3] * f]
    return a, abox, b, bbox


@torch.no_grad()
def pair_features(model, pool: PhotoPool, cfg: CopyDetectConfig, mean, std, n_pairs: int, size: int, *, seed: int = 1,
                  batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features (before the projection) of ``n_pairs`` (window, edited copy) pairs, letterboxed to ``size``."""
    model.eval()
    rng = np.random.default_rng((cfg.seed, seed, 7919))
    fa, fb = [], []
    for start in range(0, n_pairs, batch):
        xs, boxes = [], []
        for _ in range(min(batch, n_pairs - start)):
            a, abox, b, bbox = make_pair(pool, int(rng.integers(len(pool.images))), rng, cfg, mean, std, size=size)
            xs += [a, b]
            boxes += [abox, bbox]
        fmap = model.forward_features(torch.stack(xs).contiguous(memory_format=torch.channels_last))
        f = model.pool_regions(fmap, [torch.tensor([bx]) for bx in boxes], size).double().numpy()
        fa.append(f[0::2])
        fb.append(f[1::2])
    return np.concatenate(fa), np.concatenate(fb)


def learned_whitening(fa: np.ndarray, fb: np.ndarray, dim: int, shrink: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Projection ``(W, b)`` to ``dim`` dimensions that whitens the differences between a photo and its copy, then keeps
    the directions along which photos differ most (Radenović et al., "Fine-tuning CNN image retrieval with no human
    annotation", 2018: supervised whitening). ``shrink`` adds that share of the mean eigenvalue to the copies'
    covariance, so a direction no edit moved is not blown up."""
    x = np.concatenate([fa, fb])
    m = x.mean(axis=0)
    d = fa - fb
    cs = d.T @ d / len(d)
    cs += shrink * np.trace(cs) / len(cs) * np.eye(len(cs))
    w, v = np.linalg.eigh(cs)
    p1 = v @ np.diag(w.clip(min=1e-12) ** -0.5) @ v.T
    y = (x - m) @ p1.T
    w2, u = np.linalg.eigh(y.T @ y / len(y))
    top = np.argsort(w2)[::-1][:dim]
    proj = u[:, top].T @ p1
    return proj.astype(np.float32), (-proj @ m).astype(np.float32)


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate's loss: minus the mean log distance to each vector's nearest neighbour."""
    with torch.no_grad():
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        nn_idx = d.argmin(dim=1)
    dist = (x - x[nn_idx]).norm(dim=1)
    return -torch.log(dist + eps).mean()


def card_for(cfg: CopyDetectConfig, init) -> ModelCard:
    shape = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelShape)}
    card = ModelCard(**shape)
    card.regions = json.loads(json.dumps(PRODUCT_REGIONS))
    card.thresholds = {"flag": 0.6, "review": 0.5, "per_brand": {}}
    if init is not None:
        card.init = init.card_entry()
        if init.mean is not None:
            card.mean, card.std = tuple(init.mean), tuple(init.std)
    return card


def _log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def train_copydetect(cfg: CopyDetectConfig, out_dir: str | Path, *, resume: bool = False, stop_at: int | None = None,
                     max_seconds: float | None = None, log=print) -> ModelCard:
    """Train; writes OUT/model.safetensors + model_card.json every ``checkpoint_every`` steps and at the end."""
    from pytorch_metric_learning.losses import NTXentLoss

    from markguard.pretrained import load_into, resolve_init
    from markguard.train.loop import freeze_stages

    cfg.validate()
    if not cfg.photos:
        raise MarkguardError("copydetect: no photos given; set photos=DIR[,DIR] (folders of photographs, e.g. from `markguard data photos`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init = resolve_init(cfg.init) if cfg.init else None
    card = card_for(cfg, init)
    model = create_model(card)
    started = {}
    if cfg.start_from:
        from markguard.checkpoint import load_checkpoint

        start_model, start_card = load_checkpoint(cfg.start_from)
        if (start_card.backbone, start_card.dim) != (card.backbone, card.dim):
            raise MarkguardError(f"start_from={cfg.start_from}: a {start_card.backbone} model of {start_card.dim} dimensions; "
                                 f"this run trains {card.backbone} at dim={card.dim}")
        model.load_state_dict(start_model.state_dict())
        started = {"start_from": cfg.start_from, "start_training": start_card.training}
    elif init is not None:
        load_into(model.backbone, init)
    frozen = freeze_stages(model.backbone, cfg.freeze_stages)
    pool = load_photos(cfg)
    if cfg.head_init == "whiten" and not resume and not cfg.start_from:
        t = time.time()
        fa, fb = pair_features(model, pool, cfg, card.mean, card.std, cfg.whiten_pairs, card.scan_size)
        w, b = learned_whitening(fa, fb, cfg.dim, cfg.whiten_shrink)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(w))
            model.head.bias.copy_(torch.from_numpy(b))
        log(json.dumps({"whitening": {"pairs": cfg.whiten_pairs, "shrink": cfg.whiten_shrink, "seconds": round(time.time() - t, 1)}}))
    teacher = None
    if cfg.distill_weight:
        import copy

        teacher = copy.deepcopy(model).eval()  # on resume the starting model is rebuilt below from train_state.pt
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()} if cfg.ema else None
    start = 0
    state_path = out / "train_state.pt"
    if resume:
        if not state_path.is_file():
            raise MarkguardError(f"{out}: no train_state.pt to resume from; start the run without --resume")
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        if ema is not None and "ema" in st:
            ema = st["ema"]
        start = int(st["step"])
        if teacher is not None and "teacher" in st:
            teacher.load_state_dict(st["teacher"])
    loss_fn = NTXentLoss(temperature=cfg.temperature)
    atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    groups = np.array(pool.groups)
    uniq = np.unique(groups)
    t0 = time.time()
    step = start
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)

    def save(step: int, final: bool) -> ModelCard:
        m = model
        if ema is not None:
            m = create_model(card)
            m.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in ema.items()})
        c = dataclasses.replace(card, training={
            "task": "copydetect", "steps": step, "steps_planned": cfg.steps, "finished": step >= cfg.steps,
            "photos": sorted({str(Path(p).parent) for p in pool.paths}), "n_photos": len(pool.paths),
            "n_groups": int(len(uniq)), "pairs_per_step": cfg.pairs, "loss": "ntxent+koleo" + ("+distill" if teacher is not None else ""),
            "temperature": cfg.temperature, "koleo_weight": cfg.koleo_weight, "freeze_stages": cfg.freeze_stages,
            "head_init": cfg.head_init, **started, **({"whiten_pairs": cfg.whiten_pairs, "whiten_shrink": cfg.whiten_shrink} if cfg.head_init == "whiten" else {}),
            "distill_weight": cfg.distill_weight, "freeze_bn": cfg.freeze_bn, "lr": cfg.lr,
            "seconds": round(time.time() - t0, 1)})
        c = save_checkpoint(m, c, out)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ema": ema if ema is not None else {}, "step": step,
                    **({"teacher": teacher.state_dict()} if teacher is not None else {})}, state_path)
        return c

    def set_train():
        model.train()
        for m in frozen:
            m.eval()
        if cfg.freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    set_train()
    c = card
    while step < end:
        rng = np.random.default_rng((cfg.seed, step))
        n = min(cfg.pairs, len(uniq))
        chosen_groups = rng.choice(uniq, size=n, replace=False)
        idx = [int(rng.choice(np.flatnonzero(groups == g))) for g in chosen_groups]
        xs, boxes = [], []
        for k, i in enumerate(idx):
            a, abox, b, bbox = make_pair(pool, i, rng, cfg, card.mean, card.std)
            xs += [a, b]
            boxes += [abox, bbox]
        x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
        fmap = model.forward_features(x)
        emb = model.embed_regions(fmap, [torch.tensor([bx]) for bx in boxes], cfg.input_size)
        labels = torch.arange(n).repeat_interleave(2)
        l_nce = loss_fn(emb, labels)
        l_ko = koleo(emb)
        loss = l_nce + cfg.koleo_weight * l_ko
        l_di = torch.zeros(())
        if teacher is not None:
            with torch.no_grad():
                t_emb = teacher.embed_regions(teacher.forward_features(x), [torch.tensor([bx]) for bx in boxes], cfg.input_size)
            l_di = (1 - (emb * t_emb).sum(dim=1)).mean()
            loss = loss + cfg.distill_weight * l_di
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        sched.step()
        step += 1
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(cfg.ema).add_(v.detach().float(), alpha=1 - cfg.ema)
                    else:
                        ema[k].copy_(v)
        if step % cfg.log_every == 0 or step == end:
            with torch.no_grad():
                sims = emb[0::2] @ emb[1::2].T
                acc = float((sims.argmax(dim=1) == torch.arange(n)).float().mean())
            row = {"step": step, "loss": round(loss.item(), 4), "ntxent": round(l_nce.item(), 4), "koleo": round(l_ko.item(), 4), "distill": round(l_di.item(), 4),
                   "pair_top1": round(acc, 3), "lr": round(sched.get_last_lr()[0], 7), "seconds": round(time.time() - t0, 1)}
            _log(out / "metrics.jsonl", row)
            log(json.dumps(row))
        if step % cfg.checkpoint_every == 0 or step == end:
            c = save(step, step >= cfg.steps)
        if max_seconds is not None and time.time() - t0 > max_seconds:
            c = save(step, False)
            break
    if step == start:
        c = save(step, step >= cfg.steps)
    return c


def is_copydetect(recipe: str | None, overrides: list[str], resumed: Path | None = None) -> bool:
    """Whether a `markguard train` call names this trainer: ``task: copydetect`` in the recipe, ``task=copydetect``,
    or (``--resume`` of the run folder ``resumed``) a run this trainer started."""
    import yaml

    for item in overrides or []:
        if item.replace(" ", "").startswith("task="):
            return item.split("=", 1)[1].strip() == "copydetect"
    if resumed is not None and recipe is None and (Path(resumed) / "config.json").is_file():
        try:
            return json.loads((Path(resumed) / "config.json").read_text(encoding="utf-8")).get("task") == "copydetect"
        except (ValueError, AttributeError):
            return False
    if recipe is None or not Path(recipe).is_file():
        return False
    try:
        doc = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False  # the recipe loader says what is wrong with it
    return isinstance(doc, dict) and doc.get("task") == "copydetect"


def run_copydetect(recipe: str | None, args) -> int:
    """`markguard train -r copydetect -o OUT [photos=DIR,...]`."""
    from markguard.config import apply, load_layered

    saved = Path(args.out) / "config.json"
    if args.resume and recipe is None and saved.is_file():  # the run's own settings, overrides on top
        cfg = apply(CopyDetectConfig(), json.loads(saved.read_text(encoding="utf-8")), source=str(saved))
        if args.overrides:
            cfg = apply(cfg, dict(o.split("=", 1) for o in args.overrides if "=" in o), source="command line")
    else:
        cfg = load_layered(CopyDetectConfig, recipe, args.overrides)
    card = train_copydetect(cfg, args.out, resume=args.resume, stop_at=args.stop_at,
                            max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    steps = card.training.get("steps")
    if steps is not None and steps < cfg.steps:
        print(f"stopped at step {steps}/{cfg.steps}; continue with: markguard train --resume --out {args.out} (same recipe)")
    print(f"model: {args.out} (fingerprint {card.fingerprint})")
    return 0
