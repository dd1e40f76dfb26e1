"""The training loop: samples (marks composited into photos, or labelled photos) → one backbone pass →
region-pooled embeddings → metric loss; checkpoints that resume exactly; DDP under torchrun."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from markguard.checkpoint import ModelCard, create_model, save_checkpoint
from markguard.config import save_config, versions
from markguard.fsio import atomic_write_text
from markguard.datasets.composite import CompositeConfig, CompositeDataset
from markguard.datasets.decode import load_mark
from markguard.datasets.registry import load_gallery, split_brands
from markguard.device import autocast, resolve_device
from markguard.errors import DecodeError, MarkguardError
from markguard.model import compile_backbone
from markguard.pretrained import load_into, resolve_init
from markguard.preprocess import LOOK_DEFAULTS
from markguard.train import ddp
from markguard.train.calibrate import calibrate_synthetic
from markguard.train.config import TrainConfig
from markguard.train.losses import MetricLoss
from markguard.train.metrics import MetricsLog
from markguard.train.products import PhotoDataset, load_photo_trainset

LAST = "last"  # the resumable checkpoint inside a run folder
STATE = "trainer_state.pt"
LOSS_WEIGHTS = "loss.safetensors"


def card_from_config(cfg: TrainConfig, init=None) -> ModelCard:
    """The model card a run starts from; mean/std follow the pretrained weights when ``init`` gives them."""
    card = ModelCard(**cfg.model_shape(), proposals=dict(cfg.proposals))
    if init is not None:
        if init.backbone and init.backbone != cfg.backbone:
            raise MarkguardError(f"init={cfg.init} holds weights for backbone {init.backbone}, the recipe says backbone={cfg.backbone}; "
                                 f"set backbone={init.backbone}")
        card.init = init.card_entry()
        if init.mean is not None:
            card.mean, card.std = tuple(init.mean), tuple(init.std)
        elif (start := init_card(init)) is not None:  # a markguard checkpoint: the preprocessing it was trained with
            card.mean, card.std = tuple(start["mean"]), tuple(start["std"])
    if cfg.product:  # whole product photos: index build embeds them whole; the scan pools the photo and its large regions
        from markguard.train.config import PRODUCT_REGIONS

        card.regions = dict(PRODUCT_REGIONS)
    if cfg.proposals:  # a model that can find marks scans with its own proposals plus a coarse grid by default
        card.regions = dict(card.regions, mode="learned+grid")
    if cfg.looks:
        if not cfg.proposals:
            raise MarkguardError(f"looks={cfg.looks}: second looks are chosen by the proposal head; set proposals (e.g. {{top_k: 20}}) or looks=0")
        card.regions = dict(card.regions, looks={"per_photo": int(cfg.looks), "per_batch": LOOK_DEFAULTS["per_batch"]})
    return card


def init_card(init) -> dict | None:
    """The model card beside ``init``'s weights file when it is a markguard checkpoint (model.safetensors + model_card.json)."""
    path = Path(init.source)
    card = path.with_name("model_card.json")
    if not any(k.startswith("backbone.") for k in init.state) or not card.is_file():
        return None
    try:
        d = json.loads(card.read_text())
        return {"mean": [float(v) for v in d["mean"]], "std": [float(v) for v in d["std"]]}
    except (ValueError, KeyError, TypeError) as e:
        raise MarkguardError(f"init: {card}: unreadable model card ({type(e).__name__}: {e}); fix or remove it") from None


def load_heads(model: torch.nn.Module, init) -> int:
    """Fine-tuning a markguard checkpoint: its projection, pooling and proposal head too, checked tensor by tensor.

    ``load_into`` copies the backbone; a checkpoint (``backbone.*`` names) also carries the rest of the model,
    which must then match the recipe's (dim, pooling, proposals) exactly. Returns how many tensors it copied.
    """
    if not any(k.startswith("backbone.") for k in init.state):
        return 0  # a backbone-only start (ImageNet weights): the heads start fresh
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    for k, v in target.items():
        if k not in init.state:
            raise MarkguardError(f"init: {init.source} has no tensor '{k}' for this recipe's model; "
                                 "set dim/pooling/proposals as the checkpoint's card has them")
        if tuple(init.state[k].shape) != tuple(v.shape):
            raise MarkguardError(f"init: {init.source}: tensor '{k}' {tuple(init.state[k].shape)} does not fit {tuple(v.shape)}; "
                                 "set dim/pooling/proposals as the checkpoint's card has them")
    model.load_state_dict({k: init.state[k].to(v.dtype) for k, v in target.items()}, strict=False)
    return len(target)


