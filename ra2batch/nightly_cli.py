"""``ra2batch nightly`` and ``jobs/nightly_rescore.py``: incremental rescoring's command line."""

from __future__ import annotations

import argparse

from ra2batch.cliutil import RUNTIME, USAGE, error

DESCRIPTION = ("Incremental rescoring: score the radiographs under --input that are new, changed, or were scored "
               "by another model version; rebuild only their patients in --output (a merge that rewrites only "
               "their files); mark vanished files removed. Starts from a `ra2batch score` output or from nothing.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ra2batch.job.cli import add_arguments as score_arguments

    p.description = DESCRIPTION
    score_arguments(p, demo=False)
    p.add_argument("--full", action="store_true", help="rescore every file, changed or not")


def main(args: argparse.Namespace) -> int:
    from ra2batch.job.cli import job_config

    try:
        config = job_config(args)
    except ValueError as e:
        return error("nightly", e, USAGE)
    from ra2batch.job.pipeline import JobError, JobInputError
    from ra2batch.nightly import nightly_rescore

    try:
        summary = nightly_rescore(args.input, args.output, models=args.models, manifest=args.manifest, config=config,
                                  storage_options=args.storage_options, full=args.full, address=args.address)
    except JobInputError as e:
        return error("nightly", e, USAGE)
    except (JobError, OSError) as e:
        return error("nightly", e, RUNTIME)
    print(summary.format())
    return 0
