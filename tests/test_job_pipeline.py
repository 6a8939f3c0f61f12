"""The scoring job end to end: S3 in and out, a zoo of bad files, reruns, a killed actor, a real
two-node cluster through ``ray job submit``, and accuracy against the phantom truth.

Archives are small (pixels are noise unless a trained bundle is used) and bundles tiny and untrained:
these tests check the job's accounting; only the accuracy test needs trained models.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ra2batch import catalogue
from ra2batch.catalogue import LIMBS

# -- archives ------------------------------------------------------------------------------------


def jpeg(rng: np.random.Generator, shape=(240, 160)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def png16(rng: np.random.Generator, shape=(240, 160)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random(shape) * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def dicom(rng: np.random.Generator | None, shape=(240, 160), *, patient_name: str = "Doe^Jane") -> bytes:
    """A MONOCHROME1 16-bit DICOM with identifying header values; no pixel data when ``rng`` is None."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    from pydicom import Dataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientBirthDate, ds.AccessionNumber = patient_name, "19600101", "ACC123456"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    if rng is not None:
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
        ds.PixelData = (rng.random(shape) * 4095).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bomb_png(side: int = 12_000) -> bytes:
    """A tiny PNG whose header promises side x side pixels (144 megapixels by default)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def write_archive(root: Path, patients: list[str], seed: int = 0) -> list[Path]:
    """Four JPEG radiographs per patient, ``{PID}-{LIMB}.jpg``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid in patients:
        for limb in LIMBS:
            (p := root / f"{pid}-{limb}.jpg").write_bytes(jpeg(rng))
            paths.append(p)
    return paths


