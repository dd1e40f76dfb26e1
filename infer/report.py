"""Review report: turns a scan's results.jsonl into a static HTML page a reviewer can filter and page through."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw

from markguard.fsio import atomic_write_bytes
from markguard.errors import DecodeError, MarkguardError
from markguard.infer.results import RESULTS, SUMMARY, ScanRow, read_results, read_summary

log = logging.getLogger(__name__)

STATUS_ORDER = ("flag", "review", "allowed", "pass", "error")
DEFAULT_STATUSES = ("flag", "review", "allowed")
BEST_BOX = (230, 0, 0)  # the best match: saturated red reads on almost any photo
OTHER_BOX = (255, 170, 0)  # further matches, so the eye goes to the best one first
PLACEHOLDER = "unavailable.jpg"
MAX_ERRORS_LISTED = 2000  # a broken dump can error on every row; the page must stay openable
THUMBS = Path("report") / "thumbs"


@dataclass
class ReportRow:
    """How the page shows one result row: its thumbnails, the boxes worth drawing, and notes; ``thumb``/``ref``
    are file names under report/thumbs/."""

    order: int  # line number in results.jsonl, so equal scores keep the scan's order
    result: ScanRow
    boxes: list[list[float]]  # best box first
    title: str | None = None
    thumb: str = PLACEHOLDER
    ref: str | None = None
    note: str | None = None  # why the listing photo could not be shown

    def to_js(self) -> dict:
        r = self.result
        return {
            "id": r.listing_id,
            "seller": r.seller_id,
            "title": self.title,
            "status": r.status,
            "score": None if r.score is None else round(r.score, 4),
            "brand": r.brand,
            "mark": r.mark,
            "thumb": self.thumb,
            "ref": self.ref,
            "note": self.note,
            # the best is the row itself; five more is plenty to read
            "matches": [{"brand": m.brand, "mark": m.mark, "score": m.score} for m in r.matches[1:6]],
        }


@dataclass
class ScanOutput:
    """What the report needs from a scan: the rows to show, the error rows, and the counts."""

    summary: dict
    rows: list[ReportRow] = field(default_factory=list)
    errors: list[ScanRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    n_errors: int = 0


def write_report(
    out_dir: str | Path,
    *,
    statuses: Iterable[str] = DEFAULT_STATUSES,
    thumb_size: int = 256,
    page_size: int = 50,
) -> Path:
    """Write OUT/report.html, OUT/report/rows.js and OUT/report/thumbs/ for the rows whose status is in ``statuses``."""
    out_dir = Path(out_dir)
    statuses = tuple(s for s in statuses if s != "error")  # error rows have their own section
    scan = read_scan_output(out_dir, statuses)
    thumbs_dir = out_dir / THUMBS
    thumbs_dir.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    written = {PLACEHOLDER}
    atomic_write_bytes(thumbs_dir / PLACEHOLDER, _jpeg(_placeholder(thumb_size)))
    notes += _listing_thumbs(scan, thumbs_dir, thumb_size, written)
    notes += _reference_thumbs(scan, thumbs_dir, thumb_size, written)
    for stale in thumbs_dir.glob("*.jpg"):  # left by an earlier report of a different scan
        if stale.name not in written:
            stale.unlink()

    scan.rows.sort(key=lambda r: (-r.result.score if r.result.score is not None else math.inf, r.order))
    payload = {"rows": [r.to_js() for r in scan.rows]}
    # ensure_ascii keeps U+2028/2029 and any odd bytes out of the script; the file is never parsed as HTML
    js = "window.MARKGUARD_REPORT = " + json.dumps(payload, ensure_ascii=True, separators=(",", ":")) + ";\n"
    atomic_write_bytes(out_dir / "report" / "rows.js", js.encode("ascii"))

    page = _render_html(scan, statuses, page_size, notes)
    target = out_dir / "report.html"
    atomic_write_bytes(target, page.encode("utf-8"))
    return target


def read_scan_output(out_dir: Path, statuses: tuple[str, ...]) -> ScanOutput:
    """Read summary.json and stream results.jsonl, keeping only the rows the report shows."""
    fix = f"re-run `markguard scan DUMP -o {out_dir}` to finish or redo it"
    if not (out_dir / RESULTS).is_file():
        raise MarkguardError(f"{out_dir / RESULTS}: not found; run `markguard scan DUMP -o {out_dir}` first")
    if not (out_dir / SUMMARY).is_file():
        raise MarkguardError(f"{out_dir / SUMMARY}: not found; run `markguard scan DUMP -o {out_dir}` first")
    scan = ScanOutput(read_summary(out_dir, fix=fix))
    for n, row in enumerate(read_results(out_dir / RESULTS, fix=fix), 1):
        scan.counts[row.status] = scan.counts.get(row.status, 0) + 1
        if row.status == "error":
            scan.n_errors += 1
            if len(scan.errors) < MAX_ERRORS_LISTED:
                scan.errors.append(row)
        elif row.status in statuses:
            boxes = [b for b in [row.box] + [m.box for m in row.matches[1:]] if _valid_box(b)]
            scan.rows.append(ReportRow(n, row, boxes))
    return scan


def _listing_thumbs(scan: ScanOutput, thumbs_dir: Path, size: int, written: set[str]) -> list[str]:
    """Stream the dump once, drawing each wanted listing photo with its boxes; unreadable ones keep the placeholder."""
    from markguard.datasets.decode import decode_image
    from markguard.datasets.listings import open_dump

    wanted: dict[str, list[ReportRow]] = {}
    for row in scan.rows:
        row.note = "not found in the dump"  # cleared when the dump yields the image
        wanted.setdefault(row.result.image, []).append(row)
    if not wanted:
        return []
    source = scan.summary.get("input")
    if not source:
        for row in scan.rows:
            row.note = "summary.json names no input dump"
        log.warning("summary.json has no 'input'; listing photos are shown as placeholders")
        return ["summary.json does not name the scanned dump (key <code>input</code>), so listing photos are not shown."]

    from tqdm import tqdm

    progress = tqdm(total=len(wanted), desc="report thumbnails", unit="img", disable=None)
    try:
        for item in open_dump(source):
            rows = wanted.pop(item.image, None)  # popped: a repeated path in a manifest is drawn once
            if rows is None:
                continue
            try:
                if item.error:
                    raise DecodeError(item.error)
                decoded = decode_image(item.read_bytes(), target_size=size)
            except DecodeError as e:
                reason = e.reason
            except OSError as e:  # the file went away or became unreadable since the scan
                reason = f"cannot read file ({e.strerror or e})"
            else:
                reason = None
                for row in rows:
                    name = "l-" + _digest(row.result.image, json.dumps(row.boxes)) + ".jpg"
                    if name not in written:
                        atomic_write_bytes(thumbs_dir / name, _jpeg(_listing_thumb(decoded.image, decoded.orig_size, row.boxes, size)))
                        written.add(name)
                    row.thumb = name
            for row in rows:
                row.note, row.title = reason, _text(item.title)
            progress.update(1)
            if not wanted:  # a dump holds far more passes than flags: stop as soon as all are drawn
                break
    except MarkguardError as e:  # the dump moved or is no longer readable: the report is still worth having
        for rows in wanted.values():
            for row in rows:
                row.note = "dump unreadable"
        log.warning("listing photos not shown: %s", e)
        return [f"The scanned dump could not be read, so some listing photos are not shown: {html.escape(str(e))}"]
    finally:
        progress.close()
    return []


def _reference_thumbs(scan: ScanOutput, thumbs_dir: Path, size: int, written: set[str]) -> list[str]:
    """One thumbnail per matched genuine mark, from summary.json's references."""
    from markguard.datasets.decode import composite, load_mark

    refs = scan.summary.get("references")
    if not isinstance(refs, dict):
        refs = {}
    made: dict[str, str | None] = {}
    missing = 0
    for row in scan.rows:
        if not row.result.brand or not row.result.mark:
            continue
        key = f"{row.result.brand}/{row.result.mark}"
        if key not in made:
            made[key] = None
            path = refs.get(key)
            if path:
                try:
                    mark = composite(load_mark(path, size=size))  # onto white, as the index saw it
                    name = "m-" + _digest(key) + ".jpg"
                    mark.thumbnail((size, size))
                    atomic_write_bytes(thumbs_dir / name, _jpeg(mark))
                    written.add(name)
                    made[key] = name
                except (DecodeError, OSError) as e:
                    log.warning("reference %s (%s) not shown: %s", key, path, e)
            if made[key] is None:
                missing += 1
        row.ref = made[key]
    if missing:
        return [f"{missing} matched mark(s) have no readable reference image in summary.json's <code>references</code>."]
    return []


