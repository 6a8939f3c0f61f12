"""How the scoring job spreads its stages over a Ray cluster: one pydantic model, saved and loaded as JSON/YAML.

Every field left ``None`` is filled by :meth:`JobConfig.resolved` from ``ray.cluster_resources()``, so
the same command runs sensibly on a 2-core laptop and on a GPU cluster; any field can be pinned in a
``--config`` file or with its own command-line flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field


class JobConfig(BaseModel):
    """Pool sizes, batch sizes and resources of the pipeline's stages."""

    model_config = ConfigDict(extra="forbid")

    model_pool: Literal["auto", "warm", "job"] = Field(
        "auto", description="auto: score on the cluster's warm model pool for this bundle when one runs "
        "(`ra2batch pool start`; no model start-up in the job), else start the job's own model actors; "
        "warm: require such a pool; job: always the job's own actors")
    files_per_decode_task: int = Field(8, ge=1, description="files read and decoded by one CPU task")
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
    review_threshold: float = Field(0.5, ge=0, description="uncertainty (score points) above which a joint is "
                                    "flagged for human review")

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        """A config from a ``.json``, ``.yaml`` or ``.yml`` file; unknown keys are an error."""
        p = Path(path)
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config {path}: expected a .json, .yaml or .yml file")
        if not isinstance(data, dict):
            raise ValueError(f"config {path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.model_validate(data)

    def merged(self, overrides: Mapping[str, Any]) -> JobConfig:
        """This config with the non-``None`` ``overrides`` applied (command-line flags over a file)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return self.model_validate({**self.model_dump(), **given})

    def resolved(self, resources: Mapping[str, float], files: int | None = None) -> JobConfig:
        """Every ``None`` filled for a cluster with ``resources`` (``ray.cluster_resources()``).

        With GPUs, each GPU hosts one detector and one joint-model actor (half a GPU each). Without,
        the model stages are fused and the pool gets one single-threaded actor per CPU left after a
        fifth of the cluster (at least half a CPU) is kept for decode tasks, so that decoding always
        finds room beside the models (no stage can starve another).

        For a job over ``files`` files, no model pool has more actors than there are decode tasks
        to feed it (a nightly run of three new files starts one actor, not one per core: each
        extra actor would only import torch and load the models).
        """
        cpus = float(resources.get("CPU", 1.0))
        gpus = float(resources.get("GPU", 0.0))
        small = cpus < 4
        decode_cpus = self.decode_cpus if self.decode_cpus is not None else (0.5 if small else 1.0)
        fuse = self.fuse_models if self.fuse_models is not None else gpus == 0
        if gpus >= 1:
            det_n, sco_n, det_g, sco_g = int(gpus), int(gpus), 0.5, 0.5
        elif gpus > 0:
            det_n, sco_n, det_g, sco_g = 1, 1, gpus / 2, gpus / 2
        else:
            det_g = sco_g = 0.0
        free = max(cpus - max(decode_cpus, 0.2 * cpus), 0.25)  # CPUs for the model actors
        per_actor = self.actor_cpus or (0.75 if small else 1.0)
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
            "fuse_models": fuse,
            "actor_cpus": actor_cpus,
            "detector_actors": det_n,
            "scorer_actors": sco_n,
            "detector_gpus": self.detector_gpus if self.detector_gpus is not None else det_g,
            "scorer_gpus": self.scorer_gpus if self.scorer_gpus is not None else sco_g,
            "torch_threads": self.torch_threads or max(1, int(actor_cpus)),
        })
