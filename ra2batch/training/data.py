"""Ray Data datasets for training: radiographs decoded once into rows the workers stream.

- :func:`detector_dataset` -- one row per annotated radiograph of one limb kind, already resized
  the way the detector's own transform resizes (so an epoch does no decoding or resizing):
  ``image`` float16 ``[h, w]`` in [0, 1], ``boxes`` float32 ``[n, 4]`` in those pixels, ``labels``
  int64 ``[n]`` (class index + 1), ``name`` str.
- :func:`crop_dataset` -- one row per (radiograph, box, joint group): the crop exactly as the scoring
  job cuts it (``ra2batch.models.crops.joint_crops``, right limbs mirrored): ``group`` str, ``crop``
  float16 ``[S, S]``, ``targets`` float32 ``[n_outputs]`` (the RA2 labels of the group's columns),
  ``damaged`` bool (any target > 0), ``patient``, ``limb``, ``crop_class`` str.

Both are materialised by the caller before training, so every epoch reads small arrays from the
object store.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import ray
import ray.data
import torch
import torch.nn.functional as F

from .. import catalogue
from ..imaging.readers import decode
from ..models.crops import joint_crops
from ..models.plan import ModelPlan
from .dataset import DatasetIndex, ImageRecord


def detector_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's RetinaNet transform resizes an image by (min side to ``min_size``,
    long side capped at ``max_size``)."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resize_for_detector(image: np.ndarray, min_size: int, max_size: int) -> tuple[np.ndarray, float]:
    """``image`` resized exactly as the detector's transform does at inference, and the factor used."""
    scale = detector_scale(*image.shape, min_size, max_size)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(t, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    return out[0, 0].numpy(), scale


def _read(index: DatasetIndex, records: list[ImageRecord]) -> ray.data.Dataset:
    paths = [index.image_uri(r) for r in records]
    # One file per block keeps decoding parallel and blocks small.
    return ray.data.read_binary_files(paths, filesystem=index.location.fs, include_paths=True,
                                      override_num_blocks=len(paths))


def _name(path: str) -> str:
    return os.path.basename(path)


def _pool() -> ray.data.ActorPoolStrategy:
    """Decoders scale from one actor to one per CPU of the cluster."""
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1))))


class _DetectorRows:
    """Decode, resize, and attach the annotated boxes (scaled with the image)."""

    def __init__(self, records: dict[str, ImageRecord], min_size: int, max_size: int):
        self.records, self.min_size, self.max_size = records, min_size, max_size

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        name = _name(row["path"])
        rec = self.records[name]
        image, scale = resize_for_detector(decode(row["bytes"], name).pixels, self.min_size, self.max_size)
        classes = catalogue.detector_classes(rec.kind)
        boxes = np.array([b.box for b in rec.boxes], dtype=np.float32).reshape(-1, 4) * np.float32(scale)
        labels = np.array([classes.index(b.label) + 1 for b in rec.boxes], dtype=np.int64)
        return {"image": image.astype(np.float16), "boxes": boxes, "labels": labels, "name": name}


def detector_dataset(index: DatasetIndex, records: list[ImageRecord], min_size: int, max_size: int) -> ray.data.Dataset:
    """Rows for training or validating a detector; ``records`` must all have boxes."""
    bare = [r.name for r in records if not r.boxes]
    if bare:
        raise ValueError(f"{len(bare)} radiograph(s) have no annotation, e.g. {bare[0]}")
    by_name = {r.name: r for r in records}
    return _read(index, records).map(_DetectorRows, fn_constructor_kwargs=dict(
        records=by_name, min_size=min_size, max_size=max_size), compute=_pool())


class _CropRows:
    """Decode once, cut every crop the plan needs from the annotated or detected boxes."""

    def __init__(self, records: dict[str, ImageRecord], labels: dict[str, dict[str, float]], plan: ModelPlan,
                 margin: float, bundle_ref: Any = None):
        self.records, self.labels, self.plan, self.margin = records, labels, plan, margin
        self.bundle = ray.get(bundle_ref) if bundle_ref is not None else None
        if self.bundle is not None:
            torch.set_num_threads(max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        name = _name(row["path"])
        rec = self.records[name]
        image = decode(row["bytes"], name).pixels
        if self.bundle is None:
            boxes = {b.label: b.box for b in rec.boxes}
        else:
            boxes = self.bundle.detect([image], rec.kind)[0]
        truth = self.labels[rec.patient]
        out = []
        for jc in joint_crops(image, boxes, rec.limb, self.plan, margin=self.margin):
            cols = self.plan.group(jc.group).columns(rec.limb, jc.crop_class)
            targets = np.array([truth[c] for c in cols], dtype=np.float32)
            out.append({"group": jc.group, "crop": jc.crop.astype(np.float16), "targets": targets,
                        "damaged": bool((targets > 0).any()), "patient": rec.patient, "limb": rec.limb,
                        "crop_class": jc.crop_class})
        return out


def crop_dataset(index: DatasetIndex, records: list[ImageRecord], plan: ModelPlan, margin: float,
                 bundle: Any = None) -> ray.data.Dataset:
    """Crop rows for every group of ``plan``; boxes from the annotations, or from ``bundle.detect``
    when a (trained) ``bundle`` is given, the way the scoring job will see them."""
    if bundle is None:
        bare = [r.name for r in records if not r.boxes]
        if bare:
            raise ValueError(f"{len(bare)} radiograph(s) have no annotation, e.g. {bare[0]}; "
                             "train joint models on detected boxes instead")
    labels = {p: {c: float(index.labels.at[p, c]) for c in catalogue.COLUMNS} for p in {r.patient for r in records}}
    kwargs = dict(records={r.name: r for r in records}, labels=labels, plan=plan, margin=margin,
                  bundle_ref=ray.put(bundle) if bundle is not None else None)
    return _read(index, records).flat_map(_CropRows, fn_constructor_kwargs=kwargs,
                                          compute=_pool())
