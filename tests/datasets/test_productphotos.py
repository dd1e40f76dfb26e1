"""The copy-detection trainer's photo collection (datasets/productphotos.py) on a fake unpacked package."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.productphotos import fetch, select, write_photos
from markguard.errors import MarkguardError


def picture(path, seed, size=(300, 240), mode="RGB"):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
    im = Image.fromarray(a).resize(size, Image.BILINEAR)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(np.where(np.arange(size[0])[None, :] < size[0] // 2, 255, 0).astype(np.uint8).repeat(size[1], 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def test_pictures_selected_flattened_and_deduplicated(tmp_path):
    root = tmp_path / "x"
    base = root / "usr/share/tuxpaint/stamps"
    picture(base / "animals/cat.png", 1)
    picture(base / "animals/cat-copy.png", 1)  # the same picture again
    picture(base / "food/apple.png", 2, mode="RGBA")
    picture(base / "food/tiny.png", 3, size=(100, 80))  # too small
    Image.new("RGB", (300, 300), (90, 90, 90)).save(base / "flat.png")  # a flat grey
    picture(base / "icons/logo.png", 4)  # icons are marks
    picture(root / "usr/share/doc/other.png", 5)  # outside the package's picture folders
    files = select(root, "tuxpaint-stamps-default")
    assert sorted(n for _, n in files) == ["stamps__animals__cat-copy.png", "stamps__animals__cat.png", "stamps__food__apple.png",
                                           "stamps__food__tiny.png", "tuxpaint__stamps__flat.png"]
    n = write_photos(files, tmp_path / "out", set())
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert n == 2 and written == ["stamps__animals__cat-copy.jpg", "stamps__food__apple.jpg"]  # sorted: the copy comes first
    apple = np.asarray(Image.open(tmp_path / "out" / "stamps__food__apple.jpg"))
    assert apple.ndim == 3 and apple[:, -20:].min() > 240  # the transparent half flattened on white


def test_reserved_and_unknown_packages_refused(tmp_path):
    with pytest.raises(MarkguardError, match="gnome-backgrounds is reserved"):
        fetch(["gnome-backgrounds"], tmp_path)
    with pytest.raises(MarkguardError, match="opencv-doc: not a package this knows"):
        fetch(["opencv-doc"], tmp_path)
