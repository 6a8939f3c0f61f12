"""The output tables' Arrow schemas and their keys.

The schemas are the "Scoring-job outputs" contract of docs/design.md, the 86 RA2 columns taken from
the catalogue. Every table but ``runs`` is partitioned by ``bucket`` (``output.buckets``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ra2batch.catalogue import COLUMNS, ID_COLUMN, TOTAL_COLUMNS
from ra2batch.output.buckets import BUCKET

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Identity of a radiograph, carried through every stage of the pipeline.
ID_FIELDS = [
    pa.field("path", pa.string()), pa.field(ID_COLUMN, pa.string()),
    pa.field("visit", pa.string()), pa.field("limb", pa.string()),
]

#: What the decode stage learns about a file (``mtime``: the store's modification time when listed).
FILE_FIELDS = [
    pa.field("status", pa.string()), pa.field("error", pa.string()),
    pa.field("width", pa.int64()), pa.field("height", pa.int64()),
    pa.field("format", pa.string()), pa.field("bits", pa.int64()),
    pa.field("size_bytes", pa.int64()), pa.field("content_hash", pa.string()),
    pa.field("mtime", TIMESTAMP),
]

#: A detected crop: which class, where, and how sure the detector was.
BOX_FIELDS = [
    pa.field("crop_class", pa.string()), pa.field("group", pa.string()),
    pa.field("box_x0", pa.float64()), pa.field("box_y0", pa.float64()),
    pa.field("box_x1", pa.float64()), pa.field("box_y1", pa.float64()),
    pa.field("detector_score", pa.float64()),
]

#: One joint's prediction and the attention map it came with.
JOINT_FIELDS = [
    pa.field("joint", pa.string()), pa.field("damage", pa.string()), pa.field("score", pa.float64()),
    pa.field("attention", pa.list_(pa.float32())),
    pa.field("attention_h", pa.int64()), pa.field("attention_w", pa.int64()),
    pa.field("uncertainty", pa.float64()), pa.field("review", pa.bool_()),
]

#: What the detector made of a radiograph: how many crop classes it found, and how sure it is that the
#: image shows a hand (foot) at all (``models.bundle.limb_confidence``, 0-1).
DETECTION_FIELDS = [pa.field("n_detections", pa.int64()), pa.field("limb_confidence", pa.float64())]

RUN_FIELDS = [pa.field("model_version", pa.string()), pa.field("scored_at", TIMESTAMP)]
_BUCKET_FIELD = pa.field(BUCKET, pa.int64())


def _joint(name: str) -> pa.Field:
    return next(f for f in JOINT_FIELDS if f.name == name)


IMAGES = pa.schema(
    ID_FIELDS + FILE_FIELDS + DETECTION_FIELDS + [pa.field("chosen", pa.bool_())]
    + RUN_FIELDS + [_BUCKET_FIELD]
)
JOINTS = pa.schema(
    ID_FIELDS[1:] + [_joint("joint"), _joint("damage"), _joint("score")] + BOX_FIELDS
    + [_joint("attention"), _joint("attention_h"), _joint("attention_w"), _joint("uncertainty"), _joint("review")]
    + [ID_FIELDS[0]] + RUN_FIELDS + [_BUCKET_FIELD]
)
PATIENTS = pa.schema(
    [pa.field(ID_COLUMN, pa.string()), pa.field("visit", pa.string())]
    + [pa.field(c, pa.float64()) for c in (*TOTAL_COLUMNS, *COLUMNS)]
    + [pa.field("n_images", pa.int64()), pa.field("limbs", pa.string()),
       pa.field("qc_flags", pa.list_(pa.string()))] + RUN_FIELDS + [_BUCKET_FIELD]
)
#: One row per file ever seen: what nightly rescoring compares the archive's listing with.
CATALOGUE = pa.schema(
    ID_FIELDS + [pa.field("size_bytes", pa.int64()), pa.field("mtime", TIMESTAMP),
                 pa.field("content_hash", pa.string()), pa.field("status", pa.string()),
                 pa.field("removed_at", TIMESTAMP)] + RUN_FIELDS + [_BUCKET_FIELD]
)


@dataclass(frozen=True)
class Table:
    """A bucketed output table: its schema and the columns that identify a row."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]

    @property
    def file_schema(self) -> pa.Schema:
        """The schema of its Parquet data files: Delta keeps the partition column in the log, not the files."""
        return self.schema.remove(self.schema.get_field_index(BUCKET))


#: The bucketed tables, in the order a run commits them.
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("images", IMAGES, ("path",)),
    Table("joints", JOINTS, ("path", "joint")),
    Table("patients", PATIENTS, (ID_COLUMN, "visit")),
    Table("catalogue", CATALOGUE, ("path",)),
)}
