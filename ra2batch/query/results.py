"""Scoring outputs opened in place as DuckDB views, with no copy of the data.

Each of the ``patients/``, ``joints/`` and ``images/`` tables under one or more ``--results`` roots
(local or ``s3://``, see ``docs/design.md``) is opened as a pyarrow dataset on the filesystem from
``ra2batch.storage`` and registered with DuckDB, which scans it lazily (projection and filter
pushdown). Going through pyarrow means no DuckDB extension (httpfs) has to be downloaded, so it works
offline and honours the same endpoint and credentials as the scoring job.

Several roots are stacked by column name into one view per table, so two runs scored with
different model versions can be compared. ``catalogue`` is a fourth view: one row per RA2 column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ra2batch import catalogue
from ra2batch.storage import resolve

TABLE_NAMES = ("patients", "joints", "images")


class QueryError(ValueError):
    """A problem with the results, the arguments or the SQL, worded for one line on a terminal."""


def one_line(e: BaseException) -> str:
    """The first line of an error message (DuckDB appends the query and a caret on later lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _open_table(uri: str, name: str, storage_options: dict[str, Any] | None) -> ds.Dataset | None:
    """The Parquet dataset of table ``name`` under ``uri``, or ``None`` when it holds no Parquet file."""
    loc = resolve(uri, storage_options)
    path = loc.join(name)
    if loc.fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    dataset = ds.dataset(path, filesystem=loc.fs, format="parquet", partitioning="hive")
    return dataset if dataset.files else None


def _catalogue_frame() -> pd.DataFrame:
    """The RA2 catalogue as rows: ``position`` is the catalogue order (erosion first, then by limb)."""
    return pd.DataFrame(
        [(i, j.column, j.limb, j.site, j.number, j.damage, j.max_score, j.crop)
         for i, j in enumerate(catalogue.JOINTS)],
        columns=["position", "column", "limb", "site", "number", "damage", "max_score", "crop"],
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
) -> Results:
    """Open the scoring outputs under ``uris`` (local paths or ``s3://`` prefixes) as DuckDB views.

    All three tables must be present under every root. ``model_version`` keeps only that version's
    rows in every view. Raises :class:`QueryError` naming what is missing.
    """
    uris = (uris,) if isinstance(uris, str) else tuple(uris)
    if not uris:
        raise QueryError("no --results given")
    con = duckdb.connect()
    for name in TABLE_NAMES:
        parts = []
        for i, uri in enumerate(uris):
            try:
                dataset = _open_table(uri, name, storage_options)
            except (OSError, ValueError) as e:
                raise QueryError(f"cannot read {uri}: {one_line(e)}") from e
            if dataset is None:
                raise QueryError(
                    f"{uri} has no {name}/ table: expected the scoring job's Parquet tables "
                    f"{', '.join(t + '/' for t in TABLE_NAMES)} under --results"
                )
            con.register(f"_{name}_{i}", dataset)
            parts.append(f"SELECT * FROM _{name}_{i}")
        union = " UNION ALL BY NAME ".join(parts)
        if model_version and name == "patients":
            present = [r[0] for r in con.execute(f"SELECT DISTINCT model_version FROM ({union})").fetchall()]
            if model_version not in present:
                raise QueryError(f"model version {model_version!r} is not in the results; "
                                 f"they hold {', '.join(sorted(map(str, present))) or 'none'}")
        where = f" WHERE model_version = {_quote(model_version)}" if model_version else ""
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM ({union}){where}")
    con.register("catalogue", _catalogue_frame())
    return Results(con, uris, model_version)
