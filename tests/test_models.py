"""Joint models, the locally connected layer, detectors from the registry, and crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ra2batch.models import crops
from ra2batch.models.detectors import create_detector, list_detectors
from ra2batch.models.joint_model import AttentionHead, JointHeadConfig, JointModel, LocallyConnected1x1
from ra2batch.models.plan import PLAN

torch.set_num_threads(1)
TINY_HEAD = JointHeadConfig(attention_widths=(32, 16), dense_width=32)


@pytest.fixture(scope="module")
def joint_model() -> JointModel:
    torch.manual_seed(0)
    return JointModel("test_efficientnet", n_outputs=2, crop_size=96, head=TINY_HEAD).eval()


def test_joint_model_gives_scores_and_attention_at_the_feature_map_size(joint_model):
    crops_ = torch.rand(3, 96, 96)
    with torch.no_grad():
        scores, attention = joint_model(crops_)
        features = joint_model.backbone.forward_features(torch.zeros(1, 3, 96, 96))
    assert scores.shape == (3, 2)
    assert attention.shape == (3, *features.shape[-2:]) == (3, *joint_model.feature_size)
    assert 0 <= attention.min() and attention.max() <= 1
    with torch.no_grad():
        same, _ = joint_model(crops_[:, None])  # [N, 1, S, S] is accepted too
    assert torch.equal(scores, same)


def test_joint_model_scores_are_never_negative(joint_model):
    with torch.no_grad():
        joint_model.head.classifier[-1].bias.fill_(-50.0)
        scores, _ = joint_model(torch.rand(2, 96, 96))
        joint_model.head.classifier[-1].bias.zero_()
    assert (scores >= 0).all()


def test_joint_model_rejects_crops_of_the_wrong_size(joint_model):
    with pytest.raises(ValueError, match=r"expected grey crops \[N, 96, 96\], got \(2, 64, 64\)"):
        joint_model(torch.rand(2, 64, 64))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm backbone 'efficientnet_b99'"):
        JointModel("efficientnet_b99", 1, 64)


def test_pooling_is_the_attention_weighted_mean_of_the_normalised_features():
    torch.manual_seed(0)
    head = AttentionHead(8, 1, (3, 3), TINY_HEAD).eval()
    feats = torch.randn(2, 8, 3, 3)
    seen = {}
    head.classifier.register_forward_hook(lambda m, inp, out: seen.update(pooled=inp[0]))
    with torch.no_grad():
        _, att = head(feats)
        x = head.norm(feats)
    a = att[:, None]
    want = (x * a).sum(dim=(2, 3)) / a.sum(dim=(2, 3))
    assert torch.allclose(seen["pooled"], want, atol=1e-6)


def test_locally_connected_layer_has_its_own_weight_at_every_position():
    torch.manual_seed(0)
    layer = LocallyConnected1x1(4, 1, (3, 5))
    assert layer.weight.shape == (3, 5, 4, 1) and layer.bias.shape == (3, 5, 1)
    x = torch.randn(2, 4, 3, 5)
    with torch.no_grad():
        before = layer(x)
        layer.weight[1, 2] += 1.0
        after = layer(x)
    changed = (after != before).any(dim=(0, 1))
    assert changed[1, 2] and changed.sum() == 1
    # a convolution maps a spatially constant input to a constant output; this layer does not
    with torch.no_grad():
        flat = layer(torch.ones(1, 4, 3, 5))
    assert flat.std() > 0
    with pytest.raises(ValueError, match="built for 3x5 features"):
        layer(torch.randn(1, 4, 4, 4))


@pytest.mark.parametrize("name", list_detectors())
def test_every_registered_detector_trains_and_detects_on_grey_images(name):
    torch.manual_seed(0)
    model = create_detector(name, num_classes=6, min_size=64, max_size=96)
    images = [torch.rand(1, 120, 90), torch.rand(1, 100, 140)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[40.0, 10.0, 120.0, 60.0]]), "labels": torch.tensor([6])}]
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        grey = model(images)
        rgb = model([im.expand(3, -1, -1) for im in images])
    for out, im, twin in zip(grey, images, rgb):
        assert torch.equal(out["boxes"], twin["boxes"])  # grey is repeated into R, G and B
        b = out["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= im.shape[2]).all() and (b[:, 3] <= im.shape[1]).all()


def test_unknown_detector_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown detector backbone 'yolo'; registered: mobilenet_v3_fpn_narrow"):
        create_detector("yolo", 6)


# -- crops ------------------------------------------------------------------------------------------


def _bar_image() -> np.ndarray:
    """A 100x120 dark image with a bright vertical bar x 40..50, y 10..90."""
    img = np.zeros((100, 120), np.float32)
    img[10:90, 40:50] = 1.0
    return img


def test_cut_keeps_the_aspect_by_padding_the_box_to_a_square():
    c = crops.cut(_bar_image(), (40, 10, 50, 90), 64, margin=0.0)
    assert c.shape == (64, 64) and c.dtype == np.float32
    # the 80-pixel square holds the 10-pixel bar in its middle eighth: 8 of 64 columns, full height
    assert c[32].sum() == pytest.approx(8.0, abs=0.6)
    assert c[:, 32].min() > 0.99 and c[:, :20].max() == 0.0


def test_tall_cut_spends_its_width_on_the_box_and_matches_the_square_cut_when_square():
    image = _bar_image()
    tall = crops.cut(image, (40, 10, 50, 90), (64, 32), margin=0.0)
    assert tall.shape == (64, 32)
    # the region is 80 high and 40 wide: the 10-pixel bar fills a quarter of the 32 columns
    assert tall[32].sum() == pytest.approx(8.0, abs=0.6)
    assert tall[:, 16].min() > 0.99 and tall[:, :10].max() == 0.0
    assert np.array_equal(crops.cut(image, (40, 10, 50, 90), (64, 64)), crops.cut(image, (40, 10, 50, 90), 64))
    # a box wider than the crop's aspect grows in height instead: region 40 wide, 80 high
    assert crops.crop_region((0, 0, 40, 20), 0.0, 2.0) == (0, -30, 40, 80)


def test_joint_model_scores_tall_crops():
    model = JointModel("test_efficientnet", n_outputs=2, crop_size=(96, 32), head=TINY_HEAD).eval()
    with torch.no_grad():
        scores, attention = model(torch.rand(3, 96, 32))
    assert scores.shape == (3, 2) and attention.shape == (3, *model.feature_size)
    assert model.feature_size == (3, 1)
    with pytest.raises(ValueError, match=r"expected grey crops \[N, 96, 32\]"):
        model(torch.rand(3, 32, 96))


def test_cut_margin_widens_the_region():
    tight = crops.cut(_bar_image(), (40, 10, 50, 90), 64, margin=0.0)
    loose = crops.cut(_bar_image(), (40, 10, 50, 90), 64, margin=0.25)
    assert tight[0].max() > 0.99 and loose[0].max() == 0.0  # the bar's ends now sit inside the crop
    assert loose[32].sum() < tight[32].sum()


def test_cut_mirror_flips_left_right():
    img = np.random.default_rng(0).random((80, 60), dtype=np.float32)
    plain = crops.cut(img, (5, 10, 40, 70), 32)
    assert np.array_equal(crops.cut(img, (5, 10, 40, 70), 32, mirror=True), plain[:, ::-1])


def test_cut_pads_outside_the_image_with_background():
    img = np.ones((50, 50), np.float32)
    c = crops.cut(img, (30, 30, 60, 60), 32, margin=0.0)  # lower right quarter leaves the image
    assert c[:5, :5].min() > 0.99 and c[-5:, -5:].max() == 0.0


def test_cut_rejects_an_empty_box_and_a_colour_image():
    with pytest.raises(ValueError, match="is empty"):
        crops.cut(np.zeros((10, 10), np.float32), (5, 5, 5, 8), 16)
    with pytest.raises(ValueError, match="grey H x W"):
        crops.cut(np.zeros((10, 10, 3), np.float32), (1, 1, 5, 8), 16)


def test_joint_crops_yields_one_crop_per_group_each_class_feeds_and_mirrors_right_limbs():
    plan = PLAN.variant(crop_sizes={"wrist_erosion": 48, "wrist_narrowing": 48}).variant(
        crop_sizes={"erosion_fingers": 32, "narrowing_toes": 32})
    img = np.random.default_rng(1).random((100, 80), dtype=np.float32)
    boxes = {"fin_ip": (5, 5, 20, 60), "wrist": (20, 60, 70, 95)}
    left = list(crops.joint_crops(img, boxes, "LH", plan))
    assert [(c.group, c.crop_class, c.crop.shape) for c in left] == [
        ("erosion_fingers", "fin_ip", (32, 32)), ("narrowing_toes", "fin_ip", (32, 32)),
        ("wrist_erosion", "wrist", (48, 48)), ("wrist_narrowing", "wrist", (48, 48)),
    ]
    right = list(crops.joint_crops(img, boxes, "RH", plan))
    assert all(c.mirrored for c in right) and not any(c.mirrored for c in left)
    assert np.array_equal(right[0].crop, left[0].crop[:, ::-1])
    assert right[2].box == (20.0, 60.0, 70.0, 95.0)  # boxes stay in the image's own coordinates
    assert list(crops.joint_crops(img, {"fin_1": (1, 1, 9, 9)}, "LF", plan))[0].group == "narrowing_toes"
