"""Schematic hand and foot: where each RA2 joint is drawn, shared by the report and the evaluate plots.

Coordinates are fractions of a limb panel, ``x`` left to right and ``y`` top to bottom, for the
dorsal view of a **left** limb (digit 1, thumb or big toe, on the right). Right limbs are the mirror
image (``x -> 1 - x``), so each panel looks like the limb it stands for. Positions are keyed by the
catalogue's ``(site, number)`` of a joint, so every column's place derives from
``ra2batch.catalogue`` and the same joint has the same place for erosion and narrowing.
"""

from __future__ import annotations

from ra2batch import catalogue

Point = tuple[float, float]

#: Panel height / width, per limb kind.
ASPECT = {"hand": 1.25, "foot": 1.1}

# Rays of the left hand, digit -> x; digit 1 (thumb) on the right.
_HAND_X = {"5": 0.14, "4": 0.32, "3": 0.50, "2": 0.68}
_HAND: dict[tuple[str, str], Point] = {
    **{("pip", d): (x, 0.26 + (0.04 if d == "5" else 0.0)) for d, x in _HAND_X.items()},
    **{("mcp", d): (x, 0.47 + (0.04 if d == "5" else 0.0)) for d, x in _HAND_X.items()},
    ("mcp", "ip"): (0.93, 0.38),  # thumb interphalangeal joint
    ("mcp", "1"): (0.86, 0.55),  # thumb metacarpophalangeal joint
    ("wrist", "mc1"): (0.76, 0.69),
    ("wrist", "mul"): (0.68, 0.76),
    ("wrist", "nav"): (0.60, 0.84),
    ("wrist", "lunate"): (0.44, 0.84),
    ("wrist", "radius"): (0.56, 0.95),
    ("wrist", "ulna"): (0.28, 0.94),
    ("wrist", "cmc3"): (0.50, 0.68),
    ("wrist", "cmc4"): (0.34, 0.69),
    ("wrist", "cmc5"): (0.19, 0.71),
    ("wrist", "mna"): (0.66, 0.81),
    ("wrist", "capnlun"): (0.50, 0.79),
    ("wrist", "radcar"): (0.48, 0.90),
}

# Toes of the left foot, toe -> (x, y of the MTP joint); the big toe on the right.
_FOOT_MTP = {"5": (0.14, 0.60), "4": (0.32, 0.53), "3": (0.50, 0.50), "2": (0.68, 0.49), "1": (0.86, 0.52)}
_FOOT: dict[tuple[str, str], Point] = {
    **{("mtp", t): p for t, p in _FOOT_MTP.items()},
    ("mtp", "ip"): (0.88, 0.27),  # big-toe interphalangeal joint
}


def _left(joint: catalogue.Joint) -> Point:
    table = _HAND if joint.kind == "hand" else _FOOT
    try:
        return table[(joint.site, joint.number)]
    except KeyError:
        raise KeyError(f"no schematic position for {joint.column} ({joint.site} {joint.number})") from None


def _mirror(limb: str, p: Point) -> Point:
    return (1.0 - p[0], p[1]) if limb[0] == "R" else p


def position(column: str) -> Point:
    """``(x, y)`` of an RA2 column in its limb's panel, both in ``[0, 1]``."""
    joint = catalogue.BY_COLUMN.get(column)
    if joint is None:
        raise KeyError(f"{column!r} is not an RA2 column")
    return _mirror(joint.limb, _left(joint))


def outline(limb: str) -> list[list[Point]]:
    """Polylines sketching the limb's rays (fingertip or toe tip to the carpus/midfoot), panel units."""
    if catalogue.limb_kind(limb) == "hand":
        rays = [[(x, 0.06 + (0.06 if d == "5" else 0.0)), _HAND[("pip", d)], _HAND[("mcp", d)], (x * 0.8 + 0.1, 0.72)]
                for d, x in _HAND_X.items()]
        rays.append([(0.97, 0.26), _HAND[("mcp", "ip")], _HAND[("mcp", "1")], (0.74, 0.72)])
        rays.append([(0.16, 0.76), (0.24, 0.98)])  # ulnar border of the wrist
        rays.append([(0.80, 0.74), (0.70, 0.98)])  # radial border of the wrist
    else:
        rays = [[(x, y - 0.28), (x, y), (0.5 + (x - 0.5) * 0.7, 0.95)]
                for t, (x, y) in _FOOT_MTP.items() if t != "1"]
        rays.append([(0.90, 0.10), _FOOT[("mtp", "ip")], _FOOT_MTP["1"], (0.78, 0.95)])
    return [[_mirror(limb, p) for p in ray] for ray in rays]
