"""Data files of the output tables, as the cluster's workers write and read them.

A worker writes each bucket's rows of a table as one Parquet file named after the run
(``bucket=B/part-RUN.parquet`` under the table), so a retried task overwrites its own file instead of
adding one, and returns a small :data:`ACTION` record; the driver commits those records to the
table's Delta log (``output.delta``). Nothing here imports deltalake, so workers stay light.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ra2batch.output.schema import BUCKET, Table
from ra2batch.storage import Location, is_remote

#: One file a run adds to (``op`` "add") or removes from ("remove") a table; ``path`` is relative to
#: the table's root, ``stats`` the Delta statistics JSON of an added file.
ACTION = pa.struct([
    pa.field("table", pa.string()), pa.field("op", pa.string()), pa.field("path", pa.string()),
    pa.field("size", pa.int64()), pa.field(BUCKET, pa.int64()), pa.field("records", pa.int64()),
    pa.field("stats", pa.string()),
])

def _stats(rows: pa.Table) -> str:
    """The file's Delta statistics: its row count only. Readers (delta-rs' pyarrow datasets among them)
    turn per-column statistics into guarantees about every row of a file, and partial ones into
    wrong guarantees, so none are claimed; files are skipped by their bucket instead."""
    return json.dumps({"numRecords": rows.num_rows})


def write_bucket(out: Location, table: Table, bucket: int, rows: pa.Table, run_id: str) -> dict[str, Any]:
    """Write ``rows`` (one bucket's, with ``table``'s columns) as that bucket's data file of this run;
    returns its ``add`` :data:`ACTION`."""
    relative = f"{BUCKET}={bucket}/part-{run_id}.parquet"
    target = out.join(table.name, relative)
    if not is_remote(out.uri):
        out.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    data = rows.select(table.file_schema.names).cast(table.file_schema)
    pq.write_table(data, target, filesystem=out.fs, compression="zstd")
    size = out.fs.get_file_info(target).size
    return {"table": table.name, "op": "add", "path": relative, "size": int(size), BUCKET: bucket,
            "records": data.num_rows, "stats": _stats(data)}


def removal(table: Table, bucket: int, path: str, size: int) -> dict[str, Any]:
    """The ``remove`` :data:`ACTION` of a data file of ``table``."""
    return {"table": table.name, "op": "remove", "path": path, "size": int(size), BUCKET: bucket,
            "records": None, "stats": None}


def read_bucket_file(out: Location, table: Table, bucket: int, path: str) -> pa.Table:
    """One data file of ``table`` (``path`` relative to the table), with its ``bucket`` column restored."""
    rows = pq.read_table(out.join(table.name, path), filesystem=out.fs, schema=table.file_schema)
    return rows.append_column(BUCKET, pa.array([bucket] * rows.num_rows, pa.int64())).select(table.schema.names)
