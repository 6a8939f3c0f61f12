"""Ray Data datasets for training: radiographs decoded once into rows the workers stream.

- :func:`detector_dataset` -- one row per annotated radiograph of one limb kind, already resized
  the way the detector's own transform resizes (so an epoch does no decoding or resizing):
  ``image`` float16 ``[h, w]`` in [0, 1], ``boxes`` float32 ``[n, 4]`` in those pixels, ``labels``
  int64 ``[n]`` (class index + 1), ``name`` str.
- :func:`crop_dataset` -- one row per (radiograph, box, joint group): the crop exactly as the scoring
  job cuts it (decoded by the job's decode stage, ``job.decode.decode_files``, at most
  ``SCORING_MAX_SIDE`` a side; ``ra2batch.models.crops.joint_crops``, right limbs mirrored): ``group``
  str, ``crop`` float16 ``[S, S]``, ``targets`` float32 ``[n_outputs]`` (the RA2 labels of the
  group's columns, of the radiograph's patient visit), ``damaged`` bool (any target > 0),
  ``patient``, ``limb``, ``crop_class`` str, ``name`` (the file's) and ``boxes``, where the box came
  from: ``annotated`` or ``detected`` (the scoring job's own ``job.predictors.Detector``).

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
from ..inference import listing
from ..job.decode import decode_files
from ..job.predictors import Detector
from ..job.tables import unpack_pixels
from ..models.crops import joint_crops
from ..models.plan import ModelPlan
from .dataset import DatasetIndex, ImageRecord

#: Where joint-model training crops get their boxes (``--joint-boxes``): ``annotated``, the annotations
#: (radiographs without one are left out); ``detected``, the trained detectors' boxes on every
#: radiograph, as the scoring job finds them; ``auto``, the annotations of each radiograph that has
#: some and the detectors' boxes on the others (``annotated`` when every radiograph has annotations).
JOINT_BOXES = ("auto", "annotated", "detected")


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


def box_sources(records: list[ImageRecord], mode: str) -> dict[str, str | None]:
    """Where each radiograph's joint crops get their boxes under ``mode`` (:data:`JOINT_BOXES`):
    ``{name: "annotated" | "detected" | None}``, None for one left out (``annotated`` without boxes)."""
    if mode not in JOINT_BOXES:
        raise ValueError(f"joint boxes {mode!r}: expected one of {', '.join(JOINT_BOXES)}")
    if mode == "detected":
        return {r.name: "detected" for r in records}
    fallback = "detected" if mode == "auto" else None
    return {r.name: "annotated" if r.boxes else fallback for r in records}


class _CropRows:
    """Decode one radiograph as the scoring job does, cut every crop the plan needs from its annotated
    boxes (scaled to the decoded pixels) or from the boxes the job's ``Detector`` finds in it."""

    def __init__(self, fs: Any, records: dict[str, tuple[ImageRecord, str]], targets: dict[str, dict[str, float]],
                 plan: ModelPlan, margin: float, bundle_ref: Any = None):
        self.fs, self.records, self.targets, self.plan, self.margin = fs, records, targets, plan, margin
        self.detector = None
        if bundle_ref is not None:
            torch.set_num_threads(max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
            self.detector = Detector(ray.get(bundle_ref))

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        uri = row["path"]
        rec, source = self.records[uri]
        decoded = decode_files(listing([(uri, rec.patient, rec.visit, rec.limb)]), fs=self.fs)
        meta = decoded.drop_columns(["pixels"]).to_pylist()[0]
        if meta["status"] != "ok":
            raise ValueError(f"{uri}: {meta['error']}")
        if source == "annotated":
            image = unpack_pixels(decoded.column("pixels")[0].as_buffer(), meta["decoded_height"],
                                  meta["decoded_width"])
            per_pixel = meta["decoded_width"] / meta["width"]  # annotations are in the file's pixels
            boxes = {b.label: tuple(v * per_pixel for v in b.box) for b in rec.boxes}
            cut = [(c.group, c.crop_class, c.crop)
                   for c in joint_crops(image, boxes, rec.limb, self.plan, margin=self.margin)]
        else:
            found = self.detector(decoded).to_pylist()  # type: ignore[misc]
            cut = [(c["group"], c["crop_class"],
                    np.frombuffer(c["crop"], dtype=np.float32).reshape(self.plan.group(c["group"]).crop_shape))
                   for c in found if c["record"] == "crop"]
        truth = self.targets[uri]
        out = []
        for group, crop_class, crop in cut:
            cols = self.plan.group(group).columns(rec.limb, crop_class)
            targets = np.array([truth[c] for c in cols], dtype=np.float32)
            out.append({"group": group, "crop": crop.astype(np.float16), "targets": targets,
                        "damaged": bool((targets > 0).any()), "patient": rec.patient, "limb": rec.limb,
                        "crop_class": crop_class, "name": rec.name, "boxes": source})
        return out


def crop_dataset(index: DatasetIndex, records: list[ImageRecord], plan: ModelPlan, margin: float,
                 bundle: Any = None, boxes: str | None = None) -> ray.data.Dataset:
    """Crop rows for every group of ``plan`` from ``records``' radiographs, their boxes as ``boxes``
    says (:data:`JOINT_BOXES`; default ``detected`` with a ``bundle``, else ``annotated``). Boxes are
    detected by the scoring job's ``Detector`` with the (trained) ``bundle``, every radiograph kept
    (its limb threshold not applied: it is calibrated after training). Every record must get boxes
    (see :func:`box_sources`); the caller leaves out the others."""
    mode = boxes or ("detected" if bundle is not None else "annotated")
    sources = box_sources(records, mode)
    bare = [name for name, source in sources.items() if source is None]
    if bare:
        raise ValueError(f"{len(bare)} radiograph(s) have no annotation, e.g. {bare[0]}; "
                         "train joint models on detected (or auto) boxes instead")
    detect = "detected" in sources.values()
    if detect and bundle is None:
        raise ValueError(f"joint boxes {mode!r} need a bundle with trained detectors")
    if detect:
        bundle = bundle.with_limb_min_confidence({kind: 0.0 for kind in bundle.detectors})
    uris = {index.location.uri_of("images", r.name): r for r in records}
    kwargs = dict(fs=index.location.fs, records={u: (r, sources[r.name]) for u, r in uris.items()},
                  targets={u: index.targets(r) for u, r in uris.items()}, plan=plan, margin=margin,
                  bundle_ref=ray.put(bundle) if detect else None)
    # one radiograph per block keeps decoding and detection parallel
    return ray.data.from_items([{"path": u} for u in uris], override_num_blocks=max(1, len(uris))).flat_map(
        _CropRows, fn_constructor_kwargs=kwargs, compute=_pool())
