"""The output tables' Delta logs, as the driver commits and reads them (delta-rs).

Workers write the data files (``output.files``); the driver turns their action records into one
commit per table. Every commit is made without retries on top of the version it was prepared
against, so a writer that lost a race fails (:class:`CommitConflict`) instead of silently rebasing
its changes on someone else's: on S3 through conditional writes, locally through an atomic rename.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions

from ra2batch.output.schema import BUCKET
from ra2batch.storage import Location


class CommitConflict(RuntimeError):
    """Another writer committed to the same table since this one read it."""


def open_table(out: Location, name: str, version: int | None = None) -> DeltaTable | None:
    """Table ``name`` under ``out`` at ``version`` (the latest when ``None``); ``None`` when there is no such table."""
    try:
        return DeltaTable(out.uri_of(name), version=version, storage_options=out.delta_options())
    except TableNotFoundError:
        return None


def data_files(table: DeltaTable) -> dict[int, list[tuple[str, int]]]:
    """The table's data files by bucket: ``{bucket: [(path relative to the table, size in bytes), ...]}``."""
    actions = pa.table(table.get_add_actions(flatten=True))
    files: dict[int, list[tuple[str, int]]] = {}
    for path, size, bucket in zip(actions["path"].to_pylist(), actions["size_bytes"].to_pylist(),
                                  actions[f"partition.{BUCKET}"].to_pylist()):
        files.setdefault(int(bucket), []).append((path, int(size)))
    return {b: sorted(f) for b, f in sorted(files.items())}


def dataset(table: DeltaTable, out: Location, name: str):
    """The table's version as a pyarrow dataset, read through ``out``'s own filesystem (the settings
    every other part of ra2batch uses)."""
    return table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(out.join(name), out.fs))


def _actions(records: Iterable[Mapping[str, Any]], partitioned: bool) -> list[AddAction | RemoveAction]:
    now = int(time.time() * 1000)
    out: list[AddAction | RemoveAction] = []
    for r in records:
        partition = {BUCKET: str(r[BUCKET])} if partitioned else {}
        if r["op"] == "add":
            out.append(AddAction(path=r["path"], size=int(r["size"]), partition_values=partition,
                                 modification_time=now, data_change=True, stats=r["stats"]))
        else:
            out.append(RemoveAction(r["path"], True, now, int(r["size"]), partition))
    return out


def commit(out: Location, name: str, schema: pa.Schema, records: Iterable[Mapping[str, Any]], *,
           overwrite: bool, metadata: Mapping[str, Any], partitioned: bool = True,
           expect_version: int | None = None) -> int:
    """Commit the data-file action ``records`` (``output.files.ACTION``) to table ``name``; returns the new version.

    ``overwrite`` replaces every file of the table (a full run); otherwise the records' adds and
    removes are applied to the version it is at (``expect_version``, when given, must be it). A table
    that does not exist yet is created, with the schema's ``description`` metadata as the table's.
    ``metadata`` goes into the commit's info, where ``DeltaTable.history()`` shows it. Raises
    :class:`CommitConflict` when another writer got there first.
    """
    actions = _actions(records, partitioned)
    partition_by = [BUCKET] if partitioned else None
    properties = CommitProperties(custom_metadata=dict(metadata), max_commit_retries=0)
    table = open_table(out, name)
    try:
        if table is None:
            if expect_version not in (None, -1):
                raise CommitConflict(f"table {out.uri_of(name)} does not exist; expected version {expect_version}")
            create_table_with_add_actions(out.uri_of(name), Schema.from_arrow(schema),
                                          [a for a in actions if isinstance(a, AddAction)], mode="error",
                                          partition_by=partition_by, storage_options=out.delta_options(),
                                          description=(schema.metadata or {}).get(b"description", b"").decode(),
                                          commit_properties=properties)
            return 0
        if expect_version is not None and table.version() != expect_version:
            raise CommitConflict(f"table {out.uri_of(name)} is at version {table.version()}, not {expect_version}")
        table.create_write_transaction(actions, mode="overwrite" if overwrite else "append", schema=schema,
                                       partition_by=partition_by, commit_properties=properties)
        return table.version() + 1
    except CommitFailedError as e:
        raise CommitConflict(f"another writer committed to {out.uri_of(name)} first ({e})") from e
    except OSError as e:
        if "already exists" in str(e):  # two writers creating the same table
            raise CommitConflict(f"another writer created {out.uri_of(name)} first") from e
        raise


def restore(out: Location, name: str, version: int, metadata: Mapping[str, Any]) -> int:
    """Make table ``name``'s latest version equal to its ``version`` again (a new commit); returns the new version."""
    table = open_table(out, name)
    table.restore(version, commit_properties=CommitProperties(custom_metadata=dict(metadata), max_commit_retries=0))
    return table.version()
