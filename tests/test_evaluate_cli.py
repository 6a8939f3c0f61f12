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
    assert set(out) == {"sc1", "sc2", "sc3", "baseline_sc1", "baseline_sc2", "baseline_sc3", "n_patients", "plots"}
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
