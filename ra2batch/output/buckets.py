"""The bucket that places each row of an output, and how many buckets an output has.

Every table but ``runs`` is partitioned by ``bucket``, a stable hash of the row's ``Patient_ID`` (of
its ``path`` when the file names no patient) modulo the output's bucket count: all rows of a patient
sit in the same bucket of every table, so the reduce stage assembles a bucket at a time and a
nightly merge rewrites only the files of the buckets that hold the patients it touched. Pure
Python: the command line reads the limits without importing pyarrow.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

BUCKET = "bucket"


#: Radiographs per bucket a new output is sized for (``JobConfig.buckets`` pins the count instead).
RADIOGRAPHS_PER_BUCKET = 2000
MAX_BUCKETS = 4096


def bucket_count(radiographs: int) -> int:
    """Buckets for an output of ``radiographs`` files: a power of two, about
    ``RADIOGRAPHS_PER_BUCKET`` radiographs each (1 for a small archive)."""
    n = 1
    while n * RADIOGRAPHS_PER_BUCKET < radiographs and n < MAX_BUCKETS:
        n *= 2
    return n


def bucket_of(patient_ids: Iterable[str | None], paths: Iterable[str], buckets: int) -> list[int]:
    """The bucket of each row: blake2b of its ``Patient_ID`` (of its ``path`` when it has none) modulo
    ``buckets``; stable across processes, machines and Python versions (unlike ``hash``)."""
    def one(pid: str | None, path: str) -> int:
        key = pid if isinstance(pid, str) and pid else f"path:{path}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % buckets

    return [one(pid, path) for pid, path in zip(patient_ids, paths)]
