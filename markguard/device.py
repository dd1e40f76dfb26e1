"""The device a job runs on and the precision it computes in: one answer for training, indexing and scanning."""

from __future__ import annotations

import torch

from markguard.errors import MarkguardError


def resolve_device(device: str, *, option: str = "--device") -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU; any other name is checked (CUDA needs a visible GPU).

    ``option`` is how the caller's user sets it (``--device`` on the command line, ``device=`` in a recipe),
    so that the error names the setting to change.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    setting = (lambda v: f"{option}{v}") if option.endswith("=") else (lambda v: f"{option} {v}")
    try:
        torch.device(device)
    except RuntimeError:
        raise MarkguardError(f"{setting(repr(device))} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MarkguardError(f"{setting(device)} given but no CUDA GPU is visible; use {setting('cpu')}")
    return device


def autocast(device: str, precision: str = "auto"):
    """bf16 autocast on CUDA (and on CPU only when asked: CPUs without bf16 units run it many times slower)."""
    use = precision == "bf16" or (precision == "auto" and device.startswith("cuda"))
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=use)
