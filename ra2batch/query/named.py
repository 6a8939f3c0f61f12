"""The named cohort queries over :class:`~ra2batch.query.results.Results`; each returns a DataFrame.

Scores are the scoring job's per-patient Sharp/van der Heijde values (``Overall_Tol`` 0..448). A
patient row is one ``(Patient_ID, visit)``; NaN marks a joint that was not found and is left out of
every statistic rather than counted as 0.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ra2batch.catalogue import ID_COLUMN
from ra2batch.evaluate import read_table
from ra2batch.scorer import ScoringError

from .results import QueryError, Results

def _present(expr: str) -> str:
    """SQL condition: ``expr`` holds a number (neither NULL nor NaN)."""
    return f"{expr} IS NOT NULL AND NOT isnan({expr})"


def distribution(
    res: Results,
    by: str = "prefix",
    column: str = "Overall_Tol",
    prefix_len: int | None = None,
    manifest: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Distribution of ``column`` per cohort: ``n, mean, sd, min, p25, median, p75, max``.

    ``by="prefix"`` groups patients by the start of their ``Patient_ID``: its first ``prefix_len``
    characters, or when that is ``None`` the part before the first digit (``UAB`` of ``UAB012``).
    Otherwise ``by`` names a column of ``patients`` (e.g. ``visit``) or of ``manifest``, a table
    with ``Patient_ID`` and that column (the scoring manifest with extra columns such as a trial arm)
    joined on ``Patient_ID``, and on ``visit`` too when the manifest has one.
    Quantiles interpolate linearly; ``sd`` is the sample standard deviation.
    """
    res.require_one_version()
    value = res.numeric_column("patients", column)
    source = "patients p"
    if by == "prefix":
        if prefix_len is not None and prefix_len < 1:
            raise QueryError("--prefix-len must be at least 1")
        cohort = (f"left(p.{ID_COLUMN}, {int(prefix_len)})" if prefix_len
                  else f"regexp_extract(p.{ID_COLUMN}, '^[^0-9]*')")
    elif manifest is not None and by in manifest.columns:
        source = f"patients p LEFT JOIN _cohorts m ON {_manifest_join(res, manifest, by)}"
        cohort = f"CAST(m.\"{by}\" AS VARCHAR)"
    elif by in res.columns("patients"):
        cohort = f"CAST(p.\"{by}\" AS VARCHAR)"
    else:
        where = " or the --manifest" if manifest is not None else "; pass --manifest FILE for others"
        raise QueryError(f"unknown column {by!r} for --by: not in patients{where}")
    v = f"p.{value}"
    return res.sql(f"""
        SELECT {cohort} AS cohort, count(*) AS n, avg({v}) AS mean, stddev_samp({v}) AS sd,
               min({v}) AS min, quantile_cont({v}, 0.25) AS p25, median({v}) AS median,
               quantile_cont({v}, 0.75) AS p75, max({v}) AS max
        FROM {source} WHERE {_present(v)} GROUP BY ALL ORDER BY cohort NULLS LAST
    """)


def _manifest_join(res: Results, manifest: pd.DataFrame, by: str) -> str:
    """Register the manifest's ``(Patient_ID[, visit], by)`` rows; refuse a patient with two cohorts."""
    if ID_COLUMN not in manifest.columns:
        raise QueryError(f"the --manifest has no {ID_COLUMN} column")
    keys = [ID_COLUMN] + (["visit"] if "visit" in manifest.columns else [])
    m = manifest[keys + [by]].astype({ID_COLUMN: str}).drop_duplicates()
    clash = m[m.duplicated(keys, keep=False)]
    if len(clash):
        raise QueryError(f"the --manifest gives {ID_COLUMN} {clash.iloc[0][ID_COLUMN]} more than one {by!r}")
    if "visit" in keys:
        m["visit"] = m["visit"].astype("string")
    res.con.register("_cohorts", m)
    return " AND ".join(f"p.{k} IS NOT DISTINCT FROM m.{k}" for k in keys)


