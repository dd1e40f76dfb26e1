"""`markguard demo`: the whole loop on generated data, in minutes on a laptop."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth → train → index → scan → report on generated data, with precision/recall",
                       description="Runs the whole loop on a synthetic gallery and listing dump and scores the scan against the truth.")
    p.add_argument("--out", "-o", default="markguard-demo", help="output folder (default ./markguard-demo)")
    p.add_argument("--steps", type=int, help="training steps (default: the demo recipe's)")
    p.add_argument("--listings", type=int, default=200)
    p.add_argument("--brands", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides, e.g. backbone=resnet18")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.demo import run_demo

    r = run_demo(args.out, steps=args.steps, listings=args.listings, brands=args.brands, seed=args.seed, overrides=args.overrides)
    s = r["score"]
    print(f"""
markguard demo finished in {r['seconds']['total']:.0f}s
  data     {r['data']}  (gallery/, listings/, truth.jsonl)
  model    {r['model']}  (model.safetensors, model_card.json, metrics.csv)
  index    {r['index']}
  results  {r['results']}
  report   {r['report']}
  flagged {r['counts']['flag']}, review {r['counts']['review']}, allowed {r['counts']['allowed']}, pass {r['counts']['pass']}, error {r['counts']['error']}
  against the synthetic truth: precision {s['precision']:.3f}, recall {s['recall']:.3f} ({s['true_positives']}/{s['positives']} listings with a registered mark flagged), right mark {s['right_mark']:.3f}, box IoU>=0.5 {s['box_iou50']:.3f}
""".rstrip())
    return 0