def _listing_thumb(image: Image.Image, orig_size: tuple[int, int], boxes: list[list[float]], size: int) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    # boxes are in the original's pixels; the decoded image may already be reduced (JPEG draft), so scale from orig_size
    sx, sy = thumb.width / orig_size[0], thumb.height / orig_size[1]
    draw = ImageDraw.Draw(thumb)
    width = max(2, round(size / 64))
    for i, (x0, y0, x1, y1) in reversed(list(enumerate(boxes))):  # best drawn last, on top
        rect = [
            min(max(x0 * sx, 0), thumb.width - 1),
            min(max(y0 * sy, 0), thumb.height - 1),
            min(max(x1 * sx, 0), thumb.width - 1),
            min(max(y1 * sy, 0), thumb.height - 1),
        ]
        draw.rectangle(rect, outline=BEST_BOX if i == 0 else OTHER_BOX, width=width if i == 0 else max(1, width // 2))
    return thumb


def _placeholder(size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (232, 232, 232))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (size - 1, size - 1)], fill=(190, 190, 190), width=2)
    draw.line([(0, size - 1), (size - 1, 0)], fill=(190, 190, 190), width=2)
    text = "image unavailable"
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)  # centred by hand: anchors need a TrueType font
    draw.text(((size - (x1 - x0)) // 2, (size - (y1 - y0)) // 2), text, fill=(90, 90, 90))
    return img


def _render_html(scan: ScanOutput, statuses: tuple[str, ...], page_size: int, notes: list[str]) -> str:
    e = html.escape
    known = [s for s in STATUS_ORDER if s in scan.counts or s in statuses or s == "error"]
    counts = "".join(
        f'<li class="st-{e(s)}"><b>{scan.counts.get(s, 0)}</b> {e(s)}</li>'
        for s in known + sorted(set(scan.counts) - set(known))
    )
    status_options = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in statuses)
    brands = sorted({r.result.brand for r in scan.rows if r.result.brand})
    brand_options = "".join(f'<option value="{e(b)}">{e(b)}</option>' for b in brands)
    sizes = sorted({25, 50, 100, 200, page_size})
    size_options = "".join(f'<option value="{n}"{" selected" if n == page_size else ""}>{n}</option>' for n in sizes)
    note_html = "".join(f'<p class="note">{n}</p>' for n in notes)  # notes are built here, escaped where they carry input

    if scan.n_errors:
        err_rows = "".join(
            f"<tr><td>{e(r.listing_id)}</td><td>{e(r.image)}</td><td>{e(r.error or 'no reason given')}</td></tr>"
            for r in scan.errors
        )
        more = scan.n_errors - len(scan.errors)
        more_html = f"<p>… and {more} more; see results.jsonl.</p>" if more > 0 else ""
        errors = (
            f'<details id="errors"><summary>{scan.n_errors} listing(s) could not be scanned</summary>'
            f"<table><thead><tr><th>listing</th><th>image</th><th>reason</th></tr></thead><tbody>{err_rows}</tbody></table>"
            f"{more_html}</details>"
        )
    else:
        errors = ""

    shown = " / ".join(statuses)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = _text(scan.summary.get("input")) or "unknown dump"
    empty = "Nothing flagged." if not scan.rows else ""
    values = {
        "TITLE": f"markguard review: {len(scan.rows)} listing(s)",
        "SOURCE": e(source),
        "GENERATED": e(generated),
        "SHOWN": e(shown),
        "COUNTS": counts,
        "NOTES": note_html,
        "STATUS_OPTIONS": status_options,
        "BRAND_OPTIONS": brand_options,
        "SIZE_OPTIONS": size_options,
        "PAGE_SIZE": str(int(page_size)),
        "EMPTY": empty,
        "EMPTY_HIDDEN": "" if empty else " hidden",
        "ERRORS": errors,
    }
    # one pass, so a value that happens to contain "{{...}}" is never substituted again
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], _PAGE)




