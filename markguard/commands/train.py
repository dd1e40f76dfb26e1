"""`markguard train`: train an embedding model from a recipe."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an embedding model (recipe YAML + key=value overrides)",
                       description="Train with a recipe (train/recipes/*.yaml); settings: defaults < recipe < key=value overrides. "
                                   "Several processes: torchrun --nproc_per_node N -m markguard.cli train ...")
    p.add_argument("--recipe", "-r", help="a YAML recipe, or the name of a shipped one (logo, product, demo)")
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
    from pathlib import Path

    from markguard.config import load_layered, parse_overrides
    from markguard.errors import MarkguardError
    from markguard.train.config import TrainConfig, fit_to_gallery, resolve_recipe, saved_config
    from markguard.train.loop import train

    def log(msg: str) -> None:
        if os.environ.get("RANK", "0") == "0":
            print(msg, file=sys.stderr, flush=True)

    if args.stop_at is not None and args.stop_at < 1 or args.max_minutes is not None and args.max_minutes <= 0:
        raise MarkguardError("--stop-at and --max-minutes must be positive")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MarkguardError(f"{out}: is a file; --out names the run's folder (give a new path)")
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
