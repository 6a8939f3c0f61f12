"""Ray Train fitting of one model on a tiny synthetic cohort: resumption, two workers, pretrained weights.

Tiny models, tiny images and one or two epochs: these check the plumbing (Ray Data shards, DDP,
checkpoints), not accuracy; tests/test_training_e2e.py runs `ra2batch train` whole and
tests/test_training_demo_bundle.py checks accuracy.
"""

from __future__ import annotations

import math

import pytest
import ray
from ray.data.expressions import col

from ra2batch.models import PLAN, DetectorConfig, JointHeadConfig, JointModel
from ra2batch.synth import generate_cohort
from ra2batch.training import data, dataset, joints, pipeline
from ra2batch.training.presets import DetectorTraining, JointTraining, TrainPreset

pytestmark = pytest.mark.cluster

_DETECTOR = DetectorConfig(backbone="resnet18_fpn_narrow", min_size=128, max_size=192)
TINY = TrainPreset(
    name="tiny",
    plan=PLAN.variant(backbones="test_efficientnet", crop_sizes=48).variant(
        crop_sizes={"narrowing_fingers": 64}, crop_widths={"narrowing_fingers": 32}),
    detectors={"hand": _DETECTOR, "foot": _DETECTOR},
    joint_head=JointHeadConfig(attention_widths=(8,), dense_width=16),
    detector_training=DetectorTraining(epochs=1, batch_size=4),
    joint_training=JointTraining(epochs=1, batch_size=16),
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), patients=6, seed=11, scale=0.3, preview=False)
    return str(out)


@pytest.fixture(scope="module")
def local_ray(ray_local):
    """The session's in-process Ray (conftest), shared with the job and nightly tests."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.data.DataContext.get_current().enable_progress_bars = True


def _group_datasets(cohort: str, group_name: str) -> dict[str, ray.data.Dataset]:
    index = dataset.index_dataset(cohort)
    train_p, val_p = dataset.split_patients(index.patients(), 0.2, seed=0)
    out = {}
    for split, patients in (("train", train_p), ("val", val_p)):
        crops = data.crop_dataset(index, index.select(patients), TINY.plan, 0.1)
        out[split] = crops.filter(expr=col("group") == group_name).materialize()
    return out


def _joint_config(group_name: str, epochs: int, **training) -> dict:
    return {"group": TINY.plan.group(group_name).model_dump(mode="json"), "head": TINY.joint_head.model_dump(),
            "training": JointTraining(epochs=epochs, batch_size=8, **training).model_dump(),
            "preprocessing": {},
            "keep_zero": 0.5, "seed": 0}


def test_an_interrupted_run_resumes_at_the_saved_epoch(cohort, local_ray, tmp_path):
    group = "erosion_fingers"
    datasets = _group_datasets(cohort, group)
    paused = pipeline.RunSettings(name="resume", storage_path=str(tmp_path), stop_after_epochs=1)
    _, first = pipeline.fit_model(joints.train_loop_per_worker, f"joint-{group}", _joint_config(group, 2),
                                  datasets, paused)
    assert first.epoch == 1 and first.stopped is None
    again = pipeline.RunSettings(name="resume", storage_path=str(tmp_path))
    best, second = pipeline.fit_model(joints.train_loop_per_worker, f"joint-{group}", _joint_config(group, 2),
                                      datasets, again)
    assert second.epoch == 2 and second.stopped == "epochs"
    assert [h["epoch"] for h in second.history] == [1.0, 2.0]
    assert second.history[0] == first.history[0]  # epoch 1 was restored, not trained again
    assert best and second.best_epoch in (1, 2)
    # run again finished: its checkpoint is read back and no trainer starts
    logged: list[str] = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline, "TorchTrainer", None)  # a trainer started now would fail
        done = pipeline.RunSettings(name="resume", storage_path=str(tmp_path), log=logged.append)
        best3, third = pipeline.fit_model(joints.train_loop_per_worker, f"joint-{group}", _joint_config(group, 2),
                                          datasets, done)
    assert third == second and best3.keys() == best.keys()
    assert logged == [f"[joint-{group}] finished earlier (epoch 2, epochs): not trained again"]


def test_two_workers_train_with_ddp_on_a_local_cluster(cohort, local_ray, tmp_path):
    group = "narrowing_fingers"
    datasets = _group_datasets(cohort, group)
    run = pipeline.RunSettings(name="ddp", storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1)
    best, state = pipeline.fit_model(joints.train_loop_per_worker, f"joint-{group}",
                                     _joint_config(group, 2, cache_crops=True, balance_zeros=False), datasets, run)
    assert state.epoch == 2 and state.history[0]["workers"] == 2.0
    # the second epoch trains on the crops each worker cached in the first: all of them again
    assert state.history[1]["crops"] == state.history[0]["crops"] == datasets["train"].count()
    assert not math.isnan(state.history[1]["val_rmse"])
    g = TINY.plan.group(group)
    assert set(best) == set(JointModel(g.backbone, g.n_outputs, g.crop_shape, TINY.joint_head).state_dict())


def test_a_joint_model_trains_on_from_its_pretrained_weights(cohort, local_ray, tmp_path):
    """``--pretrained`` reaches the Ray Train workers, which build their model afresh: with the backbone
    frozen, the trained model's backbone parameters are the file's."""
    import torch
    from safetensors.torch import save_file

    from ra2batch.models import build_bundle

    group = "erosion_fingers"
    g = TINY.plan.group(group)
    source = JointModel(g.backbone, g.n_outputs, g.crop_shape, TINY.joint_head)
    with torch.no_grad():
        source.backbone.conv_stem.weight.fill_(0.125)
    save_file(source.state_dict(), tmp_path / "start.safetensors")
    bundle = build_bundle(TINY.plan, dict(TINY.detectors), joint_head=TINY.joint_head,
                          pretrained={group: str(tmp_path / "start.safetensors")})
    config = {**_joint_config(group, 1, unfrozen_fraction=0.0), "pretrained": pipeline._pretrained(bundle, group)}
    run = pipeline.RunSettings(name="pretrained", storage_path=str(tmp_path / "runs"))
    best, state = pipeline.fit_model(joints.train_loop_per_worker, f"joint-{group}", config,
                                     _group_datasets(cohort, group), run)
    assert state.epoch == 1
    backbone = {k: v for k, v in source.named_parameters() if k.startswith("backbone.")}
    assert all(torch.equal(best[k], v) for k, v in backbone.items())
    assert torch.all(best["backbone.conv_stem.weight"] == 0.125)
