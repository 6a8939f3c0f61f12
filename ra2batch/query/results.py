"""Scoring outputs opened in place as DuckDB views, with no copy of the data.

Each ``--results`` root (local or ``s3://``) is opened through ``ra2batch.output`` at its published
version (or the one ``as_of`` names), and its ``patients``, ``joints`` and ``images`` tables, its
file catalogue (view ``file_catalogue``) and its ``runs`` are registered with DuckDB as pyarrow
datasets, which it scans lazily (projection and filter pushdown). Going through pyarrow means no
DuckDB extension (httpfs, delta) has to be downloaded, so it works offline and honours the same
endpoint and credentials as the scoring job.

Several roots are stacked by column name into one view per table, so two runs scored with
different model versions can be compared. ``catalogue`` is one more view: one row per RA2 column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import duckdb
import pandas as pd

from ra2batch import catalogue

TABLE_NAMES = ("patients", "joints", "images")
#: View name -> the output table it shows, besides ``TABLE_NAMES`` (``catalogue`` is the RA2 columns' view).
EXTRA_VIEWS = {"file_catalogue": "catalogue", "runs": "runs"}


class QueryError(ValueError):
    """A problem with the results, the arguments or the SQL, worded for one line on a terminal."""


def one_line(e: BaseException) -> str:
    """The first line of an error message (DuckDB appends the query and a caret on later lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _catalogue_frame() -> pd.DataFrame:
    """The RA2 catalogue as rows: ``position`` is the catalogue order (erosion first, then by limb)."""
    return pd.DataFrame(
        [(i, j.column, j.limb, j.site, j.number, j.damage, j.max_score, j.crop)
         for i, j in enumerate(catalogue.JOINTS)],
        columns=["position", "joint", "limb", "site", "number", "damage", "max_score", "crop"],
    )


@dataclass
class Results:
    """An open set of scoring outputs: run SQL over the ``patients``, ``joints``, ``images`` and
    ``catalogue`` views with :meth:`sql`."""

    con: duckdb.DuckDBPyConnection
    uris: tuple[str, ...]
    model_version: str | None

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """The result of ``query`` as a DataFrame; DuckDB's errors become one-line :class:`QueryError`."""
        try:
            return self.con.execute(query, params or []).df()
        except duckdb.Error as e:
            raise QueryError(one_line(e)) from e

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> DuckDB type of one of the views."""
        rows = self.con.execute(f"DESCRIBE {table}").fetchall()
        return {r[0]: str(r[1]) for r in rows}

    def numeric_column(self, table: str, column: str) -> str:
        """``column`` quoted for SQL, after checking that ``table`` has it and that it is numeric."""
        types = self.columns(table)
        if column not in types:
            raise QueryError(
                f"unknown column {column!r} in {table}; use one of {', '.join(catalogue.TOTAL_COLUMNS)}, "
                f"an RA2 column such as {catalogue.COLUMNS[1]}, or n_images"
            )
        kind = types[column]
        if kind.endswith("]") or not any(t in kind for t in ("DOUBLE", "FLOAT", "INT", "DECIMAL")):
            raise QueryError(f"column {column!r} of {table} is {kind}, not a number")
        return f'"{column}"'

    def model_versions(self, table: str = "patients") -> list[str]:
        """The distinct model versions in ``table``, oldest first (by earliest ``scored_at``)."""
        df = self.sql(f"SELECT model_version FROM {table} GROUP BY model_version ORDER BY min(scored_at)")
        return [str(v) for v in df["model_version"]]

    def require_one_version(self) -> None:
        """Refuse to aggregate over several model versions: each patient would be counted twice."""
        versions = self.model_versions()
        if len(versions) > 1:
            raise QueryError(
                f"the results hold {len(versions)} model versions ({', '.join(versions)}); "
                "choose one with --model-version, or compare them with the compare query"
            )


def open_results(
    uris: str | Sequence[str],
    storage_options: dict[str, Any] | None = None,
    model_version: str | None = None,
    as_of: str | None = None,
    allow_external_access: bool = False,
) -> Results:
    """Open the scoring outputs under ``uris`` (local paths or ``s3://`` prefixes) as DuckDB views.

    Each output is read at its published version, or at the one ``as_of`` names (an output version
    or a time, ``ra2batch.output.open_output``). ``model_version`` keeps only that version's rows in
    the patients, joints and images views. Raises :class:`QueryError` naming what is missing.

    Once the views exist, DuckDB's external access is switched off and the setting locked (unless
    ``allow_external_access``): SQL then reads the views only, and can neither read nor write other
    files (``read_csv('/etc/passwd')``, ``COPY ... TO``) nor install extensions from the network.
    """
    from ra2batch.output import OutputError, open_output

    uris = (uris,) if isinstance(uris, str) else tuple(uris)
    if not uris:
        raise QueryError("no --results given")
    snapshots = []
    for uri in uris:
        try:
            snapshots.append(open_output(uri, storage_options, as_of))
        except (OutputError, OSError) as e:
            raise QueryError(one_line(e)) from e
    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    for view, name in [*((n, n) for n in TABLE_NAMES), *EXTRA_VIEWS.items()]:
        parts = []
        for i, snapshot in enumerate(snapshots):
            try:
                dataset = snapshot.runs() if name == "runs" else snapshot.dataset(name)
            except (OutputError, OSError) as e:
                raise QueryError(f"cannot read {snapshot.out.uri}: {one_line(e)}") from e
            con.register(f"_{view}_{i}", dataset)
            parts.append(f"SELECT * FROM _{view}_{i}")
        union = " UNION ALL BY NAME ".join(parts)
        if model_version and view == "patients":
            present = [r[0] for r in con.execute(f"SELECT DISTINCT model_version FROM ({union})").fetchall()]
            if model_version not in present:
                raise QueryError(f"model version {model_version!r} is not in the results; "
                                 f"they hold {', '.join(sorted(map(str, present))) or 'none'}")
        where = f" WHERE model_version = {_quote(model_version)}" if model_version and view in TABLE_NAMES else ""
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM ({union}){where}")
    con.register("catalogue", _catalogue_frame())
    if not allow_external_access:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return Results(con, uris, model_version)
