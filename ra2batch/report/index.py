"""``index.html``: every patient visit in review order, one page of rows at a time.

The rows travel as JSON inside the page (about 80 bytes a patient: 0.8 MB at 10,000 patients) and an
inline script shows ``PAGE_SIZE`` of them at a time, sorted by any column and filtered by patient ID
or QC flag across all patients. The view (sort, filter, page) is kept in the address's ``#`` part,
so a view is a link. No network and no server: the folder opens from disk.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from ra2batch.catalogue import ID_COLUMN
from ra2batch.report import review
from ra2batch.report.pages import flag_kinds, missing, page, page_keys, shown_flags
from ra2batch.report.results import ScoredResults

#: Rows shown at a time.
PAGE_SIZE = 100

#: key, heading, type, decimals shown (numbers).
COLUMNS = (
    ("rank", "Review order", "number", 0), ("patient", "Patient", "text", None), ("visit", "Visit", "text", None),
    ("flagged", "Joints to review", "number", 0), ("max_uncertainty", "Largest flip disagreement", "number", 2),
    ("min_detector", "Lowest detector confidence", "number", 2), ("Overall_Tol", "Total score", "number", 1),
    ("Overall_erosion", "Erosion", "number", 1), ("Overall_narrowing", "Narrowing", "number", 1),
    ("flags", "QC flags", "text", None),
)


def _flags_text(flags: list[str]) -> str:
    """A patient's QC flags in a few words: a kind seen once as the flag itself, else ``kind ×N``."""
    return " ".join(v[0] if len(v) == 1 else f"{k} ×{len(v)}" for k, v in flag_kinds(shown_flags(flags)).items())


def _number(v: Any) -> float | None:
    return None if missing(v) else round(float(v), 3)


def index_rows(results: ScoredResults, threshold: float) -> list[list[Any]]:
    """One JSON-ready row per patient visit in review order: the ``COLUMNS`` values, then its page's link."""
    p = results.patients
    ranked = review.patient_review(p, results.joints, threshold)
    values = zip(ranked["rank"], p[ID_COLUMN], p["visit"], ranked["flagged"], ranked["max_uncertainty"],
                 ranked["min_detector"], p["Overall_Tol"], p["Overall_erosion"], p["Overall_narrowing"],
                 p["qc_flags"], page_keys(p))
    rows = [[int(rank), str(pid), str(visit), int(n), _number(unc), _number(det), _number(tol), _number(ero),
             _number(nar), _flags_text(list(flags)), f"patients/{key}.html"]
            for rank, pid, visit, n, unc, det, tol, ero, nar, flags, key in values]
    return sorted(rows, key=lambda row: row[0])


def _shown_columns(rows: list[list[Any]]) -> list[int]:
    """Positions of the ``COLUMNS`` the index shows: all but ``visit`` when no patient has visits."""
    visit = [k for k, *_ in COLUMNS].index("visit")
    return [i for i in range(len(COLUMNS)) if i != visit or any(row[visit] for row in rows)]


