"""The RA2 joint catalogue: the 86 Sharp/van der Heijde columns as data.

Every other module derives its column lists from here (``COLUMNS``, ``EROSION``, ``NARROWING``,
``joints_for``...). Columns are always matched by name; ``TEMPLATE_ORDER`` is only the order in
which the challenge's template file writes them.

Each joint records the detector crop class that holds it (DeepRA's crop-to-column mapping) and a
``slot``: its position among the joints of the same damage type in that crop, distal first. The
model plan uses ``(crop, damage, slot)`` to map a model output to a column, so a thumb, a big toe
and a finger can share one two-output model (slot 0 = distal joint, slot 1 = proximal joint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

Limb = Literal["LH", "RH", "LF", "RF"]
LIMBS: tuple[Limb, ...] = ("LH", "RH", "LF", "RF")
HANDS: tuple[Limb, ...] = ("LH", "RH")
FEET: tuple[Limb, ...] = ("LF", "RF")

ID_COLUMN = "Patient_ID"
TOTAL_COLUMNS = ("Overall_Tol", "Overall_erosion", "Overall_narrowing")

#: Detector classes per limb kind, in the detector's label order (label = index + 1).
HAND_CLASSES = ("fin_ip", "fin_1", "fin_2", "fin_3", "fin_4", "wrist")
FOOT_CLASSES = ("fin_ip", "fin_1", "fin_2", "fin_3", "fin_4")

#: Wrist columns in RA2 order; their slot is their index here.
WRIST_EROSION_SITES = ("mc1", "mul", "nav", "lunate", "radius", "ulna")
WRIST_NARROWING_SITES = ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")


@dataclass(frozen=True)
class Joint:
    """One RA2 column: a joint on one limb scored for one damage type."""

    column: str  # e.g. "LH_mcp_E__2"
    limb: Limb  # "LH" | "RH" | "LF" | "RF"
    site: str  # "mcp" | "pip" | "wrist" | "mtp"
    number: str  # "ip", "1".."5", or a wrist site ("mc1", "radcar", ...)
    damage: Literal["E", "J"]  # E = erosion, J = joint-space narrowing
    max_score: int  # inclusive upper bound; the lower bound is 0
    crop: str  # detector class whose box holds the joint
    slot: int  # output slot within (crop, damage), distal joint first

    @property
    def side(self) -> str:
        return self.limb[0]

    @property
    def kind(self) -> Literal["hand", "foot"]:
        return "hand" if self.limb[1] == "H" else "foot"


def limb_kind(limb: str) -> Literal["hand", "foot"]:
    """``"hand"`` for LH/RH, ``"foot"`` for LF/RF."""
    if limb not in LIMBS:
        raise ValueError(f"unknown limb {limb!r}; expected one of {', '.join(LIMBS)}")
    return "hand" if limb[1] == "H" else "foot"


def detector_classes(kind: str) -> tuple[str, ...]:
    return HAND_CLASSES if kind == "hand" else FOOT_CLASSES


def _hand(limb: Limb, damage: str) -> list[Joint]:
    out: list[Joint] = []
    top = 5 if damage == "E" else 4
    if damage == "E":
        out.append(Joint(f"{limb}_mcp_E__ip", limb, "mcp", "ip", "E", top, "fin_ip", 0))
    for d in range(2, 6):
        out.append(Joint(f"{limb}_pip_{damage}__{d}", limb, "pip", str(d), damage, top, f"fin_{d - 1}", 0))
    for d in range(1, 6):
        crop = "fin_ip" if d == 1 else f"fin_{d - 1}"
        slot = 0 if (d == 1 and damage == "J") else 1
        out.append(Joint(f"{limb}_mcp_{damage}__{d}", limb, "mcp", str(d), damage, top, crop, slot))
    sites = WRIST_EROSION_SITES if damage == "E" else WRIST_NARROWING_SITES
    for i, s in enumerate(sites):
        out.append(Joint(f"{limb}_wrist_{damage}__{s}", limb, "wrist", s, damage, top, "wrist", i))
    return out


def _foot(limb: Limb, damage: str) -> list[Joint]:
    top = 10 if damage == "E" else 4
    out = [Joint(f"{limb}_mtp_{damage}__ip", limb, "mtp", "ip", damage, top, "fin_ip", 0)]
    for t in range(1, 6):
        crop = "fin_ip" if t == 1 else f"fin_{t - 1}"
        out.append(Joint(f"{limb}_mtp_{damage}__{t}", limb, "mtp", str(t), damage, top, crop, 1 if t == 1 else 0))
    return out


def _build() -> tuple[Joint, ...]:
    joints: list[Joint] = []
    for damage in ("E", "J"):
        for limb in LIMBS:
            joints += _hand(limb, damage) if limb in HANDS else _foot(limb, damage)
    return tuple(joints)


#: All 86 joints, grouped by damage then limb (erosion first).
JOINTS: tuple[Joint, ...] = _build()
BY_COLUMN: Mapping[str, Joint] = {j.column: j for j in JOINTS}
COLUMNS: tuple[str, ...] = tuple(j.column for j in JOINTS)
EROSION: tuple[str, ...] = tuple(j.column for j in JOINTS if j.damage == "E")
NARROWING: tuple[str, ...] = tuple(j.column for j in JOINTS if j.damage == "J")


def _template_order() -> tuple[str, ...]:
    """The challenge template's column order (ra2.md section 1), feet narrowing shuffled as published."""
    def cols(limb: str, damage: str) -> list[str]:
        return [j.column for j in JOINTS if j.limb == limb and j.damage == damage]

    feet_j = ["RF_mtp_J__ip"] + [f"LF_mtp_J__{t}" for t in range(1, 6)]
    feet_j += ["LF_mtp_J__ip"] + [f"RF_mtp_J__{t}" for t in range(1, 6)]
    order = cols("LH", "E") + cols("RH", "E") + cols("LF", "E") + cols("RF", "E")
    order += cols("LH", "J") + cols("RH", "J") + feet_j
    return (ID_COLUMN, *TOTAL_COLUMNS, *order)


