"""Training throughput: samples/s of the real training step (composites → backbone → region pooling → loss → AdamW).

    python benchmarks/bench_train.py            # the configurations in CONFIGS, 3 timed steps each
    python benchmarks/bench_train.py --quick    # one tiny configuration (what the tests run)

Prints one line per configuration: median step time and samples/s over the timed steps, with the
data pipeline measured apart (samples/s of CompositeDataset alone, one process).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from markguard.checkpoint import ModelCard, create_model
from markguard.datasets.composite import CompositeConfig, CompositeDataset
from markguard.datasets.synth import make_marks
from markguard.train.losses import MetricLoss

CONFIGS = [
    # backbone, output_stride, input size, batch, channels_last
    ("resnet10t", 16, 64, 32, True),
    ("resnet10t", 16, 96, 32, True),
    ("resnet10t", 16, 96, 32, False),
    ("resnet18", 16, 128, 32, True),
]


def time_config(backbone: str, os_: int, size: int, batch: int, channels_last: bool, steps: int) -> dict:
    marks = [m.image for m in make_marks(8, 2, seed=0)]
    ds = CompositeDataset(marks, batch * (steps + 1), CompositeConfig(size=size), seed=0)
    t = time.perf_counter()
    samples = [ds[i] for i in range(batch * (steps + 1))]
    data_rate = len(samples) / (time.perf_counter() - t)
    card = ModelCard(backbone=backbone, output_stride=os_, input_size=size, dim=128)
    model = create_model(card)
    loss_fn = MetricLoss("cosface", ds.num_classes, 128)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-3)
    times = []
    for s in range(steps + 1):
        chunk = samples[s * batch : (s + 1) * batch]
        x = torch.stack([c[0] for c in chunk])
        boxes = torch.stack([c[1] for c in chunk])
        y = torch.tensor([c[2] for c in chunk])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = time.perf_counter()
        emb = model.embed_regions(model.forward_features(x), list(boxes.unsqueeze(1)), size)
        loss = loss_fn(emb, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s:  # the first step warms up oneDNN's kernels
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"backbone": backbone, "output_stride": os_, "input": size, "batch": batch, "channels_last": channels_last,
            "step_s": round(step, 3), "samples_per_s": round(batch / step, 1), "data_samples_per_s": round(data_rate, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = [("resnet10t", 16, 32, 4, True)] if args.quick else CONFIGS
    steps = 1 if args.quick else args.steps
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads, "torch": str(torch.__version__)}))
    for c in configs:
        print(json.dumps(time_config(*c, steps=steps)), flush=True)


if __name__ == "__main__":
    main()
