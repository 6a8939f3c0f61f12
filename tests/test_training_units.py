"""Fast checks of the training building blocks (no Ray, no model training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ra2batch.training import joints
from ra2batch.training.augment import hflip_image_boxes, rotate_image_boxes
from ra2batch.training.dataset import DatasetError, parse_name, parse_voc, split_patients
from ra2batch.training.metrics import average_precision, iou
from ra2batch.training.state import Plateau, load_checkpoint, save_checkpoint, TrainState, cpu_state

VOC = b"""<annotation><filename>P1-LH.jpg</filename><size><width>100</width><height>80</height></size>
<object><name>wrist</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>70</ymax></bndbox></object>
<object><name>fin_1</name><bndbox><xmin>60</xmin><ymin>5</ymin><xmax>70</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_are_read_and_checked_against_the_limb_kind():
    boxes = parse_voc(VOC, "P1-LH.xml", "hand")
    assert [(b.label, b.box) for b in boxes] == [("wrist", (10, 20, 50, 70)), ("fin_1", (60, 5, 70, 40))]
    with pytest.raises(DatasetError, match="'wrist' is not a foot class"):
        parse_voc(VOC, "P1-LF.xml", "foot")
    with pytest.raises(DatasetError, match="empty box"):
        parse_voc(VOC.replace(b"<xmax>50", b"<xmax>5"), "x.xml", "hand")


def test_image_names_give_patient_visit_and_limb():
    # the scoring job's rule (tests/test_training_dataset.py has more)
    assert parse_name("UAB-001-V1-rf.jpg") == ("UAB-001", "V1", "RF")
    with pytest.raises(DatasetError, match="gives no patient and limb"):
        parse_name("UAB001_LH.jpg")


