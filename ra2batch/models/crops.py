"""The crop a joint model sees: one function, used by training and by the scoring job.

A crop is the detector box widened by a margin, grown to a square around its centre (aspect kept;
pixels outside the image are 0, the dark background) and resized bilinearly (antialiased) to
``size x size``. Crops of right limbs are mirrored left-right so every model sees the left side.
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


def square_region(box: Sequence[float], margin: float) -> tuple[int, int, int]:
    """``(x0, y0, side)`` in whole pixels of the square a crop is cut from (may leave the image)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    w, h = x1 - x0, y1 - y0
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = max(1, round(side))
    return round(cx - s / 2), round(cy - s / 2), s


def cut(image: np.ndarray, box: Sequence[float], size: int, mirror: bool = False, *,
        margin: float = 0.1) -> np.ndarray:
    """float32 ``[size, size]`` crop of a float32 ``H x W`` image around ``box`` (x0, y0, x1, y1) pixels.

    ``margin`` widens the box by that fraction of its longer side on each side; ``mirror=True`` flips
    the result left-right (right limbs onto the canonical left side).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a grey H x W image, got shape {image.shape}")
    x, y, s = square_region(box, margin)
    h, w = image.shape
    region = np.zeros((s, s), dtype=np.float32)
    ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
    if ix1 > ix0 and iy1 > iy0:
        region[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = image[iy0:iy1, ix0:ix1]
    t = torch.from_numpy(region)[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)[0, 0]
    if mirror:
        out = out.flip(-1)
    return out.clamp_(0.0, 1.0).numpy()


def is_mirrored(limb: str) -> bool:
    """Right limbs are mirrored onto the left side."""
    catalogue.limb_kind(limb)
    return limb[0] == "R"


@dataclass(frozen=True)
class JointCrop:
    """One crop for one joint group: ``crop`` is float32 ``[S, S]``, ``box`` in image pixels."""

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
        by_size: dict[int, np.ndarray] = {}
        for group in plan.groups_for(kind, crop_class):
            if group.crop_size not in by_size:
                by_size[group.crop_size] = cut(image, box, group.crop_size, mirror, margin=margin)
            yield JointCrop(group.name, crop_class, by_size[group.crop_size], box, mirror)  # type: ignore[arg-type]
