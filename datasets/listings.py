"""Listing-dump readers: a directory tree, a manifest (csv/jsonl/parquet) or tar shards, streamed in a stable order.

Every reader is a generator that holds one row (one tar sample) at a time, so memory does
not grow with the dump. A row that may not be read (a path or link leaving the dump's root,
a tar member that is a link, a device or has an absolute or ``..`` name, a missing file)
comes out as a :class:`ListingItem` with ``error`` set and nothing read, so the scan writes
an error row for it instead of stopping or following it.

Which reader :func:`open_dump` uses:

* a folder -> :func:`iter_directory` (``listing_id`` = path relative to the folder, without
  extension; files with an image extension, hidden files and folders skipped);
* ``*.csv`` / ``*.jsonl`` / ``*.parquet`` -> :func:`iter_manifest`;
* ``*.tar`` (also ``.tar.gz``/``.tgz``), or a brace/glob pattern such as ``shards-{000..009}.tar``
  or ``shards-*.tar`` -> :func:`iter_tar` over the shards in sorted order. A folder that
  holds only shards is refused with the pattern to pass instead.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from markguard.datasets.tables import csv_rows, jsonl_lines
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import printable, real_under

if TYPE_CHECKING:
    from markguard.datasets.decode import DecodedImage

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}  # the one list of photo endings markguard reads
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".parquet"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# webdataset extensions (everything after the first dot of the member's basename)
TAR_IMAGE_EXTS = {s[1:] for s in IMAGE_SUFFIXES}
TAR_META_EXT = "json"
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a listing photo, even a raw camera JPEG, is far below this
MAX_META_BYTES = 1024 * 1024

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass
class ListingItem:
    """One listing photo to scan; ``error`` is set (and nothing is read) when the row was refused.

    ``(listing_id, image)`` identifies a row: one listing may have several photos.
    """

    index: int  # position in the dump's deterministic order (before sharding)
    listing_id: str
    image: str  # as written in results.jsonl: the path relative to the dump's root, or <shard>/<member>
    seller_id: str | None = None
    title: str | None = None
    path: Path | None = None  # resolved file inside the root, or None for in-memory data
    data: bytes | None = None  # raw bytes when the image comes from a (compressed) tar shard
    error: str | None = None
    # an uncompressed tar shard's member, read only when its photo is decoded (by the worker that decodes it):
    # (shard file, offset of its data, its size)
    member: tuple[str, int, int] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the row across runs (for resuming and joining results)."""
        return self.listing_id, self.image

    def read_bytes(self) -> bytes:
        """The photo's raw bytes; an error row raises its DecodeError instead of reading anything."""
        if self.error is not None:
            raise DecodeError(self.error, self.image)
        if self.data is not None:
            return self.data
        if self.member is not None:
            return read_member(*self.member, image=self.image)
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise DecodeError(f"cannot read file ({e.strerror})", self.image) from None

    def decode(self, **kwargs) -> DecodedImage:
        """:func:`~markguard.datasets.decode.decode_image` of this photo; an error row raises its DecodeError.

        Paths are handed over unread so the decoder can refuse a bomb from its header alone.
        """
        from markguard.datasets.decode import decode_image

        if self.error is not None:
            raise DecodeError(self.error, self.image)
        return decode_image(self.data if self.data is not None else self.read_bytes() if self.member else self.path, **kwargs)


