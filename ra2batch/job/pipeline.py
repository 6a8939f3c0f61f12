"""The scoring job, streaming on a Ray cluster; the driver only plans, dispatches, counts and commits.

    list files (driver) -> plan (driver) -> read + decode -> detect, cut crops, score joints (model
      actors) -> shuffle by bucket -> assemble and write each bucket's data files (tasks) -> driver:
      one Delta commit per table -> predictions.csv -> manifest

Without GPUs, one pool of fused actors reads, decodes, detects and scores (``JobConfig.decode_in_actors``,
``fuse_models``): the same cores would do all of it anyway, so no decode worker process starts and
neither pixels nor crops cross the object store. The driver hands them blocks of listed files
(``model_pool.score_on_pool``): the job's own actors, started for the job, or a cluster's warm
model pool for the job's bundle (``model_pool.py``), which spares the job the model start-up. With
GPUs, decoding is a stage of Ray Data CPU tasks, so the GPUs never wait on JPEG or DICOM decoding,
and detection and joint scoring are separate Ray Data actor pools, each model with its own GPU share.
Either way, files that fail to decode flow past the models as error rows. Per-patient assembly is a
reduce stage on the cluster (``job.reduce``): image and joint rows go from the model actors through
Ray Data's shuffle to the tasks that write them, and the driver receives counts, file actions and a
bounded sample of messages, so its memory does not grow with the archive.

Outputs are versioned (``ra2batch.output``): a run takes the output's lease, commits each table, and
publishes its manifest last, so a run killed at any point leaves the previous run's tables in force
and a reader never sees tables of two runs. ``ra2batch score`` replaces the whole output;
``ra2batch.nightly`` merges what changed.

Fault tolerance is Ray's: a model actor that dies is restarted and its lost calls are replayed
(unlimited ``max_restarts`` and ``max_task_retries``: set by ``model_pool``, Ray Data's default for
its actor pools), and a lost decode or reduce task is retried. Every stage is a deterministic
function of its input rows, so a replay yields the same rows, and a reduce task writes its bucket's
files under names of its own, so a retry replaces its earlier attempt's files rather than adding to them.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import ray
from ray.data.context import ShuffleStrategy

from ra2batch.catalogue import COLUMNS, ID_COLUMN
from ra2batch.cluster import ClusterError, connect
from ra2batch.job.assemble import prediction_columns
from ra2batch.job.coalesce import Piece, coalesced
from ra2batch.job.config import JobConfig
from ra2batch.job.decode import decode_dataset
from ra2batch.job.inputs import list_inputs
from ra2batch.job.model_pool import (JOB_CPUS, Pool, PoolError, block_slices, running_pools, score_on_job_actors,
                                     score_on_pool, unreserved)
from ra2batch.job.plan import RunPlan, full_plan, merge_plan
from ra2batch.job.predictors import Detector, JointScorer, ModelSource
from ra2batch.job.reduce import SAMPLE, ReducePlan, reduce_bucket
from ra2batch.models import BundleError, ModelBundle, load_bundle
from ra2batch.output import OutputBusy, Snapshot
from ra2batch.output.delta import CommitConflict
from ra2batch.output.dictionary import write_dictionary
from ra2batch.output.schema import BUCKET, PATIENTS, TABLES
from ra2batch.output.runs import RunLease
from ra2batch.output.writer import (PREDICTIONS, check_output, commit_tables, install_predictions, repair,
                                    stage_predictions, writing)
from ra2batch.storage import resolve

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "demo_bundle"
#: Shuffle partitions of the reduce stage, at most (each holds one or more buckets).
MAX_PARTITIONS = 1024


class JobError(RuntimeError):
    """A problem that stops the whole job while it runs (the cluster, another writer, a lost pool);
    the message says what to do. The command line exits 1."""


class JobInputError(JobError):
    """The job cannot start with what it was given (no model bundle, input missing, a bad manifest or
    output location, settings that do not fit the output); nothing was done. The command line exits 2."""


@dataclass
class JobSummary:
    """What a run did: counts, speed, and the output version it published."""

    kind: str
    input: str
    output: str
    run_id: str
    version: int
    listed: int
    scored: int
    removed: int
    images_ok: int
    images_error: int
    patients: int
    joints: int
    seconds: float
    model_version: str
    full: bool = False
    images_rejected: int = 0
    cluster: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    n_duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    ignored_files: int = 0
    model_actors: str = ""
    models_up_s: float | None = None  # seconds from the job's start until its own model actors had loaded the models
    bundle_warning: str | None = None  # the bundle failed its quality check when it was trained

    @property
    def files(self) -> int:
        """Radiograph files scored by this run."""
        return self.scored

    @property
    def skipped(self) -> int:
        """Listed files left as they were (a nightly run's unchanged files)."""
        return self.listed - self.scored

    @property
    def _rejected(self) -> str:
        return f", {self.images_rejected} rejected (no hand or foot found)" if self.images_rejected else ""

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        if self.kind == "nightly":
            lines = [f"nightly run {self.run_id} ({self.seconds:.1f} s, model {self.model_version}): {self.listed} "
                     f"file(s) listed; {self.scored} scored ({self.images_error} in error{self._rejected}), "
                     f"{self.skipped} unchanged, {self.removed} removed; {self.patients} patient(s) rebuilt"]
        else:
            lines = [f"scored {self.scored} radiograph file(s) from {self.input}: {self.images_ok} ok, "
                     f"{self.images_error} in error{self._rejected}; {self.patients} patient(s), {self.joints} joint scores"]
        if self.scored:
            lines.append(f"{self.seconds:.1f} s, {self.images_per_second:.2f} radiographs/s on {self.cluster}, "
                         f"model {self.model_version}" + (f" on {self.model_actors}" if self.model_actors else "")
                         + (f" (models loaded {self.models_up_s:.1f} s into the job; a warm pool, `ra2batch pool "
                            "start`, keeps them loaded between jobs)" if self.models_up_s is not None else ""))
        if self.bundle_warning:
            lines.append(f"warning: {self.bundle_warning}")
        if not self.listed:
            lines.append("no radiograph files found: the job looks for *.jpg, *.jpeg, *.png, *.dcm and *.dicom "
                         "at any depth under the input")
        if self.ignored_files:
            lines.append(f"ignored {self.ignored_files} file(s) that are not radiographs (by suffix)")
        lines += [f"duplicate: {m}" for m in self.duplicates[:5]]
        if self.n_duplicates > 5:
            lines.append(f"... and {self.n_duplicates - 5} more patient limbs with duplicate files "
                         "(images table, chosen = false)")
        lines += [f"not scored: {m}" for m in self.errors[:5]]
        if self.images_error + self.images_rejected > 5:
            lines.append(f"... and {self.images_error + self.images_rejected - 5} more (images table, status 'error' "
                         "or 'rejected')")
        lines.append(f"output version {self.version} (run {self.run_id}):")
        width = max(map(len, self.outputs)) + 1 if self.outputs else 0
        lines += [f"  {name + ':':<{width}} {uri}" for name, uri in self.outputs.items()]
        return "\n".join(lines)


def default_bundle() -> str:
    """The built-in demo bundle, or a :class:`JobError` saying how to get a model."""
    if not (DEMO_BUNDLE / "bundle.json").is_file():
        raise JobInputError("no model bundle: the built-in demo bundle is not installed; pass --models DIR_OR_S3_URI "
                       "or train one with `ra2batch train`")
    return str(DEMO_BUNDLE)


def build_dataset(files: pd.DataFrame, fs: Any, models: str, model_options: dict[str, Any] | None,
                  cfg: JobConfig) -> ray.data.Dataset:
    """The streaming pipeline over the listed ``files`` with separate detector and joint-model actor
    pools (``cfg`` resolved, not ``fuse_models``: the GPU layout, each model with its own GPU share and
    batch size); yields ``REDUCE`` rows (no pixels, no crops)."""
    def actors(n: int | None, gpus: float | None) -> dict[str, Any]:
        return {
            "compute": ray.data.ActorPoolStrategy(size=n), "num_cpus": cfg.actor_cpus,
            **({"num_gpus": gpus} if gpus else {}),
        }

    def source(gpus: float | None) -> ModelSource:
        return ModelSource(models, model_options, cfg.torch_threads or 1, bool(gpus))

    return (
        decode_dataset(files, fs, cfg)
        .map_batches(Detector, batch_format="pyarrow", batch_size=cfg.detector_batch_size,
                     fn_constructor_kwargs={"source": source(cfg.detector_gpus), "batch_size": cfg.detector_batch_size},
                     **actors(cfg.detector_actors, cfg.detector_gpus))
        .map_batches(JointScorer, batch_format="pyarrow", batch_size=cfg.scorer_batch_size,
                     fn_constructor_kwargs={"source": source(cfg.scorer_gpus), "batch_size": cfg.scorer_batch_size,
                                            "tta": cfg.tta, "review_threshold": cfg.review_threshold},
                     **actors(cfg.scorer_actors, cfg.scorer_gpus))
    )


#: The model stage's output, not yet run: the separate model pools' dataset, or a model pool's tables as they finish.
Stream = ray.data.Dataset | Iterator[ray.ObjectRef]


def model_stage(files: pd.DataFrame, fs: Any, models: str, model_options: dict[str, Any] | None, cfg: JobConfig,
                pool: Pool | None, version: str, on_ready: Callable[[], None] = lambda: None) -> Stream:
    """The ``REDUCE`` rows of the scored ``files`` (``cfg`` resolved), run as the reduce stage reads
    them: on the warm ``pool``; else on the job's own fused actors (``model_pool.score_on_job_actors``;
    ``on_ready()`` once they have loaded the bundle ``version``); else on separate detector and
    joint-model actor pools (:func:`build_dataset`)."""
    if pool is not None:
        return score_on_pool(files, fs, cfg, pool.handles, pool.describe()["decodes"], cfg.scoring_options())
    if cfg.fuse_models:
        return score_on_job_actors(files, fs, models, model_options, version, cfg, on_ready)
    return build_dataset(files, fs, models, model_options, cfg)


@dataclass
class Totals:
    """What the reduce tasks report, summed: file actions by table, counts and message samples."""

    actions: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {name: [] for name in TABLES})
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def add(self, results: pa.Table) -> None:
        for row in results.to_pylist():
            for action in row["actions"]:
                self.actions[action["table"]].append(action)
            for key in ("scored", "removed", "images_ok", "images_error", "images_rejected", "patients", "joints",
                        "duplicates"):
                self.counts[key] = self.counts.get(key, 0) + row[key]
            self.errors = sorted(self.errors + row["errors"])[:SAMPLE]
            self.duplicates = sorted(self.duplicates + row["duplicate_messages"])[:SAMPLE]

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)


