"""`markguard eval`: open-set retrieval and listing-level detection of a model on brands it never trained on."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on held-out brands: Recall@1/5, MAP@R, ROC AUC, TPR at FPR 1%% / 0.1%%",
                       description="Pastes held-out marks into synthetic listings; writes OUT/metrics.json and PNG plots.")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--gallery", "-g", help="brands to evaluate on (default: the card's training.holdout_brands)")
    p.add_argument("--out", "-o", required=True, help="folder for metrics.json and plots")
    p.add_argument("--listings", type=int, default=200, help="labelled listing photos for detection (default 200)")
    p.add_argument("--queries-per-mark", type=int, default=4)
    p.add_argument("--backgrounds", help="a folder of real photos to paste marks into (default: procedural)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--write-card", action="store_true", help="also record the metrics in the model card (metrics.heldout; with --bench, metrics.real)")
    p.add_argument("--bench", metavar="DIR", help="score on a real-photo benchmark (`markguard data realbench`) instead: per tier TPR at FPR 1%%, "
                                                  "right brand, box IoU, the hub figure; writes OUT/real.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.errors import MarkguardError
    from markguard.device import resolve_device
    from markguard.train.evaluate import EvalConfig, evaluate_model

    if args.bench:
        from markguard.train.realeval import evaluate_bench

        evaluate_bench(args.bench, args.out, model=args.model, device=resolve_device(args.device), write_card=args.write_card)
        return 0
    if args.listings < 1 or args.queries_per_mark < 1:
        raise MarkguardError("--listings and --queries-per-mark must be at least 1")
    ec = EvalConfig(queries_per_mark=args.queries_per_mark, listings=args.listings, backgrounds=args.backgrounds,
                    seed=args.seed, plots=not args.no_plots)
    evaluate_model(args.model, args.out, gallery=args.gallery, ec=ec, device=resolve_device(args.device), write_card=args.write_card)
    return 0
