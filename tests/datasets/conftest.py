"""Fixtures for the decoding and listing-dump tests: a dump full of hostile files, written fresh per test."""

from __future__ import annotations

import csv
import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SENTINEL = b"SENTINEL-OUTSIDE-THE-ROOT"
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


class Make:
    """Builders for small test images (bytes or PIL images); the ``make`` fixture hands this class out."""

    @staticmethod
    def jpeg(img: Image.Image, **kwargs) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, **kwargs)
        return buf.getvalue()

    @staticmethod
    def png(img: Image.Image, **kwargs) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG", **kwargs)
        return buf.getvalue()

    @staticmethod
    def webp(img: Image.Image, **kwargs) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "WEBP", **kwargs)
        return buf.getvalue()

    @staticmethod
    def png_header_bomb(width: int, height: int) -> bytes:
        """A ~100-byte PNG whose header claims width x height; its pixel data is far too short to decode."""
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")

    @staticmethod
    def png_bad_crc() -> bytes:
        """A valid 20x10 PNG whose IDAT checksum is flipped (Pillow would otherwise decode it silently)."""
        data = bytearray(Make.png(Image.new("RGB", (20, 10), RED)))
        at = data.find(b"IDAT")
        (length,) = struct.unpack(">I", data[at - 4 : at])
        data[at + 4 + length] ^= 0xFF
        return bytes(data)

    @staticmethod
    def photo(size=(64, 48), seed=0) -> Image.Image:
        """A small photo-like RGB image (gradient plus noise)."""
        w, h = size
        rng = np.random.default_rng(seed)
        x = np.linspace(0, 255, w)[None, :, None]
        y = np.linspace(0, 255, h)[:, None, None]
        a = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2) + rng.normal(0, 8, (h, w, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    @staticmethod
    def exif6_jpeg() -> bytes:
        """400x200 stored (left half red, right half blue) with EXIF orientation 6: shown 200x400, red on top."""
        img = Image.new("RGB", (400, 200), RED)
        img.paste(BLUE, (200, 0, 400, 200))
        exif = Image.Exif()
        exif[0x0112] = 6
        return Make.jpeg(img, exif=exif.tobytes())

    @staticmethod
    def animated_gif() -> bytes:
        frames = [Image.new("P", (8, 8), i) for i in range(2)]
        for f in frames:
            f.putpalette([*RED, *BLUE] + [0] * 762)
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        return buf.getvalue()

    @staticmethod
    def p_transparent_png() -> bytes:
        """Palette image: index 0 is transparent, pixel (1, 1) is opaque red."""
        img = Image.new("P", (4, 4), 0)
        img.putpalette([0, 0, 0, *RED] + [0] * 762)
        img.putpixel((1, 1), 1)
        return Make.png(img, transparency=0)

    @staticmethod
    def la_png() -> bytes:
        """Grayscale+alpha: fully transparent black everywhere except an opaque black pixel at (1, 1)."""
        img = Image.new("LA", (4, 4), (0, 0))
        img.putpixel((1, 1), (0, 255))
        return Make.png(img)

    @staticmethod
    def gray16_png() -> bytes:
        """16-bit grayscale row 0, 32768, 65535 (Pillow's plain convert would clip the middle to 255)."""
        return Make.png(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)))


