"""The three measured workloads, each run alone in a fresh process: ``python workloads.py SPEC RESULT``.

A fresh process per run keeps one run's memory (allocator caches, loaded models, Ray) out of the
next one's peak, and lets the parent sample exactly that process tree. ``SPEC`` is a JSON
:class:`Spec`; the result (timings in seconds, wall-clock phase marks from ``time.time()``) is
written to ``RESULT`` as JSON.

- ``naive``: the published code's shape: per file read and decode, detect (batch of one) and cut the
  crops, then each joint model on one crop at a time. Model loading is timed apart and left out of
  its wall time. With test-time augmentation (``tta``, as the job's default), each crop is scored
  with its mirror.
- ``bound``: the ideal serial cost: each stage over all files in isolation, models batched as the
  job batches them (detector: images of one limb kind; joint models: crops of one group);
  wall = decode + detect (with crops) + score.

Both run the job's own stage classes (``job.decode.decode_files``, ``job.predictors.Detector`` and
``JointScorer``) in this process, so they do exactly the job's work, only scheduled differently.
- ``job``: ``ra2batch.job.pipeline.score_archive`` on a Ray cluster started here; the cluster's
  start-up (``ray.init`` and the cluster's first dataset, which creates Ray Data's session actors that
  a running cluster keeps, until it goes quiet) is timed apart (``startup_s``). With
  ``job_config["model_pool"] == "warm"`` the cluster's start-up also starts a warm model pool
  (``pool_s``, included in ``startup_s``) and the job scores on it, as every job after the first on a
  standing cluster with a pool does; otherwise the job starts its own model actors, and their start-up
  (torch import, model load) is part of its wall time, as it is for a job on a cluster without a pool.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator



@dataclass
class Spec:
    """What one child run does. ``files`` are absolute paths under ``input``; ``job_config`` holds
    :class:`ra2batch.job.config.JobConfig` fields (unset ones are resolved by the job). ``tta``: score
    each crop and its mirror image, as the job does with ``JobConfig.tta``, so every run does the same work."""

    kind: str
    input: str
    files: list[str]
    models: str
    threads: int
    cpus: int
    device: str = "cpu"
    job_config: dict[str, Any] = field(default_factory=dict)
    detector_batch_size: int = 4
    scorer_batch_size: int = 64
    tta: bool = True


class StageClock:
    """Wall and CPU seconds (this process, all threads) spent per named stage, summed over calls.

    CPU seconds say where the work goes even on a busy machine, where wall times stretch."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t
            self.cpu_seconds[stage] += time.process_time() - c


def _listing(files: list[str]):
    """The job's listing rows of archive files named ``{Patient_ID}-{limb}.ext``."""
    from ra2batch.inference import listing
    from ra2batch.job.inputs import parse_name

    parsed = [parse_name(path) for path in files]
    bad = next((p for p in parsed if isinstance(p, str)), None)
    if bad:
        raise ValueError(bad)
    return listing((path, *identity) for path, identity in zip(files, parsed))


def _stages(spec: Spec, detector_batch_size: int, scorer_batch_size: int):
    """The job's own stage classes (its separate-stage layout) on the bundle, loaded here."""
    import torch

    from ra2batch.job.predictors import Detector, JointScorer
    from ra2batch.models import load_bundle

    torch.set_num_threads(spec.threads)
    bundle = load_bundle(spec.models).to(spec.device)
    return Detector(bundle, detector_batch_size), JointScorer(bundle, scorer_batch_size, tta=spec.tta)


