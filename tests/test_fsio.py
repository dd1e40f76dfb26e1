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


# --------------------------------------------------------------------------- never through a link


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


@pytest.mark.parametrize("mode", ["rb", "r+b", "ab", "wb"])
def test_open_own_file_refuses_a_link_and_leaves_its_target(tmp_path, mode):
    victim = _victim(tmp_path)
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "results.jsonl.partial"
    link.symlink_to(victim)
    with pytest.raises(fsio.MarkguardError, match="is a link") as e:
        fsio.open_own_file(link, mode)
    assert "\n" not in str(e.value) and str(link) in str(e.value)
    assert victim.read_text() == "precious\n"


def test_open_own_file_refuses_a_hard_link_for_writing_and_a_fifo(tmp_path):
    victim = _victim(tmp_path)
    hard = tmp_path / "hard"
    os.link(victim, hard)
    with pytest.raises(fsio.MarkguardError, match="2 hard links"):
        fsio.open_own_file(hard, "wb")
    assert victim.read_text() == "precious\n"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(fsio.MarkguardError, match="not a regular file"):
        fsio.open_own_file(tmp_path / "fifo", "ab")  # would block forever without O_NONBLOCK


def test_own_folder_refuses_a_linked_part(tmp_path):
    elsewhere = tmp_path / "pics"
    elsewhere.mkdir()
    (tmp_path / "out" / "report").mkdir(parents=True)
    (tmp_path / "out" / "report" / "thumbs").symlink_to(elsewhere)
    with pytest.raises(fsio.MarkguardError, match="thumbs: is a link"):
        fsio.own_folder(tmp_path / "out", "report", "thumbs")
    assert fsio.own_folder(tmp_path / "new", "report", "thumbs").is_dir()


def test_remove_own_files_never_cleans_through_a_link(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "holiday.jpg").write_bytes(b"x")
    link = tmp_path / "thumbs"
    link.symlink_to(pics)
    with pytest.raises(fsio.MarkguardError, match="is a link"):
        fsio.remove_own_files(link, set(), ".jpg")
    assert (pics / "holiday.jpg").exists()
    own = tmp_path / "own"
    own.mkdir()
    for name in ("keep.jpg", "stale.jpg", "notes.txt"):
        (own / name).write_bytes(b"x")
    (own / "linked.jpg").symlink_to(pics / "holiday.jpg")
    assert fsio.remove_own_files(own, {"keep.jpg"}, ".jpg") == 1
    assert sorted(p.name for p in own.iterdir()) == ["keep.jpg", "linked.jpg", "notes.txt"]
    assert (pics / "holiday.jpg").exists()


def test_lock_refuses_a_planted_link_and_names_its_holder(tmp_path):
    victim = _victim(tmp_path)
    (tmp_path / ".held.lock").symlink_to(victim)
    with pytest.raises(fsio.MarkguardError, match="is a link"):
        fsio.FolderLock(tmp_path / ".held.lock", what="another writer", fix="wait").acquire()
    assert victim.read_text() == "precious\n"  # not truncated, no pid written into it
    (tmp_path / ".held.lock").unlink()
    with fsio.FolderLock(tmp_path / ".held.lock", what="another writer", fix="wait"):
        with pytest.raises(fsio.MarkguardError, match=rf"another writer \(pid {os.getpid()}\) is writing here \(on .+: .+\); wait"):
            fsio.FolderLock(tmp_path / ".held.lock", what="another writer", fix="wait").acquire()


def test_a_save_never_writes_through_a_dangling_link_at_the_index_path(tmp_path):
    victim_dir = tmp_path / "victim"
    (tmp_path / "ix").symlink_to(victim_dir)  # dangling: the save replaces the name, nothing is created there
    x = np.eye(8, 16, dtype=np.float32)
    idx = MarkIndex.build(x, [{"brand": "b", "mark": f"m{i}"} for i in range(8)], fingerprint="f", kind="flat")
    idx.meta = {"model": None}
    idx.save(tmp_path / "ix")
    assert not victim_dir.exists() and not (tmp_path / "ix").is_symlink()
    assert len(MarkIndex.load(tmp_path / "ix")) == 8


def test_excerpt_is_bounded():
    assert len(fsio.excerpt(list(range(100_000)))) <= 80
    assert len(fsio.excerpt("x" * 10_000)) <= 80
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert len(fsio.excerpt(deep)) <= 80
