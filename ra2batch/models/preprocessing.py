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
    R, G and B, then each channel is normalised as ``(x - mean) / std``. A joint crop is a square
    around the detector box's centre whose side is the box's longer side plus ``crop_margin`` of it
    on each end (areas outside the image read as 0, the background), resized to the crop size
    (:func:`ra2batch.models.crops.cut`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    grey_to_rgb: Literal["repeat"] = "repeat"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)
    crop_fit: Literal["pad_square"] = "pad_square"
