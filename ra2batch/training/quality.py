"""The quality check of a trained bundle: its held-out figures against floors, so that a bad bundle is
never shipped silently.

Training records the verdict in bundle.json as ``metrics.quality`` (``ok``, ``problems``, ``floors``);
``ra2batch train`` then names each figure that missed its floor and exits ``FLAGGED``, and the scoring job
warns when it loads a flagged bundle (``Manifest.quality_warning``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

#: Held-out detector mAP at IoU 0.6 below which a detector is flagged. The joint models score the crops
#: cut from the detectors' boxes, so below 0.5 a detector misses or misplaces about half of its joints
#: and the scores of those joints are the training medians or crops of the wrong place. Detectors that
#: have learnt are far above it (the demo bundle: 1.000 for hands, 0.980 for feet), ones that have not
#: far below (a 5-minute demo run on 24 patients: 0.000).
MIN_MAP = 0.5

#: SC1-3 ratio (the model's error over the seeded random baseline's) at or above which a bundle is
#: flagged: it scores no better than guessing from the training labels (the demo bundle: 0.22-0.50).
MAX_RATIO = 1.0

MAPS = ("hand_mAP", "foot_mAP")
RATIOS = ("ratio_sc1", "ratio_sc2", "ratio_sc3")


def problems(held_out: Mapping[str, Any]) -> list[str]:
    """One line per held-out figure that misses its floor or could not be measured; figures the
    evaluation did not report (a detector kind the bundle lacks) are not checked."""
    found = []
    for key in (k for k in MAPS if k in held_out):
        value = held_out[key]
        if math.isnan(value) or value < MIN_MAP:
            found.append(f"{key} {value:.3f} is below the floor {MIN_MAP} (held-out detector mAP at IoU 0.6)")
    for key in (k for k in RATIOS if k in held_out):
        value = held_out[key]
        if math.isnan(value) or value >= MAX_RATIO:
            found.append(f"{key} {value:.3f} is not below {MAX_RATIO} (held-out {key[-3:].upper()} no better "
                         "than the random baseline)")
    return found


def check(held_out: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.quality`` of a bundle with the held-out figures ``held_out`` (``evaluation.evaluate_bundle``)."""
    found = problems(held_out)
    return {"ok": not found, "problems": found, "floors": {"min_mAP": MIN_MAP, "max_ratio": MAX_RATIO}}
