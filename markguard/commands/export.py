"""`markguard export`: a checkpoint's backbone as ONNX or TorchScript, for `scan --backend onnx|torchscript`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model's backbone to ONNX or TorchScript (checked against PyTorch)",
                       description="Writes the backbone graph with the checkpoint's fingerprint; region pooling stays in PyTorch.")
    p.add_argument("--format", "-f", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--model", "-m", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--out", "-o", help="file to write (default: beside the weights, where `scan --backend` looks)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest embedding difference the check accepts")
    p.set_defaults(func=run)


def run(args) -> int:
    from markguard.errors import MarkguardError
    from markguard.train.export import export_model

    result = export_model(args.model, args.format, args.out, check=not args.no_check)
    diff = result.get("max_abs_diff")
    print(f"exported {result['format']}: {result['path']} (fingerprint {result['fingerprint']}"
          + (f", max |embedding difference| {diff:.2e})" if diff is not None else ")"))
    if diff is not None and diff > args.tolerance:
        raise MarkguardError(f"{result['path']}: embeddings differ from PyTorch by {diff:.2e} > {args.tolerance}; the backbone may use ops the exporter mis-translates")
    return 0
