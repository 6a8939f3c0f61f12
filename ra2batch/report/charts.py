"""Inline SVG for the review pages: the hand/foot score chart and radiographs with their boxes.

SVG keeps the pages self-contained and crisp at any zoom; tooltips are SVG ``<title>`` elements, so
no script is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from matplotlib import colormaps

from ra2batch import catalogue
from ra2batch.report import layout
from ra2batch.report.names import limb_name

#: Colormap of joint scores, applied to ``score / max_score``.
SCORE_CMAP = "YlOrRd"
PANEL_WIDTH = 170  # SVG user units (px) per limb panel
#: Longest side of a radiograph on the page and the height of its box labels, CSS pixels.
RADIOGRAPH_SIDE = 320
LABEL_PX = 14


@dataclass(frozen=True)
class JointMark:
    """What the chart shows for one predicted joint."""

    score: float
    uncertainty: float  # NaN when the scoring job did not measure it
    review: bool


@dataclass(frozen=True)
class BoxMark:
    """A detector box in image pixels, ``label`` shown in it and ``title`` as its tooltip."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    title: str


def score_colour(fraction: float) -> str:
    """Hex colour of a score as a fraction of its joint's maximum (clipped to [0, 1])."""
    r, g, b, _ = colormaps[SCORE_CMAP](min(max(fraction, 0.0), 1.0))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _ink(fraction: float) -> str:
    return "#fff" if fraction > 0.6 else "#000"


def grade(score: float, top: int) -> int:
    """The whole Sharp/van der Heijde grade nearest ``score`` as shown to one decimal (halves round up),
    within ``0..top``: readers score whole grades, so the page shows both."""
    return min(max(math.floor(round(score, 1) + 0.5), 0), top)


def score_text(score: float, top: int) -> str:
    """``"1.3 → grade 1"``: the model's continuous score beside the nearest whole grade."""
    return f"{score:.1f} → grade {grade(score, top)}"


def joint_tooltip(column: str, mark: JointMark | None) -> str:
    top = catalogue.BY_COLUMN[column].max_score
    name = catalogue.clinical_name(column)
    if mark is None:
        return f"{name}: not scored (joint not detected)"
    text = f"{name}: {score_text(mark.score, top)} (of 0–{top})"
    if not math.isnan(mark.uncertainty):
        text += f", flip disagreement {mark.uncertainty:.2f}"
    return text + (" (needs review)" if mark.review else "")


def limb_chart(limb: str, damage: str, marks: dict[str, JointMark]) -> str:
    """SVG of one limb's joints for one damage type: a circle per RA2 column coloured by its score.

    Joints absent from ``marks`` (not detected) are hollow; joints flagged for review get a thick ring.
    """
    kind = catalogue.limb_kind(limb)
    w, h = PANEL_WIDTH, round(PANEL_WIDTH * layout.ASPECT[kind])
    parts = [f'<svg class="limb" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="{limb_name(limb)}, {"erosion" if damage == "E" else "narrowing"}">',
             f'<text x="4" y="13" class="panel-title">{limb_name(limb)}</text>']
    for ray in layout.outline(limb):
        pts = " ".join(f"{x * w:.1f},{y * h:.1f}" for x, y in ray)
        parts.append(f'<polyline points="{pts}" class="bone"/>')
    for joint in catalogue.joints_for(limb=limb, damage=damage):
        x, y = layout.position(joint.column)
        mark = marks.get(joint.column)
        tip = f"<title>{escape(joint_tooltip(joint.column, mark))}</title>"
        cx, cy = x * w, y * h
        if mark is None:
            parts.append(f'<g class="joint missing" data-column="{joint.column}">{tip}'
                         f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9"/></g>')
            continue
        frac = mark.score / joint.max_score
        ring = " review" if mark.review else ""
        parts.append(
            f'<g class="joint{ring}" data-column="{joint.column}">{tip}'
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="{score_colour(frac)}"/>'
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" fill="{_ink(frac)}">{grade(mark.score, joint.max_score)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def score_legend() -> str:
    """A horizontal colour bar for ``score / max_score`` from 0 to 1."""
    stops = "".join(f'<stop offset="{f:.2f}" stop-color="{score_colour(f)}"/>' for f in (0, 0.25, 0.5, 0.75, 1))
    return ('<svg class="legend" viewBox="0 0 260 30" width="260" height="30">'
            f'<defs><linearGradient id="score-scale">{stops}</linearGradient></defs>'
            '<rect x="40" y="4" width="180" height="10" fill="url(#score-scale)"/>'
            '<text x="36" y="13" text-anchor="end">0</text><text x="224" y="13">max</text>'
            '<text x="130" y="27" text-anchor="middle">score as a fraction of the joint\'s maximum</text></svg>')


def _label_places(boxes: list[BoxMark], font: float) -> list[tuple[float, float]]:
    """Baseline ``(x, y)`` of each box's label, centred under its top edge and moved down a line at a
    time while it would overlap a label placed before it (boxes of neighbouring toes overlap)."""
    placed: list[tuple[float, float, float]] = []  # centre x, baseline y, half width
    for b in boxes:
        x, y, half = (b.x0 + b.x1) / 2, b.y0 + 1.1 * font, 0.35 * font * len(b.label) + 0.3 * font
        while any(abs(x - px) < half + ph and abs(y - py) < 1.1 * font for px, py, ph in placed):
            y += 1.2 * font
        placed.append((x, y, half))
    return [(x, y) for x, y, _ in placed]


def display_size(width: int, height: int) -> tuple[int, int]:
    """CSS pixels a ``width x height`` radiograph takes on the page (longest side ``RADIOGRAPH_SIDE``)."""
    unit = max(width, height) / RADIOGRAPH_SIDE
    return round(width / unit), round(height / unit)


def radiograph(href: str, width: int, height: int, boxes: list[BoxMark]) -> str:
    """SVG of the image at ``href`` in its file's pixel frame (``width x height``) with the detector boxes.

    Drawn at a fixed size (longest side ``RADIOGRAPH_SIDE`` CSS pixels), so box labels are exactly
    ``LABEL_PX`` pixels tall and lines 2 pixels wide on the page whatever the image's resolution.
    """
    unit = max(width, height) / RADIOGRAPH_SIDE  # image pixels per CSS pixel
    shown = display_size(width, height)
    parts = [f'<svg class="radiograph" viewBox="0 0 {width} {height}" width="{shown[0]}" height="{shown[1]}">',
             f'<image href="{escape(href)}" x="0" y="0" width="{width}" height="{height}"/>']
    font = LABEL_PX * unit
    for b, (x, y) in zip(boxes, _label_places(boxes, font)):
        parts.append(
            f'<g class="box"><title>{escape(b.title)}</title>'
            f'<rect x="{b.x0:.1f}" y="{b.y0:.1f}" width="{b.x1 - b.x0:.1f}" height="{b.y1 - b.y0:.1f}" '
            f'stroke-width="{2 * unit:.2f}"/>'
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{font:.2f}" stroke-width="{3 * unit:.2f}">'
            f"{escape(b.label)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
