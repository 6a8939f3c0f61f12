"""A run's writes to an output, in the order that keeps every reader on one whole state.

    with writing(out, "nightly", info) as run:     # lease taken, ``started`` row committed
        repair(run)                                # tables a killed run moved on are put back
        versions = commit_tables(run, actions, overwrite=False)
        predictions = stage_predictions(out, run.run_id, chunks)
        run.publish({**versions_columns, ...})     # the one atomic step that readers see
        install_predictions(out, predictions)      # OUTPUT/predictions.csv, a copy of the staged file

Until ``publish``, readers keep resolving the previous manifest; the tables' newer versions and the
staged predictions are invisible to them. ``predictions.csv`` is the only file outside the
versioned tables: it is copied from the staged file right after publishing (one atomic rename
locally, one server-side copy on S3), and a run killed in that instant leaves the previous copy,
which the next writer's :func:`repair` replaces; ``ra2batch evaluate`` on the output folder reads
the staged file the manifest names.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Mapping

import pyarrow.fs as pafs

from ra2batch.output import delta
from ra2batch.output.runs import RunLease
from ra2batch.output.schema import TABLES
from ra2batch.storage import Location, is_remote

PREDICTIONS = "predictions.csv"
STAGED_PREDICTIONS = "_ra2batch/predictions"


def check_output(out: Location, source: Location) -> None:
    """Refuse an output location before any work starts (``ValueError`` saying why): one that is a
    file, one inside the input it scores (its files would be listed as radiographs next time), or a
    local folder this process cannot write."""
    info = out.fs.get_file_info(out.path)
    if info.type == pafs.FileType.File:
        raise ValueError(f"--output {out.uri} is a file: give a folder or an s3:// prefix for the tables")
    if is_remote(out.uri) == is_remote(source.uri) and (out.path + "/").startswith(source.path.rstrip("/") + "/"):
        raise ValueError(f"--output {out.uri} is inside --input {source.uri}: the next run would list the outputs as "
                         "radiographs; write them elsewhere")
    if not is_remote(out.uri):
        existing = out.path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--output {out.uri}: cannot write in {existing} (permission denied)")


@contextlib.contextmanager
def writing(out: Location, kind: str, info: Mapping[str, Any]) -> Iterator[RunLease]:
    """Hold ``out`` for one run; a run that raises is recorded ``failed`` (with the first line of
    its error) and the output keeps its previous state."""
    run = RunLease.acquire(out, kind, info)
    try:
        yield run
    except BaseException as e:
        run.fail((str(e).strip().splitlines() or [type(e).__name__])[0])
        raise
    finally:
        run.release()


def repair(run: RunLease) -> dict[str, int]:
    """Put back every table that a stopped run committed to after the current manifest (restoring
    the version the manifest names, as a new version) and the current predictions.csv; returns each
    table's version to build on."""
    latest: dict[str, int] = {}
    for name in TABLES:
        table = delta.open_table(run.out, name)
        if table is None:
            continue
        latest[name] = table.version()
        wanted = None if run.current is None else run.current[f"{name}_version"]
        if wanted is not None and table.version() != wanted:
            latest[name] = delta.restore(run.out, name, wanted, run.metadata())
    if run.current is not None and run.current.get("predictions"):
        info = run.out.fs.get_file_info(run.out.join(PREDICTIONS))
        if info.type != pafs.FileType.File or info.size != run.current["predictions_bytes"]:
            install_predictions(run.out, run.current["predictions"])
    return latest


def commit_tables(run: RunLease, actions: Mapping[str, list[Mapping[str, Any]]], *, overwrite: bool,
                  expected: Mapping[str, int]) -> dict[str, int]:
    """Commit each table's data-file actions (one commit per table); returns each table's new version.

    A merge (``overwrite`` false) builds on the ``expected`` versions (``repair``'s); a table with
    nothing to change keeps its version.
    """
    versions = {}
    for name, table in TABLES.items():
        changes = actions.get(name, [])
        if not overwrite and not changes and name in expected:
            versions[name] = expected[name]
            continue
        versions[name] = delta.commit(run.out, name, table.schema, changes, overwrite=overwrite,
                                      metadata=run.metadata(), expect_version=expected.get(name, -1))
    return versions


def stage_predictions(out: Location, run_id: str, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write predictions.csv's ``chunks`` to this run's staged file; returns its path (relative to
    ``out``) and size. An S3 upload only appears when complete."""
    relative = f"{STAGED_PREDICTIONS}/{run_id}.csv"
    out.fs.create_dir(out.join(STAGED_PREDICTIONS), recursive=True)
    size = 0
    with out.fs.open_output_stream(out.join(relative)) as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
    return relative, size


def install_predictions(out: Location, relative: str) -> None:
    """Make ``OUTPUT/predictions.csv`` a copy of the staged file ``relative`` in one atomic step, and
    delete the staged files of earlier runs."""
    source, target = out.join(relative), out.join(PREDICTIONS)
    if is_remote(out.uri):
        out.fs.copy_file(source, target)
    else:
        partial = f"{target}.{relative.rsplit('/', 1)[-1]}.partial"
        out.fs.copy_file(source, partial)
        out.fs.move(partial, target)
    for info in out.fs.get_file_info(pafs.FileSelector(out.join(STAGED_PREDICTIONS))):
        if info.path != source:
            out.fs.delete_file(info.path)
