"""How the scoring job spreads its stages over a Ray cluster: one pydantic model, saved and loaded as JSON/YAML.

Every field left ``None`` is filled by :meth:`JobConfig.resolved` from ``ray.cluster_resources()``, so
the same command runs sensibly on a 2-core laptop and on a GPU cluster; any field can be pinned in a
``--config`` file or with its own command-line flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ra2batch.output.buckets import MAX_BUCKETS, RADIOGRAPHS_PER_BUCKET
from ra2batch.validation import one_line, read_settings


#: Default flip disagreement (score points) at or above which a joint is flagged for review: three
#: quarters of a grade. Chosen on the demo output (8 phantom patients, 688 joints), whose flip
#: disagreement has median 0.02, 90th percentile 0.24, 99th percentile 0.72 and maximum 0.95: at 0.5
#: every patient had a flagged joint, at 0.75 six joints of four patients are. The review site ranks
#: patients with the threshold their run was scored with (``report.review``).
REVIEW_THRESHOLD = 0.75


class JobConfig(BaseModel):
    """Pool sizes, batch sizes and resources of the pipeline's stages."""

    model_config = ConfigDict(extra="forbid")

    model_pool: Literal["auto", "warm", "job"] = Field(
        "auto", description="auto: score on the cluster's warm model pool for this bundle when one runs "
        "(`ra2batch pool start`; no model start-up in the job), else start the job's own model actors; "
        "warm: require such a pool; job: always the job's own actors")
    buckets: int | None = Field(
        None, ge=1, le=MAX_BUCKETS, description="buckets of a new output: every table is partitioned by a hash of "
        "Patient_ID into this many, and a nightly merge rewrites only the files of the buckets it touches "
        f"(default: a power of two, about {RADIOGRAPHS_PER_BUCKET} radiographs a bucket; an output keeps its "
        "count until `ra2batch score` rewrites it)")
    follow_links: bool = Field(False, description="follow symbolic links that leave a local --input folder (links "
                               "inside it are followed; ones that loop or dangle, and FIFOs, sockets and devices, are "
                               "error rows, never read)")
    files_per_decode_task: int = Field(8, ge=1, description="files read and decoded by one CPU task (or one "
                                       "model-actor call, when decode_in_actors)")
    decode_in_actors: bool | None = Field(
        None, description="the fused model actors read and decode their own files (default without GPUs: the "
        "same cores would decode them anyway, and the job then starts no decode worker processes and moves no "
        "pixels through the object store); false: separate decode tasks (default with GPUs: decoding stays off "
        "the GPUs' critical path)")
    decode_cpus: float | None = Field(None, gt=0, description="CPUs reserved by each decode task")
    decode_memory_mb: int = Field(512, ge=1, description="memory reserved by each decode task (MiB)")
    fuse_models: bool | None = Field(
        None, description="one actor pool that detects, cuts crops and scores them (default without GPUs: one "
        "torch import and one model copy per actor instead of two, no crops through the object store); "
        "false: separate detector and joint-model pools (default with GPUs)")
    detector_actors: int | None = Field(None, ge=1, description="detector actor pool size (the fused pool's, "
                                        "when fuse_models)")
    detector_batch_size: int = Field(4, ge=1, description="radiographs per detector call")
    detector_gpus: float | None = Field(None, ge=0, description="GPUs per detector actor; fractions allowed")
    scorer_actors: int | None = Field(None, ge=1, description="joint-model actor pool size (unused when "
                                      "fuse_models)")
    scorer_batch_size: int = Field(64, ge=1, description="crops per joint-model call")
    scorer_gpus: float | None = Field(None, ge=0, description="GPUs per joint-model actor; fractions allowed")
    actor_cpus: float | None = Field(None, gt=0, description="CPUs reserved by each model actor")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads of each model actor")
    tta: bool = Field(True, description="average each crop's score with its horizontal flip's and store their "
                      "disagreement as the joint's uncertainty (doubles joint-model work)")
    review_threshold: float = Field(REVIEW_THRESHOLD, ge=0, description="flip disagreement (``uncertainty``, score "
                                    "points) at or above which a joint is flagged for human review (``review``)")

    def scoring_options(self) -> dict[str, Any]:
        """``predictors.DetectAndScore``'s keyword arguments besides its models: how every radiograph is scored."""
        return {"detector_batch_size": self.detector_batch_size, "scorer_batch_size": self.scorer_batch_size,
                "tta": self.tta, "review_threshold": self.review_threshold}

    @model_validator(mode="after")
    def _decoding_actors_are_fused(self) -> JobConfig:
        if self.decode_in_actors and self.fuse_models is False:
            raise ValueError("decode_in_actors needs the fused model actors (fuse_models true or unset): separate "
                             "detector actors would have to pass the pixels on anyway")
        return self

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        """A config from a ``.json``, ``.yaml`` or ``.yml`` file; unknown keys are an error."""
        data = read_settings(path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(f"config {path}: {one_line(e)}") from None

    def merged(self, overrides: Mapping[str, Any]) -> JobConfig:
        """This config with the non-``None`` ``overrides`` applied (command-line flags over a file);
        a ``ValueError`` names each setting that is not valid."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return self.model_validate({**self.model_dump(), **given})
        except ValidationError as e:
            raise ValueError(f"invalid job settings: {one_line(e)}") from None

    def resolved(self, resources: Mapping[str, float], files: int | None = None) -> JobConfig:
        """Every ``None`` filled for a cluster with ``resources`` (``ray.cluster_resources()``).

        With GPUs, each GPU hosts one detector and one joint-model actor (half a GPU each; a fused
        actor takes the whole GPU), and decode tasks keep a fifth of the CPUs (at least one task's
        ``decode_cpus``) so that decoding always finds room beside the models. Without GPUs, the
        model stages are fused and the actors decode their own files: one single-threaded actor per
        CPU. Fused actors that leave decoding to tasks (``decode_in_actors=False``) get one per CPU
        left after the decode tasks' share.

        For a job over ``files`` files, no model pool has more actors than there are blocks of
        ``files_per_decode_task`` files to feed it (a nightly run of three new files starts one
        actor, not one per core: each extra actor would only import torch and load the models).
        """
        cpus = float(resources.get("CPU", 1.0))
        gpus = float(resources.get("GPU", 0.0))
        small = cpus < 4
        decode_cpus = self.decode_cpus if self.decode_cpus is not None else (0.5 if small else 1.0)
        fuse = self.fuse_models if self.fuse_models is not None else (gpus == 0 or bool(self.decode_in_actors))
        in_actors = self.decode_in_actors if self.decode_in_actors is not None else (fuse and gpus == 0)
        if gpus > 0:
            det_n = sco_n = max(1, int(gpus))
            sco_g = min(gpus, 1.0) / 2
            det_g = 2 * sco_g if fuse else sco_g
        else:
            det_g = sco_g = 0.0
        kept = 0.0 if in_actors else max(decode_cpus, 0.2 * cpus)  # for decode tasks
        free = max(cpus - kept, 0.25)  # CPUs for the model actors
        per_actor = self.actor_cpus or (0.75 if small and not in_actors else 1.0)
        if gpus == 0:
            pools = 1 if fuse else 2
            det_n = max(1, int(free / pools // per_actor))
            sco_n = max(1, det_n // 4) if not fuse else 1
        det_n, sco_n = self.detector_actors or det_n, self.scorer_actors or sco_n
        if files is not None:
            tasks = max(1, -(-files // self.files_per_decode_task))
            det_n, sco_n = min(det_n, tasks), min(sco_n, tasks)
        n_actors = det_n + (0 if fuse else sco_n)
        actor_cpus = self.actor_cpus or min(per_actor, free / n_actors)
        return self.model_copy(update={
            "decode_cpus": decode_cpus,
            "decode_in_actors": in_actors,
            "fuse_models": fuse,
            "actor_cpus": actor_cpus,
            "detector_actors": det_n,
            "scorer_actors": sco_n,
            "detector_gpus": self.detector_gpus if self.detector_gpus is not None else det_g,
            "scorer_gpus": self.scorer_gpus if self.scorer_gpus is not None else sco_g,
            "torch_threads": self.torch_threads or max(1, int(actor_cpus)),
        })
