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

#: Colormap of joint scores, applied to ``score / max_score``.
SCORE_CMAP = "YlOrRd"
PANEL_WIDTH = 170  # SVG user units (px) per limb panel


@dataclass(frozen=True)
class JointMark:
    """What the chart shows for one predicted joint."""

    score: float
    uncertainty: float  # NaN when the scoring job did not measure it
    review: bool


@dataclass(frozen=True)
class BoxMark:
    """A detector box in image pixels, ``label`` shown beside it."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str


def score_colour(fraction: float) -> str:
    """Hex colour of a score as a fraction of its joint's maximum (clipped to [0, 1])."""
    r, g, b, _ = colormaps[SCORE_CMAP](min(max(fraction, 0.0), 1.0))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _ink(fraction: float) -> str:
    return "#fff" if fraction > 0.6 else "#000"


def joint_tooltip(column: str, mark: JointMark | None) -> str:
    top = catalogue.BY_COLUMN[column].max_score
    if mark is None:
        return f"{column}: not scored (joint not detected)"
    text = f"{column}: {mark.score:.2f} of {top}"
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
             f'aria-label="{limb} {"erosion" if damage == "E" else "narrowing"}">',
             f'<text x="4" y="12" class="panel-title">{limb}</text>']
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
            f'<text x="{cx:.1f}" y="{cy + 3:.1f}" fill="{_ink(frac)}">{mark.score:.1f}</text></g>'
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


def radiograph(href: str, width: int, height: int, boxes: list[BoxMark]) -> str:
    """SVG showing the image at ``href`` in its original pixel frame with the detector boxes on top."""
    stroke = max(width, height) / 300
    font = max(width, height) / 45
    parts = [f'<svg class="radiograph" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet">',
             f'<image href="{escape(href)}" x="0" y="0" width="{width}" height="{height}"/>']
    for b in boxes:
        parts.append(
            f'<g class="box"><title>{escape(b.label)}</title>'
            f'<rect x="{b.x0:.1f}" y="{b.y0:.1f}" width="{b.x1 - b.x0:.1f}" height="{b.y1 - b.y0:.1f}" '
            f'stroke-width="{stroke:.1f}"/>'
            f'<text x="{b.x0:.1f}" y="{max(b.y0 - stroke, font):.1f}" font-size="{font:.0f}">'
            f"{escape(b.label)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
