"""Reading a scoring job's output (``images/``, ``joints/``, ``patients/``; docs/design.md) for review.

Outputs written before test-time augmentation have no ``uncertainty``/``review`` joint columns; they
are added here (NaN and False) so the rest of the report needs no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ra2batch.catalogue import ID_COLUMN
from ra2batch.storage import resolve

TABLES = ("images", "joints", "patients")

#: Columns the report needs from each table (the contract has more).
REQUIRED = {
    "images": (ID_COLUMN, "visit", "limb", "path", "status", "error", "width", "height", "chosen"),
    "joints": (ID_COLUMN, "visit", "limb", "column", "damage", "score", "crop_class", "group",
               "box_x0", "box_y0", "box_x1", "box_y1", "detector_score", "attention", "attention_h",
               "attention_w", "path"),
    "patients": (ID_COLUMN, "visit", "Overall_Tol", "Overall_erosion", "Overall_narrowing", "qc_flags"),
}


class ResultsError(ValueError):
    """The results location is missing a table or a table lacks a contract column."""


@dataclass(frozen=True)
class ScoredResults:
    """The three output tables; ``visit`` is ``""`` where the job stored null (no visits)."""

    images: pd.DataFrame
    joints: pd.DataFrame
    patients: pd.DataFrame

    def of(self, table: str, patient_id: str, visit: str) -> pd.DataFrame:
        df = getattr(self, table)
        return df[(df[ID_COLUMN] == patient_id) & (df["visit"] == visit)]


def _read(loc, name: str) -> pd.DataFrame:
    path = loc.join(name)
    if loc.fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ResultsError(f"{loc.uri_of(name)} does not exist: is {loc.uri} a scoring job's --output?")
    df = pq.read_table(path, filesystem=loc.fs).to_pandas()
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    if missing:
        raise ResultsError(f"{loc.uri_of(name)} lacks column(s) {', '.join(missing)}")
    df[ID_COLUMN] = df[ID_COLUMN].astype("string")
    df["visit"] = df["visit"].astype("string").fillna("")
    return df


def load_results(uri: str, storage_options: dict[str, Any] | None = None,
                 patients: Iterable[str] | None = None) -> ScoredResults:
    """The tables under ``uri`` (local or ``s3://``), limited to ``patients`` IDs when given.

    Raises :class:`ResultsError` when a table is missing or an asked-for patient is not in ``patients/``.
    """
    loc = resolve(uri, storage_options)
    images, joints, pats = (_read(loc, name) for name in TABLES)
    joints["uncertainty"] = joints["uncertainty"].astype(float) if "uncertainty" in joints else float("nan")
    joints["review"] = joints["review"].fillna(False).astype(bool) if "review" in joints else False
    pats["qc_flags"] = pats["qc_flags"].map(lambda f: [] if f is None else [str(x) for x in f])
    if patients is not None:
        wanted = list(dict.fromkeys(patients))
        unknown = sorted(set(wanted) - set(pats[ID_COLUMN]))
        if unknown:
            raise ResultsError(f"patient(s) not in {loc.uri_of('patients')}: {', '.join(unknown)}")
        images, joints, pats = (df[df[ID_COLUMN].isin(wanted)] for df in (images, joints, pats))
    return ScoredResults(images.reset_index(drop=True), joints.reset_index(drop=True),
                         pats.sort_values([ID_COLUMN, "visit"]).reset_index(drop=True))
