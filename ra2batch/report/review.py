"""Which joints and patients a reader should look at first: the report's review rule.

A joint is **flagged** when its flip disagreement (``joints.uncertainty``: how far the score of the
crop and of its left-right mirror image differ, in score points) is at least ``threshold``. Patients
are **ranked** by the number of flagged joints (most first), then their largest flip disagreement
(largest first), then their lowest detector confidence (lowest first: a doubtful box may have cut the
wrong joint); a patient with at least one flagged joint is flagged.

The default threshold, 0.75 points (three quarters of a grade), was chosen on the demo output
(8 phantom patients, 688 joints): its joints' flip disagreement has median 0.02, 90th percentile
0.24, 99th percentile 0.72 and maximum 0.95, and every patient has a joint above 0.5 (the scoring job's
own ``review`` threshold, which therefore flags everyone). At 0.75, 6 joints of 4 patients are flagged;
a better model disagrees less with itself and flags fewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ra2batch.catalogue import ID_COLUMN

if TYPE_CHECKING:  # pandas is not imported here, so the command line can read the default cheaply
    import pandas as pd

#: Flip disagreement (score points) at or above which a joint is flagged for review.
REVIEW_THRESHOLD = 0.75
#: The rule in words, for the index page and the command's help.
RULE = ("a joint is flagged when the scores of its crop and of the crop's mirror image differ by at least "
        "{threshold:g} points; patients are ranked by flagged joints (most first), then their largest flip "
        "disagreement (largest first), then their lowest detector confidence (lowest first)")
KEYS = [ID_COLUMN, "visit"]


def flagged(joints: pd.DataFrame, threshold: float = REVIEW_THRESHOLD) -> pd.Series:
    """Per joint row: is its flip disagreement at least ``threshold``? (Not measured: not flagged.)"""
    return joints["uncertainty"].ge(threshold).fillna(False).astype(bool)


def patient_review(patients: pd.DataFrame, joints: pd.DataFrame, threshold: float = REVIEW_THRESHOLD) -> pd.DataFrame:
    """One row per ``patients`` row (same order): ``flagged`` joints, ``max_uncertainty``, ``min_detector``
    (NaN where unknown) and ``rank`` (1 = review first)."""
    per = (joints.assign(flagged=flagged(joints, threshold))
           .groupby(KEYS, sort=False)
           .agg(flagged=("flagged", "sum"), max_uncertainty=("uncertainty", "max"),
                min_detector=("detector_score", "min")))
    out = patients[KEYS].join(per, on=KEYS)
    out["flagged"] = out["flagged"].fillna(0).astype(int)
    order = out.sort_values(["flagged", "max_uncertainty", "min_detector", *KEYS],
                            ascending=[False, False, True, True, True], na_position="last", kind="stable")
    out.loc[order.index, "rank"] = range(1, len(out) + 1)
    out["rank"] = out["rank"].astype(int)
    return out
