"""Training-set readers: class folders, manifests and the public logo and product sets, as one stream of TrainSample."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Iterator

from PIL import Image
from tqdm import tqdm

from markguard.datasets.decode import decode_image
from markguard.datasets.listings import IMAGE_SUFFIXES
from markguard.datasets.tables import csv_header, csv_rows, jsonl_lines
from markguard.errors import DecodeError, MarkguardError
from markguard.fsio import real_under

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Annotators round box edges differently (VOC is 1-based inclusive, others 0-based); an edge
# this many pixels past the image border is clipped, anything further is a broken box.
BOX_TOLERANCE = 2

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class TrainSample:
    """One labelled training image, or one labelled region of it when ``box`` is set."""

    path: Path
    label: str
    box: Box | None = None  # (x0, y0, x1, y1) in pixels of the original image, x1/y1 exclusive
    split: str | None = None  # train | val | test as the dataset publishes it, or None
    group: str | None = None  # the coarser class above ``label`` (category, super-class), when the set has one


@dataclass
class MarkCrop:
    """A sample's image, cut to its box when it has one."""

    sample: TrainSample
    image: Image.Image


@dataclass
class TrainsetSummary:
    """What a reader yielded: counts per label and split, and every sample it skipped with the reason."""

    format: str
    root: Path
    samples: int
    boxes: int
    labels: dict[str, int]
    splits: dict[str, int]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def lines(self, *, top: int | None = 20) -> list[str]:
        out = [
            f"{self.root} ({self.format}): {self.samples} samples, {len(self.labels)} labels, "
            f"{self.boxes} with boxes, {len(self.skipped)} skipped"
        ]
        if self.splits:
            out.append("splits: " + ", ".join(f"{k}={v}" for k, v in sorted(self.splits.items())))
        ranked = sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ranked if top is None else ranked[:top]
        out += [f"  {n:6d}  {label}" for label, n in shown]
        if len(shown) < len(ranked):
            out.append(f"  ... {len(ranked) - len(shown)} more labels")
        reasons = Counter(reason for _, reason in self.skipped)
        for path, reason in self.skipped[:10]:
            out.append(f"skipped {path}: {reason}")
        if len(self.skipped) > 10:
            out.append(f"... {len(self.skipped) - 10} more skipped; most common: " + "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3)))
        return out


class TrainsetReader:
    """Base of every reader: iterate it for samples; problems with single images land in ``skipped``.

    A layout that is wrong as a whole (a missing list file, a manifest without its columns) raises
    MarkguardError when the reader is made. A problem with one image or annotation skips that image
    and records ``(path, reason)`` in ``skipped``; with ``strict=True`` it raises instead.
    """

    format: ClassVar[str] = ""

    def __init__(self, root: str | Path, *, strict: bool = False):
        self.root = Path(root)
        self.strict = strict
        self.skipped: list[tuple[Path, str]] = []
        self._real_dirs: dict[Path, str] = {}
        if not self.root.exists():
            raise MarkguardError(f"{self.root}: not found; give the folder (or manifest file) of a {self.format} training set")
        self._check_layout()

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this reader's layout (cheap: a few stats, no full walk)."""
        return False

    def _check_layout(self) -> None:
        pass

    def _samples(self) -> Iterator[TrainSample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[TrainSample]:
        self.skipped = []  # a fresh pass reports only its own skips
        yield from self._samples()

    def _skip(self, path: Path, reason: str) -> None:
        if self.strict:
            raise MarkguardError(f"{path}: {reason}")
        self.skipped.append((Path(path), reason))

    def _image(self, path: Path, base: Path | None = None) -> Path | None:
        """``path`` if it is a file inside ``base`` (default: the root), else None with the reason skipped."""
        base = base or self.root
        if real_under(self._resolved(base), path) is None:
            self._skip(path, f"refused: path leaves {base}")
            return None
        if not path.is_file():
            self._skip(path, "image file not found")
            return None
        return path

    def _resolved(self, folder: Path) -> str:
        # resolving the root once, not once per image, is most of a directory walk's cost
        if folder not in self._real_dirs:
            self._real_dirs[folder] = os.path.realpath(folder)
        return self._real_dirs[folder]

    def _checked_box(self, path: Path, box: Box, size: tuple[int, int] | None = None) -> Box | None:
        """``box`` clipped to the image, or None (skipped) when it is empty or lies outside it."""
        if size is None or not all(size):
            size = _image_size(path)
            if isinstance(size, str):
                self._skip(path, size)
                return None
        checked = check_box(box, size)
        if isinstance(checked, str):
            self._skip(path, checked)
            return None
        return checked


def check_box(box: Box, size: tuple[int, int], tolerance: int = BOX_TOLERANCE) -> Box | str:
    """``box`` clipped to an image of ``size`` (w, h), or the reason it is unusable."""
    x0, y0, x1, y1 = box
    w, h = size
    if x1 <= x0 or y1 <= y0:
        return f"empty box {list(box)}"
    if x0 < -tolerance or y0 < -tolerance or x1 > w + tolerance or y1 > h + tolerance:
        return f"box {list(box)} outside the {w}x{h} image"
    clipped = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return f"box {list(box)} outside the {w}x{h} image"
    return clipped


def _image_size(path: Path) -> tuple[int, int] | str:
    """(w, h) as the decoder will see it (after EXIF orientation), from the header only, or the reason it cannot be read."""
    try:
        with Image.open(path) as img:
            # orientations 5-8 turn the picture a quarter: boxes are drawn on the upright image
            return (img.height, img.width) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else img.size
    except (OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({type(e).__name__})"


def _images_in(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` in sorted order; hidden entries are left out."""
    if recursive:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")]
        return found
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _int(text: str | None) -> int:
    # some annotators write "12.0"; anything non-numeric raises ValueError for the caller to report
    return int(round(float(text)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- class folders


class ImageFolderReader(TrainsetReader):
    """``root/<label>/**/*.jpg`` (torchvision ImageFolder); also ``root/<split>/<label>/...`` when the top folders are train/val/test."""

    format = "imagefolder"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_dir() and any(_subdirs(root))

    def _check_layout(self) -> None:
        if not self.root.is_dir() or not _subdirs(self.root):
            raise MarkguardError(f"{self.root}: no class folders; an image-folder set is <root>/<label>/<image>.jpg")

    def _samples(self) -> Iterator[TrainSample]:
        top = _subdirs(self.root)
        by_split = all(d.name.lower() in SPLIT_ALIASES for d in top)
        parts = [(SPLIT_ALIASES[d.name.lower()], d) for d in top] if by_split else [(None, self.root)]
        for split, base in parts:
            for stray in _images_in(base, recursive=False):
                self._skip(stray, "image outside any class folder; move it into <label>/")
            for class_dir in _subdirs(base):
                for p in _images_in(class_dir):
                    if self._image(p) is not None:
                        yield TrainSample(p, class_dir.name, None, split)


# --------------------------------------------------------------------------- manifests


class ManifestReader(TrainsetReader):
    """A ``.csv`` (header ``path,label[,x0,y0,x1,y1][,split]``) or ``.jsonl`` (same keys, or ``box: [x0,y0,x1,y1]``).

    Paths are relative to the manifest's folder (absolute ones must lie under it); rows that
    leave that folder are refused and skipped, never followed.
    """

    format = "manifest"
    BOX_KEYS = ("x0", "y0", "x1", "y1")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_file() and root.suffix.lower() in (".csv", ".jsonl")

    def _check_layout(self) -> None:
        if not self.detect(self.root):
            raise MarkguardError(f"{self.root}: a manifest is a .csv or .jsonl file with path,label[,x0,y0,x1,y1] per row")
        if self.root.suffix.lower() == ".csv":
            header = csv_header(self.root)
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise MarkguardError(f"{self.root}: missing column(s) {missing}; the header must be path,label[,x0,y0,x1,y1][,split]")
            has_box = [c for c in self.BOX_KEYS if c in header]
            if has_box and len(has_box) != 4:
                raise MarkguardError(f"{self.root}: box columns need all of x0,y0,x1,y1 (found {has_box})")

    def _rows(self) -> Iterator[tuple[str, dict | None, str | None]]:
        """(where in the manifest, row, reason the row is unusable)."""
        if self.root.suffix.lower() == ".csv":
            for n, row in csv_rows(self.root):
                yield f"row {n}", row, None
            return
        for n, row, problem in jsonl_lines(self.root):
            if problem is not None:
                yield f"line {n}", None, f"not JSON ({problem})"
            else:
                yield f"line {n}", row, None if isinstance(row, dict) else "not a JSON object"

    def _samples(self) -> Iterator[TrainSample]:
        base = self.root.parent
        for where, row, problem in self._rows():
            if problem:
                self._skip(self.root, f"{where}: {problem}")
                continue
            rel, label = row.get("path"), row.get("label")
            if not rel or label in (None, ""):
                self._skip(self.root, f"{where}: needs both path and label")
                continue
            try:
                box = self._box(row)
            except (TypeError, ValueError):
                self._skip(self.root, f"{where}: box is not four numbers x0,y0,x1,y1")
                continue
            candidate = Path(rel) if Path(rel).is_absolute() else base / rel
            path = self._image(candidate, base)
            if path is None:
                continue
            if box is not None:
                box = self._checked_box(path, box)
                if box is None:
                    continue
            split = row.get("split") or None
            yield TrainSample(path, str(label), box, SPLIT_ALIASES.get(str(split).lower(), split) if split else None)

    def _box(self, row: dict) -> Box | None:
        if isinstance(row.get("box"), (list, tuple)):
            values = list(row["box"])
            if len(values) != 4:
                raise ValueError("box needs 4 values")
        else:
            values = [row.get(k) for k in self.BOX_KEYS]
            if all(v in (None, "") for v in values):
                return None
        x0, y0, x1, y1 = (_int(v) for v in values)
        return (x0, y0, x1, y1)


# --------------------------------------------------------------------------- Pascal VOC based sets


def read_voc(xml_path: Path) -> tuple[tuple[int, int] | None, list[tuple[str, Box]]]:
    """Image size (None when absent or zero) and ``(name, box)`` per object of a Pascal VOC annotation.

    Raises ValueError with a short reason for malformed XML or a malformed object.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"malformed XML ({e})") from None
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h:
        try:
            size = (_int(w), _int(h))
        except ValueError:
            raise ValueError(f"size is not numeric ({w!r} x {h!r})") from None
        size = size if all(size) else None  # some sets write 0x0 when unknown
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {i} has no <bndbox>")
        try:
            box = tuple(_int(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"object {i} has a non-numeric <bndbox>") from None
        objects.append((name, box))
    return size, objects


class _VocMixin:
    """Turns one image + its VOC file into one sample per annotated object."""

    def _voc_samples(self: TrainsetReader, image: Path, xml_path: Path, fallback_label: str, split: str | None, group: str | None):
        if not xml_path.is_file():
            self._skip(image, f"no annotation file {xml_path.name} for it")
            return
        if real_under(self._resolved(self.root), xml_path) is None:
            self._skip(xml_path, f"refused: path leaves {self.root}")
            return
        try:
            size, objects = read_voc(xml_path)
        except ValueError as e:
            self._skip(xml_path, str(e))
            return
        if not objects:
            self._skip(xml_path, "no objects annotated")
            return
        for name, box in objects:
            checked = self._checked_box(image, box, size)
            if checked is not None:
                yield TrainSample(image, name or fallback_label, checked, split, group)


class LogoDet3KReader(_VocMixin, TrainsetReader):
    """LogoDet-3K: ``<root>/<category>/<brand>/<n>.jpg`` with a Pascal VOC ``<n>.xml`` beside each image.

    One sample per annotated logo: label is the object's name (the brand folder when blank),
    group is the category (Food, Clothes, ...). The set publishes no splits.
    """

    format = "logodet3k"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_dir() and next(root.glob("*/*/*.xml"), None) is not None

    def _check_layout(self) -> None:
        if not self.detect(self.root):
            raise MarkguardError(f"{self.root}: no <category>/<brand>/<n>.xml files; is this the unpacked LogoDet-3K folder?")

    def _samples(self) -> Iterator[TrainSample]:
        for category in _subdirs(self.root):
            for brand in _subdirs(category):
                for image in _images_in(brand, recursive=False):
                    if self._image(image) is not None:
                        yield from self._voc_samples(image, image.with_suffix(".xml"), brand.name, None, category.name)


class OpenLogoReader(_VocMixin, TrainsetReader):
    """QMUL-OpenLogo (VOC layout): ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/...`` split lists.

    Splits come from ``ImageSets/Main/train_test/{train,test}_all.txt`` as published, or plain VOC
    ``ImageSets/Main/{train,val,test}.txt``; images in no list get split None.
    """

    format = "openlogo"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()

    def _check_layout(self) -> None:
        if not self.detect(self.root):
            hint = " (the archive unpacks to openlogo/; point at that folder)" if (self.root / "openlogo").is_dir() else ""
            raise MarkguardError(f"{self.root}: needs JPEGImages/ and Annotations/ folders (VOC layout){hint}")

    def _splits(self) -> dict[str, str]:
        main = self.root / "ImageSets" / "Main"
        lists = {"train": [main / "train_test" / "train_all.txt", main / "train.txt"],
                 "val": [main / "val.txt"],
                 "test": [main / "train_test" / "test_all.txt", main / "test.txt"]}
        splits: dict[str, str] = {}
        for split, candidates in lists.items():
            for path in candidates:
                if path.is_file():
                    for line in path.read_text(encoding="utf-8").split("\n"):
                        if line.strip():
                            splits.setdefault(line.split()[0], split)
                    break
        return splits

    def _samples(self) -> Iterator[TrainSample]:
        splits = self._splits()
        for image in _images_in(self.root / "JPEGImages", recursive=False):
            if self._image(image) is not None:
                xml = self.root / "Annotations" / f"{image.stem}.xml"
                yield from self._voc_samples(image, xml, "", splits.get(image.stem), None)


# --------------------------------------------------------------------------- FlickrLogos-32


class FlickrLogos32Reader(TrainsetReader):
    """FlickrLogos-32: ``classes/jpg/<class>/<n>.jpg``, boxes in ``classes/masks/<class>/<n>.jpg.bboxes.txt``.

    A bboxes file starts with the header ``x y width height`` and holds one box a line. Splits come
    from ``trainset.txt`` / ``valset.txt`` / ``testset.txt`` (lines ``class,filename``). The
    ``no-logo`` class has no boxes and yields whole images.
    """

    format = "flickrlogos32"
    LISTS = {"train": "trainset.txt", "val": "valset.txt", "test": "testset.txt"}
    NO_LOGO = "no-logo"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "classes" / "jpg").is_dir()

    def _check_layout(self) -> None:
        if not self.detect(self.root):
            raise MarkguardError(f"{self.root}: no classes/jpg/ folder; point at the FlickrLogos-v2 folder of FlickrLogos-32")

    def _splits(self) -> dict[tuple[str, str], str]:
        splits = {}
        for split, name in self.LISTS.items():
            path = self.root / name
            if not path.is_file():
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
                if not line.strip():
                    continue
                cls, sep, filename = line.strip().partition(",")
                if not sep:
                    raise MarkguardError(f"{path}: line {n} is {line.strip()!r}; expected 'class,filename'")
                splits[(cls.strip(), filename.strip())] = split
        return splits

    def _boxes(self, path: Path) -> list[Box] | str:
        if not path.is_file():
            return f"no box file {path.name} in classes/masks/"
        boxes = []
        lines = [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if n == 1 and not parts[0].lstrip("-").isdigit():
                continue  # the "x y width height" header
            try:
                x, y, w, h = (_int(v) for v in parts)
            except ValueError:
                return f"{path.name} line {n}: expected 'x y width height', got {line.strip()!r}"
            boxes.append((x, y, x + w, y + h))
        return boxes or f"{path.name} has no boxes"

    def _samples(self) -> Iterator[TrainSample]:
        splits = self._splits()
        for class_dir in _subdirs(self.root / "classes" / "jpg"):
            for image in _images_in(class_dir, recursive=False):
                if self._image(image) is None:
                    continue
                split = splits.get((class_dir.name, image.name))
                if class_dir.name == self.NO_LOGO:
                    yield TrainSample(image, class_dir.name, None, split)
                    continue
                box_file = self.root / "classes" / "masks" / class_dir.name / f"{image.name}.bboxes.txt"
                boxes = self._boxes(box_file) if real_under(self._resolved(self.root), box_file) else f"refused: {box_file} leaves {self.root}"
                if isinstance(boxes, str):
                    self._skip(image, boxes)
                    continue
                size = _image_size(image)
                if isinstance(size, str):
                    self._skip(image, size)
                    continue
                for box in boxes:
                    checked = self._checked_box(image, box, size)
                    if checked is not None:
                        yield TrainSample(image, class_dir.name, checked, split)


# --------------------------------------------------------------------------- product sets


class StanfordOnlineProductsReader(TrainsetReader):
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt``, header ``image_id class_id super_class_id path``.

    Label is the product's class_id, group its super-class folder (bicycle, chair, ...).
    """

    format = "sop"
    LISTS = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
    HEADER = ["image_id", "class_id", "super_class_id", "path"]

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_dir() and any((root / name).is_file() for name in cls.LISTS.values())

    def _check_layout(self) -> None:
        if not self.detect(self.root):
            raise MarkguardError(f"{self.root}: no Ebay_train.txt or Ebay_test.txt; point at the Stanford_Online_Products folder")
        for name in self.LISTS.values():
            path = self.root / name
            if path.is_file():
                with path.open(encoding="utf-8") as f:
                    header = f.readline().split()
                if header != self.HEADER:
                    raise MarkguardError(f"{path}: header is {header}; expected '{' '.join(self.HEADER)}'")

    def _samples(self) -> Iterator[TrainSample]:
        for split, name in self.LISTS.items():
            path = self.root / name
            if not path.is_file():
                continue
            with path.open(encoding="utf-8") as f:
                next(f)
                for n, line in enumerate(f, 2):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 4:
                        self._skip(path, f"line {n}: expected 4 fields '{' '.join(self.HEADER)}'")
                        continue
                    _, class_id, _, rel = parts
                    image = self._image(self.root / rel)
                    if image is not None:
                        yield TrainSample(image, class_id, None, split, rel.split("/")[0].removesuffix("_final"))


class Products10KReader(TrainsetReader):
    """Products-10K: ``train.csv`` (``name,class,group``) over ``train/``, ``test_kaggletest.csv`` (``name,class,Usage``) over ``test/``."""

    format = "products10k"
    LISTS = {"train": ("train.csv", "train"), "test": ("test_kaggletest.csv", "test")}

    @classmethod
    def detect(cls, root: Path) -> bool:
        if not (root.is_dir() and (root / "train.csv").is_file()):
            return False
        header = csv_header(root / "train.csv")
        return "name" in header and "class" in header

    def _check_layout(self) -> None:
        if not self.root.is_dir() or not any((self.root / csv_name).is_file() for csv_name, _ in self.LISTS.values()):
            raise MarkguardError(f"{self.root}: no train.csv or test_kaggletest.csv; point at the Products-10K folder")
        for csv_name, _ in self.LISTS.values():
            path = self.root / csv_name
            if path.is_file():
                header = csv_header(path)
                if "name" not in header or "class" not in header:
                    raise MarkguardError(f"{path}: header is {header}; expected name,class[,group]")

    def _samples(self) -> Iterator[TrainSample]:
        for split, (csv_name, folder) in self.LISTS.items():
            path = self.root / csv_name
            if not path.is_file():
                continue
            for _, row in csv_rows(path):
                image = self._image(self.root / folder / row["name"])
                if image is not None:
                    yield TrainSample(image, str(row["class"]), None, split, row.get("group") or None)


# --------------------------------------------------------------------------- choosing a reader

# Most specific first: auto-detection takes the first that matches.
READERS: dict[str, type[TrainsetReader]] = {
    r.format: r
    for r in (
        ManifestReader,
        StanfordOnlineProductsReader,
        Products10KReader,
        FlickrLogos32Reader,
        OpenLogoReader,
        LogoDet3KReader,
        ImageFolderReader,
    )
}


def detect_format(path: str | Path) -> str:
    """The name of the reader whose layout ``path`` has; raises with the list of layouts when none fits."""
    path = Path(path)
    if not path.exists():
        raise MarkguardError(f"{path}: not found; give a training-set folder or a .csv/.jsonl manifest")
    for name, reader in READERS.items():
        if reader.detect(path):
            return name
    raise MarkguardError(f"{path}: not a known training-set layout; pass format= one of {', '.join(READERS)}")


def open_trainset(path: str | Path, format: str = "auto", *, strict: bool = False) -> TrainsetReader:
    """A reader for the training set at ``path``; ``format="auto"`` chooses by the folder's layout."""
    name = detect_format(path) if format == "auto" else format
    if name not in READERS:
        raise MarkguardError(f"unknown training-set format {name!r}; choose auto or one of {', '.join(READERS)}")
    return READERS[name](path, strict=strict)


def summarize(reader: TrainsetReader, *, progress: bool = False) -> TrainsetSummary:
    """Read every sample once and count them (what ``markguard data check-trainset`` prints)."""
    labels: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    samples = boxes = 0
    stream: Iterable[TrainSample] = reader
    if progress:
        stream = tqdm(reader, desc=f"reading {reader.format}", unit="sample")
    for s in stream:
        samples += 1
        boxes += s.box is not None
        labels[s.label] += 1
        if s.split:
            splits[s.split] += 1
    return TrainsetSummary(reader.format, reader.root, samples, boxes, dict(labels), dict(splits), list(reader.skipped))


class CropStream:
    """Iterable of MarkCrop made by ``crops``; like a reader, it lists what it left out in ``skipped``."""

    def __init__(self, samples: Iterable[TrainSample], pad: float, min_side: int, strict: bool):
        self.samples, self.pad, self.min_side, self.strict = samples, pad, min_side, strict
        self.skipped: list[tuple[Path, str]] = []

    def _skip(self, path: Path, reason: str) -> None:
        if self.strict:
            raise MarkguardError(f"{path}: {reason}")
        self.skipped.append((path, reason))

    def __iter__(self) -> Iterator[MarkCrop]:
        self.skipped = []
        cached: tuple[Path, Image.Image | None] | None = None  # boxes of one image arrive together: decode it once
        for s in self.samples:
            if cached is None or cached[0] != s.path:
                try:
                    cached = (s.path, decode_image(s.path).image)
                except DecodeError as e:
                    cached = (s.path, None)
                    self._skip(s.path, e.reason)
            image = cached[1]
            if image is None:
                continue
            if s.box is None:
                yield MarkCrop(s, image.copy())
                continue
            x0, y0, x1, y1 = s.box
            dx, dy = round((x1 - x0) * self.pad), round((y1 - y0) * self.pad)
            x0, y0 = max(0, x0 - dx), max(0, y0 - dy)
            x1, y1 = min(image.width, x1 + dx), min(image.height, y1 + dy)
            if min(x1 - x0, y1 - y0) < self.min_side:
                self._skip(s.path, f"crop {list(s.box)} is under {self.min_side} px on a side")
                continue
            yield MarkCrop(s, image.crop((x0, y0, x1, y1)))


def crops(samples: Iterable[TrainSample], *, pad: float = 0.0, min_side: int = 8, strict: bool = False) -> CropStream:
    """Each sample's image cut to its box (whole when it has none), as RGB through the safe decoder.

    ``pad`` widens the box by that fraction of its size on every side (clipped to the image), so
    augmentation can shift or rotate without losing the mark's edges. Images that fail to decode
    and crops with a side under ``min_side`` pixels are left out and listed in the stream's
    ``skipped``; with ``strict=True`` they raise MarkguardError instead.
    """
    return CropStream(samples, pad, min_side, strict)
