"""Warm model pools: model actors that outlive jobs, so a standing cluster loads its models once.

A job's own model actors (Ray Data actor pools) start with the job and die with it: each pays for
a torch import and a model load, 4-7 s of every job on a 2-core machine and a fixed cost that
every nightly rescoring pays again. A pool started once (``ra2batch pool start``) keeps fused
detect-and-score actors (:class:`~ra2batch.job.predictors.DetectAndScore`) alive as detached,
named actors in the ``ra2batch`` namespace. A job whose bundle has the pool's ``model_version``
(a content hash, so the same weights) streams its decoded blocks to them instead of starting its
own actors (``JobConfig.model_pool``). The pool holds its CPUs and GPUs until it is stopped.

Pool actors restart when their process dies (``max_restarts=-1``) and their calls are retried
(``max_task_retries=-1``); every call is a pure function of its block, so a replay changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import ray

from ra2batch.job.config import JobConfig
from ra2batch.job.decode import decode_dataset, decode_files
from ra2batch.job.predictors import DetectAndScore, ModelSource

NAMESPACE = "ra2batch"
PREFIX = "models-"
#: Calls queued per actor: one running, one waiting, so an actor never idles between blocks.
IN_FLIGHT_PER_ACTOR = 2


class PoolWorker:
    """One warm actor: the whole bundle loaded once; scores decoded blocks with per-call options."""

    def __init__(self, source: ModelSource, version: str, cpus: float, gpus: float):
        self.bundle = source.load(["detectors", "joint_models"])
        self.info = {"model_version": version, "models": source.models, "cpus": cpus, "gpus": gpus,
                     "device": source.device}
        self._stages: dict[tuple, DetectAndScore] = {}

    def describe(self) -> dict[str, Any]:
        """Version, bundle URI, reserved ``cpus``/``gpus`` and the models' device."""
        return self.info

    def _stage(self, options: dict[str, Any]) -> DetectAndScore:
        key = tuple(sorted(options.items()))
        if key not in self._stages:
            self._stages[key] = DetectAndScore(self.bundle, **options)
        return self._stages[key]

    def score_block(self, block: Any, rows: tuple[int, int] | None, options: dict[str, Any]) -> pa.Table:
        """``DetectAndScore(**options)`` over the ``rows`` slice (``None``: all) of one decoded Ray Data block."""
        from ray.data.block import BlockAccessor

        table = BlockAccessor.for_block(block).to_arrow()
        if rows is not None:
            table = table.slice(rows[0], rows[1] - rows[0])
        return self._stage(options)(table)

    def score_files(self, records: list[dict[str, Any]], fs: Any, options: dict[str, Any]) -> pa.Table:
        """Read and decode listed files here (``decode.decode_files``), then score them like a block."""
        return self._stage(options)(decode_files(pd.DataFrame(records), fs=fs))


