"""The joint crop exactly as the model saw it, and its attention map drawn over it.

How a crop was cut (its ``height x width`` and box margin per joint group) is read from the output's
own run manifest (``runs.crop_geometry``, written by the scoring job), so the report cuts the crop the
model scored with the job's own function (``models.crops.cut``) on the image decoded as the job
decodes it; ``--bundle`` reads it from a bundle instead, and only an output that records none falls
back to the built-in plan's.

The stored map is coarse (the backbone's feature grid, e.g. 8 x 8) with values in ``[0, 1]``. It is
upsampled to the crop size by **nearest neighbour**: every stored cell becomes one block of pixels,
so the overlay shows the model's real resolution and each block's colour is exactly one stored value,
with no detail invented by interpolation. Values are coloured on a fixed ``[0, 1]`` scale (not
stretched per map), so a weak map looks weak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps

from ra2batch.imaging.readers import Radiograph

#: Colormap of the heat map and the weight of the heat over the grey crop.
HEAT_CMAP = "inferno"
HEAT_ALPHA = 0.5


@dataclass(frozen=True)
class GroupCrop:
    """How one joint group's crops are cut: ``height x width`` pixels, ``margin`` a fraction of the box."""

    height: int
    width: int
    margin: float


@dataclass(frozen=True)
class CropGeometry:
    """The crop of every joint group, and where that was read (said on the pages)."""

    groups: Mapping[str, GroupCrop]
    source: str


def geometry_from_run(run: Mapping[str, Any]) -> CropGeometry | None:
    """The geometry a run manifest (a ``runs`` row) records in ``crop_geometry``; ``None`` when it has none."""
    text = run.get("crop_geometry")
    if not text:
        return None
    groups = {name: GroupCrop(int(g["height"]), int(g["width"]), float(g["margin"]))
              for name, g in json.loads(text).items()}
    return CropGeometry(groups, f"the run manifest of output version {run.get('version', '?')}")


def geometry_from_bundle(uri: str, storage_options: dict[str, Any] | None = None) -> CropGeometry:
    """The geometry of the bundle at ``uri``, from its ``bundle.json`` (no weights are read)."""
    from ra2batch.models.manifest import Manifest
    from ra2batch.storage import resolve

    manifest = Manifest.model_validate_json(resolve(uri, storage_options).read_bytes("bundle.json"))
    margin = manifest.preprocessing.crop_margin
    return CropGeometry({g.name: GroupCrop(*g.crop_shape, margin) for g in manifest.plan.groups}, f"bundle {uri}")


def plan_geometry() -> CropGeometry:
    """The built-in plan's geometry: the last resort for an output that records none."""
    from ra2batch.models.plan import PLAN
    from ra2batch.models.preprocessing import Preprocessing

    margin = Preprocessing().crop_margin
    return CropGeometry({g.name: GroupCrop(*g.crop_shape, margin) for g in PLAN.groups},
                        "the built-in plan (the output does not record its own)")


def decoded_box(box: Sequence[float], image: Radiograph) -> tuple[float, ...]:
    """A box in the file's pixels (as the joints table stores it) -> the decoded image's pixels: the
    inverse of the job's ``box * width / decoded_width`` (``job.predictors.Detector._crops``)."""
    per_pixel = image.original_size[0] / image.width
    return tuple(float(v) / per_pixel for v in box)


def model_crop(image: Radiograph, box: Sequence[float], limb: str, crop: GroupCrop) -> np.ndarray:
    """float32 ``[height, width]``: the crop the joint model scored (right limbs mirrored, as it saw them).

    ``image`` must be decoded as the job decodes it (``decode(..., max_side=SCORING_MAX_SIDE)``) and
    ``box`` is in the file's pixels. Raises ``ValueError`` for an empty box.
    """
    from ra2batch.models.crops import cut, is_mirrored

    return cut(image.pixels, decoded_box(box, image), (crop.height, crop.width), is_mirrored(limb),
               margin=crop.margin)


def upsample_nearest(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``attention [h, w] -> [H, W]``: pixel ``(i, j)`` takes cell ``(i * h // H, j * w // W)``."""
    if attention.ndim != 2 or 0 in attention.shape:
        raise ValueError(f"attention map must be a non-empty 2-D array, got shape {attention.shape}")
    h, w = attention.shape
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return attention[rows[:, None], cols[None, :]]


def attention_overlay(crop: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Heat map of ``attention [h, w]`` blended over ``crop [H, W]`` (float in [0, 1]) -> uint8 RGB ``[H, W, 3]``.

    ``rgb = (1 - HEAT_ALPHA) * grey + HEAT_ALPHA * HEAT_CMAP(attention)``, attention clipped to [0, 1].
    """
    if crop.ndim != 2:
        raise ValueError(f"crop must be a 2-D grey array, got shape {crop.shape}")
    heat = colormaps[HEAT_CMAP](np.clip(upsample_nearest(attention, crop.shape), 0.0, 1.0))[..., :3]
    grey = np.clip(crop, 0.0, 1.0)[..., None]
    rgb = (1.0 - HEAT_ALPHA) * grey + HEAT_ALPHA * heat
    return np.round(rgb * 255.0).astype(np.uint8)
