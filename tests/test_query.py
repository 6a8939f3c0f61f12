"""``ra2batch query`` against a small scored cohort written here in the scoring job's table layout.

Every named query is checked against the same figure computed independently with pandas.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ra2batch import catalogue
from tests.helpers import write_output
from ra2batch.catalogue import COLUMNS, EROSION, ID_COLUMN, NARROWING
from ra2batch.query import (
    QueryError, add_arguments, above, compare, distribution, main, open_results, prevalence, progression, sql,
)

SCORED_AT = {"v1": pd.Timestamp("2025-01-01", tz="UTC"), "v2": pd.Timestamp("2025-06-01", tz="UTC")}
#: (Patient_ID, visit) rows of the cohort; visits are labels, ISO dates, or absent.
VISITS = [
    ("UAB001", "V0"), ("UAB001", "V1"),
    ("UAB002", "V0"), ("UAB002", "V1"),
    ("UAB003", None),
    ("ZZB001", "2020-01-15"), ("ZZB001", "2022-01-15"),
    ("ZZB002", "V2"), ("ZZB002", "V10"),
    ("ZZC001", "V0"),
]
NEVER_FOUND = "RF_mtp_J__ip"  # a joint the detector missed on every image
#: Rows rescored by model v2 in the second output (same image bytes).
RESCORED = [("UAB001", "V0"), ("ZZB001", "2020-01-15")]


def _patient_scores(rng: np.random.Generator) -> dict[str, float]:
    scores = {c: float(rng.integers(0, catalogue.BY_COLUMN[c].max_score + 1)) * float(rng.random() < 0.4)
              for c in COLUMNS}
    for c in rng.choice(COLUMNS, size=3, replace=False):  # joints not found on this patient
        scores[c] = np.nan
    scores[NEVER_FOUND] = np.nan
    return scores


def _path(pid: str, visit: str | None, limb: str) -> str:
    return f"archive/{pid}-{visit}-{limb}.jpg" if visit else f"archive/{pid}-{limb}.jpg"


def _tables(rows: dict[tuple[str, str | None], dict[str, float]], version: str) -> dict[str, pd.DataFrame]:
    """patients/joints/images DataFrames in the design.md contract for the given scores."""
    at = SCORED_AT[version]
    patients, joints, images = [], [], []
    for (pid, visit), scores in rows.items():
        ero = np.nansum([scores[c] for c in EROSION])
        nar = np.nansum([scores[c] for c in NARROWING])
        patients.append({ID_COLUMN: pid, "visit": visit, "Overall_Tol": ero + nar, "Overall_erosion": ero,
                         "Overall_narrowing": nar, **scores, "n_images": 4, "limbs": "LF,LH,RF,RH",
                         "qc_flags": [f"not_detected:{NEVER_FOUND}", "partial_totals"],
                         "model_version": version, "scored_at": at})
        for limb in catalogue.LIMBS:
            path = _path(pid, visit, limb)
            images.append({"path": path, ID_COLUMN: pid, "visit": visit, "limb": limb, "status": "ok",
                           "error": None, "width": 800, "height": 1000, "format": "JPEG", "bits": 8,
                           "size_bytes": 1234, "content_hash": hashlib.sha256(path.encode()).hexdigest(),
                           "n_detections": 5, "chosen": True, "model_version": version, "scored_at": at})
        for c, v in scores.items():
            if np.isnan(v):
                continue
            j = catalogue.BY_COLUMN[c]
            joints.append({ID_COLUMN: pid, "visit": visit, "limb": j.limb, "joint": c, "damage": j.damage,
                           "score": v, "crop_class": j.crop, "group": f"{j.crop}_{j.damage}",
                           "box_x0": 1.0, "box_y0": 2.0, "box_x1": 30.0, "box_y1": 40.0, "detector_score": 0.9,
                           "attention": np.full(4, 0.25, np.float32), "attention_h": 2, "attention_w": 2,
                           "path": _path(pid, visit, j.limb), "model_version": version, "scored_at": at})
    return {"patients": pd.DataFrame(patients), "joints": pd.DataFrame(joints), "images": pd.DataFrame(images)}


def _write(root, tables: dict[str, pd.DataFrame]) -> str:
    return write_output(str(root), tables)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two outputs: ``v1`` (every row) and ``v2`` (a rescoring of two patient rows, scores moved)."""
    rng = np.random.default_rng(7)
    base = tmp_path_factory.mktemp("cohort")
    v1_scores = {k: _patient_scores(rng) for k in VISITS}
    v1_scores["UAB002", "V1"] = {  # clear progression: 8 erosion joints two points worse
        c: 2.0 + (0.0 if np.isnan(v) else v) if c in EROSION[:8] else v
        for c, v in v1_scores["UAB002", "V0"].items()}
    v2_scores = {}
    for k in RESCORED:
        moved = {c: v + float(rng.integers(-1, 2)) if not np.isnan(v) else v for c, v in v1_scores[k].items()}
        v2_scores[k] = {c: max(0.0, v) for c, v in moved.items()}
    v1, v2 = _tables(v1_scores, "v1"), _tables(v2_scores, "v2")
    return {"a": _write(base / "run_v1", v1), "b": _write(base / "run_v2", v2), "v1": v1, "v2": v2, "base": base}


