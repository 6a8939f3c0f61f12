"""Model stages (actors): the detector finds crops, the joint models score them.

Each actor loads the models it needs once and maps an Arrow table of ``tables.STREAM`` rows to
another (the joint models' output without the crops: ``tables.REDUCE``), carrying the file identity through. All are pure functions of their input rows, so Ray may
replay a restarted actor's call without changing or duplicating any output. A radiograph the
detector cannot take becomes that file's error row; it never stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ra2batch import catalogue
from ra2batch.job.decode import decode_files
from ra2batch.job.assemble import REJECTED
from ra2batch.job.config import REVIEW_THRESHOLD
from ra2batch.job.tables import IDENTITY, STREAM, unpack_pixels
from ra2batch.models import ModelBundle, load_bundle


@dataclass(frozen=True)
class ModelSource:
    """Where an actor gets its models and how it runs them (pickled to every actor)."""

    models: str
    storage_options: dict[str, Any] | None = None
    torch_threads: int = 1
    use_gpu: bool = False

    @property
    def device(self) -> str:
        """Where the models run: the GPU when asked for and present."""
        return "cuda" if self.use_gpu and torch.cuda.is_available() else "cpu"

    def load(self, parts: Collection[str]) -> ModelBundle:
        """The bundle's ``parts`` only, on :attr:`device`."""
        torch.set_num_threads(self.torch_threads)
        return load_bundle(self.models, storage_options=self.storage_options, parts=parts).to(self.device)


