"""The reduce stage: one bucket's stream rows become that bucket's rows of every output table.

Ray Data's shuffle (``groupby("bucket").map_groups``) brings every row of a bucket, so every row of
its patients, to one task, which assembles them (``job.assemble``: the file used per limb, NaN and QC
flags for joints not found, totals, review and fill flags) and writes the bucket's data files itself.
It returns one small row: the files it added and removed (the driver commits them) and counts, with
a bounded sample of error and duplicate messages. No image or joint row goes through the driver.

A full run (``score``) writes every bucket from its new rows only. A merge (``nightly``) also reads
the bucket's current files: the patients the run touched (a file scored or removed) are rebuilt from
their kept and new rows, every file that holds one of their rows is rewritten with its other rows
kept, and a bucket's new rows otherwise go to one new file. So a nightly run rewrites only the files
of the patients it touched. A bucket that has gathered ``MAX_FILES_PER_BUCKET`` files of a table is
compacted into one as it is rewritten.

Inputs are ``tables.STREAM`` rows (``record`` ``image`` or ``joint``, without crops) and, for files
that vanished from the archive, ``removed`` rows carrying the file's identity.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ra2batch.catalogue import ID_COLUMN
from ra2batch.job.assemble import REJECTED, assemble_patients, choose_images, with_fill_flags
from ra2batch.output.files import ACTION, read_bucket_file, removal, write_bucket
from ra2batch.output.schema import BUCKET, CATALOGUE, IMAGES, JOINTS, PATIENTS, TABLES, Table
from ra2batch.storage import Location

MAX_FILES_PER_BUCKET = 8
#: Messages a bucket reports (files in error or rejected, duplicates; the smallest paths first); the
#: driver keeps as many overall.
SAMPLE = 20

#: What each bucket reports to the driver.
RESULT = pa.schema([
    pa.field(BUCKET, pa.int64()), pa.field("actions", pa.list_(ACTION)),
    pa.field("scored", pa.int64()), pa.field("removed", pa.int64()),
    pa.field("images_ok", pa.int64()), pa.field("images_error", pa.int64()), pa.field("images_rejected", pa.int64()),
    pa.field("patients", pa.int64()), pa.field("joints", pa.int64()),
    pa.field("errors", pa.list_(pa.string())), pa.field("duplicates", pa.int64()),
    pa.field("duplicate_messages", pa.list_(pa.string())),
])


@dataclass(frozen=True)
class ReducePlan:
    """Everything a reduce task needs besides its rows (pickled to every task).

    ``existing``: for a merge, the current data files of each table by bucket (``output.delta.data_files``);
    empty for a full run, which writes every table anew.
    """

    out: Location
    run_id: str
    model_version: str
    scored_at: dt.datetime
    medians: dict[str, float]
    existing: dict[str, dict[int, list[tuple[str, int]]]] = field(default_factory=dict)


def _key(rows: pa.Table) -> pa.ChunkedArray:
    """``Patient_ID`` and visit joined into one comparable value (null without a Patient_ID)."""
    return pc.binary_join_element_wise(rows[ID_COLUMN], pc.fill_null(rows["visit"], ""), "\x1f")


def _isin(values: pa.ChunkedArray, wanted: set[str]) -> pa.ChunkedArray:
    return pc.fill_null(pc.is_in(values, value_set=pa.array(sorted(wanted), pa.string())), False)


def _conform(rows: pa.Table, schema: pa.Schema, **values: pa.Array) -> pa.Table:
    """``rows`` in ``schema``'s columns: ``values`` where given, else the row's own, else nulls."""
    n = rows.num_rows
    columns = [values[f.name] if f.name in values else rows[f.name] if f.name in rows.column_names
               else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _with_run(rows: pa.Table, plan: ReducePlan, schema: pa.Schema, bucket: int) -> pa.Table:
    """``rows`` in ``schema``'s columns, with this run's ``model_version``, ``scored_at`` and the bucket."""
    n = rows.num_rows
    return _conform(rows, schema, model_version=pa.array([plan.model_version] * n, pa.string()),
                    scored_at=pa.array([plan.scored_at] * n, schema.field("scored_at").type),
                    **{BUCKET: pa.array([bucket] * n, pa.int64())})


def _from_pandas(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    if not len(df):  # pandas gives an empty frame's columns no useful types
        return schema.empty_table()
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


class _Bucket:
    """One bucket's current files of each table, read on demand."""

    def __init__(self, plan: ReducePlan, bucket: int):
        self.plan, self.bucket = plan, bucket
        self.files = {name: [(path, size, read_bucket_file(plan.out, TABLES[name], bucket, path))
                             for path, size in plan.existing.get(name, {}).get(bucket, [])]
                      for name in TABLES}

    def rows(self, name: str) -> pa.Table:
        tables = [rows for _, _, rows in self.files[name]]
        return pa.concat_tables(tables) if tables else TABLES[name].schema.empty_table()

    def replace(self, table: Table, touched, new_rows: pa.Table, sort_by: list[str]) -> list[dict[str, Any]]:
        """Write ``new_rows`` in place of every current row that ``touched(rows) -> mask`` selects:
        each file holding such a row is rewritten with its other rows kept; returns the actions."""
        files = self.files[table.name]
        hit = [(path, size, rows) for path, size, rows in files if pc.any(touched(rows)).as_py()]
        if len(files) >= MAX_FILES_PER_BUCKET:
            hit = files
        kept = [rows.filter(pc.invert(touched(rows))) for _, _, rows in hit]
        content = pa.concat_tables([*kept, new_rows.select(table.schema.names).cast(table.schema)])
        actions = [removal(table, self.bucket, path, size) for path, size, _ in hit]
        if content.num_rows:
            content = content.sort_by([(c, "ascending") for c in sort_by])
            actions.append(write_bucket(self.plan.out, table, self.bucket, content, self.plan.run_id))
        return actions


