"""The review report built from a small fake scan output: rows, escaping, thumbnails, bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from markguard.errors import MarkguardError
from markguard.infer.report import PLACEHOLDER, write_report

PHOTO_SIZE = (640, 480)
PHOTO_RGB = (40, 90, 200)  # flat blue: any red on a thumbnail can only be the drawn box
EVIL_ID = '<script>document.title="pwned"</script><img src=x onerror="document.body.setAttribute(\'data-pwned\',1)">'
EVIL_BRAND = '"><b id=evilbrand>'

ACME_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50" viewBox="0 0 100 50">
<rect x="5" y="5" width="90" height="40" fill="#0a0"/></svg>"""


def _row(listing_id, image, status, score, brand=None, mark=None, box=None, seller="s-001", error=None, extra=()):
    matches = [] if brand is None else [{"brand": brand, "mark": mark, "score": score, "box": box}]
    matches += list(extra)
    return {
        "listing_id": listing_id,
        "image": image,
        "seller_id": seller,
        "status": status,
        "score": score,
        "brand": brand,
        "mark": mark,
        "box": box,
        "matches": matches,
        "error": error,
    }


def make_scan(tmp: Path, rows: list[dict] | None = None, *, images=("L001", "L002", "L003", "L005", "L007", "evil")) -> Path:
    """A scan's OUT folder over a folder dump of flat photos; returns OUT."""
    dump, gallery, out = tmp / "dump", tmp / "gallery", tmp / "out"
    for d in (dump, gallery / "acme", gallery / "globex", out):
        d.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", PHOTO_SIZE, PHOTO_RGB).save(dump / f"{name}.jpg", quality=95)
    (dump / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg any more")
    logo = Image.new("RGBA", (120, 120), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse([10, 10, 110, 110], fill=(200, 0, 0, 255))
    logo.save(gallery / "acme" / "acme-logo.png")
    (gallery / "globex" / "globex-word.svg").write_text(ACME_SVG)

    if rows is None:
        rows = [
            _row("L001", "L001.jpg", "flag", 0.91, "acme", "acme-logo", [100, 80, 400, 300], seller="s-001",
                 extra=[{"brand": "globex", "mark": "globex-word", "score": 0.55, "box": [450, 300, 600, 450]}]),
            _row("L002", "L002.jpg", "review", 0.62, "globex", "globex-word", [10, 10, 200, 100], seller="s-002"),
            _row("L003", "L003.jpg", "pass", 0.20, seller="s-003"),
            _row("L004", "L004.jpg", "error", None, seller=None, error="not a readable image (<b>bad</b>)"),
            _row(EVIL_ID, "evil.jpg", "flag", 0.75, "acme", "acme-logo", [0, 0, 320, 240], seller='<i>seller</i>'),
            _row("L005", "L005.jpg", "review", 0.70, "acme", "acme-logo", [300, 200, 639, 479], seller="s-002"),
            _row("L006", "gone.jpg", "review", 0.66, "acme", "acme-logo", [1, 1, 50, 50], seller="s-004"),
            _row("L007", "L007.jpg", "allowed", 0.80, "acme", "acme-logo", [50, 50, 150, 150], seller="acme-store"),
            _row("L008", "broken.jpg", "review", 0.64, EVIL_BRAND, "m", [1, 1, 50, 50], seller="s-005"),
        ]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "input": str(dump.resolve()),
        "references": {
            "acme/acme-logo": str((gallery / "acme" / "acme-logo.png").resolve()),
            "globex/globex-word": str((gallery / "globex" / "globex-word.svg").resolve()),
        },
        "counts": {},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def read_rows(out: Path) -> list[dict]:
    js = (out / "report" / "rows.js").read_text()
    prefix = "window.MARKGUARD_REPORT = "
    assert js.startswith(prefix) and js.rstrip().endswith(";")
    return json.loads(js[len(prefix):].rstrip().rstrip(";"))["rows"]


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


@pytest.fixture
def scan_out(tmp_path):
    return make_scan(tmp_path)


def test_rows_sorted_by_score_and_pass_excluded(scan_out):
    path = write_report(scan_out)
    assert path == scan_out / "report.html"
    rows = read_rows(scan_out)
    assert [r["id"] for r in rows] == ["L001", "L007", EVIL_ID, "L005", "L006", "L008", "L002"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {r["status"] for r in rows} == {"flag", "review", "allowed"}
    l1 = by_id(rows)["L001"]
    assert (l1["brand"], l1["mark"], l1["seller"]) == ("acme", "acme-logo", "s-001")
    assert l1["matches"] == [{"brand": "globex", "mark": "globex-word", "score": 0.55}]


def test_all_statuses_include_pass_but_never_error(scan_out):
    write_report(scan_out, statuses=("flag", "review", "allowed", "pass", "error"))
    ids = [r["id"] for r in read_rows(scan_out)]
    assert "L003" in ids and "L004" not in ids


def test_counts_and_error_section(scan_out):
    page = write_report(scan_out).read_text()
    for status, n in {"flag": 2, "review": 4, "allowed": 1, "pass": 1, "error": 1}.items():
        assert f'<li class="st-{status}"><b>{n}</b> {status}</li>' in page
    # the reason is shown, escaped, inside a collapsed <details> (no "open" attribute)
    assert '<details id="errors"><summary>1 listing(s) could not be scanned</summary>' in page
    assert "not a readable image (&lt;b&gt;bad&lt;/b&gt;)" in page
    assert "L004" in page


def test_untrusted_text_is_escaped(tmp_path):
    rows = [
        _row(EVIL_ID, "evil.jpg", "flag", 0.9, EVIL_BRAND, "m", None),
        _row(EVIL_ID, "nope.jpg", "error", None, error=EVIL_ID),
    ]
    out = make_scan(tmp_path, rows)
    page = write_report(out).read_text()
    # only the page's own two script tags, and no element smuggled in through a brand option or error row
    assert page.count("<script") == 2
    assert "<img src=x" not in page and "<b id=evilbrand>" not in page
    assert "&lt;script&gt;document.title" in page
    assert '<option value="&quot;&gt;&lt;b id=evilbrand&gt;">' in page
    # rows.js is a script file, never parsed as HTML; the id survives there exactly, as data
    assert by_id(read_rows(out))[EVIL_ID]["brand"] == EVIL_BRAND
    assert "<" not in (out / "report" / "rows.js").read_text().split("=", 1)[0]


def test_listing_thumbnail_has_box_drawn_at_thumbnail_scale(scan_out):
    write_report(scan_out, thumb_size=256)
    row = by_id(read_rows(scan_out))["L001"]
    thumb = Image.open(scan_out / "report" / "thumbs" / row["thumb"]).convert("RGB")
    assert max(thumb.size) == 256 and thumb.size == (256, 192)
    s = 256 / PHOTO_SIZE[0]
    x0, y0, x1, y1 = (round(v * s) for v in (100, 80, 400, 300))

    def red(xy):
        r, g, b = thumb.getpixel(xy)
        return r > 170 and g < 90 and b < 90

    def blue(xy):
        r, g, b = thumb.getpixel(xy)
        return abs(r - PHOTO_RGB[0]) < 25 and abs(g - PHOTO_RGB[1]) < 25 and abs(b - PHOTO_RGB[2]) < 25

    mid_y, mid_x = (y0 + y1) // 2, (x0 + x1) // 2
    assert red((x0 + 1, mid_y)) and red((x1 - 1, mid_y)) and red((mid_x, y0 + 1)) and red((mid_x, y1 - 1))
    # had the box been drawn in original pixels it would sit at x=100, far right of x0=40
    assert blue((mid_x, mid_y)) and blue((x0 - 8, mid_y)) and blue((5, 5))
    # the second match is drawn too, in its own colour (orange), where its box maps to
    ox = round(450 * s) + 1
    r, g, b = thumb.getpixel((ox, round(375 * s)))
    assert r > 200 and 110 < g < 220 and b < 90


def test_reference_marks_made_once_svg_included(scan_out):
    write_report(scan_out)
    rows = by_id(read_rows(scan_out))
    thumbs = scan_out / "report" / "thumbs"
    marks = sorted(p.name for p in thumbs.glob("m-*.jpg"))
    assert len(marks) == 2  # acme (5 rows) and globex (1 row); the unknown EVIL_BRAND has no reference
    assert rows["L001"]["ref"] == rows["L005"]["ref"] == rows[EVIL_ID]["ref"] != rows["L002"]["ref"]
    assert rows["L008"]["ref"] is None
    svg = Image.open(thumbs / rows["L002"]["ref"]).convert("RGB")
    assert svg.getpixel((svg.width // 2, svg.height // 2))[1] > 120  # the SVG's green rect, rendered
    logo = Image.open(thumbs / rows["L001"]["ref"]).convert("RGB")
    assert logo.getpixel((2, 2)) > (240, 240, 240)  # transparency flattened onto white, not black
    assert logo.getpixel((logo.width // 2, logo.height // 2))[0] > 170


def test_unreadable_or_missing_image_gets_placeholder(scan_out):
    page = write_report(scan_out).read_text()
    rows = by_id(read_rows(scan_out))
    assert rows["L006"]["thumb"] == PLACEHOLDER and rows["L006"]["note"] == "not found in the dump"
    # the decoder's own reason is passed through (its wording belongs to markguard.datasets.decode)
    assert rows["L008"]["thumb"] == PLACEHOLDER and rows["L008"]["note"] not in (None, "", "not found in the dump")
    assert rows["L001"]["thumb"] != PLACEHOLDER and rows["L001"]["note"] is None
    assert (scan_out / "report" / "thumbs" / PLACEHOLDER).is_file()
    assert "could not be read" not in page


def test_dump_gone_still_writes_report_with_a_note(scan_out, tmp_path):
    for p in (tmp_path / "dump").iterdir():
        p.unlink()
    (tmp_path / "dump").rmdir()
    page = write_report(scan_out).read_text()
    rows = read_rows(scan_out)
    assert rows and all(r["thumb"] == PLACEHOLDER for r in rows)
    assert "The scanned dump could not be read" in page


def test_zero_rows_says_nothing_flagged(tmp_path):
    out = make_scan(tmp_path, [_row("L003", "L003.jpg", "pass", 0.1)])
    page = write_report(out).read_text()
    assert read_rows(out) == []
    assert '<p id="empty">Nothing flagged.</p>' in page
    assert '<li class="st-pass"><b>1</b> pass</li>' in page


def test_empty_results_file(tmp_path):
    out = make_scan(tmp_path, [])
    assert "Nothing flagged." in write_report(out).read_text()


@pytest.mark.parametrize("missing", ["results.jsonl", "summary.json"])
def test_missing_scan_files_name_the_file_and_the_fix(scan_out, missing):
    (scan_out / missing).unlink()
    with pytest.raises(MarkguardError) as e:
        write_report(scan_out)
    msg = str(e.value)
    assert "\n" not in msg and missing in msg and f"markguard scan DUMP -o {scan_out}" in msg
    assert not (scan_out / "report.html").exists()


def test_bad_results_line_names_file_and_line(scan_out):
    with (scan_out / "results.jsonl").open("a") as f:
        f.write('{"listing_id": "half a li\n')
    with pytest.raises(MarkguardError, match=r"results\.jsonl:10: not a valid result row"):
        write_report(scan_out)


def test_rerun_replaces_files_and_drops_stale_thumbs(scan_out):
    write_report(scan_out)
    old = {p.name for p in (scan_out / "report" / "thumbs").iterdir()}
    rows = [json.loads(line) for line in (scan_out / "results.jsonl").read_text().splitlines()]
    rows[0]["box"] = [0, 0, 100, 100]  # L001 rescanned with a different box: its thumbnail must change
    (scan_out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(scan_out)
    new = {p.name for p in (scan_out / "report" / "thumbs").iterdir()}
    assert by_id(read_rows(scan_out))["L001"]["thumb"] in new - old
    assert len(old - new) == 1
    leftovers = [p for p in scan_out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cli_report_subcommand(scan_out, capsys):
    from markguard.commands import report

    parser = argparse.ArgumentParser(prog="markguard")
    report.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(scan_out), "--page-size", "20", "--all"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(scan_out / "report.html")
    assert "var DEFAULT_SIZE = 20;" in (scan_out / "report.html").read_text()
    assert "L003" in by_id(read_rows(scan_out))  # --all brings the passes in
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(scan_out), "--page-size", "0"])


# a flagged row with every kind of evidence: probability, similarity, the text read and its brand, a verified outline
OUTLINE = [[130.0, 110.0], [370.0, 120.0], [360.0, 280.0], [140.0, 270.0]]
EVIDENCE_ROW = _row("L001", "L001.jpg", "flag", 0.91, "acme", "acme-logo", [100, 80, 400, 300])
EVIDENCE_ROW["matches"][0] |= {"probability": 0.9312, "evidence": {
    "similarity": 0.7104, "similarity_norm": 0.3121, "background": 0.58, "inliers": 34, "coverage": 0.25, "verified": True,
    "outline": OUTLINE, "text": "ADIBAS", "text_brand": "adidas", "text_distance": 1}}
PLAIN_ROW = _row("L002", "L002.jpg", "review", 0.62, "globex", "globex-word", [10, 10, 200, 100])
PLAIN_ROW["matches"][0]["evidence"] = {"text": None, "text_error": "not read: over the batch's OCR budget (25% of photos)",
                                       "inliers": "many"}  # a value of the wrong type is not shown


def test_each_row_carries_its_deciding_matchs_evidence_and_the_outline_is_drawn(tmp_path):
    out = make_scan(tmp_path, [EVIDENCE_ROW, PLAIN_ROW])
    write_report(out, thumb_size=256)
    rows = by_id(read_rows(out))
    assert rows["L001"]["evidence"] == {"probability": 0.9312, "similarity": 0.7104, "similarity_norm": 0.3121, "background": 0.58,
                                        "inliers": 34, "coverage": 0.25, "verified": True, "text": "ADIBAS",
                                        "text_brand": "adidas", "text_distance": 1, "outline": True}
    assert rows["L002"]["evidence"] == {"similarity": 0.62, "text_error": "not read: over the batch's OCR budget (25% of photos)",
                                        "outline": False}
    thumb = Image.open(out / "report" / "thumbs" / rows["L001"]["thumb"]).convert("RGB")
    s = 256 / PHOTO_SIZE[0]
    # the outline's top edge, halfway along, in green: neither the red box nor the blue photo
    x, y = round(250 * s), round(115 * s)
    assert any(g > 150 and r < 90 and b < 120 for r, g, b in (thumb.getpixel((x, y + d)) for d in (-1, 0, 1)))
    plain = Image.open(out / "report" / "thumbs" / rows["L002"]["thumb"]).convert("RGB")
    assert not any(g > 150 and r < 90 and b < 120 for _, (r, g, b) in plain.getcolors(1 << 20))  # no outline, no green


@pytest.mark.parametrize("planted", ["report/thumbs", "report"])
def test_a_planted_thumbs_link_is_refused_and_the_other_folder_untouched(scan_out, tmp_path, planted):
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "holiday.jpg").write_bytes(b"not ours")
    (pics / "thumbs").mkdir()
    (pics / "thumbs" / "holiday.jpg").write_bytes(b"not ours")
    link = scan_out / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(pics)
    with pytest.raises(MarkguardError, match="is a link"):
        write_report(scan_out)
    assert sorted(p.name for p in pics.rglob("*")) == ["holiday.jpg", "holiday.jpg", "thumbs"]  # nothing deleted, nothing written