def _pieces(stream: Stream) -> Iterator[Piece]:
    """``(block, (start, end) rows or None, bytes)`` of ``stream``'s blocks as they finish (the model
    stage runs here); a pool's tables have no known size (0)."""
    if isinstance(stream, ray.data.Dataset):
        return block_slices(stream)
    return ((ref, None, 0) for ref in stream)


def reduce_and_write(stream: Stream | None, plan: RunPlan, reduce: ReducePlan) -> Totals:
    """The reduce stage: ``stream`` (``REDUCE`` rows) and the plan's removed files, grouped by bucket
    on the cluster, each bucket assembled and written by a task (``job.reduce``)."""
    totals = Totals()
    if stream is None and not plan.removed.num_rows:
        return totals
    # the removed files' rows are few and here: one more block
    removed = [(ray.put(plan.removed), None, plan.removed.nbytes)] if plan.removed.num_rows else []
    rows = coalesced(itertools.chain(_pieces(stream) if stream is not None else (), removed))
    if plan.partitions == 1:
        # a nightly run of a few files: Ray Data's task-based sort shuffle starts no aggregator process
        # (1-2 s on 2 cores); larger reduces keep its default hash shuffle, whose driver memory does not
        # grow with the number of blocks as the sort's does
        rows.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    results = rows.groupby(BUCKET, num_partitions=max(1, min(plan.partitions, MAX_PARTITIONS))).map_groups(
        reduce_bucket, batch_format="pyarrow", fn_kwargs={"plan": reduce})
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        totals.add(batch)
    return totals


