"""Joint models: a timm backbone with DeepRA's attention head.

``JointModel`` maps grey crops ``[N, S, S]`` (or ``[N, 1, S, S]``) in ``[0, 1]`` to non-negative
scores ``[N, n_outputs]`` and an attention map ``[N, h, w]`` in ``[0, 1]`` at the backbone's feature
resolution. Grey becomes three channels and is normalised inside the model (the bundle's
:class:`Preprocessing`), so training and inference cannot disagree about it.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ra2batch.models.preprocessing import Preprocessing


class JointHeadConfig(BaseModel):
    """Widths of the attention head; the defaults are the paper's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention_widths: tuple[int, ...] = Field((512, 256, 128, 64, 16), min_length=1)
    dense_width: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class LocallyConnected1x1(nn.Module):
    """A 1x1 layer with its own weights and bias at every spatial position (not a convolution).

    ``[N, C, h, w] -> [N, out_channels, h, w]``: ``y[n, o, i, j] = sum_c x[n, c, i, j] W[i, j, c, o] + b[i, j, o]``.
    The spatial size is fixed at construction, like Keras' ``LocallyConnected2D``.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]):
        super().__init__()
        h, w = size
        bound = in_channels ** -0.5
        self.weight = nn.Parameter(torch.empty(h, w, in_channels, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(h, w, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.weight.shape[:2]
        if x.shape[-2:] != (h, w):
            raise ValueError(f"locally connected layer built for {h}x{w} features, got {tuple(x.shape[-2:])}")
        y = torch.einsum("nchw,hwco->nohw", x, self.weight.to(x.dtype))
        return y + self.bias.to(x.dtype).permute(2, 0, 1)


class AttentionHead(nn.Module):
    """DeepRA's head: BN, a 1x1-conv attention branch, attention-weighted pooling, two dense layers.

    ``features [N, C, h, w] -> (scores [N, n_outputs] >= 0, attention [N, h, w] in [0, 1])``.
    """

    def __init__(self, in_channels: int, n_outputs: int, feature_size: tuple[int, int], cfg: JointHeadConfig):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        layers: list[nn.Module] = []
        width = in_channels
        for out in cfg.attention_widths:
            layers += [nn.Conv2d(width, out, kernel_size=1), nn.ReLU(inplace=True)]
            width = out
        self.attention_convs = nn.Sequential(*layers)
        self.attention_out = LocallyConnected1x1(width, 1, feature_size)
        self.classifier = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(in_channels, cfg.dense_width),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.dense_width, n_outputs),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(features)
        attention = torch.sigmoid(self.attention_out(self.attention_convs(x)))  # [N, 1, h, w]
        pooled = (x * attention).mean(dim=(2, 3)) / attention.mean(dim=(2, 3)).clamp_min(1e-6)
        # softplus keeps scores non-negative and, unlike a ReLU, never stops the gradient.
        return F.softplus(self.classifier(pooled)), attention[:, 0]


class JointModel(nn.Module):
    """timm backbone (``forward_features``) + :class:`AttentionHead` for grey crops of ``crop_size``
    pixels square, or ``(height, width)``.

    The backbone starts from random weights (nothing is downloaded); ``ra2batch.models.pretrained``
    loads starting weights into it (e.g. timm's ImageNet weights).
    """

    def __init__(self, backbone: str, n_outputs: int, crop_size: int | tuple[int, int],
                 head: JointHeadConfig | None = None, *, preprocessing: Preprocessing | None = None):
        super().__init__()
        self.crop_shape = (crop_size, crop_size) if isinstance(crop_size, int) else (int(crop_size[0]), int(crop_size[1]))
        if not timm.is_model(backbone):
            raise ValueError(f"unknown timm backbone {backbone!r} (see timm.list_models())")
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        prep = preprocessing or Preprocessing()
        # Plain floats, not buffers: a model built on the meta device and then given its weights
        # (``load_bundle``) has nothing left to initialise.
        self.norm_mean, self.norm_std = tuple(prep.mean), tuple(prep.std)
        channels, h, w = self._feature_shape(self.crop_shape)
        self.head = AttentionHead(channels, n_outputs, (h, w), head or JointHeadConfig())

    @torch.no_grad()
    def _feature_shape(self, shape: tuple[int, int]) -> tuple[int, int, int]:
        was_training = self.backbone.training
        self.backbone.eval()
        out = self.backbone.forward_features(torch.zeros(1, 3, *shape))
        self.backbone.train(was_training)
        if out.ndim != 4:
            raise ValueError(f"backbone gives {out.ndim}-d features; a joint model needs a [N, C, h, w] feature map")
        return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])

    @property
    def feature_size(self) -> tuple[int, int]:
        """``(h, w)`` of the attention map."""
        return tuple(self.head.attention_out.weight.shape[:2])  # type: ignore[return-value]

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``crops [N, H, W]`` or ``[N, 1, H, W]`` in [0, 1] -> ``(scores [N, n_outputs], attention [N, h, w])``."""
        x = crops[:, None] if crops.ndim == 3 else crops
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != self.crop_shape:
            raise ValueError(f"expected grey crops [N, {self.crop_shape[0]}, {self.crop_shape[1]}], "
                             f"got {tuple(crops.shape)}")
        mean = x.new_tensor(self.norm_mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.norm_std).view(1, 3, 1, 1)
        x = (x.expand(-1, 3, -1, -1) - mean) / std
        return self.head(self.backbone.forward_features(x))
