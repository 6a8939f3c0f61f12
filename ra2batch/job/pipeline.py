"""The scoring job as one Ray Data pipeline, streaming; the archive is never materialised.

    list files (driver) -> read + decode (CPU tasks) -> Detector actors (one row per crop)
      -> JointScorer actors (one row per joint) -> driver: per-patient assembly -> write tables

With GPUs, decode and inference are separate stages, so the GPUs never wait on JPEG or DICOM
decoding. Without GPUs, one pool of fused actors reads, decodes, detects and scores
(``JobConfig.decode_in_actors``, ``fuse_models``): the same cores would do all of it anyway, and so
no decode worker process starts and neither pixels nor crops cross the object store. Either way,
files that fail to decode flow past the models as error rows, and only file metadata and joint rows
(about 86 per patient, no pixels) reach the driver.

On a cluster that runs a warm model pool for the job's bundle (``model_pool.py``), the work goes to
the pool's actors instead (listed files on a CPU pool, which decodes them; decoded blocks on a GPU
pool), and the job starts no model actors of its own.

Fault tolerance is Ray Data's: a model actor that dies is restarted and its lost calls are replayed
(actor pools default to unlimited ``max_restarts`` and ``max_task_retries``), and a lost decode task
is retried. Every stage is a deterministic function of its input rows, so a replay yields the same
rows, and a block's output replaces the lost attempt's rather than adding to it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ra2batch.catalogue import COLUMNS, ID_COLUMN
from ra2batch.job.assemble import assemble_patients, choose_images, fill_predictions
from ra2batch.job.config import JobConfig
from ra2batch.job.inputs import list_inputs
from ra2batch.job.decode import decode_dataset, listing_dataset
from ra2batch.job.model_pool import Pool, PoolError, running_pools, score_on_pool, unreserved
from ra2batch.job.predictors import DecodeDetectAndScore, DetectAndScore, Detector, JointScorer, ModelSource
from ra2batch.job.tables import IMAGES, JOINTS, STREAM, write_table
from ra2batch.models import BundleError, load_bundle
from ra2batch.storage import resolve

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "demo_bundle"


class JobError(RuntimeError):
    """A problem that stops the whole job (no model bundle, input missing); the message says what to do."""


@dataclass
class JobSummary:
    """What a run did: counts, speed and where each output is."""

    input: str
    output: str
    files: int
    images_ok: int
    images_error: int
    patients: int
    joints: int
    seconds: float
    model_version: str
    cluster: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ignored_files: int = 0
    model_actors: str = ""

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"scored {self.files} radiograph file(s) from {self.input}: {self.images_ok} ok, "
            f"{self.images_error} in error; {self.patients} patient(s), {self.joints} joint scores",
            f"{self.seconds:.1f} s, {self.images_per_second:.2f} radiographs/s on {self.cluster}, "
            f"model {self.model_version}" + (f" on {self.model_actors}" if self.model_actors else ""),
        ]
        if not self.files:
            lines.append("no radiograph files found: the job looks for *.jpg, *.jpeg, *.png, *.dcm and *.dicom "
                         "at any depth under the input")
        if self.ignored_files:
            lines.append(f"ignored {self.ignored_files} file(s) that are not radiographs (by suffix)")
        lines += [f"duplicate: {m}" for m in self.duplicates]
        lines += [f"error: {m}" for m in self.errors[:5]]
        if len(self.errors) > 5:
            lines.append(f"... and {len(self.errors) - 5} more errors (images table, status = 'error')")
        width = max(map(len, self.outputs)) + 1 if self.outputs else 0
        lines += [f"  {name + ':':<{width}} {uri}" for name, uri in self.outputs.items()]
        return "\n".join(lines)


def default_bundle() -> str:
    """The built-in demo bundle, or a :class:`JobError` saying how to get a model."""
    if not (DEMO_BUNDLE / "bundle.json").is_file():
        raise JobError("no model bundle: the built-in demo bundle is not installed; pass --models DIR_OR_S3_URI "
                       "or train one with `ra2batch train`")
    return str(DEMO_BUNDLE)


def connect() -> None:
    """Join the cluster this driver runs in (``ray job submit`` or ``RAY_ADDRESS``), else start Ray locally."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)


def _scoring_options(cfg: JobConfig) -> dict[str, Any]:
    return {"tta": cfg.tta, "review_threshold": cfg.review_threshold}


