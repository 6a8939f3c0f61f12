import json
import math
import subprocess
import sys

import pytest

from ra2batch.catalogue import ID_COLUMN
from tests.test_scorer import hand_case


def run(*args):
    return subprocess.run([sys.executable, "-m", "ra2batch", "evaluate", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(tmp_path):
    pred, truth = hand_case()
    truth.to_csv(tmp_path / "training.csv", index=False)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    return tmp_path, pred


def test_json_reproduces_hand_computed_scores(files):
    d, _ = files
    r = run("--predictions", str(d / "pred.csv"), "--truth", str(d / "training.csv"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"sc1", "sc2", "sc3", "baseline_sc1", "baseline_sc2", "baseline_sc3", "n_patients", "visits",
                        "plots"}
    assert out["visits"] is None
    assert out["sc1"] == pytest.approx(5.287094 / 3.143547, rel=1e-6)
    assert out["sc2"] == pytest.approx(2.143547 * math.sqrt(4 / 42) / 3.143547, rel=1e-6)
    assert out["sc3"] == pytest.approx(math.sqrt(1 / 44) / 3.143547, rel=1e-6)
    assert out["n_patients"] == 2


def test_table_and_parquet_dataset(files):
    d, pred = files
    (d / "pq").mkdir()
    pred.to_parquet(d / "pq" / "part-0.parquet")
    r = run("--predictions", str(d / "pq"), "--truth", str(d / "training.csv"))
    assert r.returncode == 0, r.stderr
    assert "predictions" in r.stdout and "baseline" in r.stdout and "ratio" in r.stdout
    assert "1.6819" in r.stdout


def test_extra_patients_reported_and_ignored(files):
    d, pred = files
    extra = pred.iloc[[0]].assign(**{ID_COLUMN: "ZZZ9"})
    import pandas as pd

    pd.concat([pred, extra]).to_csv(d / "pred2.csv", index=False)
    r = run("--predictions", str(d / "pred2.csv"), "--truth", str(d / "training.csv"), "--json")
    assert r.returncode == 0
    assert "ZZZ9" in r.stderr and "ignored" in r.stderr
    assert json.loads(r.stdout)["n_patients"] == 2


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p.drop(columns=["RH_wrist_J__mna"]), "missing column RH_wrist_J__mna"),
    (lambda p: p[p[ID_COLUMN] != "B"], "no row for patient 'B'"),
    (lambda p: p.assign(LH_pip_E__2=[0, float("nan")]), "LH_pip_E__2 of patient 'B'"),
    (lambda p: p.assign(**{ID_COLUMN: ["A", "A"]}), "duplicate Patient_ID 'A'"),
])
def test_bad_predictions_exit_2_with_one_line(files, mutate, message):
    d, pred = files
    mutate(pred).to_csv(d / "bad.csv", index=False)
    r = run("--predictions", str(d / "bad.csv"), "--truth", str(d / "training.csv"))
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_file_is_clear(files):
    d, _ = files
    r = run("--predictions", str(d / "nope.csv"), "--truth", str(d / "training.csv"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_plots_written(files):
    d, _ = files
    r = run("--predictions", str(d / "pred.csv"), "--truth", str(d / "training.csv"), "--plots", str(d / "plots"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\nwrote ") == 3  # results on stdout, with the table
    names = sorted(p.name for p in (d / "plots").iterdir())
    assert names == ["bland_altman.png", "joint_error_map.png", "predicted_vs_true.png"]
    assert all((d / "plots" / n).stat().st_size > 5000 for n in names)


def visit_case():
    """Two patients, three visits (``01`` and ``2021``: text, not numbers); A's visits differ, so a match
    on Patient_ID alone would pair the wrong rows. Predictions list the visits in another order, with
    a ``visit`` column after Patient_ID and a last ``qc`` column, as predictions.csv has them."""
    import pandas as pd

    from tests.helpers import ra2_table

    truth = ra2_table({"A": {}, "B": {"LH_mcp_J__1": 3}, "A2": {"LH_mcp_E__2": 4, "RF_mtp_E__1": 7}})
    pred = ra2_table({"A2": {"LH_mcp_E__2": 3, "RF_mtp_E__1": 7}, "B": {"LH_mcp_J__1": 1}, "A": {"LH_mcp_E__1": 1}})
    visits = {"A": ("A", "01"), "B": ("B", "01"), "A2": ("A", "2021")}

    def with_visits(df: pd.DataFrame) -> pd.DataFrame:
        pid, visit = zip(*(visits[p] for p in df[ID_COLUMN]))
        return df.assign(**{ID_COLUMN: list(pid)}).pipe(lambda d: d.insert(1, "visit", visit) or d)

    return pred, truth, with_visits(pred).assign(qc=["", "filled:2", ""]), with_visits(truth)


def test_visits_on_both_sides_are_scored_per_patient_visit(tmp_path):
    """Each patient visit counts as one patient of the challenge scorer, matched on Patient_ID and visit."""
    from ra2batch.scorer import score

    pred, truth, pred_v, truth_v = visit_case()
    pred_v.to_csv(tmp_path / "pred.csv", index=False)
    truth_v.to_csv(tmp_path / "truth.csv", index=False)
    r = run("--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"), "--json")
    assert r.returncode == 0, r.stderr
    out, want = json.loads(r.stdout), score(pred, truth)
    assert (out["n_patients"], out["visits"]) == (3, "each")
    assert [out[k] for k in ("sc1", "sc2", "sc3")] == pytest.approx([want.sc1, want.sc2, want.sc3], rel=1e-9)
    assert out["sc1"] != pytest.approx(score(pred.replace({ID_COLUMN: {"A": "A2", "A2": "A"}}), truth).sc1)
    r = run("--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"))
    assert r.returncode == 0 and "3 patient visits scored" in r.stdout


def test_a_scoring_outputs_patients_table_with_visits(tmp_path):
    from ra2batch.scorer import score
    from tests.helpers import write_output

    pred, truth, pred_v, truth_v = visit_case()
    out = write_output(str(tmp_path / "out"), {"patients": pred_v.drop(columns=["qc"])})
    truth_v.to_csv(tmp_path / "truth.csv", index=False)
    r = run("--predictions", f"{out}/patients", "--truth", str(tmp_path / "truth.csv"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sc1"] == pytest.approx(score(pred, truth).sc1, rel=1e-9)


def test_mismatched_visits_are_reported(tmp_path):
    _, _, pred_v, truth_v = visit_case()
    truth_v.to_csv(tmp_path / "truth.csv", index=False)
    pred_v.assign(visit=["2022", "01", "01"]).to_csv(tmp_path / "pred.csv", index=False)
    r = run("--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "predictions: no row for patient 'A (visit 2021)'" in r.stderr
    extra = pred_v.iloc[[0]].assign(visit="2022")
    __import__("pandas").concat([pred_v, extra]).to_csv(tmp_path / "pred.csv", index=False)
    r = run("--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"), "--json")
    assert r.returncode == 0, r.stderr
    assert "1 patient visit(s) in the predictions are not in the truth and were ignored: A (visit 2022)" in r.stderr


def test_visits_on_one_side_need_the_visit_named(tmp_path):
    """Predictions of an archive with visits against RA2's one-row-per-patient truth (or the other way
    round): refused in one line that says what to do; ``--visit V`` scores that visit."""
    from ra2batch.scorer import score

    pred, truth, pred_v, truth_v = visit_case()
    plain_pred, plain_truth = pred[(pred_v["visit"] == "01").to_numpy()], truth[(truth_v["visit"] == "01").to_numpy()]
    pred_v.to_csv(tmp_path / "pred_v.csv", index=False)
    truth_v.to_csv(tmp_path / "truth_v.csv", index=False)
    plain_pred.to_csv(tmp_path / "pred.csv", index=False)
    plain_truth.to_csv(tmp_path / "truth.csv", index=False)
    want = score(plain_pred, plain_truth)
    for p, t, side in (("pred_v", "truth", "the predictions have visits (01, 2021) but the truth has none"),
                       ("pred", "truth_v", "the truth has visits (01, 2021) but the predictions have none")):
        args = ("--predictions", str(tmp_path / f"{p}.csv"), "--truth", str(tmp_path / f"{t}.csv"), "--json")
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{side}: score one visit with --visit V" in r.stderr
        r = run(*args, "--visit", "01")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["n_patients"], out["visits"]) == (2, "01")
        assert [out[k] for k in ("sc1", "sc2", "sc3")] == pytest.approx([want.sc1, want.sc2, want.sc3], rel=1e-9)
        r = run(*args, "--visit", "2019")
        assert r.returncode == 2 and "no row of visit '2019' (its visits: 01, 2021)" in r.stderr
    r = run("--predictions", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"), "--visit", "01")
    assert r.returncode == 2 and "--visit 01: neither the predictions nor the truth have visits" in r.stderr
