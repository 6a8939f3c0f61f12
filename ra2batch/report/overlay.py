"""Attention maps drawn over the joint crop the model saw.

The stored map is coarse (the backbone's feature grid, e.g. 8 x 8) with values in ``[0, 1]``. It is
upsampled to the crop size by **nearest neighbour**: every stored cell becomes one block of pixels,
so the overlay shows the model's real resolution and each block's colour is exactly one stored value,
with no detail invented by interpolation. Values are coloured on a fixed ``[0, 1]`` scale (not
stretched per map), so a weak map looks weak.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

#: Colormap of the heat map and the weight of the heat over the grey crop.
HEAT_CMAP = "inferno"
HEAT_ALPHA = 0.5


def upsample_nearest(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``attention [h, w] -> [H, W]``: pixel ``(i, j)`` takes cell ``(i * h // H, j * w // W)``."""
    if attention.ndim != 2 or 0 in attention.shape:
        raise ValueError(f"attention map must be a non-empty 2-D array, got shape {attention.shape}")
    h, w = attention.shape
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return attention[rows[:, None], cols[None, :]]


def attention_overlay(crop: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Heat map of ``attention [h, w]`` blended over ``crop [S, S]`` (float in [0, 1]) -> uint8 RGB ``[S, S, 3]``.

    ``rgb = (1 - HEAT_ALPHA) * grey + HEAT_ALPHA * HEAT_CMAP(attention)``, attention clipped to [0, 1].
    """
    if crop.ndim != 2:
        raise ValueError(f"crop must be a 2-D grey array, got shape {crop.shape}")
    heat = colormaps[HEAT_CMAP](np.clip(upsample_nearest(attention, crop.shape), 0.0, 1.0))[..., :3]
    grey = np.clip(crop, 0.0, 1.0)[..., None]
    rgb = (1.0 - HEAT_ALPHA) * grey + HEAT_ALPHA * heat
    return np.round(rgb * 255.0).astype(np.uint8)
