"""The static review site: ``index.html`` and one page per patient visit, images stored beside them.

Layout under ``dest``::

    index.html                      sortable patient list (inline script, no network)
    patients/<key>.html             one patient visit
    patients/<key>/<limb>.jpg       the radiograph, downscaled for display (boxes are drawn in SVG)
    patients/<key>/<limb>_<crop_class>_<group>.png   joint crop with its attention heat map

Everything is relative, so the folder opens from disk or any static host.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ra2batch import catalogue
from ra2batch.catalogue import ID_COLUMN
from ra2batch.imaging.readers import SCORING_MAX_SIDE, Radiograph, decode
from ra2batch.models.crops import cut, is_mirrored
from ra2batch.models.plan import PLAN
from ra2batch.report import charts
from ra2batch.report.overlay import HEAT_CMAP, attention_overlay
from ra2batch.report.results import ScoredResults
from ra2batch.storage import resolve

#: Longest side of a radiograph as stored for display, pixels.
DISPLAY_SIDE = 1000
#: Crop shape (height, width) for groups the plan does not know, pixels.
FALLBACK_CROP_SHAPE = (160, 160)


@dataclass(frozen=True)
class CropGeometry:
    """How to re-cut the crop each joint model saw: ``(height, width)`` per group and the box margin."""

    shapes: dict[str, tuple[int, int]] = field(default_factory=lambda: {g.name: g.crop_shape for g in PLAN.groups})
    margin: float = 0.1
    override: int | None = None  # one height for every group, aspect kept (e.g. smaller pages)

    def shape(self, group: str) -> tuple[int, int]:
        h, w = self.shapes.get(group, FALLBACK_CROP_SHAPE)
        if self.override:
            return self.override, max(1, round(self.override * w / h))
        return h, w


def geometry_from_bundle(uri: str, storage_options: dict[str, Any] | None = None,
                         override: int | None = None) -> CropGeometry:
    """Crop shapes and margin from a bundle's ``bundle.json`` (no weights are read)."""
    from ra2batch.models.manifest import Manifest

    manifest = Manifest.model_validate_json(resolve(uri, storage_options).read_bytes("bundle.json"))
    return CropGeometry({g.name: g.crop_shape for g in manifest.plan.groups},
                        manifest.preprocessing.crop_margin, override)


def page_key(patient_id: str, visit: str) -> str:
    """A file-name-safe, readable key; a short hash is added when characters had to be replaced."""
    raw = patient_id + (f"_{visit}" if visit else "")
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    return safe if safe == raw else f"{safe}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


class _Radiographs:
    """Decoded images by path, read once; a failure is kept as its one-line message. Images are
    decoded as the scoring job decodes them (at most ``SCORING_MAX_SIDE`` pixels a side), so the
    report's memory is bounded as the job's is; boxes, in the file's pixels, are scaled to them."""

    def __init__(self, storage_options: dict[str, Any] | None):
        self._options = storage_options
        self._cache: dict[str, Radiograph | str] = {}

    def get(self, path: str) -> Radiograph | str:
        if path not in self._cache:
            try:
                data = resolve(path, self._options).read_bytes()
                self._cache[path] = decode(data, path.rsplit("/", 1)[-1], max_side=SCORING_MAX_SIDE)
            except (OSError, ValueError) as e:
                first_line = str(e).splitlines()[0] if str(e) else ""
                self._cache[path] = f"cannot read {path}: {type(e).__name__}: {first_line}"
        return self._cache[path]

    def failures(self) -> list[str]:
        return [v for v in self._cache.values() if isinstance(v, str)]


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int = 1) -> str:
    return "—" if _missing(v) else f"{float(v):.{digits}f}"


def _text(v: Any) -> str:
    return "—" if _missing(v) or v == "" else escape(str(v))


def _num(v: Any) -> str:
    return "" if _missing(v) else repr(float(v))


