"""Reading a scoring output: every consumer (query, report, evaluate, nightly, benchmarks) opens it here.

An output is versioned: its tables are Delta tables whose data files outlive the versions that
removed them, so a plain glob over the folder's Parquet files also sees rows that later runs
replaced. The one correct way in is the run manifest: :func:`open_output` reads the newest
``published`` row of ``runs`` (or the one ``as_of`` names) and opens every table at the version that
row names, so all tables come from one run (or one nightly state), even while another run commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ra2batch.output import delta
from ra2batch.output.runs import RUNS, RUNS_TABLE, published, read_runs
from ra2batch.output.schema import BUCKET, TABLES
from ra2batch.storage import Location, resolve


class OutputError(ValueError):
    """The location holds no readable output, or not the version asked for; one line a user can act on."""


@dataclass(frozen=True)
class Snapshot:
    """One published state of an output: ``run`` is its manifest (a ``runs`` row)."""

    out: Location
    run: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.run["version"])

    @property
    def model_version(self) -> str:
        return str(self.run["model_version"])

    @property
    def buckets(self) -> int:
        return int(self.run["buckets"])

    def table(self, name: str):
        """Table ``name`` (``images``, ``joints``, ``patients``, ``catalogue``) as a ``deltalake.DeltaTable``
        at this state's version."""
        if name not in TABLES:
            raise OutputError(f"unknown table {name!r}: an output has {', '.join(TABLES)} and {RUNS_TABLE}")
        version = int(self.run[f"{name}_version"])
        try:
            table = delta.open_table(self.out, name, version)
        except Exception as e:  # a vacuumed or deleted version: say which, in one line
            raise OutputError(f"cannot open {self.out.uri_of(name)} at version {version} (output version "
                              f"{self.version}): {str(e).splitlines()[0]}") from e
        if table is None:
            raise OutputError(f"{self.out.uri_of(name)} is missing: the output at {self.out.uri} is damaged")
        if name == "joints" and "column" in {f.name for f in table.schema().fields}:
            raise OutputError(f"{self.out.uri_of(name)} was written by ra2batch 0.1, whose joints field `column` "
                              "(a reserved word in SQL) is now `joint`: score the images again into a new --output")
        return table

    def dataset(self, name: str) -> pads.Dataset:
        """Table ``name`` at this state as a pyarrow dataset (DuckDB, Polars and pandas scan it lazily)."""
        return delta.dataset(self.table(name), self.out, name)

    def read(self, name: str, columns: Sequence[str] | None = None, filter: Any = None) -> pa.Table:
        """Rows of table ``name`` (``filter``: a ``pyarrow.compute`` expression), cast to its schema."""
        table = self.dataset(name).to_table(columns=list(columns) if columns else None, filter=filter)
        schema = TABLES[name].schema
        return table.cast(pa.schema([schema.field(c) for c in table.column_names]))

    def to_pandas(self, name: str, columns: Sequence[str] | None = None, filter: Any = None) -> pd.DataFrame:
        return self.read(name, columns, filter).to_pandas()

    def batches(self, name: str, columns: Sequence[str] | None = None, batch_size: int = 4096
                ) -> Iterator[pa.RecordBatch]:
        """Table ``name`` in record batches, bucket by bucket (bounded memory, whatever the table's size).

        Each data file is opened in turn and let go: a dataset's fragments keep their Parquet
        metadata once read (70 MB over the 256 files of a 320,000-radiograph patients table)."""
        files = sorted(((b, path) for b, fs in delta.data_files(self.table(name)).items() for path, _ in fs))
        table = TABLES[name]
        wanted = [c for c in (columns or table.schema.names)]
        for bucket, path in files:
            with self.out.fs.open_input_file(self.out.join(name, path)) as f:
                reader = pq.ParquetFile(f)
                for batch in reader.iter_batches(batch_size, columns=[c for c in wanted if c != BUCKET]):
                    if BUCKET in wanted:
                        batch = batch.append_column(BUCKET, pa.array([bucket] * batch.num_rows, pa.int64()))
                    yield batch.select(wanted)

    def runs(self) -> pa.Table:
        """The output's ``runs`` table: every run event up to this state's manifest (a small table)."""
        rows = delta.dataset(delta.open_table(self.out, RUNS_TABLE), self.out, RUNS_TABLE)
        return rows.to_table(filter=pads.field("at") <= pa.scalar(self.run["at"], RUNS.field("at").type))

    @property
    def predictions(self) -> str | None:
        """Path (in ``out``'s terms) of this state's predictions.csv as the run wrote it."""
        return self.out.join(self.run["predictions"]) if self.run.get("predictions") else None


def _as_of_row(manifests: list[dict[str, Any]], as_of: int | str | dt.datetime, uri: str) -> dict[str, Any]:
    """The manifest ``as_of`` names: an output version (``3``) or a time (the newest published at or before it)."""
    text = str(as_of).strip()
    if isinstance(as_of, int) or text.isdigit():
        found = [m for m in manifests if m["version"] == int(text)]
        if not found:
            raise OutputError(f"{uri} has no version {text}; its versions are "
                              f"{', '.join(str(m['version']) for m in manifests)}")
        return found[0]
    try:
        when = pd.Timestamp(as_of)
    except ValueError as e:
        raise OutputError(f"--as-of {text!r}: expected an output version (e.g. 3) or a time "
                          "(e.g. 2026-12-01T02:00, UTC unless it names a zone)") from e
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    found = [m for m in manifests if pd.Timestamp(m["at"]) <= when]
    if not found:
        raise OutputError(f"{uri} has no version published at or before {when:%Y-%m-%d %H:%M:%S} UTC "
                          f"(the first is from {pd.Timestamp(manifests[0]['at']):%Y-%m-%d %H:%M:%S} UTC)")
    return found[-1]


def open_output(uri: str, storage_options: dict[str, Any] | None = None,
                as_of: int | str | dt.datetime | None = None) -> Snapshot:
    """The published state of the output at ``uri`` (local or ``s3://``): the newest, or the one ``as_of``
    names (an output version, or a time). Raises :class:`OutputError` when there is none."""
    out = resolve(uri, storage_options)
    try:
        _, rows = read_runs(out)
    except OSError as e:
        raise OutputError(f"cannot read {uri}: {str(e).splitlines()[0]}") from e
    manifests = published(rows)
    if not manifests:
        if out.exists("patients", "part-00000.parquet"):
            raise OutputError(f"{uri} was written by ra2batch 0.1 (plain Parquet tables, before versioned Delta "
                              "outputs); score the archive again into a new --output")
        if rows:
            raise OutputError(f"{uri} has no finished run yet (its first run is still going, or stopped)")
        raise OutputError(f"{uri} holds no scoring output (no {RUNS_TABLE} table): is it a job's --output?")
    return Snapshot(out, manifests[-1] if as_of is None else _as_of_row(manifests, as_of, uri))


def history(uri: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every run event of the output at ``uri`` (the ``runs`` table), oldest first."""
    _, rows = read_runs(resolve(uri, storage_options))
    return pd.DataFrame(rows)
