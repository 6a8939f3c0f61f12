"""Joint-model training inside Ray Train workers: one attention model per plan group.

Rows come from ``data.crop_dataset`` filtered to one group. Each epoch keeps every damaged crop
and a fresh random draw of zero-damage crops (``keep_zero`` of them, so both are about equally
many; all of them without ``balance_zeros``), mirrors a random half left-right, shifts and zooms each
crop a little (``max_shift``, ``max_zoom``), and minimises the MSE of the raw SvH scores. Validation
RMSE is over every output of every validation crop of all ranks. On a GPU with bf16 the forward passes
run under bf16 autocast (``loop.mixed_precision``; the loss in fp32); the detectors train in fp32.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch import nn

from ..models.joint_model import JointHeadConfig, JointModel
from ..models.plan import JointGroup
from ..models.preprocessing import Preprocessing
from .augment import augment_crops, jitter_crops
from .loop import gather, mixed_precision, run_epochs, start_from
from .presets import JointTraining
from .state import Plateau


def freeze_backbone(model: JointModel, unfrozen_fraction: float) -> int:
    """Freeze the leading ``1 - unfrozen_fraction`` of the backbone's parameter tensors (the stem
    and early blocks, in definition order); returns how many tensors stay trainable."""
    params = list(model.backbone.parameters())
    n_frozen = round(len(params) * (1 - unfrozen_fraction))
    for p in params[:n_frozen]:
        p.requires_grad_(False)
    return len(params) - n_frozen


def _stack(column: Any) -> np.ndarray:
    """A batch column as one float32 array (ragged-typed columns arrive as arrays of arrays)."""
    a = np.asarray(column)
    if a.dtype == object:
        a = np.stack(list(a))
    return a.astype(np.float32, copy=False)


class CachedShard:
    """A worker's dataset shard held in its memory after one pass through ``get_dataset_shard``.

    Crop datasets are small (1,500 tall demo crops are 30 MB) and, with tiny models, streaming them
    through Ray Data again every epoch made a tall-crop erosion_fingers epoch take 4.2 s instead of
    2.8 s. Each later epoch draws its own seeded permutation of the cached rows.
    The shard is read once, so a worker keeps the rows it got in the first epoch.
    """

    def __init__(self, shard: Any, columns: tuple[str, ...] = ("crop", "targets", "damaged")):
        self.shard, self.columns = shard, columns
        self.rows: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        for batch in self.shard.iter_batches(batch_size=1024, batch_format="numpy"):
            for c in self.columns:
                column = np.asarray(batch[c])
                parts[c].append(np.stack(list(column)) if column.dtype == object else column)
        return {c: np.concatenate(v) if v else np.zeros((0,)) for c, v in parts.items()}

    def iter_batches(self, batch_size: int, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of the cached rows, in a permutation drawn from ``seed`` (stored order if None)."""
        if self.rows is None:
            self.rows = self._load()
        n = len(self.rows[self.columns[0]])
        order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
        for i in range(0, n, batch_size):
            take = order[i:i + batch_size]
            yield {c: v[take] for c, v in self.rows.items()}


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, Any]],
                    device: torch.device, cfg: JointTraining, keep_zero: float,
                    generator: torch.Generator) -> dict[str, float]:
    """One pass with zero-damage crops under-sampled; returns the mean MSE per crop and the crop count."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        crops, targets = _stack(batch["crop"]), _stack(batch["targets"])
        damaged = np.asarray(batch["damaged"], dtype=bool)
        keep = damaged | (torch.rand(len(damaged), generator=generator).numpy() < keep_zero)
        if keep.sum() < 2:  # BatchNorm needs two samples; keep the batch's first two instead
            keep[:2] = True
        x = augment_crops(torch.from_numpy(crops[keep]), flip=cfg.flip, generator=generator)
        x = jitter_crops(x, max_shift=cfg.max_shift, max_zoom=cfg.max_zoom, generator=generator).to(device)
        y = torch.from_numpy(targets[keep]).to(device)
        with mixed_precision(device):
            scores, _ = model(x)
        loss = F.mse_loss(scores.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    n = gather((total, count))
    seen = sum(c for _, c in n)
    return {"loss": sum(t for t, _ in n) / max(1, seen), "crops": float(seen)}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict[str, float]:
    """Validation RMSE and MAE of the raw scores, and RMSE on the challenge's log2(x + 1) scale."""
    model.eval()
    sq, ab, sq_log, n = 0.0, 0.0, 0.0, 0
    for batch in batches:
        with mixed_precision(device):
            scores, _ = model(torch.from_numpy(_stack(batch["crop"])).to(device))
        pred = scores.float().cpu().numpy()
        gold = _stack(batch["targets"])
        d = pred - gold
        sq += float((d**2).sum())
        ab += float(np.abs(d).sum())
        sq_log += float(((np.log2(pred.clip(0) + 1) - np.log2(gold + 1)) ** 2).sum())
        n += d.size
    parts = gather((sq, ab, sq_log, n))
    total = max(1, sum(p[3] for p in parts))
    return {"val_rmse": float(np.sqrt(sum(p[0] for p in parts) / total)),
            "val_mae": sum(p[1] for p in parts) / total,
            "val_rmse_log2": float(np.sqrt(sum(p[2] for p in parts) / total))}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``name``, ``group`` / ``head`` / ``training`` /
    ``preprocessing`` (JSON dicts of their pydantic configs), ``keep_zero``, ``seed``, ``threads``,
    ``stop_after_epochs``, ``pretrained`` (optional, see ``loop.start_from``)."""
    group = JointGroup.model_validate(config["group"])
    cfg = JointTraining.model_validate(config["training"])
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    model = JointModel(group.backbone, group.n_outputs, group.crop_shape,
                       JointHeadConfig.model_validate(config["head"]),
                       preprocessing=Preprocessing.model_validate(config["preprocessing"]))
    start_from(model, config.get("pretrained"))
    freeze_backbone(model, cfg.unfrozen_fraction)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    plateau = Plateau("min", cfg.lr_factor, cfg.lr_patience, cfg.stop_patience)
    rank = ray.train.get_context().get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    keep_zero = float(config["keep_zero"]) if cfg.balance_zeros else 1.0

    if cfg.cache_crops:
        cached_train, cached_val = CachedShard(train_shard), CachedShard(val_shard)

        def train_batches(epoch: int) -> Iterable[dict[str, Any]]:
            return cached_train.iter_batches(cfg.batch_size, seed=config["seed"] * 7919 + epoch * 31 + rank)

        def val_batches() -> Iterable[dict[str, Any]]:
            return cached_val.iter_batches(128)
    else:
        def train_batches(epoch: int) -> Iterable[dict[str, Any]]:
            return train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                            local_shuffle_buffer_size=8 * cfg.batch_size,
                                            local_shuffle_seed=config["seed"] + epoch)

        def val_batches() -> Iterable[dict[str, Any]]:
            return val_shard.iter_batches(batch_size=128, batch_format="numpy")

    def fit_epoch(epoch: int) -> dict[str, float]:
        gen = torch.Generator().manual_seed(config["seed"] * 1_000_003 + epoch * 101 + rank)
        return train_one_epoch(model, optimizer, train_batches(epoch), device, cfg, keep_zero, gen)

    def validate() -> dict[str, float]:
        return evaluate(model, val_batches(), device)

    run_epochs(config["name"], model, optimizer, plateau, epochs=cfg.epochs,
               max_minutes=cfg.minutes_for(group.name), monitor="val_rmse", fit_epoch=fit_epoch, validate=validate,
               stop_after_epochs=config.get("stop_after_epochs"))
