"""How the scoring job spreads its stages over a Ray cluster: one pydantic model, saved and loaded as JSON/YAML.

Every field left ``None`` is filled by :meth:`JobConfig.resolved` from ``ray.cluster_resources()``, so
the same command runs sensibly on a 2-core laptop and on a GPU cluster; any field can be pinned in a
``--config`` file or with its own command-line flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field


class JobConfig(BaseModel):
    """Pool sizes, batch sizes and resources of the pipeline's stages."""

    model_config = ConfigDict(extra="forbid")

    files_per_decode_task: int = Field(8, ge=1, description="files read and decoded by one CPU task")
    decode_cpus: float | None = Field(None, gt=0, description="CPUs reserved by each decode task")
    decode_memory_mb: int = Field(512, ge=1, description="memory reserved by each decode task (MiB)")
    detector_actors: int | None = Field(None, ge=1, description="detector actor pool size")
    detector_batch_size: int = Field(4, ge=1, description="radiographs per detector call")
    detector_gpus: float | None = Field(None, ge=0, description="GPUs per detector actor; fractions allowed")
    scorer_actors: int | None = Field(None, ge=1, description="joint-model actor pool size")
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

    def resolved(self, resources: Mapping[str, float]) -> JobConfig:
        """Every ``None`` filled for a cluster with ``resources`` (``ray.cluster_resources()``).

        With GPUs, each GPU hosts one detector and one joint-model actor (half a GPU each). On CPUs the
        detector dominates the cost, so it gets the larger pool, and on a small machine actors reserve
        half a CPU so that decode tasks always find room beside them (no stage can starve another).
        """
        cpus = float(resources.get("CPU", 1.0))
        gpus = float(resources.get("GPU", 0.0))
        small = cpus < 4
        actor_cpus = self.actor_cpus if self.actor_cpus is not None else (0.5 if small else 1.0)
        if gpus >= 1:
            det_n, sco_n, det_g, sco_g = int(gpus), int(gpus), 0.5, 0.5
        elif gpus > 0:
            det_n, sco_n, det_g, sco_g = 1, 1, gpus / 2, gpus / 2
        else:
            det_n = max(1, int(cpus * 0.5 // actor_cpus)) if not small else 1
            sco_n = max(1, det_n // 4)
            det_g = sco_g = 0.0
        return self.model_copy(update={
            "decode_cpus": self.decode_cpus if self.decode_cpus is not None else (0.5 if small else 1.0),
            "actor_cpus": actor_cpus,
            "detector_actors": self.detector_actors or det_n,
            "scorer_actors": self.scorer_actors or sco_n,
            "detector_gpus": self.detector_gpus if self.detector_gpus is not None else det_g,
            "scorer_gpus": self.scorer_gpus if self.scorer_gpus is not None else sco_g,
            "torch_threads": self.torch_threads or max(1, int(actor_cpus)),
        })
