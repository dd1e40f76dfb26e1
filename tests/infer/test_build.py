"""Index building: unreadable marks are skipped with their reason, add/remove without a rebuild, wrong model refused."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

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
    if importlib.util.find_spec("cv2") is not None:  # OpenCV installed (dev extra): the three references' keypoints cached now
        assert info["verify_cache"]["references"] == 3 and info["verify_cache"]["unreadable"] == 0
    assert "broken.png" in capsys.readouterr().err
    meta = read_index_meta(tmp_path / "idx")
    assert meta["model"] == str(world.model.resolve()) and set(meta["brands"]) == {"brand000", "brand001", "brand002"}


def test_index_build_refuses_what_gallery_check_rejects(world, tmp_path, capsys):
    from markguard.cli import main

    gallery = tmp_path / "gallery"
    shutil.copytree(world.gallery, gallery)
    (gallery / "brand000" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(MarkguardError) as e:
        build_index(gallery, tmp_path / "idx", model=world.model, device="cpu", check=True)
    msg = str(e.value)
    assert "\n" not in msg and "broken.png" in msg and f"markguard gallery check {gallery}" in msg
    capsys.readouterr()
    for argv in (["index", "build", str(gallery), "-o", str(tmp_path / "idx"), "-m", str(world.model), "--device", "cpu"],
                 ["index", "add", str(world_copy(world, tmp_path)), str(gallery), "--device", "cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "broken.png" in err[0] and "markguard gallery check" in err[0], err
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("planted", ["brand folder", "mark"])
def test_build_and_add_refuse_links_out_of_the_gallery(world, tmp_path, planted):
    gallery, elsewhere = tmp_path / "gallery", tmp_path / "elsewhere"
    shutil.copytree(world.gallery, gallery)
    shutil.copytree(world.gallery / "brand001", elsewhere / "acme")
    if planted == "brand folder":
        (gallery / "acme").symlink_to(elsewhere / "acme")
    else:
        mark = next((elsewhere / "acme").iterdir())
        (gallery / "brand000" / f"linked{mark.suffix}").symlink_to(mark)
    for call in (lambda: build_index(gallery, tmp_path / "idx", model=world.model, device="cpu", check=True),
                 lambda: add_to_index(world_copy(world, tmp_path), gallery, device="cpu", check=True)):
        with pytest.raises(MarkguardError, match="links outside the gallery.*markguard gallery check"):
            call()
    # even a library caller that skips gallery check's other rules never reads outside the gallery
    for call in (lambda: build_index(gallery, tmp_path / "idx", model=world.model, device="cpu"),
                 lambda: add_to_index(world_copy(world, tmp_path), gallery, device="cpu")):
        with pytest.raises(MarkguardError, match="links outside the gallery"):
            call()
    assert not (tmp_path / "idx").exists()


def world_copy(world, tmp_path):
    idx = tmp_path / "copy"
    if not idx.exists():
        shutil.copytree(world.index, idx)
    return idx


def test_names_that_are_not_utf8_are_skipped_and_named(world, tmp_path, capfd):
    gallery = tmp_path / "gallery"
    shutil.copytree(world.gallery, gallery)
    mark = next((gallery / "brand001").iterdir())
    bad_brand = os.path.join(os.fsencode(gallery), b"caf\xe9")
    os.mkdir(bad_brand)
    shutil.copy(mark, os.path.join(bad_brand, b"logo.png"))
    shutil.copy(mark, os.path.join(os.fsencode(gallery / "brand000"), b"m\xff.png"))
    info = build_index(gallery, tmp_path / "idx", model=world.model, device="cpu", check=True)
    assert info["ntotal"] == 3
    err = capfd.readouterr().err
    assert "caf\\xe9" in err and "m\\xff.png" in err and "not valid UTF-8" in err and "Traceback" not in err
    assert {r.brand for r in MarkIndex.load(tmp_path / "idx").records()} == {"brand000", "brand001", "brand002"}


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
    added = add_to_index(idx, world.gallery, device="cpu")
    assert added["added"] == 1
    if importlib.util.find_spec("cv2") is not None:  # OpenCV installed: only the added reference is checked for its keypoints
        assert added["verify_cache"]["references"] == 1
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


# --------------------------------------------------------------------------- one writer per index

SLOW_ADD = """
import json, os, sys, time
import markguard.infer.build as b
embed = b.embed_marks
def slow(*a, **k):
    print("embedding", flush=True)
    go = time.monotonic() + 400
    while not os.path.exists(sys.argv[3]) and time.monotonic() < go:  # the test says when the other writer has run
        time.sleep(0.05)
    return embed(*a, **k)
