"""Review report: turns a scan's results.jsonl into a static HTML page a reviewer can filter and page through."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from importlib import resources
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw

from markguard.fsio import atomic_write_bytes, own_folder, remove_own_files
from markguard.errors import DecodeError, MarkguardError
from markguard.infer.results import RESULTS, SUMMARY, ScanRow, read_results, read_summary

log = logging.getLogger(__name__)

STATUS_ORDER = ("flag", "review", "allowed", "pass", "error")
DEFAULT_STATUSES = ("flag", "review", "allowed")
BEST_BOX = (230, 0, 0)  # the best match: saturated red reads on almost any photo
OTHER_BOX = (255, 170, 0)  # further matches, so the eye goes to the best one first
OUTLINE = (0, 200, 60)  # the verified outline of the reference: green, apart from both boxes
# what the page shows of a match's evidence (docs/contracts.md), each with the type it must have to be shown
EVIDENCE_KEYS = {"similarity": float, "similarity_norm": float, "background": float, "inliers": int, "coverage": float,
                 "verified": bool, "text": str, "text_brand": str, "text_distance": int, "text_error": str}
PLACEHOLDER = "unavailable.jpg"
MAX_ERRORS_LISTED = 2000  # a broken dump can error on every row; the page must stay openable
THUMBS = Path("report") / "thumbs"
ASSETS = "report_assets"  # package data: page.html, report.css, report.js


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
    outline: list[list[float]] | None = None  # the deciding match's verified outline, original pixels

    @property
    def decider(self):
        """The match that decided the row (the one with its brand, mark and box), else its best."""
        r = self.result
        for m in r.matches:
            if (m.brand, m.mark, m.box) == (r.brand, r.mark, r.box):
                return m
        return r.matches[0] if r.matches else None

    def evidence_js(self) -> dict | None:
        """The deciding match's probability and evidence, only the known keys with their expected types."""
        m = self.decider
        if m is None:
            return None
        ev = m.evidence or {}
        out = {"probability": None if m.probability is None else round(float(m.probability), 4), "similarity": ev.get("similarity", m.score)}
        for key, kind in EVIDENCE_KEYS.items():
            v = ev.get(key, out.get(key))
            if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[key] = round(float(v), 4)
            elif kind is int and isinstance(v, int) and not isinstance(v, bool):
                out[key] = v
            elif isinstance(v, kind):
                out[key] = v
            else:
                out.pop(key, None)
        out["outline"] = self.outline is not None
        return {k: v for k, v in out.items() if v is not None}

    def to_js(self) -> dict:
        r = self.result
        return {
            "id": r.listing_id,
            "n": self.order,
            "image": r.image,
            "box": r.box,
            "seller": r.seller_id,
            "title": self.title,
            "status": r.status,
            "score": None if r.score is None else round(r.score, 4),
            "brand": r.brand,
            "mark": r.mark,
            "thumb": self.thumb,
            "ref": self.ref,
            "note": self.note,
            "evidence": self.evidence_js(),
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
    # report/ and report/thumbs/ must be real folders of this output: a link planted there would
    # send the thumbnails elsewhere, and the stale-thumbnail cleanup would delete another folder's pictures
    thumbs_dir = own_folder(out_dir, *THUMBS.parts)

    notes: list[str] = []
    written = {PLACEHOLDER}
    atomic_write_bytes(thumbs_dir / PLACEHOLDER, _jpeg(_placeholder(thumb_size)))
    notes += _listing_thumbs(scan, thumbs_dir, thumb_size, written)
    notes += _reference_thumbs(scan, thumbs_dir, thumb_size, written)
    remove_own_files(thumbs_dir, written, ".jpg")  # left by an earlier report of a different scan

    scan.rows.sort(key=lambda r: (-r.result.score if r.result.score is not None else math.inf, r.order))
    payload = {"rows": [r.to_js() for r in scan.rows], "scan": scan_identity(out_dir, scan.summary)}
    # ensure_ascii keeps U+2028/2029 and any odd bytes out of the script; the file is never parsed as HTML
    js = "window.MARKGUARD_REPORT = " + json.dumps(payload, ensure_ascii=True, separators=(",", ":")) + ";\n"
    atomic_write_bytes(out_dir / "report" / "rows.js", js.encode("ascii"))

    page = _render_html(scan, statuses, page_size, notes)
    target = out_dir / "report.html"
    atomic_write_bytes(target, page.encode("utf-8"))
    return target


def scan_identity(out_dir: Path, summary: dict) -> dict:
    """What a decision made on this page is tied to (docs/contracts.md, "Decisions"): the model's fingerprint and each
    index's path, name and save (from scan.json, else summary.json), and a key for the browser's store of decisions."""
    from markguard.infer.results import STATE

    try:
        pinned = json.loads((out_dir / STATE).read_text(encoding="utf-8")).get("indexes")
    except (OSError, ValueError, AttributeError):
        pinned = None
    listed = pinned if isinstance(pinned, list) else summary.get("indexes") if isinstance(summary.get("indexes"), list) else []
    indexes = [{"path": _text(i.get("path")), "name": Path(str(i.get("path") or "")).name or None, "save": _text(i.get("save"))}
               for i in listed if isinstance(i, dict)]
    model = summary.get("model") if isinstance(summary.get("model"), dict) else {}
    ident = {"input": _text(summary.get("input")), "model": _text(model.get("fingerprint")), "indexes": indexes}
    ident["key"] = _digest(json.dumps(ident, sort_keys=True), str(out_dir.resolve()))
    return ident


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
            rr = ReportRow(n, row, boxes)
            decider = rr.decider
            outline = (decider.evidence or {}).get("outline") if decider is not None else None
            rr.outline = outline if _valid_outline(outline) else None
            scan.rows.append(rr)
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
                    name = "l-" + _digest(row.result.image, json.dumps(row.boxes), json.dumps(row.outline)) + ".jpg"
                    if name not in written:
                        thumb = _listing_thumb(decoded.image, decoded.orig_size, row.boxes, size, row.outline)
                        atomic_write_bytes(thumbs_dir / name, _jpeg(thumb))
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


def _listing_thumb(image: Image.Image, orig_size: tuple[int, int], boxes: list[list[float]], size: int,
                   outline: list[list[float]] | None = None) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    # boxes are in the original's pixels; the decoded image may already be reduced (JPEG draft), so scale from orig_size
    sx, sy = thumb.width / orig_size[0], thumb.height / orig_size[1]
    draw = ImageDraw.Draw(thumb)
    width = max(2, round(size / 64))
    if outline is not None:  # under the boxes: where keypoints put the genuine mark's corners
        draw.polygon([(x * sx, y * sy) for x, y in outline], outline=OUTLINE, width=width)
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
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], _page_template())


def _page_template() -> str:
    """page.html with its stylesheet and script inlined: the report is one file a reviewer can open anywhere.

    All text from the scan is escaped above (html.escape) or set with textContent in report.js, never innerHTML.
    """
    assets = resources.files("markguard.infer") / ASSETS
    page, css, js = ((assets / name).read_text(encoding="utf-8") for name in ("page.html", "report.css", "report.js"))
    return page.replace("{{STYLE}}", css).replace("{{SCRIPT}}", js)




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


def _valid_outline(v) -> bool:
    return (isinstance(v, list) and len(v) == 4 and all(isinstance(p, list) and len(p) == 2 for p in v)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for p in v for x in p))