def _needs_review(joints: pd.DataFrame, flags: list[str]) -> bool:
    return bool(joints["review"].any()) or any(f.startswith("review:") for f in flags)


def _flag_chips(flags: list[str], compact: bool) -> str:
    """QC flags as chips; ``compact`` groups them by kind (``filled ×12``) with the full list as a tooltip."""
    if not flags:
        return '<span class="ok">none</span>'
    if not compact:
        return " ".join(f'<span class="chip {escape(f.split(":")[0])}">{escape(f)}</span>' for f in flags)
    kinds: dict[str, list[str]] = {}
    for f in flags:
        kinds.setdefault(f.split(":")[0], []).append(f)
    return " ".join(
        f'<span class="chip {escape(k)}" title="{escape(", ".join(v))}">{escape(k)}'
        f'{f" ×{len(v)}" if len(v) > 1 else ""}</span>' for k, v in kinds.items())


def _page(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>\n")


def _score_charts(joints: pd.DataFrame) -> str:
    marks = {r.joint: charts.JointMark(float(r.score), float(r.uncertainty), bool(r.review))
             for r in joints.itertuples()}
    rows = []
    for damage, name in (("E", "Erosion"), ("J", "Joint-space narrowing")):
        panels = "".join(charts.limb_chart(limb, damage, marks) for limb in catalogue.LIMBS)
        rows.append(f'<h3>{name}</h3><div class="limbs">{panels}</div>')
    return "".join(rows) + charts.score_legend()


def _radiographs(images: pd.DataFrame, joints: pd.DataFrame, key: str, folder: Path,
                 pictures: _Radiographs) -> str:
    figures = []
    chosen = images[(images["status"] == "ok") & images["chosen"].fillna(False).astype(bool)]
    for limb in catalogue.LIMBS:
        rows = chosen[chosen["limb"] == limb]
        if rows.empty:
            figures.append(f'<figure class="radiograph missing"><div>no {limb} image</div>'
                           f"<figcaption>{limb}</figcaption></figure>")
            continue
        path = str(rows.iloc[0]["path"])
        image = pictures.get(path)
        if isinstance(image, str):
            figures.append(f'<figure class="radiograph missing"><div>{escape(image)}</div>'
                           f"<figcaption>{limb}</figcaption></figure>")
            continue
        h, w = image.levels.shape
        scale = min(1.0, DISPLAY_SIDE / max(h, w))
        shown = Image.fromarray(np.round(image.pixels * 255).astype(np.uint8))
        if scale < 1:
            shown = shown.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        shown.save(folder / f"{limb}.jpg", quality=88)
        boxes = [charts.BoxMark(r.box_x0, r.box_y0, r.box_x1, r.box_y1, f"{r.crop_class} {r.detector_score:.2f}")
                 for r in joints[joints["limb"] == limb].drop_duplicates("crop_class").itertuples()]
        width, height = image.original_size  # the boxes' pixels
        figures.append(f'<figure class="radiograph">{charts.radiograph(f"{key}/{limb}.jpg", width, height, boxes)}'
                       f"<figcaption>{limb} · {escape(path)}</figcaption></figure>")
    return f'<div class="radiographs">{"".join(figures)}</div>'


def _joint_caption(rows: pd.DataFrame) -> str:
    lines = []
    for r in rows.itertuples():
        unc = "" if math.isnan(r.uncertainty) else f" (Δflip {r.uncertainty:.2f})"
        flag = ' <b class="review-mark">review</b>' if r.review else ""
        lines.append(f"{escape(r.joint)}: {r.score:.2f}{unc}{flag}")
    return "<br>".join(lines)


def _crop_figure(limb: str, rows: pd.DataFrame, key: str, folder: Path, pictures: _Radiographs,
                 geometry: CropGeometry) -> str:
    """One (limb, crop class, group): the re-cut crop with its attention overlay, and the joints it scored."""
    first = rows.iloc[0]
    crop_class, group = str(first["crop_class"]), str(first["group"])
    height, width = geometry.shape(group)
    image = pictures.get(str(first["path"]))
    att = np.asarray(first["attention"], dtype=np.float32)
    ah, aw = int(first["attention_h"]), int(first["attention_w"])
    problem = image if isinstance(image, str) else None
    if problem is None and att.size != ah * aw:
        problem = f"attention has {att.size} values, not {ah}x{aw}"
    if problem is None:
        box = tuple(first[c] * image.scale for c in ("box_x0", "box_y0", "box_x1", "box_y1"))
        try:
            crop = cut(image.pixels, box, (height, width), is_mirrored(limb), margin=geometry.margin)
        except ValueError as e:
            problem = str(e)
    if problem is None:
        name = f"{limb}_{crop_class}_{group}.png"
        Image.fromarray(attention_overlay(crop, att.reshape(ah, aw))).save(folder / name)
        picture = (f'<img class="overlay" src="{key}/{escape(name)}" width="{width}" height="{height}" '
                   f'data-limb="{limb}" data-crop-class="{escape(crop_class)}" data-group="{escape(group)}" '
                   f'alt="{limb} {escape(crop_class)} crop with {escape(group)} attention">')
    else:
        picture = f'<div class="missing">{escape(problem)}</div>'
    return (f'<figure class="crop">{picture}<figcaption><b>{escape(crop_class)}</b> · {escape(group)}<br>'
            f"{_joint_caption(rows)}</figcaption></figure>")


def _crops(joints: pd.DataFrame, key: str, folder: Path, pictures: _Radiographs, geometry: CropGeometry) -> str:
    order = {c: i for i, c in enumerate(catalogue.COLUMNS)}
    sections = []
    for limb in catalogue.LIMBS:
        limb_rows = joints[joints["limb"] == limb]
        if limb_rows.empty:
            continue
        figures = [_crop_figure(limb, rows.sort_values("joint", key=lambda c: c.map(order)), key, folder,
                                pictures, geometry)
                   for _, rows in limb_rows.groupby(["crop_class", "group"], sort=True)]
        sections.append(f'<h3>{limb}</h3><div class="crops">{"".join(figures)}</div>')
    note = (f'<p class="note">Heat map ({HEAT_CMAP}, 0 dark to 1 bright) of the joint model\'s attention, '
            "one block per stored cell; crops of right limbs are mirrored, as the model saw them. "
            "Δflip: how much the score changed on the left-right flipped crop.</p>")
    return note + "".join(sections)


def _files_table(images: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{_text(r.limb)}</td><td>{_text(r.path)}</td><td>{_text(r.status)}</td>"
        f"<td>{'no' if _missing(r.chosen) or not r.chosen else 'yes'}</td>"
        f"<td>{'' if _missing(r.error) else escape(str(r.error))}</td></tr>"
        for r in images.itertuples())
    return ("<table><thead><tr><th>limb</th><th>file</th><th>status</th><th>used</th><th>error</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _review_table(joints: pd.DataFrame) -> str:
    flagged = joints[joints["review"]]
    if flagged.empty:
        return ""
    rows = "".join(f"<tr><td>{escape(r.joint)}</td><td>{r.score:.2f}</td><td>{_fmt(r.uncertainty, 2)}</td></tr>"
                   for r in flagged.sort_values("uncertainty", ascending=False).itertuples())
    return ('<section class="review-list"><h2>Joints flagged for review</h2><p class="note">The prediction '
            "changed by more than the job's threshold when the crop was flipped left-right.</p>"
            "<table><thead><tr><th>joint</th><th>score</th><th>flip disagreement</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _patient_page(patient: pd.Series, results: ScoredResults, key: str, folder: Path,
                  pictures: _Radiographs, geometry: CropGeometry) -> str:
    pid, visit = str(patient[ID_COLUMN]), str(patient["visit"])
    joints = results.of("joints", pid, visit)
    images = results.of("images", pid, visit)
    flags = list(patient["qc_flags"])
    title = f"{pid}{f' visit {visit}' if visit else ''}"
    summary = "".join(f"<tr><th>{n}</th><td>{v}</td></tr>" for n, v in (
        ("Overall_Tol", _fmt(patient["Overall_Tol"])), ("Overall_erosion", _fmt(patient["Overall_erosion"])),
        ("Overall_narrowing", _fmt(patient["Overall_narrowing"])),
        ("Limbs", _text(patient.get("limbs"))), ("QC flags", _flag_chips(flags, compact=False)),
        ("Model version", _text(patient.get("model_version"))), ("Scored at", _text(patient.get("scored_at"))),
    ))
    review = ' <span class="chip review">needs review</span>' if _needs_review(joints, flags) else ""
    body = (f'<nav><a href="../index.html">← all patients</a></nav><h1>{escape(title)}{review}</h1>'
            f'<table class="summary">{summary}</table>{_review_table(joints)}'
            f"<section><h2>Joint scores</h2>{_score_charts(joints)}</section>"
            f"<section><h2>Radiographs and detections</h2>"
            f"{_radiographs(images, joints, key, folder, pictures)}</section>"
            f"<section><h2>Joint crops and attention</h2>{_crops(joints, key, folder, pictures, geometry)}</section>"
            f"<section><h2>Files</h2>{_files_table(images)}</section>")
    return _page(f"{title} · ra2batch review", body)


_INDEX_COLUMNS = (  # key, heading, type
    ("patient", "Patient", "text"), ("visit", "Visit", "text"), ("Overall_Tol", "Overall_Tol", "number"),
    ("Overall_erosion", "Erosion", "number"), ("Overall_narrowing", "Narrowing", "number"),
    ("uncertainty", "Max flip disagreement", "number"), ("review", "Joints to review", "number"),
    ("flags", "QC flags", "text"),
)


def _index_row(patient: pd.Series, joints: pd.DataFrame, key: str) -> str:
    flags = list(patient["qc_flags"])
    unc = float(joints["uncertainty"].max()) if joints["uncertainty"].notna().any() else float("nan")
    n_review = int(joints["review"].sum())
    cells = [
        (escape(str(patient[ID_COLUMN])), f'<a href="patients/{key}.html">{escape(str(patient[ID_COLUMN]))}</a>'),
        (escape(str(patient["visit"])), _text(patient["visit"])),
        *((_num(patient[c]), _fmt(patient[c])) for c in catalogue.TOTAL_COLUMNS),
        (_num(unc), _fmt(unc, 2)), (str(n_review), str(n_review)),
        (escape(" ".join(flags)), _flag_chips(flags, compact=True)),
    ]
    tds = "".join(f'<td data-value="{v}">{shown}</td>' for v, shown in cells)
    highlight = ' class="review"' if _needs_review(joints, flags) else ""
    return f"<tr{highlight}>{tds}</tr>"


def build_site(results: ScoredResults, dest: str | Path, *, geometry: CropGeometry | None = None,
               storage_options: dict[str, Any] | None = None, source: str = "") -> Path:
    """Write the review site for every patient visit in ``results`` under ``dest``; returns ``index.html``.

    Images are read from the ``path`` the job stored (local or ``s3://``, with ``storage_options``);
    an unreadable image is reported on its page instead of stopping the site.
    """
    geometry = geometry or CropGeometry()
    root = Path(dest)
    (root / "patients").mkdir(parents=True, exist_ok=True)
    rows, used, failures = [], set(), []
    for _, patient in results.patients.iterrows():
        pid, visit = str(patient[ID_COLUMN]), str(patient["visit"])
        key = page_key(pid, visit)
        if key in used:
            key = f"{key}-{hashlib.sha256(json.dumps([pid, visit]).encode()).hexdigest()[:8]}"
        used.add(key)
        folder = root / "patients" / key
        folder.mkdir(exist_ok=True)
        pictures = _Radiographs(storage_options)  # one visit's images in memory at a time
        page = _patient_page(patient, results, key, folder, pictures, geometry)
        failures += pictures.failures()
        (root / "patients" / f"{key}.html").write_text(page, encoding="utf-8")
        rows.append(_index_row(patient, results.of("joints", pid, visit), key))
    for problem in failures:
        print(f"warning: {problem}", file=sys.stderr)
    head = "".join(f'<th data-key="{k}" data-type="{t}" title="sort">{h}</th>' for k, h, t in _INDEX_COLUMNS)
    n_review = sum('class="review"' in r for r in rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (f"<h1>ra2batch review</h1><p class=\"note\">{len(rows)} patient visit(s), {n_review} flagged for "
            f"review (highlighted). Source: {escape(source) or '—'}; built {stamp}. Click a heading to sort.</p>"
            f'<table id="patients" class="index"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    index = root / "index.html"
    index.write_text(_page("ra2batch review", body, SORT_JS), encoding="utf-8")
    return index


#: Sorts the index by the column named in the URL hash (``#sort=Overall_Tol:desc``), so a sorted view
#: is a link; clicking a heading sets the hash. Empty values sort last either way.
SORT_JS = """
(function () {
  var table = document.getElementById("patients"), body = table.tBodies[0];
  function apply() {
    var m = /^#sort=([A-Za-z_]+):(asc|desc)$/.exec(location.hash);
    if (!m) return;
    var th = table.querySelector('th[data-key="' + m[1] + '"]');
    if (!th) return;
    var dir = m[2] === "asc" ? 1 : -1, i = th.cellIndex, numeric = th.dataset.type === "number";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].dataset.value, y = b.cells[i].dataset.value;
      if (x === "" || y === "") return (x === "") - (y === "");
      return (numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y)) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  }
  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (!th) return;
    var now = th.getAttribute("aria-sort");
    var asc = now ? now === "descending" : th.dataset.type !== "number";
    location.hash = "sort=" + th.dataset.key + ":" + (asc ? "asc" : "desc");
  });
  window.addEventListener("hashchange", apply);
  apply();
})();
"""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left}
table.index th{cursor:pointer;background:#f4f4f4;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.review{background:#fff1e6}tr.review td:first-child{border-left:4px solid #d9480f}
.chip{display:inline-block;padding:0 .45em;margin:1px;border-radius:.7em;background:#e9ecef;font-size:.85em}
.chip.review,.chip.missing_limb,.chip.not_detected{background:#ffd8a8}.ok{color:#2b8a3e}
.note{color:#555;font-size:.9em}
.limbs{display:flex;flex-wrap:wrap;gap:1em}
svg.limb{border:1px solid #eee;border-radius:4px;background:#fcfcfc}
svg.limb .bone{fill:none;stroke:#d0d0d0;stroke-width:6;stroke-linecap:round;stroke-linejoin:round}
svg.limb text.panel-title{font-size:11px;font-weight:bold;text-anchor:start}
svg.limb circle{stroke:#555;stroke-width:1}svg.limb text{font-size:7px;text-anchor:middle;pointer-events:none}
svg.limb .missing circle{fill:#fff;stroke:#999;stroke-dasharray:2 2}
svg.limb .review circle{stroke:#c92a2a;stroke-width:3}
svg.legend text{font-size:10px}
.radiographs{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}
svg.radiograph{width:100%;height:420px;background:#000}
svg.radiograph rect{fill:none;stroke:#4dabf7}svg.radiograph text{fill:#4dabf7}
figure{margin:0}figcaption{font-size:.85em;color:#444}figure.radiograph figcaption{word-break:break-all}
.missing{background:#f8f9fa;color:#868e96;padding:1em;min-height:6em}
.crops{display:flex;flex-wrap:wrap;gap:.8em}.crop{width:170px}
.crop img{width:160px;height:160px;image-rendering:pixelated;display:block}
.review-mark{color:#c92a2a}
"""