def fold_brand(brand_id: str) -> str:
    """The form in which brand ids are compared with an exclusion list: a-z0-9 only, without "dot" (vue.js = vuedotjs = vuejs)."""
    return re.sub(r"[^a-z0-9]", "", brand_id.lower()).replace("dot", "")


def read_brand_list(path: str | Path) -> set[str]:
    """Folded brand ids of a text file, one a line; ``#`` starts a comment."""
    path = Path(path)
    shipped = Path(__file__).parent / "recipes" / path.name
    if not path.is_file() and path.parent == Path(".") and shipped.is_file():
        path = shipped  # a bare name: the list shipped beside the recipes
    if not path.is_file():
        raise MarkguardError(f"exclude_brands={path}: file not found; give a text file with one brand id a line")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {fold_brand(line) for line in lines if line}


def load_training_marks(cfg: TrainConfig):
    if cfg.gallery is None:
        raise MarkguardError("no training data: set gallery=PATH (a gallery folder of marks) or trainset=PATH (labelled photos) in the recipe or on the command line")
    gallery = load_gallery(cfg.gallery)
    refs, held = split_brands(gallery, cfg.holdout_brands)
    if cfg.exclude_brands:
        excluded = read_brand_list(cfg.exclude_brands)
        refs = [r for r in refs if fold_brand(r.brand) not in excluded]
    images, names, errors = [], [], []
    for ref in refs:
        try:
            images.append(load_mark(ref.path))
            names.append(f"{ref.brand}/{ref.mark}")
        except DecodeError as e:
            errors.append(f"{ref.path}: {e.reason}")
    for e in errors:
        sys.stderr.write(f"skipped training mark {e}\n")
    if len(images) < 2:
        raise MarkguardError(f"{cfg.gallery}: metric learning needs at least 2 marks, found {len(images)}; add marks or lower holdout_brands")
    return images, names, held


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def batch_order(labels: list[int], cfg: TrainConfig, n: int, background: int | None = None) -> list[int]:
    """The first ``n`` indices of the run's sample order, fixed by the seed; a longer run extends it
    without changing its start, so a resume (or more ranks) continues the same sequence.

    With ``background`` (the background class's label) and the m-per-class sampler, each batch ends
    with ``p_background`` of its samples from the background class, in whole groups of m: the sampler
    draws classes uniformly, so among thousands of mark classes it would almost never draw that one,
    and the background samples (and the hard negatives on them) would never be seen.
    """
    order = _sampler_order(labels, cfg, n)
    if background is None or cfg.sampler != "m_per_class" or cfg.p_background <= 0:
        return order
    bg = np.flatnonzero(np.asarray(labels) == background)
    groups = round(cfg.p_background * cfg.batch_size / cfg.m_per_class)
    k = min(groups * cfg.m_per_class, cfg.batch_size - cfg.m_per_class)  # at least one mark class stays in a batch
    if not len(bg) or k <= 0:
        return order
    pool = np.random.default_rng((cfg.seed, 104729)).permutation(bg)
    B, used = cfg.batch_size, 0
    for start in range(0, len(order) - B + 1, B):
        for j in range(start + B - k, start + B):
            order[j] = int(pool[used % len(pool)])
            used += 1
    return order


