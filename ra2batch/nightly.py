"""Nightly incremental rescoring: score only what changed, rebuild only the patients it touches.

Beside the job's tables, ``--output`` holds:

- ``catalogue/``: one row per file ever seen: ``path``, ``size_bytes``, ``mtime`` (the store's
  modification time, UTC), ``content_hash``, ``Patient_ID``, ``visit``, ``limb``, ``model_version``,
  ``scored_at``, ``status`` (``ok`` | ``error`` | ``removed``), ``removed_at``.
- ``runs/``: one Parquet file per run (``run-<UTC time>.parquet``) with its start, end, counts of
  files scored, skipped, failed and removed, patients rebuilt, and ``model_version``.

A file is scored again when it is new, when its size or modification time changed, when it was scored
by another ``model_version``, or with ``full=True``. Files that disappeared are marked ``removed`` in
the catalogue and their rows leave the images and joints tables. Each table is replaced by writing
a hidden file and renaming it over the old one, so a concurrent reader sees the old table or the
new one, never a half-written one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ra2batch.catalogue import ID_COLUMN
from ra2batch.job.assemble import assemble_patients, choose_images, fill_predictions
from ra2batch.job.config import JobConfig
from ra2batch.job.inputs import fs_path, list_inputs
from ra2batch.job.pipeline import JobError, load_models, score_archive
from ra2batch.job.tables import IMAGES, JOINTS, PATIENTS, replace_parquet, write_table
from ra2batch.storage import Location, resolve

CATALOGUE = pa.schema([
    pa.field("path", pa.string()), pa.field("size_bytes", pa.int64()),
    pa.field("mtime", pa.timestamp("us", tz="UTC")), pa.field("content_hash", pa.string()),
    pa.field(ID_COLUMN, pa.string()), pa.field("visit", pa.string()), pa.field("limb", pa.string()),
    pa.field("model_version", pa.string()), pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    pa.field("status", pa.string()), pa.field("removed_at", pa.timestamp("us", tz="UTC")),
])
RUN = pa.schema([
    pa.field("run_id", pa.string()), pa.field("started", pa.timestamp("us", tz="UTC")),
    pa.field("ended", pa.timestamp("us", tz="UTC")), pa.field("input", pa.string()),
    pa.field("model_version", pa.string()), pa.field("full", pa.bool_()),
    pa.field("listed", pa.int64()), pa.field("scored", pa.int64()), pa.field("skipped", pa.int64()),
    pa.field("failed", pa.int64()), pa.field("removed", pa.int64()), pa.field("patients_rebuilt", pa.int64()),
])


@dataclass
class RunRecord:
    """What one nightly run did (also appended to ``runs/``)."""

    run_id: str
    started: dt.datetime
    ended: dt.datetime
    input: str
    model_version: str
    full: bool
    listed: int
    scored: int
    skipped: int
    failed: int
    removed: int
    patients_rebuilt: int

    def format(self, output: str) -> str:
        secs = (self.ended - self.started).total_seconds()
        return (f"nightly run {self.run_id} ({secs:.1f} s, model {self.model_version}): {self.listed} file(s) "
                f"listed; {self.scored} scored ({self.failed} in error), {self.skipped} unchanged, "
                f"{self.removed} removed; {self.patients_rebuilt} patient(s) rebuilt\n"
                f"  tables: {output}/patients, joints, images; catalogue: {output}/catalogue; runs: {output}/runs")


def _read(out: Location, name: str, schema: pa.Schema) -> pd.DataFrame:
    """A table under ``out`` as pandas (empty with ``schema``'s columns when it does not exist yet)."""
    if not out.exists(name):
        return schema.empty_table().to_pandas()
    return pq.read_table(out.join(name), filesystem=out.fs, schema=schema).to_pandas()


def _utc(t) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _mtimes(loc: Location, uris: list[str]) -> list[pd.Timestamp | None]:
    """The store's modification time of each file (UTC), ``None`` where it gives none."""
    infos = loc.fs.get_file_info([fs_path(u) for u in uris]) if uris else []
    return [_utc(i.mtime) for i in infos]


def plan_run(listing: pd.DataFrame, catalogue: pd.DataFrame, model_version: str, full: bool
             ) -> tuple[list[str], list[str]]:
    """``(paths to score, paths removed)`` given the current listing (with ``mtime``) and the catalogue."""
    live = catalogue[catalogue["status"] != "removed"].set_index("path")
    to_score = []
    for row in listing.itertuples(index=False):
        if full or row.path not in live.index:
            to_score.append(row.path)
            continue
        seen = live.loc[row.path]
        changed = (pd.isna(seen["size_bytes"]) != pd.isna(row.size_bytes)
                   or (not pd.isna(row.size_bytes) and int(seen["size_bytes"]) != int(row.size_bytes))
                   or seen["mtime"] != row.mtime)
        if changed or seen["model_version"] != model_version:
            to_score.append(row.path)
    removed = sorted(set(live.index) - set(listing["path"]))
    return to_score, removed


def _keys(df: pd.DataFrame) -> set[tuple[str, str]]:
    known = df[df[ID_COLUMN].notna()]
    return set(zip(known[ID_COLUMN], known["visit"].fillna("")))


def _in(df: pd.DataFrame, keys: set[tuple[str, str]]) -> pd.Series:
    return pd.Series([k in keys for k in zip(df[ID_COLUMN], df["visit"].fillna(""))], index=df.index, dtype=bool)


def nightly_rescore(
    input: str,
    output: str,
    models: str | None = None,
    manifest: str | None = None,
    config: JobConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    full: bool = False,
) -> RunRecord:
    """Bring ``output`` up to date with ``input``: score new, changed or stale files; rebuild their patients."""
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%S%fZ")
    bundle, models, _ = load_models(models, storage_options)
    in_loc, out = resolve(input, storage_options), resolve(output, storage_options)
    try:
        listing = list_inputs(input, manifest=manifest, storage_options=storage_options).files
    except (FileNotFoundError, ValueError) as e:
        raise JobError(str(e)) from e
    listing = listing.assign(mtime=_mtimes(in_loc, list(listing["path"])))
    catalogue = _read(out, "catalogue", CATALOGUE)
    to_score, removed = plan_run(listing, catalogue, bundle.model_version, full)

    images, joints = _read(out, "images", IMAGES), _read(out, "joints", JOINTS)
    patients = _read(out, "patients", PATIENTS)
    touched = set(to_score) | set(removed)
    affected = _keys(images[images["path"].isin(touched)]) | _keys(listing[listing["path"].isin(to_score)])
    if to_score:
        staging = out.join("_staging", run_id)
        score_archive(input, out.uri_of("_staging", run_id), models=models, manifest=manifest,
                      config=config, storage_options=storage_options, paths=to_score)
        new_images = _read(out, f"_staging/{run_id}/images", IMAGES)
        new_joints = _read(out, f"_staging/{run_id}/joints", JOINTS)
        out.fs.delete_dir(staging)
    else:
        new_images, new_joints = IMAGES.empty_table().to_pandas(), JOINTS.empty_table().to_pandas()

    images = pd.concat([images[~images["path"].isin(touched)], new_images], ignore_index=True)
    images = images.sort_values("path", ignore_index=True)
    images["chosen"], _ = choose_images(images)
    joints = pd.concat([joints[~joints["path"].isin(touched)], new_joints], ignore_index=True)

    now = pd.Timestamp.now(tz="UTC")
    rebuilt = assemble_patients(images[_in(images, affected)], joints[_in(joints, affected)])
    rebuilt = rebuilt.assign(model_version=bundle.model_version, scored_at=now)
    kept = patients[~_in(patients, affected)]
    patients = pd.concat([kept, rebuilt], ignore_index=True).sort_values([ID_COLUMN, "visit"], ignore_index=True)
    # fills are recomputed for every patient: the other side of a kept patient may not have changed,
    # but predictions.csv is rewritten whole
    patients["qc_flags"] = [[f for f in flags if not f.startswith("filled:")] for flags in patients["qc_flags"]]
    predictions, patients = fill_predictions(patients, bundle.label_medians)

    write_table(out, "images", images)
    write_table(out, "joints", joints.sort_values([ID_COLUMN, "visit", "limb", "column"], ignore_index=True))
    write_table(out, "patients", patients)
    out.write_bytes(predictions.to_csv(index=False).encode(), "predictions.csv")

    catalogue = _updated_catalogue(catalogue, listing, images, to_score, removed, now)
    replace_parquet(out, "catalogue", pa.Table.from_pandas(catalogue, preserve_index=False).cast(CATALOGUE))
    scored = images[images["path"].isin(to_score)]
    record = RunRecord(
        run_id=run_id, started=started, ended=dt.datetime.now(dt.timezone.utc), input=input,
        model_version=bundle.model_version, full=full, listed=len(listing), scored=len(to_score),
        skipped=len(listing) - len(to_score), failed=int((scored["status"] == "error").sum()),
        removed=len(removed), patients_rebuilt=len(rebuilt),
    )
    out.fs.create_dir(out.join("runs"), recursive=True)
    pq.write_table(pa.Table.from_pylist([asdict(record)], schema=RUN), out.join("runs", f"run-{run_id}.parquet"),
                   filesystem=out.fs)
    return record


def _updated_catalogue(catalogue: pd.DataFrame, listing: pd.DataFrame, images: pd.DataFrame,
                       to_score: list[str], removed: list[str], now: pd.Timestamp) -> pd.DataFrame:
    """The catalogue after a run: scored files updated, unchanged kept, vanished ones marked removed."""
    scored = images[images["path"].isin(to_score)].set_index("path")
    current = listing.set_index("path")
    rows = catalogue[~catalogue["path"].isin(set(to_score) | set(removed))].copy()
    rows = rows[~rows["path"].isin(current.index) | (rows["status"] != "removed")]
    fresh = pd.DataFrame({
        "path": to_score,
        "size_bytes": [current.loc[p, "size_bytes"] for p in to_score],
        "mtime": [current.loc[p, "mtime"] for p in to_score],
        "content_hash": [scored.loc[p, "content_hash"] if p in scored.index else None for p in to_score],
        ID_COLUMN: [current.loc[p, ID_COLUMN] for p in to_score],
        "visit": [current.loc[p, "visit"] for p in to_score],
        "limb": [current.loc[p, "limb"] for p in to_score],
        "model_version": [scored.loc[p, "model_version"] if p in scored.index else None for p in to_score],
        "scored_at": [now] * len(to_score),
        "status": [scored.loc[p, "status"] if p in scored.index else "error" for p in to_score],
        "removed_at": [pd.NaT] * len(to_score),
    })
    gone = catalogue[catalogue["path"].isin(removed)].assign(status="removed", removed_at=now)
    out = pd.concat([df for df in (rows, fresh, gone) if len(df)], ignore_index=True)
    if not len(out):
        return CATALOGUE.empty_table().to_pandas()
    return out.sort_values("path", ignore_index=True)
