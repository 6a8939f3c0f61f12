"""The ``ra2batch`` console script: one subcommand per capability.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
this file only wires them up. A subcommand whose module has not landed says so and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: name -> (module under ra2batch, one-line help). ``None`` = not available in this release.
COMMANDS: dict[str, tuple[str | None, str]] = {
    "synth": ("synth.cli", "generate a synthetic RA2 cohort (radiographs, labels, boxes)"),
    "train": ("training.cli", "train detectors and joint models into a model bundle (Ray Train)"),
    "score": ("job.cli", "score an archive of radiographs into per-patient Parquet (Ray Data)"),
    "pool": ("job.pool_cli", "start, list and stop warm model pools that jobs on a running cluster share"),
    "evaluate": ("evaluate", "score predictions with the RA2 challenge scorer against the baseline"),
    "query": ("query.cli", "named cohort queries and SQL over scoring outputs"),
    "report": ("report.cli", "static HTML review site with attention overlays"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    if module is None:
        return None
    try:
        return importlib.import_module(f"ra2batch.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"ra2batch.{module.split('.')[0]}"):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ra2batch",
        description="Score rheumatoid-arthritis joint damage (Sharp/van der Heijde, RA2-DREAM format) "
        "in hand and foot radiographs with RetinaNet detectors and attention EfficientNet joint models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        mod = _load(name)
        p = sub.add_parser(name, help=help_ if mod else f"{help_} [not available yet]", description=help_)
        if mod is not None:
            mod.add_arguments(p)
        p.set_defaults(_module=mod, _name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args._module is None:
        print(f"ra2batch {args._name}: this feature has not landed in this release yet", file=sys.stderr)
        return 1
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
