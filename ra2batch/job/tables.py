"""The pipeline's own Arrow schemas (decoded radiographs, the model stages' stream) and pixel packing.

The output tables' schemas are ``ra2batch.output.schema``'s; these reuse its field groups, so a
file's identity and metadata have one definition from decode to the written tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ra2batch.output.schema import BOX_FIELDS, BUCKET, FILE_FIELDS, ID_FIELDS, JOINT_FIELDS

if TYPE_CHECKING:
    from ra2batch.imaging.readers import Radiograph

#: Identity of a radiograph carried through every stage: who and which file, and the output bucket
#: its rows go to (``output.schema.bucket_of``, assigned when the job plans).
IDENTITY_FIELDS = ID_FIELDS + [pa.field(BUCKET, pa.int64())]
IDENTITY: tuple[str, ...] = tuple(f.name for f in IDENTITY_FIELDS)

#: Decode stage output: one row per file; ``pixels`` is the HxW radiograph, row-major, packed by
#: :func:`pack_pixels` (empty when the file is in error).
DECODED = pa.schema(IDENTITY_FIELDS + FILE_FIELDS + [pa.field("pixels", pa.large_binary())])

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
    [pa.field("record", pa.string())] + IDENTITY_FIELDS + FILE_FIELDS + [pa.field("n_detections", pa.int64())]
    + BOX_FIELDS + [pa.field("crop", pa.large_binary())] + JOINT_FIELDS
)

#: What the reduce stage receives: the stream without crops, plus ``removed`` records (identity
#: only) for files that vanished from the archive.
REDUCE = STREAM.remove(STREAM.get_field_index("crop"))
