"""Detector training inside Ray Train workers: RetinaNet on the rows of ``data.detector_dataset``.

Runs under ``TorchTrainer`` (DDP: gloo on CPU, nccl on GPU); the rows come from
``ray.train.get_dataset_shard("train" | "val")``. Validation AP per class at the configured IoU is
computed over the validation images of all ranks.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from .. import catalogue
from ..models.detectors import DetectorConfig, detector_from_config
from ..models.preprocessing import Preprocessing
from .augment import augment_detection
from .loop import gather, run_epochs, start_from
from .metrics import average_precision, summarise
from .presets import DetectorTraining
from .state import Plateau


def _images(batch: dict[str, Any], device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(im, dtype=np.float32)).to(device)[None] for im in batch["image"]]


def _targets(batch: dict[str, Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1, 4)).to(device),
             "labels": torch.from_numpy(np.asarray(lab, dtype=np.int64)).to(device)}
            for b, lab in zip(batch["boxes"], batch["labels"])]


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, Any]],
                    device: torch.device, cfg: DetectorTraining, generator: torch.Generator) -> dict[str, float]:
    """One pass over the training shard; returns the mean total loss (focal + box regression)."""
    model.train()
    total, steps = 0.0, 0
    for batch in batches:
        images, targets = [], []
        for image, target in zip(_images(batch, device), _targets(batch, device)):
            im, boxes = augment_detection(image[0].cpu(), target["boxes"].cpu(), flip=cfg.flip,
                                          max_degrees=cfg.max_rotation, generator=generator)
            images.append(im.to(device)[None])
            targets.append({"boxes": boxes.to(device), "labels": target["labels"]})
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    n = gather((total, steps))
    return {"loss": sum(t for t, _ in n) / max(1, sum(s for _, s in n))}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device, kind: str,
             iou_threshold: float) -> dict[str, float]:
    """Validation AP per class and mAP at ``iou_threshold`` over all ranks' validation images.

    Every scored box counts (not only the best per class), as in the usual AP definition.
    """
    model.eval()
    classes = catalogue.detector_classes(kind)
    dets, truths = [], []
    for batch in batches:
        for out, target in zip(model(_images(batch, device)), _targets(batch, device)):
            dets.append([(classes[int(lab) - 1], box.tolist(), float(s))
                         for box, s, lab in zip(out["boxes"].cpu(), out["scores"].cpu(), out["labels"].cpu())])
            truths.append([(classes[int(lab) - 1], box.tolist())
                           for box, lab in zip(target["boxes"].cpu(), target["labels"].cpu())])
    everywhere = gather((dets, truths))
    all_dets = [d for ds, _ in everywhere for d in ds]
    all_truths = [t for _, ts in everywhere for t in ts]
    return summarise(average_precision(all_dets, all_truths, classes, iou_threshold), "val")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``kind``, ``name``, ``detector`` / ``training`` /
    ``preprocessing`` (JSON dicts of their pydantic configs), ``seed``, ``threads``, ``stop_after_epochs``,
    ``pretrained`` (optional, see ``loop.start_from``)."""
    kind = config["kind"]
    arch = DetectorConfig.model_validate(config["detector"])
    cfg = DetectorTraining.model_validate(config["training"])
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    model = detector_from_config(arch, len(catalogue.detector_classes(kind)),
                                 preprocessing=Preprocessing.model_validate(config["preprocessing"]))
    start_from(model, config.get("pretrained"))
    # torchvision's MobileNetV3 sets BatchNorm momentum to 0.01: running statistics that slow lag far
    # behind a detector trained from scratch for a few hundred steps, and validation would use them.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = max(m.momentum or 0.0, 0.1)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    plateau = Plateau("max", cfg.lr_factor, cfg.lr_patience, cfg.stop_patience)
    rank = ray.train.get_context().get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def fit_epoch(epoch: int) -> dict[str, float]:
        gen = torch.Generator().manual_seed(config["seed"] * 1_000_003 + epoch * 101 + rank)
        batches = train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                           local_shuffle_buffer_size=4 * cfg.batch_size,
                                           local_shuffle_seed=config["seed"] + epoch)
        return train_one_epoch(model, optimizer, batches, device, cfg, gen)

    def validate() -> dict[str, float]:
        batches = val_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy")
        return evaluate(model, batches, device, kind, cfg.iou_threshold)

    run_epochs(config["name"], model, optimizer, plateau, epochs=cfg.epochs, max_minutes=cfg.max_minutes,
               monitor="val_mAP", fit_epoch=fit_epoch, validate=validate,
               stop_after_epochs=config.get("stop_after_epochs"))