b.embed_marks = slow
print(json.dumps(b.add_to_index(sys.argv[1], sys.argv[2], device="cpu")), flush=True)
"""

CLI = "import sys; from markguard.cli import main; sys.exit(main(sys.argv[1:]))"


def test_remove_while_add_embeds_is_refused_never_lost(world, tmp_path):
    """Two real processes: `index add` holds the index while it embeds; a `remove` meanwhile is refused in one
    line naming the holder, and the add's save keeps everything; nothing acknowledged is undone."""
    idx = tmp_path / "idx"
    build_index(world.gallery, idx, model=world.model, device="cpu")
    remove_from_index(idx, brand="brand002")  # for the add to bring back
    adder = subprocess.Popen([sys.executable, "-c", SLOW_ADD, str(idx), str(world.gallery), str(tmp_path / "go")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert adder.stdout.readline().strip() == "embedding"
        remover = subprocess.run([sys.executable, "-c", CLI, "index", "remove", str(idx), "--brand", "brand000"],
                                 capture_output=True, text=True, timeout=400)
        (tmp_path / "go").touch()
        out, err = adder.communicate(timeout=400)
    finally:
        adder.kill()
    assert adder.returncode == 0, err
    assert json.loads(out)["added"] == 1
    assert remover.returncode == 2
    lines = remover.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another index writer (pid {adder.pid})" in lines[0] and str(idx) in lines[0], remover.stderr
    # the refused remove changed nothing; the add landed
    assert {r.brand for r in MarkIndex.load(idx).records()} == {"brand000", "brand001", "brand002"}
    assert remove_from_index(idx, brand="brand000")["removed"] == 1  # free again once the add ended
    assert not list(tmp_path.glob(".idx.lock"))


def test_a_killed_saves_temp_folder_is_cleaned_by_the_next_writer(world, tmp_path):
    idx = tmp_path / "idx"
    build_index(world.gallery, idx, model=world.model, device="cpu")
    left = tmp_path / ".idx.tmp-k1ll3d"  # what a save killed before its swap leaves
    left.mkdir()
    (left / "index.faiss").write_bytes(b"half")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    (tmp_path / ".idx.tmp-link").symlink_to(other)  # not a save's folder: left alone, and what it points at too
    remove_from_index(idx, brand="brand002")
    assert not left.exists()
    assert (tmp_path / ".idx.tmp-link").is_symlink() and (other / "keep.txt").exists()


def test_index_ls_lists_brands_and_marks_and_remove_names_what_exists(world, tmp_path, capsys):
    from markguard.cli import main

    idx = world_copy(world, tmp_path)
    assert main(["index", "ls", str(idx)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["brand000", "brand001", "brand002"]
    mark = lines[0].split("\t")[1].split(", ")[0]
    assert main(["index", "ls", str(idx), "--brand", "brand000"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == mark
    # a brand that is not there: the refusal names the ones that are
    assert main(["index", "remove", str(idx), "--brand", "nosuchbrand"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchbrand" in err[0] and "brand000, brand001, brand002" in err[0], err
    assert main(["index", "remove", str(idx), "--brand", "brand000", "--mark", "nosuchmark"]) == 2
    assert f"brand 'brand000' holds marks: {mark}" in capsys.readouterr().err
    # the brand given without --brand: the remove subcommand's usage, not markguard's
    with pytest.raises(SystemExit) as e:
        main(["index", "remove", str(idx), "brand000"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: markguard index remove") and "unrecognized arguments: brand000" in err
    assert {r.brand for r in MarkIndex.load(idx).records()} == {"brand000", "brand001", "brand002"}


HOLD = ("import sys, time; from markguard.infer.index.store import index_writer; "
        "cm = index_writer(sys.argv[1]); cm.__enter__(); print('held', flush=True); time.sleep(600)")


def test_feedback_holds_the_index_writer_lock(world, tmp_path):
    from markguard.infer.feedback import undo_feedback

    idx = world_copy(world, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(idx)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MarkguardError, match=rf"another index writer \(pid {holder.pid}\) is writing here"):
            undo_feedback(idx, "r-nope")
        with pytest.raises(MarkguardError, match=rf"another index writer \(pid {holder.pid}\)"):
            remove_from_index(idx, brand="brand000")
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(MarkguardError, match="no feedback round"):  # free once the holder is gone
        undo_feedback(idx, "r-nope")


def test_kept_embeddings_never_go_through_a_planted_link(tmp_path):
    pytest.importorskip("pyarrow", reason="--keep-embeddings writes parquet")
    from markguard.infer.rematch import EMBEDDINGS, EmbeddingStore

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-000000000005.parquet").write_bytes(b"someone's")
    out = tmp_path / "out"
    out.mkdir()
    (out / EMBEDDINGS).symlink_to(elsewhere)
    with pytest.raises(MarkguardError, match="is a link"):
        EmbeddingStore(out, model="m", dim=8, skip=3)
    assert [p.name for p in elsewhere.iterdir()] == ["part-000000000005.parquet"]
