"""`markguard train`: train an embedding model from a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from markguard.errors import MarkguardError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an embedding model (recipe YAML + key=value overrides)",
                       description="Train with a recipe (train/recipes/*.yaml); settings: defaults < recipe < key=value overrides. "
                                   "Several processes: torchrun --nproc_per_node N -m markguard.cli train ...")
    p.add_argument("--recipe", "-r", help="a YAML recipe, or the name of a shipped one (logo, product, copydetect, demo)")
    p.add_argument("--out", "-o", required=True, help="run folder: checkpoint, model card, config.yaml, metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, with the settings it "
                                                         "saved in config.yaml (KEY=VALUE may change steps, logging, device)")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="end this session at STEP with a resumable checkpoint")
    p.add_argument("--max-minutes", type=float, help="end this session after this long with a resumable checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. gallery=data/gallery steps=2000 backbone=resnet18")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import sys

    from markguard.config import load_layered, parse_overrides
    from markguard.train.config import TrainConfig, resolve_recipe
    from markguard.train.loop import train

    def log(msg: str) -> None:
        if os.environ.get("RANK", "0") == "0":
            print(msg, file=sys.stderr, flush=True)

    if args.stop_at is not None and args.stop_at < 1 or args.max_minutes is not None and args.max_minutes <= 0:
        raise MarkguardError("--stop-at and --max-minutes must be positive")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MarkguardError(f"{out}: is a file; --out names the run's folder (give a new path)")
    from markguard.train.copydetect import is_copydetect, run_copydetect

    recipe = resolve_recipe(args.recipe)
    if is_copydetect(recipe, args.overrides, out if args.resume else None):  # task: copydetect (train/copydetect.py)
        return run_copydetect(recipe, args)
    if args.resume and (out / "config.yaml").is_file():
        if args.recipe:
            log(f"train: --resume takes the run's settings from {out / 'config.yaml'}; the recipe is not read again")
        cfg = saved_config(out, args.overrides)
    elif args.resume and not (out / "last").is_dir():
        raise MarkguardError(f"{out}: no training run to resume (no config.yaml or checkpoint); start it without --resume")
    else:
        cfg = load_layered(TrainConfig, resolve_recipe(args.recipe), args.overrides)
        if not args.resume:
            cfg = fit_to_gallery(cfg, set(parse_overrides(args.overrides)), log)
    card = train(cfg, args.out, resume=args.resume, stop_at=args.stop_at,
                 max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 wrote the model
        return 0
    stopped = card.training.get("stopped_at")
    if stopped is not None:
        print(f"stopped at step {stopped}/{cfg.steps}; continue with: markguard train --out {args.out} --resume")
    print(f"model: {args.out} (fingerprint {card.fingerprint})")
    print(f"thresholds: flag {card.thresholds.get('flag')}, review {card.thresholds.get('review')}")
    return 0


def saved_config(run: str | Path, overrides: list[str] | None = None):
    """The settings a run saved in ``RUN/config.yaml``, with ``key=value`` overrides a resume may change.

    An override of a setting the run's checkpoint depends on (anything but how long, how often it logs or
    checkpoints, and where it runs) is refused here, in one line, before anything loads.
    """
    import yaml

    from markguard.config import apply, parse_overrides, yaml_error
    from markguard.train.loop import RESUMABLE_CHANGES

    path = Path(run) / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MarkguardError(yaml_error(path, e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MarkguardError(f"{path}: cannot read the run's saved settings ({e}); resume with the recipe and overrides it was started with") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise MarkguardError(f"{path}: not a run's saved settings (no 'config' mapping); resume with the recipe and overrides it was started with")
    from markguard.train.config import TrainConfig

    cfg = apply(TrainConfig(), doc["config"], source=str(path))
    pairs = parse_overrides(overrides)
    resumed = apply(cfg, pairs, source="command line") if pairs else cfg
    changed = [k for k in pairs if getattr(resumed, k) != getattr(cfg, k) and k not in RESUMABLE_CHANGES]
    if changed:
        shown = ", ".join(f"{k}={getattr(cfg, k)!r} (asked {getattr(resumed, k)!r})" for k in sorted(changed))
        raise MarkguardError(f"{run} was trained with {shown}; a resume may change only {', '.join(RESUMABLE_CHANGES)} "
                             "(start a new --out to train with other settings)")
    return resumed


def fit_to_gallery(cfg, explicit: set[str], log):
    """Held-out brands and batch size scaled to a small gallery, unless given on the command line (``explicit``); each change logged.

    A recipe sized for thousands of brands (the logo recipe holds 50 out and fills batches of 64) would
    otherwise refuse a user's gallery of a few brands.
    """
    import dataclasses

    from markguard.datasets.registry import load_gallery
    from markguard.train.loop import fold_brand, read_brand_list

    if not cfg.gallery or cfg.trainset:
        return cfg
    gallery = load_gallery(cfg.gallery)
    brands = sorted(b for b, br in gallery.brands.items() if br.marks)
    changes = {}
    if cfg.exclude_brands:
        excluded = read_brand_list(cfg.exclude_brands)
        out = [b for b in brands if fold_brand(b) in excluded]
        if out and len(out) == len(brands):
            raise MarkguardError(f"{cfg.gallery}: all {len(brands)} brands are listed in exclude_brands={cfg.exclude_brands} (brands kept out "
                                 "of training for the real-photo evaluation); to train on them add exclude_brands=null")
        if out:
            log(f"train: exclude_brands={cfg.exclude_brands} leaves out {len(out)} of the gallery's {len(brands)} brands "
                f"({', '.join(out[:5])}{', ...' if len(out) > 5 else ''}); exclude_brands=null trains on them")
    if "holdout_brands" not in explicit and cfg.holdout_brands > len(brands) // 20:
        changes["holdout_brands"] = len(brands) // 20
        log(f"train: the gallery has {len(brands)} brands: holdout_brands {cfg.holdout_brands} -> {changes['holdout_brands']} "
            "(at most 1 brand in 20 is held out for the open-set check; holdout_brands=N chooses)")
    held = set(brands[len(brands) - changes.get("holdout_brands", cfg.holdout_brands):]) if changes.get("holdout_brands", cfg.holdout_brands) else set()
    excluded = read_brand_list(cfg.exclude_brands) if cfg.exclude_brands else set()
    classes = sum(1 for m in gallery.marks if m.brand not in held and fold_brand(m.brand) not in excluded)  # one class a mark
    fill = classes * cfg.m_per_class
    if "batch_size" not in explicit and cfg.sampler == "m_per_class" and 2 <= classes and fill < cfg.batch_size:
        changes["batch_size"] = fill
        log(f"train: {classes} marks x m_per_class={cfg.m_per_class} fill a batch of {fill}: batch_size {cfg.batch_size} -> {fill} "
            "(batch_size=N chooses)")
    return dataclasses.replace(cfg, **changes) if changes else cfg
