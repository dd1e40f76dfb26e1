"""OCR: the per-photo gate, reading where the detector finds text, crops of the original photo, timeouts and failures as reasons, and a real read offline."""

from __future__ import annotations

import socket
import threading

import pytest
from PIL import Image, ImageDraw, ImageFont

from markguard.infer.ocr import OcrConfig, OcrReader, OcrRequest, crop_for_reading, gate
from markguard.infer.textmatch import Lexicon

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def _requests(n_photos: int, per_photo: int = 2) -> list[OcrRequest]:
    return [OcrRequest(p, (0, 0, 10, 10), priority=p + 0.1 * r) for p in range(n_photos) for r in range(per_photo)]


def test_gate_reads_each_photos_best_regions_whatever_the_other_photos():
    reqs = _requests(10)
    read, skipped = gate(reqs, OcrConfig(lines=1))
    assert sorted(r.photo for r in read) == list(range(10))  # every photo, one region each
    assert all(r.priority == max(q.priority for q in reqs if q.photo == r.photo) for r in read)
    assert len(read) + len(skipped) == len(reqs)
    assert len(gate(reqs, OcrConfig(lines=2))[0]) == 20 and gate(reqs, OcrConfig(lines=0))[0] == []
    # a photo's reads do not depend on its batch: photo 3 alone is read as in the batch of ten
    alone = [r for r in reqs if r.photo == 3]
    assert gate(alone, OcrConfig(lines=1))[0] == [r for r in read if r.photo == 3]


def test_ocr_config_refuses_a_budget_that_is_no_count_of_lines():
    from markguard.errors import MarkguardError

    for bad in (0.25, -1, 65, True):
        with pytest.raises(MarkguardError, match="ocr lines"):
            OcrConfig(lines=bad)


class FakeEngine:
    """Stands in for RapidOCR: records the arrays it was given and answers with fixed lines."""

    def __init__(self, lines=None, delay: threading.Event | None = None, error: Exception | None = None):
        self.lines, self.delay, self.error, self.seen = lines, delay, error, []

    def __call__(self, array, **kwargs):
        self.seen.append(array.shape)
        if self.delay is not None:
            self.delay.wait(5)
        if self.error is not None:
            raise self.error
        return self.lines, [0.0]

    # the detector and recogniser RapidOCR runs for where="text": every line of ``lines`` found at its box (the first
    # element, in the detector's pixels), recognised as its text
    def text_det(self, bgr):
        self.seen.append(bgr.shape)
        if self.error is not None:
            raise self.error
        return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]] for (x0, y0, x1, y1), _, _ in (self.lines or [])], 0.0

    def text_rec(self, crops):
        return [(t, s) for _, t, s in (self.lines or [])][: len(crops)], 0.0


def test_read_joins_confident_lines_from_a_crop_of_the_original_photo():
    engine = FakeEngine([[None, "ADI", 0.9], [None, "BAS", 0.8], [None, "noise", 0.2]])
    reader = OcrReader(OcrConfig(margin=0.5, det_side=1000), engine=engine)
    photo = Image.new("RGB", (400, 300), "white")
    read = reader.read(photo, (100, 100, 200, 150))
    assert read.ok and read.text == "ADI BAS" and read.box == (50, 50, 250, 200)  # half the long side added each side
    assert engine.seen == [(150, 200, 3)]
    edge = reader.read(photo, (350, 250, 420, 330))  # the margin is clipped at the photo's edges
    assert edge.box == (310, 210, 400, 300)


def test_crops_are_shrunk_to_the_detector_side_and_empty_regions_are_not_read():
    array, box = crop_for_reading(Image.new("RGB", (2000, 1000)), None, 0.1, 480)
    assert array.shape == (240, 480, 3) and box == (0, 0, 2000, 1000)
    read = OcrReader(engine=FakeEngine([])).read(Image.new("RGB", (50, 50)), (60, 60, 80, 80))
    assert read.text is None and read.reason.startswith("not read: region")


def test_nothing_read_is_no_text_and_no_error():
    for lines in (None, [], [[None, "   ", 0.99]]):
        read = OcrReader(engine=FakeEngine(lines)).read(Image.new("RGB", (64, 64)))
        assert read.ok and read.text is None


