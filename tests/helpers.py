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


def write_output(uri: str, frames: dict[str, pd.DataFrame], storage_options=None, buckets: int = 2,
                 model_version: str = "test") -> str:
    """Publish ``frames`` (table name -> rows; columns a table has that a frame lacks are null) as a new
    version of the output at ``uri``, through the same writer the scoring job uses."""
    import pyarrow as pa

    from ra2batch.output.files import write_bucket
    from ra2batch.output.buckets import BUCKET, bucket_of
    from ra2batch.output.schema import TABLES
    from ra2batch.output.writer import commit_tables, repair, writing
    from ra2batch.storage import resolve

    out = resolve(uri, storage_options)
    with writing(out, "score", {"model_version": model_version}) as run:
        expected = repair(run)
        actions: dict[str, list] = {name: [] for name in TABLES}
        for name, df in frames.items():
            schema = TABLES[name].schema
            paths = df["path"] if "path" in df else [""] * len(df)
            df = df.assign(**{BUCKET: bucket_of(df[ID_COLUMN], paths, buckets)})
            rows = pa.Table.from_pandas(df[[c for c in schema.names if c in df]], preserve_index=False)
            rows = pa.table({f.name: rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(len(df), f.type)
                             for f in schema}, schema=schema)
            for b in sorted(set(df[BUCKET])):
                part = rows.filter(pa.compute.equal(rows[BUCKET], b))
                actions[name].append(write_bucket(out, TABLES[name], b, part, run.run_id))
        versions = commit_tables(run, actions, overwrite=True, expected=expected)
        run.publish({**{f"{name}_version": v for name, v in versions.items()}, "buckets": buckets})
    return uri
