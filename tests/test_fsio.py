"""Atomic writers: outputs follow the umask (not mkstemp's 0600), and a folder read as one save."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from markguard import fsio
from markguard.checkpoint import ModelCard, create_model, save_checkpoint
from markguard.infer.index import MarkIndex


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_files_follow_the_umask(tmp_path, umask):
    fsio.atomic_write_text(tmp_path / "summary.json", "{}")
    with fsio.atomic_path(tmp_path / "blob.bin") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "summary.json") == mode(tmp_path / "blob.bin") == 0o666 & ~umask


def test_checkpoint_and_index_follow_the_umask(tmp_path, umask):
    card = ModelCard(backbone="resnet10t", dim=16, input_size=32, scan_size=32)
    save_checkpoint(create_model(card), card, tmp_path / "ck")
    assert mode(tmp_path / "ck" / "model.safetensors") == mode(tmp_path / "ck" / "model_card.json") == 0o666 & ~umask
    x = np.eye(8, 16, dtype=np.float32)
    idx = MarkIndex.build(x, [{"brand": "b", "mark": f"m{i}"} for i in range(8)], fingerprint="f", kind="flat")
    idx.meta = {"model": None}
    idx.save(tmp_path / "ix")
    idx.save(tmp_path / "ix")  # the second save swaps a new folder in
    assert mode(tmp_path / "ix") == 0o777 & ~umask
    for f in (tmp_path / "ix").iterdir():
        assert mode(f) == 0o666 & ~umask, f.name


def test_snapshot_reads_the_save_it_opened(tmp_path):
    path = tmp_path / "f"
    path.mkdir()
    (path / "a").write_text("one")
    (path / "b").write_text("one")
    with fsio.FolderSnapshot(path) as snap:
        with snap.open("a") as f:
            assert f.read() == b"one"
        new = fsio.new_folder_beside(path)
        (new / "a").write_text("two")
        (new / "b").write_text("two")
        fsio.swap_in_folder(new, path)  # the old folder is gone now
        assert snap.replaced()
        with pytest.raises(fsio.FolderChanged):
            snap.open("b")  # not the new save's "b"
    with fsio.FolderSnapshot(path) as snap:
        with pytest.raises(FileNotFoundError):
            snap.open("c")  # this save has no "c": a real absence, not a change
