"""JPEGs decoded in one batched torchvision.io call on the model's device (nvJPEG on a GPU; here the CPU):
the same photos, boxes and error rows as the Pillow path in the loader workers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from markguard.datasets.listings import ListingItem
from markguard.infer.decode import decode_items, finish_decode
from markguard.infer.scan import ScanOptions, resolve_decode, run_scan
from markguard.model import compile_backbone
from test_scan import OPTS, read_rows, scanned, world  # noqa: F401, F811  (fixtures)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _jpeg(w: int, h: int, orientation: int = 1, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    arr[h // 4 : h // 2, w // 5 : w // 2] = rng.integers(0, 255, 3)  # an off-centre block: orientation shows
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _items(datas: list[bytes]) -> list[ListingItem]:
    return [ListingItem(i, f"L{i}", f"{i}.jpg", data=d) for i, d in enumerate(datas)]


def test_device_decode_matches_pillow_for_every_orientation_and_mode():
    datas = [_jpeg(120, 80, o) for o in range(1, 9)] + [_jpeg(90, 60, mode="L"), _jpeg(64, 96, mode="CMYK")]
    cpu = decode_items(_items(datas), size=64, mean=MEAN, std=STD)
    dev = decode_items(_items(datas), size=64, mean=MEAN, std=STD, device_jpeg=True)
    assert [p.pos for p in dev.pending] == list(range(9))  # CMYK stays on the Pillow path
    finish_decode(dev, size=64, device="cpu")
    assert dev.pending == [] and dev.ok == cpu.ok == list(range(10)) and not dev.errors
    assert dev.valid == cpu.valid and dev.orig_size == cpu.orig_size
    for (a, b), (c, d) in zip(dev.to_orig, cpu.to_orig):
        assert a == pytest.approx(c, rel=1e-6) and b == pytest.approx(d, rel=1e-6)
    for i in range(10):
        w, h = dev.valid[i]
        diff = (dev.x[i, :, :h, :w] - cpu.x[i, :, :h, :w]).abs().mean().item()
        assert diff < 0.08, (i, diff)  # the same picture, resampled slightly differently
        other = (dev.x[i, :, :h, :w] - cpu.x[(i + 1) % 8, :, :h, :w]).abs().mean().item() if dev.valid[(i + 1) % 8] == (w, h) else 1.0
        assert diff < other  # and not merely a similar one: a different orientation is further away
        assert dev.x[i, :, h:, :].abs().sum() == 0 and dev.x[i, :, :, w:].abs().sum() == 0  # padding is the mean colour


def test_device_decode_gives_the_pillow_error_rows():
    good = _jpeg(64, 48)
    cut = good[: len(good) // 2]
    datas = [good, cut, b"", b"not an image at all", _jpeg(10, 10), good + b"trailing"]
    cpu = decode_items(_items(datas), size=32, mean=MEAN, std=STD)
    dev = decode_items(_items(datas), size=32, mean=MEAN, std=STD, device_jpeg=True)
    finish_decode(dev, size=32, device="cpu")
    assert dev.errors == cpu.errors and set(cpu.errors) == {1, 2, 3, 4}
    assert dev.ok == cpu.ok == [0, 5]


def test_scan_with_device_decode_matches_the_cpu_scan(world, scanned, tmp_path):
    assert resolve_decode("auto", "cpu") == "cpu" and resolve_decode("auto", "cuda") == "device"
    out = tmp_path / "dev"
    opts = ScanOptions(batch_size=OPTS.batch_size, workers=1, device="cpu", decode="device")
    summary = run_scan(world.dump, [world.index], out, opts=opts, progress=False)
    assert summary["stage_seconds"]["decode"] > 0
    a, b = read_rows(scanned), read_rows(out)
    assert [(r["listing_id"], r["status"] == "error", r["error"]) for r in a] == [(r["listing_id"], r["status"] == "error", r["error"]) for r in b]
    scores = [(x["score"], y["score"]) for x, y in zip(a, b) if x["score"] is not None]
    assert scores and max(abs(x - y) for x, y in scores) < 0.05


def test_compiled_backbone_gives_the_same_features(world):
    from markguard.checkpoint import load_checkpoint

    model, card = load_checkpoint(world.model)
    x = torch.randn(2, 3, card.scan_size, card.scan_size)
    with torch.no_grad():
        want = model.forward_features(x)
        compile_backbone(model, "eager")  # the plumbing; inductor itself is exercised on the GPU check
        got = model.forward_features(x)
    assert torch.allclose(want, got, atol=1e-5)
