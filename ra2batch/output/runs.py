"""The ``runs`` table: each run's record, the output's manifest, and the one-writer-at-a-time rule.

``runs`` is a Delta table with one row per event of a run: ``started`` when it takes the output,
then ``published`` (or ``failed``; ``abandoned`` for a run found dead). A ``published`` row is the
run manifest: it names the version of every table the run committed, the bundle and its
``model_version``, the crop geometry of each joint group, the job config and the ra2batch version.
Readers resolve every table through the newest ``published`` row, and a run publishes only after
all its tables are committed, in one atomic commit of that row: a run killed at any point leaves the
previous manifest, and every table version it names, in force.

One writer at a time: a run holds a lease (``_ra2batch/leases/RUN.json``, its heartbeat rewritten
every ``HEARTBEAT_S``) and commits its ``started`` row on top of the ``runs`` version in which it saw
no live lease, without retries, so of two runs that start together one commit fails and that run
sees the other's lease. A second writer is refused (:class:`OutputBusy`). A lease is dead when its
heartbeat is older than ``LEASE_S`` or its process is gone from this host; the next writer records
the dead run as ``abandoned`` and takes over.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

import ra2batch
from ra2batch.output import delta
from ra2batch.output.schema import TABLES, TIMESTAMP, described
from ra2batch.storage import Location

_COUNT = "files"
RUNS = pa.schema([
    described("run_id", pa.string(), "the run: its UTC start time to the microsecond and a random suffix (sortable)"),
    described("kind", pa.string(), "score (ra2batch score) | nightly (ra2batch nightly)"),
    described("state", pa.string(), "started | published (this row is the run's manifest) | failed | abandoned "
              "(the run stopped without finishing; its lease expired)"),
    described("at", TIMESTAMP, "when this event was committed (UTC)"),
    described("started_at", TIMESTAMP, "when the run started (UTC)"),
    described("version", pa.int64(), "output version a published row makes current (1, 2, ...); null otherwise"),
    described("host", pa.string(), "host name of the run's driver"),
    described("pid", pa.int64(), "process id of the run's driver on host"),
    described("ra2batch_version", pa.string(), "ra2batch version of the run"),
    described("input", pa.string(), "the archive the run scored (--input)"),
    described("bundle", pa.string(), "the model bundle the run scored with (--models)"),
    described("model_version", pa.string(), "content hash of the model bundle"),
    described("full", pa.bool_(), "true when every listed file was scored, false for a merge of what changed"),
    described("buckets", pa.int64(), "bucket count of the output's tables"),
    *[described(f"{name}_version", pa.int64(), f"Delta version of the {name} table a published row names")
      for name in TABLES],
    described("predictions", pa.string(), "this run's predictions.csv, relative to the output"),
    described("predictions_bytes", pa.int64(), "size of that predictions.csv", "bytes"),
    described("listed", pa.int64(), "files listed in the input", _COUNT),
    described("scored", pa.int64(), "files this run scored", _COUNT),
    described("skipped", pa.int64(), "listed files left as the previous run scored them", _COUNT),
    described("removed", pa.int64(), "files gone from the input since the previous run", _COUNT),
    described("images_ok", pa.int64(), "files this run scored with status ok", _COUNT),
    described("images_error", pa.int64(), "files this run could not decode (status error)", _COUNT),
    described("images_rejected", pa.int64(), "files this run decoded but found no limb in (status rejected)", _COUNT),
    described("patients", pa.int64(), "patients table rows (patient visits) this run wrote", "rows"),
    described("joints", pa.int64(), "joints table rows this run wrote", "rows"),
    described("config", pa.string(), "the job's settings (JobConfig), JSON"),
    described("crop_geometry", pa.string(), "each joint group's crop height, width, margin and mirroring, JSON"),
    described("error", pa.string(), "why the run failed or was abandoned (first line); null otherwise"),
], metadata={"description": "one row per run event; published rows are the output's manifests"})
RUNS_TABLE = "runs"
LEASES = "_ra2batch/leases"
HEARTBEAT_S = 10.0
LEASE_S = 120.0
TERMINAL = ("published", "failed", "abandoned")


class OutputBusy(RuntimeError):
    """Another run holds the output (or took it over while this one ran); the message says which and what to do."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_run_id() -> str:
    """Sortable and unique: UTC time to the microsecond plus a random suffix."""
    return f"{_now():%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"


def read_runs(out: Location) -> tuple[int, list[dict[str, Any]]]:
    """``(version of the runs table, its rows in commit order)``; ``(-1, [])`` before the first run."""
    table = delta.open_table(out, RUNS_TABLE)
    if table is None:
        return -1, []
    rows = delta.dataset(table, out, RUNS_TABLE).to_table().sort_by([("at", "ascending"), ("run_id", "ascending")])
    return table.version(), rows.to_pylist()