def _regular_file_error(path: str) -> str | None:
    """Why ``path`` (already resolved) cannot be read as a photo, or None; a FIFO would block the scan."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError) as e:
        return f"cannot read file ({getattr(e, 'strerror', None) or e})"
    return None if stat.S_ISREG(st.st_mode) else "not a regular file"


# --- directory ---------------------------------------------------------------------------------------


NOT_UTF8 = "file name is not valid UTF-8; rename it to scan it"


def _hidden(name: str) -> bool:
    # dotfiles are tool droppings (.DS_Store, macOS ._x.jpg resource forks), never listing photos
    return name.startswith(".")


def _walk(root: Path) -> Iterator[tuple[str, Path, str | None]]:
    """(relative path, path, error) for every row a directory dump has, in a stable order; reads no file.

    ``error`` is only set here for what the walk itself can tell: folders it cannot list and
    linked folders leading out of the root (neither is descended).
    """
    root_real = os.path.realpath(root)
    failures: list[OSError] = []

    def unlistable() -> Iterator[tuple[str, Path, str | None]]:
        while failures:
            e = failures.pop(0)
            p = Path(e.filename) if e.filename else root
            rel = p.relative_to(root).as_posix() if p != root else "."
            yield printable(rel), p, f"cannot list folder ({e.strerror})"

    # os.walk never descends symlinked folders (followlinks=False): one inside the root
    # would repeat photos reachable by their real path, one outside must not be read.
    for dirpath, dirnames, filenames in os.walk(root, onerror=failures.append):
        yield from unlistable()
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            p = here / name
            rel = p.relative_to(root).as_posix()
            # a name that is not UTF-8 cannot be written into results.jsonl: its row is an error, shown with \xNN escapes
            yield (rel, p, None) if printable(rel) == rel else (printable(rel), p, NOT_UTF8)
        for name in dirnames:
            p = here / name
            if p.is_symlink() and real_under(root_real, p) is None:
                yield p.relative_to(root).as_posix(), p, "refused: linked folder leaves the dump's root (not followed)"
    yield from unlistable()


def iter_directory(root: Path) -> Iterator[ListingItem]:
    """Every image under ``root`` (by extension; content is sniffed at decode), in sorted order per folder.

    ``listing_id`` is the relative path without extension. A file link is followed only
    when its target is a regular file under the root; hidden files and folders are skipped.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    for index, (rel, p, error) in enumerate(_walk(root)):
        listing_id = str(PurePosixPath(rel).with_suffix("")) if error is None else rel
        item = ListingItem(index, listing_id, rel, error=error)
        if error is None:
            if p.is_symlink():
                resolved = real_under(root_real, p)
                if resolved is None:
                    item.error = "refused: link leaves the dump's root"
                    yield item
                    continue
            else:
                resolved = os.path.join(root_real, rel)
            item.error = _regular_file_error(resolved)
            if item.error is None:
                item.path = Path(resolved)
        yield item


# --- manifest ----------------------------------------------------------------------------------------

REQUIRED_COLUMNS = ("listing_id", "image_path")


def _missing_columns(path: Path, columns: Iterable[str], where: str = "") -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in set(columns)]
    if missing:
        raise MarkguardError(
            f"{path}{where}: missing column(s) {', '.join(missing)}; a manifest needs listing_id and image_path "
            f"(image_path relative to the manifest's folder), optionally seller_id and title"
        )


