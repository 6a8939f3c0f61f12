"""Training state in a checkpoint directory, as safetensors and JSON (no pickle).

A checkpoint holds what resuming needs and what the bundle needs:

- ``model.safetensors``      the weights after the last finished epoch
- ``best.safetensors``       the weights of the best validation epoch so far (what the bundle ships)
- ``optimizer.safetensors``  the optimiser's per-parameter tensors (Adam moments, step counts)
- ``state.json``             epoch, learning-rate/early-stopping state, optimiser hyper-parameters,
                             per-epoch history
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass
class Plateau:
    """Keras-style plateau rules: lower the learning rate after ``lr_patience`` epochs without a
    better validation value, stop after ``stop_patience`` (``None`` = never stop early)."""

    mode: str  # "max" (mAP) or "min" (RMSE)
    lr_factor: float
    lr_patience: int
    stop_patience: int | None = None
    best: float | None = None
    bad_epochs: int = 0  # epochs since the best one
    lr_wait: int = 0  # bad epochs since the last learning-rate change

    def step(self, value: float) -> tuple[bool, bool, bool]:
        """Record one epoch's validation value; returns ``(improved, lower_lr, stop)``."""
        better = value == value and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if better:
            self.best, self.bad_epochs, self.lr_wait = float(value), 0, 0
        else:
            self.bad_epochs += 1
            self.lr_wait += 1
        lower = self.lr_wait >= self.lr_patience
        if lower:
            self.lr_wait = 0
        stop = self.stop_patience is not None and self.bad_epochs >= self.stop_patience
        return better, lower, stop


@dataclass
class TrainState:
    """The JSON part of a checkpoint."""

    epoch: int = 0  # epochs finished
    plateau: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None  # why training ended ("early_stop", "epochs", "time_budget")
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of the weights, safe for safetensors (no shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name!r} is a {type(value).__name__}, not a tensor")
            tensors[f"{idx}/{name}"] = value.detach().to("cpu").contiguous().clone()
    return tensors, sd["param_groups"]


def save_checkpoint(directory: str, model: nn.Module, best: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer, state: TrainState) -> None:
    """Write the four checkpoint files into ``directory``."""
    save_file(cpu_state(model), os.path.join(directory, "model.safetensors"))
    save_file(best, os.path.join(directory, "best.safetensors"))
    tensors, groups = _optimizer_tensors(opt)
    save_file(tensors, os.path.join(directory, "optimizer.safetensors"))
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump({"state": asdict(state), "param_groups": groups}, f, indent=1, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_state(directory: str) -> TrainState:
    with open(os.path.join(directory, "state.json")) as f:
        return TrainState(**json.load(f)["state"])


def read_best(directory: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "best.safetensors"))


def load_checkpoint(directory: str, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Restore model and optimiser in place; returns the JSON state and the best weights so far."""
    unwrap(model).load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    with open(os.path.join(directory, "state.json")) as f:
        saved = json.load(f)
    tensors = load_file(os.path.join(directory, "optimizer.safetensors"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        slots.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": slots, "param_groups": saved["param_groups"]})
    return TrainState(**saved["state"]), read_best(directory)

