"""Nightly incremental rescoring on a moto S3 server: what is scored, what is rebuilt, what is kept,
and which data files a merge rewrites."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
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


def _config(**settings):
    from ra2batch.job import JobConfig

    return JobConfig(**settings)


def _data_files(uri: str, options=None) -> dict[str, set[tuple[int, str]]]:
    """The data files of each table in the published version, as ``(bucket, path)``."""
    from ra2batch.output.delta import data_files

    snapshot = _snapshot(uri, options)
    return {name: {(b, path) for b, files in data_files(snapshot.table(name)).items() for path, _ in files}
            for name in ("images", "joints", "patients", "catalogue")}


def nightly_rescore(*args, **kwargs):
    """Imported late: Ray reads its token settings when first imported (the ray_local fixture sets them)."""
    from ra2batch.nightly import nightly_rescore as run

    return run(*args, **kwargs)


def _put(bucket, prefix: str, pid: str, limb: str, data: bytes) -> None:
    bucket.location(prefix).write_bytes(data, f"{pid}-{limb}.jpg")


def _snapshot(uri: str, options=None):
    from ra2batch.output import open_output

    return open_output(uri, options)


def _table(bucket, name: str) -> pd.DataFrame:
    if name == "runs":
        from ra2batch.output import history

        runs = history(f"{bucket.uri}/out", bucket.options)
        return runs[runs["state"] == "published"]
    from ra2batch.output import TABLES

    df = _snapshot(f"{bucket.uri}/out", bucket.options).to_pandas(name)
    return df.sort_values(list(TABLES[name].key), ignore_index=True)


def test_second_run_scores_nothing_and_three_new_images_rebuild_three_patients(
        s3_bucket, source_images, tiny_bundle, warm_pool):
    pids = [f"P{i:03d}" for i in range(100)]
    for pid in pids:
        for limb in LIMBS:
            if not (pid in pids[:3] and limb == "RF"):  # three patients arrive without their right foot
                _put(s3_bucket, "archive", pid, limb, source_images[limb])
    args = dict(input=f"{s3_bucket.uri}/archive", output=f"{s3_bucket.uri}/out", models=tiny_bundle,
                storage_options=s3_bucket.options)

    first = nightly_rescore(**args, config=_config(buckets=8))
    assert (first.listed, first.scored, first.skipped, first.removed) == (397, 397, 0, 0)
    assert first.patients == 100
    before = _table(s3_bucket, "patients").set_index("Patient_ID")
    assert len(before) == 100 and before.loc["P000", "limbs"] == "LF,LH,RH"

    second = nightly_rescore(**args)
    assert (second.scored, second.skipped, second.patients) == (0, 397, 0)
    files_before = _data_files(f"{s3_bucket.uri}/out", s3_bucket.options)

    for pid in pids[:3]:
        _put(s3_bucket, "archive", pid, "RF", source_images["RF"])
    third = nightly_rescore(**args)
    assert (third.listed, third.scored, third.skipped, third.patients) == (400, 3, 397, 3)
    # a merge: only the data files of the buckets of the three patients are replaced
    files_after = _data_files(f"{s3_bucket.uri}/out", s3_bucket.options)
    snapshot = _snapshot(f"{s3_bucket.uri}/out", s3_bucket.options)
    touched = {b for b in snapshot.to_pandas("patients").set_index("Patient_ID").loc[pids[:3], "bucket"]}
    assert snapshot.buckets == 8 and len(touched) < 8
    for name in ("images", "joints", "patients", "catalogue"):
        kept = {f for f in files_before[name] if f[0] not in touched}
        assert kept <= files_after[name], name
        assert {f for f in files_after[name] - files_before[name]} and all(
            b in touched for b, _ in files_after[name] - files_before[name]), name

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
    assert not joints.duplicated(["path", "joint"]).any()
    catalogue = _table(s3_bucket, "catalogue")
    assert len(catalogue) == 400 and set(catalogue["status"]) == {"ok"}
    runs = _table(s3_bucket, "runs").sort_values("version")
    assert list(runs["scored"]) == [397, 0, 3] and list(runs["removed"]) == [0, 0, 0]
    assert list(runs["version"]) == [1, 2, 3] and list(runs["run_id"]) == [first.run_id, second.run_id, third.run_id]


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
    images = _snapshot(str(out)).to_pandas("images")
    assert set(images["model_version"]) == {second.model_version}

    (archive / "B2-LF.jpg").unlink()
    third = nightly_rescore(str(archive), str(out), models=other)
    assert (third.scored, third.removed, third.patients) == (0, 1, 1)
    snapshot = _snapshot(str(out))
    catalogue = snapshot.to_pandas("catalogue").set_index("path")
    assert catalogue.loc[str(archive / "B2-LF.jpg"), "status"] == "removed"
    assert len(snapshot.to_pandas("images")) == 7
    patients = snapshot.to_pandas("patients").set_index("Patient_ID")
    assert "missing_limb:LF" in list(patients.loc["B2", "qc_flags"])
    assert "missing_limb:LF" not in list(patients.loc["A1", "qc_flags"])

    (archive / "A1-LH.jpg").write_bytes(source_images["RH"])  # same name, other content
    fourth = nightly_rescore(str(archive), str(out), models=other)
    assert (fourth.scored, fourth.patients) == (1, 1)

    full = nightly_rescore(str(archive), str(out), models=other, full=True)
    assert full.scored == 7


@pytest.mark.parametrize("store", ["local", "s3"])
def test_readers_see_one_whole_version_while_a_nightly_run_commits(store, request, tmp_path, source_images,
                                                                   tiny_bundle, warm_pool):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        for limb in LIMBS:
            (archive / f"R{i}-{limb}.jpg").write_bytes(source_images[limb])
    if store == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        source, out, options = f"{bucket.uri}/archive", f"{bucket.uri}/out", bucket.options
        upload = lambda path: bucket.upload(path, f"archive/{path.name}")  # noqa: E731
        upload(archive)
    else:
        source, out, options, upload = str(archive), str(tmp_path / "out"), None, lambda path: None
    nightly_rescore(source, out, models=tiny_bundle, storage_options=options)
    seen, failures, stop = [], [], threading.Event()

    def read() -> None:
        try:
            snapshot = _snapshot(out, options)
            seen.append((snapshot.version, snapshot.read("patients", ["Patient_ID"]).num_rows,
                         snapshot.read("images", ["path"]).num_rows, snapshot.read("joints", ["path"]).num_rows))
        except Exception as e:  # any failed read is a half-written output
            failures.append(repr(e))

    def reader():
        while not stop.is_set():
            read()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for limb in LIMBS:
            (archive / f"R3-{limb}.jpg").write_bytes(source_images[limb])
            upload(archive / f"R3-{limb}.jpg")
        nightly_rescore(source, out, models=tiny_bundle, storage_options=options, full=True)
    finally:
        stop.set()
        t.join()
    read()
    assert not failures
    # every read saw all tables of one published version: the old one or the new one, never a mix
    assert len(seen) > 5 and {v for v, *_ in seen} == {1, 2}
    assert set(seen) == {(1, 3, 12, 3 * 86), (2, 4, 16, 4 * 86)}


def test_command_line_help_and_bad_input(tmp_path):
    for command in ([sys.executable, str(REPO / "jobs" / "nightly_rescore.py")], [sys.executable, "-m", "ra2batch", "nightly"]):
        r = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "--full" in r.stdout and "--input" in r.stdout and "--address" in r.stdout
        r = subprocess.run([*command, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"),
                            "--models", str(tmp_path / "no-bundle")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("ra2batch nightly: error:") and "Traceback" not in r.stderr
        r = subprocess.run([*command, "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "the following arguments are required: --input" in r.stderr