def _prefix(ids: pd.Series) -> pd.Series:
    return ids.str.extract(r"^([^0-9]*)", expand=False)


def _stats(groups) -> pd.DataFrame:
    return pd.DataFrame({
        "n": groups.count(), "mean": groups.mean(), "sd": groups.std(), "min": groups.min(),
        "p25": groups.quantile(0.25), "median": groups.median(), "p75": groups.quantile(0.75), "max": groups.max(),
    })


def _assert_stats(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.set_index("cohort")
    assert [None if pd.isna(i) else i for i in got.index] == [None if pd.isna(i) else str(i) for i in want.index]
    np.testing.assert_allclose(got[want.columns].to_numpy(float), want.to_numpy(float), rtol=1e-9)


@pytest.mark.parametrize("by, prefix_len", [("prefix", None), ("prefix", 4), ("visit", None)])
def test_distribution_by_prefix_or_patients_column(cohort, by, prefix_len):
    p = cohort["v1"]["patients"]
    res = open_results(cohort["a"])
    got = distribution(res, by, "Overall_Tol", prefix_len)
    key = {None: _prefix(p[ID_COLUMN]), 4: p[ID_COLUMN].str[:4]}[prefix_len] if by == "prefix" else p["visit"]
    want = _stats(p.groupby(key, dropna=False)["Overall_Tol"])  # rows without a visit: their own group
    _assert_stats(got, want)
    if by == "prefix" and prefix_len is None:
        assert list(got["cohort"]) == ["UAB", "ZZB", "ZZC"]


def test_distribution_by_manifest_column_skips_missing_joints(cohort, tmp_path):
    p = cohort["v1"]["patients"]
    arms = {"UAB001": "placebo", "UAB002": "drug", "UAB003": "drug", "ZZB001": "placebo",
            "ZZB002": "drug", "ZZC001": "placebo"}
    manifest = pd.DataFrame([{"path": _path(pid, v, "LH"), ID_COLUMN: pid, "limb": "LH", "arm": arms[pid]}
                             for pid, v in VISITS])
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    column = next(c for c in COLUMNS if p[c].isna().any() and c != NEVER_FOUND)
    got = distribution(open_results(cohort["a"]), "arm", column, manifest=pd.read_csv(tmp_path / "manifest.csv"))
    want = _stats(p.assign(arm=p[ID_COLUMN].map(arms)).groupby("arm")[column])
    _assert_stats(got, want)
    assert got["n"].sum() == p[column].notna().sum()


def test_above_threshold(cohort):
    p = cohort["v1"]["patients"]
    t = float(p["Overall_Tol"].median())
    got = above(open_results(cohort["a"]), t)
    want = p[p["Overall_Tol"] > t].sort_values(["Overall_Tol", ID_COLUMN], ascending=[False, True])
    assert list(got[ID_COLUMN]) == list(want[ID_COLUMN])
    np.testing.assert_allclose(got["Overall_Tol"], want["Overall_Tol"])
    assert (got["Overall_Tol"] > t).all() and len(got) < len(p)
    assert list(got["qc_flags"].iloc[0]) == [f"not_detected:{NEVER_FOUND}", "partial_totals"]


def test_progression_orders_visits_and_flags_the_sdc(cohort):
    p = cohort["v1"]["patients"].set_index([ID_COLUMN, "visit"])["Overall_Tol"]
    dates = pd.DataFrame({ID_COLUMN: ["UAB002", "UAB002"], "visit": ["V0", "V1"],
                          "date": pd.to_datetime(["2019-03-01", "2020-09-01"])})
    got = progression(open_results(cohort["a"]), sdc=5.0, visit_dates=dates).set_index(ID_COLUMN)
    assert sorted(got.index) == ["UAB001", "UAB002", "ZZB001", "ZZB002"]  # one visit or none: left out

    zzb2 = got.loc["ZZB002"]  # labels in natural order: V2 before V10
    assert (zzb2["visit_from"], zzb2["visit_to"]) == ("V2", "V10")
    assert zzb2["change"] == pytest.approx(p["ZZB002", "V10"] - p["ZZB002", "V2"])
    assert np.isnan(zzb2["change_per_year"])  # no dates known

    zzb1 = got.loc["ZZB001"]  # visits named by date
    years = (pd.Timestamp("2022-01-15") - pd.Timestamp("2020-01-15")).days / 365.25
    change = p["ZZB001", "2022-01-15"] - p["ZZB001", "2020-01-15"]
    assert zzb1["years"] == pytest.approx(years)
    assert zzb1["change_per_year"] == pytest.approx(change / years)

    uab2 = got.loc["UAB002"]  # dates from --visit-dates
    change = p["UAB002", "V1"] - p["UAB002", "V0"]
    assert uab2["change_per_year"] == pytest.approx(change / ((pd.Timestamp("2020-09-01")
                                                               - pd.Timestamp("2019-03-01")).days / 365.25))
    for pid, row in got.iterrows():
        assert row["progressed"] == (row["change"] > 5.0)
    assert uab2["change"] > 5.0 and uab2["progressed"]


def test_prevalence_per_joint(cohort):
    j = cohort["v1"]["joints"]
    got = prevalence(open_results(cohort["a"]), min_score=1.0).set_index("joint")
    assert list(got.index) == list(COLUMNS)  # catalogue order, every joint listed
    g = j.groupby("joint")["score"]
    want = pd.DataFrame({"n_scored": g.count(), "n_damaged": g.apply(lambda s: int((s >= 1).sum())),
                         "mean_score": g.mean()})
    want["prevalence"] = want["n_damaged"] / want["n_scored"]
    found = got.loc[want.index]
    np.testing.assert_array_equal(found["n_scored"], want["n_scored"])
    np.testing.assert_array_equal(found["n_damaged"], want["n_damaged"])
    np.testing.assert_allclose(found[["prevalence", "mean_score"]].to_numpy(float),
                               want[["prevalence", "mean_score"]].to_numpy(float))
    assert got.loc[NEVER_FOUND, "n_scored"] == 0 and pd.isna(got.loc[NEVER_FOUND, "prevalence"])


def test_compare_two_model_versions_on_the_same_images(cohort):
    res = open_results([cohort["a"], cohort["b"]])
    got = compare(res).set_index("joint")  # versions taken oldest first: v1, then v2
    pair = cohort["v1"]["joints"].merge(cohort["v2"]["joints"], on=["path", "joint"], suffixes=("_a", "_b"))
    diff = pair["score_b"] - pair["score_a"]
    per = pair.assign(d=diff, ad=diff.abs()).groupby("joint")
    assert set(got.index) == set(per.groups) | {"ALL"}
    cols = list(per.groups)
    np.testing.assert_array_equal(got.loc[cols, "n"], per.size()[cols])
    np.testing.assert_allclose(got.loc[cols, "mean_abs_diff"], per["ad"].mean()[cols])
    np.testing.assert_allclose(got.loc[cols, "mean_diff"], per["d"].mean()[cols])
    overall = got.loc["ALL"]
    assert overall["n"] == len(pair)
    assert overall["mean_abs_diff"] == pytest.approx(diff.abs().mean())
    assert overall["max_abs_diff"] == pytest.approx(diff.abs().max())
    assert overall["corr"] == pytest.approx(pair["score_a"].corr(pair["score_b"]))
    swapped = compare(res, a="v2", b="v1").set_index("joint")
    assert swapped.loc["ALL", "mean_diff"] == pytest.approx(-overall["mean_diff"])


def test_stacked_versions_need_a_choice_for_cohort_queries(cohort):
    both = open_results([cohort["a"], cohort["b"]])
    with pytest.raises(QueryError, match="2 model versions"):
        distribution(both)
    only_v2 = open_results([cohort["a"], cohort["b"]], model_version="v2")
    assert len(above(only_v2, -1)) == len(RESCORED)
    with pytest.raises(QueryError, match="v3"):
        open_results(cohort["a"], model_version="v3")


def test_sql_over_the_views(cohort):
    res = open_results(cohort["a"])
    got = sql(res, "SELECT p.Patient_ID, count(*) AS n FROM patients p JOIN joints j "
                   "ON p.Patient_ID = j.Patient_ID AND p.visit IS NOT DISTINCT FROM j.visit GROUP BY 1 ORDER BY 1")
    want = cohort["v1"]["joints"].groupby(ID_COLUMN).size()
    assert list(got[ID_COLUMN]) == list(want.index) and list(got["n"]) == list(want)
    assert sql(res, "SELECT count(*) AS n FROM images")["n"][0] == len(cohort["v1"]["images"])
    assert sql(res, "SELECT count(*) AS n FROM catalogue")["n"][0] == 86


def _cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="ra2batch query")
    add_arguments(p)
    return main(p.parse_args(list(argv)))


