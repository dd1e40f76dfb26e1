"""Soak: a large manifest scanned in shards, with SIGKILLs and resumes, merged; every row exactly once, memory sampled.

Each shard is scanned by a `markguard scan --shard i/N` subprocess. The kills are spread over the
shards: kill k stops its shard's whole process group (main and decode worker, as a lost machine
would) once a given share of that shard's rows has reached the file; `scan --resume` then runs it
to the end. The shard outputs are merged and the merged file is read back: every listing id of the
manifest exactly once, in manifest order. The resident memory of the scan's processes is sampled
every half second, and its value at 10/50/90 % of each run is kept, to show it does not grow with
the rows.

    python benchmarks/bench_soak.py --rows 1000000     # the full soak (hours on 2 shared cores)
    python benchmarks/bench_soak.py --rows 100000      # what benchmarks/results/robustness.md records
    python benchmarks/bench_soak.py --quick            # 200 rows, 2 shards, 2 kills, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench_scan import machine, make_setup, write_manifest


def scan_cmd(setup: dict, manifest: Path, out: Path, shard: str, batch_size: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "markguard.cli", "scan", str(manifest), "-i", str(setup["index"]), "-o", str(out),
            "--shard", shard, "--regions", "none", "--batch-size", str(batch_size), "--workers", "1", "--device", "cpu",
            "--quiet", *extra]


def rows_in(out: Path) -> int:
    for name in ("results.jsonl.partial", "results.jsonl"):
        try:
            with open(out / name, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            continue
    return 0


def run_once(cmd: list[str], out: Path, expected: int, kill_at: int | None) -> dict:
    """Run ``cmd``; SIGKILL its process group once ``kill_at`` rows are in the file. RSS sampled every 0.5 s."""
    start = rows_in(out)  # a resume continues from here
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ps = psutil.Process(proc.pid)
    peak_main = peak_child = 0
    at = {}
    t0 = time.monotonic()
    killed = False
    while proc.poll() is None:
        try:
            main_rss = ps.memory_info().rss
            child_rss = max((c.memory_info().rss for c in ps.children(recursive=True)), default=0)
        except psutil.Error:
            main_rss = child_rss = 0
        peak_main, peak_child = max(peak_main, main_rss), max(peak_child, child_rss)
        done = rows_in(out)
        for share in (0.1, 0.5, 0.9):
            if share not in at and done - start >= share * (expected - start) and main_rss:
                at[share] = round(main_rss / 2**20, 1)
        if kill_at is not None and done >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.5)
    proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    if not killed and proc.returncode != 0:
        raise SystemExit(f"scan failed ({proc.returncode}): {err[-2000:]}")
    return {"started_at_rows": start, "killed_at_rows": rows_in(out) if killed else None, "seconds": round(time.monotonic() - t0, 1),
            "peak_main_rss_mb": round(peak_main / 2**20, 1), "peak_worker_rss_mb": round(peak_child / 2**20, 1),
            "main_rss_mb_at_share": {str(k): v for k, v in sorted(at.items())}}


def check_merged(results: Path, rows: int) -> dict:
    """Every manifest row once, in order: the merged ids are exactly R0000000 … R{rows-1}."""
    n = out_of_order = 0
    with open(results, "rb") as f:
        for n, line in enumerate(f):
            row = json.loads(line)
            if row["listing_id"] != f"R{n:07d}":
                out_of_order += 1
        n = n + 1 if rows else 0
    return {"rows_merged": n, "rows_expected": rows, "rows_out_of_place": out_of_order, "exactly_once_in_order": n == rows and not out_of_order}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--photos", type=int, default=64, help="distinct photo files the manifest cycles over")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="200 rows, for the test suite")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.photos, args.batch_size = 200, 16, 16
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(["python", "benchmarks/bench_soak.py", *(argv if argv is not None else sys.argv[1:])]),
              "rows": args.rows, "shards": args.shards, "kills": args.kills}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = Path(tmp)
        setup = make_setup(root / "setup", backbone="resnet10t", scan_size=64, photos=args.photos, photo_size=(160, 120))
        manifest = write_manifest(setup["listings"], args.rows, "soak.csv")
        result["manifest_mb"] = round(manifest.stat().st_size / 2**20, 1)
        runs, outs = [], []
        t_all = time.monotonic()
        for i in range(args.shards):
            out = root / f"shard{i}"
            outs.append(out)
            expected = len(range(i, args.rows, args.shards))
            kills = [k for k in range(args.kills) if k % args.shards == i]
            # kill k of this shard after (j+1)/(len+1) of its rows: the kills split the shard evenly
            for j, k in enumerate(kills):
                at = int(expected * (j + 1) / (len(kills) + 1))
                cmd = scan_cmd(setup, manifest, out, f"{i}/{args.shards}", args.batch_size, *(["--resume"] if j else []))
                runs.append({"shard": i, "kill": k, **run_once(cmd, out, expected, at)})
            cmd = scan_cmd(setup, manifest, out, f"{i}/{args.shards}", args.batch_size, "--resume")
            runs.append({"shard": i, "kill": None, **run_once(cmd, out, expected, None)})
            summary = json.loads((out / "summary.json").read_text())
            runs[-1]["summary_images"] = summary["images"]
            runs[-1]["images_this_run"] = summary["images_this_run"]
        merged = root / "merged"
        subprocess.run([sys.executable, "-m", "markguard.cli", "merge", *map(str, outs), "-o", str(merged)], check=True,
                       stdout=subprocess.DEVNULL)
        result["runs"] = runs
        result["check"] = check_merged(merged / "results.jsonl", args.rows)
        result["wall_s"] = round(time.monotonic() - t_all, 1)
    print(json.dumps(result, indent=2))
    if not result["check"]["exactly_once_in_order"]:
        raise SystemExit("soak failed: rows lost, repeated or out of place")
    return result


if __name__ == "__main__":
    main()
