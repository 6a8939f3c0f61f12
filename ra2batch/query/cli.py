"""``ra2batch query``: the named cohort queries and free SQL on the command line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ra2batch.catalogue import ID_COLUMN
from ra2batch.cliutil import USAGE, add_renamed, add_storage_options, error

if TYPE_CHECKING:
    import pandas as pd

    from .results import Results


def _distribution(res: Results, a: argparse.Namespace) -> pd.DataFrame:
    from ra2batch.evaluate import read_table
    from ra2batch.scorer import ScoringError

    from . import named
    from .results import QueryError

    try:
        manifest = read_table(a.manifest, "--manifest", a.storage_options) if a.manifest else None
    except ScoringError as e:
        raise QueryError(str(e)) from e
    return named.distribution(res, a.by, a.column, a.prefix_len, manifest)


def _progression(res: Results, a: argparse.Namespace) -> pd.DataFrame:
    from . import named

    dates = named.read_visit_dates(a.visit_dates, a.storage_options) if a.visit_dates else None
    return named.progression(res, a.sdc, a.column, dates)


def _named(name: str, *fields: str):
    """Run ``query.named.<name>(results, *args.<fields>)``, imported when it runs."""
    def run(res: Results, a: argparse.Namespace) -> pd.DataFrame:
        from . import named

        return getattr(named, name)(res, *(getattr(a, f) for f in fields))

    return run


#: name -> (help, how to run it)
QUERIES = {
    "distribution": ("score distribution per cohort (Patient_ID prefix or a column)", _distribution),
    "above": ("patients whose score is above a threshold", _named("above", "threshold", "column")),
    "progression": ("change between visits, per year, flagged against the smallest detectable change",
                    _progression),
    "prevalence": ("per-joint damage prevalence", _named("prevalence", "min_score")),
    "compare": ("two model versions on the same images, per RA2 column", _named("compare", "a", "b")),
    "sql": ("free SQL over the patients, joints, images, file_catalogue, runs and catalogue views",
            _named("sql", "query")),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_renamed(p, "--input", "--results", action="append", required=True, metavar="OUT",
                help="a scoring job's --output (local or s3://); give it twice to stack two runs, e.g. to compare "
                     "model versions")
    add_storage_options(p)
    p.add_argument("--as-of", default=None, metavar="VERSION|TIME",
                   help="read each output as it was at this output version (e.g. 3) or time (e.g. 2026-12-01T02:00, "
                        "UTC unless it names a zone) instead of its latest; `ra2batch query ... sql \"SELECT version, "
                        "at, run_id, model_version FROM runs WHERE state = 'published'\"` lists the versions")
    p.add_argument("--model-version", default=None, metavar="V",
                   help="keep only this model version's rows (needed when the results hold several)")
    out = argparse.ArgumentParser(add_help=False)
    add_renamed(out, "--output", "--out", default=None, metavar="FILE",
                help="write all rows to FILE.csv or FILE.parquet (local or s3://) instead of the screen")
    score = argparse.ArgumentParser(add_help=False)
    score.add_argument("--column", default="Overall_Tol",
                       help="patients column to use: a total or an RA2 column (default Overall_Tol)")
    sub = p.add_subparsers(dest="query_name", metavar="QUERY", required=True)
    scored = {"distribution", "above", "progression"}
    parsers = {name: sub.add_parser(name, help=h, description=h, parents=[out, score] if name in scored else [out])
               for name, (h, _) in QUERIES.items()}

    d = parsers["distribution"]
    d.add_argument("--by", default="prefix", metavar="prefix|COLUMN",
                   help=f"group by the {ID_COLUMN} prefix (default) or by a column of patients or --manifest")
    d.add_argument("--prefix-len", type=int, default=None, metavar="N",
                   help=f"prefix = first N characters of {ID_COLUMN} (default: the part before the first digit)")
    d.add_argument("--manifest", default=None, metavar="FILE",
                   help=f"CSV/Parquet with {ID_COLUMN} (and optionally visit) and the --by column")
    parsers["above"].add_argument("--threshold", type=float, required=True, metavar="T",
                                  help="list rows whose score is strictly greater than T")
    g = parsers["progression"]
    g.add_argument("--sdc", type=float, default=5.0,
                   help="smallest detectable change in score units; change > SDC is flagged (default 5)")
    g.add_argument("--visit-dates", default=None, metavar="FILE",
                   help=f"CSV/Parquet with {ID_COLUMN}, visit, date (YYYY-MM-DD) for visits not named by date")
    parsers["prevalence"].add_argument("--min-score", type=float, default=1.0,
                                       help="a joint counts as damaged at this predicted score or more (default 1)")
    parsers["compare"].add_argument("--a", default=None, metavar="VERSION", help="the reference model version")
    parsers["compare"].add_argument("--b", default=None, metavar="VERSION", help="the model version compared to it")
    parsers["sql"].add_argument("query", metavar="SQL",
                                help="e.g. \"SELECT visit, count(*) FROM patients GROUP BY 1\"")
    parsers["sql"].add_argument("--allow-external-access", action="store_true",
                                help="let the SQL read and write files and URLs besides the output's tables "
                                     "(DuckDB's read_csv, COPY ... TO, extensions); off by default")


def main(args: argparse.Namespace) -> int:
    from .output import render, write
    from .results import QueryError, open_results

    try:
        res = open_results(args.input, args.storage_options, args.model_version, args.as_of,
                           allow_external_access=getattr(args, "allow_external_access", False))
        df = QUERIES[args.query_name][1](res, args)
        if args.output:
            write(df, args.output, args.storage_options)
            print(f"{len(df)} rows written to {args.output}")
        else:
            print(render(df))
    except (QueryError, OSError) as e:
        return error("query", e, USAGE)
    return 0
