"""``ra2batch evaluate``: score predictions with the challenge scorer against a random baseline.

Visits: a table has them when it has a ``visit`` column with a value (predictions.csv of an archive
with visits: one row per patient visit). With visits on both sides, each patient visit is scored
as one patient of the challenge scorer (rows matched on ``Patient_ID`` and ``visit``); ``--visit V``
scores visit V alone. When only one side has visits, the command refuses unless ``--visit V`` names
the visit of that side to score against the other. Other columns (predictions.csv's ``qc``) are ignored.

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

VISIT = "visit"
#: Text columns read as text whatever they hold (a visit ``2021`` is not a number).
TEXT = {ID_COLUMN: str, VISIT: str}


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
                return pd.read_csv(f, dtype=TEXT)
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
                df = pd.read_csv(f, dtype=TEXT)
        else:
            import pyarrow.parquet as pq

            df = pq.read_table(loc.path, filesystem=loc.fs).to_pandas()
    except ScoringError:
        raise
    except Exception as e:  # a parse failure of any kind is reported, not raised at the user
        raise ScoringError(f"{what}: cannot read {uri}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    from ra2batch.csvtext import restore

    if ID_COLUMN in df.columns:
        df[ID_COLUMN] = restore(df[ID_COLUMN].astype(str))
    if VISIT in df.columns:
        df[VISIT] = restore([None if pd.isna(v) else str(v) for v in df[VISIT]])
    return df


def _visits(df: pd.DataFrame) -> list[str]:
    """The distinct visits of a table, sorted; none without a ``visit`` column or values in it."""
    return sorted(df[VISIT].dropna().unique()) if VISIT in df.columns else []


def _one_visit(df: pd.DataFrame, visit: str, what: str) -> pd.DataFrame:
    from ra2batch.scorer import ScoringError

    rows = df[df[VISIT] == visit]
    if rows.empty:
        raise ScoringError(f"{what}: no row of visit {visit!r} (its visits: {', '.join(_visits(df))})")
    return rows.drop(columns=[VISIT])


def by_visit(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` keyed for the scorer by patient visit: ``Patient_ID`` becomes ``ID (visit V)``
    (the ID alone for a row without a visit)."""
    import pandas as pd

    keys = [pid if pd.isna(visit) else f"{pid} (visit {visit})" for pid, visit in zip(df[ID_COLUMN].astype(str),
                                                                                        df[VISIT])]
    return df.drop(columns=[VISIT]).assign(**{ID_COLUMN: keys})


def match_visits(pred: pd.DataFrame, truth: pd.DataFrame, visit: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """Both tables with one row per scored unit, and how visits were matched: ``"each"`` (every
    patient visit on both sides), ``visit`` (that visit alone) or ``None`` (no visits). Raises
    :class:`ScoringError` when only one side has visits and ``visit`` is ``None``."""
    from ra2batch.scorer import ScoringError

    has = {"predictions": bool(_visits(pred)), "truth": bool(_visits(truth))}
    if visit is not None:
        if not any(has.values()):
            raise ScoringError(f"--visit {visit}: neither the predictions nor the truth have visits")
        pred = _one_visit(pred, visit, "predictions") if has["predictions"] else pred
        truth = _one_visit(truth, visit, "truth") if has["truth"] else truth
        return pred, truth, visit
    if all(has.values()):
        return by_visit(pred), by_visit(truth), "each"
    if any(has.values()):
        side, other = ("predictions have", "truth has") if has["predictions"] else ("truth has", "predictions have")
        shown = _visits(pred if has["predictions"] else truth)
        raise ScoringError(f"the {side} visits ({', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}) but the "
                           f"{other} none: score one visit with --visit V")
    return pred, truth, None


def evaluate(pred: pd.DataFrame, truth: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Scores of ``pred`` and of the seeded random baseline drawn from ``truth``'s labels (both
    tables with one row per scored unit: :func:`match_visits`)."""
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
    unit = {"each": "patient visits", None: "patients"}.get(r["visits"], f"patients (visit {r['visits']})")
    lines.append(f"{r['n_patients']} {unit} scored; lower is better (ratio < 1 beats the baseline)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, metavar="P",
                   help="RA2-layout CSV, a scoring job's --output (its published predictions), one of its tables "
                        "(e.g. OUTPUT/patients), or a Parquet file/dataset with the RA2 columns (local or s3://)")
    p.add_argument("--truth", required=True, metavar="T", help="RA2 training.csv with the gold scores (with a "
                   "visit column: one row per patient visit, matched on Patient_ID and visit)")
    p.add_argument("--visit", metavar="V", help="score visit V only; needed when only one side has visits")
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
        pred, truth, visits = match_visits(pred, truth, args.visit)
        r = {**evaluate(pred, truth, seed=args.seed), "visits": visits}
    except ScoringError as e:
        return error("evaluate", e, USAGE)
    if r["extra_patients"]:
        ids = r["extra_patients"]
        print(f"note: {len(ids)} patient{' visit' if visits == 'each' else ''}(s) in the predictions are not in the "
              f"truth and were ignored: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}", file=sys.stderr)
    plots = []
    if args.plots:
        from .plots import write_plots

        plots = [str(path) for path in write_plots(pred, truth, args.plots)]
    if args.json:
        print(json.dumps({**{k: r[k] for k in ("sc1", "sc2", "sc3", "baseline_sc1", "baseline_sc2",
                                                "baseline_sc3", "n_patients", "visits")}, "plots": plots}))
    else:
        print("\n".join([format_table(r), *(f"wrote {path}" for path in plots)]))
    return 0
