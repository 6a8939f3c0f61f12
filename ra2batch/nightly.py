"""Nightly incremental rescoring: score only what changed, rebuild only the patients it touches.

A run lists the archive and compares it with the output's ``catalogue`` table (one row per file ever
seen: ``path``, ``size_bytes``, ``mtime``, ``content_hash``, identity, ``model_version``,
``scored_at``, ``status`` ``ok`` | ``error`` | ``removed``, ``removed_at``). A file is scored again
when it is new, when its size or modification time changed, when it was scored by another
``model_version``, or with ``full=True``; files that disappeared are marked ``removed`` and their rows
leave the images and joints tables. Only the patients those files belong to are rebuilt, and only
the data files that hold their rows are rewritten (a merge into the Delta tables, ``job.reduce``).
Every run is recorded in the output's ``runs`` table and published in one atomic step, so a reader
never sees half a run (``ra2batch.output``).
"""

from __future__ import annotations

from typing import Any

from ra2batch.job.config import JobConfig
from ra2batch.job.pipeline import JobSummary, run_job


def nightly_rescore(
    input: str,
    output: str,
    models: str | None = None,
    manifest: str | None = None,
    config: JobConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    full: bool = False,
    address: str | None = None,
) -> JobSummary:
    """Bring ``output`` up to date with ``input``: score new, changed or stale files; rebuild their patients."""
    return run_job("nightly", input, output, models=models, manifest=manifest, config=config,
                   storage_options=storage_options, full=full, address=address)
