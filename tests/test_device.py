"""Device resolution and autocast: the one module training and scanning share."""

from __future__ import annotations

import pytest
import torch

from markguard.device import autocast, resolve_device
from markguard.errors import MarkguardError


def test_auto_follows_the_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_errors_name_the_setting_the_user_changes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MarkguardError, match=r"^--device cuda:0 given but no CUDA GPU is visible; use --device cpu$"):
        resolve_device("cuda:0")
    with pytest.raises(MarkguardError, match=r"^device=cuda given but no CUDA GPU is visible; use device=cpu$"):
        resolve_device("cuda", option="device=")
    with pytest.raises(MarkguardError, match=r"^--device 'gpu0' is not a device; use cpu, cuda, cuda:N or auto$"):
        resolve_device("gpu0")


@pytest.mark.parametrize("precision, on", [("auto", False), ("fp32", False), ("bf16", True)])
def test_autocast_on_cpu_only_when_asked(precision, on):
    x = torch.randn(4, 4)
    with autocast("cpu", precision):
        y = x @ x
    assert (y.dtype == torch.bfloat16) is on
