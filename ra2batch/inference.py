"""The one inference path, in-process: listed radiographs -> the scoring job's records -> patients.

The scoring job runs :class:`job.predictors.DecodeDetectAndScore` (or, with GPUs, decode tasks and
its two stages) in actors on the cluster and assembles patients with ``job.assemble`` in its reduce
stage. Held-out evaluation (the figures a bundle's ``bundle.json`` publishes), detector calibration
and the benchmark's serial runs call the same classes and rules here, without Ray, so a figure measured on a bundle is a figure of
what the job produces: the same decode (at most ``SCORING_MAX_SIDE`` a side), the same rejection of
radiographs that show no hand or foot, the same flip test-time augmentation, clipping to each
joint's range, fill rule and file choice per limb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ra2batch.catalogue import COLUMNS, ID_COLUMN
from ra2batch.job.assemble import assemble_patients, choose_images, predictions
from ra2batch.job.config import JobConfig
from ra2batch.job.inputs import LISTING_COLUMNS
from ra2batch.job.predictors import DecodeDetectAndScore, DetectAndScore
from ra2batch.output.schema import BUCKET


def listing(files: Iterable[tuple[str, str, str | None, str]]) -> pd.DataFrame:
    """The job's listing rows (``inputs.LISTING_COLUMNS`` and a bucket) of ``(uri, Patient_ID, visit,
    limb)`` tuples whose identity is already known (e.g. a training dataset's images)."""
    rows = [{"path": uri, ID_COLUMN: pid, "visit": visit, "limb": limb, "size_bytes": np.nan, "mtime": None,
             "problem": None, BUCKET: 0} for uri, pid, visit, limb in files]
    return pd.DataFrame(rows, columns=[*LISTING_COLUMNS, BUCKET])


def score_files(bundle: Any, files: pd.DataFrame, fs: pafs.FileSystem, config: JobConfig | None = None) -> pa.Table:
    """``tables.REDUCE`` rows (``image`` and ``joint`` records) of the listed ``files``, scored as the job's
    fused model actors score them, ``config.files_per_decode_task`` files at a time (so memory holds
    one such batch of radiographs, as an actor's does)."""
    config = config or JobConfig()
    stage = DecodeDetectAndScore(fs, DetectAndScore(bundle, **config.scoring_options()))
    step = config.files_per_decode_task
    return pa.concat_tables([stage(files.iloc[i:i + step]) for i in range(0, len(files), step)])


@dataclass(frozen=True)
class Scored:
    """Scored radiographs as the job's tables hold them (``visit`` ``None`` where there is none).

    ``images``: one row per file, with ``chosen`` (the file used for its patient and limb);
    ``joints``: one row per joint score of a chosen file; ``patients``: one row per patient visit,
    the 86 RA2 columns NaN where a joint was not scored (``assemble.assemble_patients``).
    """

    images: pd.DataFrame
    joints: pd.DataFrame
    patients: pd.DataFrame

    def predictions(self, medians: Mapping[str, float]) -> pd.DataFrame:
        """predictions.csv's rows: complete, filled by the job's one fill rule, ``visit`` when any patient has one."""
        visits = bool(self.patients["visit"].notna().any())
        return predictions(self.patients, medians, visits)

    def detections(self) -> dict[str, list[tuple[str, tuple[float, ...], float]]]:
        """``{path: [(crop class, box in the file's pixels, detector score), ...]}`` of every file that
        was scored (chosen or not): the boxes its crops were cut from."""
        found: dict[str, list[tuple[str, tuple[float, ...], float]]] = {p: [] for p in self.images["path"]}
        boxes = self.joints.drop_duplicates(["path", "crop_class"])
        for r in boxes.itertuples(index=False):
            found[r.path].append((r.crop_class, (r.box_x0, r.box_y0, r.box_x1, r.box_y1), r.detector_score))
        return found


def assemble(rows: pa.Table) -> Scored:
    """``REDUCE`` rows of one run, assembled per patient by the reduce stage's rules (``job.assemble``)."""
    record = rows["record"]
    images = rows.filter(pc.equal(record, "image")).to_pandas().sort_values("path", ignore_index=True)
    images["chosen"], _ = choose_images(images)
    joints = rows.filter(pc.equal(record, "joint")).to_pandas()
    joints = joints[joints["path"].isin(images.loc[images["chosen"], "path"])].reset_index(drop=True)
    return Scored(images, joints, assemble_patients(images, joints))


def filled_values(patients: pd.DataFrame) -> int:
    """How many of the patients' 86 joint values predictions.csv fills (joints not scored)."""
    return int(patients[list(COLUMNS)].isna().to_numpy().sum())