def _prediction_csv(patients: pa.Table | pa.RecordBatch, medians: dict[str, float], visits: bool,
                    header: bool) -> bytes:
    """predictions.csv rows of some patients rows (the fill rule: ``assemble.prediction_columns``), in
    Arrow and NumPy: pandas frames would cost more than all the rest on a hundred thousand patients."""
    column = lambda name: patients[name].to_numpy(zero_copy_only=False)  # noqa: E731
    scored = np.column_stack([column(c) for c in COLUMNS]).astype(float).reshape(-1, len(COLUMNS))
    table = pa.table(prediction_columns(column(ID_COLUMN), column("visit") if visits else None, scored, medians))
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header))
    return sink.getvalue()


def _prediction_chunks(snapshot: Snapshot, medians: dict[str, float]) -> Iterator[bytes]:
    """predictions.csv from the patients table, a bucket at a time; the header alone when it is empty."""
    names = [ID_COLUMN, "visit", *COLUMNS]
    with_visits = any(batch["visit"].null_count < len(batch) for batch in snapshot.batches("patients", ["visit"]))
    header = True
    for batch in snapshot.batches("patients", columns=names, batch_size=1 << 20):
        yield _prediction_csv(batch, medians, with_visits, header)
        header = False
    if header:
        yield _prediction_csv(PATIENTS.empty_table().select(names), medians, with_visits, header)


