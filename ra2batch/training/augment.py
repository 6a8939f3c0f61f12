"""Training-time augmentation: horizontal flips and small rotations that move boxes with the image,
and for joint-model crops flips plus a small random shift and zoom (:func:`jitter_crops`).

Images are float32 tensors ``[H, W]`` in [0, 1]; boxes ``[n, 4]`` ``(x0, y0, x1, y1)`` in pixels.
A rotated box is the bounding box of the rotated *ellipse* inscribed in the original box: the
rotated corners' bounding box would swell a long thin finger box by a large fraction of its
length and teach the detector loose boxes, which costs IoU at 0.6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def hflip_image_boxes(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left-right; box x-coordinates become ``W - x``."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return image.flip(-1), flipped


def rotate_image_boxes(image: torch.Tensor, boxes: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``degrees`` (counter-clockwise on screen) about the image centre, same size.

    Areas rotated in from outside read as 0 (background). Boxes stay clipped to the image.
    """
    h, w = image.shape[-2:]
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # Output pixel (x, y) samples the input at R(-a) about the centre, in normalised coordinates.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    out = F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    cx, cy = w / 2, h / 2
    bx, by = (boxes[:, 0] + boxes[:, 2]) / 2 - cx, (boxes[:, 1] + boxes[:, 3]) / 2 - cy
    # Screen coordinates have y down, so a counter-clockwise turn on screen is (x, y) -> R(-a).
    nx, ny = cos * bx + sin * by + cx, -sin * bx + cos * by + cy
    rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    half_w = torch.sqrt((rx * cos) ** 2 + (ry * sin) ** 2)
    half_h = torch.sqrt((rx * sin) ** 2 + (ry * cos) ** 2)
    rotated = torch.stack([nx - half_w, ny - half_h, nx + half_w, ny + half_h], dim=1)
    rotated[:, 0::2] = rotated[:, 0::2].clamp(0, w)
    rotated[:, 1::2] = rotated[:, 1::2].clamp(0, h)
    return out, rotated


def augment_detection(image: torch.Tensor, boxes: torch.Tensor, *, flip: bool, max_degrees: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random flip (p = 0.5, when ``flip``) and a uniform rotation in ``[-max_degrees, max_degrees]``."""
    if flip and torch.rand((), generator=generator) < 0.5:
        image, boxes = hflip_image_boxes(image, boxes)
    if max_degrees > 0:
        deg = float((torch.rand((), generator=generator) * 2 - 1) * max_degrees)
        image, boxes = rotate_image_boxes(image, boxes, deg)
    return image, boxes


def augment_crops(crops: torch.Tensor, *, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of a batch of crops ``[N, H, W]`` left-right."""
    if not flip:
        return crops
    mask = torch.rand(crops.shape[0], generator=generator) < 0.5
    return torch.where(mask[:, None, None], crops.flip(-1), crops)


def jitter_crops(crops: torch.Tensor, *, max_shift: float, max_zoom: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Shift each crop ``[N, H, W]`` by up to ``max_shift`` of its sides (x and y independently) and zoom
    it by a factor in ``[1 - max_zoom, 1 + max_zoom]``, bilinearly; uncovered pixels read 0 (background).

    A detected box sits a few percent of its side away from the annotated one, so a model trained only
    on crops cut from the annotations sees its joints at slightly other places at inference; this
    teaches it that placement does not matter.
    """
    if not max_shift and not max_zoom:
        return crops
    n, (h, w) = crops.shape[0], crops.shape[-2:]
    zoom = 1 + max_zoom * (2 * torch.rand(n, generator=generator) - 1)
    shift = 2 * max_shift * (2 * torch.rand(n, 2, generator=generator) - 1)  # grid coordinates span 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = zoom
    theta[:, 1, 1] = zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(crops.dtype), [n, 1, h, w], align_corners=False)
    return F.grid_sample(crops[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
