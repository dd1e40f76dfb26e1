"""The Ray Data engine on a local 2-CPU Ray instance gives the local engine's rows, in the same order."""

from __future__ import annotations

import pytest

from markguard.infer.scan import ScanOptions, run_scan
from test_scan import HOSTILE, read_rows, scanned, world  # noqa: F401  (fixtures)

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'markguard[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", object_store_memory=200 * 1024**2)
    yield
    ray.shutdown()


def _same(a: list[dict], b: list[dict]) -> None:
    assert [(r["listing_id"], r["image"], r["status"], r["error"]) for r in a] == [(r["listing_id"], r["image"], r["status"], r["error"]) for r in b]
    for x, y in zip(a, b):
        assert (x["brand"], x["mark"], x["box"]) == (y["brand"], y["mark"], y["box"])
        assert x["score"] == pytest.approx(y["score"], abs=2e-3)
        assert [m["mark"] for m in x["matches"]] == [m["mark"] for m in y["matches"]]


@pytest.mark.slow
def test_ray_engine_matches_local_engine(world, scanned, tmp_path, local_ray):
    out = tmp_path / "ray"
    s = run_scan(world.dump, [world.index], out, opts=ScanOptions(batch_size=4, device="cpu", engine="ray", actors=1), progress=False)
    rows, local = read_rows(out), read_rows(scanned)
    _same(rows, local)
    assert s["counts"]["error"] == len(HOSTILE) and s["options"]["engine"] == "ray"
    assert s["stage_seconds"]["embed"] > 0  # the actors' stage times reach the summary

    # a shard on Ray: the rows of that shard of the local scan; then resumed part-way, still on Ray
    out2 = tmp_path / "ray-shard"
    opts = ScanOptions(batch_size=3, engine="ray", actors=1, shard=(1, 2))
    run_scan(world.dump, [world.index], out2, opts=opts, progress=False)
    _same(read_rows(out2), local[1::2])
    lines = (out2 / "results.jsonl").read_text().splitlines(keepends=True)
    (out2 / "results.jsonl").unlink()
    (out2 / "summary.json").unlink()
    (out2 / "results.jsonl.partial").write_text("".join(lines[:2]) + lines[2][:10])  # two rows and a torn third
    s2 = run_scan(world.dump, [world.index], out2, opts=opts, progress=False, resume=True)
    assert s2["images_this_run"] == len(lines) - 2
    _same(read_rows(out2), local[1::2])


def test_read_task_ranges_of_a_sharded_tar_dump_are_the_shards_rows(tmp_path):
    """What each Ray read task yields: positions a..b of shard i/N, read from only the tar files holding them."""
    import io
    import tarfile

    from markguard.datasets.listings import open_dump, shard
    from markguard.infer.ray_engine import _item_rows

    for s in range(3):  # three shard files of 5 samples each
        with tarfile.open(tmp_path / f"d-{s}.tar", "w") as tf:
            for k in range(5):
                data = f"photo {s}-{k}".encode()
                info = tarfile.TarInfo(f"{s}{k:03d}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    source = str(tmp_path / "d-*.tar")
    for spec in (None, (0, 2), (1, 2), (2, 4)):
        want = list(open_dump(source)) if spec is None else list(shard(open_dump(source), *spec))
        for a, b in [(0, len(want)), (1, 3), (2, len(want) + 2)]:
            got = list(_item_rows(source, spec, a, b))
            # the read task reads its own range's bytes (an uncompressed shard's members are read where they are decoded)
            assert [(r["index"], r["image"], r["data"]) for r in got] == [(it.index, it.image, it.read_bytes()) for it in want[a:b]]


@pytest.mark.slow
def test_ray_actors_decide_on_the_combiner_loaded_once_by_the_driver(world, tmp_path, local_ray):
    from markguard.checkpoint import load_card
    from markguard.infer.combine import Combiner

    # p = sigmoid(200 (similarity - 0.9)): a combiner by hand for the world's model
    path = Combiner(["similarity"], [0.0, 2.0], 0.0, [1.0, 0.9], [1.0, 0.01], load_card(world.model).fingerprint).save(tmp_path / "c.json")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_scan(world.dump, [world.index], local, opts=ScanOptions(batch_size=4, device="cpu", combiner=str(path)), progress=False)
    run_scan(world.dump, [world.index], on_ray, opts=ScanOptions(batch_size=4, device="cpu", engine="ray", actors=1, combiner=str(path)),
             progress=False)
    a, b = read_rows(on_ray), read_rows(local)
    _same(a, b)
    probs = [[m["probability"] for m in r["matches"]] for r in a]
    assert probs == [[m["probability"] for m in r["matches"]] for r in b] and any(probs)
