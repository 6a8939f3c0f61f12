"""ra2batch.synth: reproducible cohorts whose labels look like RA2's and whose pixels show them."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ra2batch.catalogue import BY_COLUMN, COLUMNS, TEMPLATE_ORDER, detector_classes, limb_kind, validate_row
from ra2batch.imaging.readers import decode
from ra2batch.synth import generate_cohort, render_limb, sample_labels
from ra2batch.synth import cli

SCALE = 0.3  # long side ~300-750 px keeps the tests quick


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), patients=3, seed=7, formats=("jpg", "png16", "dcm"), label_noise=0.5, scale=SCALE)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_files_whatever_the_workers(tmp_path, cohort):
    generate_cohort(str(tmp_path / "a"), patients=3, seed=7, formats=("jpg", "png16", "dcm"), label_noise=0.5,
                    scale=SCALE, workers=2)
    assert _files(tmp_path / "a") == _files(cohort)
    generate_cohort(str(tmp_path / "b"), patients=1, seed=8, scale=SCALE, preview=False)
    other = {v for k, v in _files(tmp_path / "b").items() if k.startswith("images/")}
    assert len(other) == 4 and not other & set(_files(cohort).values())  # another seed, other radiographs


def test_label_statistics_follow_ra2():
    labels = sample_labels(500, seed=3)
    assert list(labels.columns) == list(TEMPLATE_ORDER)
    scores = labels[list(COLUMNS)].to_numpy()
    assert 0.65 <= (scores == 0).mean() <= 0.80  # RA2: about 70% zeros
    q1, median, q3 = np.percentile(labels["Overall_Tol"], [25, 50, 75])
    assert 9 <= median <= 18 and 2 <= q1 <= 8 and 28 <= q3 <= 50  # RA2: 13, IQR about 5-38
    for _, row in labels.head(100).iterrows():
        assert validate_row(row.to_dict()) == []  # every column in range, totals add up
    for c in COLUMNS:
        assert labels[c].max() <= BY_COLUMN[c].max_score
    left = [c for c in COLUMNS if c[0] == "L"]
    right = ["R" + c[1:] for c in left]
    assert np.corrcoef(labels[left].sum(axis=1), labels[right].sum(axis=1))[0, 1] > 0.8  # patient severity
    l_joint, r_joint = labels[left].to_numpy().ravel(), labels[right].to_numpy().ravel()
    assert np.corrcoef(l_joint, r_joint)[0, 1] > 0.3  # the same joint on both sides
    assert sample_labels(5, seed=3).equals(labels.head(5))  # a patient's labels do not depend on n


def test_training_csv_is_truth_with_one_point_label_noise(cohort):
    truth = pd.read_csv(cohort / "truth.csv", dtype={"Patient_ID": str})
    training = pd.read_csv(cohort / "training.csv", dtype={"Patient_ID": str})
    assert list(training.columns) == list(TEMPLATE_ORDER)
    assert list(training["Patient_ID"]) == ["SYN0001", "SYN0002", "SYN0003"]
    t, n = truth[list(COLUMNS)].to_numpy(), training[list(COLUMNS)].to_numpy()
    assert np.all(np.abs(t - n) <= 1) and np.all(n[t == 0] == 0)  # only damaged joints move, by one point
    assert 0.2 < (t != n)[t > 0].mean() < 0.8  # about half of them at --label-noise 0.5
    for _, row in training.iterrows():
        assert validate_row(row.to_dict()) == []
    joints = pd.read_csv(cohort / "joints.csv")
    drawn = joints.assign(pid=joints["stem"].str[:7]).set_index(["pid", "column"])["score"]
    for _, row in truth.iterrows():
        assert all(drawn[(row["Patient_ID"], c)] == row[c] for c in COLUMNS)  # truth.csv = what is drawn


def test_every_box_is_inside_its_image_and_holds_its_joints(cohort):
    images = pd.read_csv(cohort / "images.csv").set_index("stem")
    joints = pd.read_csv(cohort / "joints.csv")
    assert len(images) == 12
    for stem, img in images.iterrows():
        root = ET.parse(cohort / "annotations" / f"{stem}.xml").getroot()
        assert root.findtext("filename") == Path(img["file"]).name
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (img["width"], img["height"])
        boxes = {o.findtext("name"): [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in root.iter("object")}
        assert sorted(boxes) == sorted(detector_classes(limb_kind(stem[-2:])))
        for x0, y0, x1, y1 in boxes.values():
            assert 1 <= x0 < x1 <= img["width"] - 1 and 1 <= y0 < y1 <= img["height"] - 1
        for _, j in joints[joints["stem"] == stem].iterrows():
            x0, y0, x1, y1 = boxes[BY_COLUMN[j["column"]].crop]
            assert x0 <= j["x"] <= x1 and y0 <= j["y"] <= y1, (stem, j["column"])


def test_each_format_reads_back_with_its_size_and_depth(cohort):
    images = pd.read_csv(cohort / "images.csv")
    assert set(images["format"]) == {"jpg", "png16", "dcm"}
    suffix = {"jpg": ".jpg", "png16": ".png", "dcm": ".dcm"}
    for _, img in images.iterrows():
        assert img["file"].endswith(suffix[img["format"]])
        rad = decode((cohort / img["file"]).read_bytes(), img["file"])
        assert (rad.width, rad.height) == (img["width"], img["height"])
        assert 300 * 0.99 <= max(rad.width, rad.height) <= 2500 * SCALE * 1.01
        if img["format"] == "jpg":
            assert rad.bits == 8
        elif img["format"] == "png16":
            assert rad.bits == 16
        else:
            assert rad.bits in (12, 14, 16) and rad.meta["modality"] == "DX"
        # bone bright on a dark background, whatever the photometric interpretation
        assert np.median(rad.pixels) < 0.45 and np.percentile(rad.pixels, 99) > 0.6


def _gap_width(r, column: str) -> float:
    """Joint-space width (px) measured across the joint in the rendered pixels.

    Intensity profiles along the joint axis, averaged over a few lines across the middle of the
    joint, then the length of the dark run at the centre below halfway between gap and bone.
    """
    cx, cy = r.joints[column]
    ax, ay = r.axes[column]
    nx, ny = -ay, ax
    t = np.arange(-8, 8, 0.25) * r.px_per_mm
    profiles = []
    for off in np.linspace(-2.0, 2.0, 9) * r.px_per_mm:
        xs = np.round(cx + t * ax + off * nx).astype(int)
        ys = np.round(cy + t * ay + off * ny).astype(int)
        profiles.append(r.pixels[ys, xs])
    p = np.mean(profiles, axis=0)
    centre = len(p) // 2
    bone = np.median(np.concatenate([p[: centre // 2], p[-centre // 2:]]))
    dark = p < (bone + p[centre - 8: centre + 8].min()) / 2
    if not dark[centre - 2: centre + 3].any():
        return 0.0
    i = centre - 2 + int(np.argmax(dark[centre - 2: centre + 3]))
    lo, hi = i, i
    while lo > 0 and dark[lo - 1]:
        lo -= 1
    while hi < len(p) - 1 and dark[hi + 1]:
        hi += 1
    return (hi - lo + 1) * 0.25 * r.px_per_mm


@pytest.mark.parametrize("column", ["LH_mcp_J__3", "LH_pip_J__2", "LF_mtp_J__2"])
def test_joint_space_narrows_with_the_narrowing_score(column):
    limb = column[:2]
    widths = [_gap_width(render_limb(limb, {column: s}, (11, 1, 0), 0.6, marker_probability=0), column)
              for s in range(5)]
    assert all(a > b for a, b in zip(widths, widths[1:4])), widths
    assert widths[4] < 0.3 * widths[0], widths  # ankylosed
    normal_px = widths[0]
    assert normal_px > 3  # a visible joint space at 0.6 scale


def test_erosion_removes_bone_at_the_joint_and_grows_with_the_score():
    column = "RH_mcp_E__2"
    bone = []
    for s in (0, 1, 3, 5):
        r = render_limb("RH", {column: s}, (5, 2, 1), 0.6, marker_probability=0)
        cx, cy = r.joints[column]
        k = int(6 * r.px_per_mm)
        bone.append(float(r.pixels[int(cy) - k:int(cy) + k, int(cx) - k:int(cx) + k].sum()))
    assert all(a > b for a, b in zip(bone, bone[1:])), bone
    assert (bone[0] - bone[1]) / bone[0] < 0.03  # one point is subtle


def test_left_limb_is_the_mirror_image_of_the_right():
    left = render_limb("LH", {}, (2, 2, 2), SCALE, marker_probability=0)
    right = render_limb("RH", {}, (2, 2, 2), SCALE, marker_probability=0)
    np.testing.assert_array_equal(right.pixels, left.pixels[:, ::-1])
    x, y = left.joints["LH_mcp_J__2"]
    assert right.joints["RH_mcp_J__2"] == pytest.approx((right.width - 1 - x, y))


def test_cli_writes_a_cohort_and_rejects_bad_formats(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--output", str(tmp_path / "c"), "--patients", "1", "--seed", "1", "--scale", "0.2"])
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "wrote 4 radiographs" in out.out and "1/1 patients" in out.err
    assert (tmp_path / "c" / "preview.png").stat().st_size > 0
    bad = parser.parse_args(["--out", str(tmp_path / "d"), "--patients", "1", "--seed", "1", "--formats", "jpg,tiff"])
    assert cli.main(bad) == 2
    assert "tiff" in capsys.readouterr().err
    from ra2batch.synth.encode import FORMATS

    assert cli.FORMAT_NAMES == tuple(FORMATS)  # the help's list is the encoders'