def _jpeg(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode("utf-8")).hexdigest()[:20]


def _text(v) -> str | None:
    return None if v is None else str(v)


def _valid_box(b) -> bool:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return False
    try:
        x0, y0, x1, y1 = (float(v) for v in b)
    except (TypeError, ValueError):
        return False
    return all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0


# The page: all text from the scan is escaped above (html.escape) or set with textContent below, never innerHTML.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{TITLE}}</title>
<style>
:root { --fg:#1d1d1f; --muted:#6b6b73; --line:#e3e3e8; --bg:#fafafb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { padding:16px 24px 8px; background:#fff; border-bottom:1px solid var(--line); }
h1 { font-size:20px; margin:0 0 4px; }
.meta { color:var(--muted); margin:0 0 10px; word-break:break-all; }
.counts { list-style:none; display:flex; flex-wrap:wrap; gap:8px; padding:0; margin:0 0 8px; }
.counts li { padding:4px 10px; border-radius:14px; background:#eee; }
.counts b { font-size:16px; margin-right:3px; }
.st-flag { background:#fde2e1 !important; color:#a1110a; }
.st-review { background:#fff1cc !important; color:#7a5300; }
.st-allowed { background:#dcefff !important; color:#0b4f8a; }
.st-pass { background:#e4f6e4 !important; color:#1d6b1d; }
.st-error { background:#ececec !important; color:#444; }
.note { margin:8px 24px; padding:8px 12px; background:#fff6d6; border:1px solid #f0dc8a; border-radius:6px; }
#controls { display:flex; flex-wrap:wrap; gap:12px; align-items:end; padding:12px 24px; position:sticky; top:0; background:var(--bg); border-bottom:1px solid var(--line); z-index:1; }
#controls label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
#controls select, #controls input { font:inherit; padding:4px 6px; }
#controls input[type=search] { width:240px; }
.pager { display:flex; gap:10px; align-items:center; margin-left:auto; }
.pager button { font:inherit; padding:4px 12px; }
main { padding:8px 24px 24px; }
table.rows { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
table.rows th, table.rows td { padding:8px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
table.rows th { font-size:12px; color:var(--muted); font-weight:600; background:#f4f4f6; }
.pics { display:flex; gap:8px; align-items:flex-start; }
.pics figure { margin:0; }
.pics img { display:block; max-width:min(192px, 22vw); max-height:192px; border:1px solid var(--line); background:#f0f0f0; }
.pics figcaption { font-size:11px; color:var(--muted); }
.id { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; overflow-wrap:anywhere; }
.title { color:var(--muted); }
.score { font-variant-numeric:tabular-nums; font-weight:600; }
.badge { display:inline-block; padding:2px 8px; border-radius:10px; font-size:12px; }
.more { font-size:12px; color:var(--muted); }
.photo-note { font-size:11px; color:#a1110a; max-width:192px; }
#empty { padding:40px; text-align:center; font-size:18px; color:var(--muted); background:#fff; border:1px solid var(--line); }
#errors { margin:16px 24px 32px; }
#errors summary { cursor:pointer; font-weight:600; }
#errors table { border-collapse:collapse; margin-top:8px; background:#fff; }
#errors td, #errors th { border:1px solid var(--line); padding:4px 8px; text-align:left; word-break:break-all; }
</style>
</head>
<body>
<header>
<h1>{{TITLE}}</h1>
<p class="meta">Scan of <code>{{SOURCE}}</code> &middot; showing {{SHOWN}} &middot; generated {{GENERATED}}</p>
<ul class="counts" id="counts">{{COUNTS}}</ul>
</header>
{{NOTES}}
<form id="controls" onsubmit="return false">
<label>Status <select id="f-status"><option value="">all</option>{{STATUS_OPTIONS}}</select></label>
<label>Brand <select id="f-brand"><option value="">all</option>{{BRAND_OPTIONS}}</select></label>
<label>Listing or seller <input id="f-q" type="search" placeholder="search listing id, seller, title" autocomplete="off"></label>
<label>Per page <select id="f-size">{{SIZE_OPTIONS}}</select></label>
<div class="pager">
<button type="button" id="prev">&larr; prev</button>
<span id="showing">loading&hellip;</span>
<button type="button" id="next">next &rarr;</button>
</div>
</form>
<main>
<noscript><p class="note">This page needs JavaScript to list the rows.</p></noscript>
<p id="empty"{{EMPTY_HIDDEN}}>{{EMPTY}}</p>
<table class="rows" id="table" hidden>
<thead><tr><th>listing photo &rarr; genuine mark</th><th>listing</th><th>seller</th><th>brand</th><th>mark</th><th>score</th><th>status</th></tr></thead>
<tbody id="rows"></tbody>
</table>
</main>
{{ERRORS}}
<script src="report/rows.js"></script>
<script>
(function () {
  "use strict";
  var DATA = window.MARKGUARD_REPORT;
  var DEFAULT_SIZE = {{PAGE_SIZE}};
  var THUMBS = "report/thumbs/";
  var $ = function (id) { return document.getElementById(id); };
  var state = { status: "", brand: "", q: "", page: 1, size: DEFAULT_SIZE };

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text != null) n.textContent = String(text);  // textContent: scan data never becomes markup
    return n;
  }

  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.status = p.get("status") || "";
    state.brand = p.get("brand") || "";
    state.q = p.get("q") || "";
    state.page = Math.max(1, parseInt(p.get("page"), 10) || 1);
    var size = parseInt(p.get("size"), 10);
    state.size = size > 0 ? Math.min(size, 1000) : DEFAULT_SIZE;
  }

  function writeHash() {
    var p = new URLSearchParams();
    if (state.status) p.set("status", state.status);
    if (state.brand) p.set("brand", state.brand);
    if (state.q) p.set("q", state.q);
    if (state.page > 1) p.set("page", String(state.page));
    if (state.size !== DEFAULT_SIZE) p.set("size", String(state.size));
    var h = "#" + p.toString();
    // replaceState keeps typing in the search box out of the back-button history
    try { history.replaceState(null, "", h === "#" ? location.pathname + location.search : h); }
    catch (e) { location.hash = h; }
  }

  function ensureOption(select, value) {
    // a hash may name a brand/status with no row; keep it selectable so the page shows what was asked
    if (!value) return;
    for (var i = 0; i < select.options.length; i++) if (select.options[i].value === value) return;
    select.appendChild(new Option(value, value));
  }

  function syncControls() {
    ensureOption($("f-status"), state.status);
    ensureOption($("f-brand"), state.brand);
    ensureOption($("f-size"), String(state.size));
    $("f-status").value = state.status;
    $("f-brand").value = state.brand;
    $("f-size").value = String(state.size);
    if (document.activeElement !== $("f-q")) $("f-q").value = state.q;
  }

  function matches(r, q) {
    if (state.status && r.status !== state.status) return false;
    if (state.brand && r.brand !== state.brand) return false;
    if (q) {
      var hay = ((r.id || "") + "\\n" + (r.seller || "") + "\\n" + (r.title || "")).toLowerCase();
      if (hay.indexOf(q) < 0) return false;
    }
    return true;
  }

  function picture(src, alt, caption) {
    var fig = el("figure");
    var img = el("img");
    img.loading = "lazy";
    img.alt = alt;
    // data-loaded lets tests (and curious reviewers) see which pictures actually arrived
    img.onload = function () { img.setAttribute("data-loaded", "1"); };
    img.onerror = function () { img.setAttribute("data-loaded", "0"); };
    img.src = src;
    fig.appendChild(img);
    fig.appendChild(el("figcaption", null, caption));
    return fig;
  }

  function rowNode(r) {
    var tr = el("tr", "row");
    tr.setAttribute("data-listing", r.id);
    tr.setAttribute("data-status", r.status);
    tr.setAttribute("data-brand", r.brand || "");
    var pics = el("td");
    var box = el("div", "pics");
    box.appendChild(picture(THUMBS + (r.thumb || "unavailable.jpg"), "listing photo", "listing"));
    if (r.ref) box.appendChild(picture(THUMBS + r.ref, "genuine mark", "genuine " + (r.mark || "")));
    else if (r.mark) box.appendChild(el("div", "photo-note", "no reference image for this mark"));
    pics.appendChild(box);
    if (r.note) pics.appendChild(el("div", "photo-note", "photo: " + r.note));
    tr.appendChild(pics);
    var id = el("td");
    id.appendChild(el("div", "id", r.id));
    if (r.title) id.appendChild(el("div", "title", r.title));
    tr.appendChild(id);
    tr.appendChild(el("td", "id", r.seller == null ? "\\u2014" : r.seller));
    tr.appendChild(el("td", null, r.brand == null ? "\\u2014" : r.brand));
    var mark = el("td", null, r.mark == null ? "\\u2014" : r.mark);
    if (r.matches && r.matches.length) {
      var more = r.matches.map(function (m) {
        return (m.brand || "?") + "/" + (m.mark || "?") + (m.score == null ? "" : " " + m.score.toFixed(3));
      });
      mark.appendChild(el("div", "more", "also: " + more.join(", ")));
    }
    tr.appendChild(mark);
    tr.appendChild(el("td", "score", r.score == null ? "\\u2014" : r.score.toFixed(3)));
    var st = el("td");
    st.appendChild(el("span", "badge st-" + r.status.replace(/[^a-z]/g, ""), r.status));
    tr.appendChild(st);
    return tr;
  }

  function render() {
    syncControls();
    var rows = DATA.rows;
    var q = state.q.trim().toLowerCase();
    var hits = [];
    for (var i = 0; i < rows.length; i++) if (matches(rows[i], q)) hits.push(rows[i]);
    var n = hits.length;
    var pages = Math.max(1, Math.ceil(n / state.size));
    if (state.page > pages) state.page = pages;
    var start = (state.page - 1) * state.size;
    var end = Math.min(n, start + state.size);
    var body = $("rows");
    var frag = document.createDocumentFragment();
    for (var j = start; j < end; j++) frag.appendChild(rowNode(hits[j]));
    body.replaceChildren(frag);
    $("table").hidden = n === 0;
    $("empty").hidden = n !== 0;
    $("empty").textContent = rows.length === 0 ? "Nothing flagged." : "No listing matches these filters.";
    $("showing").textContent = n === 0 ? "showing 0 of 0" : "showing " + (start + 1) + "\\u2013" + end + " of " + n;
    $("prev").disabled = state.page <= 1;
    $("next").disabled = state.page >= pages;
    document.body.setAttribute("data-page", String(state.page));
    document.body.setAttribute("data-ready", "1");
  }

  function update(change) {
    for (var k in change) state[k] = change[k];
    writeHash();
    render();
    if ("page" in change) window.scrollTo(0, 0);
  }

  if (!DATA || !DATA.rows) {
    $("showing").textContent = "";
    $("empty").hidden = false;
    $("empty").textContent = "report/rows.js is missing or damaged; run `markguard report` again.";
    return;
  }
  $("f-status").onchange = function () { update({ status: this.value, page: 1 }); };
  $("f-brand").onchange = function () { update({ brand: this.value, page: 1 }); };
  $("f-size").onchange = function () { update({ size: parseInt(this.value, 10), page: 1 }); };
  $("f-q").oninput = function () { update({ q: this.value, page: 1 }); };
  $("prev").onclick = function () { update({ page: state.page - 1 }); };
  $("next").onclick = function () { update({ page: state.page + 1 }); };
  document.addEventListener("keydown", function (ev) {
    if (ev.target && /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) return;
    if (ev.key === "ArrowRight" && !$("next").disabled) $("next").click();
    if (ev.key === "ArrowLeft" && !$("prev").disabled) $("prev").click();
  });
  window.addEventListener("hashchange", function () { readHash(); render(); });
  readHash();
  render();
})();
</script>
</body>
</html>
"""
