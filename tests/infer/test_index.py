"""The brand index, checked against numpy brute force (as faiss's own tests check IVF against flat)."""

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pytest

from markguard import fsio
from markguard.errors import MarkguardError
from markguard.infer import index as index_mod
from markguard.infer.index import store as index_store
from markguard.infer.index import IndexKind, MarkIndex, MarkRecord, choose_kind, recall_at_k

DIM = 32
N = 3000
FP = "model-aaaa"
# cheaper training than the defaults: these tests check behaviour, the benchmark checks speed
FAST = {"ivfpq": {"opq_iters": 2, "kmeans_iters": 6}}
KINDS = ["flat", "hnsw", "hnsw_sq8", "ivfpq"]


class Clusters:
    """Clustered unit vectors on a low-dimensional manifold, like embeddings of a few hundred marks."""

    def __init__(self, dim=DIM, n_clusters=60, latent=12, seed=0):
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((n_clusters, latent)) * 2
        self.proj = rng.standard_normal((latent, dim)) / np.sqrt(latent)
        self.dim = dim

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        z = self.centers[rng.integers(len(self.centers), size=n)] + rng.standard_normal((n, self.centers.shape[1]))
        x = z @ self.proj + 0.1 * rng.standard_normal((n, self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CLUSTERS = Clusters()
X = CLUSTERS.sample(N, seed=1)
Q = CLUSTERS.sample(300, seed=2)  # fresh points near the marks, never indexed


def recs(n, start=0):
    return [{"brand": f"b{(start + i) % 5}", "mark": f"m{(start + i) % 40}", "source": f"g/{start + i}.png"}
            for i in range(n)]


def brute(x, ids, q, k):
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), ids[top]


def build(kind, x=X, **kw):
    return MarkIndex.build(x, recs(len(x)), fingerprint=FP, kind=kind, options=FAST.get(kind), **kw)


@pytest.fixture(scope="module")
def built():
    return {kind: build(kind) for kind in KINDS}


# ---- search quality


def test_flat_equals_brute_force(built):
    scores, ids = built["flat"].search(Q, 10)
    want_s, want_i = brute(X, np.arange(N), Q, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_sq8", "ivfpq"])
def test_approximate_recall_and_scores(built, kind):
    idx = built[kind]
    info = idx.info()
    assert info["kind"] == kind and info["recall_at_10"] >= 0.95
    assert set(info["params"]) == {"nprobe" if kind == "ivfpq" else "efSearch"}
    scores, ids = idx.search(Q, 10)
    _, truth = brute(X, np.arange(N), Q, 10)
    assert recall_at_k(ids, truth) >= 0.95
    # scores are cosines of the returned vectors (8-bit copies for ivfpq re-ranking and hnsw_sq8), not PQ estimates
    exact = np.einsum("qkd,qd->qk", X[ids], Q)
    np.testing.assert_allclose(scores, exact, atol=1e-5 if kind == "hnsw" else 0.01)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_recall_helper_counts_overlap():
    truth = np.array([[1, 2, 3, -1]])
    assert recall_at_k(np.array([[3, 9, 1, 8]]), truth) == pytest.approx(2 / 3)


def test_k_larger_than_index_pads_with_minus_one():
    idx = build("flat", X[:5])
    scores, ids = idx.search(X[:2], 8)
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all()
    assert np.isneginf(scores[:, 5:]).all()
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


# ---- ids, add, remove


@pytest.mark.parametrize("kind", KINDS)
def test_add_remove_keep_ids_stable(kind):
    _check_add_remove(build(kind))


def test_ivfpq_8bit_removes_in_place():
    # without fast scan, removal is IVF remove_ids (no tombstones); with it, tombstones (see _IVFPQ.remove)
    idx = MarkIndex.build(X, recs(N), fingerprint=FP, kind="ivfpq", options={**FAST["ivfpq"], "fast_scan": False})
    _check_add_remove(idx)
    assert idx.info()["tombstones"] == 0 and idx.info()["factory"].startswith("OPQ8,IVF76,PQ8x")


def _check_add_remove(idx):
    gone = [r.id for r in idx.records() if r.brand == "b1"]
    assert idx.remove(brand="b1") == len(gone) == N // 5
    assert len(idx) == N - len(gone)
    assert idx.remove(ids=gone[:3]) == 0  # already removed
    assert all(r is None for r in idx.get(gone))
    # the removed vectors themselves as queries: their own ids must never come back
    scores, ids = idx.search(X[gone], 10)
    assert not np.isin(ids, gone).any()
    assert (ids >= 0).all()  # still a full top-10 (hnsw filters tombstones inside the walk)
    assert idx.remove(ids=[N - 1]) == 1  # the highest id: must not be reissued
    new = CLUSTERS.sample(50, seed=9)
    new_ids = idx.add(new, recs(50, start=N))
    assert new_ids == list(range(N, N + 50))
    _, found = idx.search(new, 1)
    assert (found[:, 0] == new_ids).mean() >= 0.95
    assert [r.brand for r in idx.get(new_ids[:3])] == ["b0", "b1", "b2"]
    kept = [i for i in range(N - 1) if i not in set(gone)][:20]
    assert [r.id for r in idx.get(kept)] == kept


def test_remove_filters_combine_and_refuse_everything():
    idx = build("flat", X[:200])
    both = [r.id for r in idx.records() if r.brand == "b2" and r.mark == "m2"]
    assert idx.remove(brand="b2", mark="m2") == len(both) > 0
    assert idx.remove(brand="b3", ids=[0, 3, 8]) == 2  # ids 3 and 8 are brand b3, 0 is b0
    assert idx.remove(ids=np.int64(0)) == 1
    with pytest.raises(MarkguardError, match="refusing"):
        idx.remove()


def test_get_records_order_and_missing():
    idx = build("flat", X[:10])
    got = idx.get([3, -1, 3, 99])
    assert got[0] == got[2] and got[0].id == 3 and got[1] is None and got[3] is None
    assert isinstance(got[0], MarkRecord) and got[0].source == "g/3.png" and got[0].added
    assert [r.id for r in idx.records()] == list(range(10))


def test_bad_input_is_one_line_error():
    idx = build("flat", X[:20])
    for call in (lambda: idx.search(np.ones((2, DIM + 1), np.float32), 3),
                 lambda: idx.add(np.ones((1, DIM + 1), np.float32), recs(1)),
                 lambda: idx.add(X[:1] * 3, recs(1)),
                 lambda: idx.add(X[:2], recs(1)),
                 lambda: idx.add(X[:1], [{"brand": "x"}]),
                 lambda: MarkIndex.build(X[:5], recs(5), fingerprint=FP, kind="annoy")):
        with pytest.raises(MarkguardError) as e:
            call()
        assert "\n" not in str(e.value)
    assert len(idx) == 20 and len(list(idx.records())) == 20  # failed adds left nothing behind


def test_search_from_another_thread():
    idx = build("flat", X[:100])
    with ThreadPoolExecutor(1) as pool:
        _, ids = pool.submit(idx.search, X[:4], 1).result()
        assert pool.submit(idx.get, ids[:, 0]).result()[0].id == 0


# ---- choosing a kind


def test_auto_choice():
    assert choose_kind(10_000, 256) is IndexKind.FLAT
    assert choose_kind(1_000_000, 256) is IndexKind.HNSW
    assert choose_kind(1_000_000, 256, memory_budget_mb=4096) is IndexKind.HNSW
    assert choose_kind(1_000_000, 256, memory_budget_mb=1024) is IndexKind.HNSW_SQ8  # raw vectors alone are 1 GB
    assert choose_kind(1_000_000, 256, memory_budget_mb=400) is IndexKind.IVFPQ
    assert choose_kind(40_000, 256, memory_budget_mb=15) is IndexKind.IVFPQ
    with pytest.raises(MarkguardError, match="budget"):
        choose_kind(1_000_000, 256, memory_budget_mb=50)
    assert build("auto").kind is IndexKind.FLAT


def test_kind_names_and_options():
    assert IndexKind.named("HNSW") is IndexKind.HNSW and IndexKind.labels() == KINDS
    assert IndexKind.HNSW.settings({"storage": "SQ8"}) == IndexKind.HNSW_SQ8.value
    assert IndexKind.HNSW.settings({"m": 16}).m == 16
    with pytest.raises(MarkguardError, match="valid"):
        IndexKind.HNSW.settings({"nprobe": 3})
    with pytest.raises(MarkguardError, match="at least"):
        build("ivfpq", X[:500])


# ---- files


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(built, kind, tmp_path):
    idx = built[kind]
    idx.save(tmp_path / "ix")
    back = MarkIndex.load(tmp_path / "ix", expect_fingerprint=FP)
    assert back.info()["params"] == idx.info()["params"] and back.kind is idx.kind and len(back) == N
    for a, b in zip(idx.search(Q, 10), back.search(Q, 10)):
        np.testing.assert_array_equal(a, b)
    assert list(back.records())[:5] == list(idx.records())[:5]
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["count"] == N and meta["fingerprint"] == FP and len(meta["sha256"]["index.faiss"]) == 64
    if kind in ("ivfpq", "hnsw_sq8"):
        assert back.tune(0.9) >= 0.9  # re-tuning after load reads the vectors back from the 8-bit store


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_sq8", "ivfpq"])
def test_removals_survive_save_and_compaction(tmp_path, kind):
    idx = build(kind)
    idx.remove(ids=range(0, 100))
    idx.save(tmp_path / "a")
    a = MarkIndex.load(tmp_path / "a")
    assert a.info()["tombstones"] == 100 and len(a) == N - 100  # 3% dead: kept as tombstones
    assert not np.isin(a.search(X[:100], 10)[1], range(100)).any()
    assert a.add(X[:1], recs(1)) == [N]  # next_id survived
    a.remove(brand="b0")  # now > 20% dead
    a.save(tmp_path / "a")
    b = MarkIndex.load(tmp_path / "a")
    assert b.info()["tombstones"] == 0 and len(b) == len(a) and b.info()["factory"] == idx.info()["factory"]
    keep = [r.id for r in b.records()][:50]
    scores, ids = b.search(X[keep], 1)
    assert (ids[:, 0] == keep).mean() >= 0.95  # ids kept through the rebuild
    before, _ = a.search(X[keep], 1)
    np.testing.assert_allclose(scores, before, atol=1e-6)  # the rebuild re-used the stored vectors as they were


def _saved(tmp_path, n=200):
    idx = build("flat", X[:n])
    idx.save(tmp_path / "ix")
    return tmp_path / "ix"


def test_path_with_odd_characters(tmp_path):
    path = tmp_path / "brand index #2?"  # SQLite URIs treat '#' and '?' specially
    build("flat", X[:20]).save(path)
    assert len(MarkIndex.load(path)) == 20


def _load_error(path, **kw):
    with pytest.raises(MarkguardError) as e:
        MarkIndex.load(path, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_corruption_is_refused(tmp_path):
    path = _saved(tmp_path)
    faiss_file = path / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    msg = _load_error(path)
    assert "index.faiss" in msg and "checksum" in msg and "markguard index build" in msg
    faiss_file.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    assert "checksum" in _load_error(path)


def test_count_mismatch_and_missing_files(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**meta, "count": 199}))
    assert "different saves" in _load_error(path)
    (path / "index.json").write_text(json.dumps(meta))
    MarkIndex.load(path)
    (path / "marks.sqlite").unlink()
    assert "marks.sqlite" in _load_error(path) and "missing" in _load_error(path)
    (path / "index.json").unlink()
    assert "index.json" in _load_error(path)
    assert "no index" in _load_error(tmp_path / "nowhere")


def test_fingerprint_mismatch_is_refused(tmp_path):
    path = _saved(tmp_path)
    msg = _load_error(path, expect_fingerprint="model-bbbb")
    assert str(path) in msg and "model-aaaa" in msg and "model-bbbb" in msg
    assert "markguard index build" in msg and "pass the model that built it" in msg


def test_save_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(MarkguardError, match="not a markguard index"):
        build("flat", X[:10]).save(tmp_path / "photos")


def test_failed_save_keeps_previous_index(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    idx = MarkIndex.load(path)
    idx.add(X[200:210], recs(10, 200))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(index_store, "_write_text", boom)  # dies after index.faiss and marks.sqlite are written
    with pytest.raises(OSError):
        idx.save(path)
    assert len(MarkIndex.load(path)) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # temp dir cleaned up


def test_interrupted_directory_swap_falls_back_to_previous(tmp_path, monkeypatch):
    # without renameat2 the swap is two renames; a crash between them leaves only ``.ix.old``
    path = _saved(tmp_path)
    idx = MarkIndex.load(path)
    idx.add(X[200:210], recs(10, 200))
    monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between moving the old index aside and moving the new one in
        real_rename(src, dst)

    monkeypatch.setattr(fsio.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        idx.save(path)
    monkeypatch.setattr(fsio.os, "rename", real_rename)
    assert not path.exists() and len(MarkIndex.load(path)) == 200
    idx.save(path)  # the next save completes normally
    assert len(MarkIndex.load(path)) == 210


def test_killed_save_keeps_previous_index(tmp_path):
    """A real SIGKILL in the middle of a save, in a child process."""
    path = _saved(tmp_path)
    child = textwrap.dedent(f"""
        import os, signal, numpy as np
        from markguard.infer.index import MarkIndex, store
        idx = MarkIndex.load({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        idx.add(x, [{{"brand": "k", "mark": "k"}}] * len(x))
        store._write_text = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        idx.save({str(path)!r})
    """)
    np.save(tmp_path / "x.npy", X[200:260])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    back = MarkIndex.load(path)
    assert len(back) == 200 and back.get([0])[0].brand == "b0"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "hnsw_sq8"])
def test_memory_estimate_matches_the_built_index(built, kind):
    # auto picks kinds by this estimate, so it must track what the index really takes
    actual = built[kind].info()["memory_bytes"]
    assert abs(index_mod.estimate_bytes(kind, N, DIM) / actual - 1) < 0.25


def test_gpu_search_is_used_for_flat_indexes_and_kept_in_step(monkeypatch):
    # this faiss has no GPUs: an honest message and unchanged CPU search
    idx = build("flat", X[:300])
    if not hasattr(faiss, "StandardGpuResources"):
        assert idx.use_gpu().startswith("CPU search (this faiss has no GPU support")
    # the logic around faiss-gpu, with a stand-in for index_cpu_to_all_gpus that clones on the host
    copies = []

    def fake_to_gpus(index):
        copies.append(faiss.clone_index(index))
        return copies[-1]

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_gpus, raising=False)
    assert build("hnsw", X[:300]).use_gpu().startswith("CPU search (hnsw")
    assert idx.use_gpu() == "GPU search on 2 GPU(s)" and len(copies) == 1
    q = X[:5]
    s0, i0 = idx.search(q, 3)
    assert (i0[:, 0] == np.arange(5)).all()
    idx.remove(ids=[0, 1])  # the GPU copy follows every change
    assert len(copies) == 2 and copies[-1].ntotal == 298
    s1, i1 = idx.search(q, 3)
    assert 0 not in i1 and 1 not in i1 and (i1[2:, 0] == np.arange(2, 5)).all()


