import math

import numpy as np
import pandas as pd
import pytest

from ra2batch.catalogue import COLUMNS, ID_COLUMN
from ra2batch.scorer import ScoringError, patient_weight, random_baseline, score
from tests.helpers import ra2_table


@pytest.mark.parametrize("total,weight", [
    (0, 1), (1, 2), (2, 2.143547), (3, 2.143547), (4, 3.863745), (7, 3.863745), (8, 8), (20, 8),
    (21, 16), (55, 16), (56, 32), (148, 32), (149, 64), (448, 64),
])
def test_weight_bracket_edges(total, weight):
    assert patient_weight(total) == weight


def hand_case():
    """Two patients whose scores are worked out by hand below.

    Truth: A all zero (t=0, w=1); B has LH_mcp_J__1 = 3 (t=3, w=2.143547).
    Predictions: A has LH_mcp_E__1 = 1 (Tol 1); B all zero (Tol 0).
    SC1 = (1*|log2(1)-log2(2)| + 2.143547*|log2(4)-log2(1)|) / 3.143547 = (1 + 4.287094) / 3.143547
    SC2: A's narrowing errors are all 0; B has one error of log2(4) = 2 over 42 columns,
         rmse_B = sqrt(4/42); SC2 = 2.143547 * sqrt(4/42) / 3.143547
    SC3: A has one error of log2(2) = 1 over 44 columns, rmse_A = sqrt(1/44); B none;
         SC3 = 1 * sqrt(1/44) / 3.143547
    """
    truth = ra2_table({"A": {}, "B": {"LH_mcp_J__1": 3}})
    pred = ra2_table({"A": {"LH_mcp_E__1": 1}, "B": {}})
    return pred, truth


def test_hand_computed_scores():
    pred, truth = hand_case()
    s = score(pred, truth)
    assert s.sc1 == pytest.approx(5.287094 / 3.143547, rel=1e-6)  # 1.681892
    assert s.sc2 == pytest.approx(2.143547 * math.sqrt(4 / 42) / 3.143547, rel=1e-6)  # 0.210438
    assert s.sc3 == pytest.approx(math.sqrt(1 / 44) / 3.143547, rel=1e-6)  # 0.047958
    assert s.n_patients == 2


def test_perfect_prediction_scores_zero():
    rng = np.random.default_rng(1)
    truth = ra2_table({f"P{i}": {c: int(rng.integers(0, 3)) for c in COLUMNS[::7]} for i in range(5)})
    s = score(truth.copy(), truth)
    assert (s.sc1, s.sc2, s.sc3) == (0.0, 0.0, 0.0)


def test_shuffled_rows_and_columns_give_identical_scores():
    pred, truth = hand_case()
    rng = np.random.default_rng(0)
    shuffled = pred.iloc[::-1][list(rng.permutation(pred.columns))]
    assert score(shuffled, truth) == score(pred, truth)
    assert score(pred, truth.iloc[::-1]) == score(pred, truth)


def test_negative_predictions_clipped_to_zero():
    pred, truth = hand_case()
    neg = pred.copy()
    neg.loc[neg[ID_COLUMN] == "B", "RH_pip_E__3"] = -2.5
    neg.loc[neg[ID_COLUMN] == "B", "Overall_Tol"] = -2.5
    assert score(neg, truth) == score(pred, truth)


def test_bad_tables_are_named():
    pred, truth = hand_case()
    with pytest.raises(ScoringError, match="missing column LF_mtp_E__3"):
        score(pred.drop(columns=["LF_mtp_E__3"]), truth)
    with pytest.raises(ScoringError, match="no row for patient 'B'"):
        score(pred[pred[ID_COLUMN] == "A"], truth)
    with pytest.raises(ScoringError, match="duplicate Patient_ID 'A'"):
        score(pd.concat([pred, pred.iloc[[0]]]), truth)
    nan = pred.copy()
    nan.loc[1, "RH_mcp_J__2"] = float("nan")
    with pytest.raises(ScoringError, match="column RH_mcp_J__2 of patient 'B'"):
        score(nan, truth)
    text = pred.astype({"LH_pip_J__4": object})
    text.loc[0, "LH_pip_J__4"] = "two"
    with pytest.raises(ScoringError, match="LH_pip_J__4 of patient 'A' has a non-numeric"):
        score(text, truth)


def test_random_baseline_is_seeded_and_draws_training_labels():
    rng = np.random.default_rng(3)
    train = ra2_table({f"T{i}": {c: int(rng.integers(0, 2)) * (i % 3) for c in COLUMNS} for i in range(30)})
    a = random_baseline(train, ["X", "Y", "Z"], seed=7)
    b = random_baseline(train, ["X", "Y", "Z"], seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(random_baseline(train, ["X", "Y", "Z"], seed=8))
    for c in COLUMNS:
        assert set(a[c]) <= set(train[c].astype(float))
    assert (a["Overall_Tol"] == a[list(COLUMNS)].sum(axis=1)).all()
