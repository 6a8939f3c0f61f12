"""Model pools: fused detect-and-score actors (:class:`PoolWorker`) fed blocks of work by the driver.

Two kinds share one dispatcher (:func:`score_on_pool`):

- A **warm pool**, started once (``ra2batch pool start``), keeps its actors alive as detached, named
  actors in the ``ra2batch`` namespace, so a standing cluster imports torch and loads its models once
  instead of in every job (4-7 s of each job on a 2-core machine, paid again by every nightly
  rescoring). A job whose bundle has the pool's ``model_version`` (a content hash, so the same
  weights) sends its work there (``JobConfig.model_pool``); the job's pool sizes and GPU shares then
  do not apply, its batch sizes and scoring options do. The pool holds its CPUs and GPUs until stopped.
- A **job's own pool** (:func:`score_on_job_actors`): the same actors, anonymous, started by one job
  and killed as its model stage ends (their CPUs go to the reduce stage). They were a Ray Data actor
  pool; on this dispatcher they get the same blocks and queueing as a warm pool, and so scale with
  CPUs as it does (``benchmarks/bench_scaling.py``).

On a CPU-only pool the actors also read and decode the files: the same cores would decode them
anyway, and a job then starts no Ray worker process at all (a new worker costs 0.6-1 s of CPU to
boot and import Ray Data, on every job, since Ray's workers belong to one job). With GPUs, decoding
stays in Ray Data's CPU tasks, off the GPUs' critical path.

Pool actors restart when their process dies (``max_restarts=-1``) and their calls are retried
(``max_task_retries=-1``); every call is a pure function of its block, so a replay changes nothing.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow as pa
import ray

from ra2batch.job.coalesce import Piece
from ra2batch.job.config import JobConfig
from ra2batch.job.decode import decode_dataset, even_blocks
from ra2batch.job.predictors import DecodeDetectAndScore, DetectAndScore, ModelSource

class PoolError(RuntimeError):
    """A pool that cannot serve: an actor gone or not answering; the message says which and what to do."""


NAMESPACE = "ra2batch"
PREFIX = "models-"
#: Calls queued per actor: one running, one waiting, so an actor never idles between blocks.
IN_FLIGHT_PER_ACTOR = 2
START_TIMEOUT_S = 600.0
#: CPUs a job on a pool needs for its own tasks (Ray Data's shuffle of the reduce stage takes whole CPUs).
JOB_CPUS = 1.0


class PoolWorker:
    """One warm actor: the whole bundle loaded once; scores blocks of listed files or of decoded
    radiographs with each job's options (batch sizes, TTA, review threshold)."""

    def __init__(self, source: ModelSource, version: str, cpus: float, gpus: float, decodes: bool):
        self.bundle = source.load(["detectors", "joint_models"])
        self.info = {"model_version": version, "models": source.models, "cpus": cpus, "gpus": gpus,
                     "device": source.device, "decodes": decodes}
        self._stages: dict[tuple, DetectAndScore] = {}

    def describe(self) -> dict[str, Any]:
        """Version, bundle URI, reserved ``cpus``/``gpus``, the models' device and whether the actor
        decodes the files itself (``decodes``: CPU pools)."""
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
        """Read and decode listed files here, then score them like a block (``predictors.DecodeDetectAndScore``)."""
        return DecodeDetectAndScore(fs, self._stage(options))(pd.DataFrame(records))