def write_zoo(root: Path) -> dict[str, str | None]:
    """An archive mixing good and bad files; returns relative path -> expected error fragment (None = ok).

    P1 is complete (JPEG hands, 16-bit PNG and MONOCHROME1 DICOM feet) with a second copy of its LH;
    P2 has hands only; P9's four files are all broken; P8 has a decompression bomb and a radiograph
    too thin to be a radiograph; two files name no patient or limb.
    """
    rng = np.random.default_rng(1)
    good = jpeg(rng)
    files: dict[str, tuple[bytes, str | None]] = {
        "P1-LH.jpg": (good, None),
        "P1-RH.jpg": (jpeg(rng), None),
        "feet/P1-LF.png": (png16(rng), None),
        "feet/P1-RF.dcm": (dicom(rng), None),
        "zcopies/P1-LH.jpg": (jpeg(rng), None),
        "P2-LH.jpg": (jpeg(rng), None),
        "P2-RH.jpeg": (jpeg(rng), None),
        "P9-LH.jpg": (good[: len(good) // 3], "truncated"),
        "P9-RH.jpg": (b"", "empty file"),
        "P9-LF.jpg": (b"Patient notes, not an image\n" * 20, "not a readable"),
        "P9-RF.dcm": (dicom(None), "no pixel data"),
        "P8-LH.png": (bomb_png(), "decompression bomb"),
        "P8-RH.png": (png16(rng, shape=(2, 3000)), "3000 x 2 pixels is too small for a radiograph"),
        "scan.jpg": (jpeg(rng), "gives no patient and limb"),
        "misc/P1-XX.png": (png16(rng), "gives no patient and limb"),
        "training.csv": (b"Patient_ID\nP1\n", None),
    }
    for rel, (data, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: err for rel, (_, err) in files.items() if not rel.endswith(".csv")}


# -- helpers -------------------------------------------------------------------------------------


def read_outputs(loc) -> dict[str, pd.DataFrame]:
    """The tables (as published: ``ra2batch.output``) and predictions.csv under an output Location,
    rows in a fixed order (a table's rows come bucket by bucket)."""
    from ra2batch.output import open_output

    snapshot = open_output(loc.uri, loc.options or None)
    order = {"images": ["path"], "joints": ["Patient_ID", "visit", "limb", "joint"],
             "patients": ["Patient_ID", "visit"], "catalogue": ["path"]}
    out = {name: snapshot.to_pandas(name).sort_values(keys, ignore_index=True) for name, keys in order.items()}
    with loc.fs.open_input_stream(loc.join("predictions.csv")) as f:
        predictions = pd.read_csv(f, dtype={"Patient_ID": str}).sort_values("Patient_ID", ignore_index=True)
    out["predictions"] = predictions.assign(qc=predictions["qc"].fillna(""))  # "" (nothing filled) reads as NaN
    return out


def assert_same_rows_as_one_process(archive: str, out: str, models: str | None, config) -> None:
    """The output at ``out`` holds, as sets of rows, what one process makes of the same model stage's
    stream (``tests.reference``: the assembly as it ran on the driver before the reduce stage)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray

    from ra2batch.job.inputs import list_inputs
    from ra2batch.job.pipeline import load_models, model_stage
    from ra2batch.job.plan import full_plan
    from ra2batch.job.tables import REDUCE
    from ra2batch.output import open_output
    from ra2batch.storage import resolve
    from tests.reference import reference_tables, rows

    snapshot = open_output(out)
    bundle, uri, options = load_models(models, None)
    plan = full_plan(list_inputs(archive).files, snapshot.buckets)
    cfg = config.resolved(ray.cluster_resources(), files=len(plan.files))
    stream = model_stage(plan.files, pafs.LocalFileSystem(), uri, options, cfg, None, bundle.model_version)
    tables = (stream.select_columns(REDUCE.names).iter_batches(batch_format="pyarrow", batch_size=None)
              if isinstance(stream, ray.data.Dataset) else [ray.get(ref).select(REDUCE.names) for ref in stream])
    want = reference_tables(pa.concat_tables(list(tables)), bundle.label_medians)
    got = read_outputs(resolve(out))
    run = {"model_version", "scored_at", "bucket"}
    for name in ("images", "joints", "patients"):
        columns = [c for c in got[name].columns if c not in run]
        assert len(got[name]) == len(want[name]) and rows(got[name], columns) == rows(want[name], columns), name
    assert rows(got["predictions"], list(want["predictions"].columns)) == rows(
        want["predictions"], list(want["predictions"].columns))


@pytest.fixture(scope="module")
def no_feet_bundle(tiny_bundle_factory) -> str:
    """A tiny bundle whose foot detector finds nothing: every foot joint goes unscored."""
    return tiny_bundle_factory(foot_min_score=0.5)


# -- tests ---------------------------------------------------------------------------------------


def test_decoded_pixels_reach_the_detector_as_decoded(tmp_path):
    """Decode packs pixels for the object store (1 byte for 8-bit sources, else 2); the detector
    must get back exactly what the reader decoded; a radiograph larger than ``SCORING_MAX_SIDE`` is
    decoded at reduced resolution, and its size in the images table stays the file's."""
    import pyarrow.fs as pafs

    from ra2batch.imaging.readers import SCORING_MAX_SIDE, decode
    from ra2batch.job.decode import decode_files
    from ra2batch.job.tables import unpack_pixels

    rng = np.random.default_rng(3)
    files = {"P1-LH.jpg": jpeg(rng), "P1-RH.png": png16(rng), "P1-LF.dcm": dicom(rng),
             "P1-RF.jpg": jpeg(rng, shape=(SCORING_MAX_SIDE + 904, 2500))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    listing = pd.DataFrame([{"path": str(tmp_path / n), "Patient_ID": "P1", "visit": None, "limb": n[3:5],
                             "size_bytes": len(d), "mtime": None, "problem": None, "bucket": 0}
                            for n, d in files.items()])
    rows = decode_files(listing, fs=pafs.LocalFileSystem()).to_pylist()
    for name, row in zip(files, rows):
        expected = decode(files[name], name, max_side=SCORING_MAX_SIDE).pixels
        got = unpack_pixels(row["pixels"], row["decoded_height"], row["decoded_width"])
        assert row["status"] == "ok" and got.dtype == np.float32 and got.shape == expected.shape
        assert len(row["pixels"]) == expected.size * (1 if name.endswith(".jpg") else 2)
        assert np.array_equal(got, expected)
    big = rows[-1]
    assert (big["width"], big["height"]) == (2500, SCORING_MAX_SIDE + 904)
    assert (big["decoded_width"], big["decoded_height"]) == (round(2500 * SCORING_MAX_SIDE / 5000), SCORING_MAX_SIDE)
    with pytest.raises(ValueError, match="not a packed 3 x 2 radiograph"):
        unpack_pixels(b"12345", 2, 3)


def test_decoding_holds_a_bounded_number_of_bytes_read_ahead(tmp_path, monkeypatch):
    """Files are read ahead of the decoding only up to ``READ_AHEAD_BYTES`` (by listed size), so a
    task of large files never holds all of them at once; rows stay in listing order."""
    import threading

    import pyarrow.fs as pafs

    from ra2batch.job import decode as decode_mod

    rng = np.random.default_rng(5)
    files = {f"P{i}-LH.png": png16(rng) for i in range(6)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    listing = pd.DataFrame([{"path": str(tmp_path / n), "Patient_ID": n[:2], "visit": None, "limb": "LH",
                             "size_bytes": 1000, "mtime": None, "problem": None, "bucket": 0} for n in files])
    decoded: list[str] = []
    behind: list[int] = []  # at each read's start: files listed before it not yet decoded
    lock = threading.Lock()
    read_one, decode_one = decode_mod._read_one, decode_mod._decode_one

    def spy_read(fs, row):
        with lock:
            behind.append(list(files).index(Path(row["path"]).name) - len(decoded))
        return read_one(fs, row)

    def spy_decode(out, data):
        with lock:
            decoded.append(out["path"])
        return decode_one(out, data)

    monkeypatch.setattr(decode_mod, "_read_one", spy_read)
    monkeypatch.setattr(decode_mod, "_decode_one", spy_decode)
    monkeypatch.setattr(decode_mod, "READ_AHEAD_BYTES", 2500)  # two files of 1000 listed bytes
    rows = decode_mod.decode_files(listing, fs=pafs.LocalFileSystem(), read_threads=8).to_pylist()
    assert [r["path"] for r in rows] == list(listing["path"]) and all(r["status"] == "ok" for r in rows)
    assert len(behind) == 6 and max(behind) <= 1


def test_s3_archive_with_bad_files_is_fully_accounted(ray_local, s3_bucket, no_feet_bundle, tmp_path):
    from ra2batch.job import score_archive

    expected = write_zoo(tmp_path / "archive")
    source = s3_bucket.upload(tmp_path / "archive", "archive")
    models = s3_bucket.upload(Path(no_feet_bundle), "models/no-feet")
    summary = score_archive(source, f"{s3_bucket.uri}/results", models=models, storage_options=s3_bucket.options)
    out = read_outputs(s3_bucket.location("results"))
    images = out["images"].set_index("path")

    # every radiograph file is one images row; each bad one says what is wrong
    assert sorted(images.index) == sorted(f"{source}/{rel}" for rel in expected)
    for rel, fragment in expected.items():
        row = images.loc[f"{source}/{rel}"]
        if fragment is None:
            assert row["status"] == "ok" and pd.isna(row["error"]) and row["width"] == 160, rel
        else:
            assert row["status"] == "error" and fragment in row["error"], (rel, row["error"])
            assert pd.isna(row["width"]) and not row["chosen"]
    assert (summary.files, summary.images_ok, summary.images_error, summary.ignored_files) == (15, 7, 8, 1)
    assert images.loc[f"{source}/P9-LH.jpg", "content_hash"] and images.loc[f"{source}/P9-RH.jpg", "size_bytes"] == 0

    # the duplicate LH: the first path is used, the other reported and not used
    assert images.loc[f"{source}/P1-LH.jpg", "chosen"] and not images.loc[f"{source}/zcopies/P1-LH.jpg", "chosen"]
    assert any("zcopies/P1-LH.jpg" in m for m in summary.duplicates)

    # joints: only from chosen files, one row per (patient, joint), none for undetected feet
    joints = out["joints"]
    assert not joints.duplicated(["Patient_ID", "visit", "joint"]).any()
    assert set(joints["path"]) == {f"{source}/{r}" for r in ("P1-LH.jpg", "P1-RH.jpg", "P2-LH.jpg", "P2-RH.jpeg")}
    assert len(joints) == 4 * 31 and (joints["joint"].str[:2] == joints["limb"]).all()
    assert (joints["score"] >= 0).all()
    assert (joints["attention"].map(len) == joints["attention_h"] * joints["attention_w"]).all()

    # patients: missing values are NaN with reasons; totals flagged partial
    patients = out["patients"].set_index("Patient_ID")
    assert sorted(patients.index) == ["P1", "P2", "P8", "P9"]
    p1, p2, p9 = (set(patients.loc[p, "qc_flags"]) for p in ("P1", "P2", "P9"))
    assert {"duplicate_image:LH", "not_detected:LF:fin_ip", "not_detected:RF:fin_4", "partial_totals"} <= p1
    assert {"missing_limb:LF", "missing_limb:RF", "partial_totals"} <= p2
    assert {f"image_error:{limb}" for limb in LIMBS} <= p9 and patients.loc["P9", "limbs"] == ""
    assert patients.loc["P1", "n_images"] == 5 and patients.loc["P1", "limbs"] == "LF,LH,RF,RH"
    foot = [c for c in catalogue.COLUMNS if c[1] == "F"]
    hand = [c for c in catalogue.COLUMNS if c[1] == "H"]
    assert patients.loc[["P1", "P2"], foot].isna().all().all() and patients.loc[["P1", "P2"], hand].notna().all().all()
    assert patients.loc["P1", "Overall_Tol"] == pytest.approx(patients.loc["P1", hand].sum())
    assert np.isnan(patients.loc["P9", "Overall_Tol"])

    # predictions.csv: complete, in template order then its qc column, fills recorded
    pred = out["predictions"]
    assert list(pred.columns) == [*catalogue.TEMPLATE_ORDER, "qc"]
    assert not pred[list(catalogue.TEMPLATE_ORDER)].isna().any().any()
    assert all(catalogue.validate_row(r) == [] for r in pred.to_dict("records"))
    assert "filled:LF_mtp_E__ip" in p1
    qc = pred.set_index("Patient_ID")["qc"]
    assert qc["P1"] == f"filled:{len(foot)}" and qc["P9"] == qc["P8"] == "nothing_scored"

    # nothing identifying from the DICOM header reached any output
    blob = "".join(df.astype(str).to_csv() for df in out.values()) + summary.format()
    assert not any(s in blob for s in ("Doe^Jane", "19600101", "ACC123456"))


def test_the_cluster_reduce_holds_the_rows_one_process_makes_of_the_zoo(ray_local, no_feet_bundle, tmp_path):
    from ra2batch.job import JobConfig, score_archive
    from ra2batch.output import open_output
    from ra2batch.output.delta import data_files

    write_zoo(tmp_path / "archive")
    # several buckets, so patients are assembled by different reduce tasks and written to different files
    config = JobConfig(buckets=3, detector_batch_size=1, files_per_decode_task=2)
    summary = score_archive(str(tmp_path / "archive"), str(tmp_path / "out"), models=no_feet_bundle, config=config)
    assert (summary.files, summary.images_error, summary.patients) == (15, 8, 4)
    snapshot = open_output(str(tmp_path / "out"))
    assert snapshot.buckets == 3 and len(data_files(snapshot.table("images"))) > 1
    assert_same_rows_as_one_process(str(tmp_path / "archive"), str(tmp_path / "out"), no_feet_bundle, config)


def test_rerun_replaces_outputs_with_the_same_rows(ray_local, tiny_bundle, tmp_path, capsys):
    from ra2batch.cli import main
    from ra2batch.job import JobConfig, score_archive
    from ra2batch.storage import resolve

    write_archive(tmp_path / "archive", ["A1", "A2"])
    out = tmp_path / "out"
    (tmp_path / "job.yaml").write_text("detector_batch_size: 3\nscorer_batch_size: 16\n")
    assert main(["score", "--input", str(tmp_path / "archive"), "--output", str(out), "--models", tiny_bundle,
                 "--config", str(tmp_path / "job.yaml"), "--scorer-batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "8 ok, 0 in error; 2 patient(s)" in printed and f"predictions.csv: {out}/predictions.csv" in printed
    before = read_outputs(resolve(str(out)))
    # a data file that an interrupted run may leave behind is part of no published version
    stray = next((out / "joints").rglob("part-*.parquet"))
    (stray.parent / "part-stray.parquet").write_bytes(stray.read_bytes())
    # the rerun also takes the GPU clusters' layout (separate detector and joint-model pools) where the
    # first run fused both stages (the CPU default): the two layouts must give the same outputs
    second = score_archive(str(tmp_path / "archive"), str(out), models=tiny_bundle,
                           config=JobConfig(detector_batch_size=3, scorer_batch_size=32, fuse_models=False))
    after = read_outputs(resolve(str(out)))
    assert (second.joints, second.patients) == (2 * 86, 2)
    # the same rows, and the same values up to float rounding (the same batch sizes in both runs:
    # an untrained detector's near-tied boxes could flip under another batch size's rounding)
    for name in ("images", "joints", "patients", "predictions"):
        a, b = (df.drop(columns=["scored_at", "attention"], errors="ignore") for df in (before[name], after[name]))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)  # atol: uncertainty ~ 0
    # attention maps differ in size by joint group (the tiny bundle has one tall crop group)
    np.testing.assert_allclose(np.concatenate(list(before["joints"]["attention"])),
                               np.concatenate(list(after["joints"]["attention"])), rtol=1e-4)
    # flip test-time augmentation: a disagreement per joint, flagged above the review threshold
    joints = after["joints"]
    assert (joints["uncertainty"] >= 0).all() and joints["uncertainty"].notna().all()
    assert (joints["review"] == (joints["uncertainty"] >= JobConfig().review_threshold)).all()
    flagged = {f"review:{c}" for c in joints.loc[joints["review"], "joint"]}
    assert flagged == {f for flags in after["patients"]["qc_flags"] for f in flags if f.startswith("review:")}


def test_model_actor_killed_mid_run_is_replaced_and_outputs_are_complete(ray_local, tiny_bundle, tmp_path):
    import os
    import signal
    import threading
    import time

    import ray._private.state as ray_state  # the GCS actor table; the public state API needs a dashboard

    from ra2batch.job import JobConfig, score_archive
    from ra2batch.storage import resolve

    patients = [f"K{i}" for i in range(8)]
    write_archive(tmp_path / "archive", patients)
    config = JobConfig(files_per_decode_task=1, detector_batch_size=1, scorer_batch_size=8)
    result: dict[str, object] = {}
    job = threading.Thread(target=lambda: result.update(summary=score_archive(
        str(tmp_path / "archive"), str(tmp_path / "out"), models=tiny_bundle, config=config)))
    job.start()

    def detectors(state: str | None = None) -> dict[str, dict]:
        return {k: a for k, a in ray_state.actors().items()
                if a["ActorClassName"] == "PoolWorker"
                and a["State"] == (state or a["State"])}

    before = set(detectors())  # actors of earlier tests in this session
    victim = None
    deadline = time.time() + 120
    while victim is None and job.is_alive() and time.time() < deadline:
        alive = {k: a for k, a in detectors("ALIVE").items() if k not in before}
        if alive:
            time.sleep(0.3)  # its models are loaded; let it score a few radiographs
            victim = next(iter(alive))
            os.kill(alive[victim]["Pid"], signal.SIGKILL)
            assert job.is_alive(), "the job finished before the actor could be killed"
        time.sleep(0.05)
    job.join(timeout=300)
    assert victim is not None, "no model actor was seen alive"
    assert detectors()[victim]["NumRestarts"] >= 1

    summary = result["summary"]
    out = read_outputs(resolve(str(tmp_path / "out")))
    assert summary.files == len(out["images"]) == 32 and summary.images_error == 0
    assert len(out["joints"]) == 8 * 86 and not out["joints"].duplicated(["Patient_ID", "joint"]).any()
    assert sorted(out["patients"]["Patient_ID"]) == patients
    assert out["patients"][list(catalogue.COLUMNS)].notna().all().all()


@pytest.mark.cluster
def test_ray_job_submit_scores_s3_archive_on_a_two_node_cluster(ray_cluster, s3_bucket, tiny_bundle, tmp_path):
    import json
    import subprocess

    write_archive(tmp_path / "archive", ["C1", "C2"])
    (tmp_path / "archive" / "C3-LH.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    source = s3_bucket.upload(tmp_path / "archive", "incoming")
    models = s3_bucket.upload(Path(tiny_bundle), "models/tiny")
    o = s3_bucket.options
    env_vars = {"AWS_ENDPOINT_URL": o["endpoint_url"], "AWS_ACCESS_KEY_ID": o["key"],
                "AWS_SECRET_ACCESS_KEY": o["secret"], "AWS_REGION": o["region"]}
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [ray_cluster.ray, "job", "submit", "--address", ray_cluster.address, "--working-dir", str(repo),
         "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
         "python", "jobs/score_archive.py", "--input", source, "--output", f"{s3_bucket.uri}/scores",
         "--models", models],
        env=ray_cluster.env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "scored 9 radiograph file(s)" in r.stdout and "8 ok, 1 in error" in r.stdout
    assert "on 2 node(s) with 4 CPU(s)" in r.stdout

    out = read_outputs(s3_bucket.location("scores"))
    assert len(out["images"]) == 9 and (out["images"]["status"] == "error").sum() == 1
    assert sorted(out["patients"]["Patient_ID"]) == ["C1", "C2", "C3"]
    assert len(out["joints"]) == 2 * 86 and not out["joints"].duplicated(["Patient_ID", "joint"]).any()
    assert len(out["predictions"]) == 3 and not out["predictions"][list(catalogue.TEMPLATE_ORDER)].isna().any().any()


def test_a_pool_leaves_its_jobs_a_cpu_and_reserves_none_on_a_one_cpu_cluster():
    """A warm pool on a one-CPU cluster once held the CPU its jobs' tasks needed, and they waited forever."""
    from ra2batch.job.model_pool import JOB_CPUS, pool_actor_cpus

    assert pool_actor_cpus(1, 1) == 0.0
    assert pool_actor_cpus(2, 2) == 0.5 and pool_actor_cpus(16, 16) == 0.93  # 15/16, rounded down
    for cpus in (1, 1.5, 2, 3, 8, 64):
        for actors in (1, 2, 8):
            assert cpus - actors * pool_actor_cpus(cpus, actors) >= min(cpus, JOB_CPUS) - 1e-9


def test_the_tasks_beside_the_model_actors_do_not_import_torch():
    """Decoding, the concatenation before the shuffle and the reduce run in worker processes of their
    own, each importing the module that defines its function: torch, torchvision and timm there would
    take each such worker about 5 s of CPU from the models."""
    import subprocess
    import sys

    from ra2batch.job import coalesce, decode, reduce

    modules = sorted({f.__module__ for f in (decode.decode_files, coalesce._concat._function, reduce.reduce_bucket)})
    assert len(modules) == 3
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "print([m for m in ('torch', 'torchvision', 'timm') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_model_actors_the_cluster_could_never_start_are_refused(ray_local, tiny_bundle, tmp_path):
    from ra2batch.job import score_archive
    from ra2batch.job.config import JobConfig
    from ra2batch.job.pipeline import JobInputError

    write_archive(tmp_path / "archive", ["H1"])
    with pytest.raises(JobInputError, match=r"a model actor needs 64 CPU and 0 GPU but this cluster has 2 CPU .* "
                                            r"could never start"):
        score_archive(str(tmp_path / "archive"), str(tmp_path / "out"), models=tiny_bundle,
                      config=JobConfig(actor_cpus=64, model_pool="job"))


def test_model_actors_that_cannot_load_the_bundle_raise_one_clear_error(ray_local, tiny_bundle, tmp_path):
    """The driver checks the bundle (manifest, sizes, hashes); a bundle its model actors cannot read
    (a driver-local path on a multi-node cluster, say) stops the job with a PoolError (a JobError to
    the command line) that names the bundle, not a Ray traceback, and leaves no actor behind."""
    import pyarrow.fs as pafs
    import ray._private.state as ray_state

    from ra2batch.job import JobConfig
    from ra2batch.job.inputs import list_inputs
    from ra2batch.job.model_pool import PoolError, score_on_job_actors

    write_archive(tmp_path / "archive", ["B1"])
    files = list_inputs(str(tmp_path / "archive")).files
    cfg = JobConfig().resolved({"CPU": 2.0}, files=len(files))
    stream = score_on_job_actors(files, pafs.LocalFileSystem(), str(tmp_path / "only-on-the-driver"), None, "v", cfg)
    with pytest.raises(PoolError, match=f"a model actor failed to load the models from {tmp_path}/only-on-the-driver: ") as raised:
        next(stream)
    assert "\n" not in str(raised.value)
    assert not [a for a in ray_state.actors().values() if a["ActorClassName"] == "PoolWorker" and a["State"] == "ALIVE"]


def test_warm_model_pool_scores_what_the_jobs_own_actors_score(ray_local, tiny_bundle, tmp_path, monkeypatch):
    import os
    import signal
    import time

    import ray._private.state as ray_state

    from ra2batch.job import JobConfig, score_archive
    from ra2batch.job import model_pool
    from ra2batch.job.model_pool import running_pools, start_pool, stop_pools
    from ra2batch.job.pipeline import JobError
    from ra2batch.models import load_bundle
    from ra2batch.storage import resolve

    write_archive(tmp_path / "archive", ["W1", "W2"])
    (tmp_path / "archive" / "W3-LH.jpg").write_bytes(b"\xff\xd8 truncated")
    version = load_bundle(tiny_bundle, parts=()).model_version
    # detector batches of one: the paths cut blocks differently, and an untrained detector's near-tied
    # boxes could flip under another batch's rounding
    batches = {"detector_batch_size": 1, "scorer_batch_size": 32, "files_per_decode_task": 2}

    def run(name: str, **config):
        summary = score_archive(str(tmp_path / "archive"), str(tmp_path / name), models=tiny_bundle,
                                config=JobConfig(**batches, **config))
        return summary, read_outputs(resolve(str(tmp_path / name)))

    def same_outputs(out) -> None:
        for name in ("images", "joints", "patients", "predictions"):
            a, b = (df.drop(columns=["scored_at", "attention"], errors="ignore") for df in (cold_out[name], out[name]))
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.concatenate(list(cold_out["joints"]["attention"])),
                                   np.concatenate(list(out["joints"]["attention"])), rtol=1e-4)

    cold, cold_out = run("cold", model_pool="job")
    assert "job actor(s) (models loaded" in cold.format() and 0 < cold.models_up_s < cold.seconds
    # the job's own actors end with its model stage: none is left holding a CPU
    deadline = time.time() + 30
    while any(a["ActorClassName"] == "PoolWorker" and a["State"] != "DEAD" for a in ray_state.actors().values()):
        assert time.time() < deadline, "the job's own model actors outlived it"
        time.sleep(0.2)
    # the job's own fused actors fed by decode tasks instead of decoding their files themselves
    tasks, tasks_out = run("cold-tasks", model_pool="job", decode_in_actors=False)
    assert (tasks.files, tasks.images_error, tasks.joints) == (9, 1, 2 * 86)
    same_outputs(tasks_out)
    # a GPU pool's layout on CPUs: each actor decodes its first block, Ray Data's tasks the rest
    pool = start_pool(tiny_bundle, None, version, JobConfig(detector_actors=2, actor_cpus=0.5, decode_in_actors=False),
                      progress=lambda m: None)
    try:
        assert pool.describe()["decodes"] is False
        warm, warm_out = run("tasks")
        assert "on the warm model pool (2 actor(s))" in warm.format()
        assert (warm.files, warm.images_error, warm.joints) == (cold.files, 1, cold.joints) == (9, 1, 2 * 86)
        same_outputs(warm_out)
    finally:
        stop_pools()
    # the CPU default: the actors read and decode every file themselves
    pool = start_pool(tiny_bundle, None, version, JobConfig(detector_actors=2, actor_cpus=0.5), progress=lambda m: None)
    try:
        assert start_pool(tiny_bundle, None, version, JobConfig(), progress=lambda m: None).names == pool.names
        info = pool.describe()
        assert list(running_pools()) == [version] and info["total_cpus"] == 1.0 and info["decodes"] is True
        warm, warm_out = run("warm")
        assert "on the warm model pool (2 actor(s))" in warm.format() and warm.images_error == 1
        same_outputs(warm_out)

        # a pool actor whose process dies is restarted (models reloaded) and the next job completes
        pid = next(a["Pid"] for a in ray_state.actors().values()
                   if a["Name"] == pool.names[0] and a["State"] == "ALIVE")
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        again, again_out = run("again", model_pool="warm")
        assert again.joints == 2 * 86 and len(again_out["images"]) == 9
        assert any(a["Name"] == pool.names[0] and a["NumRestarts"] >= 1 for a in ray_state.actors().values())
    finally:
        stopped = stop_pools()
    assert sorted(stopped) == sorted(pool.names) and running_pools() == {}
    with pytest.raises(JobError, match="no warm model pool for model"):
        run("none", model_pool="warm")
    # a pool that cannot fit says so, and leaves nothing behind
    monkeypatch.setattr(model_pool, "START_TIMEOUT_S", 3.0)
    with pytest.raises(model_pool.PoolError, match="did not start within 3 s.*1 x 64 CPU"):
        start_pool(tiny_bundle, None, version, JobConfig(detector_actors=1, actor_cpus=64), progress=lambda m: None)
    assert running_pools() == {}


def test_warm_model_pool_outlives_the_job_that_started_it(ray_cluster, tiny_bundle, tmp_path):
    import subprocess

    write_archive(tmp_path / "archive", ["P1", "P2"])
    repo = Path(__file__).resolve().parent.parent

    def submit(*command: str) -> str:
        r = subprocess.run([ray_cluster.ray, "job", "submit", "--address", ray_cluster.address, "--working-dir",
                            str(repo), "--", "python", *command], env=ray_cluster.env, capture_output=True, text=True,
                           timeout=400)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    started = submit("jobs/model_pool.py", "start", "--models", tiny_bundle, "--actors", "2", "--actor-cpus", "0.5")
    try:
        assert "model pool for" in started
        listed = submit("jobs/model_pool.py", "list")
        assert "2 actor(s) on cpu, 0.5 CPU and 0 GPU each, decoding in the actors" in listed
        scored = submit("jobs/score_archive.py", "--input", str(tmp_path / "archive"), "--output",
                        str(tmp_path / "out"), "--models", tiny_bundle, "--model-pool", "warm")
        assert "8 ok, 0 in error; 2 patient(s), 172 joint scores" in scored
        assert "on the warm model pool (2 actor(s))" in scored
    finally:
        stopped = submit("jobs/model_pool.py", "stop")
    assert "stopped 2 model actor(s)" in stopped
    assert "no warm model pools" in submit("jobs/model_pool.py", "list")


def test_cli_errors_are_one_line(tiny_bundle, tmp_path, capsys, monkeypatch):
    from ra2batch.cli import main
    from ra2batch.job import pipeline

    assert main(["score", "--input", str(tmp_path)]) == 2
    assert "give both --input and --output" in capsys.readouterr().err
    # what the job is given and cannot use: exit 2, one line, before anything runs
    monkeypatch.setattr(pipeline, "DEMO_BUNDLE", tmp_path / "no-bundle")
    assert main(["score", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pass --models" in err and "ra2batch train" in err
    assert main(["score", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--models", str(tmp_path)]) == 2
    assert "no bundle.json; not a model bundle" in capsys.readouterr().err
    assert main(["score", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--models",
                 tiny_bundle]) == 2
    assert f"input {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    # settings that are not valid: each named, on one line, before anything starts
    assert main(["score", "--detector-actors", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("ra2batch score: error: invalid job settings: detector_actors: Input "
                                               "should be greater than or equal to 1")
    assert main(["score", "--decode-in-actors", "--no-fuse-models"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decode_in_actors needs the fused model actors" in err
    # config files that do not parse, or would construct objects: one line naming the file and the place
    (tmp_path / "bad.yaml").write_text("detector_batch_size: [1,\n")
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    (tmp_path / "bad.json").write_text('{"tta": true,}')
    for name, fragment in (("bad.yaml", "not valid YAML at line 2"), ("evil.yaml", "could not determine a constructor"),
                           ("bad.json", "not valid JSON")):
        assert main(["score", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"ra2batch score: error: config {tmp_path / name}: ") and \
            fragment in err, err
    with pytest.raises(SystemExit):  # argparse: usage, then the flag by its own name
        main(["pool", "start", "--actors", "0"])
    assert capsys.readouterr().err.strip().endswith("ra2batch pool: error: argument --actors: must be at least 1, got 0")


def test_outputs_that_cannot_be_used_are_refused_before_scoring(tiny_bundle, tmp_path, capsys):
    from ra2batch.cli import main

    write_archive(tmp_path / "archive", ["A1"])
    (tmp_path / "taken").write_text("a file, not a folder")
    (tmp_path / "locked").mkdir(mode=0o500)
    cases = {str(tmp_path / "taken"): "is a file", str(tmp_path / "archive" / "out"): "is inside --input",
             str(tmp_path / "archive"): "is inside --input"}
    if os.geteuid() != 0:  # root may write anywhere
        cases[str(tmp_path / "locked" / "out")] = "permission denied"
    for output, fragment in cases.items():
        assert main(["score", "--input", str(tmp_path / "archive"), "--output", output, "--models", tiny_bundle]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and fragment in err, err
    assert not (tmp_path / "archive" / "out").exists()


def _demo_bundle_or_skip():
    from ra2batch.job.pipeline import DEMO_BUNDLE

    if not (DEMO_BUNDLE / "bundle.json").is_file():
        pytest.skip("needs the trained demo bundle (ra2batch/demo_bundle), which is not installed")


def test_predictions_beat_the_random_baseline_on_a_held_out_cohort(ray_local, tmp_path):
    import json
    import subprocess
    import sys

    from ra2batch.job import score_archive
    from ra2batch.synth import generate_cohort

    _demo_bundle_or_skip()
    # 16 patients: with fewer, one draw of the random baseline is too noisy to compare against
    generate_cohort(str(tmp_path / "cohort"), patients=16, seed=2024, scale=0.4, preview=False)
    score_archive(str(tmp_path / "cohort" / "images"), str(tmp_path / "out"))
    r = subprocess.run([sys.executable, "-m", "ra2batch", "evaluate", "--predictions",
                        str(tmp_path / "out" / "predictions.csv"), "--truth", str(tmp_path / "cohort" / "truth.csv"),
                        "--json"], capture_output=True, text=True, check=True)
    scores = json.loads(r.stdout)
    assert scores["n_patients"] == 16
    for k in ("sc1", "sc2", "sc3"):
        assert scores[k] < scores[f"baseline_{k}"], scores


def test_no_arguments_scores_the_demo_archive(ray_local, tmp_path, monkeypatch, capsys):
    from ra2batch.cli import main

    _demo_bundle_or_skip()
    monkeypatch.chdir(tmp_path)
    assert main(["score"]) == 0
    printed = capsys.readouterr().out
    assert "32 ok, 0 in error; 8 patient(s)" in printed and "ra2batch evaluate --predictions ra2-output" in printed
    assert (tmp_path / "ra2-output" / "patients" / "_delta_log").is_dir()
    from ra2batch.job import JobConfig

    assert_same_rows_as_one_process("ra2-demo-archive/images", "ra2-output", None, JobConfig())
