"""``ra2batch score`` and ``jobs/score_archive.py``: the scoring job's command line.

With no arguments it scores the built-in demo archive (generated once under ``./ra2-demo-archive``)
into ``./ra2-output``. Every :class:`JobConfig` field also has its own flag, which wins over
``--config``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from ra2batch.cliutil import RUNTIME, USAGE, add_address, add_storage_options, error
from ra2batch.job.config import JobConfig

DEMO_ARCHIVE = Path("ra2-demo-archive")
DEMO_OUTPUT = Path("ra2-output")
DEMO_COHORT = {"patients": 8, "seed": 7, "scale": 0.4}


def _flag_type(annotation) -> type:
    if typing.get_origin(annotation) is typing.Literal:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (args[0] if args else annotation)


def add_arguments(p: argparse.ArgumentParser, *, demo: bool = True) -> None:
    """The scoring job's flags; with ``demo``, ``--input`` and ``--output`` may both be left out."""
    suffix = "; default: the built-in demo archive" if demo else ""
    p.add_argument("--input", metavar="URI", required=not demo, help="folder or s3://bucket/prefix of radiographs "
                   f"(*.jpg, *.jpeg, *.png, *.dcm, *.dicom at any depth){suffix}")
    p.add_argument("--output", metavar="URI", required=not demo, help="folder or s3:// prefix for the tables and "
                   "predictions.csv" + (" (default with the demo archive: ./ra2-output)" if demo else ""))
    p.add_argument("--models", metavar="URI", help="model bundle, folder or s3://; default: the built-in demo bundle")
    p.add_argument("--manifest", metavar="URI", help="CSV or Parquet with path, Patient_ID, limb and optional "
                   "visit, for archives whose file names are not {Patient_ID}-{limb}")
    add_storage_options(p)
    add_address(p)
    p.add_argument("--config", metavar="FILE", help="JobConfig as .json or .yaml (pool sizes, batch sizes, GPUs)")
    g = p.add_argument_group("job settings (override --config; unset ones are sized to the cluster)")
    for name, f in JobConfig.model_fields.items():
        flag, kind = f"--{name.replace('_', '-')}", _flag_type(f.annotation)
        if typing.get_origin(kind) is typing.Literal:
            g.add_argument(flag, dest=name, choices=typing.get_args(kind), default=None, help=f.description)
        elif kind is bool:  # --tta / --no-tta: "--tta false" would be true to argparse's bool()
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f.description)
        else:
            g.add_argument(flag, dest=name, type=kind, default=None, metavar="N", help=f.description)


def _demo_archive() -> Path:
    """The demo archive's images folder, generated on first use."""
    images = DEMO_ARCHIVE / "images"
    if not (DEMO_ARCHIVE / "truth.csv").is_file():
        from ra2batch.synth import generate_cohort

        print(f"generating the demo archive ({DEMO_COHORT['patients']} phantom patients) in {DEMO_ARCHIVE}/ ...",
              file=sys.stderr)
        generate_cohort(DEMO_ARCHIVE, **DEMO_COHORT)
    return images


def job_config(args: argparse.Namespace) -> JobConfig:
    """``--config`` with every job-setting flag given applied over it (``ValueError`` naming what is wrong)."""
    config = JobConfig.load(args.config) if args.config else JobConfig()
    return config.merged({name: getattr(args, name) for name in JobConfig.model_fields})


def main(args: argparse.Namespace) -> int:
    demo = args.input is None and args.output is None
    if not demo and (args.input is None or args.output is None):
        return error("score", "give both --input and --output (or neither, for the demo archive)", USAGE)
    try:
        config = job_config(args)
    except ValueError as e:
        return error("score", e, USAGE)
    from ra2batch.job.pipeline import JobError, JobInputError, score_archive

    try:
        source = str(_demo_archive()) if demo else args.input
        summary = score_archive(source, str(DEMO_OUTPUT) if demo else args.output, models=args.models,
                                manifest=args.manifest, config=config, storage_options=args.storage_options,
                                address=args.address)
    except JobInputError as e:
        return error("score", e, USAGE)
    except (JobError, OSError) as e:
        return error("score", e, RUNTIME)
    print(summary.format())
    if demo:
        print(f"compare with the phantom truth: ra2batch evaluate --predictions {DEMO_OUTPUT}/predictions.csv "
              f"--truth {DEMO_ARCHIVE}/truth.csv")
    return 0
