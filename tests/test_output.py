"""Versioned outputs: readers always see the tables of one run, whatever happens to a run, on a local
disk and on S3; one writer at a time; earlier versions stay readable (lineage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.test_job_pipeline import write_archive


class Killed(BaseException):
    """A run stopped in its tracks (what a kill looks like to the code that was running)."""


@dataclass
class Store:
    """An archive and an output on one store; ``add`` puts one more patient's four radiographs in the archive."""

    archive: str
    out: str
    options: dict | None
    local_archive: Path
    bucket: object = None

    def add(self, pid: str) -> None:
        paths = write_archive(self.local_archive, [pid], seed=len(pid) + ord(pid[-1]))
        if self.bucket is not None:
            for p in paths:
                self.bucket.location("archive").write_bytes(p.read_bytes(), p.name)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    write_archive(tmp_path / "archive", ["K1", "K2"])
    if request.param == "local":
        return Store(str(tmp_path / "archive"), str(tmp_path / "out"), None, tmp_path / "archive")
    bucket = request.getfixturevalue("s3_bucket")
    return Store(bucket.upload(tmp_path / "archive", "archive"), f"{bucket.uri}/out", bucket.options,
                 tmp_path / "archive", bucket)


def _score(store: Store, models: str):
    from ra2batch.job import score_archive

    return score_archive(store.archive, store.out, models=models, storage_options=store.options)


def _score_warm(store: Store, models: str):
    """:func:`_score` on the module's warm pool."""
    from ra2batch.job import JobConfig, score_archive

    return score_archive(store.archive, store.out, models=models, storage_options=store.options,
                         config=JobConfig(model_pool="warm"))


def _state(store: Store) -> tuple[int, str, int, int, int, set]:
    """``(version, run_id, patients, images, joints, every scored_at in them)`` as a reader sees the output."""
    from ra2batch.output import open_output

    snapshot = open_output(store.out, store.options)
    tables = {name: snapshot.to_pandas(name) for name in ("patients", "images", "joints")}
    stamps = set().union(*(set(df["scored_at"]) for df in tables.values()))
    return (snapshot.version, snapshot.run["run_id"], len(tables["patients"]), len(tables["images"]),
            len(tables["joints"]), stamps)


def _predictions_csv(store: Store) -> pd.DataFrame:
    from ra2batch.storage import resolve

    loc = resolve(store.out, store.options)
    with loc.fs.open_input_stream(loc.join("predictions.csv")) as f:
        return pd.read_csv(f, dtype={"Patient_ID": str})


def _kill_in_reduce(m):
    from ra2batch.job import pipeline

    def killed(*args, **kwargs):
        raise Killed("killed in the reduce stage")

    m.setattr(pipeline, "reduce_and_write", killed)


def _kill_between_tables(m):
    from ra2batch.output import delta

    real = delta.commit

    def commit(out, name, *args, **kwargs):
        version = real(out, name, *args, **kwargs)
        if name == "images":
            raise Killed("killed after committing images, before joints")
        return version

    m.setattr(delta, "commit", commit)


def _kill_before_publishing(m):
    from ra2batch.output.runs import RunLease

    def publish(self, manifest):
        raise Killed("killed after every table commit, before the manifest")

    m.setattr(RunLease, "publish", publish)


def _kill_after_publishing(m):
    from ra2batch.job import pipeline

    def install(out, relative):
        raise Killed("killed after the manifest, before predictions.csv")

    m.setattr(pipeline, "install_predictions", install)


def test_a_run_killed_at_any_point_leaves_the_tables_of_one_run(store, warm_pool, tiny_bundle, monkeypatch):
    from ra2batch.evaluate import read_table
    from ra2batch.output import history
    from ra2batch.storage import resolve

    _score = _score_warm
    first = _score(store, tiny_bundle)
    before = _state(store)
    assert before[:5] == (1, first.run_id, 2, 8, 2 * 86) and len(before[5]) == 1
    dictionary = resolve(store.out, store.options).read_bytes("DATA_DICTIONARY.md").decode()
    assert "## patients" in dictionary and "| `LH_mcp_E__2` | double | SvdH points | 0-5 |" in dictionary
    store.add("K3")
    for kill in (_kill_in_reduce, _kill_between_tables, _kill_before_publishing):
        with monkeypatch.context() as m:
            kill(m)
            with pytest.raises(Killed):
                _score(store, tiny_bundle)
        # the run's committed tables (if any) are invisible: every table still reads as the first run's
        assert _state(store) == before, kill.__name__
        assert sorted(_predictions_csv(store)["Patient_ID"]) == ["K1", "K2"]
    runs = history(store.out, store.options)
    failed = runs[runs["state"] == "failed"]
    assert len(failed) == 3 and failed["error"].str.startswith("killed").all()

    # killed right after publishing: the new version is whole; predictions.csv is still the old copy,
    # but the output's published predictions are the new run's, and the next writer copies them
    with monkeypatch.context() as m:
        _kill_after_publishing(m)
        with pytest.raises(Killed):
            _score(store, tiny_bundle)
    version, _, patients, images, joints, stamps = _state(store)
    assert (version, patients, images, joints, len(stamps)) == (2, 3, 12, 3 * 86, 1)
    assert len(_predictions_csv(store)) == 2
    assert sorted(read_table(store.out, "predictions", store.options)["Patient_ID"]) == ["K1", "K2", "K3"]
    last = _score(store, tiny_bundle)
    assert _state(store)[:5] == (3, last.run_id, 3, 12, 3 * 86)
    assert sorted(_predictions_csv(store)["Patient_ID"]) == ["K1", "K2", "K3"]


