"""The review page in a real headless Chromium: rows render, pictures load, hash filters and paging work, no injection."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from markguard.infer.report import write_report
from test_report import EVIL_ID, _row, make_scan  # sibling module: pytest puts tests/infer on sys.path

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


def chromium(tmp: Path, url: str, *args: str, window=(1280, 4000)) -> str:
    """Run headless Chromium on ``url`` and return its stdout (the DOM, with --dump-dom)."""
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        # virtual time lets scripts and file:// images finish without a wall-clock sleep
        "--virtual-time-budget=5000", f"--window-size={window[0]},{window[1]}", *args, url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """The parts of a dumped report page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.imgs: list[dict] = []
        self.body: dict = {}
        self.ids: dict[str, dict] = {}
        self.text_of: dict[str, str] = {}
        self._capture: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "row":
            self.rows.append(a)
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "body":
            self.body = a
        if tag == "title":
            self._capture = "<title>"
            self.text_of["<title>"] = ""
        if "id" in a:
            self.ids[a["id"]] = a
            if tag in ("span", "p"):
                self._capture = a["id"]
                self.text_of[a["id"]] = ""

    def handle_endtag(self, tag):
        self._capture = None

    def handle_data(self, data):
        if self._capture:
            self.text_of[self._capture] += data

    @property
    def listings(self) -> list[str]:
        return [r["data-listing"] for r in self.rows]


def open_page(tmp: Path, out: Path, fragment: str = "") -> Dom:
    dom = Dom(chromium(tmp, (out / "report.html").as_uri() + fragment, "--dump-dom"))
    assert dom.body.get("data-ready") == "1", "the page's script did not finish rendering"
    return dom


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    out = make_scan(tmp)
    write_report(out)
    return tmp, out


def test_rows_render_in_score_order_with_pictures_loaded(report):
    tmp, out = report
    dom = open_page(tmp, out)
    assert dom.listings == ["L001", "L007", EVIL_ID, "L005", "L006", "L008", "L002"]
    assert dom.text_of["showing"] == "showing 1\u20137 of 7"
    # 7 listing photos (placeholders included) + 6 genuine marks (L008's brand has no reference)
    assert len(dom.imgs) == 13
    assert [i.get("data-loaded") for i in dom.imgs] == ["1"] * 13


def test_untrusted_listing_id_stays_text(report):
    tmp, out = report
    dom = open_page(tmp, out)
    # had the id been parsed as markup, its onerror would have set data-pwned and its script retitled the page
    assert "data-pwned" not in dom.body
    assert dom.text_of["<title>"].startswith("markguard review")
    assert EVIL_ID in dom.listings
    assert all(i.get("src", "").startswith("report/thumbs/") for i in dom.imgs)


def test_hash_filters_status_and_brand(report):
    tmp, out = report
    dom = open_page(tmp, out, "#status=review&brand=acme")
    assert dom.listings == ["L005", "L006"]
    assert {(r["data-status"], r["data-brand"]) for r in dom.rows} == {("review", "acme")}
    assert dom.text_of["showing"] == "showing 1\u20132 of 2"


def test_hash_text_search_on_seller(report):
    tmp, out = report
    dom = open_page(tmp, out, "#q=S-002")  # case-insensitive
    assert dom.listings == ["L005", "L002"]


def test_hash_pagination(report):
    tmp, out = report
    dom = open_page(tmp, out, "#size=3&page=2")
    assert dom.listings == ["L005", "L006", "L008"]
    assert dom.text_of["showing"] == "showing 4\u20136 of 7"
    assert dom.body.get("data-page") == "2"
    assert "disabled" not in dom.ids["prev"] and "disabled" not in dom.ids["next"]
    last = open_page(tmp, out, "#size=3&page=99")  # past the end: clamped to the last page
    assert last.listings == ["L002"] and "disabled" in last.ids["next"]