def _choose_pool(mode: str, version: str) -> tuple[Pool | None, dict[str, float]]:
    """The warm pool this job uses (``None``: its own actors) and the cluster resources left to the
    job's own stages once every other pool's reservation is taken off."""
    pools = running_pools()
    pool = pools.get(version) if mode != "job" else None
    if mode == "warm" and pool is None:
        others = f" (running: pools for model {', '.join(sorted(pools))})" if pools else ""
        raise JobError(f"--model-pool warm: this cluster runs no warm model pool for model {version}{others}; "
                       "start one with `ra2batch pool start --models URI` or use --model-pool auto")
    resources = unreserved(ray.cluster_resources(), [p for p in pools.values() if p is not pool])
    if pool is not None and unreserved(resources, [pool]).get("CPU", 0.0) < JOB_CPUS:
        raise JobError(f"the warm model pool for model {version} holds all of this cluster's CPUs, leaving none for "
                       f"the job's reduce stage (it needs {JOB_CPUS:g}); restart the pool with fewer "
                       "(`ra2batch pool stop`, then `ra2batch pool start` without --actor-cpus)")
    if pool is None and resources.get("CPU", 0.0) < 1.0:
        raise JobError(f"warm model pools (model {', '.join(sorted(pools))}) hold this cluster's CPUs, leaving "
                       f"{resources.get('CPU', 0.0):g} for this job's own model actors; score on a pool (its bundle "
                       "and --model-pool auto) or stop it with `ra2batch pool stop`")
    return pool, resources


def _check_fits(cfg: JobConfig, resources: dict[str, float]) -> None:
    """Refuse model actors (``cfg`` resolved) that this cluster could never start: Ray would wait forever."""
    gpus = max(cfg.detector_gpus or 0.0, 0.0 if cfg.fuse_models else cfg.scorer_gpus or 0.0)  # the larger actor
    cpus, have_cpus, have_gpus = cfg.actor_cpus or 0.0, resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus > have_cpus or gpus > have_gpus:
        raise JobInputError(f"a model actor needs {cpus:g} CPU and {gpus:g} GPU but this cluster has {have_cpus:g} CPU "
                            f"and {have_gpus:g} GPU for the job (`ray status`): it could never start; lower "
                            "--actor-cpus / --detector-gpus / --scorer-gpus or use a larger cluster")


