"""`ra2batch train` end to end, as on a cluster: an s3:// dataset with half its radiographs annotated and
visits, s3:// checkpoints, a run paused and resumed, a preset file and pretrained weights, and the
bundle it writes to s3:// scored by `ra2batch score`, whose `ra2batch evaluate` figures equal the
held-out figures in the bundle's bundle.json.

Tiny models at a detector size of 128 px, 6 patients, one or two epochs: this checks the plumbing,
not accuracy (tests/test_training_demo_bundle.py checks accuracy).
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import ray
import yaml
from safetensors.torch import save_file

from ra2batch import catalogue, cli
from ra2batch.cliutil import FLAGGED
from ra2batch.models import PLAN, JointHeadConfig, JointModel, load_bundle
from ra2batch.output import open_output
from ra2batch.synth import generate_cohort
from ra2batch.training import quality
from ra2batch.training.evaluation import LIMB_CALIBRATION

pytestmark = pytest.mark.cluster

HEAD = JointHeadConfig(attention_widths=(8,), dense_width=16)
PLAN_TINY = PLAN.variant(backbones="test_efficientnet", crop_sizes=48).variant(
    crop_sizes={"narrowing_fingers": 64}, crop_widths={"narrowing_fingers": 32})
DETECTOR = {"backbone": "resnet18_fpn_narrow", "min_size": 128, "max_size": 192}
#: A partial preset file over `demo`: tiny models, 2 detector epochs (the run is paused after the
#: first) and 1 joint epoch, no time budgets.
PRESET = {
    "name": "tiny-e2e",
    "plan": PLAN_TINY.model_dump(mode="json"),
    "detectors": {"hand": DETECTOR, "foot": DETECTOR},
    "joint_head": HEAD.model_dump(mode="json"),
    "detector_training": {"epochs": 2, "batch_size": 4, "max_minutes": None},
    "joint_training": {"epochs": 1, "batch_size": 16, "max_minutes": None, "group_minutes": {},
                       "cache_crops": False},
    "weights_dtype": "float32",
}


@pytest.fixture(scope="module")
def local_ray(ray_local):
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.data.DataContext.get_current().enable_progress_bars = True


def _cohort(root):
    """6 phantom patients; the right limbs' annotations deleted (half the radiographs annotated); the
    even patients' radiographs named with visit V1, labelled by a visit column in training.csv."""
    generate_cohort(str(root), patients=6, seed=11, scale=0.3, preview=False)
    for xml in (root / "annotations").glob("*-R?.xml"):
        xml.unlink()
    labels = pd.read_csv(root / "training.csv", dtype={"Patient_ID": str})
    with_visit = set(labels["Patient_ID"].iloc[::2])
    for folder in ("images", "annotations"):
        for f in (root / folder).iterdir():
            pid, limb = f.stem.rsplit("-", 1)
            if pid in with_visit:
                f.rename(f.with_name(f"{pid}-V1-{limb}{f.suffix}"))
    labels.insert(1, "visit", ["V1" if p in with_visit else "" for p in labels["Patient_ID"]])
    labels.to_csv(root / "training.csv", index=False)
    return with_visit


