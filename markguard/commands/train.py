"""`markguard train`: train an embedding model from a recipe."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an embedding model (recipe YAML + key=value overrides)",
                       description="Train with a recipe (train/recipes/*.yaml); settings: defaults < recipe < key=value overrides. "
                                   "Several processes: torchrun --nproc_per_node N -m markguard.cli train ...")
    p.add_argument("--recipe", "-r", help="a YAML recipe, or the name of a shipped one (logo, product, copydetect, demo)")
    p.add_argument("--out", "-o", required=True, help="run folder: checkpoint, model card, config.yaml, metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="end this session at STEP with a resumable checkpoint")
    p.add_argument("--max-minutes", type=float, help="end this session after this long with a resumable checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. gallery=data/gallery steps=2000 backbone=resnet18")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.config import load_layered
    from markguard.train.config import TrainConfig, resolve_recipe
    from markguard.train.loop import train

    import os

    from markguard.errors import MarkguardError

    if args.stop_at is not None and args.stop_at < 1 or args.max_minutes is not None and args.max_minutes <= 0:
        raise MarkguardError("--stop-at and --max-minutes must be positive")
    recipe = resolve_recipe(args.recipe)
    from markguard.train.copydetect import is_copydetect, run_copydetect

    if is_copydetect(recipe, args.overrides):  # task: copydetect — self-supervised copy detection (train/copydetect.py)
        return run_copydetect(recipe, args)
    cfg = load_layered(TrainConfig, recipe, args.overrides)
    card = train(cfg, args.out, resume=args.resume, stop_at=args.stop_at,
                 max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 wrote the model
        return 0
    stopped = card.training.get("stopped_at")
    if stopped is not None:
        print(f"stopped at step {stopped}/{cfg.steps}; continue with: markguard train --resume --out {args.out} (same recipe)")
    print(f"model: {args.out} (fingerprint {card.fingerprint})")
    print(f"thresholds: flag {card.thresholds.get('flag')}, review {card.thresholds.get('review')}")
    return 0
