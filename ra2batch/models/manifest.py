"""``bundle.json``: everything needed to rebuild a bundle's models and to trust its weights.

The manifest holds the format version, the model plan, the architecture parameters, the
preprocessing, where the models came from (provenance), their metrics, the training-label median of
every column, and the sha256 of every weight file. It is plain JSON validated by pydantic: loading a
bundle never runs code from it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import ra2batch
from ra2batch import catalogue
from ra2batch.models.detectors import DetectorConfig
from ra2batch.models.joint_model import JointHeadConfig
from ra2batch.models.plan import ModelPlan
from ra2batch.models.preprocessing import Preprocessing
from ra2batch.validation import one_line

#: The bundle layout this code writes and reads.
FORMAT_VERSION = 1

Kind = Literal["hand", "foot"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PretrainedWeights(BaseModel):
    """The weights one model started training from (``ra2batch train --pretrained``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str  # local path or s3:// URI as given
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the file's bytes
    loaded: int = Field(ge=0)  # tensors loaded into the model
    dropped: list[str] = Field(default_factory=list)  # the file's classifier/head tensors that did not fit


class Provenance(BaseModel):
    """Where a bundle's weights came from. Extra keys (e.g. per-run settings) are kept."""

    model_config = ConfigDict(extra="allow")

    training_data: str | None = None  # fingerprint of the training data (e.g. a content hash)
    command: str | None = None  # the command line that trained the bundle
    created: str = Field(default_factory=_now)  # ISO 8601, UTC
    code_version: str = ra2batch.__version__
    #: model (``hand``, ``foot``, a group name) -> its starting weights; absent: a random start
    pretrained: dict[str, PretrainedWeights] = Field(default_factory=dict)


class Architecture(BaseModel):
    """How to rebuild every model before its weights are loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detectors: dict[Kind, DetectorConfig]
    joint_head: JointHeadConfig = JointHeadConfig()


class WeightFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)  # bytes


class Quality(BaseModel):
    """``metrics.quality``: the held-out figures checked against floors when the bundle was trained
    (``ra2batch.training.quality``); bundles made before the check have none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    problems: list[str] = Field(default_factory=list)  # one per figure that missed its floor
    floors: dict[str, float] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    plan: ModelPlan
    architecture: Architecture
    preprocessing: Preprocessing = Preprocessing()
    provenance: Provenance = Field(default_factory=Provenance)
    metrics: dict[str, Any] = Field(default_factory=dict)
    label_medians: dict[str, float] = Field(default_factory=dict)
    weights: dict[str, WeightFile] = Field(default_factory=dict)  # file name -> its hash and size

    @field_validator("label_medians")
    @classmethod
    def _known_columns(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(catalogue.COLUMNS))
        if unknown:
            raise ValueError(f"label_medians has unknown RA2 columns: {', '.join(unknown[:5])}")
        return v

    @field_validator("metrics")
    @classmethod
    def _quality_is_well_formed(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            Quality.model_validate(v.get("quality", {"ok": True}))
        except ValidationError as e:
            raise ValueError(f"quality: {one_line(e)}") from None
        return v

    def quality_warning(self) -> str | None:
        """One line when the bundle failed its quality check at training (None: it passed, or predates the check)."""
        quality = self.metrics.get("quality")
        if quality is None or quality["ok"]:
            return None
        return "the model bundle failed its quality check when it was trained: " + "; ".join(quality["problems"])