HOSTILE_FILES = {
    "good.jpg": lambda: Make.jpeg(Make.photo()),
    "truncated.jpg": lambda: Make.jpeg(Make.photo((160, 120)))[:1500],
    "bad_crc.png": Make.png_bad_crc,
    "empty.jpg": lambda: b"",
    "text.jpg": lambda: b"this is a product description, not a photo\n",
    "bomb.png": lambda: Make.png_header_bomb(30000, 30000),
    "one_pixel.png": lambda: Make.png(Image.new("RGB", (1, 1), (9, 9, 9))),
    "cmyk.jpg": lambda: Make.jpeg(Image.new("CMYK", (16, 16), (255, 0, 0, 0))),  # pure cyan ink
    "gray16.png": Make.gray16_png,
    "animated.gif": Make.animated_gif,
    "p_transparent.png": Make.p_transparent_png,
    "la.png": Make.la_png,
    "exif6.jpg": Make.exif6_jpeg,
    "bilevel.png": lambda: Make.png(Image.new("1", (5, 5), 1)),
    "sub/nested.png": lambda: Make.png(Image.new("RGB", (8, 8), BLUE)),
    "notes.txt": lambda: b"not a photo, skipped by extension\n",
    ".DS_Store": lambda: b"\0\0\0\1Bud1",
    "._good.jpg": lambda: b"\0\5\x16\7 macOS resource fork",
}


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **attrs) -> None:
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def write_hostile_shards(folder: Path) -> list[Path]:
    """Two webdataset shards; the first mixes good samples with every kind of member that must be refused."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Make.jpeg(Make.photo(seed=1))
    shard0, shard1 = folder / "hostile-000.tar", folder / "hostile-001.tar"
    with tarfile.open(shard0, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, "000001.jpg", good)
        _tar_add(tf, "000001.json", b'{"listing_id": "L1", "seller_id": "S1", "title": "genuine?"}')
        _tar_add(tf, "000002.png", Make.png(Image.new("RGB", (4, 4), RED)))  # no metadata: listing_id = key
        _tar_add(tf, "../x.jpg", good)
        _tar_add(tf, "/etc/x.jpg", good)
        _tar_add(tf, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_add(tf, "hard.jpg", type=tarfile.LNKTYPE, linkname="000001.jpg")
        _tar_add(tf, "dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _tar_add(tf, "000003.json", b'{"listing_id": "L3"}')  # metadata but no image
        _tar_add(tf, "000004.json", b"{not json")
        _tar_add(tf, "000004.jpg", good)
        _tar_add(tf, "._000001.jpg", b"resource fork")  # hidden: skipped
        _tar_add(tf, "000005.txt", b"unknown extensions are ignored")
    with tarfile.open(shard1, "w") as tf:
        _tar_add(tf, "000006.webp", Make.webp(Image.new("RGB", (4, 4), BLUE)))
        _tar_add(tf, "000006.json", b'{"listing_id": "L1", "seller_id": "S1"}')  # same listing, second photo
    return [shard0, shard1]


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    """A listing dump (returned) full of hostile files, with its neighbours under ``tmp_path``.

    * ``<root>/``: the files in HOSTILE_FILES, a FIFO named ``fifo.jpg``, links ``link_out.jpg``
      (to a file outside), ``link_in.jpg`` (to good.jpg), ``dangling.jpg``, ``dir_out`` (a folder
      outside), and ``manifest.csv`` with hostile image_path rows;
    * ``tmp_path/outside/``: files whose bytes contain SENTINEL; nothing may ever read them;
    * ``tmp_path/shards/hostile-00{0,1}.tar``: see write_hostile_shards.
    """
    root, outside = tmp_path / "dump", tmp_path / "outside"
    (outside / "secret_dir").mkdir(parents=True)
    secret = Make.jpeg(Make.photo(seed=9), comment=SENTINEL)
    (outside / "secret.jpg").write_bytes(secret)
    (outside / "secret_dir" / "inner.jpg").write_bytes(secret)
    for name, make in HOSTILE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(make())
    os.mkfifo(root / "fifo.jpg")  # reading it would block the scan forever
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "link_in.jpg").symlink_to("good.jpg")
    (root / "dangling.jpg").symlink_to("nowhere.jpg")
    (root / "dir_out").symlink_to(outside / "secret_dir", target_is_directory=True)
    rows = [
        ("L-good", "good.jpg", "S1", "genuine bag"),
        ("L-good", "cmyk.jpg", "S1", "genuine bag"),  # a listing with two photos
        ("L-sub", "sub/nested.png", "", ""),
        ("L-abs-in", str(root / "one_pixel.png"), "S2", ""),
        ("L-up", "../../etc/passwd", "S3", ""),
        ("L-abs-out", str(outside / "secret.jpg"), "S3", ""),
        ("L-link-out", "link_out.jpg", "S3", ""),
        ("L-missing", "missing.jpg", "S4", ""),
        ("L-fifo", "fifo.jpg", "S4", ""),
        ("L-no-path", "", "S4", ""),
    ]
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "image_path", "seller_id", "title"])
        w.writerows(rows)
    write_hostile_shards(tmp_path / "shards")
    return root


@pytest.fixture
def make() -> type[Make]:
    """The image builders, for tests that need their own variants (conftest modules are not imported)."""
    return Make
