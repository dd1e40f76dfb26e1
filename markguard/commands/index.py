"""`markguard index build|add|remove|info`: the brand index."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, grow, shrink or inspect a brand index")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = isub.add_parser("build", help="embed a gallery and write a FAISS index with its metadata")
    b.add_argument("gallery", help="gallery folder (one folder per brand, optional brands.yaml)")
    b.add_argument("--out", "-o", required=True, help="index folder to write")
    b.add_argument("--model", "-m", help="checkpoint folder (default: the shipped model)")
    b.add_argument("--kind", default="auto", help="flat | hnsw | hnsw_sq8 | ivfpq | auto (by size and memory budget; "
                   "give --memory-budget-mb for a large registry)")
    b.add_argument("--memory-budget-mb", type=float, help="memory the index may use")
    b.add_argument("--recall", type=float, default=0.95, help="recall@10 target against exact search when tuning (default 0.95)")
    b.add_argument("--bank", type=int, default=0, metavar="N", help="embed N mark-free background pictures and score matches "
                   "normalised against them, so no reference is the best match of every photo (default 0: raw similarity)")
    b.add_argument("--bank-photos", metavar="DIR", help="a folder of photographs that show none of the references (for a product "
                   "index: other photos), added to the bank")
    b.add_argument("--device", default="auto")
    b.add_argument("--no-verify-cache", dest="warm_verify", action="store_false",
                   help="do not detect and cache the references' keypoints for verification now (the first scan then does it)")
    b.set_defaults(func=run_build)

    a = isub.add_parser("add", help="add a gallery's new brands and marks without a rebuild")
    a.add_argument("index", help="index folder")
    a.add_argument("gallery", help="gallery folder with the marks to add")
    a.add_argument("--model", "-m", help="checkpoint folder (default: the one the index was built with)")
    a.add_argument("--device", default="auto")
    a.add_argument("--no-verify-cache", dest="warm_verify", action="store_false",
                   help="do not detect and cache the references' keypoints for verification now (the first scan then does it)")
    a.set_defaults(func=run_add)

    r = isub.add_parser("remove", help="remove a brand, or one mark, without a rebuild")
    r.add_argument("index", help="index folder")
    r.add_argument("--brand", help="brand id to remove (`markguard index ls IDX` lists them)")
    r.add_argument("--mark", help="mark id to remove (with --brand: only that brand's)")
    r.set_defaults(func=run_remove)

    i = isub.add_parser("info", help="print what an index holds and how it searches")
    i.add_argument("index", help="index folder")
    i.set_defaults(func=run_info)

    ls = isub.add_parser("ls", help="list the brands and marks an index holds")
    ls.add_argument("index", help="index folder")
    ls.add_argument("--brand", help="only this brand's marks")
    ls.set_defaults(func=run_ls)


def run_build(args) -> int:
    import math

    from markguard.errors import MarkguardError
    from markguard.infer.build import build_index

    if args.bank < 0:
        raise MarkguardError(f"--bank {args.bank}: give a number of background pictures, 0 or more (256 is a good start)")
    if args.memory_budget_mb is not None and not (math.isfinite(args.memory_budget_mb) and args.memory_budget_mb > 0):
        raise MarkguardError(f"--memory-budget-mb {args.memory_budget_mb} must be a positive number of megabytes")
    if not (math.isfinite(args.recall) and 0 < args.recall <= 1):
        raise MarkguardError(f"--recall {args.recall} must lie in (0, 1]")

    bank_photos = None
    if getattr(args, "bank_photos", None):
        from markguard.train.copydetect import list_photos

        bank_photos = [str(p.resolve()) for p in list_photos([args.bank_photos])]
        if not bank_photos:
            raise MarkguardError(f"--bank-photos {args.bank_photos}: no photographs (.jpg, .png, .webp) in it")
    info = build_index(args.gallery, args.out, model=args.model, kind=args.kind, device=args.device,
                       memory_budget_mb=args.memory_budget_mb, recall_target=args.recall, bank=args.bank, check=True,
                       bank_photos=bank_photos, warm_verify=args.warm_verify)
    print(json.dumps(info, indent=2, default=str))
    return 0


def run_add(args) -> int:
    from markguard.infer.build import add_to_index

    print(json.dumps(add_to_index(args.index, args.gallery, model=args.model, device=args.device, check=True,
                                   warm_verify=args.warm_verify), indent=2))
    return 0


def run_remove(args) -> int:
    from markguard.infer.build import remove_from_index

    print(json.dumps(remove_from_index(args.index, brand=args.brand, mark=args.mark), indent=2))
    return 0


def run_info(args) -> int:
    from markguard.infer.build import read_index_meta
    from markguard.infer.feedback import feedback_info
    from markguard.infer.index import MarkIndex

    index = MarkIndex.load(args.index)
    info = index.info()
    meta = read_index_meta(args.index)
    info["model"] = meta.get("model") or "(shipped default)"
    info["galleries"] = meta.get("galleries", [])
    info["feedback"] = feedback_info(index.meta)  # the reviewers' rounds (markguard feedback)
    print(json.dumps(info, indent=2, default=str))
    return 0


def run_ls(args) -> int:
    """One line a brand: ``brand<TAB>mark, mark, ...`` (sorted); with --brand, one line a mark with its id and source."""
    from markguard.errors import MarkguardError
    from markguard.infer.index import MarkIndex

    index = MarkIndex.load(args.index)
    by_brand: dict[str, list] = {}
    for r in index.records():
        by_brand.setdefault(r.brand, []).append(r)
    if args.brand is not None and args.brand not in by_brand:
        from markguard.fsio import excerpt
        from markguard.infer.build import what_exists

        raise MarkguardError(f"{args.index}: no brand {excerpt(args.brand)}; {what_exists(index, None)}")
    if args.brand is None:  # `index ls IDX | head` closing the pipe is the CLI's to answer (markguard/cli.py)
        for brand in sorted(by_brand):
            print(f"{brand}\t{', '.join(sorted({r.mark for r in by_brand[brand]}))}")
    else:
        for r in sorted(by_brand[args.brand], key=lambda r: (r.mark, r.id)):
            print(f"{r.mark}\t{r.id}\t{r.source}")
    return 0
