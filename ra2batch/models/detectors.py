"""RetinaNet detectors (torchvision: FPN, focal loss) built by backbone name from a registry.

A detector is a plain ``torchvision.models.detection.RetinaNet``: in training mode
``model(images, targets)`` returns the focal and box losses, in eval mode a list of
``{"boxes" [K, 4] (x0, y0, x1, y1) in input pixels, "scores" [K], "labels" [K] (class index + 1)}``.
Images are grey tensors ``[1, H, W]`` in ``[0, 1]``: the transform's 3-channel normalisation
broadcasts the grey channel to R, G and B (``Preprocessing.grey_to_rgb == "repeat"``); a
``[3, H, W]`` repeat of the same image gives the same result.

Registered names (``create_detector(name, num_classes, ...)``):

- ``resnet50_fpn``: the paper's ResNet-50 + FPN 256 (min/max side 1000/1400).
- ``resnet18_fpn``: ResNet-18 + FPN 256, four head convolutions.
- ``resnet18_fpn_narrow``: ResNet-18 + FPN 64 and two head convolutions, for CPUs and the demo.
- ``mobilenet_v3_fpn_narrow``: MobileNetV3-Large + FPN 64 and two head convolutions.

All are built with random weights (nothing is downloaded); ``ra2batch.models.pretrained`` loads
starting weights into them (e.g. torchvision's ImageNet trunk weights).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ra2batch.models.preprocessing import Preprocessing

#: Anchor box heights over widths: fingers and toes give long, thin boxes, wrists squarish ones.
FINGER_ASPECT_RATIOS = (0.5, 1.0, 2.0, 3.0)


class DetectorConfig(BaseModel):
    """Architecture and input size of one detector; saved in ``bundle.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: str = "resnet50_fpn"
    min_size: int = Field(1000, ge=32)
    max_size: int = Field(1400, ge=32)
    aspect_ratios: tuple[float, ...] = Field(FINGER_ASPECT_RATIOS, min_length=1)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    limb_min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="a radiograph whose limb confidence (``bundle.limb_confidence``: the mean "
        "over the detector's classes of its best box's score) is below this shows no hand (foot) and is rejected "
        "unscored; 0 accepts every radiograph. Training calibrates it on the held-out radiographs")


_REGISTRY: dict[str, Callable[..., tuple[nn.Module, int, int]]] = {}


def register(fn: Callable[..., tuple[nn.Module, int, int]]):
    """Register a trunk builder by its function name.

    The builder returns ``(backbone with FPN, fpn channels, head convolutions)``.
    """
    _REGISTRY[fn.__name__] = fn
    return fn


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def _resnet_fpn(trunk: nn.Module, stage_channels: tuple[int, int, int], fpn_channels: int) -> BackboneWithFPN:
    return BackboneWithFPN(
        trunk, {"layer2": "0", "layer3": "1", "layer4": "2"}, list(stage_channels), fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )


@register
def resnet50_fpn():
    return _resnet_fpn(resnet50(weights=None), (512, 1024, 2048), 256), 256, 4


@register
def resnet18_fpn():
    return _resnet_fpn(resnet18(weights=None), (128, 256, 512), 256), 256, 4


@register
def resnet18_fpn_narrow():
    return _resnet_fpn(resnet18(weights=None), (128, 256, 512), 64), 64, 2


@register
def mobilenet_v3_fpn_narrow():
    features = mobilenet_v3_large(weights=None).features
    # strides 8, 16, 32: the ends of blocks 6 (40 ch), 12 (112 ch) and the last 1x1 conv (960 ch)
    return BackboneWithFPN(
        features, {"6": "0", "12": "1", "16": "2"}, [40, 112, 960], 64,
        extra_blocks=LastLevelP6P7(64, 64),
    ), 64, 2


def _anchors(aspect_ratios: tuple[float, ...]) -> AnchorGenerator:
    """Three scales per octave at sizes 32..512 on P3..P7, each with every aspect ratio."""
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def _shorten_head(head: RetinaNetHead, n_convs: int) -> RetinaNetHead:
    for sub in (head.classification_head, head.regression_head):
        sub.conv = nn.Sequential(*list(sub.conv)[:n_convs])
    return head


def create_detector(
    name: str,
    num_classes: int,
    *,
    min_size: int = 1000,
    max_size: int = 1400,
    aspect_ratios: tuple[float, ...] = FINGER_ASPECT_RATIOS,
    min_score: float = 0.05,
    preprocessing: Preprocessing | None = None,
) -> RetinaNet:
    """A RetinaNet for ``num_classes`` object classes (labels ``1..num_classes``; 0 is background)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector backbone {name!r}; registered: {', '.join(list_detectors())}")
    backbone, channels, n_convs = _REGISTRY[name]()
    anchors = _anchors(aspect_ratios)
    head = _shorten_head(RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1), n_convs)
    prep = preprocessing or Preprocessing()
    model = RetinaNet(
        backbone, num_classes + 1, min_size=min_size, max_size=max_size, image_mean=list(prep.mean),
        image_std=list(prep.std), anchor_generator=anchors, head=head, score_thresh=min_score,
    )
    model.transform = CanvasTransform(min_size, max_size, list(prep.mean), list(prep.std))
    return model


def is_portrait(image: torch.Tensor) -> bool:
    """Whether an image ``[..., H, W]`` takes the portrait canvas of :class:`CanvasTransform`."""
    return image.shape[-2] >= image.shape[-1]


class CanvasTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize to ``min_size``/``max_size``), except that
    in eval mode a batch is padded to a fixed canvas rather than to its largest image.

    After the resize a portrait image is at most ``max_size`` high and ``min_size`` wide, so the canvas
    is those sides rounded up to the stride: ``[B, 3, ceil(max), ceil(min)]``, transposed when every
    image is landscape (square if the batch mixes both). Batches of one orientation thus always have
    one shape (GPU kernels are chosen once; any batch size works), and a radiograph's detections do not
    depend on the size of its batch mates. Training batches keep torchvision's padding.

    Images are normalised after the resize instead of before it (the same values: the bilinear
    resize is linear and the normalisation affine per channel), so a grey 4096 x 4096 radiograph
    is never expanded to three float channels at full size (200 MB) only to be shrunk.
    """

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image  # see resize

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        image, target = super().resize(image, target)
        return super().normalize(image), target

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        if self.training:
            return super().batch_images(images, size_divisible)
        long = math.ceil(self.max_size / size_divisible) * size_divisible
        short = math.ceil(max(self.min_size) / size_divisible) * size_divisible
        portrait = {is_portrait(im) for im in images}
        h, w = (long, short) if portrait == {True} else (short, long) if portrait == {False} else (long, long)
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for out, im in zip(batch, images):
            out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        return batch.contiguous(memory_format=torch.channels_last) if batch.is_cuda else batch


def detector_from_config(cfg: DetectorConfig, num_classes: int, *,
                         preprocessing: Preprocessing | None = None) -> RetinaNet:
    return create_detector(cfg.backbone, num_classes, min_size=cfg.min_size, max_size=cfg.max_size,
                           aspect_ratios=cfg.aspect_ratios, min_score=cfg.min_score, preprocessing=preprocessing)


