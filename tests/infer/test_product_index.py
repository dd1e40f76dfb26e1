"""Product indexes: whole catalogue photos as references (a product model's card), beside a logo index in one scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from markguard.checkpoint import NAMED_MODELS, ModelCard, create_model, load_card, model_kind, resolve_model_dir, save_checkpoint
from markguard.errors import MarkguardError
from markguard.infer.build import build_index, read_index_meta
from markguard.infer.scan import ScanOptions, run_scan
from markguard.infer.searchers import load_searchers


def tiny_model(out: Path, *, product: bool, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    regions = {"mode": "grid", "scales": [1.0, 0.5], "overlap": 0.5}
    if product:
        regions["product"] = True
    card = ModelCard(backbone="resnet10t", dim=16, input_size=48, scan_size=64, output_stride=32, regions=regions,
                     thresholds={"flag": 0.9, "review": 0.8, "per_brand": {}})
    save_checkpoint(create_model(card), card, out)
    return out


def write_photo(path: Path, seed: int, size=(120, 90)) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1] // 15, size[0] // 15, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).resize(size, Image.BILINEAR).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    for i, brand in enumerate(["acme", "acme", "zeta"]):
        write_photo(root / "catalogue" / brand / f"shot{i}.jpg", seed=i)
    product = tiny_model(root / "product-model", product=True)
    logo = tiny_model(root / "logo-model", product=False, seed=1)
    build_index(root / "catalogue", root / "products", model=product, kind="flat", device="cpu")
    (root / "marks" / "acme").mkdir(parents=True)
    from PIL import ImageDraw

    mark = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(mark).ellipse((8, 8, 56, 56), fill=(200, 30, 30, 255), outline=(20, 20, 120, 255), width=6)
    mark.save(root / "marks" / "acme" / "logo.png")
    build_index(root / "marks", root / "logos", model=logo, kind="flat", device="cpu")
    return root


def test_shipped_models_by_name():
    assert resolve_model_dir("logo") == NAMED_MODELS["logo"]
    card = load_card(resolve_model_dir("logo"))
    assert model_kind(card) == "logo"
    if not (NAMED_MODELS["product"] / "model.safetensors").exists():
        pytest.skip("the product model is not shipped in this checkout (markguard/weights/product)")
    from markguard.checkpoint import load_checkpoint

    model, card = load_checkpoint("product")
    assert model_kind(card) == "product" and card.training["task"] == "copydetect"
    assert (NAMED_MODELS["product"] / "model.safetensors").stat().st_size <= 25 * 1024 * 1024


def test_unknown_name_says_what_is_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MarkguardError, match=r"no model.safetensors here; pass a checkpoint folder .* \(logo, product\)"):
        resolve_model_dir("products")


def test_product_index_holds_whole_catalogue_photos(shop):
    meta = read_index_meta(shop / "products")
    assert meta["model_kind"] == "product"
    from markguard.infer.index import MarkIndex

    recs = sorted((r.brand, r.mark) for r in MarkIndex.load(shop / "products").records())
    assert recs == [("acme", "shot0"), ("acme", "shot1"), ("zeta", "shot2")]


def test_undecodable_catalogue_photo_is_named(shop, tmp_path, capsys):
    cat = tmp_path / "catalogue"
    shutil.copytree(shop / "catalogue", cat)
    (cat / "zeta" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(MarkguardError) as e:  # `markguard index build` checks the gallery: refused, the file named
        build_index(cat, tmp_path / "idx", model=shop / "product-model", kind="flat", device="cpu", check=True)
    assert "broken.jpg" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "idx" / "markguard.json").exists()
    # without the check (a library caller's choice) it is skipped and named with its reason, never silently
    info = build_index(cat, tmp_path / "idx2", model=shop / "product-model", kind="flat", device="cpu")
    assert info["skipped"] == 1 and f"skipped catalogue photo {cat / 'zeta' / 'broken.jpg'}:" in capsys.readouterr().err
    # a photo the check passes but decoding at the scan size refuses is named with its reason, never skipped silently
    from markguard.datasets.registry import MarkRef
    from markguard.infer.build import embed_catalogue
    from markguard.checkpoint import load_checkpoint

    net, card = load_checkpoint(shop / "product-model")
    emb = embed_catalogue([MarkRef("zeta", "broken", cat / "zeta" / "broken.jpg"), MarkRef("zeta", "shot2", cat / "zeta" / "shot2.jpg")], net, card)
    assert [r["mark"] for r in emb.records] == ["shot2"] and emb.errors[0][0].endswith("broken.jpg") and emb.errors[0][1]


def test_index_and_model_of_different_kinds_refused(shop):
    with pytest.raises(MarkguardError, match=r"a product index \(built with the .*product-model model\) cannot be searched with the logo model") as e:
        load_searchers([shop / "products"], shop / "logo-model", "cpu")
    assert "\n" not in str(e.value) and "logo-model" in str(e.value) and str(shop / "products") in str(e.value)  # one line, both models
    with pytest.raises(MarkguardError, match=r"a logo index .* cannot be searched with the product model") as e:
        load_searchers([shop / "logos"], shop / "product-model", "cpu")
    assert "\n" not in str(e.value) and "logo-model" in str(e.value) and "product-model" in str(e.value)


def test_mixed_scan_one_row_per_photo_naming_the_index(shop, tmp_path):
    listings = tmp_path / "dump"
    listings.mkdir()
    shutil.copy(shop / "catalogue" / "zeta" / "shot2.jpg", listings / "copy.jpg")  # a reused catalogue photo
    img = Image.open(shop / "catalogue" / "acme" / "shot0.jpg")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(listings / "mirrored.jpg")
    write_photo(listings / "other.jpg", seed=99)
    out = tmp_path / "out"
    run_scan(listings, [shop / "logos", shop / "products"], out, opts=ScanOptions(batch_size=2, workers=1, device="cpu"), progress=False)
    rows = {r["image"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == ["copy.jpg", "mirrored.jpg", "other.jpg"]
    indexes = {m.get("index") for r in rows.values() for m in r["matches"]}
    assert indexes <= {"logos", "products"} and "products" in indexes
    best = rows["copy.jpg"]["matches"][0]
    assert best["index"] == "products" and best["mark"] == "shot2" and best["score"] > 0.99  # the same photo, the same vector


def test_mixed_scan_with_the_logo_models_combiner(shop, tmp_path):
    """The logo model's combiner scores the logo index's matches; the product index beside it is judged on its own
    model's similarity thresholds (its card's), and its matches carry no combiner probability."""
    from markguard.checkpoint import load_card
    from markguard.infer.combine import Combiner

    logos = tmp_path / "logos"
    shutil.copytree(shop / "logos", logos)
    fp = load_card(shop / "logo-model").fingerprint
    Combiner(["similarity"], [4.0, 0.0], -1.0, [1.0, 0.5], [1.0, 0.2], fp, thresholds={"flag": 0.9, "review": 0.5}).save(logos)
    listings = tmp_path / "dump"
    listings.mkdir()
    shutil.copy(shop / "catalogue" / "zeta" / "shot2.jpg", listings / "copy.jpg")
    write_photo(listings / "other.jpg", seed=99)
    out = tmp_path / "out"
    run_scan(listings, [logos, shop / "products"], out, opts=ScanOptions(batch_size=2, workers=1, device="cpu", verify=False), progress=False)
    rows = {r["image"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    best = rows["copy.jpg"]["matches"][0]
    assert rows["copy.jpg"]["status"] == "flag" and best["index"] == "products" and best["mark"] == "shot2"
    assert best.get("probability") is None  # the product index is judged on similarity (its card: flag 0.9)
    logo_matches = [m for r in rows.values() for m in r["matches"] if m["index"] == "logos"]
    assert all(m.get("probability") is not None for m in logo_matches)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"]["combined_indexes"] == ["logos"] and summary["policy"]["per_index"]["products"] == {"flag": 0.9, "review": 0.8}
    # the same scan, product index first: the combiner is still the logo index's
    run_scan(listings, [shop / "products", logos], tmp_path / "out2", opts=ScanOptions(batch_size=2, workers=1, device="cpu", verify=False), progress=False)
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["policy"]["combined_indexes"] == ["logos"]