def test_a_second_writer_is_refused_while_one_writes(store, warm_pool, tiny_bundle, capsys):
    from ra2batch.cli import main
    from ra2batch.job import JobError
    from ra2batch.output import history
    from ra2batch.output.runs import RunLease
    from ra2batch.storage import resolve

    held = RunLease.acquire(resolve(store.out, store.options), "nightly", {"model_version": "other"})
    try:
        with pytest.raises(JobError, match=rf"is being written by run {held.run_id} \(ra2batch nightly, pid {os.getpid()}"):
            _score(store, tiny_bundle)
        options = ["--storage-options", __import__("json").dumps(store.options)] if store.options else []
        assert main(["score", "--input", store.archive, "--output", store.out, "--models", tiny_bundle, *options]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "is being written by run" in err and "wait for it to finish" in err
    finally:
        held.release()
    # the holder is gone (no lease, no end recorded): the next run takes over and says what happened
    done = _score_warm(store, tiny_bundle)
    runs = history(store.out, store.options).set_index(["run_id", "state"])
    assert (held.run_id, "abandoned") in runs.index and (done.run_id, "published") in runs.index
    assert not any(r.startswith(held.run_id) and s == "published" for r, s in runs.index)


def test_of_two_runs_that_start_together_one_gets_the_output(store, monkeypatch):
    from ra2batch.output import OutputBusy
    from ra2batch.output import runs as runs_module
    from ra2batch.storage import resolve

    out = resolve(store.out, store.options)
    first = runs_module.RunLease.acquire(out, "score", {})
    real = runs_module.read_runs
    calls = []

    def stale(loc):  # the second run read the runs table before the first committed its start
        calls.append(1)
        return (-1, []) if len(calls) == 1 else real(loc)

    monkeypatch.setattr(runs_module, "read_runs", stale)
    try:
        with pytest.raises(OutputBusy, match=f"being written by run {first.run_id}"):
            runs_module.RunLease.acquire(out, "score", {})
    finally:
        first.release()
    assert len(calls) == 2  # its start commit failed on the taken version, then it saw the first run's lease
    leases = out.fs.get_file_info(__import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector(
        out.join(runs_module.LEASES), allow_not_found=True))
    assert leases == []


def test_a_run_killed_by_a_signal_is_taken_over_at_once_on_its_host(ray_local, tiny_bundle, tmp_path):
    from ra2batch.output import history

    store = Store(str(tmp_path / "archive"), str(tmp_path / "out"), None, tmp_path / "archive")
    write_archive(tmp_path / "archive", ["K1", "K2"])
    first = _score(store, tiny_bundle)
    store.add("K3")
    ray_tmp = tempfile.mkdtemp(prefix="ra2k", dir="/tmp")  # short: Ray's socket paths
    script = textwrap.dedent(f"""
        import os, signal
        import ray
        from ra2batch.output import delta
        real = delta.commit
        def commit(out, name, *args, **kwargs):
            version = real(out, name, *args, **kwargs)
            if name == "joints":
                os.kill(os.getpid(), signal.SIGKILL)
            return version
        delta.commit = commit
        ray.init(num_cpus=1, include_dashboard=False, _temp_dir={ray_tmp!r})
        from ra2batch.job import score_archive
        score_archive({store.archive!r}, {store.out!r}, models={tiny_bundle!r})
    """)
    try:
        killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _state(store)[:5] == (1, first.run_id, 2, 8, 2 * 86)
    assert list((tmp_path / "out" / "_ra2batch" / "leases").iterdir())  # its lease outlived it
    # its process is gone from this host, so the next run does not wait for the lease to expire
    done = _score(store, tiny_bundle)
    assert _state(store)[:5] == (2, done.run_id, 3, 12, 3 * 86)
    runs = history(store.out)
    abandoned = runs[runs["state"] == "abandoned"]
    assert len(abandoned) == 1 and abandoned["pid"].iloc[0] not in (os.getpid(), None)


def test_earlier_versions_stay_readable(tmp_path):
    from ra2batch.output import OutputError, open_output
    from tests.helpers import write_output

    out = str(tmp_path / "out")
    rows = [{"path": f"/a/P{i}-LH.jpg", "Patient_ID": f"P{i}", "limb": "LH", "status": "ok"} for i in range(3)]
    write_output(out, {"images": pd.DataFrame(rows[:2])})
    between = pd.Timestamp.now(tz="UTC")
    write_output(out, {"images": pd.DataFrame(rows)})
    assert len(open_output(out).to_pandas("images")) == 3
    assert len(open_output(out, as_of=1).to_pandas("images")) == 2 and open_output(out, as_of="1").version == 1
    assert open_output(out, as_of=between.isoformat()).version == 1
    assert open_output(out, as_of=pd.Timestamp.now(tz="UTC").isoformat()).version == 2
    with pytest.raises(OutputError, match="has no version 7; its versions are 1, 2"):
        open_output(out, as_of=7)
    with pytest.raises(OutputError, match="no version published at or before 2001-01-01"):
        open_output(out, as_of="2001-01-01")
    with pytest.raises(OutputError, match="expected an output version"):
        open_output(out, as_of="yesterday-ish")
    # every commit names its run and model version
    history = open_output(out).table("images").history()
    assert {h["ra2batch.output_version"] for h in history if "ra2batch.output_version" in h} == {"1", "2"}


def test_an_output_written_with_the_old_joints_field_name_is_refused_in_one_line(tmp_path, monkeypatch):
    """Outputs of ra2batch 0.1 named the joints table's RA2 column ``column``; reading one says what to do."""
    import pyarrow as pa

    from ra2batch.output import OutputError, open_output
    from ra2batch.output import schema
    from tests.helpers import write_output

    old = schema.JOINTS.set(schema.JOINTS.get_field_index("joint"), pa.field("column", pa.string()))
    monkeypatch.setitem(schema.TABLES, "joints", schema.Table("joints", old, ("path", "column")))
    out = write_output(str(tmp_path / "out"), {"joints": pd.DataFrame(
        [{"path": "/a/P1-LH.jpg", "Patient_ID": "P1", "limb": "LH", "column": "LH_mcp_E__2", "score": 1.0}])})
    monkeypatch.undo()
    with pytest.raises(OutputError, match="field `column` .* is now `joint`: score the images again"):
        open_output(out).read("joints")


def test_every_field_of_every_table_says_what_it_means():
    """Each field carries a description (and its unit and range where it has them); the 86 RA2 scores'
    come from the catalogue."""
    from ra2batch.catalogue import BY_COLUMN, COLUMNS
    from ra2batch.output.dictionary import contract

    schemas = contract()
    assert list(schemas) == ["images", "joints", "patients", "catalogue", "runs"]
    for name, schema in schemas.items():
        assert schema.metadata[b"description"].strip(), name
        for f in schema:
            assert f.metadata and f.metadata.get(b"description", b"").strip(), f"{name}.{f.name} has no description"
    patients = schemas["patients"]
    for c in COLUMNS:
        meta = patients.field(c).metadata
        assert (meta[b"unit"], meta[b"range"]) == (b"SvdH points", f"0-{BY_COLUMN[c].max_score}".encode()), c
    assert len({patients.field(c).metadata[b"description"] for c in COLUMNS}) == len(COLUMNS)
    described = {c: patients.field(c).metadata[b"description"].decode() for c in COLUMNS}
    assert described["LH_mcp_E__2"].startswith("left MCP 2, erosion; SvdH 0-5")
    assert described["RF_mtp_E__ip"].startswith("right big toe IP, erosion; SvdH 0-10")
    assert described["RH_wrist_J__radcar"].startswith("right wrist, radiocarpal, narrowing; SvdH 0-4")
    assert patients.field("Overall_Tol").metadata[b"range"] == b"0-448"
    assert schemas["joints"].field("box_x0").metadata[b"unit"] == b"pixels"


def test_written_data_files_and_delta_logs_carry_the_descriptions(tmp_path):
    """A reader outside ra2batch finds each field's meaning in the Parquet files and the Delta schema."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from ra2batch.output import open_output
    from ra2batch.output.dictionary import contract, entries, written
    from tests.helpers import ra2_table, write_output

    out = str(tmp_path / "out")
    image = {"path": "/a/P1-LH.jpg", "Patient_ID": "P1", "limb": "LH", "status": "ok"}
    write_output(out, {"images": pd.DataFrame([image]), "catalogue": pd.DataFrame([image]),
                       "joints": pd.DataFrame([{**image, "joint": "LH_mcp_E__2", "score": 1.0}]),
                       "patients": ra2_table({"P1": {"LH_mcp_E__2": 1.0}})})
    for name, schema in contract().items():
        files = sorted((tmp_path / "out" / name).rglob("*.parquet"))
        assert files, name
        for path in files:
            found = pq.read_schema(path)
            assert found.metadata[b"description"] == schema.metadata[b"description"], path
            assert {f.name: f.metadata for f in found} == {f.name: f.metadata for f in schema if f.name in found.names}
        table = DeltaTable(str(tmp_path / "out" / name))
        assert table.metadata().description == schema.metadata[b"description"].decode()
        assert {f.name: f.metadata for f in table.schema().fields} == {
            f.name: {k.decode(): v.decode() for k, v in f.metadata.items()} for f in schema}
    assert entries(written(open_output(out))) == entries(contract())