def _fused_options(cfg: JobConfig) -> dict[str, Any]:
    """``DetectAndScore``'s keyword arguments besides its models."""
    return {"detector_batch_size": cfg.detector_batch_size, "scorer_batch_size": cfg.scorer_batch_size,
            **_scoring_options(cfg)}


def build_dataset(files: pd.DataFrame, fs: Any, models: str, model_options: dict[str, Any] | None,
                  cfg: JobConfig) -> ray.data.Dataset:
    """The streaming pipeline over the listed ``files`` with the job's own model actors (``cfg``
    resolved); yields ``STREAM`` rows without pixels."""
    def actors(n: int | None, gpus: float | None) -> dict[str, Any]:
        return {
            "compute": ray.data.ActorPoolStrategy(size=n), "num_cpus": cfg.actor_cpus,
            **({"num_gpus": gpus} if gpus else {}),
        }

    def source(gpus: float | None) -> ModelSource:
        return ModelSource(models, model_options, cfg.torch_threads or 1, bool(gpus))

    scoring = _scoring_options(cfg)
    if cfg.decode_in_actors:
        return listing_dataset(files, cfg).map_batches(
            DecodeDetectAndScore, batch_format="pandas", batch_size=None,
            fn_constructor_kwargs={"fs": fs, "source": source(cfg.detector_gpus), **_fused_options(cfg)},
            **actors(cfg.detector_actors, cfg.detector_gpus))
    decoded = decode_dataset(files, fs, cfg)
    if cfg.fuse_models:
        return decoded.map_batches(
            DetectAndScore, batch_format="pyarrow", batch_size=cfg.detector_batch_size,
            fn_constructor_kwargs={"source": source(cfg.detector_gpus), **_fused_options(cfg)},
            **actors(cfg.detector_actors, cfg.detector_gpus))
    return (
        decoded
        .map_batches(Detector, batch_format="pyarrow", batch_size=cfg.detector_batch_size,
                     fn_constructor_kwargs={"source": source(cfg.detector_gpus), "batch_size": cfg.detector_batch_size},
                     **actors(cfg.detector_actors, cfg.detector_gpus))
        .map_batches(JointScorer, batch_format="pyarrow", batch_size=cfg.scorer_batch_size,
                     fn_constructor_kwargs={"source": source(cfg.scorer_gpus), "batch_size": cfg.scorer_batch_size,
                                            **scoring},
                     **actors(cfg.scorer_actors, cfg.scorer_gpus))
    )


def _collect(parts: Iterator[pa.Table]) -> pa.Table:
    """All rows the pipeline yields, with the crop pixels already dropped by the scorer."""
    parts = [b.cast(STREAM) for b in parts]
    return pa.concat_tables(parts) if parts else STREAM.empty_table()


def _score(files: pd.DataFrame, fs: Any, models: str, model_options: dict[str, Any] | None, cfg: JobConfig,
           pool: Pool | None) -> pa.Table:
    """Every ``STREAM`` row of the scored ``files``, on the warm ``pool`` or on the job's own actors."""
    if not len(files):
        return STREAM.empty_table()
    if pool is not None:
        return _collect(score_on_pool(files, fs, cfg, pool, _fused_options(cfg)))
    dataset = build_dataset(files, fs, models, model_options, cfg)
    return _collect(dataset.iter_batches(batch_format="pyarrow", batch_size=None))


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
    if pool is None and resources.get("CPU", 0.0) < 1.0:
        raise JobError(f"warm model pools (model {', '.join(sorted(pools))}) hold this cluster's CPUs, leaving "
                       f"{resources.get('CPU', 0.0):g} for this job's own model actors; score on a pool (its bundle "
                       "and --model-pool auto) or stop it with `ra2batch pool stop`")
    return pool, resources


