"""Rematch: a scan's stored region embeddings searched against an index that gained a brand find exactly the new
flags a rescan finds, without decoding a photo; bad input is refused in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from markguard.errors import MarkguardError
from markguard.infer.build import add_to_index, build_index
from markguard.infer.rematch import EMBEDDINGS, StoredEmbeddings, rematch
from markguard.infer.scan import ScanOptions, run_scan
from test_scan import make_model, make_world, read_rows  # sibling module: pytest puts tests/infer on sys.path

pytest.importorskip("pyarrow", reason="--keep-embeddings writes parquet (pip install 'markguard[parquet]')")

OPTS = ScanOptions(batch_size=4, workers=1, device="cpu", verify=False, ocr=False, combiner=None)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A scan with kept embeddings against an index missing one brand, that brand added since, and a rescan."""
    root = tmp_path_factory.mktemp("rematch")
    w = make_world(root / "world", listings=24, hostile=True, seed=3)
    brands = sorted(p.name for p in w.gallery.iterdir() if p.is_dir())
    new = brands[0]
    old_gallery, new_gallery = root / "old-gallery", root / "new-gallery"
    shutil.copytree(w.gallery, old_gallery)
    shutil.rmtree(old_gallery / new)
    (old_gallery / "brands.yaml").unlink(missing_ok=True)  # it names every brand
    new_gallery.mkdir()
    shutil.copytree(w.gallery / new, new_gallery / new)
    index = root / "index"
    build_index(old_gallery, index, model=w.model, device="cpu")
    # thresholds where this random model's matches of the new brand flag: its best scores in a scan of the whole gallery
    probe = root / "probe"
    run_scan(w.dump, [w.index], probe, opts=OPTS, progress=False)
    scores = sorted(m["score"] for r in read_rows(probe) for m in r["matches"] if m["brand"] == new)
    assert len(scores) >= 4, "the fixture needs matches of the brand that joins later"
    opts = replace(OPTS, flag=scores[len(scores) // 2], review=scores[len(scores) // 4])
    before = root / "before"
    run_scan(w.dump, [index], before, opts=replace(opts, keep_embeddings="fp16"), progress=False)
    add_to_index(index, new_gallery, device="cpu")
    after = root / "after"
    run_scan(w.dump, [index], after, opts=opts, progress=False)
    return w, index, before, after, new


def decided(r: dict) -> tuple:
    return r["status"], r["brand"], r["mark"]


def test_rematch_finds_exactly_the_new_flags_a_rescan_finds(grown):
    w, index, before, after, new = grown
    old, fresh = read_rows(before), read_rows(after)
    expected = {r["listing_id"]: decided(r) for r, o in zip(fresh, old) if decided(r) != decided(o)}
    assert any(s == "flag" for s, _, _ in expected.values()), "the fixture must gain flags"
    assert all(b == new for _, b, _ in expected.values())
    result = rematch(before, [index])
    got = {r.listing_id: (r.status, r.brand, r.mark) for r in result["rows"]}
    assert got == expected
    written = [json.loads(x) for x in (before / "rematch.jsonl").read_text().splitlines()]
    assert {r["listing_id"]: decided(r) for r in written} == expected
    assert result["photos"] == sum(r["status"] != "error" for r in old)  # every scanned photo, none decoded again
    by_id = {r["listing_id"]: r for r in fresh}
    for r in written:  # same scores as the rescan, up to float16 storage
        assert r["score"] == pytest.approx(by_id[r["listing_id"]]["score"], abs=2e-3)


def test_stored_embeddings_are_the_searched_regions(grown):
    w, index, before, after, new = grown
    stored = StoredEmbeddings(before)
    photos = list(stored.photos())
    rows = read_rows(before)
    assert [p.row for p in photos] == [i for i, r in enumerate(rows) if r["status"] != "error"]
    for p in photos:
        assert p.listing_id == rows[p.row]["listing_id"]
        (k,) = p.regions
        assert k.vectors.shape[1] == stored.dim and len(k.vectors) == len(k.boxes) > 0
        assert np.allclose(np.linalg.norm(k.vectors, axis=1), 1, atol=1e-2)


def test_pq_store_is_compact_and_decodes_close(grown, tmp_path):
    w, index, before, after, new = grown
    out = tmp_path / "pq"
    run_scan(w.dump, [index], out, opts=replace(OPTS, keep_embeddings="pq"), progress=False)
    fp16, pq = StoredEmbeddings(before), StoredEmbeddings(out)
    a = {p.row: p.regions[0].vectors for p in fp16.photos()}
    b = {p.row: p.regions[0].vectors for p in pq.photos()}
    assert a.keys() == b.keys()
    cos = np.concatenate([(a[k] * b[k]).sum(1) / np.linalg.norm(b[k], axis=1) for k in a])
    assert np.median(cos) > 0.8  # a 32-byte code keeps most of a 32-dim vector's direction
    assert pq.bytes_on_disk() < fp16.bytes_on_disk()


def test_rematch_refuses_output_without_embeddings(grown):
    w, index, before, after, new = grown
    with pytest.raises(MarkguardError, match="scanned without --keep-embeddings"):
        rematch(after, [index])


def test_rematch_refuses_another_model(grown, tmp_path):
    w, index, before, after, new = grown
    other_model = make_model(tmp_path / "other-model", seed=7)
    other = tmp_path / "other-index"
    build_index(w.gallery, other, model=other_model, device="cpu")
    with pytest.raises(MarkguardError, match="embedded by model .* but index .* was built by"):
        rematch(before, [other])


def test_cli_rematch_one_line(grown, capsys):
    from markguard.cli import main

    w, index, before, after, new = grown
    assert main(["rematch", str(after), "-i", str(index)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-embeddings" in err[0]
    assert main(["rematch", str(before), "-i", str(index)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] >= 1
