"""Index building: unreadable marks are skipped with their reason, add/remove without a rebuild, wrong model refused."""

from __future__ import annotations

import shutil

import pytest

from markguard.errors import MarkguardError
from markguard.infer.build import add_to_index, build_index, read_index_meta, remove_from_index
from markguard.infer.index import MarkIndex
from test_scan import make_model, world  # noqa: F401  (fixture)


def test_build_skips_bad_marks_and_records_its_model(world, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    shutil.copytree(world.gallery, gallery)
    (gallery / "brand000" / "broken.png").write_bytes(b"not a png")
    info = build_index(gallery, tmp_path / "idx", model=world.model, device="cpu")
    assert info["skipped"] == 1 and info["ntotal"] == 3
    assert "broken.png" in capsys.readouterr().err
    meta = read_index_meta(tmp_path / "idx")
    assert meta["model"] == str(world.model.resolve()) and set(meta["brands"]) == {"brand000", "brand001", "brand002"}


def test_add_and_remove_keep_search_results(world, tmp_path):
    idx = tmp_path / "idx"
    build_index(world.gallery, idx, model=world.model, device="cpu")
    assert remove_from_index(idx, brand="brand002") == {"removed": 1, "total": 2}
    assert "brand002" not in read_index_meta(idx)["brands"]
    assert {r.brand for r in MarkIndex.load(idx).records()} == {"brand000", "brand001"}
    with pytest.raises(MarkguardError, match="nothing matches"):
        remove_from_index(idx, brand="brand002")
    with pytest.raises(MarkguardError, match="say what to remove"):
        remove_from_index(idx)
    assert add_to_index(idx, world.gallery, device="cpu")["added"] == 1
    assert {r.brand for r in MarkIndex.load(idx).records()} == {"brand000", "brand001", "brand002"}
    other = make_model(tmp_path / "other", seed=5)
    with pytest.raises(MarkguardError, match="built by model"):
        add_to_index(idx, world.gallery, model=other, device="cpu")
