"""`markguard scan`: flag listing photos that show protected marks."""

from __future__ import annotations

import argparse
import json

from markguard.errors import MarkguardError, check_out_folder, check_ray_address


def check_compile_backend(name: str) -> None:
    import torch

    if name not in torch.compiler.list_backends(exclude_tags=()):
        raise MarkguardError(f"--compile {name!r}: not a torch.compile backend; choose one of {', '.join(torch.compiler.list_backends())}")


def register(sub: argparse._SubParsersAction) -> None:
    # the choices come from the registries: a new region method, backend or optional signal shows up here by itself
    from markguard.infer.backends import BACKENDS
    from markguard.infer.evidence import SIGNALS
    from markguard.infer.regions import RegionMode

    p = sub.add_parser("scan", help="scan a listing dump against one or more brand indexes",
                       description="Writes OUT/results.jsonl (one row per photo, input order) and OUT/summary.json.")
    p.add_argument("input", help="a folder of images, a manifest (.csv/.jsonl/.parquet) or tar shards")
    p.add_argument("--index", "-i", action="append", required=True, help="index folder; repeat to search several in one pass")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the model each index was built with)")
    p.add_argument("--regions", choices=[m.label for m in RegionMode],
                   help="where to look in a photo: the whole photo, a pooled grid, the model's proposals (alone or with a coarse grid), "
                        "or cropped tiles (the slow baseline); default: the model card's")
    p.add_argument("--looks", type=int, metavar="N",
                   help="second looks a photo: its N best proposals cropped from the photo at its own resolution and embedded "
                        "again (finds small marks); 0: none; default: the model card's regions.looks.per_photo")
    p.add_argument("--looks-per-batch", type=int, metavar="N", help="at most N second looks a batch (bounds its cost); default: the card's")
    p.add_argument("--ocr", action=argparse.BooleanOptionalAction, default=False,
                   help="read each photo's text where its text detector finds it and match it to the brands' names and aliases; "
                        "each match carries the evidence (needs markguard[ocr]; off by default: its cost, benchmarks/results/evidence.md)")
    p.add_argument("--ocr-budget", type=int, default=2, metavar="LINES",
                   help="with --ocr: text lines read in each photo, where its text detector finds text (default 2)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="re-score the candidates near or above the review threshold with a keypoint + RANSAC check on the photo at its "
                        "own resolution and tighten their boxes (needs markguard[verify]); default: on when OpenCV is installed")
    p.add_argument("--verify-from", type=float, metavar="VALUE",
                   help="verify the candidates scoring at least VALUE (a similarity, or with a combiner a probability); "
                        "default: those at most 0.05 below the review threshold")
    p.add_argument("--backend", choices=list(BACKENDS), default="auto",
                   help="what runs the backbone: auto (default: ONNX Runtime fp32 on a CPU, exported once per model into "
                        "~/.cache/markguard or $MARKGUARD_CACHE; PyTorch on a GPU), torch, or a file `markguard export` wrote beside the weights")
    optional = [name for name, sig in SIGNALS.items() if sig.opt_in]
    p.add_argument("--signal", action="append", choices=optional or None, metavar="NAME", default=[],
                   help="collect an optional evidence signal by name" + (f" ({', '.join(optional)})" if optional else " (none is installed)"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--decode", choices=["auto", "cpu", "device"], default="auto",
                   help="where JPEGs are decoded: cpu (Pillow in the decoding processes), device (batched on the model's device, "
                        "nvJPEG on a GPU), auto (device on a GPU, else cpu)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="compile the backbone with torch.compile (default backend: inductor); pays off on long GPU scans")
    p.add_argument("--flag-threshold", type=float, help="override the calibrated flag threshold (with a combiner: a probability)")
    p.add_argument("--review-threshold", type=float, help="override the calibrated review threshold (with a combiner: a probability)")
    p.add_argument("--combiner", default="auto", metavar="PATH",
                   help="the evidence combiner (`markguard calibrate --combiner`) whose probability the thresholds apply to "
                        "(default: the first index's combiner.json, when it has one)")
    p.add_argument("--no-combiner", dest="combiner", action="store_const", const=None,
                   help="thresholds on the similarity, even where the index has a combiner.json")
    p.add_argument("--keep-embeddings", nargs="?", const="fp16", choices=["fp16", "pq"], metavar="fp16|pq",
                   help="store each photo's searched region embeddings in OUT/embeddings/ (fp16, or product-quantised: about 32 "
                        "bytes a region) so `markguard rematch` can search them against brands added later")
    p.add_argument("--flood-share", type=float, default=0.02, metavar="SHARE",
                   help="flood guard: a reference's flags past this share of the photos scanned so far are held as review "
                        "(default 0.02; 0 turns the guard off)")
    p.add_argument("--flood-min", type=int, default=20, metavar="N", help="flood guard: never hold a reference's first N flags (default 20)")
    p.add_argument("--flood-history", action="append", default=[], metavar="OUT",
                   help="flood guard: earlier scans' output folders; a reference is held past 5x its usual flags per photo there")
    p.add_argument("--shard", help="i/N: scan only every N-th photo starting at i")
    p.add_argument("--resume", action="store_true", help="continue an interrupted scan in OUT")
    p.add_argument("--format", action="append", choices=["jsonl", "parquet"],
                   help="extra output formats; results.jsonl is always written (parquet: OUT/results.parquet, needs pyarrow)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local processes, or Ray Data (needs markguard[ray])")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--actors", type=int, help="Ray: model-holding actors (default: one per GPU, or per 2 CPUs)")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines when not on a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.datasets.listings import parse_shard
    from markguard.infer.scan import ScanOptions, run_scan

    if args.batch_size < 1 or args.workers < 0 or (args.actors is not None and args.actors < 1):
        raise MarkguardError("--batch-size and --actors must be at least 1, --workers at least 0")
    if args.address and args.engine != "ray":
        raise MarkguardError("--address is for --engine ray")
    check_out_folder(args.out, "-o")
    check_ray_address(args.address)
    for name, v in (("--flag-threshold", args.flag_threshold), ("--review-threshold", args.review_threshold), ("--verify-from", args.verify_from)):
        if v is not None and not -1 <= v <= 1:  # also refuses nan and inf: a similarity lies in [-1, 1]
            raise MarkguardError(f"{name} {v} must be a similarity between -1 and 1")
    if args.compile is not None:
        check_compile_backend(args.compile)
    if args.ocr:
        import importlib.util

        from markguard.infer.ocr import OcrConfig

        OcrConfig(lines=args.ocr_budget)  # refuses a budget outside 0-64 lines before the first batch
        if importlib.util.find_spec("rapidocr_onnxruntime") is None:
            raise MarkguardError("--ocr needs RapidOCR; pip install 'markguard[ocr]' or scan without --ocr")
    import importlib.util

    if args.verify and importlib.util.find_spec("cv2") is None:  # the default (None) verifies where it can and says where not
        raise MarkguardError("--verify needs OpenCV; pip install 'markguard[verify]' or scan with --no-verify")
    opts = ScanOptions(regions=args.regions, batch_size=args.batch_size, workers=args.workers, device=args.device,
                       flag=args.flag_threshold, review=args.review_threshold, shard=None if args.shard is None else parse_shard(args.shard),
                       engine=args.engine, address=args.address, actors=args.actors, verify=args.verify, verify_from=args.verify_from, ocr=args.ocr, ocr_budget=args.ocr_budget, backend=args.backend,
                       decode=args.decode, compile=args.compile, looks=args.looks, looks_per_batch=args.looks_per_batch,
                       combiner=args.combiner, keep_embeddings=args.keep_embeddings,
                       flood_share=args.flood_share, flood_min=args.flood_min, flood_history=list(args.flood_history),
                       signals=list(dict.fromkeys(args.signal)))
    formats = tuple(dict.fromkeys(["jsonl", *(args.format or [])]))
    summary = run_scan(args.input, args.index, args.out, model=args.model, opts=opts, resume=args.resume, progress=not args.quiet,
                       formats=formats, progress_every_s=args.log_every)
    if "note" in summary:
        print(f"{args.out}: {summary['note']}")
    print(json.dumps({k: summary[k] for k in ("results", "images", "counts", "images_per_s")}, indent=2))
    return 0
