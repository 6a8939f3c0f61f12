"""What the pages call limbs and detector crops: clinical words, never internal class or group names.

Joints are named by ``catalogue.clinical_name``. A detector crop class (``fin_ip``, ``fin_1``..``fin_4``,
``wrist``) holds one ray: ``fin_ip`` is digit 1 (thumb or big toe) and ``fin_k`` digit ``k + 1``.
"""

from __future__ import annotations

from ra2batch import catalogue

_FINGERS = {1: "thumb", 2: "index finger", 3: "middle finger", 4: "ring finger", 5: "little finger"}


def limb_name(limb: str) -> str:
    """``"LH"`` -> ``"left hand"``."""
    return f"{'left' if limb[0] == 'L' else 'right'} {catalogue.limb_kind(limb)}"


def digit(crop_class: str) -> int | None:
    """The ray a crop class holds, 1 (thumb, big toe) to 5; ``None`` for the wrist."""
    if crop_class == "wrist":
        return None
    if crop_class == "fin_ip":
        return 1
    return int(crop_class.removeprefix("fin_")) + 1


def crop_name(limb: str, crop_class: str) -> str:
    """What a crop shows, e.g. ``"right thumb"``, ``"left ring finger"``, ``"left toe 2"``, ``"right wrist"``."""
    side = "left" if limb[0] == "L" else "right"
    d = digit(crop_class)
    if d is None:
        return f"{side} wrist"
    if catalogue.limb_kind(limb) == "hand":
        return f"{side} {_FINGERS[d]}"
    return f"{side} {'big toe' if d == 1 else f'toe {d}'}"


def box_label(crop_class: str) -> str:
    """The short label of a detector box on a radiograph: its digit (1 = thumb or big toe), or ``wrist``."""
    d = digit(crop_class)
    return "wrist" if d is None else str(d)