@dataclass
class Pool:
    """A running pool: its bundle's version and its actors."""

    version: str
    names: list[str]

    @property
    def handles(self) -> list[Any]:
        return [ray.get_actor(n, namespace=NAMESPACE) for n in self.names]

    def describe(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The first actor's :meth:`PoolWorker.describe` plus the pool's size and total reservation."""
        infos = ray.get([h.describe.remote() for h in self.handles], timeout=timeout_s)
        return {**infos[0], "actors": len(infos), "total_cpus": sum(i["cpus"] for i in infos),
                "total_gpus": sum(i["gpus"] for i in infos)}


def running_pools() -> dict[str, Pool]:
    """The pools on the connected cluster, by model version."""
    pools: dict[str, Pool] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] == NAMESPACE and name.startswith(PREFIX):
            version = name[len(PREFIX):].rsplit("-", 1)[0]
            pools.setdefault(version, Pool(version, [])).names.append(name)
    for pool in pools.values():
        pool.names.sort(key=lambda n: int(n.rsplit("-", 1)[1]))
    return pools


def unreserved(resources: dict[str, float], pools: list[Pool]) -> dict[str, float]:
    """``resources`` (``ray.cluster_resources()``) less what ``pools`` hold: what a job's own stages can use."""
    left = dict(resources)
    for pool in pools:
        info = pool.describe()
        left["CPU"] = max(left.get("CPU", 0.0) - info["total_cpus"], 0.0)
        if info["total_gpus"]:
            left["GPU"] = max(left.get("GPU", 0.0) - info["total_gpus"], 0.0)
    return left


def start_pool(models: str, storage_options: dict[str, Any] | None, version: str, config: JobConfig,
               progress=print) -> Pool:
    """Start (or find) the pool for the bundle at ``models``, sized like the job's model actors.

    ``config`` is resolved against the cluster: the pool gets ``detector_actors`` fused actors, each
    with ``actor_cpus`` CPUs and the GPU share the job's detector and joint-model actors would hold
    together. Blocks until every actor has loaded the models.
    """
    existing = running_pools().get(version)
    if existing:
        progress(f"a pool for model {version} is already running ({len(existing.names)} actor(s))")
        return existing
    cfg = config.resolved(ray.cluster_resources())
    gpus = (cfg.detector_gpus or 0.0) + (0.0 if cfg.fuse_models else cfg.scorer_gpus or 0.0)
    source = ModelSource(models, storage_options, cfg.torch_threads or 1, gpus > 0)
    names = [f"{PREFIX}{version}-{i}" for i in range(cfg.detector_actors or 1)]
    worker = ray.remote(PoolWorker)
    actors = [
        worker.options(name=n, namespace=NAMESPACE, lifetime="detached", num_cpus=cfg.actor_cpus,
                       num_gpus=gpus, max_restarts=-1, max_task_retries=-1).remote(source, version, cfg.actor_cpus,
                                                                                  gpus)
        for n in names
    ]
    progress(f"starting {len(names)} model actor(s) for model {version} ({cfg.actor_cpus:g} CPU, {gpus:g} GPU each) ...")
    started = time.perf_counter()
    try:
        ray.get([a.describe.remote() for a in actors])
    except Exception:
        for a in actors:
            ray.kill(a, no_restart=True)
        raise
    progress(f"model pool up in {time.perf_counter() - started:.1f} s: {', '.join(names)}")
    return Pool(version, names)


def stop_pools(version: str | None = None) -> list[str]:
    """Kill the pool of ``version`` (every pool when ``None``); the names of the actors stopped."""
    stopped = []
    for v, pool in running_pools().items():
        if version is None or v == version:
            for name, handle in zip(pool.names, pool.handles):
                ray.kill(handle, no_restart=True)
                stopped.append(name)
    return stopped


def score_on_pool(files: pd.DataFrame, fs: Any, cfg: JobConfig, pool: Pool,
                  options: dict[str, Any]) -> Iterator[pa.Table]:
    """The pool's ``STREAM`` tables for the listed ``files`` (``cfg`` resolved), as they finish (in no fixed order).

    Each actor reads and decodes its first ``cfg.files_per_decode_task`` files itself, so no actor
    waits for the job's first decode task (a new worker process importing Ray Data: 0.6-0.8 s on 2
    cores); Ray Data's CPU tasks decode the rest. Decoded blocks go from those tasks' output straight
    to an actor (the driver holds only their references), each to the actor with the fewest calls
    outstanding, at most ``IN_FLIGHT_PER_ACTOR`` per actor; the stream pauses while every actor is
    busy, and Ray Data's backpressure then pauses decoding.
    """
    handles = pool.handles
    load = [0] * len(handles)
    pending: dict[ray.ObjectRef, int] = {}
    records = files.astype(object).where(files.notna(), None).to_dict("records")
    step = cfg.files_per_decode_task
    head = [records[i:i + step] for i in range(0, min(len(handles) * step, len(records)), step)]
    rest = files.iloc[len(head) * step:]

    def submit(call) -> None:
        i = load.index(min(load))
        pending[call(handles[i])] = i
        load[i] += 1

    def finished() -> Iterator[pa.Table]:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            load[pending.pop(ref)] -= 1
            yield ray.get(ref)

    for part in head:
        submit(lambda actor, part=part: actor.score_files.remote(part, fs, options))
    blocks = decode_dataset(rest, fs, cfg).iter_internal_ref_bundles() if len(rest) else ()
    for bundle in blocks:
        for entry, piece in zip(bundle.blocks, bundle.slices):
            while min(load) >= IN_FLIGHT_PER_ACTOR:
                yield from finished()
            rows = None if piece is None else (piece.start_offset, piece.end_offset)
            submit(lambda actor, ref=entry.ref, rows=rows: actor.score_block.remote(ref, rows, options))
    while pending:
        yield from finished()
