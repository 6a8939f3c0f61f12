"""Listing an archive: which files become images rows and whose radiographs they are."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from ra2batch.job.config import JobConfig
from ra2batch.job.inputs import header_limb, list_inputs, parse_name


@pytest.mark.parametrize("path, expected", [
    ("/a/UAB001-LH.jpg", ("UAB001", None, "LH")),
    ("s3://b/x/UAB001-rf.DCM", ("UAB001", None, "RF")),
    ("/a/UAB001-V2-RH.png", ("UAB001", "V2", "RH")),
    ("/a/UAB-001-V2-LF.jpeg", ("UAB-001", "V2", "LF")),
])
def test_stem_names_patient_visit_and_limb(path, expected):
    assert parse_name(path) == expected


@pytest.mark.parametrize("path", ["/a/scan.jpg", "/a/UAB001-XX.jpg", "/a/-LH.jpg", "/a/UAB001--LH.jpg", "/a/LH.png"])
def test_unidentifiable_names_say_what_is_expected(path):
    problem = parse_name(path)
    assert isinstance(problem, str) and "gives no patient and limb" in problem and "--manifest" in problem


@pytest.mark.parametrize("path, expected", [
    ("/a/UAB001.dcm", ("UAB001", None, None)),
    ("s3://b/UAB001-V2.DICOM", ("UAB001", "V2", None)),
    ("/a/UAB-001-V2.dcm", ("UAB-001", "V2", None)),
    ("/a/UAB001-lh.dcm", ("UAB001", None, "LH")),  # a limb in the name is the name's, as before
])
def test_a_dicom_named_without_a_limb_leaves_it_to_its_header(path, expected):
    assert parse_name(path) == expected


@pytest.mark.parametrize("path", ["/a/UAB001.jpg", "/a/UAB001-V2.png", "/a/UAB001-LH-2.dcm", "/a/lh-V1.dcm",
                                  "/a/UAB001-.dcm", "/a/-V2.dcm"])
def test_names_without_a_limb_stay_unidentified_unless_dicom_and_clean(path):
    problem = parse_name(path)
    assert isinstance(problem, str) and "gives no patient and limb" in problem


@pytest.mark.parametrize("laterality, body_part, limb", [
    ("L", "HAND", "LH"), ("R", "Hand", "RH"), ("l", "foot ", "LF"), ("RIGHT", "FEET", "RF"), ("L", "HANDS", "LH"),
    ("B", "HAND", None), ("U", "FOOT", None), ("R", "CHEST", None), (None, "HAND", None), ("L", None, None),
])
def test_the_dicom_header_names_a_limb_by_laterality_and_body_part(laterality, body_part, limb):
    assert header_limb({"laterality": laterality, "body_part": body_part}) == limb
    assert header_limb({"format": "jpeg"}) is None


def _touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 3)


def test_lists_radiographs_at_any_depth_and_counts_other_files(tmp_path):
    _touch(tmp_path, "P1-LH.jpg", "deep/er/P1-RH.PNG", "P2-LF.dcm", "P2-RF.dicom", "odd.jpeg",
           "training.csv", "annotations/P1-LH.xml")
    listing = list_inputs(str(tmp_path))
    files = listing.files
    assert [p.rsplit("/", 1)[1] for p in files["path"]] == ["P1-LH.jpg", "P2-LF.dcm", "P2-RF.dicom", "P1-RH.PNG",
                                                            "odd.jpeg"]
    assert listing.ignored == 2
    assert files.set_index("path").loc[str(tmp_path / "deep/er/P1-RH.PNG"), "limb"] == "RH"
    assert files["problem"].notna().tolist() == [False, False, False, False, True]
    assert (files["size_bytes"] == 3).all()


def test_missing_input_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(str(tmp_path / "nope"))


def test_manifest_names_files_and_accounts_for_every_mismatch(tmp_path):
    archive = tmp_path / "archive"
    _touch(archive, "scans/a.jpg", "scans/b.dcm", "scans/stray.png")
    pd.DataFrame({"path": ["scans/a.jpg", "scans/b.dcm", "scans/gone.jpg", "scans/c.bin"],
                  "Patient_ID": ["P7", "P7", "P8", "P9"], "limb": ["lh", "ZZ", "RF", "RH"],
                  "visit": ["1", "1", None, None]}).to_csv(tmp_path / "m.csv", index=False)
    _touch(archive, "scans/c.bin")
    files = list_inputs(str(archive), manifest=str(tmp_path / "m.csv")).files.set_index("path")
    at = {p.rsplit("/", 1)[1]: r for p, r in files.iterrows()}
    assert set(at) == {"a.jpg", "b.dcm", "gone.jpg", "c.bin", "stray.png"}
    assert (at["a.jpg"]["Patient_ID"], at["a.jpg"]["visit"], at["a.jpg"]["limb"]) == ("P7", "1", "LH")
    assert pd.isna(at["a.jpg"]["problem"]) and pd.isna(at["c.bin"]["problem"])
    assert "limb 'ZZ'" in at["b.dcm"]["problem"]
    assert "not found" in at["gone.jpg"]["problem"] and pd.isna(at["gone.jpg"]["size_bytes"])
    assert "not in the manifest" in at["stray.png"]["problem"]


def test_manifest_without_required_columns_is_rejected(tmp_path):
    pd.DataFrame({"path": ["a.jpg"], "limb": ["LH"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="missing column"):
        list_inputs(str(tmp_path), manifest=str(tmp_path / "m.csv"))


def test_explicit_paths_restrict_the_job_and_report_missing_ones(tmp_path):
    _touch(tmp_path, "P1-LH.jpg", "P1-RH.jpg")
    files = list_inputs(str(tmp_path), paths=["P1-RH.jpg", str(tmp_path / "P9-LF.jpg")]).files
    assert files["path"].tolist() == [str(tmp_path / "P1-RH.jpg"), str(tmp_path / "P9-LF.jpg")]
    assert pd.isna(files["problem"].iloc[0]) and files["problem"].iloc[1] == "file not found"


def test_config_is_sized_to_the_cluster_and_flags_override_files(tmp_path):
    # Without GPUs: one fused single-threaded model actor per core, decoding its own files; with
    # decode tasks, one per core left beside them, and the reservations never exceed the cluster
    # (decode always finds room).
    for cpus, actors, beside_tasks in ((1, 1, 1), (2, 2, 2), (4, 4, 3), (16, 16, 12)):
        cpu = JobConfig().resolved({"CPU": float(cpus)})
        assert (cpu.fuse_models, cpu.decode_in_actors, cpu.detector_actors, cpu.torch_threads, cpu.detector_gpus) == (
            True, True, actors, 1, 0.0)
        assert cpu.detector_actors * cpu.actor_cpus <= cpus
        tasks = JobConfig(decode_in_actors=False).resolved({"CPU": float(cpus)})
        assert (tasks.fuse_models, tasks.detector_actors) == (True, beside_tasks)
        assert tasks.detector_actors * tasks.actor_cpus + tasks.decode_cpus <= cpus
    with pytest.raises(ValueError, match="decode_in_actors needs the fused model actors"):
        JobConfig(decode_in_actors=True, fuse_models=False)
    split = JobConfig(fuse_models=False).resolved({"CPU": 2.0})
    assert (split.detector_actors, split.scorer_actors) == (1, 1)
    assert 2 * split.actor_cpus + split.decode_cpus <= 2
    gpu = JobConfig().resolved({"CPU": 32.0, "GPU": 4.0})
    assert (gpu.fuse_models, gpu.decode_in_actors, gpu.detector_actors, gpu.scorer_actors, gpu.detector_gpus,
            gpu.scorer_gpus) == (False, False, 4, 4, 0.5, 0.5)
    assert JobConfig(fuse_models=True).resolved({"CPU": 32.0, "GPU": 4.0}).detector_gpus == 1.0  # a whole GPU each
    # A job never starts more model actors than it has decode tasks (8 files each) to feed them.
    assert JobConfig().resolved({"CPU": 16.0}, files=3).detector_actors == 1
    assert JobConfig().resolved({"CPU": 16.0}, files=20).detector_actors == 3
    assert JobConfig(detector_actors=8).resolved({"CPU": 16.0}, files=8).detector_actors == 1
    small_gpu = JobConfig().resolved({"CPU": 32.0, "GPU": 4.0}, files=9)
    assert (small_gpu.detector_actors, small_gpu.scorer_actors, small_gpu.detector_gpus) == (2, 2, 0.5)
    (tmp_path / "c.yaml").write_text("detector_gpus: 0.25\nscorer_batch_size: 16\n")
    cfg = JobConfig.load(tmp_path / "c.yaml").merged({"scorer_batch_size": 8, "detector_actors": None})
    assert (cfg.detector_gpus, cfg.scorer_batch_size) == (0.25, 8)
    assert cfg.resolved({"CPU": 8, "GPU": 1}).detector_gpus == 0.25
    (tmp_path / "bad.json").write_text('{"detector_pool": 3}')
    with pytest.raises(ValueError, match="detector_pool"):
        JobConfig.load(tmp_path / "bad.json")


def test_boolean_job_flags_switch_both_ways():
    import argparse

    from ra2batch.job.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--no-tta", "--fuse-models"]).tta is False
    assert p.parse_args(["--no-fuse-models"]).fuse_models is False
    assert p.parse_args([]).tta is None  # unset: the config file's or the default
    with pytest.raises(SystemExit):
        p.parse_args(["--tta", "false"])  # no silent "true"


def test_local_listing_follows_the_filesystem_safely(tmp_path):
    """Each file once through a link loop; links that dangle, loop or leave the folder, and FIFOs, are
    entries with a problem (never read, never skipped); a link inside the folder is followed."""
    import os

    archive = tmp_path / "archive"
    _touch(archive, "P1-LH.jpg", "sub/P2-LH.jpg", "notes.txt")
    (tmp_path / "outside-LH.jpg").write_bytes(b"not yours")
    os.symlink(".", archive / "loop")
    os.symlink(archive / "sub", archive / "alias")
    os.symlink(tmp_path / "outside-LH.jpg", archive / "X-LH.jpg")
    os.symlink(archive / "gone.jpg", archive / "P3-LH.jpg")
    os.symlink(archive / "P5-RH.jpg", archive / "P5-RH.jpg")  # a link to itself
    os.symlink(archive / "P1-LH.jpg", archive / "P6-LH.jpg")  # inside the folder: followed
    os.mkfifo(archive / "P4-LH.jpg")
    listing = list_inputs(str(archive))
    files = listing.files.set_index("path")
    names = {p.removeprefix(str(archive) + "/") for p in files.index}
    assert names == {"P1-LH.jpg", "sub/P2-LH.jpg", "X-LH.jpg", "P3-LH.jpg", "P4-LH.jpg", "P5-RH.jpg", "P6-LH.jpg"}
    problem = {n: files.loc[f"{archive}/{n}", "problem"] for n in names}
    assert problem["X-LH.jpg"].startswith(f"a symbolic link to {tmp_path / 'outside-LH.jpg'}, outside the input folder")
    assert "--follow-links" in problem["X-LH.jpg"]
    assert problem["P3-LH.jpg"].startswith("a dangling symbolic link")
    assert problem["P4-LH.jpg"] == "a FIFO, not a regular file: not read"
    assert problem["P5-RH.jpg"] == "a symbolic link loop: not read"
    assert all(pd.isna(problem[n]) for n in ("P1-LH.jpg", "sub/P2-LH.jpg", "P6-LH.jpg"))
    assert files.loc[[f"{archive}/{n}" for n in ("X-LH.jpg", "P3-LH.jpg", "P4-LH.jpg")], "size_bytes"].isna().all()
    assert listing.ignored == 1  # notes.txt
    followed = list_inputs(str(archive), follow_links=True).files.set_index("path")
    assert pd.isna(followed.loc[f"{archive}/X-LH.jpg", "problem"]) and followed.loc[f"{archive}/X-LH.jpg", "size_bytes"] == 9


def _dicom(rng: np.random.Generator, **header: str) -> bytes:
    """A 240 x 160 noise DICOM (MONOCHROME2, 12-bit) with the given header values (``ImageLaterality``...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = 240, 160
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (rng.random((240, 160)) * 4095).astype(np.uint16).tobytes()
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # "Hand": a spelling hospitals send
def test_dicom_limbs_from_the_header_through_the_job_and_a_nightly_merge(ray_local, tiny_bundle, tmp_path):
    """End to end: a DICOM named without a limb is scored as its header's limb; one whose header names
    another limb than its name is scored as the name's and flagged; one whose limb nothing gives is
    an error row; and a nightly merge that removes the file used for a limb scores the header-limb
    DICOM of that limb again, so its joints replace the removed file's."""
    from PIL import Image

    from ra2batch.job import score_archive
    from ra2batch.nightly import nightly_rescore
    from ra2batch.output import open_output

    rng = np.random.default_rng(7)
    archive = tmp_path / "archive"
    archive.mkdir()
    files = {"P1.dcm": dict(ImageLaterality="L", BodyPartExamined="HAND"),
             "P1-RH.dcm": dict(ImageLaterality="L", BodyPartExamined="Hand"),
             "P2-V1.dcm": dict(Laterality="R", BodyPartExamined="FOOT"),
             "P3.dcm": dict(BodyPartExamined="HAND"),
             "P4.dcm": dict(ImageLaterality="L", BodyPartExamined="HAND")}
    for name, header in files.items():
        (archive / name).write_bytes(_dicom(rng, **header))
    Image.fromarray((rng.random((240, 160)) * 255).astype(np.uint8)).save(archive / "P4-LH.jpg", quality=80)
    out = str(tmp_path / "out")

    summary = score_archive(str(archive), out, models=tiny_bundle)
    assert (summary.files, summary.images_ok, summary.images_error) == (6, 5, 1)
    snapshot = open_output(out)
    images = snapshot.to_pandas("images").set_index("path")
    row = {name: images.loc[str(archive / name)] for name in [*files, "P4-LH.jpg"]}
    assert (row["P1.dcm"]["limb"], row["P1.dcm"]["header_limb"], row["P1.dcm"]["status"]) == ("LH", "LH", "ok")
    assert (row["P1-RH.dcm"]["limb"], row["P1-RH.dcm"]["header_limb"], row["P1-RH.dcm"]["status"]) == ("RH", "LH", "ok")
    assert (row["P2-V1.dcm"]["Patient_ID"], row["P2-V1.dcm"]["visit"], row["P2-V1.dcm"]["limb"]) == ("P2", "V1", "RF")
    assert row["P3.dcm"]["status"] == "error" and pd.isna(row["P3.dcm"]["limb"])
    assert row["P3.dcm"]["error"].startswith("file name 'P3.dcm' gives no limb and neither does its DICOM header "
                                             "(ImageLaterality None, BodyPartExamined 'HAND'")
    assert row["P4-LH.jpg"]["chosen"] and not row["P4.dcm"]["chosen"]  # "P4-LH.jpg" sorts first
    joints = snapshot.to_pandas("joints")
    p1 = joints[joints["Patient_ID"] == "P1"]
    assert set(p1.loc[p1["path"] == str(archive / "P1.dcm"), "limb"]) == {"LH"}
    assert p1["joint"].str[:2].eq(p1["limb"]).all() and set(p1["limb"]) == {"LH", "RH"}
    patients = snapshot.to_pandas("patients").set_index("Patient_ID")
    assert "limb_header_mismatch:RH" in patients.loc["P1", "qc_flags"] and patients.loc["P1", "limbs"] == "LH,RH"
    assert patients.loc["P2", "visit"] == "V1" and patients.loc["P2", "limbs"] == "RF"
    assert "limb_unknown" in patients.loc["P3", "qc_flags"] and patients.loc["P3", "limbs"] == ""
    flags = [f for p in ("P2", "P3", "P4") for f in patients.loc[p, "qc_flags"]]
    assert not any(f.startswith("limb_header_mismatch") for f in flags)

    (archive / "P4-LH.jpg").unlink()
    nightly_rescore(str(archive), out, models=tiny_bundle)
    snapshot = open_output(out)
    images = snapshot.to_pandas("images").set_index("path")
    assert str(archive / "P4-LH.jpg") not in images.index and images.loc[str(archive / "P4.dcm"), "chosen"]
    joints = snapshot.to_pandas("joints")
    p4 = joints[joints["Patient_ID"] == "P4"]
    assert len(p4) and set(p4["path"]) == {str(archive / "P4.dcm")} and set(p4["limb"]) == {"LH"}
    lh = [c for c in snapshot.to_pandas("patients").columns if c.startswith("LH_")]
    assert snapshot.to_pandas("patients").set_index("Patient_ID").loc["P4", lh].notna().all()
