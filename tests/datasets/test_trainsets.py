"""Training-set readers: each one reads a tiny replica written here in the dataset's published layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from markguard.cli import main
from markguard.datasets.trainsets import (
    READERS,
    TrainSample,
    check_box,
    crops,
    detect_format,
    open_trainset,
    read_voc,
    summarize,
)
from markguard.errors import MarkguardError


def _img(path: Path, size=(64, 48), color=(200, 200, 200), box=None, box_color=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if box:
        img.paste(box_color, box)
    img.save(path)
    return path


def _voc(path: Path, objects, size=(64, 48)) -> Path:
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")
    return path


def _reasons(reader) -> dict[str, str]:
    return {p.name: r for p, r in reader.skipped}


# --------------------------------------------------------------------------- replicas, one per layout


def make_imagefolder(root: Path) -> Path:
    _img(root / "acme" / "a.jpg")
    _img(root / "acme" / "more" / "b.png")
    _img(root / "globex" / "c.jpg")
    _img(root / "stray.jpg")  # not in a class folder
    (root / "globex" / "notes.txt").write_text("not an image")
    return root


def make_manifest(root: Path) -> Path:
    _img(root / "imgs" / "a.jpg", box=(10, 10, 30, 20))
    _img(root / "imgs" / "b.jpg")
    _img(root.parent / "outside.jpg")  # exists, but outside the manifest's folder
    manifest = root / "train.csv"
    manifest.write_text(
        "path,label,x0,y0,x1,y1,split\n"
        "imgs/a.jpg,acme,10,10,30,20,train\n"
        "imgs/b.jpg,globex,,,,,valid\n"
        "../outside.jpg,acme,,,,,\n"
        "imgs/missing.jpg,acme,,,,,\n"
        "imgs/a.jpg,acme,10,10,300,20,\n"
        "imgs/a.jpg,,,,,,\n"
    )
    return manifest


def make_logodet3k(root: Path) -> Path:
    brand = root / "Food" / "Acme"
    _img(brand / "1.jpg")
    _voc(brand / "1.xml", [("acme", (1, 2, 30, 20)), ("acme", (40, 10, 64, 48))])
    _img(brand / "2.jpg")  # no annotation
    other = root / "Clothes" / "Globex"
    _img(other / "3.jpg")
    (other / "3.xml").write_text("<annotation><object><name>globex</name>")  # cut short
    _img(other / "4.jpg")
    _voc(other / "4.xml", [("globex", (10, 10, 200, 20))])  # box past the image
    _img(other / "5.jpg")
    _voc(other / "5.xml", [("", (0, 0, 10, 10))])  # blank name: the brand folder is the label
    return root


def make_flickrlogos32(root: Path) -> Path:
    _img(root / "classes" / "jpg" / "adidas" / "1.jpg")
    masks = root / "classes" / "masks" / "adidas"
    masks.mkdir(parents=True)
    (masks / "1.jpg.bboxes.txt").write_text("x y width height\n5 6 20 10\n30 20 10 10\n")
    _img(root / "classes" / "jpg" / "adidas" / "2.jpg")  # no bboxes file
    _img(root / "classes" / "jpg" / "no-logo" / "9.jpg")
    (root / "trainset.txt").write_text("adidas,1.jpg\n")
    (root / "testset.txt").write_text("no-logo,9.jpg\nadidas,2.jpg\n")
    return root


def make_openlogo(root: Path) -> Path:
    for stem in "abc":
        _img(root / "JPEGImages" / f"{stem}.jpg")
    _voc(root / "Annotations" / "a.xml", [("adidas", (0, 0, 20, 20))])
    _voc(root / "Annotations" / "b.xml", [("nike_text", (5, 5, 25, 15)), ("nike", (30, 5, 50, 40))], size=(0, 0))  # size unknown: read from the image
    main = root / "ImageSets" / "Main" / "train_test"
    main.mkdir(parents=True)
    (main / "train_all.txt").write_text("a\n")
    (main / "test_all.txt").write_text("b\nc\n")
    return root


def make_sop(root: Path) -> Path:
    _img(root / "bicycle_final" / "111_0.JPG")
    _img(root / "bicycle_final" / "111_1.JPG")
    _img(root / "chair_final" / "222_0.JPG")
    (root / "Ebay_train.txt").write_text(
        "image_id class_id super_class_id path\n1 1 1 bicycle_final/111_0.JPG\n2 1 1 bicycle_final/111_1.JPG\n3 2 1 bicycle_final/gone.JPG\n"
    )
    (root / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n4 3 5 chair_final/222_0.JPG\n")
    return root


def make_products10k(root: Path) -> Path:
    _img(root / "train" / "0.jpg")
    _img(root / "train" / "1.jpg")
    _img(root / "test" / "5.jpg")
    (root / "train.csv").write_text("name,class,group\n0.jpg,7,2\n1.jpg,8,2\n")
    (root / "test_kaggletest.csv").write_text("name,class,Usage\n5.jpg,7,Public\n6.jpg,9,Private\n")
    return root


BUILDERS = {
    "imagefolder": make_imagefolder,
    "manifest": make_manifest,
    "logodet3k": make_logodet3k,
    "flickrlogos32": make_flickrlogos32,
    "openlogo": make_openlogo,
    "sop": make_sop,
    "products10k": make_products10k,
}


def test_every_reader_has_a_replica():
    assert set(BUILDERS) == set(READERS)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_auto_detects_each_layout(tmp_path, fmt):
    root = BUILDERS[fmt](tmp_path / "set")
    assert detect_format(root) == fmt
    assert open_trainset(root).format == fmt


# --------------------------------------------------------------------------- each reader


def test_imagefolder(tmp_path):
    reader = open_trainset(make_imagefolder(tmp_path / "set"))
    got = sorted((s.path.name, s.label, s.box, s.split) for s in reader)
    assert got == [("a.jpg", "acme", None, None), ("b.png", "acme", None, None), ("c.jpg", "globex", None, None)]
    assert list(_reasons(reader)) == ["stray.jpg"]
    assert "class folder" in _reasons(reader)["stray.jpg"]


def test_imagefolder_split_folders(tmp_path):
    _img(tmp_path / "train" / "acme" / "a.jpg")
    _img(tmp_path / "validation" / "acme" / "b.jpg")
    _img(tmp_path / "test" / "globex" / "c.jpg")
    got = sorted((s.path.name, s.label, s.split) for s in open_trainset(tmp_path, "imagefolder"))
    assert got == [("a.jpg", "acme", "train"), ("b.jpg", "acme", "val"), ("c.jpg", "globex", "test")]


def test_manifest_csv(tmp_path):
    reader = open_trainset(make_manifest(tmp_path / "set"))
    got = [(s.path.name, s.label, s.box, s.split) for s in reader]
    assert got == [("a.jpg", "acme", (10, 10, 30, 20), "train"), ("b.jpg", "globex", None, "val")]
    reasons = [r for _, r in reader.skipped]
    assert len(reasons) == 4
    assert any(r.startswith("refused: path leaves") for r in reasons)
    assert any("image file not found" in r for r in reasons)
    assert any("outside the 64x48 image" in r for r in reasons)
    assert any("row 7" in r and "label" in r for r in reasons)


def test_manifest_never_reads_outside_its_folder(tmp_path):
    root = tmp_path / "set"
    _img(tmp_path / "secret.jpg")
    root.mkdir()
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    manifest = root / "m.jsonl"
    manifest.write_text(
        json.dumps({"path": str(tmp_path / "secret.jpg"), "label": "x"}) + "\n" + json.dumps({"path": "link.jpg", "label": "x"}) + "\n"
    )
    reader = open_trainset(manifest)
    assert list(reader) == []
    assert [r.split(":")[0] for _, r in reader.skipped] == ["refused", "refused"]


def test_manifest_jsonl(tmp_path):
    _img(tmp_path / "a.png", box=(4, 4, 20, 20))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"path": "a.png", "label": "acme", "box": [4, 4, 20, 20]}) + "\n"
        "{not json\n"
        "\n"
        + json.dumps({"path": str(tmp_path / "a.png"), "label": "acme", "x0": 0, "y0": 0, "x1": 10, "y1": 10, "split": "test"}) + "\n"
        + json.dumps({"path": "a.png", "label": "acme", "box": [1, 2, 3]}) + "\n"
    )
    reader = open_trainset(manifest)
    assert [(s.label, s.box, s.split) for s in reader] == [("acme", (4, 4, 20, 20), None), ("acme", (0, 0, 10, 10), "test")]
    reasons = [r for _, r in reader.skipped]
    assert reasons[0].startswith("line 2: not JSON")
    assert reasons[1].startswith("line 5: box")


def test_manifest_missing_column_names_file_and_fix(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image,label\na.jpg,acme\n")
    with pytest.raises(MarkguardError, match=r"m\.csv: missing column\(s\) \['path'\]; the header must be path,label"):
        open_trainset(bad)


def test_manifest_as_a_spreadsheet_saves_it_and_unreadable_files_are_one_line(tmp_path):
    _img(tmp_path / "a.jpg")
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfpath,label\na.jpg,acme\n")  # the byte-order mark would rename the first column
    assert [(s.path.name, s.label) for s in open_trainset(excel)] == [("a.jpg", "acme")]
    big = tmp_path / "big.csv"
    big.write_text("path,label\n" + "a.jpg," + "x" * 200_000 + "\n")
    with pytest.raises(MarkguardError, match=r"big\.csv:2: unreadable CSV \(field larger than field limit"):
        list(open_trainset(big))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps({"path": "a.jpg", "label": "caf\u00e9"}).encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    with pytest.raises(MarkguardError, match=r"latin\.jsonl: not UTF-8 text"):
        list(open_trainset(latin))


def test_logodet3k(tmp_path):
    reader = open_trainset(make_logodet3k(tmp_path / "set"))
    got = sorted((s.path.name, s.label, s.box, s.group) for s in reader)
    assert got == [
        ("1.jpg", "acme", (1, 2, 30, 20), "Food"),
        ("1.jpg", "acme", (40, 10, 64, 48), "Food"),
        ("5.jpg", "Globex", (0, 0, 10, 10), "Clothes"),
    ]
    reasons = _reasons(reader)
    assert reasons["2.jpg"] == "no annotation file 2.xml for it"
    assert reasons["3.xml"].startswith("malformed XML")
    assert "outside the 64x48 image" in reasons["4.jpg"]


def test_logodet3k_strict_raises_naming_the_file(tmp_path):
    with pytest.raises(MarkguardError, match=r"Globex/3\.xml: malformed XML"):
        list(open_trainset(make_logodet3k(tmp_path / "set"), strict=True))


def test_flickrlogos32(tmp_path):
    reader = open_trainset(make_flickrlogos32(tmp_path / "set"))
    got = sorted((s.path.name, s.label, s.box, s.split) for s in reader)
    # "x y width height" becomes (x0, y0, x1, y1)
    assert got == [
        ("1.jpg", "adidas", (5, 6, 25, 16), "train"),
        ("1.jpg", "adidas", (30, 20, 40, 30), "train"),
        ("9.jpg", "no-logo", None, "test"),
    ]
    assert _reasons(reader) == {"2.jpg": "no box file 2.jpg.bboxes.txt in classes/masks/"}


def test_flickrlogos32_bad_list_line(tmp_path):
    root = make_flickrlogos32(tmp_path / "set")
    (root / "valset.txt").write_text("adidas 1.jpg\n")
    with pytest.raises(MarkguardError, match=r"valset\.txt: line 1 .* expected 'class,filename'"):
        list(open_trainset(root))


def test_openlogo(tmp_path):
    reader = open_trainset(make_openlogo(tmp_path / "set"))
    got = sorted((s.path.name, s.label, s.box, s.split) for s in reader)
    assert got == [
        ("a.jpg", "adidas", (0, 0, 20, 20), "train"),
        ("b.jpg", "nike", (30, 5, 50, 40), "test"),
        ("b.jpg", "nike_text", (5, 5, 25, 15), "test"),
    ]
    assert _reasons(reader) == {"c.jpg": "no annotation file c.xml for it"}


def test_openlogo_points_at_inner_folder(tmp_path):
    make_openlogo(tmp_path / "openlogo")
    with pytest.raises(MarkguardError, match="point at that folder"):
        open_trainset(tmp_path, "openlogo")


def test_stanford_online_products(tmp_path):
    reader = open_trainset(make_sop(tmp_path / "set"))
    got = [(s.path.name, s.label, s.split, s.group) for s in reader]
    assert got == [("111_0.JPG", "1", "train", "bicycle"), ("111_1.JPG", "1", "train", "bicycle"), ("222_0.JPG", "3", "test", "chair")]
    assert _reasons(reader) == {"gone.JPG": "image file not found"}


def test_stanford_online_products_wrong_header(tmp_path):
    root = make_sop(tmp_path / "set")
    (root / "Ebay_test.txt").write_text("id class path\n")
    with pytest.raises(MarkguardError, match=r"Ebay_test\.txt: header is .* expected 'image_id class_id super_class_id path'"):
        open_trainset(root)


def test_products10k(tmp_path):
    reader = open_trainset(make_products10k(tmp_path / "set"))
    got = [(s.path.parent.name, s.path.name, s.label, s.split, s.group) for s in reader]
    assert got == [("train", "0.jpg", "7", "train", "2"), ("train", "1.jpg", "8", "train", "2"), ("test", "5.jpg", "7", "test", None)]
    assert _reasons(reader) == {"6.jpg": "image file not found"}


def test_voc_box_and_size_parsing(tmp_path):
    path = _voc(tmp_path / "a.xml", [("x", (1, 2, 3, 4))], size=(640, 480))
    assert read_voc(path) == ((640, 480), [("x", (1, 2, 3, 4))])
    path.write_text("<annotation><object><name>x</name></object></annotation>")
    with pytest.raises(ValueError, match="no <bndbox>"):
        read_voc(path)


def test_check_box_clips_small_overruns_and_refuses_large_ones():
    assert check_box((-1, 0, 65, 48), (64, 48)) == (0, 0, 64, 48)  # 1-based / rounding slop
    assert "outside" in check_box((0, 0, 70, 48), (64, 48))
    assert "empty" in check_box((10, 10, 10, 20), (64, 48))


def test_unknown_format_and_unknown_layout(tmp_path):
    with pytest.raises(MarkguardError, match="unknown training-set format 'coco'"):
        open_trainset(tmp_path, "coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MarkguardError, match="not a known training-set layout"):
        open_trainset(tmp_path / "empty")


def test_a_second_pass_reports_only_its_own_skips(tmp_path):
    reader = open_trainset(make_imagefolder(tmp_path / "set"))
    list(reader)
    list(reader)
    assert len(reader.skipped) == 1


# --------------------------------------------------------------------------- crops and summary


def test_crops_cut_the_box(tmp_path):
    path = _img(tmp_path / "a.png", size=(100, 80), color=(255, 255, 255), box=(20, 30, 60, 50))
    samples = [TrainSample(path, "acme", (20, 30, 60, 50)), TrainSample(path, "acme", (0, 0, 4, 4)), TrainSample(path, "acme")]
    stream = crops(samples)
    out = list(stream)
    assert [c.image.size for c in out] == [(40, 20), (100, 80)]
    assert out[0].image.getextrema() == ((255, 255), (0, 0), (0, 0))  # all red: exactly the box
    assert stream.skipped == [(path, "crop [0, 0, 4, 4] is under 8 px on a side")]


def test_crops_pad_and_clip(tmp_path):
    path = _img(tmp_path / "a.png", size=(100, 80))
    (crop,) = crops([TrainSample(path, "acme", (0, 10, 40, 30))], pad=0.25)
    assert crop.image.size == (50, 30)  # 10 px more right, 5 up and down; the left edge stays at 0


def test_crops_skip_undecodable_or_raise_when_strict(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = _img(tmp_path / "good.jpg")
    stream = crops([TrainSample(bad, "x", (0, 0, 10, 10)), TrainSample(bad, "x", (0, 0, 20, 20)), TrainSample(good, "x")])
    assert [c.sample.path for c in stream] == [good]
    assert [p for p, _ in stream.skipped] == [bad]  # decoded (and reported) once, not once per box
    with pytest.raises(MarkguardError, match="bad.jpg"):
        list(crops([TrainSample(bad, "x")], strict=True))


def test_summary_counts_and_lines(tmp_path):
    summary = summarize(open_trainset(make_flickrlogos32(tmp_path / "set")))
    assert (summary.samples, summary.boxes, summary.labels, summary.splits) == (3, 2, {"adidas": 2, "no-logo": 1}, {"train": 2, "test": 1})
    text = "\n".join(summary.lines())
    assert "3 samples, 2 labels, 2 with boxes, 1 skipped" in text
    assert "skipped " in text and "2.jpg" in text



def test_cli_check_trainset(tmp_path, capsys):
    root = make_sop(tmp_path / "set")
    assert main(["data", "check-trainset", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(sop): 3 samples, 2 labels" in out
    assert "gone.JPG: image file not found" in out