def score_archive(
    input: str,
    output: str,
    models: str | None = None,
    manifest: str | None = None,
    config: JobConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    paths: Sequence[str] | None = None,
) -> JobSummary:
    """Score every radiograph under ``input`` (or only ``paths``) into the tables under ``output``.

    Rerunning into the same ``output`` replaces its tables. Joins the cluster this runs in, else
    starts Ray locally. Raises :class:`JobError` for problems that stop the job (no bundle, no
    input, bad manifest); problems with single files become error rows instead.
    """
    started = time.perf_counter()
    bundle, models, model_options = load_models(models, storage_options)
    try:
        listing = list_inputs(input, manifest=manifest, paths=paths, storage_options=storage_options)
    except (FileNotFoundError, ValueError) as e:
        raise JobError(str(e)) from e
    connect()
    config = config or JobConfig()
    scored_at = dt.datetime.now(dt.timezone.utc)
    files = listing.files
    fs = resolve(input, storage_options).fs
    try:
        pool, resources = _choose_pool(config.model_pool, bundle.model_version)
        cfg = config.resolved(resources, files=len(files))
        stream = _score(files, fs, models, model_options, cfg, pool)
    except PoolError as e:
        raise JobError(str(e)) from e
    images, joints, patients, predictions, duplicates = _assemble(stream, bundle.label_medians)

    out = resolve(output, storage_options)
    run = {"model_version": bundle.model_version, "scored_at": scored_at}
    outputs = {
        "patients": write_table(out, "patients", patients.assign(**run)),
        "joints": write_table(out, "joints", _with_run(joints, run)),
        "images": write_table(out, "images", images.assign(**run)),
    }
    out.write_bytes(predictions.to_csv(index=False).encode(), "predictions.csv")
    outputs["predictions.csv"] = out.uri_of("predictions.csv")
    errors = images[images["status"] == "error"]
    return JobSummary(
        input=input, output=output, files=len(files), images_ok=len(images) - len(errors), images_error=len(errors),
        patients=len(patients), joints=joints.num_rows, seconds=time.perf_counter() - started,
        model_version=bundle.model_version, cluster=_describe(ray.cluster_resources()), outputs=outputs, duplicates=duplicates,
        errors=[f"{p}: {m}" for p, m in zip(errors["path"], errors["error"])], ignored_files=listing.ignored,
        model_actors=(f"the warm model pool ({len(pool.names)} actor(s))" if pool else
                      f"{cfg.detector_actors + (0 if cfg.fuse_models else cfg.scorer_actors)} job actor(s)"),
    )


def load_models(models: str | None, storage_options: dict[str, Any] | None):
    """``(bundle, uri, storage options for the actors)``: verified once on the driver to fail early
    and to learn the model version and label medians (no model is built here: the actors load their
    own)."""
    loc = resolve(models or default_bundle(), storage_options)
    uri, options = loc.uri_of(), loc.options or None
    try:
        bundle = load_bundle(uri, storage_options=options, parts=())
    except BundleError as e:
        raise JobError(str(e)) from e
    missing = [c for c in COLUMNS if c not in bundle.label_medians]
    if missing:
        raise JobError(f"model bundle {uri} has no label median for {len(missing)} column(s) (first: {missing[0]}); "
                       "predictions.csv needs them to fill joints that were not found")
    return bundle, uri, options


def _assemble(stream: pa.Table, medians: dict[str, float]):
    """Images (with ``chosen``), joints of chosen files, patients, predictions and duplicate notes."""
    record = stream.column("record")
    per_file = [n for n in IMAGES.names if n not in ("chosen", "model_version", "scored_at")]
    images = stream.filter(pc.equal(record, "image")).select(per_file).to_pandas()
    images = images.sort_values("path", ignore_index=True)
    images["chosen"], duplicates = choose_images(images)
    joints = stream.filter(pc.equal(record, "joint"))
    used = pa.array(images.loc[images["chosen"], "path"], pa.string())
    joints = joints.filter(pc.is_in(joints.column("path"), value_set=used)).sort_by(
        [(ID_COLUMN, "ascending"), ("visit", "ascending"), ("limb", "ascending"), ("column", "ascending")])
    keys = joints.select([ID_COLUMN, "visit", "limb", "path", "column", "score", "crop_class", "review"]).to_pandas()
    predictions, patients = fill_predictions(assemble_patients(images, keys), medians)
    return images, joints, patients, predictions, duplicates


def _describe(resources: dict[str, float]) -> str:
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    gpus = f", {resources['GPU']:g} GPU(s)" if resources.get("GPU") else ""
    return f"{nodes} node(s) with {resources.get('CPU', 0):g} CPU(s){gpus}"


def _with_run(table: pa.Table, run: dict[str, Any]) -> pa.Table:
    n = table.num_rows
    table = table.select([f for f in JOINTS.names if f not in run])
    return table.append_column("model_version", pa.array([run["model_version"]] * n, pa.string())).append_column(
        "scored_at", pa.array([run["scored_at"]] * n, JOINTS.field("scored_at").type))

