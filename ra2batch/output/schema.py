"""The output tables' Arrow schemas, their keys, and what every field means.

The schemas are the "Scoring-job outputs" contract of docs/design.md, the 86 RA2 columns taken from
the catalogue. Every table but ``runs`` is partitioned by ``bucket`` (``output.buckets``).

Each field carries its data-dictionary entry as Arrow field metadata (:func:`described`):
``description``, and ``unit`` and ``range`` where it has them; each table's schema carries its own
``description``. The data files keep both (Parquet stores the Arrow schema), a table's Delta log
keeps the fields' entries, and ``ra2batch describe`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ra2batch.catalogue import BY_COLUMN, COLUMNS, EROSION, ID_COLUMN, NARROWING, clinical_name
from ra2batch.output.buckets import BUCKET

TIMESTAMP = pa.timestamp("us", tz="UTC")
#: Unit of every joint score and total: points of the Sharp/van der Heijde score.
SVDH = "SvdH points"


def described(name: str, type_: pa.DataType, description: str, unit: str | None = None,
              range_: str | None = None) -> pa.Field:
    """A field that carries its meaning: ``description`` and, where it has them, ``unit`` and ``range``
    (inclusive, e.g. ``0-5``) as Arrow field metadata."""
    meta = {"description": description, "unit": unit, "range": range_}
    return pa.field(name, type_, metadata={k: v for k, v in meta.items() if v})


#: Identity of a radiograph, carried through every stage of the pipeline.
ID_FIELDS = [
    described("path", pa.string(), "the file's path or URI, as listed in the input"),
    described(ID_COLUMN, pa.string(), "patient identifier, from the file name ({Patient_ID}-{limb}); "
              "null when the name gives none"),
    described("visit", pa.string(), "visit, from the file name; null without visits"),
    described("limb", pa.string(), "LH, RH, LF or RF (left/right hand/foot), from the file name, or the DICOM "
              "header of a file named without one; null when unknown"),
]

#: What the decode stage learns about a file (``mtime``: the store's modification time when listed).
FILE_FIELDS = [
    described("status", pa.string(), "ok (scored) | error (not decoded) | rejected (decoded, but the detector "
              "found no hand or foot above the bundle's limb_min_confidence; not scored)"),
    described("error", pa.string(), "why the file was not scored; null when ok"),
    described("width", pa.int64(), "the file's width, even when decoded at reduced resolution; null on error",
              "pixels"),
    described("height", pa.int64(), "the file's height, even when decoded at reduced resolution; null on error",
              "pixels"),
    described("format", pa.string(), "image format the bytes were decoded as (jpeg, png, dicom); null on error"),
    described("bits", pa.int64(), "bits per sample of the stored image (8 or 16)", "bits"),
    described("header_limb", pa.string(), "the limb the file's DICOM header names (ImageLaterality or Laterality "
              "L/R with BodyPartExamined HAND/FOOT); null when it names none"),
    described("size_bytes", pa.int64(), "size of the file", "bytes"),
    described("content_hash", pa.string(), "sha256 of the file's bytes, hex"),
    described("mtime", TIMESTAMP, "the store's modification time of the file when listed (UTC)"),
]

#: A detected crop: which class, where, and how sure the detector was.
BOX_FIELDS = [
    described("crop_class", pa.string(), "detector class whose box holds the joint: fin_ip (thumb or big toe), "
              "fin_1..fin_4 (digits or toes 2-5), wrist"),
    described("group", pa.string(), "joint-model group that scored the crop (models.PLAN)"),
    *[described(f"box_{edge}", pa.float64(), f"{what} edge of the detector's box, in the radiograph as decoded",
                "pixels") for edge, what in (("x0", "left"), ("y0", "top"), ("x1", "right"), ("y1", "bottom"))],
    described("detector_score", pa.float64(), "the detector's confidence in the box", range_="0-1"),
]

#: One joint's prediction and the attention map it came with.
JOINT_FIELDS = [
    described("joint", pa.string(), "RA2 column of the joint, e.g. LH_mcp_E__2 (not `column`, a reserved word "
              "in SQL)"),
    described("damage", pa.string(), "E (erosion) | J (joint-space narrowing)"),
    described("score", pa.float64(), "predicted score of the joint, clipped to its range (narrowing 0-4, hand "
              "erosion 0-5, foot erosion 0-10); with flip TTA the mean of the crop's and the flipped crop's",
              SVDH, "0-10"),
    described("attention", pa.list_(pa.float32()), "the joint model's attention map, row-major "
              "(attention_h x attention_w)", range_="0-1"),
    described("attention_h", pa.int64(), "rows of the attention map", "cells"),
    described("attention_w", pa.int64(), "columns of the attention map", "cells"),
    described("uncertainty", pa.float64(), "|score(crop) - score(flipped crop)| (flip TTA); NaN without TTA",
              SVDH, "0-10"),
    described("review", pa.bool_(), "uncertainty at or above the run's JobConfig.review_threshold (default 0.75): a reader should check it"),
]

#: What the detector made of a radiograph (null for a file that was not decoded).
DETECTION_FIELDS = [
    described("n_detections", pa.int64(), "crop classes the detector found a usable box for (the best box per "
              "class)", "boxes"),
    described("limb_confidence", pa.float64(), "how sure the detector is that the image shows a hand (foot): the "
              "mean over its classes of the best box's score (models.bundle.limb_confidence); below the bundle's "
              "limb_min_confidence the file is rejected", None, "0-1"),
]

RUN_FIELDS = [
    described("model_version", pa.string(), "content hash of the model bundle that scored the row"),
    described("scored_at", TIMESTAMP, "when the run that wrote the row scored it (UTC)"),
]
_BUCKET_FIELD = described(BUCKET, pa.int64(), "partition: blake2b of Patient_ID (of path when there is none) "
                          "modulo the output's bucket count; all rows of a patient share it")


def _pick(fields: list[pa.Field], name: str) -> pa.Field:
    return next(f for f in fields if f.name == name)


def _joint(name: str) -> pa.Field:
    return _pick(JOINT_FIELDS, name)


def _score_field(column: str) -> pa.Field:
    top = BY_COLUMN[column].max_score
    return described(column, pa.float64(), f"{clinical_name(column)}; SvdH 0-{top}; NaN when the joint was not "
                     "found", SVDH, f"0-{top}")


def _most(columns: tuple[str, ...]) -> int:
    return sum(BY_COLUMN[c].max_score for c in columns)


_TOTALS = {
    "Overall_Tol": ("total damage: Overall_erosion + Overall_narrowing, of the joints present", _most(COLUMNS)),
    "Overall_erosion": (f"sum of the {len(EROSION)} erosion scores, of the joints present", _most(EROSION)),
    "Overall_narrowing": (f"sum of the {len(NARROWING)} narrowing scores, of the joints present", _most(NARROWING)),
}

IMAGES = pa.schema(
    ID_FIELDS + FILE_FIELDS
    + DETECTION_FIELDS
    + [described("chosen", pa.bool_(), "false for a duplicate file of the same patient, visit and limb "
                 "that was not used")]
    + RUN_FIELDS + [_BUCKET_FIELD],
    metadata={"description": "one row per input file: what was read and whether it was scored"},
)
JOINTS = pa.schema(
    [*ID_FIELDS[1:], _joint("joint"), _joint("damage"), _joint("score"), *BOX_FIELDS,
     _joint("attention"), _joint("attention_h"), _joint("attention_w"), _joint("uncertainty"), _joint("review"),
     described("path", pa.string(), "the radiograph the joint was scored on, as listed in the input")]
    + RUN_FIELDS + [_BUCKET_FIELD],
    metadata={"description": "one row per predicted joint, with its detector box and attention map"},
)
PATIENTS = pa.schema(
    [described(ID_COLUMN, pa.string(), "patient identifier"), _pick(ID_FIELDS, "visit")]
    + [described(c, pa.float64(), text, SVDH, f"0-{most}") for c, (text, most) in _TOTALS.items()]
    + [_score_field(c) for c in COLUMNS]
    + [described("n_images", pa.int64(), "radiographs of this patient visit in the input", "files"),
       described("limbs", pa.string(), "limbs whose radiograph was used, comma-separated, e.g. LF,LH,RF,RH"),
       described("qc_flags", pa.list_(pa.string()), "quality-control notes, e.g. missing_limb:RF, "
                 "no_limb_found:LH, not_detected:LH:fin_2, partial_totals, duplicate_image:LH, review:COLUMN, "
                 "filled:COLUMN (filled in predictions.csv), limb_header_mismatch:LH (a file named LH whose "
                 "DICOM header names another limb; scored as LH), limb_unknown")]
    + RUN_FIELDS + [_BUCKET_FIELD],
    metadata={"description": "one row per patient visit: totals and the 86 RA2 joint scores"},
)
#: One row per file ever seen: what nightly rescoring compares the archive's listing with.
CATALOGUE = pa.schema(
    ID_FIELDS + [_pick(FILE_FIELDS, "size_bytes"), _pick(FILE_FIELDS, "mtime"), _pick(FILE_FIELDS, "content_hash"),
                 described("status", pa.string(), "ok | error | rejected, as in images, or removed (gone "
                           "from the input since it was listed)"),
                 described("removed_at", TIMESTAMP, "when a run found the file gone (UTC); null while it is there")]
    + RUN_FIELDS + [_BUCKET_FIELD],
    metadata={"description": "one row per file ever seen: what nightly rescoring compares the input's listing with"},
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