def test_cli_writes_csv_and_parquet_and_prints_a_table(cohort, tmp_path, capsys):
    expected = above(open_results(cohort["a"]), 20.0)
    assert _cli("--results", cohort["a"], "above", "--threshold", "20", "--out", str(tmp_path / "a.csv")) == 0
    csv = pd.read_csv(tmp_path / "a.csv", dtype={"visit": str})
    assert list(csv[ID_COLUMN]) == list(expected[ID_COLUMN])
    assert [json.loads(v) for v in csv["qc_flags"]] == [list(v) for v in expected["qc_flags"]]
    assert _cli("--results", cohort["a"], "prevalence", "--out", str(tmp_path / "p.parquet")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), prevalence(open_results(cohort["a"])),
                                  check_dtype=False)
    capsys.readouterr()
    assert _cli("--results", cohort["a"], "distribution") == 0
    screen = capsys.readouterr().out
    assert screen.splitlines()[0].split() == ["cohort", "n", "mean", "sd", "min", "p25", "median", "p75", "max"]
    assert "UAB" in screen and screen.rstrip().endswith("(3 rows)")


def test_cli_progression_reads_visit_dates_from_a_file(cohort, tmp_path, capsys):
    pd.DataFrame({ID_COLUMN: ["UAB001", "UAB001"], "visit": ["V0", "V1"], "date": ["2018-01-01", "2019-01-01"]}
                 ).to_csv(tmp_path / "visits.csv", index=False)
    argv = ["--results", cohort["a"], "progression", "--visit-dates", str(tmp_path / "visits.csv")]
    assert _cli(*argv, "--out", str(tmp_path / "p.csv")) == 0
    row = pd.read_csv(tmp_path / "p.csv").set_index(ID_COLUMN).loc["UAB001"]
    p = cohort["v1"]["patients"].set_index([ID_COLUMN, "visit"])["Overall_Tol"]
    assert row["change_per_year"] == pytest.approx((p["UAB001", "V1"] - p["UAB001", "V0"]) / (365 / 365.25))
    pd.DataFrame({ID_COLUMN: ["UAB001"], "visit": ["V0"]}).to_csv(tmp_path / "bad.csv", index=False)
    pd.DataFrame({ID_COLUMN: ["XX"], "visit": ["V0"], "date": ["2018-01-01"]}).to_csv(tmp_path / "other.csv")
    capsys.readouterr()
    for name, message in (("bad.csv", "missing column(s) date"), ("other.csv", "names no (Patient_ID, visit)")):
        assert _cli(*argv[:-1], str(tmp_path / name)) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["sql", "SELEC 1"], "Parser Error"),
    (["sql", "SELECT nope FROM patients"], "nope"),
    (["above", "--threshold", "1", "--column", "Overall_Total"], "unknown column 'Overall_Total'"),
    (["distribution", "--by", "arm"], "unknown column 'arm'"),
    (["distribution", "--column", "limbs"], "not a number"),
    (["above", "--threshold", "1", "--out", "x.xlsx"], ".csv or .parquet"),
    (["compare"], "1 model version"),
])
def test_cli_errors_are_one_line_with_exit_2(cohort, capsys, argv, message):
    assert _cli("--results", cohort["a"], *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_results_without_tables_is_one_line_error(tmp_path, capsys):
    (tmp_path / "patients").mkdir()
    assert _cli("--results", str(tmp_path), "prevalence") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ra2batch query: ") and "holds no scoring output" in err and len(err.splitlines()) == 1


def test_ra2batch_query_runs_from_the_console_script(cohort, capsys):
    from ra2batch.cli import main as ra2batch

    assert ra2batch(["query", "--results", cohort["a"], "sql", "SELECT count(*) AS n FROM patients"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(len(VISITS)), "(1", "row)"]


def test_results_on_s3_are_read_in_place(cohort, s3_bucket):
    """The same query over an S3 copy of the outputs (moto's S3 server) gives the same table."""
    remote = s3_bucket.upload(Path(cohort["a"]), "runs/v1")
    got = distribution(open_results(remote, s3_bucket.options), "prefix")
    pd.testing.assert_frame_equal(got, distribution(open_results(cohort["a"]), "prefix"))
    out = f"{s3_bucket.uri}/reports/prevalence.csv"
    options = json.dumps(s3_bucket.options)
    assert _cli("--results", remote, "--storage-options", options, "prevalence", "--out", out) == 0
    written = pd.read_csv(io.BytesIO(s3_bucket.location("reports", "prevalence.csv").read_bytes()))
    assert list(written["joint"]) == list(COLUMNS)
