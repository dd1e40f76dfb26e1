"""Listing-dump readers on hostile dumps: exact error rows, nothing outside the root touched, streaming, sharding."""

from __future__ import annotations

import os
import csv
import io
import json
import sys
import tarfile
import tracemalloc
import types
from pathlib import Path

import pytest
from PIL import Image

from markguard.datasets.listings import (
    ListingItem,
    count_dump,
    expand_braces,
    iter_tar,
    open_dump,
    open_dump_range,
    parse_shard,
    shard,
)
from markguard.errors import DecodeError, MarkguardError

SENTINEL = b"SENTINEL-OUTSIDE-THE-ROOT"  # what hostile_dir writes into every file outside the root


# --- nothing outside the root is touched --------------------------------------------------------------

_touched: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # open: builtins.open / os.open; os.scandir / os.listdir: folders walked
    if _touched is not None and event in ("open", "os.scandir", "os.listdir") and args and args[0] is not None:
        _touched.append(str(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed; it only records while a test switches it on


@pytest.fixture
def touched():
    """Every path opened or listed while the test runs."""
    global _touched
    _touched = []
    yield _touched
    _touched = None


def rows(items) -> list[tuple[str, str, str | None]]:
    return [(it.listing_id, it.image, it.error) for it in items]


def consume(items: list[ListingItem]) -> None:
    """What a scan does with each row: decode it, or keep its error."""
    for it in items:
        try:
            it.decode(target_size=32)
        except DecodeError:
            pass


def assert_outside_untouched(tmp_path: Path, items: list[ListingItem], touched: list[str]) -> None:
    outside = str(tmp_path / "outside")
    assert not [p for p in touched if p.startswith(outside)]
    assert not [p for p in touched if p.startswith("/etc")]
    for it in items:
        assert it.path is None or str(it.path).startswith(str(tmp_path / "dump"))
        assert it.data is None or SENTINEL not in it.data


# --- directory -----------------------------------------------------------------------------------------

DIRECTORY_ROWS = [
    ("animated", "animated.gif", None),
    ("bad_crc", "bad_crc.png", None),
    ("bilevel", "bilevel.png", None),
    ("bomb", "bomb.png", None),
    ("cmyk", "cmyk.jpg", None),
    ("dangling", "dangling.jpg", "file not found"),
    ("empty", "empty.jpg", None),
    ("exif6", "exif6.jpg", None),
    ("fifo", "fifo.jpg", "not a regular file"),
    ("good", "good.jpg", None),
    ("gray16", "gray16.png", None),
    ("la", "la.png", None),
    ("link_in", "link_in.jpg", None),
    ("link_out", "link_out.jpg", "refused: link leaves the dump's root"),
    ("one_pixel", "one_pixel.png", None),
    ("p_transparent", "p_transparent.png", None),
    ("text", "text.jpg", None),
    ("truncated", "truncated.jpg", None),
    ("dir_out", "dir_out", "refused: linked folder leaves the dump's root (not followed)"),
    ("sub/nested", "sub/nested.png", None),
]


def test_directory_rows_are_exact_and_in_a_stable_order(hostile_dir):
    items = list(open_dump(hostile_dir))
    assert rows(items) == DIRECTORY_ROWS  # hidden files and notes.txt are not rows
    assert [it.index for it in items] == list(range(len(items)))
    by_image = {it.image: it for it in items}
    assert by_image["link_in.jpg"].path == (hostile_dir / "good.jpg").resolve()  # a link inside the root is fine
    assert all(it.path is None for it in items if it.error)
    assert rows(open_dump(str(hostile_dir))) == DIRECTORY_ROWS  # same order every time


def test_directory_scan_never_touches_outside_the_root(hostile_dir, tmp_path, touched):
    items = list(open_dump(hostile_dir))
    consume(items)
    assert any(p.endswith("good.jpg") for p in touched)  # the hook does see our reads
    assert_outside_untouched(tmp_path, items, touched)


def test_folder_holding_only_shards_says_what_to_pass(tmp_path, hostile_dir):
    with pytest.raises(MarkguardError, match=r"shards: holds tar shards.*pass '.*shards/\*\.tar'"):
        open_dump(tmp_path / "shards")


# --- manifest ------------------------------------------------------------------------------------------


def manifest_rows(root: Path) -> list[tuple[str, str, str | None]]:
    outside = root.parent / "outside"
    return [
        ("L-good", "good.jpg", None),
        ("L-good", "cmyk.jpg", None),  # two photos of one listing: two rows
        ("L-sub", "sub/nested.png", None),
        ("L-abs-in", str(root / "one_pixel.png"), None),
        ("L-up", "../../etc/passwd", "refused: image_path leaves the manifest's folder"),
        ("L-abs-out", str(outside / "secret.jpg"), "refused: image_path leaves the manifest's folder"),
        ("L-link-out", "link_out.jpg", "refused: image_path leaves the manifest's folder"),
        ("L-missing", "missing.jpg", "file not found"),
        ("L-fifo", "fifo.jpg", "not a regular file"),
        ("L-no-path", "", "missing image_path"),
    ]


def _rewrite(manifest: Path, suffix: str) -> Path:
    """The CSV manifest's rows written as .jsonl or .parquet next to it."""
    with manifest.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    out = manifest.with_suffix(suffix)
    if suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")  # a trailing blank line is fine
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.Table.from_pylist(records), out)
    return out


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_rows_are_exact_in_every_format(hostile_dir, tmp_path, touched, suffix):
    manifest = hostile_dir / "manifest.csv"
    if suffix != ".csv":
        manifest = _rewrite(manifest, suffix)
    items = list(open_dump(manifest))
    assert rows(items) == manifest_rows(hostile_dir)
    good = items[0]
    assert (good.seller_id, good.title, good.path) == ("S1", "genuine bag", (hostile_dir / "good.jpg").resolve())
    assert items[2].seller_id is None and items[2].title is None  # empty cells are missing values
    assert len({it.key for it in items}) == len(items)  # (listing_id, image) identifies a row
    consume(items)
    assert_outside_untouched(tmp_path, items, touched)
    assert count_dump(manifest) == len(items)


@pytest.mark.parametrize(
    "content, match",
    [
        ("listing_id,path\nL1,a.jpg\n", r"bad\.csv: missing column\(s\) image_path; a manifest needs listing_id and image_path"),
        ("id,image_path\n", r"bad\.csv: missing column\(s\) listing_id;"),
        ("\ufeffimage_path\n", r"bad\.csv: missing column\(s\) listing_id;"),  # BOM does not hide a column
    ],
)
def test_manifest_without_required_columns_is_one_clear_error(tmp_path, content, match):
    (tmp_path / "bad.csv").write_text(content, encoding="utf-8")
    with pytest.raises(MarkguardError, match=match) as info:
        list(open_dump(tmp_path / "bad.csv"))
    assert "\n" not in str(info.value)


def test_csv_with_a_byte_order_mark_reads(tmp_path, make):
    (tmp_path / "a.png").write_bytes(make.png(Image.new("RGB", (2, 2))))
    (tmp_path / "m.csv").write_text("\ufefflisting_id,image_path\nL1,a.png\n", encoding="utf-8")
    assert rows(open_dump(tmp_path / "m.csv")) == [("L1", "a.png", None)]


def test_jsonl_manifest_errors_name_the_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"listing_id": "L1", "image_path": "a.jpg"}\n{"listing_id": "L2"}\n')
    with pytest.raises(MarkguardError, match=r"m\.jsonl:2: missing column\(s\) image_path"):
        list(open_dump(tmp_path / "m.jsonl"))
    (tmp_path / "m.jsonl").write_text('{"listing_id": "L1", "image_path": "a.jpg"}\n{oops\n')
    with pytest.raises(MarkguardError, match=r"m\.jsonl:2: not valid JSON"):
        list(open_dump(tmp_path / "m.jsonl"))


