"""Model-only speed of the scan's backbone pass by backend: PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8.

The pass is the scan's own (``infer/embed.feature_maps``: channels-last, no autograd) on a batch of
letterboxed-size tensors, so the rates are the bound an end-to-end scan works against. Rounds alternate
backends (A B C A B C ...) and medians are compared, as a shared machine's load drifts within minutes.
Both ONNX Runtime sessions get torch's thread count (``infer/backends.py``).

    python benchmarks/bench_backends.py                        # the shipped model; its exports beside the weights
    python benchmarks/bench_backends.py --model RUN --size 320 --batch 16 --rounds 9
    python benchmarks/bench_backends.py --quick                # a random tiny EfficientNet-Lite0, seconds (the tests run this)

The exports must exist (`markguard export --format onnx`, `markguard export --format onnx-int8 --calib PHOTOS`);
--quick writes its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_scan import machine as scan_machine  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


def machine() -> str:
    import onnxruntime

    return f"{scan_machine()}, onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f}"


def quick_model(root: Path) -> Path:
    """A random tf_efficientnet_lite0 checkpoint at 64 px with both ONNX exports beside it."""
    from markguard.checkpoint import ModelCard, create_model, save_checkpoint
    from markguard.datasets.synth import SynthConfig, synth_dataset
    from markguard.train.export import export_model

    torch.manual_seed(0)
    card = ModelCard(backbone="tf_efficientnet_lite0", dim=32, input_size=64, scan_size=64, output_stride=16)
    save_checkpoint(create_model(card), card, root / "model")
    data = synth_dataset(root / "calib", brands=2, marks_per_brand=1, distractor_brands=1, listings=6, seed=0, cfg=SynthConfig(size=(96, 72)))
    export_model(root / "model", "onnx", check=False)
    export_model(root / "model", "onnx-int8", calib=data["listings"], check=False)
    return root / "model"


def time_backends(model_dir: str | Path | None, *, size: int, batch: int, rounds: int,
                  backends: tuple[str, ...] = BACKENDS) -> dict[str, list[float]]:
    """Seconds a batch per round for each backend, rounds interleaved; each backend warmed up first."""
    from markguard.infer.backends import load_backend
    from markguard.infer.embed import feature_maps

    models = {b: load_backend(model_dir, b)[0] for b in backends}
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    for m in models.values():  # first calls choose kernels (oneDNN, ORT's memory patterns)
        feature_maps(m, x)
        feature_maps(m, x)
    times: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(rounds):
        for b, m in models.items():
            t = time.perf_counter()
            feature_maps(m, x)
            times[b].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder with model.onnx and model.int8.onnx beside the weights (default: the shipped model)")
    ap.add_argument("--size", type=int, default=320, help="square input side (default 320, the shipped model's scan size)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="a random tiny model at 64 px, 3 rounds (for the tests)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                    help="which to time beside torch (default all; torch onnx needs no int8 export: onnx comes from the cache)")
    args = ap.parse_args()
    args.backends = ["torch", *[b for b in args.backends if b != "torch"]]  # the ratios are against PyTorch
    tmp = tempfile.TemporaryDirectory(prefix="markguard-bench-backends-")
    model = args.model
    if args.quick:
        model, args.size, args.batch, args.rounds = quick_model(Path(tmp.name)), 64, 4, 3
    times = time_backends(model, size=args.size, batch=args.batch, rounds=args.rounds, backends=tuple(args.backends))
    med = {b: statistics.median(t) for b, t in times.items()}
    print(f"# {machine()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# backbone pass, {args.batch} x 3 x {args.size} x {args.size}, {args.rounds} interleaved rounds, model {model or 'shipped'}")
    print("| backend | median s a batch | img/s | vs torch fp32 | rounds (s) |")
    print("|---|---|---|---|---|")
    for b in args.backends:
        print(f"| {b} | {med[b]:.3f} | {args.batch / med[b]:.1f} | {med['torch'] / med[b]:.2f}x | "
              + ", ".join(f"{t:.2f}" for t in times[b]) + " |")


if __name__ == "__main__":
    main()
