"""The static review site: ``index.html`` and one page per patient visit, images stored beside them.

Layout under ``dest``::

    index.html                      every patient visit in review order (``report.index``)
    patients/<key>.html             one patient visit
    patients/<key>/<limb>.jpg       the radiograph, downscaled for display (boxes are drawn in SVG)
    patients/<key>/<limb>_<crop_class>_<group>.png   the joint crop the model scored, with its attention

Everything is relative, so the folder opens from disk or any static host. Joints are named clinically
(``catalogue.clinical_name``), scores shown beside their nearest whole grade, and the joints and
patients to review are the report's rule (``report.review``).
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ra2batch import catalogue
from ra2batch.catalogue import ID_COLUMN
from ra2batch.imaging.readers import SCORING_MAX_SIDE, Radiograph, decode
from ra2batch.report import charts, review
from ra2batch.report.index import write_index
from ra2batch.report.names import box_label, crop_name, limb_name
from ra2batch.report.overlay import (
    HEAT_CMAP,
    CropGeometry,
    attention_overlay,
    model_crop,
    plan_geometry,
)
from ra2batch.report.pages import (
    flag_chips,
    fmt,
    missing,
    page,
    page_keys,
    shown_flags,
    text,
)
from ra2batch.report.results import ScoredResults, by_visit
from ra2batch.storage import resolve

#: Longest side of a radiograph as stored for display, pixels (it is drawn at ``charts.RADIOGRAPH_SIDE``;
#: the rest is for zooming in).
DISPLAY_SIDE = 1000
#: Height of every joint crop on the page, CSS pixels (aspect kept; the PNG is the model's own size).
CROP_HEIGHT = 176


class _Radiographs:
    """Decoded images by path, read once; a failure is kept as its one-line message. Images are
    decoded as the scoring job decodes them (at most ``SCORING_MAX_SIDE`` pixels a side), so crops are
    the model's and the report's memory is bounded as the job's is."""

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


def _score_charts(joints: pd.DataFrame) -> str:
    marks = {r.joint: charts.JointMark(float(r.score), float(r.uncertainty), bool(r.flagged))
             for r in joints.itertuples()}
    rows = []
    for damage, name in (("E", "Erosion"), ("J", "Joint-space narrowing")):
        panels = "".join(charts.limb_chart(limb, damage, marks) for limb in catalogue.LIMBS)
        rows.append(f'<h3>{name}</h3><div class="limbs">{panels}</div>')
    note = ('<p class="note">Each circle is a joint, coloured by its score and labelled with the nearest whole '
            "grade; hover for the joint's name, score and flip disagreement. Red rings: joints to review; "
            "hollow: not found on the radiograph.</p>")
    return note + "".join(rows) + charts.score_legend()


def _boxes(joints: pd.DataFrame, limb: str) -> tuple[list[charts.BoxMark], str]:
    """The detector boxes of one radiograph, and their confidences in words (for the caption)."""
    order = {c: i for i, c in enumerate(catalogue.detector_classes(catalogue.limb_kind(limb)))}
    found = joints[joints["limb"] == limb].drop_duplicates("crop_class")
    found = found.sort_values("crop_class", key=lambda c: c.map(order))
    marks = [charts.BoxMark(r.box_x0, r.box_y0, r.box_x1, r.box_y1, box_label(r.crop_class),
                            f"{crop_name(limb, r.crop_class)}: detector confidence {r.detector_score:.2f}")
             for r in found.itertuples()]
    words = ", ".join(f"{box_label(r.crop_class)}: {r.detector_score:.2f}" for r in found.itertuples())
    return marks, words


def _missing_figure(limb: str, why: str) -> str:
    return (f'<figure class="radiograph" style="width:{charts.RADIOGRAPH_SIDE * 3 // 4}px">'
            f'<div class="missing">{escape(why)}</div>'
            f"<figcaption>{limb_name(limb)}</figcaption></figure>")


def _save_for_display(image: Radiograph, path: Path) -> None:
    """The radiograph as a JPEG of at most ``DISPLAY_SIDE`` pixels a side."""
    h, w = image.levels.shape
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    shown = Image.fromarray(np.round(image.pixels * 255).astype(np.uint8))
    if scale < 1:
        shown = shown.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    shown.save(path, quality=88)