def _crop_geometry(bundle: ModelBundle) -> str:
    """How each joint group's crops were cut (``models.crops.cut``), for the run manifest."""
    margin = bundle.preprocessing.crop_margin
    return json.dumps({g.name: {"height": g.crop_shape[0], "width": g.crop_shape[1], "margin": margin,
                                "mirrored": "right limbs, onto the left"} for g in bundle.plan.groups})


def write_run(run: RunLease, plan: RunPlan, stream: Stream | None, model_version: str,
              medians: dict[str, float], expected: dict[str, int], **manifest: Any) -> tuple[dict[str, Any], Totals]:
    """The writing half of a run on the output ``run`` holds: the reduce stage over ``stream`` (``REDUCE``
    rows of the plan's files), one commit per table (on the ``expected`` versions), predictions.csv
    streamed from the new patients table, then the manifest (with ``manifest``'s extra columns),
    the predictions.csv copy and DATA_DICTIONARY.md. Returns the published ``runs`` row and the
    reduce stage's totals."""
    out = run.out
    totals = reduce_and_write(stream, plan, ReducePlan(out, run.run_id, model_version, dt.datetime.now(dt.timezone.utc),
                                                       medians, plan.existing))
    if plan.empty and not plan.overwrite:
        versions, staged = expected, (run.current["predictions"], run.current["predictions_bytes"])
    else:
        versions = commit_tables(run, totals.actions, overwrite=plan.overwrite, expected=expected)
        draft = Snapshot(out, {**run.base, "version": run.next_version,
                               **{f"{name}_version": v for name, v in versions.items()}})
        staged = stage_predictions(out, run.run_id, _prediction_chunks(draft, medians))
    row = run.publish({
        **{f"{name}_version": v for name, v in versions.items()}, "buckets": plan.buckets,
        "predictions": staged[0], "predictions_bytes": staged[1], "listed": plan.listed,
        "scored": totals["scored"], "skipped": plan.skipped, "removed": totals["removed"],
        "images_ok": totals["images_ok"], "images_error": totals["images_error"],
        "images_rejected": totals["images_rejected"], "patients": totals["patients"], "joints": totals["joints"],
        **manifest})
    install_predictions(out, staged[0])
    write_dictionary(out)
    return row, totals


