"""The ``ra2batch`` console script: one subcommand per capability.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``
and importing its heavy libraries (torch, Ray, pandas) only in ``main``, so that ``--help`` answers
at once; this file only wires them up. Exit codes, streams and flag names: ``ra2batch.cliutil``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ra2batch import __version__
from ra2batch.cliutil import RUNTIME, USAGE, check_required

#: name -> (module under ra2batch, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth.cli", "generate a synthetic RA2 cohort (radiographs, labels, boxes)"),
    "train": ("training.cli", "train detectors and joint models into a model bundle (Ray Train)"),
    "score": ("job.cli", "score an archive of radiographs into per-patient tables (Ray Data)"),
    "nightly": ("nightly_cli", "score what changed in an archive since the last run and merge it into its output"),
    "pool": ("job.pool_cli", "start, list and stop warm model pools that jobs on a running cluster share"),
    "evaluate": ("evaluate", "score predictions with the RA2 challenge scorer against the baseline"),
    "query": ("query.cli", "named cohort queries and SQL over scoring outputs"),
    "describe": ("describe", "the data dictionary: every output table's fields with type, description, unit, range"),
    "report": ("report.cli", "static HTML review site with attention overlays"),
}
EPILOG = ("exit codes: 0 done; 2 a usage or input error (nothing was done); 1 a failure while running; "
          "3 (train) a bundle was written but failed its quality check. Results go to stdout, progress and "
          "errors to stderr.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ra2batch", epilog=EPILOG,
        description="Score rheumatoid-arthritis joint damage (Sharp/van der Heijde, RA2-DREAM format) "
        "in hand and foot radiographs with RetinaNet detectors and attention EfficientNet joint models.",
    )
    parser.add_argument("--version", action="version", version=f"ra2batch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(f"ra2batch.{module}")
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        mod.add_arguments(p)
        p.set_defaults(_module=mod, _name=name, _parser=p)
    return parser


def run(parser: argparse.ArgumentParser, module, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` (a command's) and run ``module.main``: the ``jobs/`` scripts' entry."""
    args = parser.parse_args(argv)
    check_required(parser, args)
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE
    check_required(args._parser, args)
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "RUNTIME", "USAGE", "build_parser", "main", "run"]