def _run(spec: Spec, batches: list, detector, scorer) -> tuple[StageClock, int, int]:
    """Each listing batch through decode, detect (and crop), score: the job's inference path, stage by
    stage, timed per stage; returns the clock, and the crops and joint scores made."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    from ra2batch.job.decode import decode_files

    clock, crops, joints, fs = StageClock(), 0, 0, pafs.LocalFileSystem()
    for batch in batches:
        with clock("decode"):
            decoded = decode_files(batch, fs=fs)
        with clock("detect"):
            found = detector(decoded)
        with clock("score"):
            scored = scorer(found)
        crops += pc.sum(pc.equal(found["record"], "crop")).as_py() or 0
        joints += pc.sum(pc.equal(scored["record"], "joint")).as_py() or 0
    return clock, crops, joints


def run_naive(spec: Spec) -> dict[str, Any]:
    """One file at a time, one radiograph per detector call and one crop per joint-model call."""
    t = time.perf_counter()
    detector, scorer = _stages(spec, 1, 1)
    load_s = time.perf_counter() - t
    files = _listing(spec.files)
    start = time.time()
    clock, crops, joints = _run(spec, [files.iloc[[i]] for i in range(len(files))], detector, scorer)
    end = time.time()
    return {"wall_s": end - start, "phase": [start, end], "load_s": load_s, "stages": dict(clock.seconds),
            "stages_cpu": dict(clock.cpu_seconds), "radiographs": len(spec.files), "crops": crops, "joints": joints}


def run_bound(spec: Spec) -> dict[str, Any]:
    """Each stage alone over every file; models batched as the job batches them. Wall is the sum of
    the stage times."""
    detector, scorer = _stages(spec, spec.detector_batch_size, spec.scorer_batch_size)
    start = time.time()
    clock, crops, joints = _run(spec, [_listing(spec.files)], detector, scorer)
    end = time.time()
    return {"wall_s": sum(clock.seconds.values()), "phase": [start, end], "stages": dict(clock.seconds),
            "stages_cpu": dict(clock.cpu_seconds), "radiographs": len(spec.files), "crops": crops, "joints": joints}


def run_job(spec: Spec) -> dict[str, Any]:
    """The Ray Data job on a local cluster of ``spec.cpus`` CPUs started (and timed) here."""
    import ray

    from monitors import wait_until_idle
    from ra2batch.job.config import JobConfig
    from ra2batch.job.pipeline import score_archive

    scratch = Path(tempfile.mkdtemp(prefix="ra2bench-", dir="/tmp"))  # short: Ray's socket paths
    try:
        t = time.perf_counter()
        ray.init(num_cpus=spec.cpus, include_dashboard=False, _temp_dir=str(scratch / "ray"), log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        _first_dataset()
        config = JobConfig(**spec.job_config)
        pool_s = _start_pool(spec.models, config) if config.model_pool == "warm" else None
        wait_until_idle(os.getpid())  # start-up ends when the new cluster has gone quiet, as a running one is
        startup_s = time.perf_counter() - t
        start = time.time()
        summary = score_archive(spec.input, str(scratch / "out"), models=spec.models, config=config,
                                paths=spec.files)
        end = time.time()
        resources = ray.cluster_resources()
        resolved = config.resolved(resources, files=summary.files).model_dump()
        ray.shutdown()
        operators = _ray_data_stats(scratch / "ray", start)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    # the job's own fused actors report when they had loaded the models; separate Ray Data model pools
    # (the GPU layout) are read from Ray Data's log: their first task
    model_ops = [s["first_task_s"] for op, s in operators.items() if "first_task_s" in s and _MODEL_OP.fullmatch(op)]
    models_up_s = summary.models_up_s if summary.models_up_s is not None else min(model_ops, default=None)
    return {"wall_s": end - start, "phase": [start, end], "startup_s": startup_s, "pool_s": pool_s,
            "model_pool": config.model_pool, "model_actors": summary.model_actors, "operators": operators,
            "models_up_s": models_up_s,
            "radiographs": summary.files, "images_ok": summary.images_ok, "images_error": summary.images_error,
            "joints": summary.joints, "patients": summary.patients, "model_version": summary.model_version,
            "cluster": summary.cluster, "config": resolved, "gpus": resources.get("GPU", 0.0),
            "errors": summary.errors[:3]}


def _start_pool(models: str, config) -> float:
    """Start the warm model pool the job will use (part of the cluster's start-up); its seconds."""
    from ra2batch.job.model_pool import start_pool
    from ra2batch.job.pipeline import load_models

    t = time.perf_counter()
    bundle, uri, options = load_models(models, None)
    start_pool(uri, options, bundle.model_version, config, progress=lambda message: None)
    return time.perf_counter() - t


class _Passthrough:
    def __call__(self, batch: Any) -> Any:
        return batch


def _first_dataset() -> None:
    """Run the tiny dataset that makes this cluster what a running one is: Ray Data creates its
    detached session actors (stats, autoscaling coordinator, actor locations) for a cluster's first
    dataset with an actor pool and keeps them for every later job, so no job but a cluster's first pays
    for them (about 1.5 s of the job's start-up on 2 cores when it does)."""
    import ray

    # the actor reserves no CPU: on a one-CPU cluster the read task needs the whole of it
    ray.data.range(1).map_batches(_Passthrough, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0).materialize()


_OP_DONE = re.compile(r"Operator \w+\[(?P<op>[^\]]*\))\] completed\. Operator Metrics:\n(?P<metrics>\{.*\})")
_FIRST_TASK = re.compile(r"^(?P<ts>\S+ \S+)\s.*Executing map task of operator (?P<op>.+) with task index 0$", re.M)
_PLAN = re.compile(r"^(?P<ts>\S+ \S+)\s.*Execution plan of Dataset", re.M)
#: the separate model pools' operators (``job.predictors``' classes), the layout the job runs on Ray Data
_MODEL_OP = re.compile(r"MapBatches\((Detector|JointScorer)\)")
_METRICS = {"udf_s": "function_body_time_s", "task_s": "task_completion_time_s", "tasks": "num_tasks_finished",
            "rows_out": "rows_task_outputs_generated"}


def _stamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _ray_data_stats(ray_dir: Path, since: float) -> dict[str, dict[str, float]]:
    """Per Ray Data operator of the datasets planned from ``since`` (the job's start, ``time.time()``
    scale; the cluster's start-up dataset is planned before it): UDF and task seconds, tasks, rows out,
    and ``first_task_s``, the delay from ``since`` to the operator's first task, read from Ray Data's
    debug log. Best effort: empty if the log's format changes."""
    logs = sorted(ray_dir.glob("session_*/logs/ray-data/ray-data.log"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    plans = [p for p in _PLAN.finditer(text) if _stamp(p["ts"]) >= since]
    if not plans:
        return {}
    text = text[plans[0].start():]
    stats: dict[str, dict[str, float]] = {}
    for m in _OP_DONE.finditer(text):
        values = {k: re.search(rf"'{key}': ([0-9.e+-]+)", m["metrics"]) for k, key in _METRICS.items()}
        stats[m["op"]] = {k: float(v[1]) for k, v in values.items() if v}
    for m in _FIRST_TASK.finditer(text):
        if m["op"] in stats and "first_task_s" not in stats[m["op"]] and _stamp(m["ts"]) >= since:
            stats[m["op"]]["first_task_s"] = _stamp(m["ts"]) - since
    # (Ray Data logs an operator's completion late, e.g. the start-up dataset's at shutdown: an operator
    # whose first task ran before the job is not the job's)
    return {op: s for op, s in stats.items() if "first_task_s" in s}


RUNS = {"naive": run_naive, "bound": run_bound, "job": run_job}


def main(spec_path: str, result_path: str) -> None:
    spec = Spec(**json.loads(Path(spec_path).read_text()))
    result = RUNS[spec.kind](spec)
    Path(result_path).write_text(json.dumps({**result, "spec": {**asdict(spec), "files": len(spec.files)}}))


if __name__ == "__main__":
    main(*sys.argv[1:])
