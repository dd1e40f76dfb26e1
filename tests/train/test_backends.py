"""The scan's default backend: ONNX Runtime fp32 on a CPU, its graph exported once per model fingerprint into the cache
and rebuilt when the cached file is not that model's; PyTorch where ONNX Runtime is missing, on a GPU or with --compile,
with one line on stderr when a backend that was asked for is not installed."""

from __future__ import annotations

import io
import os
import shutil

import pytest
import torch

from markguard.checkpoint import load_checkpoint
from markguard.infer import backends
from markguard.infer.backends import ExportedModel, cache_root, cached_onnx, load_backend, resolve_backend

pytest.importorskip("onnxruntime", reason="ONNX Runtime is a base dependency (the default backend)")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("backends") / "model"
    shutil.copytree(tiny_model, out)
    return out


def test_auto_is_onnx_on_a_cpu_and_torch_where_onnx_cannot_serve():
    assert resolve_backend("auto", "cpu") == "onnx"
    assert resolve_backend("auto", "cuda:0") == "torch"
    assert resolve_backend("auto", "cpu", compile="inductor") == "torch"  # --compile compiles the PyTorch backbone
    assert resolve_backend("torch", "cpu") == "torch"


@pytest.mark.parametrize("asked", ["auto", "onnx", "onnx-int8"])
def test_a_backend_that_is_not_installed_falls_back_to_torch_with_one_line(monkeypatch, asked):
    monkeypatch.setattr(backends, "onnx_installed", lambda: False)
    err = io.StringIO()
    assert resolve_backend(asked, "cpu", stream=err) == "torch"
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "onnxruntime" in lines[0] and "pip install 'markguard[onnx]'" in lines[0]


def test_the_graph_is_exported_once_into_the_cache_and_reused(model_dir, cache):
    card = load_checkpoint(model_dir)[1]
    err = io.StringIO()
    path = cached_onnx(model_dir, card, stream=err)
    assert path == cache / "onnx" / f"{card.fingerprint}.onnx" and path.is_file()
    assert "exporting model" in err.getvalue()
    stamp = path.stat().st_mtime_ns
    err = io.StringIO()
    assert cached_onnx(model_dir, card, stream=err) == path
    assert err.getvalue() == "" and path.stat().st_mtime_ns == stamp
    assert not [p for p in (cache / "onnx").iterdir() if p != path]  # no temporary export left behind
    model, _ = load_backend(model_dir, "auto")
    assert isinstance(model, ExportedModel) and model.kind == "onnx"


def test_a_cached_graph_of_another_model_is_rebuilt_never_used(model_dir, tiny_model, cache, tmp_path):
    from markguard.train.export import export_model

    card = load_checkpoint(model_dir)[1]
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    weights = load_checkpoint(other)
    with torch.no_grad():
        next(weights[0].parameters()).add_(1.0)  # another model: another fingerprint
    from markguard.checkpoint import save_checkpoint

    save_checkpoint(weights[0], weights[1], other)
    stale = export_model(other, "onnx", tmp_path / "stale.onnx", check=False)
    assert stale["fingerprint"] != card.fingerprint
    (cache / "onnx").mkdir(parents=True)
    planted = cache / "onnx" / f"{card.fingerprint}.onnx"
    shutil.copy(stale["path"], planted)
    err = io.StringIO()
    path = cached_onnx(model_dir, card, stream=err)
    assert f"is not model {card.fingerprint}'s graph (model {stale['fingerprint']})" in err.getvalue()
    assert backends._onnx_fingerprint(path) == card.fingerprint


def test_a_link_planted_at_the_cache_path_is_replaced_not_written_through(model_dir, cache, tmp_path):
    card = load_checkpoint(model_dir)[1]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (cache / "onnx").mkdir(parents=True)
    os.symlink(victim, cache / "onnx" / f"{card.fingerprint}.onnx")
    path = cached_onnx(model_dir, card, stream=io.StringIO())
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and backends._onnx_fingerprint(path) == card.fingerprint


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MARKGUARD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "markguard"
    monkeypatch.setenv("MARKGUARD_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