#: Header of the challenge template / ``training.csv``: Patient_ID, the totals, then 86 columns.
TEMPLATE_ORDER: tuple[str, ...] = _template_order()


def joints_for(limb: str | None = None, crop: str | None = None, damage: str | None = None) -> list[Joint]:
    """Joints filtered by limb, detector crop class and damage type (``None`` = any)."""
    return [
        j for j in JOINTS
        if (limb is None or j.limb == limb) and (crop is None or j.crop == crop)
        and (damage is None or j.damage == damage)
    ]


#: Clinical names of the wrist sites (``Joint.number`` of a wrist joint), as the Sharp/van der Heijde method
#: names its areas: erosion at six bones, narrowing at six joints.
_WRIST_SITE_NAMES = {
    "mc1": "first metacarpal base", "mul": "trapezium–trapezoid", "nav": "scaphoid", "lunate": "lunate",
    "radius": "distal radius", "ulna": "distal ulna", "cmc3": "CMC 3", "cmc4": "CMC 4", "cmc5": "CMC 5",
    "mna": "scaphoid–trapezium", "capnlun": "capitate–scaphoid–lunate", "radcar": "radiocarpal",
}


def clinical_name(column: str) -> str:
    """How a rheumatologist names an RA2 column: side, joint, damage type, e.g. ``"right MCP 3, erosion"``,
    ``"left thumb IP, erosion"``, ``"left big toe IP, narrowing"``, ``"left wrist, capitate–scaphoid–lunate,
    narrowing"``; derived from the column's :class:`Joint` fields."""
    joint = BY_COLUMN.get(column)
    if joint is None:
        raise KeyError(f"{column!r} is not an RA2 column")
    if joint.site == "wrist":
        where = f"wrist, {_WRIST_SITE_NAMES[joint.number]}"
    elif joint.number == "ip":
        where = f"{'thumb' if joint.kind == 'hand' else 'big toe'} IP"
    else:
        where = f"{joint.site.upper()} {joint.number}"
    side = "left" if joint.side == "L" else "right"
    return f"{side} {where}, {'erosion' if joint.damage == 'E' else 'narrowing'}"


def column_for(limb: str, crop: str, damage: str, slot: int) -> str:
    """The RA2 column that output ``slot`` of a ``(crop, damage)`` model means on ``limb``."""
    for j in JOINTS:
        if j.limb == limb and j.crop == crop and j.damage == damage and j.slot == slot:
            return j.column
    raise KeyError(f"no RA2 column for limb={limb} crop={crop} damage={damage} slot={slot}")


def totals(scores: Mapping[str, float]) -> dict[str, float]:
    """``Overall_erosion``, ``Overall_narrowing`` and ``Overall_Tol`` from the 86 joint scores."""
    ero = float(sum(scores[c] for c in EROSION))
    nar = float(sum(scores[c] for c in NARROWING))
    return {"Overall_Tol": ero + nar, "Overall_erosion": ero, "Overall_narrowing": nar}


def validate_row(row: Mapping[str, object], *, check_totals: bool = True) -> list[str]:
    """Problems with one patient row (empty list when it is valid).

    Checks that every column is present, numeric, finite and within its range, and (optionally)
    that the three totals equal the sums of their joints.
    """
    problems: list[str] = []
    for c in COLUMNS:
        if c not in row:
            problems.append(f"missing column {c}")
            continue
        v = row[c]
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problems.append(f"{c}: non-numeric value {v!r}")
            continue
        if f != f or f in (float("inf"), float("-inf")):
            problems.append(f"{c}: value {v!r} is not finite")
        elif not 0 <= f <= BY_COLUMN[c].max_score:
            problems.append(f"{c}: {f:g} outside 0..{BY_COLUMN[c].max_score}")
    if check_totals and not problems:
        for name, want in totals({c: float(row[c]) for c in COLUMNS}).items():  # type: ignore[arg-type]
            if name in row and abs(float(row[name]) - want) > 1e-6:  # type: ignore[arg-type]
                problems.append(f"{name} is {row[name]} but its joints sum to {want:g}")
    return problems


def max_total() -> int:
    """Largest possible Overall_Tol (448)."""
    return sum(j.max_score for j in JOINTS)


def check_columns(names: Iterable[str]) -> list[str]:
    """RA2 columns missing from ``names``."""
    have = set(names)
    return [c for c in COLUMNS if c not in have]