class Detector:
    """Detector actor: finds the best box per class in each radiograph (hand or foot model by limb)
    and cuts the crops each joint model needs. Emits one ``image`` record per input row and one
    ``crop`` record per (detected class, joint group); a radiograph in which the detector finds no
    hand (foot) with the bundle's ``limb_min_confidence`` is ``rejected``: no crops, no scores.

    Radiographs are batched with others of the same limb kind; ``ModelBundle.detect`` keeps a
    radiograph's boxes independent of its batch mates.
    """

    def __init__(self, source: ModelSource | ModelBundle, batch_size: int = 4):
        self.bundle = source if isinstance(source, ModelBundle) else source.load(["detectors"])
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        meta = batch.drop_columns(["pixels"]).to_pylist()
        pixels = batch.column("pixels")
        images = {i: unpack_pixels(pixels[i].as_buffer(), m["decoded_height"], m["decoded_width"])
                  for i, m in enumerate(meta) if m["status"] == "ok"}
        by_kind: dict[str, list[int]] = {}
        for i in images:
            by_kind.setdefault(catalogue.limb_kind(meta[i]["limb"]), []).append(i)
        found: dict[int, dict[str, Any] | str] = {}
        for kind, idx in sorted(by_kind.items()):
            found.update(zip(idx, self._detect([images[i] for i in idx], kind)))
        rows: list[dict[str, Any]] = []
        for i, m in enumerate(meta):
            if isinstance(found.get(i), str):
                rows.append({**m, "record": "image", "status": "error", "error": found[i], "width": None,
                             "height": None})
                continue
            if i not in images:
                rows.append({**m, "record": "image"})
                continue
            kind = catalogue.limb_kind(m["limb"])
            shows_limb, confidence = self.bundle.limb_found(found[i], kind)
            if not shows_limb:
                rows.append({**m, "record": "image", "status": REJECTED, "error": self._rejected(confidence, m["limb"]),
                             "n_detections": len(found[i]), "limb_confidence": confidence})
                continue
            crops = self._crops(images[i], found[i], m)
            rows += [{**m, "record": "image", "n_detections": len({c["crop_class"] for c in crops}),
                      "limb_confidence": confidence}, *crops]
        return pa.Table.from_pylist(rows, schema=STREAM)

    def _rejected(self, confidence: float, limb: str) -> str:
        """Why a radiograph whose detector found no hand (foot) in it is not scored."""
        kind = catalogue.limb_kind(limb)
        threshold = self.bundle.manifest.architecture.detectors[kind].limb_min_confidence
        return (f"no {kind} found: the {kind} detector's confidence is {confidence:.2f}, below the bundle's "
                f"{threshold:.2f} (not a {limb} radiograph, or too unlike the ones the model was trained on): not scored")

    def _detect(self, images: list[np.ndarray], kind: str) -> list[dict[str, Any] | str]:
        """Detections per image. If a batch fails, its images are retried one by one, and an image
        that fails alone (e.g. one too thin to resize) gets an error message instead of stopping the job."""
        with torch.inference_mode():
            try:
                return self.bundle.detect(images, kind, batch_size=self.batch_size)
            except Exception as e:  # narrowed to the failing image below; never the job's failure
                if len(images) > 1:
                    return [self._detect([image], kind)[0] for image in images]
                h, w = images[0].shape
                return [f"the {kind} detector failed on this {w} x {h} image: {type(e).__name__}: "
                        f"{str(e).splitlines()[0]}"]

    def _crops(self, image: np.ndarray, detections: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
        """``crop`` records of one radiograph; a degenerate (empty) box counts as not detected."""
        ident = {k: meta[k] for k in IDENTITY}
        rows = []
        for crop_class, d in detections.items():
            try:
                cut = list(self.bundle.joint_crops(image, {crop_class: d}, meta["limb"]))
            except ValueError:
                continue
            # crops come from the decoded image; boxes are reported in the file's pixels
            per_pixel = meta["width"] / meta["decoded_width"]
            x0, y0, x1, y1 = (float(v) * per_pixel for v in d.box)
            rows += [{**ident, "record": "crop", "crop_class": crop_class, "group": c.group,
                      "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1, "detector_score": float(d.score),
                      "crop": c.crop.astype(np.float32).tobytes()}
                     for c in cut]
        return rows


class JointScorer:
    """Joint-model actor: scores every ``crop`` record with its group's model and emits one
    ``joint`` record per model output (score clipped to the column's range, attention map attached).
    Other records pass through unchanged; no crop leaves it (``tables.REDUCE`` rows)."""

    def __init__(self, source: ModelSource | ModelBundle, batch_size: int = 64, tta: bool = True,
                 review_threshold: float = REVIEW_THRESHOLD):
        self.bundle = source if isinstance(source, ModelBundle) else source.load(["joint_models"])
        self.batch_size, self.tta, self.review_threshold = batch_size, tta, review_threshold

    def _score(self, name: str, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.tta:
            return self.bundle.score_tta(name, stack, batch_size=self.batch_size)
        scores, attention = self.bundle.score(name, stack, batch_size=self.batch_size)
        return scores, attention, np.full_like(scores, np.nan)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = batch.cast(STREAM)
        is_crop = pc.equal(batch.column("record"), "crop")
        crops = batch.filter(is_crop)
        passed = batch.filter(pc.invert(is_crop))
        if crops.num_rows == 0:
            return passed.drop_columns(["crop"])
        meta = crops.drop_columns(["crop"]).to_pylist()
        pixels = crops.column("crop")
        rows: list[dict[str, Any]] = []
        with torch.inference_mode():
            for name in sorted({m["group"] for m in meta}):
                idx = [i for i, m in enumerate(meta) if m["group"] == name]
                shape = self.bundle.plan.group(name).crop_shape
                stack = np.stack([np.frombuffer(pixels[i].as_buffer(), dtype=np.float32).reshape(shape) for i in idx])
                scores, attention, uncertainty = self._score(name, stack)
                group = self.bundle.plan.group(name)
                for i, sc, att, unc in zip(idx, scores, np.asarray(attention, dtype=np.float32), uncertainty):
                    m = meta[i]
                    for column, value, u in zip(group.columns(m["limb"], m["crop_class"]), sc, unc):
                        top = catalogue.BY_COLUMN[column].max_score
                        rows.append({**m, "record": "joint", "joint": column,
                                     "damage": group.damage, "score": float(np.clip(value, 0.0, top)),
                                     "attention": att.ravel().tolist(), "attention_h": int(att.shape[0]),
                                     "attention_w": int(att.shape[1]), "uncertainty": float(u),
                                     "review": bool(u >= self.review_threshold)})
        return pa.concat_tables([passed, pa.Table.from_pylist(rows, schema=STREAM)]).drop_columns(["crop"])


class DetectAndScore:
    """Both model stages in one actor: detect, cut the crops, score them; emits what
    ``JointScorer(Detector(batch))`` would.

    For CPU-only clusters, where one process per core is the most a pool can use: each actor pays
    the torch import and the model load once instead of twice, holds one copy of the models, and
    crops never travel through the object store. With GPUs the stages stay separate, so each model
    gets its own share of the GPU and its own batch size.
    """

    def __init__(self, source: ModelSource | ModelBundle, detector_batch_size: int = 4, scorer_batch_size: int = 64,
                 tta: bool = True, review_threshold: float = REVIEW_THRESHOLD):
        bundle = source if isinstance(source, ModelBundle) else source.load(["detectors", "joint_models"])
        self.detector = Detector(bundle, detector_batch_size)
        self.scorer = JointScorer(bundle, scorer_batch_size, tta, review_threshold)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer(self.detector(batch))


class DecodeDetectAndScore:
    """A :class:`DetectAndScore` ``stage`` that first reads and decodes its listed files
    (``decode.decode_files``): what a fused model actor does with each block of files when it decodes
    them itself (``model_pool.PoolWorker.score_files``, the CPU-only layout) and what in-process
    scoring does (``inference.score_files``). No decode worker process starts and no pixels cross
    the object store."""

    def __init__(self, fs: Any, stage: DetectAndScore):
        self.fs = fs
        self.stage = stage

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        return self.stage(decode_files(batch, fs=self.fs))
