"""Benchmark the brand index: build time, memory, queries/s and recall@10 against exact search, per size and kind.

    python benchmarks/bench_index.py [--quick] [--sizes 10000,100000,1000000] [--dim 256] [--kinds flat,hnsw,ivfpq]

Vectors are synthetic embeddings: unit vectors on a low-dimensional manifold (a 32-d Gaussian
mixture, one component a "mark" with ~10 reference views, projected to ``dim`` plus a little
isotropic noise), which is how logo embeddings sit: a few views of each mark, clustered, with low
intrinsic dimension. Queries are fresh draws from the same mixture (never indexed), like listing
photos near a genuine mark.
Results for the recorded run are in benchmarks/results/index.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

# Idle OpenMP threads sleep instead of spinning. Must be set before faiss loads libgomp. On a shared or
# busy machine spinning threads steal the cores the working ones need: measured here, 5-10x fewer
# queries/s (see benchmarks/results/index.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from markguard.infer.index import MarkIndex, recall_at_k  # noqa: E402

LATENT = 32


class Marks:
    """Clustered unit vectors; ``sample`` draws from the same mixture with any seed."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((max(16, n // 10), LATENT)) * 2
        self.proj = rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)
        self.dim = dim

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, 100_000):  # chunks: float64 temporaries of 1M x 256 would be 2 GB
            m = min(100_000, n - s)
            z = self.centers[rng.integers(len(self.centers), size=m)] + rng.standard_normal((m, LATENT))
            x = z @ self.proj + 0.1 * rng.standard_normal((m, self.dim))
            out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def records(n: int, start: int = 0) -> list[dict]:
    return [{"brand": f"brand{(start + i) // 1000}", "mark": f"mark{start + i}", "source": ""} for i in range(n)]


def timed_search(index: MarkIndex, q: np.ndarray, k: int = 10, min_s: float = 1.0):
    index.search(q[:64], k)  # warm-up: first-touch of the index pages
    reps, t0 = 0, time.perf_counter()
    while True:
        _, ids = index.search(q, k)
        reps += 1
        if time.perf_counter() - t0 >= min_s:
            break
    return reps * len(q) / (time.perf_counter() - t0), ids


def bench_size(n: int, args) -> list[dict]:
    gen = Marks(n, args.dim, seed=n)
    x = gen.sample(n, seed=1)
    q = gen.sample(args.queries, seed=2)
    t0 = time.perf_counter()
    _, truth_pos = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t0
    recs = records(n)
    rows = []
    for kind in args.kinds:
        t0 = time.perf_counter()
        index = MarkIndex.build(x, recs, fingerprint="bench", kind=kind, recall_target=args.recall_target, seed=0)
        build_s = time.perf_counter() - t0
        info = index.info()
        load_before = os.getloadavg()[0]  # other work on the machine skews queries/s: record it
        qps, ids = timed_search(index, q, min_s=args.min_search_s)
        row = {"n": n, "dim": args.dim, "kind": kind, "factory": info["factory"], "params": info["params"],
               "build_s": round(build_s, 2), "memory_mb": round(info["memory_bytes"] / 2**20, 1),
               "qps": round(qps), "recall_at_10": round(recall_at_k(ids, truth_pos), 4),
               "tuned_recall_at_10": round(info["recall_at_10"], 4), "exact_reference_s": round(exact_s, 2),
               "load_avg_1min": round(load_before, 2)}
        if n == max(args.sizes):
            new = gen.sample(args.add, seed=3)
            t0 = time.perf_counter()
            index.add(new, records(args.add, start=n))
            row[f"add_{args.add}_s"] = round(time.perf_counter() - t0, 3)
            folder = tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp)
            try:
                t0 = time.perf_counter()
                index.save(os.path.join(folder, "ix"))
                row["save_s"] = round(time.perf_counter() - t0, 2)
                t0 = time.perf_counter()
                MarkIndex.load(os.path.join(folder, "ix"))
                row["load_s"] = round(time.perf_counter() - t0, 2)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del index
    return rows


def table(rows: list[dict], add: int) -> str:
    head = ("| vectors | kind | factory | search param | build s | memory MB | queries/s | recall@10 "
            f"| tuned recall@10 | add {add:,} s | save s | load s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        param = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
        lines.append(f"| {r['n']:,} | {r['kind']} | `{r['factory']}` | {param} | {r['build_s']} | {r['memory_mb']} | "
                     f"{r['qps']:,} | {r['recall_at_10']:.3f} | {r['tuned_recall_at_10']:.3f} | "
                     f"{r.get(f'add_{add}_s', '')} | {r.get('save_s', '')} | {r.get('load_s', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small size, for a smoke test (seconds)")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=256, help="embedding size (the model card's dim)")
    p.add_argument("--kinds", default="flat,hnsw,hnsw_sq8,ivfpq")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--add", type=int, default=1000, help="marks added to the largest index")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--min-search-s", type=float, default=2.0, help="repeat the query batch for at least this long")
    p.add_argument("--tmp", default=None, help="where to time save/load (default: the system temp dir)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.queries, args.add, args.min_search_s = "2000", 64, 200, 100, 0.1
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.kinds = args.kinds.split(",")
    faiss.omp_set_num_threads(args.threads)
    print(f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')} {platform.processor() or platform.machine()} "
          f"threads={args.threads} faiss={faiss.__version__} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')} "
          f"argv={' '.join(sys.argv[1:])}", flush=True)
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args)
    print(table(rows, args.add))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