@pytest.mark.slow
def test_ra2batch_train_on_s3_with_partial_annotations_pauses_resumes_and_scores(s3_bucket, local_ray, tmp_path,
                                                                                  capsys):
    with_visit = _cohort(tmp_path / "cohort")
    data = s3_bucket.upload(tmp_path / "cohort", "cohort")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(PRESET))
    group = PLAN_TINY.group("wrist_erosion")
    model = JointModel(group.backbone, group.n_outputs, group.crop_shape, HEAD)
    save_file(model.state_dict(), tmp_path / "we.safetensors")
    weights = s3_bucket.upload(tmp_path / "we.safetensors", "weights/we.safetensors")
    bundle_uri, storage = f"{s3_bucket.uri}/bundle", f"{s3_bucket.uri}/runs"
    train = ["train", "--input", data, "--output", bundle_uri, "--storage-path", storage, "--name", "e2e",
             "--preset-file", str(tmp_path / "tiny.yaml"), "--pretrained", f"wrist_erosion={weights}",
             "--storage-options", json.dumps(s3_bucket.options)]

    # paused: each model's session ends after one epoch; the detectors have a second one to go
    assert cli.main([*train, "--stop-after-epochs", "1"]) in (0, FLAGGED)  # tiny models miss the quality floors
    log = capsys.readouterr().out
    assert "24 radiographs of 6 patients: 5 for training, 1 held out" in log
    assert "patient visits: each is a sample" in log
    assert "detector-hand: decoding 5 training and 1 validation radiographs (the annotated ones; 6 hand" in log
    assert ("joint models: cutting crops from auto boxes (annotations are partial: 12 of 24 radiographs have none)"
            in log)
    assert "joint models, train crops: 5 hand radiographs from annotations, 5 from the hand detector's boxes" in log
    paused = load_bundle(bundle_uri, storage_options=s3_bucket.options, parts=())
    assert paused.manifest.metrics["training"]["detector-hand"]["epochs"] == 1
    assert paused.manifest.metrics["training"]["detector-hand"]["stopped"] is None

    # resumed: the detectors continue at epoch 2, the finished joint models are not trained again
    assert cli.main(train) in (0, FLAGGED)
    capsys.readouterr()
    bundle = load_bundle(bundle_uri, storage_options=s3_bucket.options)
    manifest = bundle.manifest
    training = manifest.metrics["training"]
    for kind in ("hand", "foot"):
        first, second = paused.manifest.metrics["training"][f"detector-{kind}"], training[f"detector-{kind}"]
        assert second["epochs"] == 2 and second["stopped"] == "epochs"
        assert second["history"][0] == first["history"][0]  # epoch 1 restored from the s3:// checkpoint
    for name in PLAN_TINY.names:
        assert training[f"joint-{name}"]["epochs"] == 1 and training[f"joint-{name}"]["stopped"] == "epochs"
    provenance = manifest.provenance.model_dump()
    assert provenance["preset"]["name"] == "tiny-e2e" and manifest.plan == PLAN_TINY
    assert set(provenance["pretrained"]) == {"wrist_erosion"}
    # detectors saw the annotated radiographs only; joint models every labelled one, by where their boxes came from
    images = provenance["images"]
    assert images["detectors"] == {k: {"train": 5, "val": 1, "unannotated": 6} for k in ("hand", "foot")}
    joint = images["joint_models"]
    assert joint["boxes"] == "auto"
    for split, n in (("train", 5), ("val", 1)):
        for kind in ("hand", "foot"):
            counts = joint[split][kind]
            assert counts["annotated"] == counts["detected"] == n and counts["left_out"] == 0, (split, kind, counts)
    held_out = provenance["held_out_patients"]
    assert manifest.metrics["held_out"]["n_patients"] == 1 and manifest.metrics["held_out"]["n_images"] == 4

    # `ra2batch score` loads the bundle from s3:// and scores the held-out patient's radiographs
    archive = tmp_path / "archive"
    archive.mkdir()
    for image in (tmp_path / "cohort" / "images").iterdir():
        if image.name.split("-")[0] in held_out:
            shutil.copy(image, archive / image.name)
    out = f"{s3_bucket.uri}/scored"
    assert cli.main(["score", "--input", s3_bucket.upload(archive, "archive"), "--output", out, "--models", bundle_uri,
                     "--storage-options", json.dumps(s3_bucket.options)]) in (0, FLAGGED)
    capsys.readouterr()
    images_table = open_output(out, s3_bucket.options).to_pandas("images")
    assert len(images_table) == 4 and set(images_table["Patient_ID"]) == set(held_out)
    visit = "V1" if held_out[0] in with_visit else None
    assert [None if pd.isna(v) else v for v in images_table["visit"]] == [visit] * 4
    assert (images_table["status"] != "error").all()

    # the held-out figures in bundle.json are the job's: `ra2batch evaluate` on the scored output says the same
    held = manifest.metrics["held_out"]
    for key in ("sc1", "sc2", "sc3", "baseline_sc1", "ratio_sc3", "hand_mAP", "foot_mAP", "hand_AP_wrist"):
        assert isinstance(held[key], float) and not math.isnan(held[key]), key
    assert manifest.metrics["quality"] == quality.check(held)
    assert set(bundle.label_medians) == set(catalogue.COLUMNS)
    for kind, detector in manifest.architecture.detectors.items():  # calibrated on the held-out radiographs
        assert detector.limb_min_confidence == round(LIMB_CALIBRATION * held["limb_confidence"][kind]["min"], 3)
    labels = pd.read_csv(tmp_path / "cohort" / "training.csv", dtype=str, keep_default_na=False)
    labels[labels["Patient_ID"].isin(held_out)].to_csv(tmp_path / "truth.csv", index=False)
    assert cli.main(["evaluate", "--predictions", out, "--truth", str(tmp_path / "truth.csv"), "--json",
                     "--storage-options", json.dumps(s3_bucket.options)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n_patients"] == 1
    for key in ("sc1", "sc2", "sc3"):
        # equal but for float rounding: batch mates change a convolution's summation order (~1e-8)
        assert evaluated[key] == pytest.approx(held[key], rel=1e-6), key
