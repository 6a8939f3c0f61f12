"""Small builders shared by tests: RA2-layout tables made from the catalogue."""

from __future__ import annotations

import pandas as pd

from ra2batch.catalogue import COLUMNS, ID_COLUMN, TEMPLATE_ORDER, totals


def ra2_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """RA2-layout table: ``{patient: {column: score}}``, unnamed joints 0, totals computed."""
    records = []
    for pid, scores in rows.items():
        r = {c: 0.0 for c in COLUMNS}
        r.update(scores)
        r.update(totals(r))
        r[ID_COLUMN] = pid
        records.append(r)
    return pd.DataFrame(records)[list(TEMPLATE_ORDER)]