def test_a_failing_read_says_why_and_the_next_one_still_runs():
    engine = FakeEngine(error=RuntimeError("onnxruntime: bad input"))
    reader = OcrReader(engine=engine)
    read = reader.read(Image.new("RGB", (64, 64)))
    assert read.text is None and read.reason == "failed: RuntimeError: onnxruntime: bad input"
    engine.error, engine.lines = None, [[None, "ACME", 0.9]]
    assert reader.read(Image.new("RGB", (64, 64))).text == "ACME"


def test_a_read_past_its_timeout_gives_no_text_and_holds_the_reader_until_it_ends():
    release = threading.Event()
    engine = FakeEngine([[None, "LATE", 0.9]], delay=release)
    reader = OcrReader(OcrConfig(timeout_s=0.05), engine=engine)
    photo = Image.new("RGB", (64, 64))
    first = reader.read(photo)
    assert first.text is None and first.reason == "timed out after 0.05 s"
    busy = reader.read(photo)
    assert busy.text is None and "earlier read timed out" in busy.reason and len(engine.seen) == 1  # not queued behind it
    release.set()
    reader._pending.result(timeout=5)
    engine.delay = None
    assert reader.read(photo).text == "LATE"
    reader.close()


def test_read_batch_marks_what_the_photos_budget_left_out():
    reader = OcrReader(OcrConfig(where="candidates", lines=1), engine=FakeEngine([[None, "ACME", 0.9]]))
    photos = [Image.new("RGB", (32, 32)) for _ in range(2)]
    reqs = [OcrRequest(0, None, priority=0.1), OcrRequest(0, None, priority=0.9), OcrRequest(1, None, priority=0.0)]
    out = reader.read_batch(photos, reqs)
    assert [out[r].text for r in reqs] == [None, "ACME", "ACME"]  # each photo's best region; photo 1 however low
    assert out[reqs[0]].reason == "not read: over the photo's OCR budget (1 regions)"


