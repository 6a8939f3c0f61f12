"""The RA2-DREAM challenge scorer (SC1, SC2, SC3) and the organisers' random baseline.

Both tables are matched by ``Patient_ID`` and column name, never by position. Lower is better.
With ``L(x) = log2(x + 1)`` and patient weights ``w`` from the gold ``Overall_Tol``:

- SC1 = sum_p w_p |L(gold_Tol_p) - L(pred_Tol_p)| / sum_p w_p
- SC2 = sum_p w_p RMSE_p(L(gold_J) - L(pred_J)) / sum_p w_p over the 42 narrowing columns
- SC3 = the same over the 44 erosion columns

Negative predictions are set to 0 first. The predicted ``Overall_Tol`` is the one in the predictions
file when present (as the challenge scored it), else the sum of the predicted joints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .catalogue import COLUMNS, EROSION, ID_COLUMN, NARROWING

#: (lowest gold Overall_Tol of the bracket, weight); t = 148 is still in the 56..148 bracket.
WEIGHT_BRACKETS: tuple[tuple[int, float], ...] = (
    (0, 1.0), (1, 2.0), (2, 2.143547), (4, 3.863745), (8, 8.0), (21, 16.0), (56, 32.0), (149, 64.0),
)


class ScoringError(ValueError):
    """A predictions or truth table that cannot be scored; the message names the problem."""


def patient_weight(total: float) -> float:
    """Weight of a patient whose gold ``Overall_Tol`` is ``total``."""
    w = WEIGHT_BRACKETS[0][1]
    for low, weight in WEIGHT_BRACKETS:
        if total >= low:
            w = weight
    return w


def _log(x: np.ndarray) -> np.ndarray:
    return np.log2(np.clip(x, 0, None) + 1.0)


@dataclass(frozen=True)
class Scores:
    sc1: float
    sc2: float
    sc3: float
    n_patients: int

    def as_dict(self) -> dict[str, float]:
        return {"sc1": self.sc1, "sc2": self.sc2, "sc3": self.sc3}


def check_table(df: pd.DataFrame, what: str, columns=COLUMNS) -> None:
    """Raise :class:`ScoringError` on a missing column, bad value or duplicate patient."""
    if ID_COLUMN not in df.columns:
        raise ScoringError(f"{what}: no {ID_COLUMN} column")
    dup = df[ID_COLUMN][df[ID_COLUMN].duplicated()]
    if len(dup):
        raise ScoringError(f"{what}: duplicate {ID_COLUMN} {dup.iloc[0]!r}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoringError(f"{what}: missing column {missing[0]}{more}")
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ScoringError(
                f"{what}: column {c} of patient {df[ID_COLUMN].iloc[i]!r} has a non-numeric or missing "
                f"value {df[c].iloc[i]!r}"
            )


def align(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Both tables indexed by Patient_ID in the truth's order; returns (pred, truth, extra ids).

    Raises :class:`ScoringError` when a truth patient has no prediction.
    """
    check_table(truth, "truth")
    check_table(pred, "predictions")
    p = pred.assign(**{ID_COLUMN: pred[ID_COLUMN].astype(str)}).set_index(ID_COLUMN)
    t = truth.assign(**{ID_COLUMN: truth[ID_COLUMN].astype(str)}).set_index(ID_COLUMN)
    missing = [i for i in t.index if i not in p.index]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoringError(f"predictions: no row for patient {missing[0]!r}{more}")
    extra = [i for i in p.index if i not in t.index]
    return p.loc[t.index], t, extra


def score(pred: pd.DataFrame, truth: pd.DataFrame) -> Scores:
    """SC1, SC2, SC3 of ``pred`` against ``truth`` (both RA2-layout tables)."""
    p, t, _ = align(pred, truth)
    gold_joints = t[list(COLUMNS)].astype(float)
    pred_joints = p[list(COLUMNS)].apply(pd.to_numeric).astype(float).clip(lower=0)
    gold_tol = gold_joints.sum(axis=1).to_numpy()
    if "Overall_Tol" in p.columns and pd.to_numeric(p["Overall_Tol"], errors="coerce").notna().all():
        pred_tol = pd.to_numeric(p["Overall_Tol"]).clip(lower=0).to_numpy(dtype=float)
    else:
        pred_tol = pred_joints.sum(axis=1).to_numpy()
    w = np.array([patient_weight(x) for x in gold_tol])

    sc1 = float(np.sum(w * np.abs(_log(gold_tol) - _log(pred_tol))) / w.sum())

    def joint_rmse(cols: tuple[str, ...]) -> float:
        d = _log(gold_joints[list(cols)].to_numpy()) - _log(pred_joints[list(cols)].to_numpy())
        rmse = np.sqrt(np.mean(d**2, axis=1))
        return float(np.sum(w * rmse) / w.sum())

    return Scores(sc1, joint_rmse(NARROWING), joint_rmse(EROSION), len(t))


def random_baseline(train: pd.DataFrame, patients: list[str] | pd.Index, seed: int = 0) -> pd.DataFrame:
    """The organisers' baseline: each joint drawn from that column's training labels, seeded.

    Returns an RA2-layout table (Patient_ID, totals, 86 columns) for ``patients``.
    """
    check_table(train, "training labels")
    rng = np.random.default_rng(seed)
    n = len(patients)
    data = {c: rng.choice(train[c].astype(float).to_numpy(), size=n, replace=True) for c in COLUMNS}
    df = pd.DataFrame(data)
    df.insert(0, "Overall_narrowing", df[list(NARROWING)].sum(axis=1))
    df.insert(0, "Overall_erosion", df[list(EROSION)].sum(axis=1))
    df.insert(0, "Overall_Tol", df["Overall_erosion"] + df["Overall_narrowing"])
    df.insert(0, ID_COLUMN, [str(p) for p in patients])
    return df
