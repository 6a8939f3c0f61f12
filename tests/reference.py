"""The job's tables assembled the way it did before its reduce stage ran on the cluster: every stream
row of the archive in one process, one pandas pass. The distributed reduce must produce the same rows."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ra2batch.job.assemble import assemble_patients, choose_images, predictions, with_fill_flags


def reference_tables(stream: pa.Table, medians: dict[str, float]) -> dict[str, pd.DataFrame]:
    """images, joints, patients and predictions of the ``REDUCE`` rows in ``stream`` (no run columns)."""
    images = stream.filter(pc.equal(stream["record"], "image")).to_pandas().sort_values("path", ignore_index=True)
    images["chosen"], _ = choose_images(images)
    joints = stream.filter(pc.equal(stream["record"], "joint")).to_pandas()
    joints = joints[joints["path"].isin(images.loc[images["chosen"], "path"])]
    patients = with_fill_flags(assemble_patients(images, joints), medians)
    return {"images": images, "joints": joints, "patients": patients,
            "predictions": predictions(patients, medians, visits=patients["visit"].notna().any())}


def rows(df: pd.DataFrame, columns: list[str]) -> set[tuple[Any, ...]]:
    """``df``'s rows over ``columns`` as a set: floats rounded, lists as tuples, NaN and None alike."""
    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return None if v != v else round(v, 6)
        if hasattr(v, "__len__") and not isinstance(v, str):
            return tuple(cell(x) for x in v)
        return None if v is None or v is pd.NA else v

    return {tuple(cell(v) for v in r) for r in df[columns].itertuples(index=False, name=None)}
