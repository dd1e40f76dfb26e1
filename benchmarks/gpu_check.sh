#!/usr/bin/env bash
# The GPU check: on one CUDA machine, in under 8 minutes, install markguard, train briefly on the GPU
# and scan a synthetic dump, printing training samples/s and end-to-end scan images/s (nvJPEG and
# Pillow decoding; the shipped model without and with four second looks a photo, batched on the GPU).
#
#   bash benchmarks/gpu_check.sh [WORKDIR]        # WORKDIR defaults to /tmp/markguard-gpu-check
#
# Record what it prints in benchmarks/README.md with the machine, date and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/markguard-gpu-check}
rm -rf "$WORK" && mkdir -p "$WORK"

python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || { echo "gpu_check: no CUDA GPU visible to torch; run this on a GPU machine" >&2; exit 1; }
python3 -m pip install -q -e . 2>&1 | tail -1 || true
python3 -m pip install -q faiss-gpu-cu12 2>&1 | tail -1 || echo "gpu_check: faiss-gpu not installable here; searching on the CPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

set -x
markguard synth --out "$WORK/data" --brands 50 --listings 2000 --seed 0
time markguard train -r logo -o "$WORK/model" gallery="$WORK/data/gallery" device=cuda compile=inductor steps=600 \
  batch_size=256 workers=12 log_every=100 checkpoint_every=300 holdout_brands=5 calib_listings=200
markguard index build "$WORK/data/gallery" -o "$WORK/index" -m "$WORK/model" --device cuda
# a large dump: the 2,000 photos listed 10 times over in one manifest
python3 - "$WORK" <<'PY'
import csv, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = list(csv.DictReader(open(work / "data/listings/manifest.csv")))
with open(work / "data/listings/big.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=rows[0].keys())
    w.writeheader()
    for k in range(10):
        for r in rows:
            w.writerow(r | {"listing_id": f"{r['listing_id']}-{k}"})
PY
# JPEGs decoded on the GPU (nvJPEG, the default on CUDA), then by Pillow in 14 processes, for comparison
markguard scan "$WORK/data/listings/big.csv" -i "$WORK/index" -o "$WORK/scan" --device cuda --batch-size 256 --workers 14 --quiet
markguard scan "$WORK/data/listings/big.csv" -i "$WORK/index" -o "$WORK/scan-cpu-decode" --device cuda --decode cpu --batch-size 256 --workers 14 --quiet
# two looks on the GPU: the shipped model (it has the proposal head), the first 2,000 photos, 0 and 4 second looks a photo
markguard index build "$WORK/data/gallery" -o "$WORK/index-shipped" --device cuda
for looks in 0 4; do
  markguard scan "$WORK/data/listings/manifest.csv" -i "$WORK/index-shipped" -o "$WORK/scan-looks$looks" --device cuda \
    --batch-size 128 --workers 14 --looks "$looks" --looks-per-batch 512 --quiet
done
set +x
python3 - "$WORK" <<'PY'
import json, sys
for name in ("scan", "scan-cpu-decode", "scan-looks0", "scan-looks4"):
    s = json.load(open(f"{sys.argv[1]}/{name}/summary.json"))
    print(f"{name}: images/s", s["images_per_s"], "stage seconds:", s["stage_seconds"])
PY
grep -E "samples/s" "$WORK/model/metrics.csv" | tail -1 || tail -2 "$WORK/model/metrics.csv"
