import torch

from markguard.config import load_layered
from markguard.train.config import TrainConfig
from markguard.train.loop import cpu_threads


def test_threads_setting_wins_else_the_process_default(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert cpu_threads(TrainConfig()) == 4
    assert cpu_threads(load_layered(TrainConfig, None, ["threads=1"])) == 1
