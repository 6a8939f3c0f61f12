"""Per-joint SvH labels drawn like RA2's, without rendering anything.

The model: a patient's severity ``s`` (log scale, normal), a hand/foot balance, and for every joint
location (the same joint on the left and on the right) a shared effect, so damage clusters within a
patient and is symmetric. A joint is damaged with probability ``sigmoid(latent)``; a damaged joint
scores ``1 + Poisson`` with a mean that grows with the latent, clipped to the column's range.
Calibrated so that about 70% of scores are zero and ``Overall_Tol`` has median ~13, IQR ~5-38
(RA2 training set, reference ``ra2.md`` section 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..catalogue import COLUMNS, ID_COLUMN, JOINTS, TEMPLATE_ORDER, Joint, totals

#: Log-severity distribution of patients and the spread of per-location effects.
SEVERITY_MEAN, SEVERITY_SD = -1.35, 1.4
LOCATION_SD, SIDE_SD, KIND_SD = 0.3, 0.35, 0.45
#: Steepness of P(damaged) in the latent, and the size of a damaged joint's extra points.
STEEPNESS, EXTRA_SLOPE, EXTRA_OFFSET = 1.5, 0.6, 2.4

#: How prone a joint is to damage compared with an average joint (log-odds offsets).
_PRONENESS = {
    ("mcp", "2"): 0.5, ("mcp", "3"): 0.4, ("mcp", "5"): 0.1, ("mcp", "1"): -0.2, ("mcp", "ip"): -0.4,
    ("pip", "2"): 0.0, ("pip", "3"): 0.1, ("pip", "4"): -0.1, ("pip", "5"): -0.2,
    ("wrist", "ulna"): 0.5, ("wrist", "nav"): 0.3, ("wrist", "radcar"): 0.3, ("wrist", "capnlun"): 0.4,
    ("wrist", "mna"): 0.2, ("wrist", "lunate"): 0.0, ("wrist", "radius"): 0.1, ("wrist", "mc1"): -0.2,
    ("wrist", "mul"): 0.0, ("wrist", "cmc3"): -0.3, ("wrist", "cmc4"): -0.3, ("wrist", "cmc5"): -0.1,
    ("mtp", "5"): 0.6, ("mtp", "1"): 0.2, ("mtp", "ip"): -0.3,
}


def _location(j: Joint) -> str:
    """The joint's name without its side: LH/RH share one location, LF/RF another."""
    return j.column[1:]


_LOCATIONS = sorted({_location(j) for j in JOINTS})
_LOC_INDEX = np.array([_LOCATIONS.index(_location(j)) for j in JOINTS])
_PRONE = np.array([_PRONENESS.get((j.site, j.number), 0.0) for j in JOINTS])
_IS_FOOT = np.array([j.kind == "foot" for j in JOINTS])
_IS_LEFT = np.array([j.side == "L" for j in JOINTS])
_MAX = np.array([j.max_score for j in JOINTS])


def patient_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one patient's ``stream`` (0 labels, 1 images, 2 label noise, 3 header)."""
    return np.random.default_rng([seed, index, stream])


def sample_patient(rng: np.random.Generator) -> np.ndarray:
    """One patient's 86 scores (int, in ``catalogue.COLUMNS`` order)."""
    severity = SEVERITY_MEAN + SEVERITY_SD * rng.standard_normal()
    kind = KIND_SD * rng.standard_normal(2)
    location = LOCATION_SD * rng.standard_normal(len(_LOCATIONS))
    side = SIDE_SD * rng.standard_normal(2)
    latent = (severity + _PRONE + location[_LOC_INDEX] + np.where(_IS_FOOT, kind[1], kind[0])
              + np.where(_IS_LEFT, side[0], side[1]) + 0.3 * rng.standard_normal(len(JOINTS)))
    damaged = rng.random(len(JOINTS)) < 1.0 / (1.0 + np.exp(-STEEPNESS * latent))
    mean_extra = np.exp(EXTRA_SLOPE * latent - EXTRA_OFFSET) * _MAX / 5.0
    scores = 1 + rng.poisson(mean_extra)
    return np.where(damaged, np.minimum(scores, _MAX), 0).astype(np.int64)


def sample_labels(n: int, seed: int, *, id_prefix: str = "SYN", start_index: int = 1) -> pd.DataFrame:
    """Rendered-truth labels of ``n`` patients in RA2 layout (``catalogue.TEMPLATE_ORDER``).

    Patient ``k`` (``start_index`` + position) draws from its own generator, so a patient's labels
    do not depend on ``n`` or on how the cohort is split over processes.
    """
    rows = [label_row(f"{id_prefix}{i:04d}", sample_patient(patient_rng(seed, i, 0)))
            for i in range(start_index, start_index + n)]
    return pd.DataFrame(rows, columns=list(TEMPLATE_ORDER))


def label_row(patient_id: str, scores: np.ndarray) -> dict[str, object]:
    """A training.csv row: id, the three totals, and every column by name."""
    by_name = {c: int(v) for c, v in zip(COLUMNS, scores)}
    tot = {k: int(v) for k, v in totals(by_name).items()}
    return {ID_COLUMN: patient_id, **tot, **by_name}


def add_label_noise(scores: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Scores with a ``fraction`` of the damaged joints moved one point, as readers disagree.

    The step is +1 or -1 at random, turned inwards at the ends of a column's range.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise must be a fraction in [0, 1], got {fraction}")
    flip = (scores > 0) & (rng.random(len(scores)) < fraction)
    step = np.where(rng.random(len(scores)) < 0.5, -1, 1)
    step = np.where(scores + step > _MAX, -1, step)
    return np.where(flip, scores + step, scores)

