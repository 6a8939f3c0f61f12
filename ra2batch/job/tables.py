"""The pipeline's own Arrow schemas (decoded radiographs, the model stages' stream) and pixel packing.

The output tables' schemas are ``ra2batch.output.schema``'s; these reuse its field groups, so a
file's identity and metadata have one definition from decode to the written tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ra2batch.output.schema import BOX_FIELDS, BUCKET, DETECTION_FIELDS, FILE_FIELDS, ID_FIELDS, JOINT_FIELDS

from ra2batch.imaging.readers import to_pixels

if TYPE_CHECKING:
    from ra2batch.imaging.readers import Radiograph

#: Identity of a radiograph carried through every stage: who and which file, and the output bucket
#: its rows go to (``output.schema.bucket_of``, assigned when the job plans).
IDENTITY_FIELDS = ID_FIELDS + [pa.field(BUCKET, pa.int64())]
IDENTITY: tuple[str, ...] = tuple(f.name for f in IDENTITY_FIELDS)

#: Decode stage output: one row per file; ``pixels`` is the radiograph's levels, row-major, packed by
#: :func:`pack_pixels` (empty when the file is in error), ``decoded_width`` x ``decoded_height`` of them:
#: fewer than the file's ``width`` x ``height`` when it was decoded at reduced resolution.
DECODED = pa.schema(IDENTITY_FIELDS + FILE_FIELDS + [
    pa.field("decoded_width", pa.int64()), pa.field("decoded_height", pa.int64()), pa.field("pixels", pa.large_binary())])

def pack_pixels(image: Radiograph) -> bytes:
    """A decoded radiograph as the bytes that travel from decode to the detector: its levels, one
    byte a pixel for 8-bit sources, else two (a quarter, or a half, of float32's traffic through the
    object store), exactly as the reader decoded them."""
    return image.levels.tobytes()


def unpack_pixels(data: memoryview | bytes, height: int, width: int) -> np.ndarray:
    """``(height, width)`` float32 in [0, 1] from :func:`pack_pixels`' bytes (the size says the packing)."""
    per_pixel, rest = divmod(len(data), height * width)
    if rest or per_pixel not in (1, 2):
        raise ValueError(f"{len(data)} bytes are not a packed {width} x {height} radiograph")
    levels = np.frombuffer(data, dtype=np.uint8 if per_pixel == 1 else np.uint16).reshape(height, width)
    return to_pixels(levels)


#: Model stages' output: ``record`` is ``image`` (one per file, file fields set), ``crop`` (box
#: fields and the ``crop`` pixels, float32 in its joint group's ``crop_shape``) or ``joint`` (box and
#: joint fields). Fields that do not apply to a record are null.
STREAM = pa.schema(
    [pa.field("record", pa.string())] + IDENTITY_FIELDS + FILE_FIELDS + DETECTION_FIELDS
    + BOX_FIELDS + [pa.field("crop", pa.large_binary())] + JOINT_FIELDS
)

#: What the reduce stage receives: the stream without crops, plus ``removed`` records (identity
#: only) for files that vanished from the archive.
REDUCE = STREAM.remove(STREAM.get_field_index("crop"))
