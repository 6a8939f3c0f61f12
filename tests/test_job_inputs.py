"""Listing an archive: which files become images rows and whose radiographs they are."""

from __future__ import annotations

import pandas as pd
import pytest

from ra2batch.job.config import JobConfig
from ra2batch.job.inputs import list_inputs, parse_name


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