def test_unknown_or_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(MarkguardError, match="no such file or folder"):
        open_dump(tmp_path / "nope")
    (tmp_path / "dump.zip").write_bytes(b"PK")
    with pytest.raises(MarkguardError, match="unknown dump format"):
        open_dump(tmp_path / "dump.zip")
    for i in range(3):
        (tmp_path / f"shards-{i:03d}.tar").write_bytes(b"")
    with pytest.raises(MarkguardError, match=r"shards-003\.tar: no such shard \(from pattern .*\); check the range"):
        open_dump(str(tmp_path / "shards-{000..003}.tar"))
    with pytest.raises(MarkguardError, match="matches no tar shard"):
        open_dump(str(tmp_path / "other-*.tar"))


# --- tar shards ----------------------------------------------------------------------------------------

SHARD_ROWS = [
    ("L1", "hostile-000.tar/000001.jpg", None),
    ("000002", "hostile-000.tar/000002.png", None),
    ("../x", "hostile-000.tar/../x.jpg", "refused: '..' in member name"),
    ("/etc/x", "hostile-000.tar//etc/x.jpg", "refused: absolute member name"),
    ("link", "hostile-000.tar/link.jpg", "refused: member is a symbolic link"),
    ("hard", "hostile-000.tar/hard.jpg", "refused: member is a hard link"),
    ("dev", "hostile-000.tar/dev.jpg", "refused: member is a device"),
    ("L3", "hostile-000.tar/000003", "no image in sample 000003 (expected 000003.jpg, .png or .webp)"),
    (
        "000004",
        "hostile-000.tar/000004.jpg",
        "bad metadata 000004.json (not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    ),
    ("L1", "hostile-001.tar/000006.webp", None),  # same listing as the first row, another photo
]


@pytest.mark.parametrize("pattern", ["hostile-{000..001}.tar", "hostile-*.tar", "hostile-00[01].tar", "hostile-{001,000}.tar"])
def test_tar_shards_by_pattern_read_in_sorted_order(hostile_dir, tmp_path, touched, pattern):
    source = str(tmp_path / "shards" / pattern)
    items = list(open_dump(source))
    assert rows(items) == SHARD_ROWS
    assert [it.index for it in items] == list(range(len(items)))
    first = items[0]
    assert (first.seller_id, first.title, first.path) == ("S1", "genuine?", None)
    # an uncompressed shard's member is read when it is decoded (by the worker that decodes it), not while listing
    assert first.data is None and first.member is not None and first.read_bytes()[:2] == b"\xff\xd8"
    assert all(it.data is None for it in items if it.error and "metadata" not in it.error)
    consume(items)
    assert_outside_untouched(tmp_path, items, touched)
    assert count_dump(source) == len(items)


def test_single_tar_and_compressed_tar(hostile_dir, tmp_path):
    shard0 = tmp_path / "shards" / "hostile-000.tar"
    assert rows(open_dump(shard0)) == SHARD_ROWS[:9]
    gz = tmp_path / "hostile.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(shard0) as src:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m) if m.isreg() else None)
    assert [r[2] for r in rows(open_dump(gz))] == [r[2] for r in SHARD_ROWS[:9]]
    assert count_dump(gz) == 9


def test_dump_ranges_match_the_whole_and_skip_shards_they_do_not_need(hostile_dir, tmp_path, monkeypatch):
    from markguard.datasets import listings

    source = str(tmp_path / "shards" / "hostile-*.tar")
    whole = list(open_dump(source))
    n = len(whole)
    for start, stop in [(0, n), (0, 3), (4, 11), (9, n), (n - 1, n + 5), (5, 5)]:
        part = list(open_dump_range(source, start, stop))
        assert rows(part) == rows(whole[start:stop]) and [it.index for it in part] == list(range(start, min(stop, n)))
    opened = []
    real = listings._iter_shard
    monkeypatch.setattr(listings, "_iter_shard", lambda path, read, mb: (opened.append((path.name, read)), real(path, read, mb))[1])
    list(open_dump_range(source, 9, n))  # all of the second shard: the first shard's data is never read
    assert ("hostile-000.tar", True) not in opened and ("hostile-001.tar", True) in opened
    opened.clear()
    list(open_dump_range(source, 0, 2))  # inside the first shard: the second is not even opened
    assert [o for o in opened if o[0] == "hostile-001.tar"] == []
    # folders and manifests: the same rows as slicing the whole
    d = list(open_dump(hostile_dir))
    assert rows(open_dump_range(hostile_dir, 2, 5)) == rows(d[2:5])


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cut(whole: bytes, at: int) -> bytes:
    return whole[:at]


def _flip(whole: bytes, at: int) -> bytes:
    return whole[:at] + bytes([whole[at] ^ 0xFF]) + whole[at + 1 :]


B_HEADER = 512 + 1024  # a.jpg's header and its 1000 bytes of data padded to 1024


@pytest.mark.parametrize(
    "damage, rows_before_error",
    [
        (lambda t: _cut(t, B_HEADER + 512 + 100), ["a.jpg", "b.jpg"]),  # inside b's data: b is an error row
        (lambda t: _cut(t, B_HEADER + 100), ["a.jpg"]),  # inside b's header
        (lambda t: _cut(t, B_HEADER), ["a.jpg"]),  # between members: no end-of-archive marker
        (lambda t: _flip(t, B_HEADER + 150), ["a.jpg"]),  # b's header checksum fails
    ],
)
def test_damaged_shard_ends_in_an_error_row_and_the_next_shard_carries_on(tmp_path, damage, rows_before_error):
    blob = b"\xff\xd8" + b"p" * 998
    (tmp_path / "s-000.tar").write_bytes(damage(_tar_bytes({"a.jpg": blob, "b.jpg": blob, "c.jpg": blob})))
    (tmp_path / "s-001.tar").write_bytes(b"not a tar at all" * 64)
    (tmp_path / "s-002.tar").write_bytes(_tar_bytes({"d.jpg": blob}))
    items = list(open_dump(str(tmp_path / "s-*.tar")))
    images = [it.image for it in items]
    assert images == [f"s-000.tar/{n}" for n in rows_before_error] + ["s-000.tar", "s-001.tar", "s-002.tar/d.jpg"]
    errors = [it.error for it in items]
    assert errors[0] is None and errors[-1] is None
    assert errors[len(rows_before_error)].startswith("corrupt tar shard (")
    assert errors[len(rows_before_error) + 1].startswith("not a tar archive (")
    if rows_before_error[-1] == "b.jpg":
        assert errors[1] == "member data cut short (corrupt tar shard)" and items[1].data is None
    assert count_dump(str(tmp_path / "s-*.tar")) == len(items)


def test_oversized_members_are_refused_unread(tmp_path, make):
    (tmp_path / "s.tar").write_bytes(_tar_bytes({"big.jpg": b"\xff" * 5000, "ok.jpg": make.jpeg(make.photo())}))
    items = list(iter_tar(tmp_path / "s.tar", max_member_bytes=4096))
    assert rows(items) == [("big", "s.tar/big.jpg", "member too large (5000 bytes > 4096)"), ("ok", "s.tar/ok.jpg", None)]
    assert items[0].data is None


# --- streaming -----------------------------------------------------------------------------------------


def _peak_bytes(iterator) -> tuple[int, int]:
    """(items seen, peak traced memory) while draining ``iterator`` one item at a time."""
    tracemalloc.start()
    n = 0
    for _ in iterator:
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return n, peak


def test_tar_reading_streams_with_flat_memory(tmp_path):
    blob = b"\xff\xd8" + b"x" * 2000
    n = 2000
    with tarfile.open(tmp_path / "many.tar", "w") as tf:
        for i in range(n):
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    size = (tmp_path / "many.tar").stat().st_size
    seen, peak = _peak_bytes(open_dump(tmp_path / "many.tar"))
    assert seen == n
    # a 5 MB shard; keeping tarfile's TarInfo headers alone would take ~1 MB, a list of items ~4.7 MB
    assert peak < 300_000, (peak, size)
    assert count_dump(tmp_path / "many.tar") == n


def test_manifest_reading_streams_with_flat_memory(tmp_path, make):
    (tmp_path / "a.png").write_bytes(make.png(Image.new("RGB", (2, 2))))
    n = 4000
    with (tmp_path / "m.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"listing_id": f"L{i:06d}", "image_path": "a.png", "title": "x" * 100}) + "\n")
    seen, peak = _peak_bytes(open_dump(tmp_path / "m.jsonl"))
    assert seen == n and peak < 200_000  # the file is 0.6 MB; a list of its items would take ~2.5 MB
    assert count_dump(tmp_path / "m.jsonl") == n


def test_open_dump_is_lazy(hostile_dir):
    dump = open_dump(hostile_dir)
    assert isinstance(dump, types.GeneratorType)
    assert next(dump).index == 0


# --- sharding ------------------------------------------------------------------------------------------


def test_shards_partition_the_dump_deterministically(hostile_dir):
    everything = rows(open_dump(hostile_dir))
    parts = [rows(shard(open_dump(hostile_dir), i, 3)) for i in range(3)]
    assert sorted(r for p in parts for r in p) == sorted(everything)
    assert sum(len(p) for p in parts) == len(everything)
    assert parts[1] == everything[1::3]
    assert parts == [rows(shard(open_dump(hostile_dir), i, 3)) for i in range(3)]


@pytest.mark.parametrize("spec, expected", [("0/4", (0, 4)), ("3/4", (3, 4)), (" 1 / 2 ", (1, 2))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["4/4", "1/0", "-1/4", "a/b", "1"])
def test_parse_shard_rejects_nonsense(spec):
    with pytest.raises(MarkguardError, match=r"expected i/N with 0 <= i < N"):
        parse_shard(spec)
    with pytest.raises(MarkguardError):
        list(shard([], 2, 2))


def test_expand_braces():
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_count_dump_matches_the_reader_without_opening_a_photo(hostile_dir, touched):
    assert count_dump(hostile_dir) == len(DIRECTORY_ROWS)
    assert count_dump(hostile_dir / "manifest.csv") == len(manifest_rows(hostile_dir))
    assert not [p for p in touched if p.endswith((".jpg", ".png", ".gif"))]
    assert any(p.endswith("manifest.csv") for p in touched)


def test_names_that_are_not_utf8_become_error_rows(tmp_path):
    import io
    import tarfile as tf

    from markguard.datasets.listings import count_dump, iter_directory, iter_tar

    root = tmp_path / "dump"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    (root / os.fsdecode(b"b\xff.jpg")).write_bytes(b"x")
    items = list(iter_directory(root))
    assert [(i.image, i.error is None) for i in items] == [("a.jpg", True), ("b\\xff.jpg", False)]
    assert "not valid UTF-8" in items[1].error and count_dump(root) == 2
    shard = tmp_path / "s.tar"
    with tf.open(shard, "w", format=tf.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as t:
        for name in ("k1.jpg", os.fsdecode(b"k\xe92.jpg"), "k3.jpg"):
            info = tf.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    rows = list(iter_tar(shard))
    assert [r.image for r in rows] == ["s.tar/k1.jpg", "s.tar/k\\xe92.jpg", "s.tar/k3.jpg"]
    assert [r.error is None for r in rows] == [True, False, True] and "not valid UTF-8" in rows[1].error


def test_the_scan_counts_a_folder_from_its_digest_and_leaves_compressed_shards_uncounted(hostile_dir, tmp_path, monkeypatch):
    """The ETA's total: a folder walked once (the resume digest's walk gives the count), a compressed shard not counted
    at all (that would decompress the whole dump before the first photo), a plain shard by its headers."""
    import markguard.datasets.listings as listings
    from markguard.infer.outdir import input_digest
    from markguard.infer.scan import _total

    digest = input_digest(hostile_dir)
    monkeypatch.setattr(listings, "count_dump", lambda source: pytest.fail("walked again"))
    assert _total(hostile_dir, None, digest) == len(list(open_dump(hostile_dir)))
    assert _total(hostile_dir, (1, 2), digest) == len(range(1, len(list(open_dump(hostile_dir))), 2))
    shard0 = tmp_path / "shards" / "hostile-000.tar"
    gz = tmp_path / "hostile.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(shard0) as src:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m) if m.isreg() else None)
    assert _total(gz, None, input_digest(gz)) is None
    monkeypatch.undo()
    assert _total(shard0, None, input_digest(shard0)) == 9
