"""Decode stage (CPU tasks): listed files -> radiograph pixels, or an error row saying what is wrong.

A pure function of its input rows, so Ray may retry a lost task without changing any output. It
imports no model code: decode workers stay small and start fast. Pixels travel packed to one or two
bytes each (``tables.pack_pixels``) beside their size (``tables.DECODED``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import ray

from ra2batch.imaging.readers import SCORING_MAX_SIDE, ImageDecodeError, decode
from ra2batch.job.inputs import fs_path, header_limb, no_limb_problem
from ra2batch.job.tables import DECODED, pack_pixels
from ra2batch.output.schema import BUCKET, ID_FIELDS

if TYPE_CHECKING:
    from ra2batch.job.config import JobConfig

ID_NAMES = [f.name for f in ID_FIELDS]
#: Most bytes of listed files a decode task or actor holds read ahead of its decoding.
READ_AHEAD_BYTES = 256 * 2**20


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)


def _read_one(fs: pafs.FileSystem, row: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """One listed file -> its ``DECODED`` row so far (identity, size, hash, or the error) and its
    bytes (``None`` when there is nothing to decode)."""
    out = {k: _text(row[k]) for k in ID_NAMES}
    out.update({BUCKET: int(row[BUCKET])}, status="error", error=_text(row["problem"]),
               size_bytes=None if pd.isna(row["size_bytes"]) else int(row["size_bytes"]),
               mtime=None if pd.isna(row["mtime"]) else row["mtime"])
    if out["error"] and out["size_bytes"] is None:
        return out, None  # not found: nothing to read
    try:
        with fs.open_input_stream(fs_path(out["path"])) as f:
            data = f.read()
    except OSError as e:
        out["error"] = f"cannot read file: {str(e).splitlines()[0]}"
        return out, None
    out.update(size_bytes=len(data), content_hash=hashlib.sha256(data).hexdigest())
    return out, None if out["error"] else data  # readable but unidentified: not scored


def _decode_one(out: dict[str, Any], data: bytes | None) -> dict[str, Any]:
    """``out`` completed with the pixels of ``data`` (status ``ok``), or with why they cannot be had.

    The DICOM header's limb is kept as ``header_limb``; a file named without a limb takes it (the
    listing never reads a file), and one whose header names none either is an error."""
    if data is None:
        return out
    try:
        image = decode(data, out["path"], max_side=SCORING_MAX_SIDE)
    except Exception as e:  # any failure to decode one file is that file's error, never the job's
        message = str(e) if isinstance(e, ImageDecodeError) else f"{type(e).__name__}: {e}"
        out["error"] = message.removeprefix(f"{out['path']}: ").splitlines()[0]
        return out
    out["header_limb"] = header_limb(image.meta)
    out["limb"] = out["limb"] or out["header_limb"]
    if out["limb"] is None:
        out["error"] = no_limb_problem(out["path"], image.meta)
        return out
    width, height = image.original_size
    out.update(status="ok", error=None, width=int(width), height=int(height), decoded_width=image.width,
               decoded_height=image.height, format=str(image.format), bits=int(image.bits), pixels=pack_pixels(image))
    return out


def decode_files(batch: pd.DataFrame, *, fs: pafs.FileSystem, read_threads: int = 8) -> pa.Table:
    """Read and decode a batch of listed files (``inputs.LISTING_COLUMNS``) into ``DECODED`` rows.

    Up to ``read_threads`` files are read ahead of the decoding (object-store reads wait on the
    network, not the CPU), holding at most ``READ_AHEAD_BYTES`` of them (by their listed size; always
    at least the next file); decoding is serial, and each file's bytes are let go once decoded.
    """
    records = batch.to_dict("records")
    rows: list[dict[str, Any]] = []
    ahead: deque[tuple[Future, int]] = deque()
    held = 0
    with ThreadPoolExecutor(max(1, min(read_threads, len(records)))) as pool:
        for record in [*records, None]:
            size = 0 if record is None else int(0 if pd.isna(record["size_bytes"]) else record["size_bytes"])
            while ahead and (record is None or len(ahead) >= read_threads or held + size > READ_AHEAD_BYTES):
                future, n = ahead.popleft()
                rows.append(_decode_one(*future.result()))
                held -= n
                del future
            if record is not None:
                ahead.append((pool.submit(_read_one, fs, record), size))
                held += size
    return pa.Table.from_pylist(rows, schema=DECODED)


def even_blocks(items: int, size: int, workers: int) -> int:
    """How many blocks to cut ``items`` into: blocks of at most about ``size``, their count a multiple of
    ``workers`` where there are enough items, so that the workers finish together (25 blocks of 8 on 2
    model actors left one actor scoring the last block alone)."""
    n = -(-items // size)
    return min(-(-n // workers) * workers, items)


def listing_dataset(files: pd.DataFrame, cfg: JobConfig) -> ray.data.Dataset:
    """The listed ``files`` (``inputs.LISTING_COLUMNS``) as a dataset of even blocks of about
    ``cfg.files_per_decode_task`` rows (``cfg`` resolved; see :func:`even_blocks`)."""
    # from_items describes its blocks on the driver (from_pandas runs a task per block to do so)
    # and splits the rows evenly. Times go as microseconds since the epoch: its conversion to
    # NumPy would drop their time zone (with a warning); the decode stage's Arrow schema reads them back.
    mtime = files["mtime"].dt.as_unit("us")
    files = files.assign(mtime=mtime.astype("int64").astype("Int64").mask(mtime.isna()))
    return ray.data.from_items(files.astype(object).where(files.notna(), None).to_dict("records"),
                               override_num_blocks=even_blocks(len(files), cfg.files_per_decode_task,
                                                               cfg.detector_actors or 1))


def decode_dataset(files: pd.DataFrame, fs: pafs.FileSystem, cfg: JobConfig) -> ray.data.Dataset:
    """The listed ``files`` read and decoded by CPU tasks of about ``cfg.files_per_decode_task`` files
    each (``cfg`` resolved): ``DECODED`` rows."""
    # Decode's own memory reservation also keeps Ray Data from fusing it into the model actors.
    return listing_dataset(files, cfg).map_batches(
        decode_files, batch_format="pandas", batch_size=None, fn_kwargs={"fs": fs}, num_cpus=cfg.decode_cpus,
        memory=cfg.decode_memory_mb * 2**20)
