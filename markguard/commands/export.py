"""`markguard export`: a checkpoint's backbone as ONNX (fp32 or int8) or TorchScript, for `scan --backend`."""

from __future__ import annotations

import argparse

FORMATS = ["onnx", "onnx-int8", "torchscript"]  # markguard.infer.backends.EXPORT_FILES (tests/train/test_export.py checks)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model's backbone to ONNX, int8 ONNX or TorchScript (checked against PyTorch)",
                       description="Writes the backbone graph with the checkpoint's fingerprint; region pooling stays in PyTorch. "
                                   "onnx-int8 is statically quantised (ONNX Runtime, QDQ, per-channel weights) with activation "
                                   "ranges measured on --calib photos, letterboxed as the scan does.")
    p.add_argument("--format", "-f", required=True, choices=FORMATS)
    p.add_argument("--model", "-m", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--out", "-o", help="file to write (default: beside the weights, where `scan --backend` looks)")
    p.add_argument("--calib", metavar="PHOTOS", help="onnx-int8: a folder, manifest or tar shards of listing-like photos to calibrate "
                                                     "on (not the photos you evaluate on)")
    p.add_argument("--calib-count", type=int, help="onnx-int8: calibration photos used, the first N that decode (default 64)")
    p.add_argument("--fp32-convs", type=int, help="onnx-int8: the graph's first N convolutions stay fp32, where int8 errs most "
                                                  "(default 15: the shipped EfficientNet-Lite0's stem and blocks 0-2)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="onnx, torchscript: largest embedding difference the check accepts")
    p.add_argument("--min-cosine", type=float, help="onnx-int8: lowest mean cosine similarity between PyTorch's and the int8 "
                                                    "region embeddings the check accepts (default 0.98; int8 is not bit-exact)")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.errors import MarkguardError
    from markguard.train.export import CALIB_COUNT, FP32_CONVS, INT8_MIN_COSINE, export_model

    import math

    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):  # nan would let every parity check pass
        raise MarkguardError(f"--tolerance {args.tolerance}: give the largest embedding difference accepted, a number >= 0")
    if args.min_cosine is not None and not -1 <= args.min_cosine <= 1:  # also refuses nan
        raise MarkguardError(f"--min-cosine {args.min_cosine}: give a cosine similarity between -1 and 1")
    if args.calib is not None and args.format != "onnx-int8":
        raise MarkguardError(f"--calib is for --format onnx-int8 (a {args.format} export is not calibrated)")
    result = export_model(args.model, args.format, args.out, check=not args.no_check, calib=args.calib,
                          calib_count=CALIB_COUNT if args.calib_count is None else args.calib_count,
                          fp32_convs=FP32_CONVS if args.fp32_convs is None else args.fp32_convs)
    calib = result.get("calibration")
    print(f"exported {result['format']}: {result['path']} ({result['bytes'] / 1e6:.1f} MB, fingerprint {result['fingerprint']})"
          + (f"; calibrated on {calib['photos']} photos of {calib['source']} ({calib['unusable']} could not be decoded)" if calib else ""))
    if "max_abs_diff" not in result:
        return 0
    print(f"parity with PyTorch: max |embedding difference| {result['max_abs_diff']:.2e}, "
          f"cosine similarity mean {result['mean_cosine']:.4f}, lowest {result['min_cosine']:.4f}")
    if args.format == "onnx-int8":
        floor = INT8_MIN_COSINE if args.min_cosine is None else args.min_cosine
        if result["mean_cosine"] < floor:
            raise MarkguardError(f"{result['path']}: int8 embeddings agree with PyTorch's only to mean cosine {result['mean_cosine']:.4f} < {floor}; "
                                 "calibrate on more or more listing-like photos (--calib, --calib-count)")
    elif result["max_abs_diff"] > args.tolerance:
        raise MarkguardError(f"{result['path']}: embeddings differ from PyTorch by {result['max_abs_diff']:.2e} > {args.tolerance}; the backbone may use ops the exporter mis-translates")
    return 0
