"""Decisions in the review page, in a real headless Chromium driven over the DevTools protocol: clicks and keys
decide rows, the decisions survive a reload (localStorage), and the exported file holds what was decided."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from markguard.infer.report import write_report
from test_report import EVIL_ID, make_scan  # sibling module: pytest puts tests/infer on sys.path

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


class Browser:
    """Headless Chromium with ``--remote-debugging-pipe``: DevTools messages as NUL-terminated JSON on fds 3 and 4,
    so the test needs no WebSocket client."""

    def __init__(self, tmp: Path, url: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # the child reads commands on fd 3 and answers on fd 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,2000", url],
            preexec_fn=fds, pass_fds=(3, 4, to_child_r, from_child_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.wait_ready()

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def js(self, expr: str):
        res = self.page("Runtime.evaluate", expression=expr, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.js("document.body && document.body.getAttribute('data-ready')") == "1":
                return
            time.sleep(0.05)
        raise AssertionError("the page's script did not finish rendering")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        box = self.js(f"(function(){{var e=document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block:'center'}});"
                      f"var r=e.getBoundingClientRect(); return [r.x+r.width/2, r.y+r.height/2];}})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def key(self, key: str) -> None:
        self.page("Input.dispatchKeyEvent", type="keyDown", key=key, text=key if len(key) == 1 else "",
                  windowsVirtualKeyCode=ord(key.upper()) if len(key) == 1 else 0)
        self.page("Input.dispatchKeyEvent", type="keyUp", key=key)

    def type(self, text: str) -> None:
        self.page("Input.insertText", text=text)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def row(listing: str) -> str:
    return f'tr.row[data-listing={json.dumps(listing)}]'


def decision_of(b: Browser, listing: str) -> str | None:
    return b.js(f"document.querySelector({json.dumps(row(listing))}).getAttribute('data-decision')")


@pytest.fixture
def scan(tmp_path):
    out = make_scan(tmp_path)
    (out / "summary.json").write_text(json.dumps({**json.loads((out / "summary.json").read_text()),
                                                  "model": {"fingerprint": "fp-model-1"}}))
    (out / "scan.json").write_text(json.dumps({"indexes": [{"path": "/srv/idx/brands", "fingerprint": "fp-model-1", "save": "save-7"}]}))
    write_report(out)
    return out


def test_decide_by_mouse_and_keys_then_export(scan, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    b = Browser(tmp_path, (scan / "report.html").as_uri())
    try:
        # rows in score order: L001 flag, L007 allowed, EVIL flag, L005 review, L006 review, L008 review, L002 review
        assert b.js("document.querySelectorAll('tr.row button[data-decision]').length") == 6 * 3  # allowed rows take none
        b.click(row("L001") + " button.d-confirm")
        b.click(row("L005") + " button.d-reject")
        b.click(row("L005") + " input.d-note")
        b.type("stock photo of a red ball")
        b.key("Enter")  # leaves the field: the note is kept
        b.click(row(EVIL_ID) + " .id")  # select the row by mouse, decide it by keys
        b.key("x")
        b.key("j")  # L005
        b.key("j")  # L006
        b.key("b")  # opens the other-brand field of L006
        b.type("globex")
        b.key("Enter")
        b.key("j")  # L008
        b.key("c")
        b.key("c")  # pressed again: undecided
        assert [decision_of(b, x) for x in ("L001", EVIL_ID, "L005", "L006", "L008", "L002")] == \
            ["confirm", "reject", "reject", "other", "", ""]
        assert b.js("document.getElementById('decided').textContent") == "4 decided"

        b.page("Page.reload")  # kept in the browser while the reviewer works
        b.wait_ready()
        assert [decision_of(b, x) for x in ("L001", EVIL_ID, "L005", "L006")] == ["confirm", "reject", "reject", "other"]
        assert b.js(f"document.querySelector({json.dumps(row('L005') + ' input.d-note')}).value") == "stock photo of a red ball"

        b.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
        b.click("#export")
        end = time.monotonic() + 30
        while not (downloads / "decisions.jsonl").exists() and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        b.close()
    lines = [json.loads(x) for x in (downloads / "decisions.jsonl").read_text().splitlines()]
    got = {(d["listing_id"], d["decision"]): d for d in lines}
    assert set(got) == {("L001", "confirm"), (EVIL_ID, "reject"), ("L005", "reject"), ("L006", "other")}
    assert [d["listing_id"] for d in lines] == ["L001", EVIL_ID, "L005", "L006"]  # the scan's order
    l5 = got[("L005", "reject")]
    assert (l5["brand"], l5["mark"], l5["box"], l5["image"], l5["status"]) == ("acme", "acme-logo", [300, 200, 639, 479], "L005.jpg", "review")
    assert l5["note"] == "stock photo of a red ball" and l5["other_brand"] is None
    assert got[("L006", "other")]["other_brand"] == "globex"
    for d in lines:
        assert d["format"] == "markguard-decisions/1"
        assert d["model"] == "fp-model-1"
        assert d["indexes"] == [{"path": "/srv/idx/brands", "name": "brands", "save": "save-7"}]
        assert d["time"].endswith("Z") and d["time"][:4].isdigit()
    # the file is what `markguard feedback` reads
    from markguard.infer.feedback import read_decisions

    assert [(d.listing_id, d.decision) for d in read_decisions(downloads / "decisions.jsonl")] == \
        [("L001", "confirm"), (EVIL_ID, "reject"), ("L005", "reject"), ("L006", "other")]
