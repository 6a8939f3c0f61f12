"""The job's Parquet tables: their Arrow schemas and how they are written.

The schemas are the "Scoring-job outputs" contract of docs/design.md, with the 86 RA2 columns taken
from the catalogue. A table is a directory holding one deterministically named file; writing one
replaces that file atomically, so a rerun into the same output replaces it and never duplicates rows.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ra2batch.catalogue import COLUMNS, ID_COLUMN, TOTAL_COLUMNS
from ra2batch.storage import Location

if TYPE_CHECKING:
    from ra2batch.imaging.readers import Radiograph

SCORED_AT = pa.timestamp("us", tz="UTC")

#: Identity of a radiograph, carried through every stage of the pipeline.
ID_FIELDS = [
    pa.field("path", pa.string()), pa.field(ID_COLUMN, pa.string()),
    pa.field("visit", pa.string()), pa.field("limb", pa.string()),
]

IDENTITY: tuple[str, ...] = tuple(f.name for f in ID_FIELDS)

#: What the decode stage learns about a file.
FILE_FIELDS = [
    pa.field("status", pa.string()), pa.field("error", pa.string()),
    pa.field("width", pa.int64()), pa.field("height", pa.int64()),
    pa.field("format", pa.string()), pa.field("bits", pa.int64()),
    pa.field("size_bytes", pa.int64()), pa.field("content_hash", pa.string()),
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
    pa.field("column", pa.string()), pa.field("damage", pa.string()), pa.field("score", pa.float64()),
    pa.field("attention", pa.list_(pa.float32())),
    pa.field("attention_h", pa.int64()), pa.field("attention_w", pa.int64()),
    pa.field("uncertainty", pa.float64()), pa.field("review", pa.bool_()),
]

RUN_FIELDS = [pa.field("model_version", pa.string()), pa.field("scored_at", SCORED_AT)]

#: Decode stage output: one row per file; ``pixels`` is the HxW radiograph, row-major, packed by
#: :func:`pack_pixels` (empty when the file is in error).
DECODED = pa.schema(ID_FIELDS + FILE_FIELDS + [pa.field("pixels", pa.large_binary())])

# Packed level -> [0, 1] float32, one table per packing: exact for sources of up to 8 (16) bits,
# which the readers normalise as ``level / 255`` (``level / 65535``).
_LEVELS = {np.dtype(np.uint8): (np.arange(2**8) / (2**8 - 1)).astype(np.float32),
           np.dtype(np.uint16): (np.arange(2**16) / (2**16 - 1)).astype(np.float32)}


def pack_pixels(image: Radiograph) -> bytes:
    """A decoded radiograph's pixels (float32 in [0, 1]) as the bytes that travel from decode to the
    detector.

    One byte a pixel for 8-bit JPEG and PNG sources, whose levels are exactly ``level / 255``, else
    two: a quarter (a half) of float32's traffic through the object store. Exact for 8- and 16-bit
    JPEG and PNG; a DICOM windowed to [0, 1] comes back within 1/131070 of its decoded value.
    """
    dtype = np.uint8 if image.bits <= 8 and image.format != "dicom" else np.uint16
    top = np.iinfo(dtype).max
    return np.rint(np.clip(image.pixels, 0.0, 1.0) * top).astype(dtype).tobytes()


def unpack_pixels(data: memoryview | bytes, height: int, width: int) -> np.ndarray:
    """``(height, width)`` float32 in [0, 1] from :func:`pack_pixels`' bytes (the size says the packing)."""
    per_pixel, rest = divmod(len(data), height * width)
    if rest or per_pixel not in (1, 2):
        raise ValueError(f"{len(data)} bytes are not a packed {width} x {height} radiograph")
    levels = np.frombuffer(data, dtype=np.uint8 if per_pixel == 1 else np.uint16).reshape(height, width)
    return _LEVELS[levels.dtype][levels]

#: Model stages' output: ``record`` is ``image`` (one per file, file fields set), ``crop`` (box
#: fields and the ``crop`` pixels, float32 in its joint group's ``crop_shape``) or ``joint`` (box and
#: joint fields). Fields that do not apply to a record are null.
STREAM = pa.schema(
    [pa.field("record", pa.string())] + ID_FIELDS + FILE_FIELDS + [pa.field("n_detections", pa.int64())]
    + BOX_FIELDS + [pa.field("crop", pa.large_binary())] + JOINT_FIELDS
)

IMAGES = pa.schema(
    ID_FIELDS + FILE_FIELDS + [pa.field("n_detections", pa.int64()), pa.field("chosen", pa.bool_())]
    + RUN_FIELDS
)
JOINTS = pa.schema(
    ID_FIELDS[1:] + [f for f in JOINT_FIELDS if f.name in ("column", "damage", "score")]
    + BOX_FIELDS + [f for f in JOINT_FIELDS if f.name.startswith("attention")]
    + [f for f in JOINT_FIELDS if f.name in ("uncertainty", "review")] + [ID_FIELDS[0]] + RUN_FIELDS
)
PATIENTS = pa.schema(
    [pa.field(ID_COLUMN, pa.string()), pa.field("visit", pa.string())]
    + [pa.field(c, pa.float64()) for c in (*TOTAL_COLUMNS, *COLUMNS)]
    + [pa.field("n_images", pa.int64()), pa.field("limbs", pa.string()),
       pa.field("qc_flags", pa.list_(pa.string()))] + RUN_FIELDS
)

TABLES = {"images": IMAGES, "joints": JOINTS, "patients": PATIENTS}


def replace_parquet(out: Location, name: str, table: pa.Table) -> str:
    """Make ``table`` the whole content of the table directory ``name`` under ``out``; returns its URI.

    The file is written under a hidden name (Parquet readers skip names starting with ``.``) and then
    renamed over ``part-00000.parquet``, so a concurrent reader sees the old table or the new one,
    never a half-written file, and a rerun replaces rather than duplicates.
    """
    target = out.join(name)
    out.fs.create_dir(target, recursive=True)
    final, staging = f"{target}/part-00000.parquet", f"{target}/.part-00000.parquet.{uuid.uuid4().hex}"
    pq.write_table(table, staging, filesystem=out.fs)
    out.fs.move(staging, final)
    for info in out.fs.get_file_info(pafs.FileSelector(target)):
        if info.path != final and not info.base_name.startswith("."):
            out.fs.delete_file(info.path) if info.is_file else out.fs.delete_dir(info.path)
    return out.uri_of(name)


def write_table(out: Location, name: str, rows: pa.Table | pd.DataFrame) -> str:
    """Replace table ``name`` under ``out`` with ``rows`` (cast to its schema); returns its URI."""
    if isinstance(rows, pd.DataFrame):
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    return replace_parquet(out, name, rows.select(TABLES[name].names).cast(TABLES[name]))