def _data(rows: list[list[Any]], shown: list[int]) -> str:
    """The ``shown`` columns of the rows, and each row's link, as JSON safe inside a ``<script>`` element."""
    data = {"columns": [{"key": COLUMNS[i][0], "type": COLUMNS[i][2], "digits": COLUMNS[i][3]} for i in shown],
            "rows": [[row[i] for i in shown] + [row[-1]] for row in rows], "page_size": PAGE_SIZE}
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def write_index(results: ScoredResults, root: str | Path, *, threshold: float = review.REVIEW_THRESHOLD,
                source: str = "", crops: str = "") -> Path:
    """Write ``root/index.html`` for every patient visit of ``results`` (their pages are linked as
    ``patients/<page_key>.html``); ``crops`` says where the crop geometry came from. Returns its path."""
    rows = index_rows(results, threshold)
    n_flagged = sum(row[3] > 0 for row in rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shown = _shown_columns(rows)
    head = "".join(f'<th data-key="{k}" data-type="{t}"{" class=num" if t == "number" else ""} title="sort by '
                   f'{escape(h.lower())}">{escape(h)}</th>' for k, h, t, _ in (COLUMNS[i] for i in shown))
    body = (
        f"<h1>ra2batch review</h1><p class=\"note\">{len(rows):,} patient visit(s), {n_flagged:,} flagged for "
        f"review (highlighted). Source: {escape(source) or '—'}; crops as cut by {escape(crops) or '—'}; "
        f"built {stamp}.</p>"
        f'<p class="rule"><b>Review order:</b> {escape(review.RULE.format(threshold=threshold))}. Scores are '
        "Sharp/van der Heijde points. Click a heading to sort by it; the filter finds a patient ID or a QC flag "
        "among all patients; the view is kept in the page's address.</p>"
        '<div class="controls"><input type="search" id="filter" placeholder="filter: patient ID or QC flag" '
        'aria-label="filter by patient ID or QC flag"><label><input type="checkbox" id="only-flagged"> '
        'flagged only</label><span class="pager"><button type="button" id="prev">‹ previous</button>'
        '<span id="shown"></span><button type="button" id="next">next ›</button></span></div>'
        f'<table id="patients" class="index"><thead><tr>{head}</tr></thead><tbody></tbody></table>'
        "<noscript><p>The patient list needs JavaScript; every patient's page is in the patients folder.</p></noscript>"
        f'<script id="index-data" type="application/json">{_data(rows, shown)}</script>')
    index = Path(root) / "index.html"
    index.write_text(page("ra2batch review", body, INDEX_JS), encoding="utf-8")
    return index


#: Renders one page of rows from the JSON. The view is the address's hash, e.g.
#: ``#sort=Overall_Tol:desc&q=SYN&flagged=1&page=2``; without one, rows are in review order.
#: Empty values sort last either way; ties keep review order.
INDEX_JS = """
(function () {
  var data = JSON.parse(document.getElementById("index-data").textContent), cols = data.columns, K = {};
  cols.forEach(function (c, i) { K[c.key] = i; });
  var table = document.getElementById("patients"), body = table.tBodies[0], heads = table.tHead.rows[0].cells;
  var filter = document.getElementById("filter"), only = document.getElementById("only-flagged");
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  var shown = document.getElementById("shown"), at = 1;
  function n(x) { return x.toLocaleString("en-US"); }
  function state() {
    var p = new URLSearchParams(location.hash.slice(1)), m = /^(\\w+):(asc|desc)$/.exec(p.get("sort") || "");
    var known = m && K[m[1]] !== undefined;
    return {key: known ? m[1] : "rank", dir: known && m[2] === "desc" ? -1 : 1, q: p.get("q") || "",
            flagged: p.get("flagged") === "1", page: Math.max(1, parseInt(p.get("page"), 10) || 1)};
  }
  function link(s) {
    var p = new URLSearchParams();
    if (s.key !== "rank" || s.dir < 0) p.set("sort", s.key + ":" + (s.dir > 0 ? "asc" : "desc"));
    if (s.q) p.set("q", s.q);
    if (s.flagged) p.set("flagged", "1");
    if (s.page > 1) p.set("page", s.page);
    return "#" + p.toString();
  }
  function go(change) {
    var s = state();
    Object.keys(change).forEach(function (k) { s[k] = change[k]; });
    location.hash = link(s);
  }
  function matches(s) {
    var q = s.q.toLowerCase();
    return function (r) {
      if (s.flagged && !(r[K.flagged] > 0)) return false;
      return !q || [r[K.patient], r[K.visit], r[K.flags]].join(" ").toLowerCase().indexOf(q) >= 0;
    };
  }
  function order(s) {
    var i = K[s.key], numeric = cols[i].type === "number";
    return function (a, b) {
      var x = a[i], y = b[i], none = (x === null || x === "") - (y === null || y === "");
      if (none) return none;
      var c = x === null || x === "" ? 0 : (numeric ? x - y : String(x).localeCompare(String(y))) * s.dir;
      return c || a[K.rank] - b[K.rank];
    };
  }
  function cell(r, c, i) {
    var td = document.createElement("td"), v = r[i];
    if (c.type === "number") td.className = "num";
    td.dataset.value = v === null ? "" : v;
    if (v === null || v === "") { td.textContent = "—"; return td; }
    if (c.key !== "patient") { td.textContent = c.digits === null ? v : v.toFixed(c.digits); return td; }
    var a = document.createElement("a");
    a.href = r[cols.length];
    a.textContent = v;
    td.appendChild(a);
    return td;
  }
  function render() {
    var s = state(), rows = data.rows.filter(matches(s)).sort(order(s)), size = data.page_size;
    var pages = Math.max(1, Math.ceil(rows.length / size)), frag = document.createDocumentFragment();
    at = Math.min(s.page, pages);
    rows.slice((at - 1) * size, at * size).forEach(function (r) {
      var tr = document.createElement("tr");
      if (r[K.flagged] > 0) tr.className = "review";
      cols.forEach(function (c, i) { tr.appendChild(cell(r, c, i)); });
      frag.appendChild(tr);
    });
    body.replaceChildren(frag);
    Array.prototype.forEach.call(heads, function (h) {
      if (h.dataset.key === s.key) h.setAttribute("aria-sort", s.dir > 0 ? "ascending" : "descending");
      else h.removeAttribute("aria-sort");
    });
    if (document.activeElement !== filter) filter.value = s.q;
    only.checked = s.flagged;
    var first = rows.length ? (at - 1) * size + 1 : 0, last = Math.min(at * size, rows.length);
    shown.textContent = " " + n(first) + "–" + n(last) + " of " + n(rows.length) +
      (rows.length < data.rows.length ? " matching (" + n(data.rows.length) + " in all)" : "") +
      ", page " + n(at) + " of " + n(pages) + " ";
    prev.disabled = at <= 1;
    next.disabled = at >= pages;
  }
  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th"), s = state();
    if (!th) return;
    var key = th.dataset.key, numeric = th.dataset.type === "number";
    var dir = key === s.key ? -s.dir : (numeric && key !== "rank" ? -1 : 1);
    go({key: key, dir: dir, page: 1});
  });
  filter.addEventListener("input", function () {
    var s = state();
    s.q = filter.value;
    s.page = 1;
    history.replaceState(null, "", link(s));
    render();
  });
  only.addEventListener("change", function () { go({flagged: only.checked, page: 1}); });
  prev.addEventListener("click", function () { go({page: at - 1}); });
  next.addEventListener("click", function () { go({page: at + 1}); });
  window.addEventListener("hashchange", render);
  render();
})();
"""
