"""The model stage's blocks joined into the reduce stage's input, as they finish.

The model stage emits one block per call of about ``files_per_decode_task`` files, and Ray Data's
shuffle runs a task per input block, at about 0.15 s each on 2 busy cores: 100 blocks cost 17-20 s
of an 800-radiograph job, three times what the models left. So blocks are concatenated in groups
while the models work on, and the driver holds references and block metadata only.

This module imports neither torch nor the models: its task runs in worker processes of its own
beside the model actors, and each worker imports the module that defines the task it runs (torch,
torchvision and timm would cost every such worker about 5 s of CPU taken from the models).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import pyarrow as pa
import ray
from ray.data.block import BlockAccessor, BlockMetadataWithSchema

from ra2batch.job.tables import REDUCE

#: Model-stage blocks per input block of the reduce stage's shuffle, and its bytes, at most.
COALESCE_BLOCKS = 32
COALESCE_BYTES = 64 * 2**20

#: ``(block, its (start, end) rows or None for all, bytes or 0 when unknown)``
Piece = tuple[ray.ObjectRef, tuple[int, int] | None, int]


def groups(pieces: Iterable[Piece]) -> Iterator[list[tuple[ray.ObjectRef, tuple[int, int] | None]]]:
    """``(block, rows)`` of ``pieces`` in groups of at most ``COALESCE_BLOCKS`` blocks and
    ``COALESCE_BYTES``, each yielded as soon as it is full."""
    group: list[tuple[ray.ObjectRef, tuple[int, int] | None]] = []
    size = 0
    for ref, rows, n in pieces:
        if group and (len(group) >= COALESCE_BLOCKS or size + n > COALESCE_BYTES):
            yield group
            group, size = [], 0
        group.append((ref, rows))
        size += n
    if group:
        yield group


@ray.remote(num_cpus=0, num_returns=2)
def _concat(bounds: list[tuple[int, int] | None], *blocks: Any) -> tuple[pa.Table, BlockMetadataWithSchema]:
    """One Arrow table of ``blocks``, each cut to its ``(start, end)`` rows where it has bounds, and
    its block metadata. Reserves no CPU: it copies a few MiB, while the model actors hold every CPU."""
    tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
    tables = [t if b is None else t.slice(b[0], b[1] - b[0]) for t, b in zip(tables, bounds)]
    table = pa.concat_tables(tables, promote_options="default")
    return table, BlockMetadataWithSchema.from_block(table)


def known_blocks(refs: list[ray.ObjectRef], metadata: list[BlockMetadataWithSchema]) -> ray.data.Dataset:
    """A dataset of Arrow blocks whose metadata is known: what ``ray.data.from_arrow_refs`` builds,
    without the metadata task it runs per block (each waits for a whole CPU, so for the model actors
    to end, and for a worker process to start: 2-3 s of every job on 2 cores). Ray Data 2.60's own
    construction of that dataset."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.from_operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data.dataset import MaterializedDataset

    context = ray.data.DataContext.get_current().copy()
    return MaterializedDataset(LogicalPlan(FromArrow(refs, metadata), context), context,
                               DatasetStats(metadata={"FromArrow": metadata}, parent=None))


def coalesced(pieces: Iterable[Piece]) -> ray.data.Dataset:
    """The model stage's blocks concatenated, up to ``COALESCE_BLOCKS`` blocks or ``COALESCE_BYTES``
    a block, each group as soon as it is full; an empty ``REDUCE`` table when there are none."""
    concatenated = [_concat.remote([b for _, b in g], *[r for r, _ in g]) for g in groups(pieces)]
    if not concatenated:
        empty = REDUCE.empty_table()
        return known_blocks([ray.put(empty)], [BlockMetadataWithSchema.from_block(empty)])
    return known_blocks([table for table, _ in concatenated], ray.get([meta for _, meta in concatenated]))
