"""The crop a joint model sees: one function, used by training and by the scoring job.

A crop is the detector box widened by a margin, grown around its centre to the crop's aspect (a
square, or a tall ``height x width`` crop for a finger or toe; pixels outside the image are 0, the
dark background) and resized bilinearly (antialiased) to the crop's shape, so the image is never
stretched. Crops of right limbs are mirrored left-right so every model sees the left side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ra2batch import catalogue
from ra2batch.models.plan import PLAN, ModelPlan

Box = tuple[float, float, float, float]


def crop_region(box: Sequence[float], margin: float, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """``(x0, y0, width, height)`` in whole pixels of the region a crop is cut from (may leave the image).

    The box grows by ``margin`` times its longer side on each side, then along one axis until
    ``height / width == aspect`` (1: a square of the longer side).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    pad = 2 * margin * max(x1 - x0, y1 - y0)
    w, h = x1 - x0 + pad, y1 - y0 + pad
    w, h = max(w, h / aspect), max(h, w * aspect)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rw, rh = max(1, round(w)), max(1, round(h))
    return round(cx - rw / 2), round(cy - rh / 2), rw, rh


def cut(image: np.ndarray, box: Sequence[float], size: int | tuple[int, int], mirror: bool = False, *,
        margin: float = 0.1) -> np.ndarray:
    """float32 crop of a float32 ``H x W`` image around ``box`` (x0, y0, x1, y1) pixels.

    ``size`` is the crop's side, or its ``(height, width)``; the result has that shape.
    ``margin`` widens the box by that fraction of its longer side on each side; ``mirror=True`` flips
    the result left-right (right limbs onto the canonical left side).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a grey H x W image, got shape {image.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x, y, rw, rh = crop_region(box, margin, out_h / out_w)
    h, w = image.shape
    region = np.zeros((rh, rw), dtype=np.float32)
    ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + rw, w), min(y + rh, h)
    if ix1 > ix0 and iy1 > iy0:
        region[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = image[iy0:iy1, ix0:ix1]
    t = torch.from_numpy(region)[None, None]
    out = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False,
                        antialias=rh > out_h or rw > out_w)[0, 0]
    if mirror:
        out = out.flip(-1)
    return out.clamp_(0.0, 1.0).numpy()


def is_mirrored(limb: str) -> bool:
    """Right limbs are mirrored onto the left side."""
    catalogue.limb_kind(limb)
    return limb[0] == "R"


@dataclass(frozen=True)
class JointCrop:
    """One crop for one joint group: ``crop`` is float32 ``[H, W]`` (the group's crop shape), ``box`` in
    image pixels."""

    group: str
    crop_class: str
    crop: np.ndarray
    box: Box
    mirrored: bool


def joint_crops(image: np.ndarray, boxes: Mapping[str, Sequence[float]], limb: str, plan: ModelPlan = PLAN,
                *, margin: float = 0.1) -> Iterator[JointCrop]:
    """Every crop the plan needs from one image: one per (detected class, group that class feeds).

    ``boxes`` maps detector class -> box (or an object with a ``.box``, e.g. a ``Detection``); classes
    absent from it yield nothing.
    """
    kind = catalogue.limb_kind(limb)
    mirror = is_mirrored(limb)
    for crop_class, found in boxes.items():
        box = tuple(float(v) for v in getattr(found, "box", found))
        by_shape: dict[tuple[int, int], np.ndarray] = {}
        for group in plan.groups_for(kind, crop_class):
            shape = group.crop_shape
            if shape not in by_shape:
                by_shape[shape] = cut(image, box, shape, mirror, margin=margin)
            yield JointCrop(group.name, crop_class, by_shape[shape], box, mirror)  # type: ignore[arg-type]