@dataclass
class Pool:
    """A running pool: its bundle's version and its actors."""

    version: str
    names: list[str]

    @functools.cached_property
    def handles(self) -> list[Any]:
        """The actors' handles, looked up once (a handle stays valid across its actor's restarts)."""
        try:
            return [ray.get_actor(n, namespace=NAMESPACE) for n in self.names]
        except ValueError as e:
            raise PoolError(f"the model pool for {self.version} lost an actor ({e}); restart it with "
                            "`ra2batch pool stop --model-version ...` and `ra2batch pool start`") from e

    def describe(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The first actor's :meth:`PoolWorker.describe` plus the pool's size and total reservation."""
        try:
            infos = ray.get([h.describe.remote() for h in self.handles], timeout=timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            raise PoolError(f"the model pool for {self.version} did not answer within {timeout_s:g} s "
                            f"({type(e).__name__}); see `ray status` (are its CPUs/GPUs still there?), or stop it "
                            "with `ra2batch pool stop`") from e
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


def pool_actor_cpus(cluster_cpus: float, actors: int) -> float:
    """CPUs each of a CPU-only pool's ``actors`` reserves by default: all but ``JOB_CPUS`` of the
    cluster's, shared; none on a cluster of ``JOB_CPUS`` or fewer, or no job could run its own tasks."""
    return max(0.0, math.floor((cluster_cpus - JOB_CPUS) / actors * 100) / 100)  # hundredths, rounded down


def _launch(names: list[str | None], source: ModelSource, version: str, cpus: float, gpus: float,
            decodes: bool) -> list[Any]:
    """One :class:`PoolWorker` per entry of ``names``, returned once every one has loaded the models
    (at most ``START_TIMEOUT_S``): detached and named for a name (a warm pool), anonymous and owned
    by this driver for ``None`` (a job's own pool). Kills them all and raises :class:`PoolError` if
    one fails to start."""
    worker = ray.remote(PoolWorker)
    placed = [{"name": name, "namespace": NAMESPACE, "lifetime": "detached"} if name else {} for name in names]
    actors = [worker.options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1, **where).remote(
        source, version, cpus, gpus, decodes) for where in placed]
    try:
        ray.get([a.describe.remote() for a in actors], timeout=START_TIMEOUT_S)
    except BaseException as e:
        for a in actors:
            ray.kill(a, no_restart=True)
        n = len(names)
        if isinstance(e, ray.exceptions.GetTimeoutError):
            raise PoolError(f"{n} model actor(s) did not start within {START_TIMEOUT_S:g} s: does the cluster have "
                            f"{n} x {cpus:g} CPU and {gpus:g} GPU free (`ray status`)?") from e
        if isinstance(e, ray.exceptions.RayActorError):
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise PoolError(f"a model actor failed to load the models from {source.models}: {last}") from e
        raise
    return actors


def start_pool(models: str, storage_options: dict[str, Any] | None, version: str, config: JobConfig,
               progress=print) -> Pool:
    """Start (or find) the warm pool for the bundle at ``models``, sized like the job's model actors.

    ``config`` is resolved against the cluster: the pool gets ``detector_actors`` fused actors, each
    with ``actor_cpus`` CPUs and the GPU share the job's detector and joint-model actors would hold
    together; with ``decode_in_actors`` (default: on pools without GPUs) they read and decode the
    files too. A CPU-only pool keeps one actor per CPU but, unless ``actor_cpus`` is given, reserves
    ``JOB_CPUS`` fewer CPUs than the cluster has: the jobs it serves need a CPU for their own tasks
    (the shuffle and reduce stage), which run when the models are done; on a one-CPU cluster it
    reserves none (the actor and the jobs' tasks take turns on that CPU). Blocks until every actor
    has loaded the models, at most ``START_TIMEOUT_S``.
    """
    existing = running_pools().get(version)
    if existing:
        progress(f"a pool for model {version} is already running ({len(existing.names)} actor(s))")
        return existing
    resources = ray.cluster_resources()
    cfg = config.resolved(resources)
    gpus = _fused_gpus(cfg)
    if not gpus and config.actor_cpus is None:
        n = cfg.detector_actors or 1
        cfg = cfg.model_copy(update={"actor_cpus": pool_actor_cpus(resources.get("CPU", 1.0), n)})
    source = ModelSource(models, storage_options, cfg.torch_threads or 1, gpus > 0)
    names = [f"{PREFIX}{version}-{i}" for i in range(cfg.detector_actors or 1)]
    progress(f"starting {len(names)} model actor(s) for model {version} ({cfg.actor_cpus:g} CPU, {gpus:g} GPU each) ...")
    started = time.perf_counter()
    _launch(names, source, version, cfg.actor_cpus, gpus, bool(cfg.decode_in_actors))
    progress(f"model pool up in {time.perf_counter() - started:.1f} s: {', '.join(names)}")
    return Pool(version, names)


def _fused_gpus(cfg: JobConfig) -> float:
    """The GPU share of one fused actor (``cfg`` resolved): what the detector and joint-model actors
    would hold apart."""
    return (cfg.detector_gpus or 0.0) + (0.0 if cfg.fuse_models else cfg.scorer_gpus or 0.0)


