"""The command line as a whole: fast help, one set of flag names, exit codes, finding the Ray cluster."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "ray", "pandas", "pyarrow", "duckdb", "deltalake", "timm")


def test_building_every_parser_imports_no_heavy_library():
    """``--help`` answers at once because no command's parser imports torch, Ray, pandas or pyarrow."""
    code = ("import sys; from ra2batch.cli import build_parser; build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_version_help_and_no_command():
    import ra2batch

    r = subprocess.run([sys.executable, "-m", "ra2batch", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"ra2batch {ra2batch.__version__}"
    r = subprocess.run([sys.executable, "-m", "ra2batch"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nightly" in r.stderr and "exit codes" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("command", ["synth", "train", "score", "nightly", "pool", "evaluate", "query", "describe",
                                     "report"])
def test_every_command_names_its_locations_the_same_way(command):
    from ra2batch.cli import build_parser

    def shown(parser) -> set[str]:  # the flags --help shows, nested queries' included
        nested = [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
        return {s for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}.union(
            *map(shown, nested))

    flags = shown(build_parser()._subparsers._group_actions[0].choices[command])
    assert not flags & {"--out", "--data", "--results", "--dest"}  # the old names are hidden aliases
    reads, writes = {"evaluate": ("--predictions", None), "pool": ("--models", None),
                     "synth": (None, "--output"), "describe": ("--input", None)}.get(command, ("--input", "--output"))
    assert reads is None or reads in flags
    assert writes is None or writes in flags
    if command in ("train", "score", "nightly", "pool"):
        assert "--address" in flags
    if command in ("train", "score", "nightly", "pool", "evaluate", "query", "describe", "report"):
        assert "--storage-options" in flags


def test_old_flag_names_still_work(tmp_path):
    from ra2batch.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["report", "--results", "out", "--dest", "site"])
    assert (args.input, args.output) == ("out", "site")
    args = parser.parse_args(["query", "--results", "a", "--input", "b", "above", "--threshold", "1", "--out", "x.csv"])
    assert (args.input, args.output) == (["a", "b"], "x.csv")
    args = parser.parse_args(["train", "--data", "cohort", "--out", "bundle"])
    assert (args.input, args.output) == ("cohort", "bundle")
    r = subprocess.run([sys.executable, "-m", "ra2batch", "report", "--output", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "the following arguments are required: --input" in r.stderr


def test_query_sql_cannot_reach_other_files(tmp_path, capsys):
    from ra2batch.cli import main
    from tests.helpers import write_output

    out = write_output(str(tmp_path / "out"), {})
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n42\n")
    for sql in (f"SELECT * FROM read_csv('{secret}')", f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'",
                "INSTALL httpfs", "SET enable_external_access = true"):
        assert main(["query", "--input", out, "sql", sql]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("disabled by configuration" in err or "locked" in err), err
    assert not (tmp_path / "x.csv").exists()
    assert main(["query", "--input", out, "sql", "--allow-external-access", f"SELECT a FROM read_csv('{secret}')"]) == 0
    assert "42" in capsys.readouterr().out
    assert main(["query", "--input", out, "sql", "SELECT count(*) AS n FROM patients"]) == 0


def test_describe_lists_every_field_with_its_meaning(tmp_path, capsys):
    """``describe``: the contract of this version in Markdown, CSV or JSON, or an output's tables as written."""
    import csv
    import io
    import json

    from ra2batch.catalogue import BY_COLUMN, COLUMNS
    from ra2batch.cli import main
    from ra2batch.output.dictionary import contract
    from tests.helpers import write_output

    assert main(["describe", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == sum(len(s) for s in contract().values()) and all(r["description"] for r in rows)
    scores = {r["field"]: r for r in rows if r["table"] == "patients" and r["field"] in BY_COLUMN}
    assert set(scores) == set(COLUMNS)
    assert all(r["range"] == f"0-{BY_COLUMN[c].max_score}" and r["unit"] == "SvdH points" for c, r in scores.items())
    assert scores["LF_mtp_J__3"]["description"].startswith("left MTP 3, narrowing; SvdH 0-4")
    assert main(["describe", "--format", "json"]) == 0
    tables = json.loads(capsys.readouterr().out)["tables"]
    assert list(tables) == ["images", "joints", "patients", "catalogue", "runs"]
    assert {f["field"]: f["range"] for f in tables["patients"]["fields"]}["RF_mtp_E__1"] == "0-10"
    assert main(["describe"]) == 0
    md = capsys.readouterr().out
    assert "## runs" in md and "| `LH_mcp_E__2` | double | SvdH points | 0-5 | left MCP 2, erosion; SvdH 0-5" in md

    out = write_output(str(tmp_path / "out"), {})
    assert main(["describe", "--input", out, "--format", "csv"]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out))) == rows
    assert main(["describe", "--input", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no scoring output" in err


def test_connect_follows_rays_own_rule_and_never_waits_forever(monkeypatch, tmp_path, capsys):
    """No RAY_ADDRESS and no cluster here: a new local instance. A cluster recorded here that is gone:
    a note and a local instance for a job, a clear error for a command that needs a standing cluster.
    An address that does not answer: an error naming it. ``num_cpus`` is never passed."""
    import socket

    import ray

    from ra2batch import cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()

    assert cluster.connect(None) == "a local Ray instance started for this command"
    assert calls[-1]["address"] == "local" and "num_cpus" not in calls[-1]
    with pytest.raises(cluster.ClusterError, match="no running Ray cluster"):
        cluster.connect(None, require_running=True)

    with socket.socket() as listening:  # a cluster recorded on this machine that answers
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        assert cluster.connect(None) == f"the Ray cluster at 127.0.0.1:{port} (from this machine)"
        assert calls[-1] == {"address": f"127.0.0.1:{port}", "log_to_driver": True}
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        assert cluster.connect(None).endswith("(from RAY_ADDRESS)")
        monkeypatch.delenv("RAY_ADDRESS")
    # now nothing listens there: the record is stale
    assert cluster.connect(None) == "a local Ray instance started for this command"
    assert "is not running; starting Ray locally" in capsys.readouterr().err
    with pytest.raises(cluster.ClusterError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} \(from this "
                                                   r"machine\) within 1 s"):
        cluster.connect(None, require_running=True)
    with pytest.raises(cluster.ClusterError, match=r"127.0.0.1:9 \(from --address\)"):
        cluster.connect("127.0.0.1:9")
    assert cluster.connect("local") == "a local Ray instance started for this command"


@pytest.mark.cluster
def test_score_beside_a_running_head_uses_it(ray_cluster, tiny_bundle, tmp_path):
    """RAY_ADDRESS unset and a head running here (as the warm-pool recipe starts one): the job joins it."""
    from tests.test_job_pipeline import write_archive

    write_archive(tmp_path / "archive", ["H1"])
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "ra2batch", "score", "--input", str(tmp_path / "archive"), "--output",
                        str(tmp_path / "out"), "--models", tiny_bundle], env=env, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"on 2 node\(s\) with 4 CPU\(s\), the Ray cluster at \S+:\d+ \(from this machine\)", r.stdout), \
        r.stdout
    r = subprocess.run([sys.executable, "-m", "ra2batch", "pool", "list"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "no warm model pools" in r.stdout, r.stderr[-2000:]
