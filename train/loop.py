"""The training loop: composites → model → region-pooled embeddings → metric loss; checkpoints that resume exactly."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from markguard.checkpoint import ModelCard, atomic_write_text, create_model, save_checkpoint
from markguard.config import save_config, versions
from markguard.datasets.composite import CompositeConfig, CompositeDataset
from markguard.datasets.decode import load_mark
from markguard.datasets.registry import load_gallery
from markguard.errors import DecodeError, MarkguardError
from markguard.infer.embed import autocast
from markguard.train.config import TrainConfig
from markguard.train.losses import MetricLoss

LAST = "last"  # the resumable checkpoint inside a run folder
STATE = "trainer_state.pt"
LOSS_WEIGHTS = "loss.safetensors"


def card_from_config(cfg: TrainConfig) -> ModelCard:
    return ModelCard(backbone=cfg.backbone, dim=cfg.dim, pooling=cfg.pooling, output_stride=cfg.output_stride,
                     roi_size=cfg.roi_size, input_size=cfg.input_size, scan_size=cfg.scan_size, proposals=dict(cfg.proposals))


def split_brands(gallery, holdout: int) -> tuple[list, list[str]]:
    """Training marks and the held-out brands (the last ``holdout`` brand ids in sorted order)."""
    brand_ids = sorted(b for b, br in gallery.brands.items() if br.marks)
    if holdout >= len(brand_ids):
        raise MarkguardError(f"holdout_brands={holdout} leaves no brand to train on ({len(brand_ids)} brands with marks)")
    held = brand_ids[len(brand_ids) - holdout :] if holdout else []
    return [m for m in gallery.marks if m.brand not in held], held


def load_training_marks(cfg: TrainConfig):
    if cfg.gallery is None:
        raise MarkguardError("no training data: set gallery=PATH (a gallery folder of marks) in the recipe or on the command line")
    gallery = load_gallery(cfg.gallery)
    refs, held = split_brands(gallery, cfg.holdout_brands)
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


def resolve_train_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MarkguardError("device=cuda but no CUDA GPU is visible; use device=cpu")
    return device


def batch_order(labels: list[int], cfg: TrainConfig) -> list[int]:
    """The whole run's sample order, fixed by the seed, so a resume continues the same sequence."""
    n = cfg.steps * cfg.batch_size * cfg.grad_accum
    if cfg.sampler == "random":
        return np.random.default_rng(cfg.seed).permutation(len(labels))[:n].tolist()
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
        import copy

        m = copy.deepcopy(model)
        m.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return m


