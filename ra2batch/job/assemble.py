"""Per-patient assembly: from per-image and per-joint rows to the patients table and predictions.csv.

Pandas rules over one bucket's rows (``job.reduce`` runs them on the cluster, a bucket at a time): they
see file metadata and about 86 joint rows per patient, never pixels. A joint that was not scored
stays NaN in the patients table (never 0, never another joint's value) and is explained by the
patient's ``qc_flags``; only predictions.csv, which the challenge format requires to be complete,
fills it, and each fill is recorded as ``filled:COLUMN``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ra2batch import catalogue
from ra2batch.catalogue import COLUMNS, EROSION, ID_COLUMN, LIMBS, TEMPLATE_ORDER
from ra2batch.csvtext import neutralise

KEY = [ID_COLUMN, "visit"]
#: An images row's status when the file decoded but the detector found no hand or foot in it.
REJECTED = "rejected"
#: predictions.csv's ``qc`` for a patient none of whose joints was scored.
NOTHING_SCORED = "nothing_scored"
_LIMB_KEY = [ID_COLUMN, "_visit", "limb"]


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``_visit``: the visit, or "" when there is none (pandas groups NaN keys poorly)."""
    return df.assign(_visit=df["visit"].fillna("").astype(str))


def _visit_label(pid: str, visit: str) -> str:
    return f"{pid} visit {visit}" if visit else pid


