"""`markguard train`: train an embedding model from a recipe."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an embedding model (recipe YAML + key=value overrides)",
                       description="Train with a recipe (train/recipes/*.yaml); settings: defaults < recipe < key=value overrides.")
    p.add_argument("--recipe", "-r", help="a YAML recipe, or the name of a shipped one (logo, product, demo)")
    p.add_argument("--out", "-o", required=True, help="run folder: checkpoint, model card, config.yaml, metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. gallery=data/gallery steps=2000 backbone=resnet18")
    p.set_defaults(func=run)


def resolve_recipe(recipe: str | None):
    from pathlib import Path

    if recipe is None or Path(recipe).exists() or recipe.endswith((".yaml", ".yml")):
        return recipe
    import markguard.train as train_pkg

    return str(Path(train_pkg.__file__).parent / "recipes" / f"{recipe}.yaml")


def run(args) -> int:
    from markguard.config import load_layered
    from markguard.train.config import TrainConfig
    from markguard.train.loop import train

    cfg = load_layered(TrainConfig, resolve_recipe(args.recipe), args.overrides)
    card = train(cfg, args.out, resume=args.resume)
    print(f"model: {args.out} (fingerprint {card.fingerprint})")
    print(f"thresholds: flag {card.thresholds.get('flag')}, review {card.thresholds.get('review')}")
    return 0
