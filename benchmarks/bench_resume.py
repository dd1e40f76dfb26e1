"""Crash safety, repeated: a `markguard scan` subprocess SIGKILLed at a random point, resumed, checked; N times.

Each round starts a fresh scan of the same dump, kills its whole process group (main process and
decode workers, as a lost machine would) at a random point (after a random number of rows has
reached the file, or during start-up), runs `scan --resume` to the end, and compares results.jsonl
with an uninterrupted scan's: every listing exactly once, the same rows in the same order.

    python benchmarks/bench_resume.py             # 20 rounds over a 16-photo dump, batches of 2
    python benchmarks/bench_resume.py --quick     # 2 rounds over 8 photos
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scan import machine, make_setup


def scan_cmd(setup: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "markguard.cli", "scan", str(setup["listings"] / "manifest.csv"), "-i", str(setup["index"]),
            "-o", str(out), "--batch-size", "2", "--workers", "1", "--device", "cpu", "--quiet", *extra]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--listings", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 rounds over 8 photos, for the test suite")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.listings = 2, 8
    rng = random.Random(args.seed)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(["python", "benchmarks/bench_resume.py", *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        root = Path(tmp)
        setup = make_setup(root / "setup", backbone="resnet10t", scan_size=96, photos=args.listings, photo_size=(320, 240))
        t = time.monotonic()
        subprocess.run(scan_cmd(setup, root / "ref"), check=True, capture_output=True)
        full_s = time.monotonic() - t
        reference = (root / "ref" / "results.jsonl").read_bytes()
        n = reference.count(b"\n")
        rounds = []
        for r in range(args.rounds):
            out = root / f"run{r}"
            # a random point: during start-up (before any row) in about one round in six, else right after a
            # random number of rows has reached the file, plus a random fraction of a batch's time
            target = rng.randrange(-3, n - 1)
            proc = subprocess.Popen(scan_cmd(setup, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            t0 = time.monotonic()
            partial = out / "results.jsonl.partial"
            if target < 0:
                time.sleep(rng.uniform(0.0, 5.0))
            else:
                while proc.poll() is None and (partial.read_bytes().count(b"\n") if partial.exists() else 0) < target:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.5))
            delay = time.monotonic() - t0
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            written = partial.read_bytes().count(b"\n") if partial.exists() else 0
            done = subprocess.run(scan_cmd(setup, out, "--resume"), capture_output=True, text=True)
            got = (out / "results.jsonl").read_bytes() if done.returncode == 0 else b""
            keys = [tuple(json.loads(line)[k] for k in ("listing_id", "image")) for line in got.splitlines()]
            rounds.append({"round": r, "target_rows": max(target, 0), "kill_after_s": round(delay, 2), "killed": killed, "rows_when_killed": written,
                           "resume_rc": done.returncode, "rows": len(keys), "unique": len(set(keys)), "identical": got == reference})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    ok = [x for x in rounds if x["resume_rc"] == 0 and x["rows"] == x["unique"] == n and x["identical"]]
    result.update({"listings": n, "full_scan_s": round(full_s, 1), "rounds": len(rounds), "passed": len(ok),
                   "killed_mid_scan": sum(x["killed"] and 0 < x["rows_when_killed"] < n for x in rounds),
                   "killed_before_first_row": sum(x["killed"] and x["rows_when_killed"] == 0 for x in rounds),
                   "details": rounds})
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return result


if __name__ == "__main__":
    r = main()
    sys.exit(0 if r["passed"] == r["rounds"] else 1)
