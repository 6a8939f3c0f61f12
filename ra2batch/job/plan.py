"""What a run writes: which listed files to score, which vanished, and how the output is bucketed.

Planned on the driver from the listing and, for a merge, the output's ``catalogue`` (a few columns
per file, never image or joint rows). A full run (``ra2batch score``, or the first run into an
output) scores every file into a freshly bucketed output. A nightly merge scores only what changed
and names the buckets whose files the reduce stage rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ra2batch.catalogue import ID_COLUMN
from ra2batch.job.tables import REDUCE
from ra2batch.output import delta
from ra2batch.output.reader import Snapshot
from ra2batch.output.buckets import BUCKET, RADIOGRAPHS_PER_BUCKET, bucket_count, bucket_of
from ra2batch.output.schema import TABLES

_LIMB_KEY = [ID_COLUMN, "visit", "limb"]


@dataclass
class RunPlan:
    """``files``: listing rows to score, with their ``bucket``; ``removed``: ``REDUCE`` rows of
    catalogued files gone from the archive; ``existing``: for a merge, the current data files of the
    buckets it touches (``output.delta.data_files``), by table."""

    files: pd.DataFrame
    removed: pa.Table
    buckets: int
    overwrite: bool
    listed: int
    existing: dict[str, dict[int, list[tuple[str, int]]]] = field(default_factory=dict)

    @property
    def partitions(self) -> int:
        """Shuffle partitions of the reduce stage: one per bucket it writes (all of a full run's, a
        merge's touched ones), but no more than one per ``RADIOGRAPHS_PER_BUCKET`` files it reduces:
        each partition costs an aggregator process, which a nightly run over three files does not need."""
        if self.overwrite:
            touched, files = self.buckets, self.listed
        else:
            touched = len(set(self.files[BUCKET]) | set(self.removed[BUCKET].to_pylist()))
            files = len(self.files) + self.removed.num_rows
        return max(1, min(touched, -(-files // RADIOGRAPHS_PER_BUCKET)))

    @property
    def skipped(self) -> int:
        return self.listed - len(self.files)

    @property
    def empty(self) -> bool:
        return not len(self.files) and not self.removed.num_rows


def _with_buckets(files: pd.DataFrame, buckets: int) -> pd.DataFrame:
    return files.assign(**{BUCKET: bucket_of(files[ID_COLUMN], files["path"], buckets)})


def full_plan(listing: pd.DataFrame, buckets: int | None) -> RunPlan:
    """Score every listed file into a new set of tables of ``buckets`` buckets (default: sized to the archive)."""
    n = buckets or bucket_count(len(listing))
    return RunPlan(_with_buckets(listing, n), REDUCE.empty_table(), n, overwrite=True, listed=len(listing))


def _isin(values: pd.Series, others) -> np.ndarray:
    """``values.isin(others)`` in Arrow (pandas' Arrow-backed strings do it in a Python loop)."""
    value_set = pa.array(list(others) if isinstance(others, set) else others, pa.string())
    return pc.fill_null(pc.is_in(pa.array(values, pa.string()), value_set=value_set), False).to_numpy(
        zero_copy_only=False)


def _keys(df: pd.DataFrame) -> pd.Series:
    return df[ID_COLUMN].astype(str) + "\x1f" + df["visit"].fillna("").astype(str) + "\x1f" + df["limb"].astype(str)


def merge_plan(listing: pd.DataFrame, current: Snapshot, model_version: str, full: bool) -> RunPlan:
    """Score the listed files that are new, changed (size or modification time), scored by another
    model version, or all with ``full``; mark catalogued files that vanished as removed.

    A file that shares its patient, visit and limb with one of those is scored again too: which of
    duplicate files is used may change, and the joints table only holds the used file's joints. So is
    a file of that patient named without a limb, whose limb is known only once decoded.
    """
    catalogue = current.to_pandas("catalogue", columns=["path", ID_COLUMN, "visit", "limb", "size_bytes", "mtime",
                                                        "model_version", "status", BUCKET])
    live = catalogue[catalogue["status"] != "removed"]
    seen = listing.merge(live[["path", "size_bytes", "mtime", "model_version"]], on="path", how="left",
                         suffixes=("", "_seen"), indicator=True)
    changed = ((seen["_merge"] == "left_only") | (seen["size_bytes"] != seen["size_bytes_seen"])
               | (seen["mtime"] != seen["mtime_seen"]) | (seen["model_version"] != model_version))
    score = changed.fillna(True).to_numpy(bool) | full
    gone = live[~_isin(live["path"], listing["path"])]
    # a file named without a limb takes its DICOM header's when decoded: the limb it had before counts
    # as touched too, and such a file beside a touched one of its patient is scored again
    before = live[_isin(live["path"], listing.loc[score, "path"])]
    touched = pd.concat([listing[score & listing[ID_COLUMN].notna().to_numpy()], gone, before])
    near = _isin(listing[ID_COLUMN], set(touched[ID_COLUMN].dropna()))  # few rows: keys built for them only
    score[near] |= _isin(_keys(listing[near]), set(_keys(touched))) | listing.loc[near, "limb"].isna().to_numpy()
    files = _with_buckets(listing[score], current.buckets)

    removed = pa.Table.from_pandas(gone[["path", ID_COLUMN, "visit", "limb", BUCKET]].assign(record="removed"),
                                   preserve_index=False)
    removed = pa.table({f.name: removed[f.name] if f.name in removed.column_names else pa.nulls(len(gone), f.type)
                        for f in REDUCE}, schema=REDUCE)
    affected = set(files[BUCKET]) | set(gone[BUCKET])
    existing = {name: {b: f for b, f in delta.data_files(current.table(name)).items() if b in affected}
                for name in TABLES}
    return RunPlan(files, removed, current.buckets, overwrite=False, listed=len(listing), existing=existing)