def choose_images(images: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Which file is used for each (patient, visit, limb), and one message per duplicated limb.

    The rule: the lexicographically first path among the files that decoded and showed the limb
    (status ``ok``), so a corrupt copy never hides a good one. Files in error, rejected (no hand or
    foot found) or without a patient and limb are never chosen.
    """
    known = _keyed(images[images[ID_COLUMN].notna() & images["limb"].notna()])
    ok = known[known["status"] == "ok"].sort_values("path")
    chosen = pd.Series(images.index.isin(ok.drop_duplicates(_LIMB_KEY).index), index=images.index)
    messages: list[str] = []
    repeated = known[known.duplicated(_LIMB_KEY, keep=False)]
    for (pid, visit, limb), files in repeated.groupby(_LIMB_KEY, sort=True):
        used = files.loc[chosen[files.index], "path"]
        others = sorted(p for p in files["path"] if p not in set(used))
        rule = f"used {used.iloc[0]} (the first readable path in sort order)" if len(used) else "none is readable"
        messages.append(f"{_visit_label(pid, visit)} has {len(files)} {limb} files: {rule}; "
                        f"not used: {', '.join(others)}")
    return chosen, messages


def _limb_flags(limb: str, statuses: list[str], chosen: bool, found: set[str], mismatched: bool) -> list[str]:
    """QC flags of one limb of a patient visit whose files have ``statuses``; ``mismatched``: one of
    them is named this limb while its DICOM header names another."""
    n_files = len(statuses)
    mismatch = [f"limb_header_mismatch:{limb}"] if mismatched else []
    if not chosen:
        return ([f"missing_limb:{limb}"] + ([f"image_error:{limb}"] if "error" in statuses else [])
                + ([f"no_limb_found:{limb}"] if REJECTED in statuses else []) + mismatch)
    flags = [f"duplicate_image:{limb}"] if n_files > 1 else []
    kind = catalogue.limb_kind(limb)
    return flags + [f"not_detected:{limb}:{c}" for c in catalogue.detector_classes(kind) if c not in found] + mismatch


_IS_EROSION = np.isin(COLUMNS, EROSION)


def _totals(values: np.ndarray) -> dict[str, float]:
    """Sums of the joints present (NaN when none is), ``values`` in ``COLUMNS`` order."""
    def total(v: np.ndarray) -> float:
        return float(np.nansum(v)) if np.isfinite(v).any() else np.nan

    return {"Overall_Tol": total(values), "Overall_erosion": total(values[_IS_EROSION]),
            "Overall_narrowing": total(values[~_IS_EROSION])}


def assemble_patients(images: pd.DataFrame, joints: pd.DataFrame) -> pd.DataFrame:
    """One row per (Patient_ID, visit) named by any file; ``images`` must carry ``chosen``.

    Only joints of chosen files count. Totals are sums of the joints present (NaN when none is) and
    are flagged ``partial_totals`` when any of the 86 joints is missing. Joints whose optional
    ``review`` column is true (test-time augmentation disagreed) are flagged ``review:COLUMN``. A
    file whose DICOM header names another limb than its name (``header_limb``) flags
    ``limb_header_mismatch:LIMB`` (the name's limb, which it is scored as); a file whose limb neither
    its name nor its header gives, ``limb_unknown``.
    """
    files = _keyed(images[images[ID_COLUMN].notna()])
    used = _keyed(joints[joints["path"].isin(files.loc[files["chosen"], "path"])])
    scores = used.pivot_table(index=[ID_COLUMN, "_visit"], columns="joint", values="score", aggfunc="first")
    scores = dict(zip(scores.index, scores.reindex(columns=list(COLUMNS)).to_numpy(float)))
    statuses = files.groupby(_LIMB_KEY)["status"].agg(list).to_dict()
    header = files["header_limb"]
    mismatched = set(files.loc[header.notna() & (header != files["limb"]), _LIMB_KEY].itertuples(index=False,
                                                                                                 name=None))
    unplaced = set(files.loc[files["limb"].isna(), [ID_COLUMN, "_visit"]].itertuples(index=False, name=None))
    chosen = set(files.loc[files["chosen"], _LIMB_KEY].itertuples(index=False, name=None))
    found: dict[tuple[str, str, str], set[str]] = {}
    for *limb_key, crop_class in used[[*_LIMB_KEY, "crop_class"]].drop_duplicates().itertuples(index=False):
        found.setdefault(tuple(limb_key), set()).add(crop_class)
    review: dict[tuple[str, str], list[str]] = {}
    if "review" in used.columns:
        flagged = used[used["review"].fillna(False).astype(bool)].sort_values("joint")
        for pid, visit, column in flagged[[ID_COLUMN, "_visit", "joint"]].itertuples(index=False):
            review.setdefault((pid, visit), []).append(f"review:{column}")
    empty = np.full(len(COLUMNS), np.nan)
    rows = []
    for (pid, visit), n_images in files.groupby([ID_COLUMN, "_visit"], sort=True).size().items():
        values = scores.get((pid, visit), empty)
        flags = [f for limb in LIMBS for f in _limb_flags(limb, statuses.get((pid, visit, limb), []),
                                                           (pid, visit, limb) in chosen,
                                                           found.get((pid, visit, limb), set()),
                                                           (pid, visit, limb) in mismatched)]
        if (pid, visit) in unplaced:
            flags.append("limb_unknown")
        if np.isnan(values).any():
            flags.append("partial_totals")
        flags += review.get((pid, visit), [])
        present = sorted(limb for limb in LIMBS if (pid, visit, limb) in chosen)
        rows.append({ID_COLUMN: pid, "visit": visit or None, **_totals(values), **dict(zip(COLUMNS, values)),
                     "n_images": int(n_images), "limbs": ",".join(present), "qc_flags": flags})
    return pd.DataFrame(rows, columns=[*KEY, *catalogue.TOTAL_COLUMNS, *COLUMNS, "n_images", "limbs", "qc_flags"])


_MIRROR = np.array([COLUMNS.index(("R" if c[0] == "L" else "L") + c[1:]) for c in COLUMNS])


def _filled(scored: np.ndarray, medians: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, gaps)`` of the ``[patients, 86]`` scores (``COLUMNS`` order, NaN: not scored): every
    missing joint filled from the same joint on the other side when that was scored, else from the
    training median; ``gaps`` marks the filled ones. The one fill rule of predictions.csv."""
    missing = [c for c in COLUMNS if c not in medians]
    if missing:
        raise ValueError(f"no label median for {len(missing)} column(s) (first: {missing[0]})")
    mirror = scored[:, _MIRROR]
    median = np.array([medians[c] for c in COLUMNS], dtype=float)
    gaps = np.isnan(scored)
    return np.where(gaps, np.where(np.isnan(mirror), median, mirror), scored), gaps


def with_fill_flags(patients: pd.DataFrame, medians: Mapping[str, float]) -> pd.DataFrame:
    """``patients`` with a ``filled:COLUMN`` QC flag for every value predictions.csv fills."""
    _, gaps = _filled(patients[list(COLUMNS)].to_numpy(float), medians)
    names = np.array([f"filled:{c}" for c in COLUMNS], dtype=object)
    return patients.assign(qc_flags=[list(f) + names[g].tolist() for f, g in zip(patients["qc_flags"], gaps)])


def prediction_columns(ids: np.ndarray, visits: np.ndarray | None, scored: np.ndarray,
                       medians: Mapping[str, float]) -> dict[str, np.ndarray]:
    """predictions.csv's columns, in the RA2 template order, for patients ``ids`` with ``[patients, 86]``
    ``scored`` values: no value missing (the fill rule: :func:`_filled`). With ``visits`` (any patient
    of the output has one) a ``visit`` column follows ``Patient_ID``: one row per patient visit. A
    last column, ``qc``, says what was filled: ``""`` (nothing), ``filled:N`` (N of the 86 joints),
    or ``nothing_scored`` (no radiograph of the patient gave a joint score: every value is a training
    median). Text a spreadsheet would run as a formula is quoted (``csvtext.neutralise``)."""
    values, gaps = _filled(scored, medians)
    columns = {c: values[:, i] for i, c in enumerate(COLUMNS)}
    columns.update(Overall_erosion=values[:, _IS_EROSION].sum(axis=1),
                   Overall_narrowing=values[:, ~_IS_EROSION].sum(axis=1), Overall_Tol=values.sum(axis=1))
    order = [ID_COLUMN, *(["visit"] if visits is not None else []), *TEMPLATE_ORDER[1:], "qc"]
    filled = gaps.sum(axis=1)
    text = {ID_COLUMN: neutralise(ids), "visit": None if visits is None else neutralise(visits),
            "qc": [NOTHING_SCORED if n == len(COLUMNS) else f"filled:{n}" if n else "" for n in filled]}
    return {c: text[c] if c in text else columns[c] for c in order}


def predictions(patients: pd.DataFrame, medians: Mapping[str, float], visits: bool) -> pd.DataFrame:
    """:func:`prediction_columns` of a patients table, as a DataFrame."""
    return pd.DataFrame(prediction_columns(patients[ID_COLUMN].to_numpy(),
                                           patients["visit"].to_numpy() if visits else None,
                                           patients[list(COLUMNS)].to_numpy(float), medians))
