"""What a scan is asked to do (``ScanOptions``), how its time is kept (``StageTimes``), and where JPEGs decode."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from markguard.errors import MarkguardError


@dataclass
class ScanOptions:
    """What the command line chooses for a scan (the model cards choose the rest)."""

    regions: str | None = None  # None: the model card's region mode
    batch_size: int = 16
    workers: int = 1
    device: str = "cpu"
    precision: str = "auto"
    k: int = 3
    max_matches: int = 5
    flag: float | None = None
    review: float | None = None
    shard: tuple[int, int] | None = None
    verify: bool | None = None  # geometric check of the candidates near the thresholds (infer/verify.py); None: when OpenCV is installed
    # the gate (infer/verify.py plan): candidates are verified from this value on (the thresholds' units);
    # None: from the review threshold less VerifyConfig.near
    verify_from: float | None = None
    backend: str = "auto"  # auto | torch | onnx | onnx-int8 | torchscript (infer/backends.py; auto: ONNX Runtime on a CPU)
    engine: str = "local"  # local | ray (infer/ray_engine.py)
    address: str | None = None  # Ray cluster address; None starts a local instance
    actors: int | None = None  # Ray: model-holding actors (default: one per GPU, or one per 2 CPUs)
    decode: str = "auto"  # cpu (Pillow, in the loader workers) | device (JPEGs by torchvision.io on the model's device) | auto
    compile: str | None = None  # a torch.compile backend for the backbone ("inductor"); None: eager
    ocr: bool = False  # read each photo's text where its detector finds it (infer/ocr.py) and match it to the brands' names; off by default: its cost (benchmarks/results/evidence.md)
    ocr_budget: int = 2  # text lines OCR reads in each photo, where its detector finds text (per photo: a row never depends on its batch)
    looks: int | None = None  # second looks per photo (infer/looks.py); None: the model card's regions.looks.per_photo
    looks_per_batch: int | None = None  # at most this many second looks a batch; None: the card's
    # the evidence combiner (infer/combine.py) whose probability the thresholds apply to: a combiner.json,
    # "auto" (the first index's, when it has one) or None (thresholds on the similarity)
    combiner: str | None = "auto"
    flood_share: float = 0.02  # flood guard (infer/flood.py): flags of a reference past this share of the scan held as review; 0: off
    flood_min: int = 20  # ... never below this many flags of the reference
    flood_history: list[str] = field(default_factory=list)  # earlier scans' output folders: each reference's usual flags per photo
    keep_embeddings: str | None = None  # fp16 | pq: store each photo's searched regions for `markguard rematch` (infer/rematch.py)
    # evidence signals turned on by name (``--signal``): those registered with ``opt_in`` (infer/evidence.py SIGNALS)
    signals: list[str] = field(default_factory=list)
    # run the next batch through the model while this one's evidence and decision stages finish on another thread
    # (infer/pipeline.py process_batches; the rows are the same either way)
    overlap: bool = True


STAGES = ("decode", "regions", "embed", "look", "search", "verify", "decide", "write")  # always reported, in this order


_TIMES_LOCK = threading.Lock()


@dataclass
class StageTimes:
    """Seconds spent in each stage; a stage not in STAGES is added the first time it is timed. Stages of two batches
    may run at once (infer/pipeline.py ``process_batches``): their seconds then add up to more than the scan's wall time."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        with _TIMES_LOCK:  # two threads add: the model's stages of one batch, the evidence of the one before
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now

    def merge(self, seconds: dict[str, float]) -> None:
        with _TIMES_LOCK:
            for k, v in seconds.items():
                self.seconds[k] = self.seconds.get(k, 0.0) + v

    def shares(self) -> dict[str, float]:
        """Each stage's share of the time all stages took (the scan's budget, in the open)."""
        total = sum(self.seconds.values())
        return {k: round(v / total, 3) if total > 0 else 0.0 for k, v in self.seconds.items()}


def resolve_decode(decode: str, device: str) -> str:
    """auto: JPEGs decode on the GPU when the model runs on one (nvJPEG), else on the CPU with Pillow."""
    if decode == "auto":
        return "device" if device.startswith("cuda") else "cpu"
    if decode not in ("cpu", "device"):
        raise MarkguardError(f"unknown decode {decode!r}; choose cpu, device or auto")
    return decode