def above(res: Results, threshold: float, column: str = "Overall_Tol") -> pd.DataFrame:
    """Patient rows whose ``column`` is strictly above ``threshold``, highest first."""
    res.require_one_version()
    value = res.numeric_column("patients", column)
    extra = "" if column == "Overall_Tol" else ", Overall_Tol"
    return res.sql(f"""
        SELECT {ID_COLUMN}, visit, {value}{extra}, n_images, limbs, qc_flags
        FROM patients WHERE {_present(value)} AND {value} > ?
        ORDER BY {value} DESC, {ID_COLUMN}, visit
    """, [float(threshold)])


_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{8})$")


def visit_date(label: Any) -> pd.Timestamp | None:
    """The date a visit label spells (``2021-03-04`` or DICOM-style ``20210304``), else ``None``."""
    if label is None or pd.isna(label) or not _DATE.match(str(label)):
        return None
    date = pd.to_datetime(str(label), format="%Y-%m-%d" if "-" in str(label) else "%Y%m%d", errors="coerce")
    return None if pd.isna(date) else date


def _natural_key(label: str) -> list[Any]:
    """Sort key that puts ``V2`` before ``V10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label) if t]


def read_visit_dates(uri: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """A visit-dates table (CSV or Parquet, columns ``Patient_ID, visit, date``) with parsed dates."""
    try:
        df = read_table(uri, "--visit-dates", storage_options)
    except ScoringError as e:
        raise QueryError(str(e)) from e
    missing = [c for c in (ID_COLUMN, "visit", "date") if c not in df.columns]
    if missing:
        raise QueryError(f"--visit-dates {uri}: missing column(s) {', '.join(missing)}; "
                         f"expected {ID_COLUMN}, visit, date")
    dates = pd.to_datetime(df["date"].astype(str), format="ISO8601", errors="coerce")
    if dates.isna().any():
        bad = df["date"][dates.isna()].iloc[0]
        raise QueryError(f"--visit-dates {uri}: {bad!r} is not a date (use YYYY-MM-DD)")
    return pd.DataFrame({ID_COLUMN: df[ID_COLUMN].astype(str), "visit": df["visit"].astype(str), "date": dates})


def progression(
    res: Results,
    sdc: float = 5.0,
    column: str = "Overall_Tol",
    visit_dates: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Change of ``column`` between each patient's consecutive visits, flagged against the SDC.

    A visit's date comes from ``visit_dates`` (``Patient_ID, visit, date``) when given, else from
    its label when that is a date. Visits are ordered by date when all of a patient's visits have
    one, else by label in natural order (``V0 < V1 < V10``). ``change_per_year`` is given only when
    both dates are known and differ; ``progressed`` is ``change > sdc`` (the smallest detectable
    change, in score units, between two readings). Patients with one visit are left out.
    """
    res.require_one_version()
    value = res.numeric_column("patients", column)
    df = res.sql(f"SELECT {ID_COLUMN}, visit, {value} AS score FROM patients WHERE visit IS NOT NULL")
    known = {} if visit_dates is None else dict(
        zip(zip(visit_dates[ID_COLUMN], visit_dates["visit"]), visit_dates["date"])
    )
    if known and not set(known) & set(zip(df[ID_COLUMN], df["visit"])):
        raise QueryError(f"--visit-dates names no ({ID_COLUMN}, visit) of the patients table")
    df["date"] = pd.to_datetime(
        pd.Series([known.get((p, v), visit_date(v)) for p, v in zip(df[ID_COLUMN], df["visit"])], dtype=object)
    )
    rows = []
    for pid, visits in df.groupby(ID_COLUMN, sort=True):
        twice = visits["visit"][visits["visit"].duplicated()]
        if len(twice):
            raise QueryError(f"{ID_COLUMN} {pid} has visit {twice.iloc[0]!r} twice in patients")
        if visits["date"].notna().all():
            visits = visits.sort_values("date")
        else:
            visits = visits.iloc[sorted(range(len(visits)), key=lambda i: _natural_key(visits["visit"].iloc[i]))]
        for a, b in zip(visits.to_dict("records"), visits.iloc[1:].to_dict("records")):
            years = (b["date"] - a["date"]).days / 365.25 if pd.notna(a["date"]) and pd.notna(b["date"]) else np.nan
            change = b["score"] - a["score"]
            rows.append({
                ID_COLUMN: pid, "visit_from": a["visit"], "visit_to": b["visit"],
                "date_from": a["date"], "date_to": b["date"], "years": years,
                "score_from": a["score"], "score_to": b["score"], "change": change,
                "change_per_year": change / years if years > 0 else np.nan,
                "progressed": bool(change > sdc),
            })
    columns = [ID_COLUMN, "visit_from", "visit_to", "date_from", "date_to", "years", "score_from",
               "score_to", "change", "change_per_year", "progressed"]
    out = pd.DataFrame(rows, columns=columns)
    for c in ("date_from", "date_to"):
        out[c] = [d.date() if pd.notna(d) else None for d in out[c]]
    return out