def _radiographs(images: pd.DataFrame, joints: pd.DataFrame, key: str, folder: Path,
                 pictures: _Radiographs) -> str:
    figures = []
    chosen = images[(images["status"] == "ok") & images["chosen"].fillna(False).astype(bool)]
    for limb in catalogue.LIMBS:
        rows = chosen[chosen["limb"] == limb]
        if rows.empty:
            figures.append(_missing_figure(limb, f"no {limb_name(limb)} radiograph"))
            continue
        path = str(rows.iloc[0]["path"])
        image = pictures.get(path)
        if isinstance(image, str):
            figures.append(_missing_figure(limb, image))
            continue
        _save_for_display(image, folder / f"{limb}.jpg")
        boxes, confidences = _boxes(joints, limb)
        width, height = image.original_size  # the boxes' pixels
        figures.append(
            f'<figure class="radiograph" style="width:{charts.display_size(width, height)[0]}px">'
            f'{charts.radiograph(f"{key}/{limb}.jpg", width, height, boxes)}'
            f"<figcaption><b>{limb_name(limb)}</b> · detector confidence by box — {confidences or 'no boxes'}"
            f'<br><span class="path">{escape(path)}</span></figcaption></figure>')
    note = ('<p class="note">Boxes are the detector\'s, numbered by digit (1: thumb or big toe); hover for '
            "the crop's name and confidence.</p>")
    return f'{note}<div class="radiographs">{"".join(figures)}</div>'


def _joint_rows(rows: pd.DataFrame) -> str:
    """One table row per joint: its clinical name, score beside grade, flip disagreement, review mark."""
    lines = []
    for r in rows.itertuples():
        top = catalogue.BY_COLUMN[r.joint].max_score
        flag = ' <span class="review-mark">review</span>' if r.flagged else ""
        lines.append(f"<tr><td>{escape(catalogue.clinical_name(r.joint))}{flag}</td>"
                     f"<td>{charts.score_text(r.score, top)}</td><td class=\"num\">{fmt(r.uncertainty, 2)}</td></tr>")
    return "".join(lines)


def _crop_picture(limb: str, first: pd.Series, key: str, folder: Path, pictures: _Radiographs,
                  geometry: CropGeometry, height: int) -> str:
    """The crop a joint model scored with its attention heat map, as an ``<img>`` ``height`` CSS pixels
    tall (aspect kept), or why it cannot be shown."""
    crop_class, group = str(first["crop_class"]), str(first["group"])
    image = pictures.get(str(first["path"]))
    att = np.asarray(first["attention"], dtype=np.float32)
    ah, aw = int(first["attention_h"]), int(first["attention_w"])
    shape = geometry.groups.get(group)
    if isinstance(image, str):
        return f'<div class="missing">{escape(image)}</div>'
    if shape is None:
        return f'<div class="missing">{escape(geometry.source)} has no crop size for joint model {escape(group)}</div>'
    if att.size != ah * aw:
        return f'<div class="missing">attention has {att.size} values, not {ah}x{aw}</div>'
    try:
        crop = model_crop(image, [first[c] for c in ("box_x0", "box_y0", "box_x1", "box_y1")], limb, shape)
    except ValueError as e:
        return f'<div class="missing">{escape(str(e))}</div>'
    name = f"{limb}_{crop_class}_{group}.png"
    Image.fromarray(attention_overlay(crop, att.reshape(ah, aw))).save(folder / name)
    width = max(1, round(height * shape.width / shape.height))
    return (f'<img class="overlay" src="{key}/{escape(name)}" width="{width}" height="{height}" '
            f'data-limb="{limb}" data-crop-class="{escape(crop_class)}" data-group="{escape(group)}" '
            f'alt="{crop_name(limb, crop_class)}: the crop the model scored, {shape.height} × {shape.width} '
            f'pixels, with its attention" title="{shape.height} × {shape.width} pixels, as the model saw it">')