def test_read_text_recognises_the_largest_lines_the_detector_finds_in_original_pixels():
    # the detector sees the photo at det_side (here a quarter): boxes come back in the photo's pixels, times the factor
    engine = FakeEngine([[(10, 10, 90, 30), "ADIBAS", 0.9], [(10, 60, 60, 75), "noise", 0.3], [(10, 50, 20, 54), "x", 0.9]])
    reader = OcrReader(OcrConfig(det_side=100, lines=2, min_line_px=2), engine=engine)
    reads = reader.read_text(Image.new("RGB", (400, 200), "white"), factor=(2.0, 2.0))
    assert engine.seen == [(50, 100, 3)]
    # the two largest lines are recognised (the fake recognises in the detector's order: largest first here); the
    # low-confidence one is dropped
    assert [(r.text, r.box) for r in reads] == [("ADIBAS", (80, 80, 720, 240))]
    assert OcrReader(engine=FakeEngine([])).read_text(Image.new("RGB", (64, 64))) == []  # no text found: no read
    failed = OcrReader(engine=FakeEngine(error=RuntimeError("bad"))).read_text(Image.new("RGB", (64, 64)))
    assert len(failed) == 1 and failed[0].reason == "failed: RuntimeError: bad"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("OCR tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_rapidocr_reads_a_letter_swapped_wordmark_offline(no_network):
    photo = Image.new("RGB", (640, 480), (235, 230, 220))
    ImageDraw.Draw(photo).text((180, 200), "ADIBAS", font=ImageFont.truetype(FONT, 64), fill=(20, 20, 20))
    reader = OcrReader()
    read = reader.read(photo, (170, 190, 460, 280))
    reader.close()
    assert read.ok and read.text is not None, read
    match = Lexicon({"adidas": ["adidas"], "aldi": ["ALDI"]}).best(read.text)
    assert match is not None and match.brand == "adidas" and match.distance == 1


def test_original_photos_are_decoded_only_for_the_reads_the_gate_allows():
    import io

    from markguard.infer.ocr import OriginalPhotos

    class Item:
        reads = 0

        def __init__(self, data):
            self.data = data

        def read_bytes(self):
            Item.reads += 1
            return self.data

    buf = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(buf, "JPEG")
    items = [Item(buf.getvalue()) for _ in range(3)] + [Item(b"not a photo")]
    photos = OriginalPhotos(items)
    reader = OcrReader(OcrConfig(where="candidates"), engine=FakeEngine([[None, "ACME", 0.9]]))
    reqs = [OcrRequest(2, None, 0.9), OcrRequest(3, None, 0.8)]
    out = reader.read_batch(photos, reqs)
    assert Item.reads == 2  # the photos asked for; the others are never read again
    assert out[reqs[0]].text == "ACME" and out[reqs[0]].box == (0, 0, 120, 90)
    assert out[reqs[1]].text is None and out[reqs[1]].reason.startswith("not read: ") and "budget" not in out[reqs[1]].reason


def test_where_photo_reads_the_whole_photo_and_unknown_places_are_refused():
    from markguard.errors import MarkguardError
    from markguard.infer.decide import Match
    from markguard.infer.evidence import collect

    engine = FakeEngine([[None, "ACME", 0.9]])
    reader = OcrReader(OcrConfig(where="photo"), engine=engine)
    out = collect([Image.new("RGB", (200, 100))], [[Match("acme", "m", 0.5, [10, 10, 40, 30])]],
                  lexicon=Lexicon({"acme": ["ACME"]}), reader=reader)
    assert engine.seen == [(100, 200, 3)] and out[0][0].evidence["text"].brand == "acme"
    with pytest.raises(MarkguardError, match="ocr where='box'"):
        OcrConfig(where="box")


def test_a_scan_with_ocr_puts_each_matchs_evidence_in_its_row(tmp_path, monkeypatch):
    import json

    from markguard.infer import stages
    from markguard.infer.scan import ScanOptions, run_scan
    from test_scan import make_world

    world = make_world(tmp_path / "world", listings=6)
    # the synthetic gallery's display names are "Brand000", ...; the detector finds this line in every photo
    engine = FakeEngine([[(0, 0, 40, 12), "BRAND0O1", 0.9]])
    monkeypatch.setattr(stages, "make_reader", lambda config: OcrReader(OcrConfig(lines=3, min_line_px=1), engine=engine))
    # one mark a region: many photos' matches lack brand001, which the text then names on its own
    opts = ScanOptions(batch_size=4, workers=0, device="cpu", flag=-1.0, review=-1.0, ocr=True, ocr_budget=3, k=1, max_matches=10,
                       verify=False, combiner=None)  # the score stays the similarity
    summary = run_scan(world.dump, [world.index], tmp_path / "out", opts=opts, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    matched = [r for r in rows if r["matches"]]
    assert matched and len(engine.seen) == sum(r["status"] != "error" for r in rows)  # every photo was read where its text is
    text_only = 0
    for r in matched:
        for m in r["matches"]:
            assert "text" in m["evidence"] and "text_error" not in m["evidence"]  # every photo was read
            if m["brand"] == "brand001":  # the read names its brand, wherever in the photo
                assert m["evidence"]["text"] == "BRAND0O1" and m["evidence"]["text_brand"] == "brand001"
                assert m["evidence"]["text_distance"] == 0  # 0/O fold alike
            else:  # another brand's name: evidence against it only where the read lies in its region
                assert m["evidence"]["text"] in (None, "BRAND0O1")
                assert m["evidence"].get("text_brand") == ("brand001" if m["evidence"]["text"] else None)
            if m["mark"] is None:  # the text named a brand no region of the photo matched: a match of its own
                assert m["brand"] == "brand001" and m["score"] == 0 and "similarity" not in m["evidence"]
                text_only += 1
            else:
                assert m["evidence"]["similarity"] == pytest.approx(m["score"], abs=1e-4)
        # one text-only match a photo, and only where no region matched the brand the text names
        assert sum(m["mark"] is None for m in r["matches"]) == (all(m["brand"] != "brand001" for m in r["matches"] if m["mark"]))
    assert text_only > 0, [[(m['brand'], m['mark']) for m in r['matches']] for r in matched]
    assert summary["stage_seconds"]["evidence"] > 0