def run_job(kind: str, input: str, output: str, *, models: str | None = None, manifest: str | None = None,
            config: JobConfig | None = None, storage_options: dict[str, Any] | None = None,
            paths: Sequence[str] | None = None, full: bool = False, address: str | None = None) -> JobSummary:
    """One run into ``output``: ``kind`` ``score`` replaces it with the scores of every listed file;
    ``nightly`` merges the files that are new, changed or stale (all with ``full``) into it. Runs on
    the Ray cluster ``address`` names (``ra2batch.cluster.connect``: Ray's own rule when ``None``).

    Raises :class:`JobError` for problems that stop the job (no bundle, no input, bad manifest,
    another run writing to the output); problems with single files become error rows instead.
    """
    started = time.perf_counter()
    config = config or JobConfig()
    bundle, models, model_options = load_models(models, storage_options)
    out = resolve(output, storage_options)
    try:
        check_output(out, resolve(input, storage_options))
        listing = list_inputs(input, manifest=manifest, paths=paths, storage_options=storage_options,
                              follow_links=config.follow_links)
    except (FileNotFoundError, ValueError) as e:
        raise JobInputError(str(e)) from e
    try:
        where = connect(address)
    except ClusterError as e:
        raise JobError(str(e)) from e
    info = {"input": input, "bundle": models, "model_version": bundle.model_version, "full": full or kind == "score",
            "config": config.model_dump_json(), "crop_geometry": _crop_geometry(bundle)}
    try:
        with writing(out, kind, info) as run:
            expected = repair(run)
            if kind == "score" or run.current is None:
                plan = full_plan(listing.files, config.buckets)
            else:
                current = Snapshot(out, run.current)
                if config.buckets not in (None, current.buckets):
                    raise JobInputError(f"{output} has {current.buckets} buckets; a nightly run keeps them (score the "
                                   "archive again with `ra2batch score --buckets N` to change them)")
                plan = merge_plan(listing.files, current, bundle.model_version, full)
            stream, actors, cfg, up = None, "", config, {}
            if len(plan.files):
                pool, resources = _choose_pool(config.model_pool, bundle.model_version)
                cfg = config.resolved(resources, files=len(plan.files))
                if pool is None:
                    _check_fits(cfg, resources)
                stream = model_stage(plan.files, resolve(input, storage_options).fs, models, model_options, cfg, pool,
                                     bundle.model_version,
                                     on_ready=lambda: up.setdefault("s", time.perf_counter() - started))
                actors = (f"the warm model pool ({len(pool.names)} actor(s))" if pool else
                          f"{cfg.detector_actors + (0 if cfg.fuse_models else cfg.scorer_actors)} job actor(s)")
            row, totals = write_run(run, plan, stream, bundle.model_version, bundle.label_medians, expected,
                                    config=cfg.model_dump_json())
    except (PoolError, OutputBusy, CommitConflict) as e:
        raise JobError(str(e)) from e
    return JobSummary(
        kind=kind, input=input, output=output, run_id=run.run_id, version=row["version"], listed=plan.listed,
        scored=totals["scored"], removed=totals["removed"], images_ok=totals["images_ok"],
        images_error=totals["images_error"], images_rejected=totals["images_rejected"], patients=totals["patients"],
        joints=totals["joints"],
        seconds=time.perf_counter() - started, model_version=bundle.model_version, full=bool(info["full"]),
        cluster=f"{_describe(ray.cluster_resources())}, {where}", duplicates=totals.duplicates, n_duplicates=totals["duplicates"],
        errors=totals.errors, ignored_files=listing.ignored, model_actors=actors, models_up_s=up.get("s"),
        bundle_warning=bundle.manifest.quality_warning(),
        outputs={**{name: out.uri_of(name) for name in ("patients", "joints", "images", "catalogue", "runs")},
                 PREDICTIONS: out.uri_of(PREDICTIONS)},
    )


def score_archive(
    input: str,
    output: str,
    models: str | None = None,
    manifest: str | None = None,
    config: JobConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    paths: Sequence[str] | None = None,
    address: str | None = None,
) -> JobSummary:
    """Score every radiograph under ``input`` (or only ``paths``) into the tables under ``output``.

    Rerunning into the same ``output`` replaces its tables (as a new version). Runs on the cluster
    ``address`` names (by default Ray's own rule: ``RAY_ADDRESS``, the cluster running on this
    machine, else a new local instance). Raises :class:`JobError` for problems that stop the job (no
    bundle, no input, bad manifest, another run writing to ``output``); problems with single files
    become error rows instead.
    """
    return run_job("score", input, output, models=models, manifest=manifest, config=config,
                   storage_options=storage_options, paths=paths, address=address)


def load_models(models: str | None, storage_options: dict[str, Any] | None):
    """``(bundle, uri, storage options for the actors)``: verified once on the driver to fail early
    and to learn the model version and label medians (no model is built here: the actors load their
    own). A bundle that failed its quality check when it was trained loads with a warning on stderr."""
    loc = resolve(models or default_bundle(), storage_options)
    uri, options = loc.uri_of(), loc.options or None
    try:
        bundle = load_bundle(uri, storage_options=options, parts=())
    except BundleError as e:
        raise JobInputError(str(e)) from e
    warning = bundle.manifest.quality_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    missing = [c for c in COLUMNS if c not in bundle.label_medians]
    if missing:
        raise JobInputError(f"model bundle {uri} has no label median for {len(missing)} column(s) (first: {missing[0]}); "
                       "predictions.csv needs them to fill joints that were not found")
    return bundle, uri, options


def _describe(resources: dict[str, float]) -> str:
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    gpus = f", {resources['GPU']:g} GPU(s)" if resources.get("GPU") else ""
    return f"{nodes} node(s) with {resources.get('CPU', 0):g} CPU(s){gpus}"
