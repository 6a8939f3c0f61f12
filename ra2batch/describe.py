"""``ra2batch describe``: the data dictionary of the scoring outputs (``output.dictionary``).

Without ``--input`` it prints the contract of this ra2batch version; with ``--input OUT`` the fields of
that output's tables as written. pyarrow and delta-rs are imported in ``main`` only.
"""

from __future__ import annotations

import argparse

from ra2batch.cliutil import USAGE, add_storage_options, error

FORMATS = ("md", "csv", "json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", metavar="OUT", help="a scoring job's --output (local or s3://): list its tables' "
                   "fields as written; without it, the tables this ra2batch version writes")
    p.add_argument("--format", choices=FORMATS, default="md",
                   help="md (Markdown, default), csv (one row per field) or json")
    add_storage_options(p)


def main(args: argparse.Namespace) -> int:
    from ra2batch.output import OutputError, open_output
    from ra2batch.output.dictionary import contract, contract_source, render, written

    if args.input is None:
        print(render(contract(), args.format, contract_source()), end="")
        return 0
    try:
        snapshot = open_output(args.input, args.storage_options)
        schemas = written(snapshot)
    except OutputError as e:
        return error("describe", e, USAGE)
    run = snapshot.run
    source = (f"The tables of {args.input} as written: output version {snapshot.version} (run {run['run_id']}, "
              f"ra2batch {run['ra2batch_version']}).")
    print(render(schemas, args.format, source), end="")
    return 0
