"""``ra2batch evaluate``: score predictions with the challenge scorer against a random baseline.

pandas, pyarrow and the scorer are imported where they are used, so that the command line's
``--help`` does not wait for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .catalogue import ID_COLUMN
from .cliutil import USAGE, add_storage_options, error

if TYPE_CHECKING:
    import pandas as pd


def _versioned(uri: str, storage_options: dict[str, Any] | None) -> pd.DataFrame | None:
    """A scoring output's published predictions (``uri`` its folder) or table (``uri`` a table of it),
    or any Delta table at its latest version; ``None`` when ``uri`` is none of these. Read through
    ``ra2batch.output``: a glob over a versioned table's files would also see replaced rows."""
    import pandas as pd

    from ra2batch.output import TABLES, OutputError, open_output
    from ra2batch.scorer import ScoringError
    from ra2batch.storage import resolve

    loc = resolve(uri, storage_options)
    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        if loc.exists("runs", "_delta_log"):
            snapshot = open_output(uri, storage_options)
            with loc.fs.open_input_stream(snapshot.predictions) as f:
                return pd.read_csv(f, dtype={ID_COLUMN: str})
        if not loc.exists("_delta_log"):
            return None
        if name in TABLES and parent and resolve(parent, storage_options).exists("runs", "_delta_log"):
            return open_output(parent, storage_options).to_pandas(name)
    except OutputError as e:
        raise ScoringError(str(e)) from e
    from deltalake import DeltaTable

    return DeltaTable(loc.uri_of(), storage_options=loc.delta_options()).to_pandas()


def read_table(uri: str, what: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """A CSV file, a Parquet file/dataset, a scoring output (its predictions) or one of its tables
    (local or s3://) as a DataFrame, Patient_ID as text."""
    import pandas as pd
    import pyarrow.fs as pafs

    from ra2batch.scorer import ScoringError
    from ra2batch.storage import resolve

    loc = resolve(uri, storage_options)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise ScoringError(f"{what}: {uri} does not exist")
    try:
        versioned = _versioned(uri, storage_options) if info.type == pafs.FileType.Directory else None
        if versioned is not None:
            df = versioned
        elif info.type == pafs.FileType.File and loc.path.lower().endswith(".csv"):
            with loc.fs.open_input_stream(loc.path) as f:
                df = pd.read_csv(f, dtype={ID_COLUMN: str})
        else:
            import pyarrow.parquet as pq

            df = pq.read_table(loc.path, filesystem=loc.fs).to_pandas()
    except ScoringError:
        raise
    except Exception as e:  # a parse failure of any kind is reported, not raised at the user
        raise ScoringError(f"{what}: cannot read {uri}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if ID_COLUMN in df.columns:
        from ra2batch.csvtext import restore

        df[ID_COLUMN] = restore(df[ID_COLUMN].astype(str))
    return df


def evaluate(pred: pd.DataFrame, truth: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Scores of ``pred`` and of the seeded random baseline drawn from ``truth``'s labels."""
    from ra2batch.scorer import align, random_baseline, score

    _, t, extra = align(pred, truth)
    s = score(pred, truth)
    b = score(random_baseline(truth, list(t.index), seed=seed), truth)
    return {
        **s.as_dict(),
        **{f"baseline_{k}": v for k, v in b.as_dict().items()},
        "n_patients": s.n_patients,
        "extra_patients": extra,
    }


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{'':12}{'SC1 overall':>14}{'SC2 narrowing':>16}{'SC3 erosion':>14}"]
    lines.append(f"{'predictions':12}{r['sc1']:>14.4f}{r['sc2']:>16.4f}{r['sc3']:>14.4f}")
    lines.append(
        f"{'baseline':12}{r['baseline_sc1']:>14.4f}{r['baseline_sc2']:>16.4f}{r['baseline_sc3']:>14.4f}"
    )
    ratio = [r[k] / r[f"baseline_{k}"] if r[f"baseline_{k}"] else float("nan") for k in ("sc1", "sc2", "sc3")]
    lines.append(f"{'ratio':12}{ratio[0]:>14.3f}{ratio[1]:>16.3f}{ratio[2]:>14.3f}")
    lines.append(f"{r['n_patients']} patients scored; lower is better (ratio < 1 beats the baseline)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, metavar="P",
                   help="RA2-layout CSV, a scoring job's --output (its published predictions), one of its tables "
                        "(e.g. OUTPUT/patients), or a Parquet file/dataset with the RA2 columns (local or s3://)")
    p.add_argument("--truth", required=True, metavar="T", help="RA2 training.csv with the gold scores")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default 0)")
    add_storage_options(p)
    p.add_argument("--plots", metavar="DIR",
                   help="also write predicted-vs-true, per-joint error map and Bland-Altman PNGs into DIR")


def main(args: argparse.Namespace) -> int:
    from ra2batch.scorer import ScoringError

    try:
        truth = read_table(args.truth, "truth", args.storage_options)
        pred = read_table(args.predictions, "predictions", args.storage_options)
        r = evaluate(pred, truth, seed=args.seed)
    except ScoringError as e:
        return error("evaluate", e, USAGE)
    if r["extra_patients"]:
        ids = r["extra_patients"]
        print(f"note: {len(ids)} patient(s) in the predictions are not in the truth and were ignored: "
              f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}", file=sys.stderr)
    plots = []
    if args.plots:
        from .plots import write_plots

        plots = [str(path) for path in write_plots(pred, truth, args.plots)]
    if args.json:
        print(json.dumps({**{k: r[k] for k in ("sc1", "sc2", "sc3", "baseline_sc1", "baseline_sc2",
                                                "baseline_sc3", "n_patients")}, "plots": plots}))
    else:
        print("\n".join([format_table(r), *(f"wrote {path}" for path in plots)]))
    return 0