def test_patient_split_is_seeded_disjoint_and_about_80_20():
    patients = [f"P{i:03d}" for i in range(50)]
    train, val = split_patients(patients, 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and set(train) | set(val) == set(patients)
    assert split_patients(patients, 0.2, seed=3) == (train, val)
    assert split_patients(patients, 0.2, seed=4) != (train, val)
    assert split_patients(["A", "B"], 0.2, seed=0)[1] != []


def test_average_precision_at_iou_06():
    truth = [[("fin_1", (0, 0, 10, 10)), ("wrist", (20, 20, 40, 40))]]
    perfect = [[("fin_1", (0, 0, 10, 10), 0.9), ("wrist", (20, 20, 40, 40), 0.8)]]
    ap = average_precision(perfect, truth, ("fin_1", "wrist", "fin_2"))
    assert ap["fin_1"] == ap["wrist"] == ap["mAP"] == 1.0 and math.isnan(ap["fin_2"])
    # IoU 0.5 misses at threshold 0.6; a confident false positive halves precision at full recall.
    loose = [[("fin_1", (0, 0, 10, 20), 0.9), ("wrist", (0, 0, 5, 5), 0.95), ("wrist", (20, 20, 40, 40), 0.5)]]
    assert iou((0, 0, 10, 20), (0, 0, 10, 10)) == pytest.approx(0.5)
    ap = average_precision(loose, truth, ("fin_1", "wrist"))
    assert ap["fin_1"] == 0.0 and ap["wrist"] == pytest.approx(0.5) and ap["mAP"] == pytest.approx(0.25)


def test_plateau_lowers_lr_then_stops_like_the_paper():
    p = Plateau("max", lr_factor=0.1, lr_patience=4, stop_patience=5)
    assert p.step(0.5) == (True, False, False)
    events = [p.step(0.4) for _ in range(5)]
    assert [e[1] for e in events] == [False, False, False, True, False]  # lower after 4 bad epochs
    assert [e[2] for e in events] == [False] * 4 + [True]  # stop after 5
    q = Plateau("min", 0.2, 2)
    assert q.step(float("nan"))[0] is False and q.step(1.0)[0] is True and q.step(0.5)[0] is True


def test_checkpoint_round_trip_restores_model_optimizer_and_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    opt.param_groups[0]["lr"] = 2e-4
    state = TrainState(epoch=3, plateau={"mode": "max"}, best_epoch=2, history=[{"loss": 1.0}])
    save_checkpoint(str(tmp_path), model, cpu_state(model), opt, state)
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    restored, best = load_checkpoint(str(tmp_path), model2, opt2)
    assert restored == state and torch.equal(model2.weight, model.weight) and torch.equal(best["bias"], model.bias)
    assert opt2.param_groups[0]["lr"] == 2e-4
    assert torch.equal(opt2.state[model2.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])


def test_flip_and_rotation_move_boxes_with_the_image():
    image = torch.zeros(100, 200)
    image[20:40, 30:60] = 1.0
    box = torch.tensor([[30.0, 20.0, 60.0, 40.0]])
    flipped, fbox = hflip_image_boxes(image, box)
    assert fbox.tolist() == [[140.0, 20.0, 170.0, 40.0]] and flipped[30, 140:170].min() == 1.0
    for degrees in (-8.0, 8.0):
        rotated, rbox = rotate_image_boxes(image, box, degrees)
        ys, xs = torch.nonzero(rotated > 0.5, as_tuple=True)
        x0, y0, x1, y1 = rbox[0].tolist()
        # the bright square's centre stays the box's centre; the box stays tight (ellipse rule)
        assert abs((x0 + x1) / 2 - (xs.min() + xs.max()).item() / 2) < 1.5
        assert abs((y0 + y1) / 2 - (ys.min() + ys.max()).item() / 2) < 1.5
        assert (x1 - x0) < (xs.max() - xs.min()).item() + 2 and (y1 - y0) < (ys.max() - ys.min()).item() + 2
    assert np.isclose(float(rotated.sum()), float(image.sum()), rtol=0.05)


def test_crop_jitter_moves_and_zooms_within_its_bounds():
    from ra2batch.training.augment import jitter_crops

    g = torch.Generator().manual_seed(0)
    crops = torch.zeros(64, 32, 32)
    crops[:, 12:20, 12:20] = 1.0  # a bright square in the middle
    assert torch.equal(jitter_crops(crops, max_shift=0.0, max_zoom=0.0, generator=g), crops)
    out = jitter_crops(crops, max_shift=0.1, max_zoom=0.1, generator=g)
    assert out.shape == crops.shape and 0 <= out.min() and out.max() <= 1
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = out.sum(dim=(1, 2))
    cy, cx = (out * ys).sum(dim=(1, 2)) / mass, (out * xs).sum(dim=(1, 2)) / mass
    # the square's centre moves by at most 10% of the side (3.2 px; its zoom is about the crop centre)
    # and the crops do not all move alike
    assert (cy - 15.5).abs().max() <= 3.2 * 1.1 + 0.5 and (cx - 15.5).abs().max() <= 3.2 * 1.1 + 0.5
    assert cx.std() > 0.5 and cy.std() > 0.5
    # a zoom of z in [0.9, 1.1] scales the square's area by 1 / z^2, within [0.83, 1.23]
    assert ((mass / 64) > 0.8).all() and ((mass / 64) < 1.25).all()


class _Shard:
    """Stands in for a Ray Train dataset shard: counts the passes over it."""

    def __init__(self, n: int):
        self.n, self.passes = n, 0

    def iter_batches(self, batch_size: int, batch_format: str):
        self.passes += 1
        for i in range(0, self.n, batch_size):
            ids = np.arange(i, min(i + batch_size, self.n))
            crops = np.empty(len(ids), dtype=object)  # ragged-typed column, as Ray Data can deliver it
            crops[:] = [np.full((4, 2), k, np.float16) for k in ids]
            yield {"crop": crops, "targets": ids[:, None].astype(np.float32), "damaged": ids % 2 == 0}


def test_cached_shard_reads_once_and_reshuffles_every_row_each_epoch():
    shard = _Shard(10)
    cached = joints.CachedShard(shard)
    first = list(cached.iter_batches(4, seed=1))
    second = list(cached.iter_batches(4, seed=2))
    assert shard.passes == 1 and [len(b["crop"]) for b in first] == [4, 4, 2]
    order = [np.concatenate([b["targets"][:, 0] for b in batches]) for batches in (first, second)]
    assert sorted(order[0]) == sorted(order[1]) == list(range(10)) and list(order[0]) != list(order[1])
    for b in first:  # the columns of a row stay together
        assert b["crop"].shape[1:] == (4, 2) and np.array_equal(b["crop"][:, 0, 0], b["targets"][:, 0])
        assert np.array_equal(b["damaged"], b["targets"][:, 0] % 2 == 0)
    assert [b["targets"][0, 0] for b in cached.iter_batches(4)] == [0, 4, 8]  # no seed: stored order


def test_max_train_minutes_is_shared_out_in_the_presets_proportions():
    import argparse

    from ra2batch.training.cli import add_arguments, configure
    from ra2batch.training.presets import DEMO

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    preset = configure(parser.parse_args(["--data", "d", "--out", "o", "--max-train-minutes", "38"]))
    det, jt = preset.detector_training.max_minutes, preset.joint_training
    joint = {g: jt.minutes_for(g) for g in preset.plan.names}
    assert 2 * det + sum(joint.values()) == pytest.approx(38.0)
    base = DEMO.joint_training
    slow, fast = "erosion_fingers", "wrist_erosion"  # the demo preset gives erosion more time
    assert base.minutes_for(slow) > base.minutes_for(fast)
    assert joint[slow] / joint[fast] == pytest.approx(base.minutes_for(slow) / base.minutes_for(fast))
    assert det / joint[fast] == pytest.approx(DEMO.detector_training.max_minutes / base.minutes_for(fast))


def test_invalid_training_settings_are_one_line_naming_each_setting(capsys):
    from ra2batch.cli import main

    assert main(["train", "--data", "d", "--out", "o", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ra2batch train: error: invalid training settings: ")
    assert "detector_training.epochs: Input should be greater than or equal to 1" in err
    assert "joint_training.epochs: Input should be greater than or equal to 1" in err


def test_group_budgets_must_name_groups_of_the_plan():
    from pydantic import ValidationError

    from ra2batch.training.presets import DEMO

    bad = {**DEMO.model_dump(), "joint_training": {**DEMO.joint_training.model_dump(), "group_minutes": {"thumbs": 1.0}}}
    with pytest.raises(ValidationError, match="group_minutes names no joint group of the plan: thumbs"):
        type(DEMO).model_validate(bad)



def _configure(*flags: str):
    import argparse

    from ra2batch.training.cli import add_arguments, configure

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return configure(parser.parse_args(["--data", "d", "--out", "o", *flags]))


def test_shipped_preset_files_equal_the_built_ins():
    import tomllib
    from pathlib import Path

    from ra2batch.training.presets import PRESET_DIR, PRESETS, load_preset_file

    for name, preset in PRESETS.items():
        for base in PRESETS.values():  # a full file gives its preset whatever --preset it is applied to
            assert load_preset_file(PRESET_DIR / f"{name}.yaml", base) == preset, (name, base.name)
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "presets/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["ra2batch"]  # in a pip install


def test_a_partial_preset_file_changes_only_what_it_names(tmp_path):
    from ra2batch.training.presets import DEMO, PAPER

    (tmp_path / "p.yaml").write_text("joint_training: {epochs: 3}\n")
    for flags, base in (((), DEMO), (("--preset", "paper"), PAPER)):
        want = base.model_copy(update={"joint_training": base.joint_training.model_copy(update={"epochs": 3})})
        assert _configure(*flags, "--preset-file", str(tmp_path / "p.yaml")) == want
    (tmp_path / "p.json").write_text('{"detectors": {"foot": {"min_size": 200}}, "seed": 5, '
                                     '"joint_training": {"group_minutes": {"erosion_toes": 3.0}}}')
    preset = _configure("--preset-file", str(tmp_path / "p.json"), "--seed", "6")
    assert preset.detectors["foot"].min_size == 200 and preset.detectors["hand"] == DEMO.detectors["hand"]
    assert preset.detectors["foot"].backbone == DEMO.detectors["foot"].backbone
    assert preset.joint_training.group_minutes == {"erosion_fingers": 4.0, "erosion_toes": 3.0}
    assert preset.seed == 6  # the command line wins over the file
    (tmp_path / "clear.yaml").write_text("joint_training: {group_minutes: {}}\n")  # an empty mapping replaces
    assert _configure("--preset-file", str(tmp_path / "clear.yaml")).joint_training.group_minutes == {}


@pytest.mark.parametrize("name, text, fragment", [
    ("unknown.yaml", "joint_training: {epoch: 3}\n", "joint_training.epoch: Extra inputs are not permitted"),
    ("top.yaml", "epochs: 3\n", "epochs: Extra inputs are not permitted"),
    ("bad.yaml", "detector_training: {lr: -1}\n", "detector_training.lr: Input should be greater than 0"),
    ("syntax.yaml", "joint_training: {epochs: [3}\n", "not valid YAML at line 1"),
    ("evil.yaml", "!!python/object/apply:os.system ['echo pwned']\n", "could not determine a constructor"),
    ("list.yaml", "- 1\n", "expected a mapping of settings, got list"),
    ("bad.json", '{"seed": 1,}', "not valid JSON"),
    ("preset.txt", "seed: 1\n", "expected a .json, .yaml or .yml file"),
])
def test_bad_preset_files_are_one_line_and_exit_2_before_ray_starts(tmp_path, capsys, monkeypatch, name, text,
                                                                    fragment):
    import ra2batch.cluster
    from ra2batch.cli import main

    monkeypatch.setattr(ra2batch.cluster, "connect", lambda address: pytest.fail("Ray started"))
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--data", "d", "--out", "o", "--preset-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err
    assert err.startswith(f"ra2batch train: error: preset file {path}: "), err


def test_epoch_lines_are_printed_once_in_a_ray_train_worker(capsys, caplog, monkeypatch):
    import builtins
    import logging

    from ray.train.v2._internal.logging.patch_print import redirected_print

    from ra2batch.training.loop import say

    # Ray Train's worker print: the line to a wrapped stdout and to the root logger, whose console handler
    # prints it again (capsys's stdout is wrapped too)
    monkeypatch.setattr(builtins, "print", redirected_print)
    caplog.set_level(logging.INFO)
    print("[joint-x] epoch 1/2")
    assert capsys.readouterr().out == "[joint-x] epoch 1/2\n" and [r.message for r in caplog.records] == [
        "[joint-x] epoch 1/2"]
    caplog.clear()
    say("[joint-x] epoch 2/2")
    assert capsys.readouterr().out == "[joint-x] epoch 2/2\n" and not caplog.records
