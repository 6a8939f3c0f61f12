"""The epoch loop shared by the detector and joint-model workers (inside a Ray Train worker).

It owns what both have in common: resuming from ``ray.train.get_checkpoint()``, the plateau rules
(lower the learning rate, stop early), keeping the best weights, the wall-clock budget, and a
checkpoint (``ray.train.report``) at the last epoch and at most every ``CHECKPOINT_EVERY_S`` before
it, so an interrupted run continues at the epoch after the last one saved. Every rank takes the same
decisions: validation metrics are gathered over all ranks before they are compared, and the time
budget and the checkpoint clock are agreed by all-reduces.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from typing import Callable

import ray
import ray.train
import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from torch import nn

from .state import Plateau, TrainState, cpu_state, load_checkpoint, save_checkpoint

#: Seconds between checkpoints; the last epoch is always saved. ``ray.train.report`` waits until Ray
#: Train's controller, which polls every 2 s, has collected the previous report, so reporting after
#: every epoch shorter than that waits out the rest: 1.41 s per report after 0.6 s epochs (a demo
#: wrist model's), none after 3 s epochs, measured here.
CHECKPOINT_EVERY_S = 30.0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(obj: object) -> list[object]:
    """``obj`` from every rank, in rank order (just ``[obj]`` without a process group)."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def is_rank_zero() -> bool:
    return ray.train.get_context().get_world_rank() == 0


def say(line: str) -> None:
    """Print ``line`` once on the driver's console. Not with ``print``: Ray Train's workers replace it with
    one that logs the line to the console and, since Ray wraps a worker's stdout, also prints it (twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def mixed_precision(device: torch.device):
    """bf16 autocast on a GPU that has it (Ampere and later: bf16 matmuls at about twice fp32's rate, fp32
    master weights, no loss scaling needed); a no-op on the CPU, where it does not pay."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def start_from(model: nn.Module, pretrained: ray.ObjectRef | None) -> None:
    """Give a freshly built model its pretrained tensors (``ra2batch train --pretrained``): safetensors
    bytes the driver put in the object store (``None``: a random start). When a run resumes, its
    checkpoint then replaces them."""
    if pretrained is not None:
        model.load_state_dict(load_safetensors(ray.get(pretrained)), strict=False)


def run_epochs(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plateau: Plateau,
    *,
    epochs: int,
    max_minutes: float | None,
    monitor: str,
    fit_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    stop_after_epochs: int | None = None,
) -> None:
    """Train until ``epochs``, early stop or the time budget; checkpoint at the last epoch and at
    most every ``CHECKPOINT_EVERY_S`` seconds before it.

    ``fit_epoch(epoch)`` trains one epoch and returns training metrics (e.g. ``loss``);
    ``validate()`` returns validation metrics that include ``monitor``. ``stop_after_epochs``
    ends this process after that many epochs of this session (to test resumption).
    """
    state, best = TrainState(), cpu_state(model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, best = load_checkpoint(d, model, optimizer)
        plateau = Plateau(**state.plateau)
        if is_rank_zero():
            say(f"[{name}] resuming after epoch {state.epoch} from {checkpoint.path}")
    spent = sum(h.get("minutes", 0.0) for h in state.history)
    # A model stopped by its epoch cap or time budget continues when rerun with a larger one.
    if state.stopped == "early_stop" or state.epoch >= epochs or (max_minutes is not None and spent >= max_minutes):
        return
    state.stopped = None
    session_epochs, saved_at = 0, time.monotonic()
    while state.epoch < epochs:
        start = time.monotonic()
        metrics = fit_epoch(state.epoch)
        metrics.update(validate())
        lr = optimizer.param_groups[0]["lr"]
        improved, lower, stop = plateau.step(metrics[monitor])
        if improved:
            best, state.best_epoch = cpu_state(model), state.epoch + 1
        if lower:
            for group in optimizer.param_groups:
                group["lr"] *= plateau.lr_factor
        state.epoch += 1
        minutes = (time.monotonic() - start) / 60
        spent += minutes
        metrics.update(epoch=state.epoch, lr=lr, minutes=minutes, workers=world_size())
        state.history.append({k: float(v) for k, v in metrics.items()})
        state.plateau = asdict(plateau)
        over_budget = any_rank(max_minutes is not None and spent >= max_minutes)
        if stop:
            state.stopped = "early_stop"
        elif over_budget and state.epoch < epochs:
            state.stopped = "time_budget"
        elif state.epoch >= epochs:
            state.stopped = "epochs"
        if is_rank_zero():
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "minutes", "workers"))
            say(f"[{name}] epoch {state.epoch}/{epochs} {shown} ({minutes:.2f} min)"
                + (f" -> stop: {state.stopped}" if state.stopped else ""))
        session_epochs += 1
        ends = bool(state.stopped) or (stop_after_epochs is not None and session_epochs >= stop_after_epochs)
        if ends or any_rank(time.monotonic() - saved_at >= CHECKPOINT_EVERY_S):
            with tempfile.TemporaryDirectory() as d:
                if is_rank_zero():
                    save_checkpoint(d, model, best, optimizer, state)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
                else:
                    ray.train.report(metrics)
            saved_at = time.monotonic()
        if ends:
            return
