(function () {
  "use strict";
  var DATA = window.MARKGUARD_REPORT;
  var DEFAULT_SIZE = {{PAGE_SIZE}};
  var THUMBS = "report/thumbs/";
  var $ = function (id) { return document.getElementById(id); };
  var state = { status: "", brand: "", q: "", decided: "", page: 1, size: DEFAULT_SIZE };
  var DECIDABLE = { flag: 1, review: 1 };  // the rows a reviewer decides on
  var FORMAT = "markguard-decisions/1";  // docs/contracts.md, "Decisions"
  var SCAN = (DATA && DATA.scan) || {};
  var STORE = "markguard-decisions:" + (SCAN.key || "");
  var decisions = {};  // row key -> decision record, kept in localStorage while the reviewer works
  var shownRows = [];  // the rows on the page, in order, for j/k
  var current = -1;  // position in shownRows of the row the keys act on

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
    state.decided = p.get("decided") || "";
    state.page = Math.max(1, parseInt(p.get("page"), 10) || 1);
    var size = parseInt(p.get("size"), 10);
    state.size = size > 0 ? Math.min(size, 1000) : DEFAULT_SIZE;
  }

  function writeHash() {
    var p = new URLSearchParams();
    if (state.status) p.set("status", state.status);
    if (state.brand) p.set("brand", state.brand);
    if (state.q) p.set("q", state.q);
    if (state.decided) p.set("decided", state.decided);
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
    $("f-decided").value = state.decided;
    if (document.activeElement !== $("f-q")) $("f-q").value = state.q;
  }

  function matches(r, q) {
    if (state.status && r.status !== state.status) return false;
    if (state.brand && r.brand !== state.brand) return false;
    if (state.decided) {
      var d = decisions[rowKey(r)];
      if (!DECIDABLE[r.status] || (state.decided === "done") !== !!(d && d.decision)) return false;
    }
    if (q) {
      var hay = ((r.id || "") + "\n" + (r.seller || "") + "\n" + (r.title || "")).toLowerCase();
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

  function evidenceNode(ev) {
    // why the row was flagged, one line a signal; every value set as text
    var box = el("div", "evidence");
    if (!ev) return box;
    function line(key, text) {
      var d = el("div", "ev ev-" + key, text);
      d.setAttribute("data-ev", key);
      box.appendChild(d);
      return d;
    }
    if (ev.probability != null) line("probability", "probability " + ev.probability.toFixed(3));
    if (ev.similarity != null) {
      line("similarity", "similarity " + ev.similarity.toFixed(3) +
        (ev.similarity_norm != null ? " (above background: " + ev.similarity_norm.toFixed(3) + ")" : ""));
    }
    if (ev.text != null) {
      var named = ev.text_brand != null
        ? " \u2192 " + ev.text_brand + (ev.text_distance ? " (" + ev.text_distance + " edit" + (ev.text_distance > 1 ? "s" : "") + ")" : "")
        : " (names no brand)";
      var t = line("text", "text read \u201c" + ev.text + "\u201d" + named);
      if (ev.text_brand != null) t.setAttribute("data-text-brand", ev.text_brand);
    } else if (ev.text_error != null) {
      line("text", "text: " + ev.text_error);
    }
    if (ev.inliers != null) {
      line("inliers", ev.inliers + " keypoint inliers" +
        (ev.coverage != null ? " (" + Math.round(100 * ev.coverage) + "% of the mark)" : "") +
        (ev.verified ? (ev.mirrored ? ", verified as a mirror image" : ", verified") : ", not verified") +
        (ev.outline ? "; outline in green" : ""));
    }
    return box;
  }

  // ---- decisions: confirm / reject (not this brand) / another brand, one per flagged or review row

  function rowKey(r) { return r.n + "\u0000" + r.id; }

  function loadDecisions() {
    try {
      var saved = JSON.parse(localStorage.getItem(STORE) || "{}");
      if (saved && typeof saved === "object") decisions = saved;
    } catch (e) {
      storeNote("this browser does not keep decisions for this page (" + e.name + "); export them before closing it");
    }
  }

  function saveDecisions() {
    try { localStorage.setItem(STORE, JSON.stringify(decisions)); }
    catch (e) { storeNote("decisions could not be kept by this browser (" + e.name + "); export them before closing it"); }
    var n = 0;
    for (var k in decisions) if (decisions[k].decision) n++;
    $("decided").textContent = n + " decided";
    $("export").disabled = n === 0;
  }

  function storeNote(text) {
    $("store-note").hidden = false;
    $("store-note").textContent = text;
  }

  function decide(r, kind, other) {
    var k = rowKey(r);
    var prev = decisions[k];
    var note = prev ? prev.note : "";
    if (prev && prev.decision === kind && (kind !== "other" || !other)) {
      prev.decision = null;  // pressed again: undecided, the note kept
      prev.other_brand = null;
    } else {
      decisions[k] = {
        n: r.n, listing_id: r.id, image: r.image, brand: r.brand, mark: r.mark, box: r.box,
        status: r.status, score: r.score, decision: kind, other_brand: kind === "other" ? other : null,
        note: note, time: new Date().toISOString()
      };
    }
    saveDecisions();
  }

  function setNote(r, text) {
    var k = rowKey(r);
    if (!decisions[k]) {
      decisions[k] = { n: r.n, listing_id: r.id, image: r.image, brand: r.brand, mark: r.mark, box: r.box,
                       status: r.status, score: r.score, decision: null, other_brand: null, note: "", time: null };
    }
    decisions[k].note = text;
    saveDecisions();
  }

  function paintDecision(tr, r) {
    var d = decisions[rowKey(r)];
    var kind = d && d.decision ? d.decision : "";
    tr.setAttribute("data-decision", kind);
    var btns = tr.querySelectorAll("button[data-decision]");
    for (var i = 0; i < btns.length; i++) btns[i].setAttribute("aria-pressed", String(btns[i].getAttribute("data-decision") === kind));
    var other = tr.querySelector("input.d-other");
    if (other && document.activeElement !== other) other.value = kind === "other" ? d.other_brand : "";
    var note = tr.querySelector("input.d-note");
    if (note && document.activeElement !== note) note.value = d ? d.note || "" : "";
  }

  function decisionNode(tr, r) {
    var td = el("td", "decision");
    if (!DECIDABLE[r.status]) return td;
    var btns = el("div", "d-btns");
    [["confirm", "confirm", "c"], ["reject", "not this brand", "x"], ["other", "other brand", "b"]].forEach(function (b) {
      var btn = el("button", "d-" + b[0], b[1]);
      btn.type = "button";
      btn.title = b[1] + " (key " + b[2] + ")";
      btn.setAttribute("data-decision", b[0]);
      btn.onclick = function () {
        select(tr);
        if (b[0] === "other") {
          var v = other.value.trim();
          if (!v) { other.focus(); return; }
          decide(r, "other", v);
        } else {
          decide(r, b[0]);
        }
        paintDecision(tr, r);
      };
      btns.appendChild(btn);
    });
    td.appendChild(btns);
    var other = el("input", "d-other");
    other.type = "text";
    other.placeholder = "other brand";
    other.setAttribute("list", "brand-list");
    other.onchange = function () {
      var v = other.value.trim();
      if (v) decide(r, "other", v);
      else if ((decisions[rowKey(r)] || {}).decision === "other") decide(r, "other", null);  // cleared: undecided
      paintDecision(tr, r);
    };
    var note = el("input", "d-note");
    note.type = "text";
    note.placeholder = "note";
    note.onchange = function () { setNote(r, note.value); };
    td.appendChild(other);
    td.appendChild(note);
    return td;
  }

  function exportText() {
    var list = [];
    for (var k in decisions) if (decisions[k].decision) list.push(decisions[k]);
    list.sort(function (a, b) { return a.n - b.n; });
    return list.map(function (d) {
      return JSON.stringify({
        format: FORMAT, listing_id: d.listing_id, image: d.image, brand: d.brand, mark: d.mark, box: d.box,
        status: d.status, score: d.score, decision: d.decision, other_brand: d.other_brand, note: d.note || "",
        time: d.time, model: SCAN.model || null, indexes: SCAN.indexes || [], input: SCAN.input || null
      }) + "\n";
    }).join("");
  }

  function exportDecisions() {
    var blob = new Blob([exportText()], { type: "application/x-ndjson" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "decisions.jsonl";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function select(tr) {
    var rows = $("rows").children;
    for (var i = 0; i < rows.length; i++) {
      var on = rows[i] === tr;
      if (on) rows[i].setAttribute("data-current", "1");  // an attribute: the row's class stays "row"
      else rows[i].removeAttribute("data-current");
      if (on) current = i;
    }
  }

  function move(step) {
    var rows = $("rows").children;
    if (!rows.length) return;
    var next = Math.min(rows.length - 1, Math.max(0, current + step));
    select(rows[next]);
    rows[next].scrollIntoView({ block: "nearest" });
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
    var why = el("td");
    why.appendChild(evidenceNode(r.evidence));
    tr.appendChild(why);
    var id = el("td");
    id.appendChild(el("div", "id", r.id));
    if (r.title) id.appendChild(el("div", "title", r.title));
    tr.appendChild(id);
    tr.appendChild(el("td", "id", r.seller == null ? "\u2014" : r.seller));
    tr.appendChild(el("td", null, r.brand == null ? "\u2014" : r.brand));
    var mark = el("td", null, r.mark == null ? "\u2014" : r.mark);
    if (r.matches && r.matches.length) {
      var more = r.matches.map(function (m) {
        return (m.brand || "?") + "/" + (m.mark || "?") + (m.score == null ? "" : " " + m.score.toFixed(3));
      });
      mark.appendChild(el("div", "more", "also: " + more.join(", ")));
    }
    tr.appendChild(mark);
    tr.appendChild(el("td", "score", r.score == null ? "\u2014" : r.score.toFixed(3)));
    var st = el("td");
    st.appendChild(el("span", "badge st-" + r.status.replace(/[^a-z]/g, ""), r.status));
    tr.appendChild(st);
    tr.appendChild(decisionNode(tr, r));
    paintDecision(tr, r);
    tr.addEventListener("mousedown", function () { select(tr); });
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
    shownRows = hits.slice(start, end);
    for (var j = start; j < end; j++) frag.appendChild(rowNode(hits[j]));
    body.replaceChildren(frag);
    current = -1;
    if (body.children.length) select(body.children[0]);
    $("table").hidden = n === 0;
    $("empty").hidden = n !== 0;
    $("empty").textContent = rows.length === 0 ? "Nothing flagged." : "No listing matches these filters.";
    $("showing").textContent = n === 0 ? "showing 0 of 0" : "showing " + (start + 1) + "\u2013" + end + " of " + n;
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
  $("f-decided").onchange = function () { update({ decided: this.value, page: 1 }); };
  $("export").onclick = exportDecisions;
  $("f-size").onchange = function () { update({ size: parseInt(this.value, 10), page: 1 }); };
  $("f-q").oninput = function () { update({ q: this.value, page: 1 }); };
  $("prev").onclick = function () { update({ page: state.page - 1 }); };
  $("next").onclick = function () { update({ page: state.page + 1 }); };
  document.addEventListener("keydown", function (ev) {
    if (ev.target && /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) {
      if (ev.key === "Escape" || ev.key === "Enter") ev.target.blur();  // back to the row keys
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "ArrowRight" && !$("next").disabled) $("next").click();
    if (ev.key === "ArrowLeft" && !$("prev").disabled) $("prev").click();
    if (ev.key === "j" || ev.key === "ArrowDown") { move(1); ev.preventDefault(); }
    if (ev.key === "k" || ev.key === "ArrowUp") { move(-1); ev.preventDefault(); }
    var tr = $("rows").children[current];
    var r = shownRows[current];
    if (!tr || !r || !DECIDABLE[r.status]) return;
    if (ev.key === "c" || ev.key === "x") {
      decide(r, ev.key === "c" ? "confirm" : "reject");
      paintDecision(tr, r);
    } else if (ev.key === "b" || ev.key === "n") {
      tr.querySelector(ev.key === "b" ? "input.d-other" : "input.d-note").focus();
      ev.preventDefault();  // the key opens the field; it is not typed into it
    }
  });
  window.addEventListener("hashchange", function () { readHash(); render(); });
  loadDecisions();
  saveDecisions();
  readHash();
  render();
})();
