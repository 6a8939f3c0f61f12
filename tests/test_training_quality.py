"""The quality check of a trained bundle: floors, bundle.json, ``ra2batch train``'s exit code and the
scoring job's warning (no Ray, no model training)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from ra2batch.job.pipeline import DEMO_BUNDLE, JobSummary, load_models
from ra2batch.models.manifest import Manifest
from ra2batch.training import quality

GOOD = {"hand_mAP": 1.0, "foot_mAP": 0.98, "ratio_sc1": 0.22, "ratio_sc2": 0.35, "ratio_sc3": 0.5}
#: The figures of a 5-minute demo run on 24 phantom patients (issue #18), SC3 at the baseline.
BAD = {"hand_mAP": 0.0, "foot_mAP": 0.0, "ratio_sc1": 6.4, "ratio_sc2": 0.9, "ratio_sc3": 1.0}


def _held_out(figures: dict) -> dict:
    scores = {f"{p}{k}": 1.0 for p in ("", "baseline_") for k in ("sc1", "sc2", "sc3")}
    return {**scores, **figures, "n_patients": 5, "n_images": 20}


def test_floors_flag_each_figure_that_misses_its_own():
    assert quality.check(GOOD) == {"ok": True, "problems": [], "floors": {"min_mAP": 0.5, "max_ratio": 1.0}}
    assert quality.problems(BAD) == [
        "hand_mAP 0.000 is below the floor 0.5 (held-out detector mAP at IoU 0.6)",
        "foot_mAP 0.000 is below the floor 0.5 (held-out detector mAP at IoU 0.6)",
        "ratio_sc1 6.400 is not below 1.0 (held-out SC1 no better than the random baseline)",
        "ratio_sc3 1.000 is not below 1.0 (held-out SC3 no better than the random baseline)",
    ]
    assert quality.problems({**GOOD, "hand_mAP": 0.5, "ratio_sc2": 0.999}) == []  # at the mAP floor passes
    assert quality.problems({**GOOD, "foot_mAP": math.nan}) == [
        "foot_mAP nan is below the floor 0.5 (held-out detector mAP at IoU 0.6)"]  # not measured: flagged
    assert quality.problems({"ratio_sc1": 0.3}) == []  # figures not reported are not checked
    demo = Manifest.model_validate_json((DEMO_BUNDLE / "bundle.json").read_text())
    assert quality.check(demo.metrics["held_out"])["ok"]  # the shipped demo bundle passes


def test_quality_round_trips_through_bundle_json_and_old_bundles_still_load():
    from pydantic import ValidationError

    demo = Manifest.model_validate_json((DEMO_BUNDLE / "bundle.json").read_text())
    assert "quality" not in demo.metrics and demo.quality_warning() is None  # made before the check
    flagged = demo.model_copy(update={"metrics": {**demo.metrics, "quality": quality.check(BAD)}})
    again = Manifest.model_validate_json(flagged.model_dump_json())
    assert again == flagged and again.metrics["quality"]["ok"] is False
    assert again.quality_warning() == ("the model bundle failed its quality check when it was trained: "
                                       + "; ".join(quality.problems(BAD)))
    passed = demo.model_copy(update={"metrics": {**demo.metrics, "quality": quality.check(GOOD)}})
    assert Manifest.model_validate_json(passed.model_dump_json()).quality_warning() is None
    raw = json.loads(demo.model_dump_json())
    raw["metrics"]["quality"] = {"problems": "none"}
    with pytest.raises(ValidationError, match=r"metrics\n.*quality: ok: Field required; problems: Input should be"):
        Manifest.model_validate(raw)


def test_the_scoring_job_warns_when_it_loads_a_flagged_bundle(tiny_bundle, tmp_path, capsys):
    from ra2batch.models.bundle import recalibrate

    assert load_models(tiny_bundle, None)[0].manifest.quality_warning() is None
    assert capsys.readouterr().err == ""
    flagged = str(tmp_path / "flagged")
    shutil.copytree(tiny_bundle, flagged)
    recalibrate(flagged, {}, _held_out(BAD), quality=quality.check(_held_out(BAD)))
    bundle, _, _ = load_models(flagged, None)
    warning = bundle.manifest.quality_warning()
    assert capsys.readouterr().err == f"warning: {warning}\n"
    assert "hand_mAP 0.000 is below the floor 0.5" in warning and "ratio_sc1 6.400 is not below 1.0" in warning
    summary = JobSummary(kind="score", input="in", output="out", run_id="r", version=1, listed=1, scored=1,
                         removed=0, images_ok=1, images_error=0, patients=1, joints=86, seconds=1.0,
                         model_version=bundle.model_version, bundle_warning=warning)
    assert f"\nwarning: {warning}\n" in summary.format()


@pytest.mark.parametrize("figures, code", [(GOOD, 0), (BAD, 3)])
def test_train_exits_3_naming_each_figure_when_its_bundle_is_flagged(monkeypatch, capsys, figures, code):
    import ray.data

    import ra2batch.cluster
    from ra2batch.cli import main
    from ra2batch.training import pipeline

    held_out = _held_out(figures)
    monkeypatch.setattr(ra2batch.cluster, "connect", lambda address: "local")
    monkeypatch.setattr(ray.data.DataContext.get_current(), "enable_progress_bars", True)  # main turns them off
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: {"held_out": held_out, "quality": quality.check(held_out)})
    assert main(["train", "--data", "d", "--out", "my-bundle"]) == code
    captured = capsys.readouterr()
    assert "hand_mAP" in captured.out  # the summary table, as before
    if code == 0:
        assert captured.err == ""
        return
    assert captured.err.splitlines() == [
        "ra2batch train: warning: the bundle written to my-bundle failed its quality check (flagged in its "
        "bundle.json, metrics.quality; exit code 3):", *(f"  {p}" for p in quality.problems(held_out))]
