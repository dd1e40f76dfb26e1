"""Model-card fields checked at the door: a card from someone else is untrusted input.

Each field has one check (type, range, length); a failure is one line naming the field, before a
value can reach a resize, a DataLoader worker or a threshold comparison.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from markguard.errors import MarkguardError
from markguard.fsio import excerpt

# scan_size/input_size: the scan holds a batch of letterboxed squares and the backbone's feature maps of each;
# memory grows with the square of the side (4096 made a scan of 8 small photos allocate 22 GB and be killed),
# so the range stops where a batch still fits a workstation (benchmarks/results/scan_size.md: about 2 GB at 1024)
MAX_SIDE = 1024
MAX_DIM = 16384
MAX_TEXT = 256


class _Bad(ValueError):
    pass


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"must be a whole number, got {type(v).__name__} {excerpt(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"must lie between {lo} and {hi}, got {excerpt(v)}")
        return v
    return check


def _number(v, lo: float, hi: float, what: str = "") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{what}must be a number, got {type(v).__name__} {excerpt(v)}")
    if not math.isfinite(v) or not lo <= v <= hi:
        raise _Bad(f"{what}must be a finite number between {lo} and {hi}, got {excerpt(v)}")
    return v


def _text(v) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be text, got {type(v).__name__} {excerpt(v)}")
    if len(v) > MAX_TEXT:
        raise _Bad(f"must be at most {MAX_TEXT} characters, got {len(v)}")
    return v


def _name(v) -> str:
    if not _text(v).strip():
        raise _Bad("must not be empty")
    return v


def _dict(v) -> dict:
    if not isinstance(v, dict):
        raise _Bad(f"must be a JSON object, got {type(v).__name__}")
    if not all(isinstance(k, str) for k in v):
        raise _Bad("keys must be text")
    return v


def _triple(lo: float, hi: float) -> Callable[[Any], tuple]:
    def check(v):
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise _Bad(f"must be 3 numbers (one per RGB channel), got {excerpt(v)}")
        return tuple(_number(x, lo, hi) for x in v)
    return check


def _pooling(v) -> str:
    from markguard.model import Pooling

    if _name(v) not in Pooling.__members__:
        raise _Bad(f"unknown pooling {excerpt(v)}; one of {', '.join(Pooling.__members__)}")
    return v


def _stride(v) -> int:
    if _int(1, 64)(v) not in (8, 16, 32):
        raise _Bad(f"must be 8, 16 or 32, got {v}")
    return v


def _resize(v) -> str:
    if v != "letterbox":
        raise _Bad(f"unknown resize policy {excerpt(v)}; markguard knows 'letterbox'")
    return v


def _regions(v) -> dict:
    _dict(v)
    if "mode" in v and not (isinstance(v["mode"], str) and v["mode"].strip() and len(v["mode"]) <= MAX_TEXT):
        # a mode's name only: markguard/ does not import the scan, whose registry refuses an unknown one
        raise _Bad(f"mode must be the name of a region mode, got {excerpt(v['mode'])}")
    if "scales" in v:
        if not isinstance(v["scales"], list) or not 1 <= len(v["scales"]) <= 16:
            raise _Bad(f"scales must be a list of 1 to 16 numbers, got {excerpt(v['scales'])}")
        for s in v["scales"]:
            _number(s, 0.01, 1.0, "scales: ")
    if "overlap" in v:
        _number(v["overlap"], 0.0, 0.95, "overlap ")
    if "looks" in v:
        _dict(v["looks"])
        limits = {"per_photo": (0, 64), "per_batch": (1, 4096), "margin": (1.0, 8.0), "min_score": (0.0, 1.0),
                  "resolution": (64, 8192), "refine": (0, 1)}
        for k, x in v["looks"].items():
            if k not in limits:
                raise _Bad(f"looks: unknown key {excerpt(k)}; known: {', '.join(limits)}")
            _number(x, *limits[k], f"looks: {k} ")
    return v


def _proposals(v) -> dict:
    _dict(v)
    if len(v) > 32:  # a handful of named settings; more is no card markguard wrote
        raise _Bad(f"must hold a few settings, got {len(v)} keys")
    for k, x in v.items():
        if k == "grid_scales":
            if not isinstance(x, list) or not 1 <= len(x) <= 16 or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in x):
                raise _Bad(f"grid_scales must be a list of 1 to 16 numbers, got {excerpt(x)}")
            for s in x:
                _number(s, 0.01, 1.0, "grid_scales: ")
        else:
            _number(x, 0, 1e6, f"{excerpt(k, 40)} ")
    return v


SIMILARITY = (-1.0, 1.001)  # cosine, plus the calibration's 1e-4 step above a top score


def _thresholds(v) -> dict:
    _dict(v)
    for k in ("flag", "review"):
        if k in v:
            _number(v[k], *SIMILARITY, f"{k} ")
    per_brand = _dict(v.get("per_brand", {}))
    for brand, t in per_brand.items():
        _number(t, *SIMILARITY, f"per_brand[{excerpt(brand, 40)}] ")
    return v


def _init(v) -> dict:
    """Where the weights started (source, sha256, licence): optional, text only."""
    _dict(v)
    for k, x in v.items():
        if not isinstance(x, str) or len(x) > 4 * MAX_TEXT:
            raise _Bad(f"{excerpt(k, 40)} must be text of at most {4 * MAX_TEXT} characters, got {type(x).__name__}")
    return v


CHECKS: dict[str, Callable[[Any], Any]] = {
    "backbone": _name,
    "dim": _int(1, MAX_DIM),
    "pooling": _pooling,
    "output_stride": _stride,
    "roi_size": _int(1, 16),
    "input_size": _int(16, MAX_SIDE),
    "scan_size": _int(16, MAX_SIDE),
    "mean": _triple(0.0, 1.0),
    "std": _triple(1e-3, 10.0),  # a zero std divides by zero
    "resize": _resize,
    "regions": _regions,
    "proposals": _proposals,
    "thresholds": _thresholds,
    "training": _dict,
    "metrics": _dict,
    "init": _init,
    "fingerprint": _text,
    "created": _text,
    "markguard_version": _text,
}


def check_card_fields(d: dict, source: str) -> dict:
    """``d`` with every field checked (and mean/std as tuples); raises MarkguardError naming the first bad one."""
    if not isinstance(d, dict):
        raise MarkguardError(f"{source}: a model card is a JSON object, got {type(d).__name__}")
    out = dict(d)
    for key, value in d.items():
        check = CHECKS.get(key)
        if check is None:
            continue  # unknown keys are the caller's to refuse
        try:
            out[key] = check(value)
        except _Bad as e:
            raise MarkguardError(f"{source}: field {key!r} {e}; fix the card or re-export the checkpoint") from None
    return out
