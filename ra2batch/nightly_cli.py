"""Command line of ``jobs/nightly_rescore.py``."""

from __future__ import annotations

import argparse
import json
import sys

from ra2batch.job.config import JobConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nightly_rescore.py",
        description="Incremental rescoring: score the radiographs under --input that are new, changed, or were "
        "scored by another model version; rebuild only their patients in --output; mark vanished files removed. "
        "Keeps a catalogue of every file (OUTPUT/catalogue) and one record per run (OUTPUT/runs).",
    )
    p.add_argument("--input", required=True, metavar="URI", help="folder or s3://bucket/prefix of radiographs")
    p.add_argument("--output", required=True, metavar="URI", help="folder or s3:// prefix of the scoring outputs")
    p.add_argument("--models", metavar="URI", help="model bundle (default: the built-in demo bundle)")
    p.add_argument("--manifest", metavar="URI", help="CSV or Parquet with path, Patient_ID, limb, optional visit")
    p.add_argument("--full", action="store_true", help="rescore every file, changed or not")
    p.add_argument("--config", metavar="FILE", help="JobConfig as .json or .yaml (pool sizes, batch sizes, GPUs)")
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help='extra S3 settings, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ra2batch.job.pipeline import JobError
    from ra2batch.models.bundle import BundleError
    from ra2batch.nightly import nightly_rescore

    try:
        config = JobConfig.load(args.config) if args.config else None
        record = nightly_rescore(args.input, args.output, models=args.models, manifest=args.manifest,
                                 config=config, storage_options=args.storage_options, full=args.full)
    except (JobError, BundleError, ValueError, OSError) as e:
        print(f"nightly_rescore: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(record.format())
    return 0