def _manifest_rows(path: Path) -> Iterator[dict]:
    """The manifest's rows as dicts, streamed; structural problems raise MarkguardError naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            for _, row in csv_rows(path, header=lambda names: _missing_columns(path, names)):
                yield row
        elif suffix == ".jsonl":
            for n, row, problem in jsonl_lines(path):
                if problem is not None:
                    raise MarkguardError(f"{path}:{n}: not valid JSON ({problem}); fix or remove that line")
                if not isinstance(row, dict):
                    raise MarkguardError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
                _missing_columns(path, row, f":{n}")
                yield row
        else:
            f = _parquet_file(path)
            names = f.schema_arrow.names
            _missing_columns(path, names)
            columns = [c for c in (*REQUIRED_COLUMNS, "seller_id", "title") if c in names]
            try:
                for batch in f.iter_batches(batch_size=4096, columns=columns):
                    yield from batch.to_pylist()
            except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid/ArrowIOError are these
                raise MarkguardError(f"{path}: damaged parquet manifest ({_first_line(e)}); write it again") from None
    except UnicodeDecodeError:
        raise MarkguardError(f"{path}: not UTF-8 text; save the manifest as UTF-8") from None


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MarkguardError("reading .parquet manifests needs pyarrow: pip install 'markguard[parquet]'") from None
    return pq


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _parquet_file(path: Path):
    pq = _pyarrow_parquet()
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # ArrowInvalid: not a parquet file, a bad footer
        raise MarkguardError(f"{path}: not a readable parquet file ({_first_line(e)}); write the manifest again") from None


def _text(value) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value if value.strip() else None


def iter_manifest(path: Path) -> Iterator[ListingItem]:
    """Rows of a manifest with ``listing_id`` and ``image_path`` (relative to the manifest's folder, or absolute under it).

    Row order is the manifest's. ``image`` is ``image_path`` as written, so an error row
    shows what the manifest said.
    """
    path = Path(path)
    root = os.path.realpath(path.parent)
    for index, row in enumerate(_manifest_rows(path)):
        listing_id, image = _text(row.get("listing_id")), _text(row.get("image_path"))
        item = ListingItem(index, listing_id or "", image or "", _text(row.get("seller_id")), _text(row.get("title")))
        if listing_id is None:
            item.error = "missing listing_id"
        elif image is None:
            item.error = "missing image_path"
        else:
            resolved = real_under(root, os.path.join(root, image))  # an absolute image_path replaces root here
            if resolved is None:
                item.error = "refused: image_path leaves the manifest's folder"
            else:
                item.error = _regular_file_error(resolved)
                if item.error is None:
                    item.path = Path(resolved)
        yield item


def _count_manifest(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        f = _parquet_file(path)
        _missing_columns(path, f.schema_arrow.names)
        return f.metadata.num_rows
    if suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return sum(1 for _ in _manifest_rows(path))  # csv: quoted fields may hold newlines


# --- tar shards --------------------------------------------------------------------------------------


def read_member(shard: str, offset: int, size: int, *, image: str = "") -> bytes:
    """One member's bytes from an uncompressed tar shard, by the offset its header gave."""
    try:
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise DecodeError(f"cannot read tar shard ({e.strerror})", image) from None
    if len(data) != size:
        raise DecodeError("member data cut short (corrupt tar shard)", image)
    return data


def _uncompressed(path: Path) -> bool:
    """A plain tar (seekable members) rather than a compressed stream: its first bytes are no gzip/bz2/xz magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return not (head.startswith(b"\x1f\x8b") or head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ"))


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's (key, extension): the extension is everything after the basename's first dot."""
    name = name.removeprefix("./")
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _member_refusal(m: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a member must not be read, or None. Nothing is extracted to disk, but names and types are still policed."""
    parts = re.split(r"[\\/]", m.name)
    if m.name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", m.name):
        return "refused: absolute member name"
    if ".." in parts:
        return "refused: '..' in member name"
    if m.issym():
        return "refused: member is a symbolic link"
    if m.islnk():
        return "refused: member is a hard link"
    if m.ischr() or m.isblk():
        return "refused: member is a device"
    if m.isfifo():
        return "refused: member is a FIFO"
    if not m.isreg():
        return "refused: member is not a regular file"
    if m.size > max_bytes:
        return f"member too large ({m.size} bytes > {max_bytes})"
    return None


class _WatchedTarInfo(tarfile.TarInfo):
    """Records why a TarFile stopped: past the first member, tarfile takes a corrupt or cut header for the end, silently."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            tf.markguard_stop = e
            raise


def _tar_members(path: Path, read: bool, max_bytes: int) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, data, refusal) for each non-folder, non-hidden member; data only for wanted, accepted members when ``read``.

    Reading streams ('r|*', any compression). Counting opens with random access instead so
    an uncompressed shard's data is seeked over rather than read.
    """
    # an uncompressed shard is opened for random access: its photos' bytes are left where they are (a ListingItem.member),
    # for the decoding worker to read; only the samples' small JSON is read here
    lazy = read and _uncompressed(path)
    end = path.stat().st_size if lazy else 0
    with tarfile.open(path, mode="r|*" if read and not lazy else "r:*", tarinfo=_WatchedTarInfo) as tf:
        while True:
            m = tf.next()
            if m is None:
                stop = getattr(tf, "markguard_stop", None)
                if stop is not None and not isinstance(stop, tarfile.EOFHeaderError):  # EOF: the end-of-archive block
                    raise tarfile.ReadError(f"cut or corrupt header after the last good member: {stop}")
                return
            # TarFile remembers every header it has seen, even when streaming; forget them so
            # memory stays flat on a shard with millions of members.
            tf.members.clear()
            if m.isdir() or _hidden(m.name.rpartition("/")[2]):
                continue
            refusal = _member_refusal(m, max_bytes)
            if printable(m.name) != m.name:  # tarfile keeps bytes that are not UTF-8 as surrogate escapes
                m.name, refusal = printable(m.name), refusal or "member name is not valid UTF-8; rename it to scan it"
            _, ext = _split_member(m.name)
            data = None
            if read and refusal is None:
                if ext == TAR_META_EXT and m.size > MAX_META_BYTES:
                    refusal = f"metadata too large ({m.size} bytes > {MAX_META_BYTES})"
                elif lazy and ext in TAR_IMAGE_EXTS and m.offset_data + m.size <= end:
                    data = (str(path), m.offset_data, m.size)
                elif ext in TAR_IMAGE_EXTS or ext == TAR_META_EXT:
                    try:
                        data = tf.extractfile(m).read()
                    except tarfile.ReadError:
                        # the member still gets its row (as counting sees it), then the shard fails
                        yield m.name, None, "member data cut short (corrupt tar shard)"
                        raise
            yield m.name, data, refusal


def _sample_items(shard_name: str, key: str, members: list, read: bool) -> Iterator[ListingItem]:
    """The rows of one webdataset sample (members sharing a key); index is filled in by the caller."""
    meta: dict = {}
    meta_error = None
    for name, data, refusal in members:
        if _split_member(name)[1] != TAR_META_EXT:
            continue
        if refusal is not None:
            meta_error = f"metadata {name}: {refusal}"
        elif read:
            try:
                meta = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                meta_error = f"bad metadata {name} (not valid JSON: {e})"
            if not isinstance(meta, dict):
                meta, meta_error = {}, f"bad metadata {name} (expected a JSON object)"
    listing_id = _text(meta.get("listing_id")) or key
    seller_id, title = _text(meta.get("seller_id")), _text(meta.get("title"))
    rows = 0
    for name, data, refusal in members:
        ext = _split_member(name)[1]
        if refusal is not None and ext != TAR_META_EXT:
            rows += 1
            yield ListingItem(-1, listing_id, f"{shard_name}/{name}", seller_id, title, error=refusal)
        elif ext in TAR_IMAGE_EXTS:
            rows += 1
            lazy = isinstance(data, tuple)
            yield ListingItem(-1, listing_id, f"{shard_name}/{name}", seller_id, title, data=None if lazy else data, error=meta_error,
                              member=data if lazy else None)
    if not rows and any(_split_member(n)[1] == TAR_META_EXT for n, _, _ in members):
        error = meta_error or f"no image in sample {key} (expected {key}.jpg, .png or .webp)"
        yield ListingItem(-1, listing_id, f"{shard_name}/{key}", seller_id, title, error=error)


def _iter_shard(path: Path, read: bool, max_bytes: int) -> Iterator[ListingItem]:
    name = printable(path.name)
    members: list = []
    key = None
    try:
        for member in _tar_members(path, read, max_bytes):
            k = _split_member(member[0])[0]
            if members and k != key:
                yield from _sample_items(name, key, members, read)
                members = []
            key = k
            members.append(member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        yield from _sample_items(name, key, members, read)
        if isinstance(e, FileNotFoundError):
            error = "shard not found"
        elif isinstance(e, tarfile.ReadError) and key is None:
            error = f"not a tar archive ({e})"
        else:
            error = f"corrupt tar shard ({e}); the rest of this shard is skipped"
        yield ListingItem(-1, name, name, error=error)
        return
    if members:
        yield from _sample_items(name, key, members, read)


def iter_tar(shards: Path | Sequence[Path], *, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[ListingItem]:
    """Webdataset tar shards, read as streams in the order given: ``<key>.jpg|png|webp`` plus optional ``<key>.json``.

    ``listing_id``, ``seller_id`` and ``title`` come from the sample's JSON (``listing_id``
    defaults to the key); ``image`` is ``<shard file name>/<member name>``. Refused members
    (links, devices, absolute or ``..`` names, oversize) become error rows and are never
    read; a corrupt shard ends in one error row and the next shard carries on.
    """
    shards = [Path(shards)] if isinstance(shards, (str, Path)) else [Path(s) for s in shards]
    counter = itertools.count()
    for path in shards:
        for item in _iter_shard(path, True, max_member_bytes):
            item.index = next(counter)
            yield item


# --- choosing a reader -------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` (zero padding kept) and ``{a,b}`` like the shell and webdataset do."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [e for opt in options for e in expand_braces(pattern[: m.start()] + opt + pattern[m.end() :])]


def _is_tar(path: str | Path) -> bool:
    return str(path).lower().endswith(TAR_SUFFIXES)


def _resolve_dump(source: str | Path) -> tuple[str, Path | list[Path]]:
    """(kind, what to read): ("dir", folder) | ("manifest", file) | ("tar", [shards in sorted order])."""
    text = str(source)
    if not Path(text).exists() and (_BRACE.search(text) or _GLOB_CHARS.search(text)):
        if not _is_tar(text):
            raise MarkguardError(f"{text}: a pattern may only name tar shards (ending in .tar); for images give their folder")
        shards: set[str] = set()
        for name in expand_braces(text):
            if _GLOB_CHARS.search(name):
                shards.update(glob.glob(name))
            elif not Path(name).is_file():
                raise MarkguardError(f"{name}: no such shard (from pattern {text}); check the range or the folder")
            else:
                shards.add(name)
        if not shards:
            raise MarkguardError(f"{text}: matches no tar shard; check the pattern and the folder")
        return "tar", [Path(s) for s in sorted(shards)]
    path = Path(source)
    if not path.exists():
        raise MarkguardError(
            f"{path}: no such file or folder; give a folder of images, a manifest (.csv/.jsonl/.parquet) or tar shards"
        )
    if path.is_dir():
        _refuse_shard_folder(path)
        return "dir", path
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest", path
    if _is_tar(path):
        return "tar", [path]
    raise MarkguardError(f"{path}: unknown dump format; give a folder, a .csv/.jsonl/.parquet manifest or .tar shards")


def _refuse_shard_folder(path: Path) -> None:
    """A folder with tar shards and nothing else would scan as empty; say what to pass instead."""
    has_tar = False
    with os.scandir(path) as entries:
        for entry in entries:
            if _hidden(entry.name):
                continue
            if _is_tar(entry.name):
                has_tar = True
            elif entry.is_dir() or Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                return
    if has_tar:
        raise MarkguardError(f"{path}: holds tar shards, which a folder dump does not read; pass '{path}/*.tar' to scan them")


def open_dump(source: str | Path) -> Iterator[ListingItem]:
    """Iterate a listing dump, choosing the reader by what ``source`` is (see the module docstring).

    Problems with the source as a whole raise MarkguardError now, before iteration starts.
    """
    kind, target = _resolve_dump(source)
    if kind == "dir":
        return iter_directory(target)
    if kind == "manifest":
        return iter_manifest(target)
    return iter_tar(target)


def open_dump_range(source: str | Path, start: int, stop: int) -> Iterator[ListingItem]:
    """Items ``start`` to ``stop - 1`` of :func:`open_dump` (same ``index`` values), without reading what comes before.

    For tar shards, each shard's items are first counted from its headers; shards wholly before
    ``start`` or after ``stop`` are never read, so N parallel readers of a tar dump read it about
    once between them rather than N/2 times. Folders and manifests skip rows without opening images.
    """
    kind, target = _resolve_dump(source)
    if kind != "tar":
        return itertools.islice(open_dump(source), start, stop)
    return _tar_range(target, start, stop)


def _tar_range(shards: Sequence[Path], start: int, stop: int) -> Iterator[ListingItem]:
    first = 0
    for path in shards:
        if first >= stop:
            return
        n = sum(1 for _ in _iter_shard(path, False, MAX_MEMBER_BYTES))
        if first + n > start:
            for k, item in enumerate(_iter_shard(path, True, MAX_MEMBER_BYTES)):
                if start <= first + k < stop:
                    item.index = first + k
                    yield item
        first += n


def count_dump(source: str | Path) -> int:
    """How many items :func:`open_dump` will yield, error rows included, without reading any image (for an ETA).

    A folder is walked, a parquet manifest answers from its footer, tar shards are scanned
    header by header (seeking over data when uncompressed).
    """
    kind, target = _resolve_dump(source)
    if kind == "dir":
        return sum(1 for _ in _walk(target))
    if kind == "manifest":
        return _count_manifest(target)
    return sum(1 for path in target for _ in _iter_shard(path, False, MAX_MEMBER_BYTES))


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0-based i) as given to ``--shard``, checked."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise MarkguardError(f"--shard {spec}: expected i/N with 0 <= i < N, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def shard(items: Iterable[ListingItem], i: int, n: int) -> Iterator[ListingItem]:
    """Shard ``i`` of ``n`` (0-based): every n-th item by its position, deterministic for any input.

    The N shards together are exactly the dump, each item in one shard.
    """
    if not 0 <= i < n:
        raise MarkguardError(f"shard {i}/{n}: expected 0 <= i < N")
    for item in items:
        if item.index % n == i:
            yield item