def score_on_job_actors(files: pd.DataFrame, fs: Any, models: str, model_options: dict[str, Any] | None,
                        version: str, cfg: JobConfig, on_ready: Callable[[], None] = lambda: None
                        ) -> Iterator[ray.ObjectRef]:
    """:func:`score_on_pool` on the job's own pool: ``cfg.detector_actors`` fused actors of
    ``cfg.actor_cpus`` CPUs and the fused GPU share each (``cfg`` resolved, ``fuse_models``), started
    when the stream is first read (``on_ready()`` once they have loaded the models) and killed when
    it ends or is closed, so that the reduce stage gets their CPUs."""
    gpus = _fused_gpus(cfg)
    source = ModelSource(models, model_options, cfg.torch_threads or 1, gpus > 0)
    actors = _launch([None] * (cfg.detector_actors or 1), source, version, cfg.actor_cpus or 1.0, gpus,
                     bool(cfg.decode_in_actors))
    on_ready()
    try:
        yield from score_on_pool(files, fs, cfg, actors, bool(cfg.decode_in_actors), cfg.scoring_options())
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def stop_pools(version: str | None = None) -> list[str]:
    """Kill the pool of ``version`` (every pool when ``None``); the names of the actors stopped."""
    stopped = []
    for v, pool in running_pools().items():
        if version is None or v == version:
            for name in pool.names:
                try:
                    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
                except ValueError:
                    continue  # gone since it was listed
                stopped.append(name)
    return stopped


def _even_parts(records: list[Any], step: int, multiple: int) -> list[list[Any]]:
    """``records`` cut into ``decode.even_blocks`` parts, as even as possible."""
    n = even_blocks(len(records), step, multiple)
    bounds = [round(i * len(records) / n) for i in range(n + 1)] if n else [0]
    return [records[a:b] for a, b in zip(bounds, bounds[1:])]


def block_slices(dataset: ray.data.Dataset) -> Iterator[Piece]:
    """A ``coalesce.Piece`` for each of ``dataset``'s output blocks as they finish (the dataset runs
    here); the driver holds references only."""
    for bundle in dataset.iter_internal_ref_bundles():
        for entry, piece in zip(bundle.blocks, bundle.slices):
            yield (entry.ref, None if piece is None else (piece.start_offset, piece.end_offset),
                   entry.metadata.size_bytes or 0)


def score_on_pool(files: pd.DataFrame, fs: Any, cfg: JobConfig, actors: list[Any], decodes: bool,
                  options: dict[str, Any]) -> Iterator[ray.ObjectRef]:
    """References to the ``STREAM`` tables of a pool's ``actors`` (:class:`PoolWorker` handles; they
    read and decode their files when ``decodes``) for the listed ``files`` (``cfg`` resolved), as they
    finish (in no fixed order); the tables stay in the object store.

    Work goes in blocks of about ``cfg.files_per_decode_task`` files, each to the actor with the fewest
    calls outstanding, at most ``IN_FLIGHT_PER_ACTOR`` per actor. Actors that decode read and decode
    every block themselves. Otherwise each actor decodes only its first block (so that no GPU
    waits for the job's first decode worker to start) and Ray Data's CPU tasks decode the rest;
    their blocks go from the tasks' output straight to an actor (the driver holds only references),
    and while every actor is busy the stream pauses and Ray Data's backpressure pauses decoding.
    """
    load = [0] * len(actors)
    pending: dict[ray.ObjectRef, int] = {}
    records = files.astype(object).where(files.notna(), None).to_dict("records")
    step = cfg.files_per_decode_task
    if decodes:
        own = _even_parts(records, step, len(actors))
    else:
        own = [records[i:i + step] for i in range(0, min(len(records), len(actors) * step), step)]

    def submit(call) -> Iterator[ray.ObjectRef]:
        while min(load) >= IN_FLIGHT_PER_ACTOR:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield from collect(done)
        i = load.index(min(load))
        pending[call(actors[i])] = i
        load[i] += 1

    def collect(done: list[ray.ObjectRef]) -> Iterator[ray.ObjectRef]:
        for ref in done:
            load[pending.pop(ref)] -= 1
            yield ref

    for part in own:
        yield from submit(lambda actor, part=part: actor.score_files.remote(part, fs, options))
    rest = files.iloc[sum(map(len, own)):]
    for ref, rows, _ in block_slices(decode_dataset(rest, fs, cfg)) if len(rest) else ():
        yield from submit(lambda actor, ref=ref, rows=rows: actor.score_block.remote(ref, rows, options))
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield from collect(done)