def _crop_figure(limb: str, rows: pd.DataFrame, key: str, folder: Path, pictures: _Radiographs,
                 geometry: CropGeometry, height: int) -> str:
    """One detected ray or wrist: the crop of each joint model that scored it (erosion, narrowing),
    what it shows and the joints it scored."""
    first = rows.iloc[0]
    models = []
    for (damage, _), group_rows in rows.groupby(["damage", "group"], sort=True):
        picture = _crop_picture(limb, group_rows.iloc[0], key, folder, pictures, geometry, height)
        models.append(f'<div class="model">{picture}<span>{"erosion" if damage == "E" else "narrowing"}</span></div>')
    return (f'<figure class="crop"><div class="models">{"".join(models)}</div><figcaption>'
            f"<b>{crop_name(limb, str(first['crop_class']))}</b><br>detector confidence {first['detector_score']:.2f}"
            f'<table class="joints"><thead><tr><th>joint</th><th>score</th><th class="num">Δflip</th></tr></thead>'
            f"<tbody>{_joint_rows(rows)}</tbody></table></figcaption></figure>")


def _crops(joints: pd.DataFrame, key: str, folder: Path, pictures: _Radiographs, geometry: CropGeometry,
           height: int) -> str:
    order = {c: i for i, c in enumerate(catalogue.COLUMNS)}
    sections = []
    for limb in catalogue.LIMBS:
        limb_rows = joints[joints["limb"] == limb].sort_values("joint", key=lambda c: c.map(order))
        if limb_rows.empty:
            continue
        classes = {c: i for i, c in enumerate(catalogue.detector_classes(catalogue.limb_kind(limb)))}
        rays = sorted(limb_rows.groupby("crop_class", sort=False), key=lambda g: classes.get(g[0], len(classes)))
        figures = [_crop_figure(limb, rows, key, folder, pictures, geometry, height) for _, rows in rays]
        sections.append(f'<h3>{limb_name(limb).capitalize()}</h3><div class="crops">{"".join(figures)}</div>')
    note = (f'<p class="note">Each picture is the crop a joint model scored, cut as it was cut for the model '
            f"(sizes from {escape(geometry.source)}); crops of right limbs are mirrored, as the model saw them. "
            f"Heat map ({HEAT_CMAP}, 0 dark to 1 bright) of the model's attention, one block per stored cell. "
            "Scores are the model's, beside the nearest whole grade; Δflip: how much the score changed on the "
            "crop's mirror image.</p>")
    return note + "".join(sections)


