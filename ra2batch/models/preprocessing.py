"""How a grey radiograph becomes model input; recorded in every bundle so training and scoring agree."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ImageNet statistics that pretrained timm and torchvision backbones expect (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """Grey-to-RGB rule, normalisation and crop geometry shared by training and inference.

    Images are float32 ``H x W`` in ``[0, 1]``. ``grey_to_rgb="repeat"`` copies the grey channel into
    R, G and B, then each channel is normalised as ``(x - mean) / std``. A joint crop is the detector
    box grown by ``crop_margin`` of its longer side on each side, then around its centre to the joint
    group's crop aspect (a square, or tall for fingers and toes; areas outside the image read as 0,
    the background), resized to the group's crop shape (:func:`ra2batch.models.crops.cut`).
    ``crop_fit`` names that rule: ``pad_to_shape``; bundles written before tall crops existed say
    ``pad_square``, the same rule for their square crops.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    grey_to_rgb: Literal["repeat"] = "repeat"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)
    crop_fit: Literal["pad_to_shape", "pad_square"] = "pad_to_shape"
