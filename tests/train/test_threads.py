import os

import torch

from markguard.train.config import TrainConfig
from markguard.train.loop import cpu_threads


def test_threads_leave_the_loader_its_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert cpu_threads(TrainConfig(workers=1)) == 3
    assert cpu_threads(TrainConfig(workers=3)) == 1
    assert cpu_threads(TrainConfig(workers=8)) == 1  # never zero
    assert cpu_threads(TrainConfig(workers=0), processes=2) == 2  # two DDP ranks share the cores
    assert cpu_threads(TrainConfig(workers=1, threads=3)) == 3  # an explicit setting wins


def test_threads_never_exceed_what_the_process_allows(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cpu_threads(TrainConfig(workers=1)) == 2