def test_no_match_and_nothing_flagged(report, tmp_path):
    tmp, out = report
    dom = open_page(tmp, out, "#brand=nosuchbrand")
    assert dom.listings == [] and dom.text_of["empty"] == "No listing matches these filters."
    empty = make_scan(tmp_path, [_row("L003", "L003.jpg", "pass", 0.1)])
    write_report(empty)
    dom = open_page(tmp_path, empty)
    assert dom.listings == [] and dom.text_of["empty"] == "Nothing flagged."
    assert dom.text_of["showing"] == "showing 0 of 0"


def test_screenshot_is_not_blank(report):
    tmp, out = report
    shot = tmp / "shot.png"
    chromium(tmp, (out / "report.html").as_uri(), f"--screenshot={shot}", window=(1280, 900))
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 100  # text, badges and photos, not one flat fill
    # the first listing's blue photo is on screen: a rendered page, not just the header
    assert sum(n for n, c in colours if c[2] > 150 and c[0] < 90 and c[1] < 130) > 5000


def test_ten_thousand_rows_first_page(tmp_path):
    rows = [
        _row(f"B{i:05d}", f"B{i:05d}.jpg", "flag" if i % 3 else "review", round(1 - i / 20000, 6), "acme", "acme-logo", [1, 1, 9, 9])
        for i in range(10_000)
    ]
    out = make_scan(tmp_path, rows)  # no such images in the dump: every row gets the placeholder
    write_report(out)
    assert len(json.loads((out / "report" / "rows.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))["rows"]) == 10_000
    dom = open_page(tmp_path, out)
    assert len(dom.rows) == 50
    assert dom.listings[0] == "B00000" and dom.listings[-1] == "B00049"
    assert dom.text_of["showing"] == "showing 1\u201350 of 10000"
    dom = open_page(tmp_path, out, "#status=review&page=200&size=10")
    assert len(dom.rows) == 10 and {r["data-status"] for r in dom.rows} == {"review"}
    assert dom.text_of["showing"] == "showing 1991\u20132000 of 3334"


class EvidenceDom(HTMLParser):
    """Each row's evidence lines (data-ev → text), and the attributes they carry."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.attrs: dict[tuple[str, str], dict] = {}
        self._row: str | None = None
        self._ev: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "row":
            self._row = a["data-listing"]
            self.rows[self._row] = {}
        elif "data-ev" in a and self._row is not None:
            self._ev = a["data-ev"]
            self.rows[self._row][self._ev] = ""
            self.attrs[(self._row, self._ev)] = a

    def handle_endtag(self, tag):
        if tag == "div":
            self._ev = None

    def handle_data(self, data):
        if self._ev is not None:
            self.rows[self._row][self._ev] += data


def test_the_evidence_is_shown_beside_the_photo(tmp_path):
    from test_report import EVIDENCE_ROW, PLAIN_ROW

    out = make_scan(tmp_path, [EVIDENCE_ROW, PLAIN_ROW])
    write_report(out)
    text = chromium(tmp_path, (out / "report.html").as_uri(), "--dump-dom")
    assert Dom(text).body.get("data-ready") == "1"
    ev = EvidenceDom(text).rows
    assert ev["L001"] == {"probability": "probability 0.931", "similarity": "similarity 0.710 (above background: 0.312)",
                          "text": "text read \u201cADIBAS\u201d \u2192 adidas (1 edit)",
                          "inliers": "34 keypoint inliers (25% of the mark), verified; outline in green"}
    assert ev["L002"] == {"similarity": "similarity 0.620", "text": "text: not read: over the batch's OCR budget (25% of photos)"}
    # on screen: the verified outline's green (nothing else on a page of this one row is that green: its photo is
    # blue, its box red, its reference a red disc)
    alone = make_scan(tmp_path / "alone", [EVIDENCE_ROW])
    write_report(alone)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, (alone / "report.html").as_uri(), f"--screenshot={shot}", window=(1280, 900))
    img = Image.open(shot).convert("RGB")
    assert sum(n for n, (r, g, b) in img.getcolors(maxcolors=1 << 20) if g > 150 and r < 90 and b < 120) > 50