def prevalence(res: Results, min_score: float = 1.0) -> pd.DataFrame:
    """Per RA2 joint, the share of scored patient rows whose predicted score is at least ``min_score``.

    Columns: ``joint, limb, site, damage, n_scored, n_damaged, prevalence, mean_score``, in
    catalogue order; a joint never found anywhere has ``n_scored`` 0.
    """
    res.require_one_version()
    return res.sql(f"""
        SELECT c.joint, c.limb, c.site, c.damage,
               count(j.score) AS n_scored,
               count(j.score) FILTER (WHERE j.score >= ?) AS n_damaged,
               n_damaged / nullif(n_scored, 0) AS prevalence,
               avg(j.score) AS mean_score
        FROM catalogue c LEFT JOIN joints j ON j.joint = c.joint AND {_present('j.score')}
        GROUP BY c.position, c.joint, c.limb, c.site, c.damage ORDER BY c.position
    """, [float(min_score)])


def compare(res: Results, a: str | None = None, b: str | None = None) -> pd.DataFrame:
    """Joint scores of model versions ``a`` and ``b`` on the same images, per RA2 column and overall.

    Images are matched by ``content_hash`` (the bytes, wherever the file lives), joints by RA2
    column. Columns: ``joint, n, mean_a, mean_b, mean_diff`` (b - a), ``mean_abs_diff,
    max_abs_diff, corr`` (Pearson); the first row, ``joint = 'ALL'``, pools every joint. With ``a``
    and ``b`` left out the results must hold exactly two versions, taken oldest first.
    """
    versions = res.model_versions("joints")
    if a is None and b is None:
        if len(versions) != 2:
            raise QueryError(f"the results hold {len(versions)} model version(s) ({', '.join(versions)}); "
                             "name the two to compare with --a and --b")
        a, b = versions
    for name, v in (("--a", a), ("--b", b)):
        if v is None:
            raise QueryError(f"give both --a and --b (missing {name})")
        if v not in versions:
            raise QueryError(f"model version {v!r} ({name}) is not in the results; they hold {', '.join(versions)}")
    pairs = f"""
        WITH per_version AS (
            SELECT j.model_version, i.content_hash, j.joint, avg(j.score) AS score
            FROM joints j JOIN images i ON i.path = j.path AND i.model_version = j.model_version
            WHERE j.model_version IN (?, ?) AND {_present('j.score')}
            GROUP BY ALL),
        pairs AS (
            SELECT x.joint, x.score AS sa, y.score AS sb
            FROM per_version x JOIN per_version y USING (content_hash, joint)
            WHERE x.model_version = ? AND y.model_version = ?)
    """
    stats = """count(*) AS n, avg(sa) AS mean_a, avg(sb) AS mean_b, avg(sb - sa) AS mean_diff,
               avg(abs(sb - sa)) AS mean_abs_diff, max(abs(sb - sa)) AS max_abs_diff, corr(sa, sb) AS corr"""
    df = res.sql(f"""{pairs}
        SELECT * FROM (
            SELECT p.joint, {stats}, min(c.position) AS _order
            FROM pairs p JOIN catalogue c USING (joint) GROUP BY p.joint
            UNION ALL
            SELECT 'ALL' AS joint, {stats}, -1 AS _order FROM pairs)
        WHERE n > 0 ORDER BY _order
    """, [a, b, a, b])
    if df.empty:
        raise QueryError(f"no image was scored by both {a} and {b}")
    return df.drop(columns="_order")


def sql(res: Results, query: str) -> pd.DataFrame:
    """Free SQL over the ``patients``, ``joints``, ``images`` and ``catalogue`` views."""
    return res.sql(query)
