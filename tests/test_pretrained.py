"""Starting weights for a bundle's models (``ra2batch train --pretrained NAME=FILE``): whole-model and
backbone-only files (timm's and torchvision's layouts), safetensors and ``.pth``, local and s3://, the
errors, and the provenance record. Tiny models; nothing is trained and nothing is downloaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.models import mobilenet_v3_large, resnet18

from ra2batch import cli
from ra2batch.models import PLAN, DetectorConfig, JointHeadConfig, JointModel, Provenance, build_bundle, load_bundle
from ra2batch.models.pretrained import PretrainedError

torch.set_num_threads(1)
TINY_PLAN = PLAN.variant(backbones="test_efficientnet", crop_sizes=48)
MOBILENET = DetectorConfig(backbone="mobilenet_v3_fpn_narrow", min_size=96, max_size=128)
RESNET = DetectorConfig(backbone="resnet18_fpn_narrow", min_size=96, max_size=128)
HEAD = JointHeadConfig(attention_widths=(8,), dense_width=8)
MODELS = "hand, foot, erosion_fingers, narrowing_fingers, narrowing_toes, erosion_toes, wrist_erosion, wrist_narrowing"


def tiny(pretrained=None, **kwargs):
    """An untrained bundle of the smallest models: a ResNet-18 hand and a MobileNetV3 foot detector."""
    return build_bundle(TINY_PLAN, {"hand": RESNET, "foot": MOBILENET}, joint_head=HEAD, pretrained=pretrained,
                        **kwargs)


def joint_model(group: str) -> JointModel:
    g = TINY_PLAN.group(group)
    model = JointModel(g.backbone, g.n_outputs, g.crop_shape, HEAD)
    with torch.no_grad():
        model.backbone.conv_stem.weight.fill_(0.125)  # recognisable
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_whole_joint_model_file_starts_its_group_and_is_recorded(tmp_path):
    source = joint_model("erosion_fingers")
    save_file(source.state_dict(), tmp_path / "ef.safetensors")
    bundle = tiny({"erosion_fingers": str(tmp_path / "ef.safetensors")})
    started = bundle.joint_models["erosion_fingers"].state_dict()
    assert all(torch.equal(started[k], v) for k, v in source.state_dict().items())
    assert not torch.equal(bundle.joint_models["narrowing_fingers"].backbone.conv_stem.weight,
                           source.backbone.conv_stem.weight)  # the others start at random
    record = bundle.manifest.provenance.pretrained["erosion_fingers"]
    assert (record.file, record.sha256) == (str(tmp_path / "ef.safetensors"), sha256(tmp_path / "ef.safetensors"))
    assert record.loaded == len(source.state_dict()) and record.dropped == []
    assert set(bundle.pretrained_state("erosion_fingers")) == set(source.state_dict())
    assert bundle.pretrained_state("narrowing_fingers") == {}

    bundle.save(str(tmp_path / "bundle"))
    saved = load_bundle(str(tmp_path / "bundle"), parts=()).manifest.provenance.pretrained
    assert saved == {"erosion_fingers": record}


def test_another_groups_model_starts_a_group_without_its_head_outputs(tmp_path):
    source = joint_model("erosion_fingers")  # 2 outputs; wrist_erosion has 6
    save_file(source.state_dict(), tmp_path / "ef.safetensors")
    bundle = tiny({"wrist_erosion": str(tmp_path / "ef.safetensors")})
    assert torch.equal(bundle.joint_models["wrist_erosion"].backbone.conv_stem.weight, source.backbone.conv_stem.weight)
    record = bundle.manifest.provenance.pretrained["wrist_erosion"]
    assert record.dropped == ["head.classifier.4.bias", "head.classifier.4.weight"]
    assert record.loaded == len(source.state_dict()) - 2


def test_a_timm_imagenet_state_dict_starts_the_backbone_and_its_classifier_is_dropped(tmp_path):
    torch.manual_seed(3)
    imagenet = timm.create_model("test_efficientnet")  # as timm.create_model(name, pretrained=True) would give
    assert imagenet.num_classes == 1000
    torch.save(imagenet.state_dict(), tmp_path / "timm.pth")
    bundle = tiny({"narrowing_toes": str(tmp_path / "timm.pth")})
    backbone = bundle.joint_models["narrowing_toes"].backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in imagenet.state_dict().items() if k in backbone)
    record = bundle.manifest.provenance.pretrained["narrowing_toes"]
    assert record.dropped == ["classifier.bias", "classifier.weight"]
    assert record.loaded == len(backbone) == len(imagenet.state_dict()) - 2


def test_torchvision_imagenet_trunks_start_the_detector_backbones(tmp_path):
    torch.manual_seed(4)
    res, mobile = resnet18(weights=None), mobilenet_v3_large(weights=None)
    # wrapped as in a training checkpoint, without BatchNorm's counters as in torchvision's published files
    trunk = {k: v for k, v in res.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": trunk}, tmp_path / "resnet18.pth")
    save_file(mobile.state_dict(), tmp_path / "mobilenet.safetensors")
    bundle = tiny({"hand": str(tmp_path / "resnet18.pth"), "foot": str(tmp_path / "mobilenet.safetensors")})
    assert torch.equal(bundle.detectors["hand"].backbone.body.layer4[1].conv2.weight, res.layer4[1].conv2.weight)
    assert torch.equal(bundle.detectors["foot"].backbone.body["16"][0].weight, mobile.features[16][0].weight)
    pretrained = bundle.manifest.provenance.pretrained
    assert pretrained["hand"].dropped == ["fc.bias", "fc.weight"]
    assert pretrained["foot"].dropped == sorted(k for k in mobile.state_dict() if k.startswith("classifier."))
    assert pretrained["foot"].loaded == len(mobile.state_dict()) - 4


def test_torchvisions_coco_retinanet_starts_the_paper_detector_but_its_class_and_box_outputs(tmp_path):
    from torchvision.models.detection import retinanet_resnet50_fpn

    coco = retinanet_resnet50_fpn(weights=None, weights_backbone=None)  # as weights="COCO_V1" would give
    save_file(coco.state_dict(), tmp_path / "coco.safetensors")
    bundle = build_bundle(TINY_PLAN, {"hand": DetectorConfig(), "foot": MOBILENET}, joint_head=HEAD,
                          pretrained={"hand": str(tmp_path / "coco.safetensors")})
    record = bundle.manifest.provenance.pretrained["hand"]
    assert record.dropped == ["head.classification_head.cls_logits.bias", "head.classification_head.cls_logits.weight",
                              "head.regression_head.bbox_reg.bias", "head.regression_head.bbox_reg.weight"]
    assert record.loaded == len(coco.state_dict()) - 4
    assert torch.equal(bundle.detectors["hand"].backbone.fpn.extra_blocks.p6.weight, coco.backbone.fpn.extra_blocks.p6.weight)


def test_unusable_weights_are_refused_in_one_line(tmp_path):
    with pytest.raises(PretrainedError, match=r"^nope.safetensors: no such pretrained weights file$"):
        tiny({"hand": "nope.safetensors"})
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(PretrainedError, match="notes.txt: not a safetensors file or a PyTorch state dict"):
        tiny({"hand": str(tmp_path / "notes.txt")})
    with pytest.raises(PretrainedError, match=f"no model named bogus to start from pretrained weights; "
                                              f"the models are {MODELS}$"):
        tiny({"bogus": str(tmp_path / "notes.txt")})


def test_weights_of_another_shape_name_the_tensors_and_the_model(tmp_path):
    state = joint_model("erosion_fingers").backbone.state_dict()
    state["conv_stem.weight"] = torch.zeros(4, 3, 3, 3)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(PretrainedError) as e:
        tiny({"erosion_fingers": str(tmp_path / "bad.safetensors")})
    assert str(e.value) == (f"{tmp_path / 'bad.safetensors'}: the weights do not fit the joint model erosion_fingers "
                            "(test_efficientnet): 1 tensor(s) of another shape: conv_stem.weight 4x3x3x3 "
                            "(model 24x3x3x3)")
    save_file(resnet18(weights=None).state_dict(), tmp_path / "resnet18.safetensors")
    with pytest.raises(PretrainedError) as e:
        tiny({"foot": str(tmp_path / "resnet18.safetensors")})
    message = str(e.value)
    assert "\n" not in message and "do not fit the foot detector (mobilenet_v3_fpn_narrow)" in message
    assert "120 tensor(s) unknown to it: bn1.bias 64, bn1.num_batches_tracked scalar, bn1.running_mean 64, ..." in message
    assert "tensor(s) missing: backbone.body.0.0.weight 16x3x3x3" in message


def test_a_pickle_that_is_not_a_plain_state_dict_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"conv_stem.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(PretrainedError, match="not a safetensors file or a PyTorch state dict"):
        tiny({"erosion_fingers": str(tmp_path / "evil.pth")})
    assert not marker.exists()


def test_weights_are_read_from_s3(tmp_path, s3_bucket):
    save_file(joint_model("erosion_toes").state_dict(), tmp_path / "et.safetensors")
    uri = s3_bucket.upload(tmp_path / "et.safetensors", "weights/et.safetensors")
    bundle = tiny({"erosion_toes": uri}, storage_options=s3_bucket.options)
    assert torch.all(bundle.joint_models["erosion_toes"].backbone.conv_stem.weight == 0.125)
    assert bundle.manifest.provenance.pretrained["erosion_toes"].file == uri
    assert bundle.manifest.provenance.pretrained["erosion_toes"].sha256 == sha256(tmp_path / "et.safetensors")


def test_bundles_without_the_record_still_load():
    assert Provenance.model_validate({"command": "ra2batch train"}).pretrained == {}
    demo = Path(__file__).parents[1] / "ra2batch" / "demo_bundle"
    assert load_bundle(str(demo), parts=()).manifest.provenance.pretrained == {}


@pytest.mark.parametrize("flag, message", [
    ("bogus=w.safetensors", "no model named bogus to start from pretrained weights; the models are hand, foot, "),
    ("hand", "--pretrained takes NAME=FILE, got 'hand'"),
    ("hand=missing.safetensors", "missing.safetensors: no such pretrained weights file"),
])
def test_ra2batch_train_refuses_bad_pretrained_flags_before_starting(tmp_path, capsys, monkeypatch, flag, message):
    monkeypatch.setattr("ra2batch.cluster.connect", lambda *a, **k: pytest.fail("Ray was started"))
    code = cli.main(["train", "--input", str(tmp_path / "cohort"), "--output", str(tmp_path / "bundle"),
                     "--pretrained", flag])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"ra2batch train: error: {message}") and err.count("\n") == 1
