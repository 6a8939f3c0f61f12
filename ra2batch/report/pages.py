"""What every page of the review site shares: the HTML shell, its style sheet and value formatting."""

from __future__ import annotations

import hashlib
import json
import math
import re
from html import escape
from typing import Any

import pandas as pd

from ra2batch.catalogue import ID_COLUMN


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def fmt(v: Any, digits: int = 1) -> str:
    """A number to ``digits`` decimals, or an em dash when there is none."""
    return "—" if missing(v) else f"{float(v):.{digits}f}"


def text(v: Any) -> str:
    return "—" if missing(v) or v == "" else escape(str(v))


def shown_flags(flags: list[str]) -> list[str]:
    """QC flags as the pages show them: the job's ``review:`` flags are left out, as the report applies
    its own review rule (``report.review``) to the stored flip disagreement."""
    return [f for f in flags if not f.startswith("review:")]


def flag_kinds(flags: list[str]) -> dict[str, list[str]]:
    """Flags by kind (the part before ``:``), in first-seen order."""
    kinds: dict[str, list[str]] = {}
    for f in flags:
        kinds.setdefault(f.split(":")[0], []).append(f)
    return kinds


def flag_chips(flags: list[str]) -> str:
    """QC flags as chips, one per flag."""
    if not flags:
        return '<span class="ok">none</span>'
    return " ".join(f'<span class="chip {escape(f.split(":")[0])}">{escape(f)}</span>' for f in flags)


def page_key(patient_id: str, visit: str) -> str:
    """A file-name-safe, readable key; a short hash is added when characters had to be replaced."""
    raw = patient_id + (f"_{visit}" if visit else "")
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    return safe if safe == raw else f"{safe}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def page_keys(patients: pd.DataFrame) -> list[str]:
    """The page key of every ``patients`` row (same order), distinct even where two keys would collide."""
    keys, used = [], set()
    for pid, visit in zip(patients[ID_COLUMN].astype(str), patients["visit"].astype(str)):
        key = page_key(pid, visit)
        if key in used:
            key = f"{key}-{hashlib.sha256(json.dumps([pid, visit]).encode()).hexdigest()[:8]}"
        used.add(key)
        keys.append(key)
    return keys


def page(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>\n")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.index th{cursor:pointer;background:#f4f4f4;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.review{background:#fff1e6}tr.review td:first-child{border-left:4px solid #d9480f}
.controls{display:flex;flex-wrap:wrap;gap:1em;align-items:center;padding:.5em 0}
.controls{position:sticky;top:0;z-index:1;background:#fff}
.controls input[type=search]{font:inherit;padding:.2em .4em;width:16em}
.pager button{font:inherit;margin:0 .2em}
.rule{max-width:60em}
.chip{display:inline-block;padding:0 .45em;margin:1px;border-radius:.7em;background:#e9ecef;font-size:.85em}
.chip.review,.chip.missing_limb,.chip.not_detected{background:#ffd8a8}.ok{color:#2b8a3e}
.note{color:#555;font-size:.9em}
.limbs{display:flex;flex-wrap:wrap;gap:1em}
svg.limb{border:1px solid #eee;border-radius:4px;background:#fcfcfc}
svg.limb .bone{fill:none;stroke:#d0d0d0;stroke-width:6;stroke-linecap:round;stroke-linejoin:round}
svg.limb text.panel-title{font-size:12px;font-weight:bold;text-anchor:start}
svg.limb circle{stroke:#555;stroke-width:1}svg.limb text{font-size:11px;text-anchor:middle;pointer-events:none}
svg.limb .missing circle{fill:#fff;stroke:#999;stroke-dasharray:2 2}
svg.limb .review circle{stroke:#c92a2a;stroke-width:3}
svg.legend text{font-size:10px}
.radiographs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
svg.radiograph{background:#000;display:block}
svg.radiograph rect{fill:none;stroke:#4dabf7}
svg.radiograph text{fill:#a5d8ff;stroke:#000;paint-order:stroke;font-weight:bold;text-anchor:middle}
figure{margin:0}figcaption{font-size:.85em;color:#444}figcaption .path{word-break:break-all}
.missing{background:#f8f9fa;color:#868e96;padding:1em;min-height:6em}
.crops{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.crop{width:min-content}.crop .models{display:flex;gap:.4em}.crop .model span{font-size:.8em;color:#555}
.crop img{image-rendering:pixelated;display:block}
table.joints{font-size:.85em;margin-top:.3em}table.joints td,table.joints th{padding:.1em .4em .1em 0}
.review-mark{color:#c92a2a;font-weight:bold}
"""
