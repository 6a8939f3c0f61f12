"""Evaluation plots: the three PNGs are written, and they show the errors where they are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ra2batch import catalogue
from ra2batch.plots import FILES, aligned_scores, bland_altman, joint_error_map, write_plots
from ra2batch.report import layout
from ra2batch.scorer import ScoringError
from tests.helpers import ra2_table


def _cohort(n: int = 8, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    return {f"P{i:03d}": {c: float(rng.integers(0, catalogue.BY_COLUMN[c].max_score + 1) * (rng.random() < 0.3))
                          for c in catalogue.COLUMNS} for i in range(n)}


def _off_by(truth: dict[str, dict[str, float]], column: str, delta: float) -> dict[str, dict[str, float]]:
    return {pid: {**scores, column: scores[column] + delta} for pid, scores in truth.items()}


def test_plots_are_written_as_non_blank_pngs(tmp_path):
    truth = _cohort()
    pred = {pid: {c: max(0.0, v + 0.4 * np.sin(i + k)) for k, (c, v) in enumerate(s.items())}
            for i, (pid, s) in enumerate(truth.items())}
    paths = write_plots(ra2_table(pred), ra2_table(truth), tmp_path / "plots")
    assert [p.name for p in paths] == list(FILES)
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) >= 300
            grey = np.asarray(im.convert("L"), dtype=np.float32)
        assert grey.std() > 10, f"{p.name} is blank"


def test_error_map_puts_the_error_on_its_joint():
    truth = _cohort()
    p, t = aligned_scores(ra2_table(_off_by(truth, "RH_mcp_E__3", 2.0)), ra2_table(truth))
    fig = joint_error_map(p, t)
    panel = next(ax for ax in fig.axes if ax.get_title() == "RH erosion")
    dots = panel.collections[0]
    errors = np.asarray(dots.get_array())
    x, y = dots.get_offsets()[int(np.argmax(errors))]
    aspect = layout.ASPECT["hand"]
    assert (x, y / aspect) == pytest.approx(layout.position("RH_mcp_E__3"))
    assert errors.max() == pytest.approx(2.0) and np.sort(errors)[-2] == 0


def test_bland_altman_bias_is_the_mean_difference_of_overall_tol():
    truth = _cohort()
    p, t = aligned_scores(ra2_table(_off_by(truth, "LF_mtp_E__2", 3.0)), ra2_table(truth))
    ax = bland_altman(p, t).axes[0]
    levels = sorted({round(line.get_ydata()[0], 6) for line in ax.get_lines()})
    assert levels == [0.0, 3.0]  # zero line, bias; no spread so both limits sit on the bias


def test_a_truth_patient_without_prediction_is_an_error(tmp_path):
    truth = _cohort(3)
    pred = {k: v for k, v in truth.items() if k != "P001"}
    with pytest.raises(ScoringError, match="P001"):
        write_plots(ra2_table(pred), ra2_table(truth), tmp_path)
    assert not any(tmp_path.iterdir())
