"""Query results to a terminal table, a CSV file or a Parquet file (local or ``s3://``)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ra2batch.csvtext import neutralise
from ra2batch.storage import resolve

from .results import QueryError

#: Rows shown on a terminal before the table is cut (``--output`` writes them all).
SCREEN_ROWS = 50


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _list_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if df[c].dtype == object and df[c].map(_is_list).any()]


def _as_json(v: Any) -> Any:
    return json.dumps([x.item() if hasattr(x, "item") else x for x in v]) if _is_list(v) else v


def _short(v: Any) -> Any:
    """A list cell for the terminal: short text lists joined, long or numeric ones summarised."""
    if not _is_list(v):
        return v
    if len(v) and all(isinstance(x, str) for x in v) and sum(map(len, v)) <= 60:
        return ",".join(v)
    return f"[{len(v)} values]"


def render(df: pd.DataFrame, max_rows: int = SCREEN_ROWS) -> str:
    """``df`` as an aligned text table (floats to 3 decimals), cut after ``max_rows`` rows."""
    shown = df.head(max_rows).copy()
    for c in shown.columns[shown.dtypes == object]:
        shown[c] = shown[c].map(lambda v: "-" if v is None else _short(v))
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-") if len(df.columns) else ""
    more = len(df) - len(shown)
    note = (f"({len(df)} rows; the first {len(shown)} shown, write them all with --output FILE.csv)" if more
            else f"({len(df)} row{'s' if len(df) != 1 else ''})")
    return f"{text}\n{note}" if len(df) else note


def write(df: pd.DataFrame, out: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``df`` to ``out``: ``.csv`` (list cells as JSON arrays) or ``.parquet`` (types kept)."""
    lower = out.lower()
    if lower.endswith(".csv"):
        table = df.copy()
        for c in _list_columns(table):
            table[c] = table[c].map(_as_json)
        for c in table.columns[table.dtypes == object]:  # text a spreadsheet would run as a formula
            table[c] = neutralise(table[c])
        data = table.to_csv(index=False).encode()
    elif lower.endswith(".parquet"):
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
        data = sink.getvalue()
    else:
        raise QueryError(f"--output {out}: name a .csv or .parquet file")
    loc = resolve(out, storage_options)
    try:
        loc.write_bytes(data)
    except OSError as e:
        raise QueryError(f"cannot write {out}: {str(e).splitlines()[0]}") from e
