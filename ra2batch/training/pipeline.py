"""The training run: detectors, then joint models, then a held-out evaluation, then the bundle.

Each model is its own Ray Train ``TorchTrainer`` run named ``{name}-detector-{kind}`` or
``{name}-joint-{group}`` under ``storage_path``, checkpointed every 30 s and at its end. Starting the same run
again (same name and storage path) continues every model from its last checkpoint; finished models
are not retrained. Data goes through Ray Data: radiographs are decoded once into materialised
datasets that the workers stream with ``get_dataset_shard``.

Annotations may be partial, as they were for the paper: the detectors train on the annotated
radiographs only, the joint models on every labelled one, with crops from the annotations where there
are some and from the trained detectors' boxes elsewhere (``auto``, :func:`joint_boxes_mode`). The
log and the bundle's provenance (``images``) say how many radiographs of each limb kind each model
saw, and where their boxes came from.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pyarrow.fs as pafs
import ray
import ray.data
import ray.train
from ray.data.expressions import col
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import save as save_safetensors

from .. import catalogue
from ..models.bundle import ModelBundle, build_bundle
from ..models.pretrained import describe
from ..storage import Location, is_remote, resolve
from . import detectors as detector_worker
from . import joints as joint_worker
from . import quality
from .data import box_sources, crop_dataset, detector_dataset
from .dataset import DatasetError, DatasetIndex, index_dataset, split_patients
from .evaluation import calibrated_limb_thresholds, evaluate_bundle
from .presets import TrainPreset
from .state import read_best, read_state


class TrainingError(RuntimeError):
    """A training run that could not produce a model; the message says which and why."""


@dataclass
class RunSettings:
    """Where and how the Ray Train runs execute."""

    name: str
    storage_path: str  # local directory or s3:// prefix for checkpoints
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # default: the cluster's CPUs shared among the workers
    storage_options: dict[str, Any] | None = None
    stop_after_epochs: int | None = None  # end each model's session after this many epochs (pause)
    log: Callable[[str], None] = field(default=print)


def _cpus_per_worker(run: RunSettings) -> float:
    if run.cpus_per_worker is not None:
        return run.cpus_per_worker
    return max(1.0, math.floor(ray.cluster_resources().get("CPU", 1) / run.num_workers))


def _finished(loc: Location, name: str, epochs: int) -> tuple[dict, Any] | None:
    """Best weights and state of run ``name`` when its saved checkpoint already ended it for good at
    ``epochs`` (early stop, or that many epochs done): a resumed command does not start a trainer
    (half a minute on 2 cores) only for it to stop at once. ``None`` when it still has to train."""
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.join(name), allow_not_found=True))
    saved = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    if not saved:
        return None
    with Checkpoint(saved[-1], filesystem=loc.fs).as_directory() as d:
        state = read_state(d)
        if state.stopped == "early_stop" or (state.stopped == "epochs" and state.epoch >= epochs):
            return read_best(d), state
    return None


def fit_model(loop: Callable[[dict], None], stage: str, config: dict[str, Any],
              datasets: dict[str, ray.data.Dataset], run: RunSettings) -> tuple[dict, Any]:
    """Run (or resume) one model's TorchTrainer; returns its best weights and final TrainState."""
    loc = resolve(run.storage_path, run.storage_options)
    done = _finished(loc, f"{run.name}-{stage}", int(config["training"]["epochs"]))
    if done is not None:
        run.log(f"[{stage}] finished earlier (epoch {done[1].epoch}, {done[1].stopped}): not trained again")
        return done
    cpus = _cpus_per_worker(run)
    resources = {"CPU": cpus, **({"GPU": 1} if run.use_gpu else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config={**config, "name": stage, "threads": max(1, int(cpus)),
                           "stop_after_epochs": run.stop_after_epochs},
        scaling_config=ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{run.name}-{stage}",
            storage_path=loc.path,
            storage_filesystem=loc.fs if is_remote(run.storage_path) else None,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise TrainingError(f"{stage}: training ended without a checkpoint ({result.error or 'no epoch finished'})")
    with result.checkpoint.as_directory() as d:
        return read_best(d), read_state(d)


def data_fingerprint(index: DatasetIndex) -> str:
    """sha256 over training.csv and the image and annotation names (identifies the training data)."""
    h = hashlib.sha256(index.location.read_bytes("training.csv"))
    for r in index.images:
        h.update(f"{r.name}:{len(r.boxes)}\n".encode())
    return h.hexdigest()


def _pretrained(bundle: ModelBundle, name: str) -> ray.ObjectRef | None:
    """Model ``name``'s pretrained tensors in the object store for its workers (None: a random start)."""
    state = bundle.pretrained_state(name)
    return ray.put(save_safetensors(state)) if state else None


def _history(state: Any, monitor: str) -> dict[str, Any]:
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    return {"epochs": state.epoch, "best_epoch": state.best_epoch, "stopped": state.stopped,
            f"best_{monitor}": best.get(monitor), "history": state.history}


def detector_images(index: DatasetIndex, train_p: list[str], val_p: list[str]) -> dict[str, dict[str, int]]:
    """Radiographs each detector trains and validates on (the annotated ones of its limb kind) and
    those it does not see (no annotation): ``{kind: {"train": n, "val": n, "unannotated": n}}``."""
    out: dict[str, dict[str, int]] = {}
    for kind in ("hand", "foot"):
        records = [r for r in index.images if r.kind == kind]
        out[kind] = {"train": sum(1 for r in index.select(train_p) if r.kind == kind and r.boxes),
                     "val": sum(1 for r in index.select(val_p) if r.kind == kind and r.boxes),
                     "unannotated": sum(1 for r in records if not r.boxes)}
    return out


def train_detectors(bundle: ModelBundle, index: DatasetIndex, train_p: list[str], val_p: list[str],
                    preset: TrainPreset, run: RunSettings) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, arch in preset.detectors.items():
        train = [r for r in index.select(train_p) if r.kind == kind and r.boxes]
        val = [r for r in index.select(val_p) if r.kind == kind and r.boxes]
        if not train or not val:
            raise DatasetError(f"{kind} detector: need annotated {kind} radiographs in both splits "
                               f"(training {len(train)}, validation {len(val)})")
        bare = sum(1 for r in index.images if r.kind == kind and not r.boxes)
        unused = f" (the annotated ones; {bare} {kind} radiograph(s) without annotations are not used)" if bare else ""
        run.log(f"detector-{kind}: decoding {len(train)} training and {len(val)} validation radiographs{unused}")
        datasets = {"train": detector_dataset(index, train, arch.min_size, arch.max_size).materialize(),
                    "val": detector_dataset(index, val, arch.min_size, arch.max_size).materialize()}
        config = {"kind": kind, "detector": arch.model_dump(mode="json"),
                  "training": preset.detector_training.model_dump(mode="json"),
                  "preprocessing": bundle.preprocessing.model_dump(mode="json"), "seed": preset.seed,
                  "pretrained": _pretrained(bundle, kind)}
        best, state = fit_model(detector_worker.train_loop_per_worker, f"detector-{kind}", config, datasets, run)
        bundle.detectors[kind].load_state_dict(best)
        summary[f"detector-{kind}"] = _history(state, "val_mAP")
    return summary


def joint_boxes_mode(requested: str | None, preset_boxes: str, index: DatasetIndex) -> tuple[str, str]:
    """Where the joint models' crops get their boxes (``data.JOINT_BOXES``), and why: ``requested``
    (``--joint-boxes``) when given; else the preset's ``joint_training.boxes``, except that its default,
    ``annotated``, becomes ``auto`` when some labelled radiographs have no annotation (partial
    annotations: annotated boxes where there are some, the trained detectors' elsewhere)."""
    if requested is not None:
        return requested, "--joint-boxes"
    bare = sum(1 for r in index.images if not r.boxes)
    if preset_boxes == "annotated" and bare:
        return "auto", f"annotations are partial: {bare} of {len(index.images)} radiographs have none"
    return preset_boxes, "the preset's joint_training.boxes"


def _box_counts(records: list, sources: dict[str, str | None], crops: ray.data.Dataset) -> dict[str, dict[str, int]]:
    """Radiographs per limb kind whose crops came from ``annotated`` or ``detected`` boxes, those
    ``left_out`` (no annotation, with ``annotated`` boxes) and those that gave ``no_crops`` (the detector
    found no box in them)."""
    cut = set(crops.select_columns(["name"]).unique("name")) if crops.count() else set()
    out: dict[str, dict[str, int]] = {}
    for kind in ("hand", "foot"):
        mine = [r for r in records if r.kind == kind]
        counts = {"annotated": 0, "detected": 0, "left_out": 0, "no_crops": 0}
        for r in mine:
            source = sources[r.name]
            counts[source or "left_out"] += 1
            if source and r.name not in cut:
                counts["no_crops"] += 1
        out[kind] = counts
    return out


def _box_line(split: str, counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for kind, c in counts.items():
        part = f"{c['annotated']} {kind} radiographs from annotations, {c['detected']} from the {kind} detector's boxes"
        if c["no_crops"]:
            part += f" ({c['no_crops']} of them gave no crop)"
        if c["left_out"]:
            part += f", {c['left_out']} without annotations left out"
        parts.append(part)
    return f"joint models, {split} crops: " + "; ".join(parts)


def train_joint_models(bundle: ModelBundle, index: DatasetIndex, train_p: list[str], val_p: list[str],
                       preset: TrainPreset, run: RunSettings, joint_boxes: str | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every joint model; returns the training summaries and the radiographs the crops came
    from (``{"boxes": mode, "why": ..., "train": counts, "val": counts}``, counts of :func:`_box_counts`)."""
    cfg = preset.joint_training
    mode, why = joint_boxes_mode(joint_boxes, cfg.boxes, index)
    margin = bundle.preprocessing.crop_margin
    run.log(f"joint models: cutting crops from {mode} boxes ({why})")
    crops: dict[str, ray.data.Dataset] = {}
    used: dict[str, Any] = {"boxes": mode, "why": why}
    for split, patients in (("train", train_p), ("val", val_p)):
        records = index.select(patients)
        sources = box_sources(records, mode)
        kept = [r for r in records if sources[r.name]]
        crops[split] = crop_dataset(index, kept, bundle.plan, margin, bundle, boxes=mode).materialize()
        used[split] = _box_counts(records, sources, crops[split])
        run.log(_box_line(split, used[split]))
    summary: dict[str, Any] = {}
    for group in bundle.plan.groups:
        datasets = {split: ds.filter(expr=col("group") == group.name).materialize() for split, ds in crops.items()}
        damaged = datasets["train"].select_columns(["damaged"]).to_pandas()["damaged"].astype(bool)
        n_damaged, n_zero = int(damaged.sum()), int((~damaged).sum())
        if n_damaged + n_zero == 0 or datasets["val"].count() == 0:
            raise DatasetError(f"joint model {group.name}: no crops in the training or validation split")
        keep_zero = min(1.0, n_damaged / n_zero) if n_zero and n_damaged else 1.0
        kept = f"zero-damage kept with p={keep_zero:.2f} per epoch" if cfg.balance_zeros else "all kept"
        run.log(f"joint-{group.name}: {n_damaged} damaged and {n_zero} zero-damage training crops ({kept})")
        config = {"group": group.model_dump(mode="json"), "head": preset.joint_head.model_dump(mode="json"),
                  "training": cfg.model_dump(mode="json"),
                  "preprocessing": bundle.preprocessing.model_dump(mode="json"),
                  "keep_zero": keep_zero, "seed": preset.seed, "pretrained": _pretrained(bundle, group.name)}
        best, state = fit_model(joint_worker.train_loop_per_worker, f"joint-{group.name}", config, datasets, run)
        bundle.joint_models[group.name].load_state_dict(best)
        summary[f"joint-{group.name}"] = _history(state, "val_rmse")
    return summary, used


def train(data: str, out: str, preset: TrainPreset, run: RunSettings, *,
          storage_options: dict[str, Any] | None = None, command: str | None = None,
          pretrained: Mapping[str, str] | None = None, joint_boxes: str | None = None) -> dict[str, Any]:
    """Train every model of ``preset`` on the RA2-layout dataset ``data`` and save the bundle to ``out``;
    ``pretrained`` maps a model (``hand``, ``foot``, a group name) to the file of its starting weights;
    ``joint_boxes`` (``auto``, ``annotated``, ``detected``: ``--joint-boxes``) overrides where the joint
    models' crops get their boxes (default: :func:`joint_boxes_mode`).

    Returns the bundle's metrics (also written to its bundle.json): the held-out evaluation
    (SC1-3, baseline, ratios, detector mAP at IoU 0.6), its quality check (``quality.check``) and each
    model's training summary.
    """
    started = time.monotonic()
    # first, so that unusable pretrained weights fail before the dataset is read
    bundle = build_bundle(preset.plan, dict(preset.detectors), joint_head=preset.joint_head, pretrained=pretrained,
                          storage_options=storage_options)
    for name, record in bundle.manifest.provenance.pretrained.items():
        run.log(describe(name, record))
    index = index_dataset(data, storage_options)
    for note in index.notes:
        run.log(f"note: {note}")
    train_p, val_p = split_patients(index.patients(), preset.val_fraction, preset.seed)
    run.log(f"{len(index.images)} radiographs of {len(train_p) + len(val_p)} patients: "
            f"{len(train_p)} for training, {len(val_p)} held out")
    if index.has_visits:
        run.log(f"{len({r.sample for r in index.images})} patient visits: each is a sample; patients are split, "
                "so a patient's visits are all on one side")
    summary = train_detectors(bundle, index, train_p, val_p, preset, run)
    joint_summary, joint_images = train_joint_models(bundle, index, train_p, val_p, preset, run, joint_boxes)
    summary.update(joint_summary)
    train_labels = index.sample_labels(train_p)  # one row per training patient visit
    medians = {c: float(train_labels[c].median()) for c in catalogue.COLUMNS}
    run.log(f"evaluating on the {len(val_p)} held-out patients")
    held_out = evaluate_bundle(bundle, index, patients=val_p, baseline_labels=train_labels, medians=medians)
    thresholds = calibrated_limb_thresholds(held_out)
    bundle = bundle.with_limb_min_confidence(thresholds)
    run.log("radiographs the detectors find no hand or foot in are rejected below a limb confidence of "
            + ", ".join(f"{v:.2f} ({k})" for k, v in thresholds.items()) + " (calibrated on the held-out radiographs)")
    metrics = {"held_out": held_out, "quality": quality.check(held_out), "training": summary,
               "minutes": (time.monotonic() - started) / 60}
    provenance = {"training_data": data_fingerprint(index), "command": command, "data": data,
                  "preset": preset.model_dump(mode="json"), "run_name": run.name,
                  "held_out_patients": val_p, "num_workers": run.num_workers, "use_gpu": run.use_gpu,
                  "pretrained": bundle.manifest.provenance.pretrained,
                  "images": {"detectors": detector_images(index, train_p, val_p), "joint_models": joint_images}}
    if preset.weights_dtype == "float16":
        for module in [*bundle.detectors.values(), *bundle.joint_models.values()]:
            module.half()
    version = bundle.save(out, provenance=provenance, metrics=metrics, label_medians=medians,
                          storage_options=storage_options)
    run.log(f"bundle {version} written to {out}")
    return metrics