def published(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifests among ``rows`` (``read_runs``), oldest first."""
    return sorted((r for r in rows if r["state"] == "published"), key=lambda r: r["version"])


def _append(out: Location, rows: list[dict[str, Any]], expect_version: int, run_id: str) -> int:
    """Write ``rows`` as one data file of ``runs`` and commit it on top of ``expect_version``."""
    relative = f"part-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
    target = out.join(RUNS_TABLE, relative)
    out.fs.create_dir(out.join(RUNS_TABLE), recursive=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RUNS), target, filesystem=out.fs)
    record = {"op": "add", "path": relative, "size": out.fs.get_file_info(target).size,
              "stats": json.dumps({"numRecords": len(rows)})}
    return delta.commit(out, RUNS_TABLE, RUNS, [record], overwrite=False, partitioned=False,
                        metadata={"ra2batch.run_id": run_id, "ra2batch.state": rows[-1]["state"]},
                        expect_version=expect_version)


def _lease_path(run_id: str) -> str:
    return f"{LEASES}/{run_id}.json"


def _read_lease(out: Location, run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(out.read_bytes(_lease_path(run_id)))
    except (FileNotFoundError, ValueError):
        return None
    except OSError as e:  # pyarrow's S3 filesystem reports a missing key as a plain OSError
        if "does not exist" in str(e) or "NoSuchKey" in str(e):
            return None
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_alive(lease: Mapping[str, Any] | None, now: dt.datetime | None = None) -> bool:
    """Whether the run holding ``lease`` is still running, as far as this process can tell."""
    if lease is None:
        return False
    if lease["host"] == socket.gethostname() and not _pid_alive(int(lease["pid"])):
        return False
    age = ((now or _now()) - dt.datetime.fromisoformat(lease["heartbeat"])).total_seconds()
    return age < LEASE_S


def _describe(row: Mapping[str, Any], lease: Mapping[str, Any]) -> str:
    beat = (_now() - dt.datetime.fromisoformat(lease["heartbeat"])).total_seconds()
    return (f"run {row['run_id']} (ra2batch {row['kind']}, pid {lease['pid']} on {lease['host']}, started "
            f"{row['started_at']:%Y-%m-%d %H:%M:%S} UTC, last heartbeat {beat:.0f} s ago)")


@dataclass
class RunLease:
    """This process's hold on an output: its ``started`` row is committed and its heartbeat runs.

    ``current`` is the manifest in force when the run started (``None`` for a new output).
    """

    out: Location
    run_id: str
    base: dict[str, Any]
    runs_version: int
    current: dict[str, Any] | None
    published: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat: threading.Thread | None = None

    @classmethod
    def acquire(cls, out: Location, kind: str, info: Mapping[str, Any]) -> RunLease:
        """Take ``out`` for a new run of ``kind`` (``score``/``nightly``) described by ``info`` (runs columns).

        Raises :class:`OutputBusy` when another run is writing to it.
        """
        run_id = new_run_id()
        started = _now()
        base = {"run_id": run_id, "kind": kind, "started_at": started, "host": socket.gethostname(),
                "pid": os.getpid(), "ra2batch_version": ra2batch.__version__, **info}
        lease = {"run_id": run_id, "host": base["host"], "pid": base["pid"], "started": started.isoformat()}
        for _ in range(5):
            version, rows = read_runs(out)
            ended = {r["run_id"] for r in rows if r["state"] in TERMINAL}
            open_runs = [r for r in rows if r["state"] == "started" and r["run_id"] not in ended]
            leases = [(r, _read_lease(out, r["run_id"])) for r in open_runs]
            live = [(r, le) for r, le in leases if lease_alive(le)]
            if live:
                row, held = live[0]
                raise OutputBusy(f"{out.uri} is being written by {_describe(row, held)}; wait for it to finish "
                                 f"(a killed run's lease expires {LEASE_S:g} s after its last heartbeat)")
            out.write_bytes(json.dumps({**lease, "heartbeat": _now().isoformat()}).encode(), _lease_path(run_id))
            now = _now()
            events = [{**r, "state": "abandoned", "at": now, "error": "the run stopped without finishing "
                       "(its lease expired); the output kept the previous run's tables"} for r, _ in leases]
            try:
                runs_version = _append(out, [*events, {**base, "state": "started", "at": now}], version, run_id)
            except delta.CommitConflict:
                out.fs.delete_file(out.join(_lease_path(run_id)))
                continue
            manifests = published(rows)
            held = cls(out, run_id, base, runs_version, manifests[-1] if manifests else None)
            held._start_heartbeat(lease)
            return held
        raise OutputBusy(f"{out.uri}: other runs kept starting while this one tried to; try again")

    def _start_heartbeat(self, lease: dict[str, Any]) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self.out.write_bytes(json.dumps({**lease, "heartbeat": _now().isoformat()}).encode(),
                                     _lease_path(self.run_id))

        self._beat = threading.Thread(target=beat, name=f"ra2batch-lease-{self.run_id}", daemon=True)
        self._beat.start()

    @property
    def next_version(self) -> int:
        """The output version this run publishes as."""
        return (self.current["version"] if self.current else 0) + 1

    def metadata(self) -> dict[str, str]:
        """Commit info for this run's table commits (``DeltaTable.history()`` shows it)."""
        return {"ra2batch.run_id": self.run_id, "ra2batch.kind": self.base["kind"],
                "ra2batch.model_version": str(self.base.get("model_version")),
                "ra2batch.output_version": str(self.next_version)}

    def publish(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Commit this run's manifest (table versions, counts, ...): from now on readers see its tables."""
        row = {**self.base, **manifest, "state": "published", "at": _now(), "version": self.next_version}
        try:
            self.runs_version = _append(self.out, [row], self.runs_version, self.run_id)
        except delta.CommitConflict as e:
            raise OutputBusy(f"{self.out.uri}: another run took the output over while this one ran (this run's "
                             "lease must have expired); this run's results were not published") from e
        self.published = True
        return row

    def fail(self, error: str) -> None:
        """Record that the run stopped with ``error`` before publishing (best effort: the output is
        consistent either way; after publishing there is nothing to record, ``writer.repair`` finishes)."""
        if self.published:
            return
        try:
            self.runs_version = _append(self.out, [{**self.base, "state": "failed", "at": _now(),
                                                    "error": error}], self.runs_version, self.run_id)
        except Exception:  # noqa: BLE001 - the run is failing already; its lease ending is what matters
            pass

    def release(self) -> None:
        """Stop the heartbeat and give the output back."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self.out.fs.delete_file(self.out.join(_lease_path(self.run_id)))
        except OSError:
            pass
