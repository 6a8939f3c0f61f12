"""``ra2batch train`` (and ``jobs/train.py``): train a model bundle with Ray Train."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from ..cliutil import FLAGGED, RUNTIME, USAGE, add_address, add_renamed, add_storage_options, error

if TYPE_CHECKING:
    from .presets import TrainPreset


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_renamed(p, "--input", "--data", required=True, metavar="URI",
                help="RA2-layout dataset: images/, training.csv, annotations/*.xml (local or s3://)")
    add_renamed(p, "--output", "--out", required=True, metavar="URI",
                help="where to write the model bundle (local or s3://)")
    p.add_argument("--preset", default="demo", metavar="NAME",
                   help="paper: DeepRA's models for GPU clusters; demo: tiny models for a laptop (default)")
    p.add_argument("--preset-file", default=None, metavar="FILE",
                   help="YAML or JSON settings applied on top of --preset, full or partial (a partial file "
                        "changes only what it names; the built-ins as files: ra2batch/presets/*.yaml)")
    p.add_argument("--name", default=None,
                   help="run name; starting a run with the same name and storage path resumes it "
                        "(default: train-<preset>)")
    p.add_argument("--storage-path", default="./train-runs", metavar="URI",
                   help="Ray Train checkpoints, local or s3:// (default ./train-runs)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per model (DDP)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL); CPU workers use gloo")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per worker (default: the cluster's CPUs shared among the workers)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs of every model (overrides the preset)")
    p.add_argument("--detector-epochs", type=int, default=None, help="maximum epochs of the detectors")
    p.add_argument("--joint-epochs", type=int, default=None, help="maximum epochs of the joint models")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="wall-clock budget for all eight models, shared out like the preset's budgets")
    p.add_argument("--joint-boxes", choices=("auto", "annotated", "detected"), default=None,
                   help="where joint-model training crops get their boxes: auto, the annotations where a "
                        "radiograph has some and the trained detectors' boxes (as the scoring job finds them) "
                        "elsewhere; annotated, the annotations only (radiographs without are left out); "
                        "detected, the detectors' on every radiograph (default: the preset's, annotated, "
                        "which becomes auto when some radiographs have no annotation)")
    p.add_argument("--seed", type=int, default=None, help="seed of the patient split and initialisation")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="pause: end each model's session after this many epochs (rerun to continue)")
    p.add_argument("--pretrained", action="append", default=[], metavar="NAME=FILE",
                   help="start model NAME (hand, foot or a joint group of the preset's plan, e.g. erosion_fingers) "
                        "from the weights in FILE (local or s3://; safetensors or a PyTorch state dict: the whole "
                        "model's, or its backbone's such as timm's or torchvision's ImageNet weights); repeatable")
    add_address(p)
    add_storage_options(p)


def _budgets(preset: TrainPreset, total: float) -> tuple[float, dict[str, float]]:
    """Per-detector minutes and each joint group's minutes, in the preset's proportions (evenly
    without budgets), adding up to ``total`` for the whole plan."""
    det = preset.detector_training.max_minutes
    joint = {g: preset.joint_training.minutes_for(g) for g in preset.plan.names}
    if det is None or None in joint.values():
        return total / 2 / len(preset.detectors), {g: total / 2 / len(joint) for g in joint}
    factor = total / (det * len(preset.detectors) + sum(joint.values()))  # type: ignore[arg-type]
    return det * factor, {g: m * factor for g, m in joint.items()}  # type: ignore[operator]


def configure(args: argparse.Namespace) -> TrainPreset:
    """The chosen preset, changed by ``--preset-file`` and then by the command line's overrides."""
    from .presets import get_preset, load_preset_file, merged

    preset = get_preset(args.preset)
    if args.preset_file is not None:
        preset = load_preset_file(args.preset_file, preset)
    det, joint = dict(), dict()
    if args.epochs is not None:
        det["epochs"] = joint["epochs"] = args.epochs
    if args.detector_epochs is not None:
        det["epochs"] = args.detector_epochs
    if args.joint_epochs is not None:
        joint["epochs"] = args.joint_epochs
    if args.max_train_minutes is not None:
        det["max_minutes"], joint["group_minutes"] = _budgets(preset, args.max_train_minutes)
    if args.joint_boxes in ("annotated", "detected"):  # auto is no preset setting: train(joint_boxes=...)
        joint["boxes"] = args.joint_boxes
    changes = {"seed": args.seed, "detector_training": det, "joint_training": joint}
    return merged(preset, {k: v for k, v in changes.items() if v not in (None, {})})


def pretrained_files(args: argparse.Namespace, preset: TrainPreset) -> dict[str, str]:
    """``--pretrained NAME=FILE`` as ``{name: file}``: names checked against the preset's models and files
    for existence, before Ray starts."""
    from ..models.pretrained import check_exists, parse_pretrained

    files = parse_pretrained(args.pretrained, [*preset.detectors, *preset.plan.names])
    for file in files.values():
        check_exists(file, args.storage_options)
    return files


def format_summary(metrics: dict) -> str:
    h = metrics["held_out"]
    lines = [f"held-out patients: {h['n_patients']} ({h['n_images']} radiographs)",
             f"{'':10}{'SC1':>8}{'SC2':>8}{'SC3':>8}"]
    for label, key in (("model", "{}"), ("baseline", "baseline_{}"), ("ratio", "ratio_{}")):
        lines.append(f"{label:10}" + "".join(f"{h[key.format(k)]:>8.3f}" for k in ("sc1", "sc2", "sc3")))
    lines.append(" ".join(f"{k} {h[k]:.3f}" for k in ("hand_mAP", "foot_mAP") if k in h) + " (IoU 0.6)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..validation import one_line

    try:
        preset = configure(args)
        pretrained = pretrained_files(args, preset)
    except ValidationError as e:
        return error("train", f"invalid training settings: {one_line(e)}", USAGE)
    except ValueError as e:
        return error("train", e, USAGE)
    import ray.data

    from ..cluster import ClusterError, connect
    from ..models.pretrained import PretrainedError
    from ..scorer import ScoringError
    from .dataset import DatasetError
    from .pipeline import RunSettings, TrainingError, train

    try:
        connect(args.address)
    except ClusterError as e:
        return error("train", e, RUNTIME)
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = RunSettings(name=args.name or f"train-{preset.name}", storage_path=args.storage_path,
                      num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                      storage_options=args.storage_options, stop_after_epochs=args.stop_after_epochs,
                      log=lambda m: print(m, flush=True))
    try:
        metrics = train(args.input, args.output, preset, run, storage_options=args.storage_options,
                        command=shlex.join(sys.argv), pretrained=pretrained, joint_boxes=args.joint_boxes)
    except (DatasetError, ScoringError, PretrainedError) as e:
        return error("train", e, USAGE)
    except TrainingError as e:
        return error("train", e, RUNTIME)
    print(format_summary(metrics))
    return verdict(metrics["quality"], args.output)


def verdict(quality: dict, out: str) -> int:
    """0 for a bundle that passed its quality check; else ``FLAGGED``, each figure that missed its floor on stderr."""
    if quality["ok"]:
        return 0
    print(f"ra2batch train: warning: the bundle written to {out} failed its quality check (flagged in its "
          f"bundle.json, metrics.quality; exit code {FLAGGED}):", file=sys.stderr)
    for problem in quality["problems"]:
        print(f"  {problem}", file=sys.stderr)
    return FLAGGED