def _save_state(run: Path, step: int, model, loss_fn, opt, sched, ema, cfg: TrainConfig, card: ModelCard) -> None:
    last = run / LAST
    save_checkpoint(model, card, last)
    save_file({k: v.detach().cpu().contiguous() for k, v in loss_fn.state_dict().items()}, str(last / LOSS_WEIGHTS))
    state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "torch_rng": torch.get_rng_state(), "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)}
    if ema is not None:
        state["ema"] = ema.shadow
    tmp = last / (STATE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(last / STATE)


def _resume_config_key(cfg: TrainConfig) -> dict:
    """The settings a resume must share with the run it continues (others, like steps, may change)."""
    d = dataclasses.asdict(cfg)
    for k in ("steps", "log_every", "checkpoint_every", "workers", "device", "calibrate", "calib_listings"):
        d.pop(k)
    return d


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, log=None) -> ModelCard:
    """Train, checkpointing into ``out_dir/last``; write the final checkpoint, config and metrics to ``out_dir``."""
    cfg.validate()
    log = log or (lambda s: (sys.stderr.write(s + "\n"), sys.stderr.flush()))
    run = Path(out_dir)
    if not resume and (run / LAST / STATE).exists():
        raise MarkguardError(f"{run}: holds a training run already; pass --resume to continue it or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    device = resolve_train_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    marks, names, held = load_training_marks(cfg)
    ccfg = CompositeConfig(size=cfg.input_size, p_clean=cfg.p_clean, p_background=cfg.p_background, scale=tuple(cfg.scale), strength=cfg.strength)
    total = cfg.steps * cfg.batch_size * cfg.grad_accum
    ds = CompositeDataset(marks, total, ccfg, seed=cfg.seed, backgrounds=cfg.backgrounds, background_class=cfg.background_class)
    order = batch_order(ds.labels, cfg)

    card = card_from_config(cfg)
    card.training = {"marks": len(names), "classes": ds.num_classes, "holdout_brands": held, "gallery": cfg.gallery,
                     "loss": cfg.loss, "steps": cfg.steps, "batch_size": cfg.batch_size, "input_size": cfg.input_size}
    model = create_model(card, pretrained=cfg.pretrained, weights=cfg.weights).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = MetricLoss(cfg.loss, ds.num_classes, cfg.dim, **cfg.loss_kwargs).to(device)
    groups = [{"params": model.parameters(), "lr": cfg.lr}]
    if list(loss_fn.parameters()):
        groups.append({"params": loss_fn.parameters(), "lr": cfg.loss_lr, "weight_decay": 0.0})
    opt = (torch.optim.AdamW(groups, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [_lr_lambda(cfg)] * len(groups))
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None

    step = 0
    if resume:
        step = _load_state(run, cfg, model, loss_fn, opt, sched, ema, device)
        log(f"train: resuming {run} at step {step}/{cfg.steps}")
    save_config(cfg, run / "config.yaml", {"versions": versions(), "device": device})

    sampler = order[step * cfg.batch_size * cfg.grad_accum :]
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                         drop_last=True, persistent_workers=False, pin_memory=device == "cuda",
                                         prefetch_factor=4 if cfg.workers else None)
    metrics_path = run / "metrics.csv"
    new_file = not metrics_path.exists() or not resume
    mf = open(metrics_path, "w" if new_file else "a", newline="")
    writer = csv.writer(mf)
    if new_file:
        writer.writerow(["step", "loss", "lr", "samples_per_s", "elapsed_s"])
    model.train()
    t0 = time.perf_counter()
    t_log, seen, running = t0, 0, []
    micro = 0
    try:
        for x, boxes, y in loader:
            if step >= cfg.steps:
                break
            x = x.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boxes, y = boxes.to(device), y.to(device)
            with autocast(device, "bf16" if cfg.precision == "bf16" else ("fp32" if cfg.precision == "fp32" else "auto")):
                fmap = model.forward_features(x)
            emb = model.embed_regions(fmap, list(boxes.unsqueeze(1)), cfg.input_size)
            loss = loss_fn(emb, y)
            if model.proposal_head is not None:
                has_mark = y != len(marks) if cfg.background_class else torch.ones_like(y, dtype=torch.bool)
                loss = loss + cfg.proposal_weight * model.proposal_loss(fmap, boxes, has_mark, cfg.input_size)
            loss = loss / cfg.grad_accum
            loss.backward()
            running.append(float(loss.detach()) * cfg.grad_accum)
            seen += len(x)
            micro += 1
            if micro % cfg.grad_accum:
                continue
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(loss_fn.parameters()), cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = seen / max(1e-9, now - t_log)
                eta = (cfg.steps - step) * cfg.batch_size * cfg.grad_accum / max(rate, 1e-9)
                mean_loss = sum(running) / len(running)
                writer.writerow([step, f"{mean_loss:.5f}", f"{sched.get_last_lr()[0]:.3g}", f"{rate:.1f}", f"{now - t0:.1f}"])
                mf.flush()
                log(f"train: step {step}/{cfg.steps} loss {mean_loss:.4f} {rate:.0f} samples/s ETA {eta:.0f}s")
                t_log, seen, running = now, 0, []
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_state(run, step, model, loss_fn, opt, sched, ema, cfg, card)
    finally:
        mf.close()
    _save_state(run, step, model, loss_fn, opt, sched, ema, cfg, card)
    final = ema.copy_to(model) if ema is not None else model
    final = final.eval().to(memory_format=torch.contiguous_format)
    card = save_checkpoint(final, card, run)
    if cfg.calibrate:
        from markguard.train.calibrate import calibrate_synthetic

        card.thresholds = calibrate_synthetic(final, card, cfg, device=device, log=log)
        card.metrics.update(card.thresholds.pop("metrics", {}))
        card = save_checkpoint(final, card, run)
    atomic_write_text(run / "metrics.json", json.dumps({"steps": step, "thresholds": card.thresholds, **card.metrics}, indent=2))
    return card


def _load_state(run: Path, cfg: TrainConfig, model, loss_fn, opt, sched, ema, device: str) -> int:
    last = run / LAST
    if not (last / STATE).exists():
        raise MarkguardError(f"{run}: no checkpoint to resume from ({last / STATE} missing); start without --resume")
    state = torch.load(last / STATE, map_location="cpu", weights_only=True)
    previous = json.loads(state["config"])
    prev_cfg = dataclasses.replace(cfg, **{k: (tuple(v) if isinstance(getattr(cfg, k), tuple) else v) for k, v in previous.items()})
    if _resume_config_key(prev_cfg) != _resume_config_key(cfg):
        diff = sorted(k for k, v in _resume_config_key(cfg).items() if _resume_config_key(prev_cfg)[k] != v)
        raise MarkguardError(f"{run}: the checkpoint was trained with a different recipe (differs in {', '.join(diff)}); resume with the same settings or start a new --out")
    model.load_state_dict(load_file(last / "model.safetensors"))
    loss_fn.load_state_dict(load_file(last / LOSS_WEIGHTS))
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if ema is not None and "ema" in state:
        ema.shadow = state["ema"]
    return int(state["step"])