# ---- the application's metadata rides in the same save; readers see one save


def test_meta_is_saved_inside_the_swap_and_checked(tmp_path):
    idx = build("flat", X[:50])
    idx.meta = {"model": None, "brands": {"b0": {"authorized_sellers": ["s1"]}}}
    idx.save(tmp_path / "ix")
    header = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert "markguard.json" in header["sha256"] and header["save_id"]
    back = MarkIndex.load(tmp_path / "ix")
    assert back.meta == idx.meta and back.save_id == header["save_id"] == idx.save_id
    (tmp_path / "ix" / "markguard.json").write_text("{}")  # emptied by hand: no longer this save's metadata
    assert "markguard.json" in _load_error(tmp_path / "ix") and "checksum" in _load_error(tmp_path / "ix")


def test_index_without_meta_is_refused_by_the_application(tmp_path):
    build("flat", X[:20]).save(tmp_path / "ix")
    back = MarkIndex.load(tmp_path / "ix")
    assert back.meta is None
    with pytest.raises(MarkguardError) as e:
        back.require_meta()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "ix") in msg and "markguard.json" in msg and "index build" in msg


def test_kill_right_after_the_swap_keeps_the_meta(tmp_path, monkeypatch):
    # before, the metadata was written after the swap: a kill here left an index with none
    idx = build("flat", X[:50])
    idx.meta = {"brands": {"b0": {}}, "model": None}
    idx.save(tmp_path / "ix")
    idx.add(X[50:60], recs(10, 50))
    idx.meta = {"brands": {"b0": {}, "b1": {}}, "model": None}
    real = index_store.swap_in_folder

    def swap_then_die(tmp, path):
        real(tmp, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(index_store, "swap_in_folder", swap_then_die)
    with pytest.raises(KeyboardInterrupt):
        idx.save(tmp_path / "ix")
    back = MarkIndex.load(tmp_path / "ix")
    assert len(back) == 60 and back.require_meta()["brands"] == {"b0": {}, "b1": {}}


def test_loads_during_repeated_saves_see_one_whole_save(tmp_path):
    """Another process saves the folder again and again (as `index add`/`remove` do) while this one loads it:
    every load must see the vectors, records and metadata of one save."""
    path = tmp_path / "ix"
    idx = build("flat", X[:100])
    idx.meta = {"n": 100}
    idx.save(path)
    np.save(tmp_path / "x.npy", X[100:140])
    child = textwrap.dedent(f"""
        import sys, time, numpy as np
        from markguard.infer.index import MarkIndex
        idx = MarkIndex.load({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        t0, saves = time.monotonic(), 0
        while time.monotonic() - t0 < 4.0:
            n = 100 + 1 + saves % 40
            if len(idx) < n:
                idx.add(x[len(idx) - 100:n - 100], [{{"brand": "k", "mark": f"m{{i}}"}} for i in range(len(idx), n)])
            else:
                idx.remove(ids=list(range(n, len(idx) + 1000)))
            idx.meta = {{"n": len(idx)}}
            idx.save({str(path)!r})
            saves += 1
        print(saves)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, loads, problems = set(), 0, []
    try:
        while proc.poll() is None:
            try:
                back = MarkIndex.load(path)
            except MarkguardError as e:
                problems.append(str(e))
                continue
            loads += 1
            seen.add(back.save_id)
            if back.meta is None or back.meta.get("n") != len(back) or len(list(back.records())) != len(back):
                problems.append(f"mixed save: meta {back.meta}, {len(back)} vectors")
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert problems == []
    assert int(out) >= 5 and len(seen) >= 3, (out, len(seen), loads)  # the loads really overlapped saves


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_search_survives_faiss_torch_utils(kind):
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces Index.search without ``params``."""
    import faiss.contrib.torch_utils  # noqa: F401  (the replacement is global, as in a process that evaluated a model)

    idx = build(kind)
    scores, ids = idx.search(Q, 10)
    _, truth = brute(X, np.arange(N), Q, 10)
    assert recall_at_k(ids, truth) >= 0.9


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": 1, "count": ' + "9" * 100_000 + "}"])
def test_hostile_index_metadata_is_one_bounded_line(tmp_path, text):
    path = _saved(tmp_path)
    (path / "index.json").write_text(text)
    msg = _load_error(path)
    assert "\n" not in msg and "index.json" in msg and "markguard index build" in msg and len(msg) < len(str(path)) + 400, msg[:500]


def test_a_save_keeps_the_files_calibrate_puts_in_the_index_folder(tmp_path):
    path = _saved(tmp_path)
    (path / "thresholds.json").write_text('{"flag": 0.7}')
    (path / "combiner.json").write_text("{}")
    (tmp_path / "secret").write_text("not the index's")
    (path / "linked.json").symlink_to(tmp_path / "secret")
    index = MarkIndex.load(path)
    index.remove(ids=[next(index.records()).id])
    index.save(path)
    assert (path / "thresholds.json").read_text() == '{"flag": 0.7}' and (path / "combiner.json").exists()
    assert not (path / "linked.json").exists()  # links are not carried: nothing is read through one
    assert len(MarkIndex.load(path)) == len(index)
