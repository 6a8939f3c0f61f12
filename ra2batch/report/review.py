"""Which joints and patients a reader should look at first: the report's review rule.

A joint is **flagged** when its flip disagreement (``joints.uncertainty``: how far the score of the
crop and of its left-right mirror image differ, in score points) is at least ``threshold``. Patients
are **ranked** by the number of flagged joints (most first), then their largest flip disagreement
(largest first), then their lowest detector confidence (lowest first: a doubtful box may have cut the
wrong joint); a patient with at least one flagged joint is flagged.

The threshold is the one the output was scored with (its run's ``JobConfig.review_threshold``,
recorded in the run manifest; 0.75 points unless the job set another), so the site flags exactly the
joints whose ``review`` field the job set; ``ra2batch report --review-threshold`` overrides it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from ra2batch.catalogue import ID_COLUMN
from ra2batch.job.config import REVIEW_THRESHOLD

if TYPE_CHECKING:  # pandas is not imported here, so the command line can read the default cheaply
    import pandas as pd

#: The rule in words, for the index page and the command's help.
RULE = ("a joint is flagged when the scores of its crop and of the crop's mirror image differ by at least "
        "{threshold:g} points; patients are ranked by flagged joints (most first), then their largest flip "
        "disagreement (largest first), then their lowest detector confidence (lowest first)")
KEYS = [ID_COLUMN, "visit"]


def run_threshold(run: Mapping[str, Any]) -> float:
    """The review threshold the run manifest ``run`` was scored with (``JobConfig.review_threshold``)."""
    try:
        return float(json.loads(run.get("config") or "{}").get("review_threshold", REVIEW_THRESHOLD))
    except (TypeError, ValueError):
        return REVIEW_THRESHOLD


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