def reduce_bucket(rows: pa.Table, plan: ReducePlan) -> pa.Table:
    """Assemble and write one bucket (``rows``: all of its stream and removed rows); returns one ``RESULT`` row."""
    bucket = int(rows[BUCKET][0].as_py())
    record = rows["record"]
    new_images = rows.filter(pc.equal(record, "image"))
    new_joints = rows.filter(pc.equal(record, "joint"))
    gone = rows.filter(pc.equal(record, "removed"))
    current = _Bucket(plan, bucket)

    replaced = set(new_images["path"].to_pylist()) | set(gone["path"].to_pylist())
    affected = {k for k in pc.unique(pa.concat_arrays(
        [_key(new_images).combine_chunks(), _key(gone).combine_chunks()])).to_pylist() if k is not None}

    def of_patients(t: pa.Table):
        return pc.or_(_isin(_key(t), affected), _isin(t["path"], replaced))

    # images: the touched patients' kept files and this run's files; the file used per limb chosen anew
    old_images = current.rows("images")
    kept_images = old_images.filter(pc.and_(of_patients(old_images), pc.invert(_isin(old_images["path"], replaced))))
    images = pd.concat([kept_images.to_pandas(), _with_run(new_images, plan, IMAGES, bucket).to_pandas()],
                       ignore_index=True).sort_values("path", ignore_index=True)
    images["chosen"], duplicates = choose_images(images)
    images_out = _from_pandas(images, IMAGES)

    # joints: of the files used, kept ones as they were scored, new ones from this run
    old_joints = current.rows("joints")
    kept_joints = old_joints.filter(pc.and_(of_patients(old_joints), pc.invert(_isin(old_joints["path"], replaced))))
    joints = pa.concat_tables([kept_joints, _with_run(new_joints, plan, JOINTS, bucket)])
    joints = joints.filter(_isin(joints["path"], set(images.loc[images["chosen"], "path"])))
    keys = joints.select([ID_COLUMN, "visit", "limb", "path", "joint", "score", "crop_class", "review"]).to_pandas()

    # patients: rebuilt whole from their images and joints
    patients = assemble_patients(images, keys)
    patients = with_fill_flags(patients, plan.medians).assign(
        model_version=plan.model_version, scored_at=plan.scored_at, **{BUCKET: bucket})
    patients_out = _from_pandas(patients, PATIENTS)

    # catalogue: this run's files as listed and scored; vanished files marked removed
    catalogue_new = images_out.filter(_isin(images_out["path"], set(new_images["path"].to_pylist())))
    old_catalogue = current.rows("catalogue")
    gone_rows = old_catalogue.filter(_isin(old_catalogue["path"], set(gone["path"].to_pylist())))
    n_gone = gone_rows.num_rows
    catalogue = pa.concat_tables([
        _conform(catalogue_new, CATALOGUE),
        _conform(gone_rows, CATALOGUE, status=pa.array(["removed"] * n_gone, pa.string()),
                 removed_at=pa.array([plan.scored_at] * n_gone, CATALOGUE.field("removed_at").type)),
    ])

    actions = [
        *current.replace(TABLES["images"], of_patients, images_out, ["path"]),
        *current.replace(TABLES["joints"], of_patients, joints, [ID_COLUMN, "visit", "limb", "joint"]),
        *current.replace(TABLES["patients"], lambda t: _isin(_key(t), affected), patients_out, [ID_COLUMN, "visit"]),
        *current.replace(TABLES["catalogue"], lambda t: _isin(t["path"], replaced), catalogue, ["path"]),
    ]
    unscored = new_images.filter(pc.not_equal(new_images["status"], "ok")).sort_by("path")
    messages = [f"{p}: {m}" for p, m in zip(unscored["path"].to_pylist()[:SAMPLE], unscored["error"].to_pylist()[:SAMPLE])]
    rejected = int(pc.sum(pc.equal(unscored["status"], REJECTED)).as_py() or 0)
    return pa.Table.from_pylist([{
        BUCKET: bucket, "actions": actions, "scored": new_images.num_rows, "removed": gone.num_rows,
        "images_ok": new_images.num_rows - unscored.num_rows, "images_error": unscored.num_rows - rejected,
        "images_rejected": rejected,
        "patients": len(patients), "joints": joints.num_rows, "errors": messages,
        "duplicates": len(duplicates), "duplicate_messages": duplicates[:SAMPLE],
    }], schema=RESULT)
