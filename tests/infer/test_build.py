"""Index building: unreadable marks are skipped with their reason, add/remove without a rebuild, wrong model refused."""

from __future__ import annotations

import json
import shutil

import pytest

from markguard.errors import MarkguardError
from markguard.infer.build import add_to_index, build_index, read_index_meta, remove_from_index
from markguard.infer.index import MarkIndex
from markguard.infer.scan import ScanOptions, run_scan
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


def test_metadata_is_part_of_every_save(world, tmp_path):
    idx = tmp_path / "idx"
    build_index(world.gallery, idx, model=world.model, device="cpu")
    remove_from_index(idx, brand="brand002")
    add_to_index(idx, world.gallery, device="cpu")
    header = json.loads((idx / "index.json").read_text())
    assert "markguard.json" in header["sha256"]  # checked with the index's files, swapped in with them
    assert set(read_index_meta(idx)["brands"]) == {"brand000", "brand001", "brand002"}


def test_index_without_metadata_is_refused_not_read_as_empty(world, tmp_path):
    # what an interrupted save of an older markguard left: the index without its markguard.json
    idx = tmp_path / "idx"
    shutil.copytree(world.index, idx)
    bare = MarkIndex.load(idx)
    bare.meta = None
    bare.save(idx)
    for call in (lambda: read_index_meta(idx), lambda: add_to_index(idx, world.gallery, device="cpu"),
                 lambda: remove_from_index(idx, brand="brand000"),
                 lambda: run_scan(world.dump, [idx], tmp_path / "out", opts=ScanOptions(workers=0), progress=False)):
        with pytest.raises(MarkguardError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and str(idx) in msg and "markguard.json" in msg and "markguard index build" in msg
