"""Hostile and junk inputs through the whole job: nothing that is not a hand or foot radiograph is
scored, every file is accounted for, and predictions.csv says which patients were not scored."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ra2batch.catalogue import LIMBS


def _png(levels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(levels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_bundle() -> str:
    from ra2batch.job.pipeline import DEMO_BUNDLE

    if not (DEMO_BUNDLE / "bundle.json").is_file():
        pytest.skip("needs the trained demo bundle (its detectors tell a hand from noise)")
    return str(DEMO_BUNDLE)


def test_junk_is_never_scored_and_every_file_is_accounted_for(ray_local, demo_bundle, tmp_path):
    from ra2batch.job import score_archive
    from ra2batch.output import open_output
    from ra2batch.synth import generate_cohort

    generate_cohort(str(tmp_path / "cohort"), patients=1, seed=7, scale=0.4, preview=False)
    archive = tmp_path / "archive"
    archive.mkdir()
    for limb in LIMBS:  # one real phantom patient
        (archive / f"SYN0001-{limb}.jpg").write_bytes((tmp_path / "cohort" / "images" / f"SYN0001-{limb}.jpg").read_bytes())
    rng = np.random.default_rng(0)
    (archive / "J1-LH.jpg").write_bytes(_jpeg(rng.integers(0, 255, (700, 560), dtype=np.uint8)))  # noise: no hand
    (archive / "J2-RH.png").write_bytes(_png(np.zeros((3000, 2000), np.uint8)))  # black
    forged = bytearray(_jpeg(rng.integers(0, 255, (423, 509), dtype=np.uint8)))
    sof = forged.find(b"\xff\xc0")
    forged[sof + 5:sof + 9] = struct.pack(">HH", 9500, 9500)  # the header claims 9500 x 9500
    (archive / "J3-LF.jpg").write_bytes(bytes(forged))
    (tmp_path / "secret-RF.jpg").write_bytes(b"not the archive's")
    os.symlink(tmp_path / "secret-RF.jpg", archive / "X1-RF.jpg")
    os.mkfifo(archive / "J4-LH.jpg")
    os.symlink(".", archive / "loop")

    summary = score_archive(str(archive), str(tmp_path / "out"), models=demo_bundle)
    snapshot = open_output(str(tmp_path / "out"))
    images = snapshot.to_pandas("images").set_index("path")
    status = {Path(p).name: (s, e) for p, s, e in zip(images.index, images["status"], images["error"])}
    assert len(images) == 9 and images.index.is_unique  # the loop listed nothing twice
    assert all(status[f"SYN0001-{limb}.jpg"][0] == "ok" for limb in LIMBS)
    assert status["J1-LH.jpg"][0] == "rejected" and status["J1-LH.jpg"][1].startswith("no hand found: the hand detector")
    assert status["J2-RH.png"][0] == "error" and "blank or uniform image" in status["J2-RH.png"][1]
    assert status["J3-LF.jpg"][0] == "error" and "9500 x 9500 its header claims" in status["J3-LF.jpg"][1]
    assert status["X1-RF.jpg"][0] == "error" and "outside the input folder: not followed" in status["X1-RF.jpg"][1]
    assert status["J4-LH.jpg"][0] == "error" and "a FIFO" in status["J4-LH.jpg"][1]
    assert pd.isna(images.loc[str(archive / "X1-RF.jpg"), "content_hash"])  # never read
    assert (summary.images_ok, summary.images_error, summary.images_rejected) == (4, 4, 1)
    assert "1 rejected (no hand or foot found)" in summary.format()

    joints = snapshot.to_pandas("joints")
    assert set(joints["Patient_ID"]) == {"SYN0001"}  # nothing else was scored
    patients = snapshot.to_pandas("patients").set_index("Patient_ID")
    assert "no_limb_found:LH" in list(patients.loc["J1", "qc_flags"])
    assert "image_error:RH" in list(patients.loc["J2", "qc_flags"]) and np.isnan(patients.loc["J1", "Overall_Tol"])
    with open(tmp_path / "out" / "predictions.csv") as f:
        pred = pd.read_csv(f, dtype={"Patient_ID": str}, keep_default_na=False).set_index("Patient_ID")
    assert pred.columns[-1] == "qc"
    assert pred.loc["SYN0001", "qc"] == "" or pred.loc["SYN0001", "qc"].startswith("filled:")
    assert all(pred.loc[p, "qc"] == "nothing_scored" for p in ("J1", "J2", "J3", "J4", "X1"))