def _files_table(images: pd.DataFrame) -> str:
    order = {limb: i for i, limb in enumerate(catalogue.LIMBS)}
    images = images.sort_values(["limb", "path"], key=lambda c: c.map(order) if c.name == "limb" else c)
    rows = "".join(
        f"<tr><td>{limb_name(r.limb) if r.limb in catalogue.LIMBS else text(r.limb)}</td><td>{text(r.path)}</td>"
        f"<td>{text(r.status)}</td><td>{'no' if missing(r.chosen) or not r.chosen else 'yes'}</td>"
        f"<td>{text(r.error)}</td></tr>" for r in images.itertuples())
    return ("<table><thead><tr><th>limb</th><th>file</th><th>status</th><th>used</th><th>error</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _review_table(joints: pd.DataFrame, threshold: float) -> str:
    flagged = joints[joints["flagged"]]
    if flagged.empty:
        return ""
    rows = "".join(
        f"<tr><td>{escape(catalogue.clinical_name(r.joint))}</td>"
        f"<td>{charts.score_text(r.score, catalogue.BY_COLUMN[r.joint].max_score)}</td>"
        f'<td class="num">{fmt(r.uncertainty, 2)}</td><td class="num">{fmt(r.detector_score, 2)}</td></tr>'
        for r in flagged.sort_values("uncertainty", ascending=False).itertuples())
    return ('<section class="review-list"><h2>Joints to review</h2><p class="note">The score of the joint\'s '
            f"crop and of its mirror image differ by at least {threshold:g} points.</p>"
            "<table><thead><tr><th>joint</th><th>score</th><th>flip disagreement</th><th>detector confidence</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></section>")


def _limbs(limbs: Any) -> str:
    """The job's ``limbs`` (``"LF,LH"``) in words, hands first."""
    have = set(str(limbs).split(",")) if not missing(limbs) else set()
    return ", ".join(limb_name(limb) for limb in catalogue.LIMBS if limb in have) or "none"


def _summary(patient: pd.Series, rank: str, run: dict[str, Any]) -> str:
    flags = shown_flags(list(patient["qc_flags"]))
    return "".join(f"<tr><th>{n}</th><td>{v}</td></tr>" for n, v in (
        ("Total score (Overall_Tol)", fmt(patient["Overall_Tol"])), ("Erosion", fmt(patient["Overall_erosion"])),
        ("Joint-space narrowing", fmt(patient["Overall_narrowing"])), ("Review order", rank),
        ("Limbs", _limbs(patient.get("limbs"))), ("QC flags", flag_chips(flags)),
        ("Model version", text(patient.get("model_version"))), ("Bundle", text(run.get("bundle"))),
        ("Scored at", text(patient.get("scored_at"))),
    ))


def _patient_page(patient: pd.Series, images: pd.DataFrame, joints: pd.DataFrame, key: str, folder: Path,
                  pictures: _Radiographs, context: dict[str, Any]) -> str:
    pid, visit = str(patient[ID_COLUMN]), str(patient["visit"])
    title = f"{pid}{f' visit {visit}' if visit else ''}"
    chip = ' <span class="chip review">needs review</span>' if joints["flagged"].any() else ""
    geometry, height = context["geometry"], context["crop_height"]
    body = (f'<nav><a href="../index.html">← all patients</a></nav><h1>{escape(title)}{chip}</h1>'
            f'<table class="summary">{_summary(patient, context["rank"], context["run"])}</table>'
            f'{_review_table(joints, context["threshold"])}'
            f"<section><h2>Joint scores</h2>{_score_charts(joints)}</section>"
            f"<section><h2>Radiographs and detections</h2>"
            f"{_radiographs(images, joints, key, folder, pictures)}</section>"
            f"<section><h2>Joint crops and attention</h2>"
            f"{_crops(joints, key, folder, pictures, geometry, height)}</section>"
            f"<section><h2>Files</h2>{_files_table(images)}</section>")
    return page(f"{title} · ra2batch review", body)


def build_site(results: ScoredResults, dest: str | Path, *, geometry: CropGeometry | None = None,
               storage_options: dict[str, Any] | None = None, source: str = "",
               threshold: float = review.REVIEW_THRESHOLD, crop_height: int = CROP_HEIGHT) -> Path:
    """Write the review site for every patient visit in ``results`` under ``dest``; returns ``index.html``.

    Crops are cut with ``geometry`` (default: the built-in plan's); images are read from the ``path``
    the job stored (local or ``s3://``, with ``storage_options``); an unreadable image is reported on
    its page instead of stopping the site. ``threshold``: flip disagreement (points) that flags a joint.
    """
    geometry = geometry or plan_geometry()
    root = Path(dest)
    (root / "patients").mkdir(parents=True, exist_ok=True)
    joints = results.joints.assign(flagged=review.flagged(results.joints, threshold))
    images_of, joints_of = by_visit(results.images), by_visit(joints)
    ranks = review.patient_review(results.patients, joints, threshold)["rank"]
    context = {"geometry": geometry, "crop_height": crop_height, "threshold": threshold, "run": dict(results.run)}
    failures = []
    for (_, patient), key, rank in zip(results.patients.iterrows(), page_keys(results.patients), ranks):
        visit_key = (str(patient[ID_COLUMN]), str(patient["visit"]))
        folder = root / "patients" / key
        folder.mkdir(exist_ok=True)
        pictures = _Radiographs(storage_options)  # one visit's images in memory at a time
        page_html = _patient_page(patient, images_of.get(visit_key, results.images.iloc[:0]),
                                  joints_of.get(visit_key, joints.iloc[:0]), key, folder, pictures,
                                  {**context, "rank": f"{rank} of {len(ranks)}"})
        failures += pictures.failures()
        (root / "patients" / f"{key}.html").write_text(page_html, encoding="utf-8")
    for problem in failures:
        print(f"warning: {problem}", file=sys.stderr)
    return write_index(results, root, threshold=threshold, source=source, crops=geometry.source)