def _sampler_order(labels: list[int], cfg: TrainConfig, n: int) -> list[int]:
    if cfg.sampler == "random":
        rng = np.random.default_rng(cfg.seed)
        reps = -(-n // len(labels))
        return np.concatenate([rng.permutation(len(labels)) for _ in range(reps)])[:n].tolist()
    from pytorch_metric_learning import samplers
    from pytorch_metric_learning.utils import common_functions as c_f

    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(cfg.seed)  # pml draws from this module-level generator
    try:
        sampler = samplers.MPerClassSampler(labels, m=cfg.m_per_class, batch_size=cfg.batch_size, length_before_new_iter=n)
        order = list(iter(sampler))
    finally:
        c_f.NUMPY_RANDOM = saved
    return order[:n]


class EMA:
    """Exponential moving average of the weights; the averaged copy is what gets saved."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        m = copy.deepcopy(model)
        m.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return m


class TrainStep(torch.nn.Module):
    """One forward of a training step, model and loss together, so DDP sees (and syncs) every parameter."""

    def __init__(self, model, loss_fn, cfg: TrainConfig, background_label: int | None):
        super().__init__()
        self.model, self.loss_fn, self.cfg, self.background_label = model, loss_fn, cfg, background_label
        self.device = "cpu"

    def forward(self, x, boxes, y):
        cfg, model = self.cfg, self.model
        with autocast(self.device, cfg.precision):
            fmap = model.forward_features(x)
        emb = model.embed_regions(fmap, list(boxes.unsqueeze(1)), cfg.input_size)
        loss = self.loss_fn(emb, y)
        if model.proposal_head is not None:
            has_mark = y != self.background_label if self.background_label is not None else torch.ones_like(y, dtype=torch.bool)
            loss = loss + cfg.proposal_weight * model.proposal_loss(fmap, boxes, has_mark, cfg.input_size)
        return loss


@dataclass
class TrainData:
    dataset: torch.utils.data.Dataset
    order: list[int]  # dataset indices in the run's order (all ranks)
    num_classes: int
    background_label: int | None
    summary: dict  # what the model card records about the data
    held: list[str]


def _warm_backgrounds(ds: CompositeDataset, seed: int) -> None:
    """Fill the procedural background pool up front from its own seed.

    The pool otherwise fills lazily from the first samples' generators, so a resumed run (or each
    loader worker) would see different backgrounds than one straight run: exact resume needs this.
    """
    ds.backgrounds.warm(np.random.default_rng((seed, 104729)))


def build_data(cfg: TrainConfig, n: int, card: ModelCard) -> TrainData:
    """The training samples and the first ``n`` of their order: marks composited on the fly, or labelled photos."""
    if cfg.trainset:
        photos = load_photo_trainset(cfg.trainset, cfg.trainset_format, m=cfg.m_per_class if cfg.sampler == "m_per_class" else 1,
                                     drop_small=cfg.drop_small_classes)
        _check_classes(len(photos.classes), cfg, cfg.trainset)
        ds = PhotoDataset(photos, cfg.input_size, card.mean, card.std, seed=cfg.seed)
        n_img = len(photos.samples)
        # each visit of a sample becomes a distinct index, so its augmentation differs per visit but not per run
        order = [p * n_img + i for p, i in enumerate(batch_order(photos.labels, cfg, n))]
        summary = {"trainset": cfg.trainset, "format": cfg.trainset_format, "images": n_img, "classes": len(photos.classes),
                   "dropped_small_classes": photos.dropped}
        return TrainData(ds, order, len(photos.classes), None, summary, [])
    marks, names, held = load_training_marks(cfg)
    _check_classes(len(marks), cfg, cfg.gallery)
    ccfg = CompositeConfig(size=cfg.input_size, p_clean=cfg.p_clean, p_background=cfg.p_background, scale=tuple(cfg.scale), strength=cfg.strength,
                           loose_boxes=cfg.loose_boxes, p_recolour=cfg.p_recolour, p_negative=cfg.p_negative, p_photo=cfg.p_photo,
                           p_fill=cfg.p_fill, p_cut=cfg.p_cut, p_multi=cfg.p_multi,
                           mean=tuple(card.mean), std=tuple(card.std))
    ds = CompositeDataset(marks, n, ccfg, seed=cfg.seed, backgrounds=cfg.backgrounds, background_class=cfg.background_class)
    _warm_backgrounds(ds, cfg.seed)
    summary = {"marks": len(names), "classes": ds.num_classes, "gallery": cfg.gallery,
               "brands": len({n.split("/", 1)[0] for n in names}), "sources": _sources(names), "backgrounds": cfg.backgrounds,
               "exclude_brands": cfg.exclude_brands}
    background = len(marks) if cfg.background_class else None
    return TrainData(ds, batch_order(ds.labels, cfg, n, background), ds.num_classes, background, summary, held)


def _sources(names: list[str]) -> dict[str, int]:
    """Training brands per source, by brand-id prefix (emoji-, flag-, wordmark folders keep their brand's id)."""
    out: dict[str, int] = {}
    for brand in sorted({n.split("/", 1)[0] for n in names}):
        kind = brand.split("-", 1)[0] if brand.startswith(("emoji-", "flag-")) else "brand"
        out[kind] = out.get(kind, 0) + 1
    return out


def freeze_stages(backbone: torch.nn.Module, n: int) -> list[torch.nn.Module]:
    """Fix the stem and the first ``n`` stages of a timm CNN; returns the frozen modules (kept in eval mode)."""
    if n <= 0:
        return []
    if hasattr(backbone, "blocks"):  # EfficientNet, MobileNet
        stem, stages = [backbone.conv_stem, backbone.bn1], list(backbone.blocks)
    elif hasattr(backbone, "layer1"):  # ResNet
        stem, stages = [m for m in (getattr(backbone, k, None) for k in ("conv1", "bn1")) if m is not None], [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    elif hasattr(backbone, "stages"):  # ConvNeXt, RegNet
        stem, stages = [backbone.stem], list(backbone.stages)
    else:
        raise MarkguardError(f"freeze_stages: backbone {type(backbone).__name__} has no stem/stages this knows; use freeze_stages=0")
    if n > len(stages):
        raise MarkguardError(f"freeze_stages={n} but the backbone has {len(stages)} stages")
    frozen = stem + stages[:n]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def _check_classes(n_classes: int, cfg: TrainConfig, source) -> None:
    if cfg.sampler == "m_per_class" and n_classes * cfg.m_per_class < cfg.batch_size:
        raise MarkguardError(f"{source}: {n_classes} classes x m_per_class={cfg.m_per_class} cannot fill batch_size={cfg.batch_size}; "
                             f"lower batch_size to at most {n_classes * cfg.m_per_class} (batch_size={n_classes * cfg.m_per_class} "
                             f"as a KEY=VALUE override) or add classes")


def _rng_state() -> dict:
    return {"torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(_np_state()), "python_rng": json.dumps(_py_state())}


def _np_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "numpy_rng" in state:
        name, keys, pos, has_gauss, gauss = json.loads(state["numpy_rng"])
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python_rng" in state:
        version, internal, gauss = json.loads(state["python_rng"])
        random.setstate((version, tuple(internal), gauss))


def _save_state(run: Path, step: int, model, loss_fn, opt, sched, ema, cfg: TrainConfig, card: ModelCard, world: int, data: dict) -> None:
    last = run / LAST
    save_checkpoint(model, card, last)
    save_file({k: v.detach().cpu().contiguous() for k, v in loss_fn.state_dict().items()}, str(last / LOSS_WEIGHTS))
    # plain tensors, numbers and strings only: resume loads it with weights_only=True
    state = {"step": step, "world_size": world, "data": json.dumps(data, sort_keys=True), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str), **_rng_state()}
    if ema is not None:
        state["ema"] = ema.shadow
    tmp = last / (STATE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(last / STATE)


# settings a resume may change: how long, how often to log, and where it runs
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "workers", "device", "calibrate", "calib_listings", "tensorboard", "compile")


def _resume_config_key(cfg: TrainConfig) -> dict:
    """The settings a resume must share with the run it continues."""
    d = dataclasses.asdict(cfg)
    for k in RESUMABLE_CHANGES:
        d.pop(k)
    return d


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, stop_at: int | None = None,
          max_seconds: float | None = None, log=None) -> ModelCard:
    """Train, checkpointing into ``out_dir/last``; write the final checkpoint, config and metrics to ``out_dir``.

    ``stop_at`` (a step) or ``max_seconds`` end this session early with a resumable checkpoint, so a long
    schedule can run over many sessions and still equal one straight run. Under torchrun each rank
    takes whole batches of the shared order (the global batch is ``batch_size`` x ranks); rank 0 writes.
    """
    cfg.validate()
    run = Path(out_dir)
    if not resume and (run / LAST / STATE).exists():
        raise MarkguardError(f"{run}: holds a training run already; pass --resume to continue it or choose another --out")
    dist = ddp.setup(resolve_device(cfg.device, option="device="))
    try:
        return _train(cfg, run, dist, resume=resume, stop_at=stop_at, max_seconds=max_seconds,
                      log=(log or _log) if dist.main else (lambda s: None))
    finally:
        ddp.teardown(dist)


def cpu_threads(cfg: TrainConfig) -> int:
    """Torch threads for CPU training: ``cfg.threads`` when set, else what the process already has.

    On an idle 2-core machine two threads beside one loader worker ran the demo recipe at 74
    samples/s against 57 for one; when another job holds a core, OpenMP waits on the straggling
    thread at every op and one thread ran the step several times faster (benchmarks/results/train.md):
    set ``threads=1`` on a shared machine.
    """
    return cfg.threads if cfg.threads > 0 else torch.get_num_threads()


def _train(cfg: TrainConfig, run: Path, dist, *, resume: bool, stop_at: int | None, max_seconds: float | None, log) -> ModelCard:
    device = dist.device
    if device == "cpu":
        torch.set_num_threads(cpu_threads(cfg))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum  # samples a rank consumes a step
    init = None
    if cfg.init:
        init = resolve_init(cfg.init)
    card = card_from_config(cfg, init)
    data = build_data(cfg, cfg.steps * per_step * dist.world, card)
    card.training = {**data.summary, "holdout_brands": data.held, "loss": cfg.loss, "steps": cfg.steps,
                     "batch_size": cfg.batch_size * dist.world, "input_size": cfg.input_size,
                     "init": cfg.init, "freeze_stages": cfg.freeze_stages}
    model = create_model(card, pretrained=cfg.pretrained, weights=cfg.weights)
    if init is not None:
        load_into(model.backbone, init)
        load_heads(model, init)
    frozen = freeze_stages(model.backbone, cfg.freeze_stages)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        compile_backbone(model, cfg.compile)
    loss_fn = MetricLoss(cfg.loss, data.num_classes, cfg.dim, **cfg.loss_kwargs).to(device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    if list(loss_fn.parameters()):
        groups.append({"params": loss_fn.parameters(), "lr": cfg.loss_lr, "weight_decay": 0.0})
    opt = (torch.optim.AdamW(groups, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [_lr_lambda(cfg)] * len(groups))
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None

    step, rng_state = 0, None
    if resume:
        step, rng_state = _load_state(run, cfg, model, loss_fn, opt, sched, ema, dist.world, data.summary)
        log(f"train: resuming {run} at step {step}/{cfg.steps}")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml", {"versions": versions(), "device": device, "world_size": dist.world})

    step_fn = TrainStep(model, loss_fn, cfg, data.background_label)
    step_fn.device = device
    wrapped = ddp.wrap(step_fn, dist)
    mine = ddp.shard_batches(data.order[step * per_step * dist.world :], cfg.batch_size, dist)
    loader = torch.utils.data.DataLoader(data.dataset, batch_size=cfg.batch_size, sampler=mine, num_workers=cfg.workers,
                                         drop_last=True, persistent_workers=False, pin_memory=device.startswith("cuda"),
                                         prefetch_factor=4 if cfg.workers else None)
    batches = iter(loader)  # draws the loader's base seed from torch's RNG: restore the saved state after it
    if rng_state is not None:
        _set_rng_state(rng_state)
    metrics = MetricsLog(run, append=resume, tensorboard=cfg.tensorboard) if dist.main else None
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    params = [p for p in model.parameters() if p.requires_grad] + list(loss_fn.parameters())
    model.train()
    for m in frozen:  # fixed stages keep their pretrained batch-norm statistics too
        m.eval()
    t0 = time.perf_counter()
    t_log, seen, running, micro = t0, 0, [], 0
    try:
        for x, boxes, y in batches:
            if step >= end:
                break
            x = x.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boxes, y = boxes.to(device), y.to(device)
            micro += 1
            sync = micro % cfg.grad_accum == 0
            # DDP all-reduces gradients on backward; between accumulation steps that is wasted traffic
            with (wrapped.no_sync() if dist.active and not sync else contextlib.nullcontext()):
                loss = wrapped(x, boxes, y) / cfg.grad_accum
                loss.backward()
            running.append(float(loss.detach()) * cfg.grad_accum)
            seen += len(x) * dist.world
            if not sync:
                continue
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                rate = seen / max(1e-9, now - t_log)
                eta = (end - step) * per_step * dist.world / max(rate, 1e-9)
                mean_loss = sum(running) / len(running)
                if metrics is not None:
                    metrics.write(step, mean_loss, sched.get_last_lr()[0], rate, now - t0)
                log(f"train: step {step}/{cfg.steps} loss {mean_loss:.4f} {rate:.0f} samples/s ETA {eta:.0f}s")
                t_log, seen, running = now, 0, []
            if dist.main and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_state(run, step, model, loss_fn, opt, sched, ema, cfg, card, dist.world, data.summary)
            if step >= end:
                break
            if max_seconds is not None and ddp.any_rank(time.perf_counter() - t0 >= max_seconds, dist):
                log(f"train: time budget of {max_seconds:.0f}s spent at step {step}; continue with --resume")
                break
    finally:
        if metrics is not None:
            metrics.close()
    if not dist.main:
        return card
    _save_state(run, step, model, loss_fn, opt, sched, ema, cfg, card, dist.world, data.summary)
    final = ema.copy_to(model) if ema is not None else model
    final = final.eval().to(memory_format=torch.contiguous_format)
    if step < cfg.steps:  # a session of a longer run: resumable, usable, not yet calibrated
        card.training["stopped_at"] = step
        return save_checkpoint(final, card, run)
    card = save_checkpoint(final, card, run)
    if cfg.calibrate and cfg.gallery:
        card.thresholds = calibrate_synthetic(final, card, cfg, device=device, log=log)
        card.metrics.update(card.thresholds.pop("metrics", {}))
        card = save_checkpoint(final, card, run)
    atomic_write_text(run / "metrics.json", json.dumps({"steps": step, "thresholds": card.thresholds, **card.metrics}, indent=2))
    return card


def _load_state(run: Path, cfg: TrainConfig, model, loss_fn, opt, sched, ema, world: int, data: dict) -> tuple[int, dict]:
    last = run / LAST
    if not (last / STATE).exists():
        raise MarkguardError(f"{run}: no checkpoint to resume from ({last / STATE} missing); start without --resume")
    state = torch.load(last / STATE, map_location="cpu", weights_only=True)
    previous = json.loads(state["config"])
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(previous) - fields)
    if unknown:
        raise MarkguardError(f"{run}: the checkpoint's recipe has keys this markguard does not know ({', '.join(unknown)}); resume with the version that wrote it")
    prev_cfg = dataclasses.replace(cfg, **{k: (tuple(v) if isinstance(getattr(cfg, k), tuple) else v) for k, v in previous.items()})
    if _resume_config_key(prev_cfg) != _resume_config_key(cfg):
        diff = sorted(k for k, v in _resume_config_key(cfg).items() if _resume_config_key(prev_cfg)[k] != v)
        shown = ", ".join(f"{k}: {_resume_config_key(prev_cfg)[k]!r} -> {_resume_config_key(cfg)[k]!r}" for k in diff)
        raise MarkguardError(f"{run}: the checkpoint was trained with a different recipe ({shown}); resume with the same settings or start a new --out")
    if int(state.get("world_size", 1)) != world:
        raise MarkguardError(f"{run}: the checkpoint was written by {state.get('world_size', 1)} process(es), this run has {world}; "
                             "resume with the same --nproc_per_node (the batch order is split per process)")
    before = json.loads(state.get("data", "null") or "null")
    if before is not None and before != json.loads(json.dumps(data)):
        changed = ", ".join(f"{k}: {before.get(k)!r} -> {data.get(k)!r}" for k in sorted(set(before) | set(data)) if before.get(k) != data.get(k))
        raise MarkguardError(f"{run}: the training data changed since the checkpoint ({changed}); the sample order would differ — restore the data or start a new --out")
    model.load_state_dict(load_file(last / "model.safetensors"))
    loss_fn.load_state_dict(load_file(last / LOSS_WEIGHTS))
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and "ema" in state:
        ema.shadow = state["ema"]
    return int(state["step"]), state
