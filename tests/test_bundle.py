"""Model bundles: build, save, load with verification, and the inference API."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ra2batch import catalogue
from ra2batch.models import (
    PLAN, BundleError, DetectorConfig, JointHeadConfig, Provenance, build_bundle, load_bundle,
)

torch.set_num_threads(1)

TINY_PLAN = PLAN.variant(backbones="test_efficientnet", crop_sizes=64)
TINY_DETECTOR = DetectorConfig(backbone="mobilenet_v3_fpn_narrow", min_size=64, max_size=96, min_score=0.0)
TINY_HEAD = JointHeadConfig(attention_widths=(32, 16), dense_width=32)
MEDIANS = {c: 0.5 for c in catalogue.COLUMNS}


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((120, 90), dtype=np.float32), rng.random((80, 150), dtype=np.float32)]


def _crops() -> np.ndarray:
    return np.random.default_rng(1).random((5, 64, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return build_bundle(TINY_PLAN, TINY_DETECTOR, joint_head=TINY_HEAD)


@pytest.fixture(scope="module")
def saved(bundle, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "v1"
    bundle.save(str(path), provenance=Provenance(training_data="abc123", command="ra2batch train"),
                metrics={"val_rmse": 0.8}, label_medians=MEDIANS)
    return path


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    """A private copy of the saved bundle that a test may damage."""
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def test_bundle_has_two_detectors_and_one_joint_model_per_group(bundle):
    assert set(bundle.detectors) == {"hand", "foot"}
    assert set(bundle.joint_models) == set(TINY_PLAN.names)


def test_save_then_load_gives_bit_identical_outputs(bundle, saved):
    loaded = load_bundle(str(saved))
    assert loaded.model_version == bundle.model_version
    assert len(loaded.model_version) == 16
    for group in TINY_PLAN.names:
        want, got = bundle.score(group, _crops()), loaded.score(group, _crops())
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert loaded.detect(_images(), "foot") == bundle.detect(_images(), "foot")
    assert loaded.label_medians == MEDIANS
    assert loaded.manifest.provenance.training_data == "abc123"
    assert loaded.manifest.metrics == {"val_rmse": 0.8}


def test_bundle_json_records_every_weight_files_sha256(saved):
    manifest = json.loads((saved / "bundle.json").read_text())
    on_disk = sorted(p.name for p in saved.glob("*.safetensors"))
    assert sorted(manifest["weights"]) == on_disk
    assert manifest["format_version"] == 1
    assert manifest["plan"]["groups"][0]["backbone"] == "test_efficientnet"
    assert manifest["preprocessing"]["grey_to_rgb"] == "repeat"


def test_model_version_changes_with_the_weights(tmp_path):
    torch.manual_seed(0)
    b = build_bundle(TINY_PLAN, TINY_DETECTOR, joint_head=TINY_HEAD)
    before = b.model_version
    assert b.save(str(tmp_path / "a")) == before  # the in-memory version is the one saved
    with torch.no_grad():
        b.joint_models["wrist_erosion"].head.classifier[-1].bias.add_(1.0)
    assert b.save(str(tmp_path / "b")) != before


def test_score_returns_non_negative_scores_and_attention_maps(bundle):
    scores, attention = bundle.score("wrist_narrowing", _crops())
    assert scores.shape == (5, 6) and scores.dtype == np.float32 and (scores >= 0).all()
    assert attention.shape == (5, *bundle.joint_models["wrist_narrowing"].feature_size)
    assert 0 <= attention.min() and attention.max() <= 1
    empty = bundle.score("erosion_toes", np.zeros((0, 64, 64), np.float32))
    assert empty[0].shape == (0, 1) and empty[1].shape[0] == 0


def test_score_batches_give_the_same_answer_as_one_pass(bundle):
    one = bundle.score("erosion_fingers", _crops(), batch_size=64)[0]
    many = bundle.score("erosion_fingers", _crops(), batch_size=2)[0]
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


def test_inference_leaves_a_model_in_training_mode_as_it_found_it(bundle):
    model = bundle.joint_models["erosion_toes"].train()
    bundle.score("erosion_toes", _crops())
    assert model.training
    model.eval()


def test_score_rejects_crops_of_the_wrong_size_and_unknown_groups(bundle):
    with pytest.raises(ValueError, match=r"takes crops \[N, 64, 64\], got shape \(2, 32, 32\)"):
        bundle.score("erosion_toes", np.zeros((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="no joint group 'thumbs'"):
        bundle.score("thumbs", _crops())


def test_detect_gives_the_best_box_per_class_inside_each_image(bundle):
    found = bundle.detect(_images(), "hand")
    assert len(found) == 2
    for dets, image in zip(found, _images()):
        assert set(dets) == set(catalogue.HAND_CLASSES)  # min_score 0: every class has a best box
        for d in dets.values():
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            assert 0 <= d.score <= 1
    # the crops for the joint models come straight from the detections, at each group's size
    made = list(bundle.joint_crops(_images()[0], found[0], "RH"))
    assert {c.group for c in made} == set(TINY_PLAN.names) - {"erosion_toes"}
    assert all(c.mirrored and c.crop.shape == (64, 64) for c in made)


def test_classes_below_the_minimum_score_are_absent(tmp_path):
    torch.manual_seed(0)
    strict = build_bundle(TINY_PLAN, TINY_DETECTOR.model_copy(update={"min_score": 0.9}), joint_head=TINY_HEAD)
    assert strict.detect(_images(), "foot") == [{}, {}]  # an untrained head scores about 0.01


def test_detect_rejects_images_outside_0_1(bundle):
    with pytest.raises(ValueError, match=r"image 1: values must lie in \[0, 1\], got 255..255"):
        bundle.detect([_images()[0], np.full((20, 20), 255.0, np.float32)], "hand")


# -- rejection of damaged bundles ---------------------------------------------------------------------


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as e:
        load_bundle(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_tampered_weight_file_is_rejected(copy):
    f = copy / "joint-wrist_erosion.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    _one_line_error(copy, r"joint-wrist_erosion.safetensors sha256 [0-9a-f]{12}\.\.\. does not match bundle.json")


def test_a_truncated_weight_file_is_rejected(copy):
    f = copy / "detector-hand.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    _one_line_error(copy, r"detector-hand.safetensors has 1000 bytes but bundle.json records \d+ \(truncated")


def test_a_missing_weight_file_is_rejected(copy):
    (copy / "joint-erosion_toes.safetensors").unlink()
    _one_line_error(copy, "missing weight file joint-erosion_toes.safetensors")


def test_a_directory_without_bundle_json_is_rejected(copy):
    (copy / "bundle.json").unlink()
    _one_line_error(copy, "no bundle.json; not a model bundle")


def test_an_unknown_format_version_is_rejected(copy):
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["format_version"] = 99
    (copy / "bundle.json").write_text(json.dumps(manifest))
    _one_line_error(copy, "bundle format version 99 is not supported")


def test_weights_that_do_not_fit_the_recorded_architecture_are_rejected(copy):
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["architecture"]["joint_head"]["dense_width"] = 16
    (copy / "bundle.json").write_text(json.dumps(manifest))
    _one_line_error(copy, r"classifier.1.weight has shape \(32, \d+\) but the architecture in bundle.json needs \(16,")


def test_an_invalid_manifest_is_rejected(copy):
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["label_medians"]["LH_wrist_E__thumb"] = 1.0
    (copy / "bundle.json").write_text(json.dumps(manifest))
    _one_line_error(copy, "invalid bundle.json: label_medians: .*unknown RA2 columns: LH_wrist_E__thumb")


# -- S3 ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bundle_round_trips_through_s3(bundle, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="models")
        version = bundle.save("s3://models/bundles/v1", label_medians=MEDIANS)
        loaded = load_bundle("s3://models/bundles/v1")
        assert loaded.model_version == version
        assert np.array_equal(loaded.score("erosion_toes", _crops())[0], bundle.score("erosion_toes", _crops())[0])
    finally:
        server.stop()


def test_score_tta_averages_flip_and_measures_disagreement():
    import numpy as np

    from ra2batch.models import PLAN, build_bundle

    plan = PLAN.variant(backbones="test_efficientnet", crop_sizes=64)
    bundle = build_bundle(plan)
    rng = np.random.default_rng(0)
    crops = rng.random((3, 64, 64), dtype=np.float32)
    crops[:, :, :20] = 0  # asymmetric, so the flip changes the input
    scores, attention, unc = bundle.score_tta("erosion_fingers", crops)
    plain, _ = bundle.score("erosion_fingers", crops)
    flipped, _ = bundle.score("erosion_fingers", crops[:, :, ::-1].copy())
    np.testing.assert_allclose(scores, (plain + flipped) / 2, rtol=1e-6)
    np.testing.assert_allclose(unc, np.abs(plain - flipped), rtol=1e-6)
    assert unc.shape == scores.shape == (3, 2) and attention.shape[0] == 3
    # a left-right symmetric crop has no disagreement
    sym = np.ascontiguousarray((crops + crops[:, :, ::-1]) / 2)
    _, _, u0 = bundle.score_tta("erosion_fingers", sym)
    assert float(u0.max()) < 1e-5


def test_detections_do_not_depend_on_batch_mates(tmp_path):
    """Radiographs of every size and both orientations: the trained demo detector finds the same boxes
    whether each is alone or batched with the others (each batch is padded to a fixed canvas)."""
    from ra2batch.imaging.readers import decode
    from ra2batch.job.pipeline import DEMO_BUNDLE
    from ra2batch.synth import generate_cohort

    generate_cohort(tmp_path, patients=2, seed=5, scale=0.3)
    bundle = load_bundle(str(DEMO_BUNDLE), parts=["detectors"])
    for kind, limbs in (("hand", ("LH", "RH")), ("foot", ("LF", "RF"))):
        images = [decode(p.read_bytes(), p.name).pixels for p in sorted((tmp_path / "images").glob("*.jpg"))
                  if p.stem.endswith(limbs)]
        rotated = [np.ascontiguousarray(im.T) for im in images]  # landscape ones too
        images = images + rotated[:1]
        alone = [bundle.detect([im], kind)[0] for im in images]
        together = bundle.detect(images, kind, batch_size=len(images))
        assert all(len(a) >= 4 for a in alone)  # a trained detector: the same boxes are real finds
        for a, t in zip(alone, together):
            assert a.keys() == t.keys()
            for c in a:
                np.testing.assert_allclose(a[c].box, t[c].box, atol=0.05)
