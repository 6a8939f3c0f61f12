"""Nightly incremental rescoring on a moto S3 server: what is scored, what is rebuilt, what is kept."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ra2batch.catalogue import LIMBS
from ra2batch.synth import generate_cohort

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def source_images(tmp_path_factory) -> dict[str, bytes]:
    """Four small phantom radiographs (one per limb), reused under many patient ids."""
    d = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(d), patients=1, seed=11, scale=0.15, preview=False)
    return {limb: (d / "images" / f"SYN0001-{limb}.jpg").read_bytes() for limb in LIMBS}


def nightly_rescore(*args, **kwargs):
    """Imported late: Ray reads its token settings when first imported (the ray_local fixture sets them)."""
    from ra2batch.nightly import nightly_rescore as run

    return run(*args, **kwargs)


def _put(bucket, prefix: str, pid: str, limb: str, data: bytes) -> None:
    bucket.location(prefix).write_bytes(data, f"{pid}-{limb}.jpg")


def _table(bucket, name: str) -> pd.DataFrame:
    loc = bucket.location("out", name)
    return pq.read_table(loc.path, filesystem=loc.fs).to_pandas()


def test_second_run_scores_nothing_and_three_new_images_rebuild_three_patients(
        s3_bucket, source_images, tiny_bundle, ray_local):
    pids = [f"P{i:03d}" for i in range(100)]
    for pid in pids:
        for limb in LIMBS:
            if not (pid in pids[:3] and limb == "RF"):  # three patients arrive without their right foot
                _put(s3_bucket, "archive", pid, limb, source_images[limb])
    args = dict(input=f"{s3_bucket.uri}/archive", output=f"{s3_bucket.uri}/out", models=tiny_bundle,
                storage_options=s3_bucket.options)

    first = nightly_rescore(**args)
    assert (first.listed, first.scored, first.skipped, first.removed) == (397, 397, 0, 0)
    assert first.patients_rebuilt == 100
    before = _table(s3_bucket, "patients").set_index("Patient_ID")
    assert len(before) == 100 and before.loc["P000", "limbs"] == "LF,LH,RH"

    second = nightly_rescore(**args)
    assert (second.scored, second.skipped, second.patients_rebuilt) == (0, 397, 0)

    for pid in pids[:3]:
        _put(s3_bucket, "archive", pid, "RF", source_images["RF"])
    third = nightly_rescore(**args)
    assert (third.listed, third.scored, third.skipped, third.patients_rebuilt) == (400, 3, 397, 3)

    after = _table(s3_bucket, "patients").set_index("Patient_ID")
    assert len(after) == 100
    rebuilt = after["scored_at"] != before["scored_at"]
    assert sorted(after.index[rebuilt]) == pids[:3]
    assert (after.loc[pids[:3], "limbs"] == "LF,LH,RF,RH").all()
    # untouched patients keep their rows exactly
    pd.testing.assert_frame_equal(after.loc[pids[3:]].drop(columns="qc_flags"),
                                  before.loc[pids[3:]].drop(columns="qc_flags"))
    images = _table(s3_bucket, "images")
    assert len(images) == 400 and images["path"].is_unique
    joints = _table(s3_bucket, "joints")
    assert not joints.duplicated(["path", "column"]).any()
    catalogue = _table(s3_bucket, "catalogue")
    assert len(catalogue) == 400 and set(catalogue["status"]) == {"ok"}
    runs = _table(s3_bucket, "runs").sort_values("started")
    assert list(runs["scored"]) == [397, 0, 3] and list(runs["removed"]) == [0, 0, 0]


def test_new_model_version_rescores_everything_and_removed_files_are_marked(
        tmp_path, source_images, tiny_bundle_factory, tiny_bundle, ray_local):
    archive = tmp_path / "archive"
    archive.mkdir()
    for pid in ("A1", "B2"):
        for limb in LIMBS:
            (archive / f"{pid}-{limb}.jpg").write_bytes(source_images[limb])
    out = tmp_path / "out"
    first = nightly_rescore(str(archive), str(out), models=tiny_bundle)
    assert first.scored == 8

    other = tiny_bundle_factory(foot_min_score=0.5)  # same architecture, another model_version
    second = nightly_rescore(str(archive), str(out), models=other)
    assert (second.scored, second.skipped) == (8, 0)
    assert second.model_version != first.model_version
    images = pq.read_table(out / "images").to_pandas()
    assert set(images["model_version"]) == {second.model_version}

    (archive / "B2-LF.jpg").unlink()
    third = nightly_rescore(str(archive), str(out), models=other)
    assert (third.scored, third.removed, third.patients_rebuilt) == (0, 1, 1)
    catalogue = pq.read_table(out / "catalogue").to_pandas().set_index("path")
    assert catalogue.loc[str(archive / "B2-LF.jpg"), "status"] == "removed"
    assert len(pq.read_table(out / "images").to_pandas()) == 7
    patients = pq.read_table(out / "patients").to_pandas().set_index("Patient_ID")
    assert "missing_limb:LF" in list(patients.loc["B2", "qc_flags"])
    assert "missing_limb:LF" not in list(patients.loc["A1", "qc_flags"])

    (archive / "A1-LH.jpg").write_bytes(source_images["RH"])  # same name, other content
    fourth = nightly_rescore(str(archive), str(out), models=other)
    assert (fourth.scored, fourth.patients_rebuilt) == (1, 1)

    full = nightly_rescore(str(archive), str(out), models=other, full=True)
    assert full.scored == 7


def test_readers_never_see_a_half_written_table(tmp_path, source_images, tiny_bundle, ray_local):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        for limb in LIMBS:
            (archive / f"R{i}-{limb}.jpg").write_bytes(source_images[limb])
    out = tmp_path / "out"
    nightly_rescore(str(archive), str(out), models=tiny_bundle)
    seen, failures, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append((pq.read_table(out / "patients").num_rows, pq.read_table(out / "images").num_rows))
            except Exception as e:  # any failed read is a half-written table
                failures.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for limb in LIMBS:
            (archive / f"R3-{limb}.jpg").write_bytes(source_images[limb])
        nightly_rescore(str(archive), str(out), models=tiny_bundle, full=True)
    finally:
        stop.set()
        t.join()
    assert not failures
    # each table is either the old one or the new one, whole (tables are replaced one after another)
    assert len(seen) > 10
    assert {p for p, _ in seen} <= {3, 4} and {i for _, i in seen} <= {12, 16}


def test_command_line_help_and_bad_input(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "nightly_rescore.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--full" in r.stdout and "--input" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "nightly_rescore.py"), "--input", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "out"), "--models", str(tmp_path / "no-bundle")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("nightly_rescore: error:") and "Traceback" not in r.stderr
