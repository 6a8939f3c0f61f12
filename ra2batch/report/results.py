"""Reading a scoring job's output (``images``, ``joints``, ``patients``; docs/design.md) for review,
through ``ra2batch.output`` (the published version of each table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow.dataset as pads

from ra2batch.catalogue import ID_COLUMN

TABLES = ("images", "joints", "patients")


class ResultsError(ValueError):
    """The results location holds no readable output, or not the patients asked for."""


@dataclass(frozen=True)
class ScoredResults:
    """The three output tables (``visit`` is ``""`` where the job stored null: no visits) and ``run``, the
    manifest of the run that published them (a ``runs`` row: its bundle, model version, crop geometry)."""

    images: pd.DataFrame
    joints: pd.DataFrame
    patients: pd.DataFrame
    run: Mapping[str, Any] = field(default_factory=dict)


def by_visit(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """The rows of an output table per ``(Patient_ID, visit)``, grouped once (a lookup per patient
    would scan the whole table each time)."""
    return {(str(k[0]), str(k[1])): rows for k, rows in table.groupby([ID_COLUMN, "visit"], sort=False)}


def load_results(uri: str, storage_options: dict[str, Any] | None = None,
                 patients: Iterable[str] | None = None) -> ScoredResults:
    """The tables under ``uri`` (local or ``s3://``), limited to ``patients`` IDs when given.

    Raises :class:`ResultsError` when there is no output or an asked-for patient is not in ``patients``.
    """
    from ra2batch.output import OutputError, open_output

    wanted = list(dict.fromkeys(patients)) if patients is not None else None
    where = pads.field(ID_COLUMN).isin(wanted) if wanted is not None else None
    try:
        snapshot = open_output(uri, storage_options)
        images, joints, pats = (snapshot.to_pandas(name, filter=where) for name in TABLES)
    except OutputError as e:
        raise ResultsError(str(e)) from e
    for df in (images, joints, pats):
        df[ID_COLUMN] = df[ID_COLUMN].astype("string")
        df["visit"] = df["visit"].astype("string").fillna("")
    joints["uncertainty"] = joints["uncertainty"].astype(float)
    joints["review"] = joints["review"].fillna(False).astype(bool)
    pats["qc_flags"] = pats["qc_flags"].map(lambda f: [] if f is None else [str(x) for x in f])
    if wanted is not None:
        unknown = sorted(set(wanted) - set(pats[ID_COLUMN]))
        if unknown:
            raise ResultsError(f"patient(s) not in {snapshot.out.uri_of('patients')}: {', '.join(unknown)}")
    return ScoredResults(images.reset_index(drop=True), joints.reset_index(drop=True),
                         pats.sort_values([ID_COLUMN, "visit"]).reset_index(drop=True), dict(snapshot.run))
