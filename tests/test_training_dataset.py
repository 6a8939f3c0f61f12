"""Training datasets follow the scoring job's naming (one convention), with visits and partial annotations.

No Ray and no pixels: indexing reads names, labels and annotations only, so the images here are empty files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ra2batch import catalogue
from ra2batch.imaging.readers import SUPPORTED_SUFFIXES
from ra2batch.job.inputs import RADIOGRAPH_SUFFIXES
from ra2batch.synth.voc import voc_xml
from ra2batch.training.data import box_sources
from ra2batch.training.dataset import DatasetError, index_dataset, parse_name, scorer_table, split_patients
from ra2batch.training.pipeline import detector_images, joint_boxes_mode

WRIST = {"wrist": (10.0, 10.0, 50.0, 60.0)}
TOE = {"fin_1": (10.0, 10.0, 50.0, 60.0)}


def _dataset(root: Path, images: list[str], labels: list[dict], annotated: tuple[str, ...] = ()) -> str:
    """An RA2-layout dataset: empty image files, a training.csv of ``labels`` rows (Patient_ID, optional
    visit, every joint the row's ``score``), and an annotation for each of ``annotated``."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in images:
        (root / "images" / name).write_bytes(b"")
    for name in annotated:
        stem = name.rsplit(".", 1)[0]
        boxes = WRIST if catalogue.limb_kind(parse_name(name)[2]) == "hand" else TOE
        (root / "annotations" / f"{stem}.xml").write_text(voc_xml(name, 100, 100, boxes))
    rows = [{catalogue.ID_COLUMN: r[catalogue.ID_COLUMN], **({"visit": r["visit"]} if "visit" in r else {}),
             **dict.fromkeys(catalogue.COLUMNS, r.get("score", 0.0))} for r in labels]
    pd.DataFrame(rows).to_csv(root / "training.csv", index=False)
    return str(root)


def test_one_suffix_list_for_scoring_and_training():
    assert RADIOGRAPH_SUFFIXES == SUPPORTED_SUFFIXES and ".dicom" in RADIOGRAPH_SUFFIXES


@pytest.mark.parametrize("name, expected", [
    ("UAB001-LH.jpg", ("UAB001", None, "LH")),
    ("UAB001-rf.DICOM", ("UAB001", None, "RF")),
    ("UAB001-V2-rh.png", ("UAB001", "V2", "RH")),
    ("UAB-001-V2-LF.jpeg", ("UAB-001", "V2", "LF")),
    ("UAB-001-RF.jpg", ("UAB", "001", "RF")),  # the last two dashes set off visit and limb, as in scoring
])
def test_training_reads_names_by_the_scoring_jobs_rule(name, expected):
    assert parse_name(name) == expected


def test_misnamed_images_and_dicoms_without_a_limb_are_refused_with_the_reason():
    with pytest.raises(DatasetError, match=r"'UAB001_LH.jpg' gives no patient and limb \(expected \{Patient_ID\}"):
        parse_name("UAB001_LH.jpg")
    # the scoring job takes such a DICOM's limb from its header; training needs it before decoding
    with pytest.raises(DatasetError, match="'UAB001-V2.dcm' gives no limb: .*picks the detector by the limb"):
        parse_name("UAB001-V2.dcm")


def test_each_patient_visit_is_a_sample_labelled_by_its_row(tmp_path):
    uri = _dataset(tmp_path / "d", [
        "P1-V1-LH.jpg", "P1-V2-lh.dicom", "P1-V2-RF.png",  # two visits of P1, limbs in any case
        "P2-LH.jpg",                                      # P2 without visits: the empty visit cell's row
        "P3-V1-LH.jpg",                                   # no row for P3: left out, noted
        "notes.txt",                                      # not a radiograph: not listed
    ], [{"Patient_ID": "P1", "visit": "V1", "score": 1.0}, {"Patient_ID": "P1", "visit": "V2", "score": 2.0},
        {"Patient_ID": "P2", "visit": "", "score": 3.0}, {"Patient_ID": "P1", "visit": "V3", "score": 4.0}],
        annotated=("P1-V1-LH.jpg",))
    index = index_dataset(uri)
    assert [(r.name, r.patient, r.visit, r.limb) for r in index.images] == [
        ("P1-V1-LH.jpg", "P1", "V1", "LH"), ("P1-V2-RF.png", "P1", "V2", "RF"), ("P1-V2-lh.dicom", "P1", "V2", "LH"),
        ("P2-LH.jpg", "P2", None, "LH")]
    assert index.has_visits and index.patients() == ["P1", "P2"]
    assert [bool(r.boxes) for r in index.images] == [True, False, False, False]
    assert [index.targets(r)[catalogue.COLUMNS[0]] for r in index.images] == [1.0, 2.0, 2.0, 3.0]
    assert len(index.notes) == 1 and "1 image(s) without a training.csv row" in index.notes[0]
    # the labels of the samples that have images (P1's visit V3 has none), as the scorer takes them
    samples = scorer_table(index.sample_labels(["P1", "P2"]))
    assert samples[catalogue.ID_COLUMN].tolist() == ["P1 (visit V1)", "P1 (visit V2)", "P2"]
    assert "visit" not in samples.columns
    # patients, not visits, are split: both of P1's visits land on the same side
    train, val = split_patients(index.patients(), 0.5, seed=0)
    assert {r.patient for r in index.select(train)}.isdisjoint({r.patient for r in index.select(val)})


def test_without_a_visit_column_images_named_with_a_visit_are_left_out(tmp_path):
    uri = _dataset(tmp_path / "d", ["P1-LH.jpg", "P1-V2-LH.jpg", "P2-RF.jpg"],
                   [{"Patient_ID": "P1"}, {"Patient_ID": "P2"}])
    index = index_dataset(uri)
    assert [r.name for r in index.images] == ["P1-LH.jpg", "P2-RF.jpg"] and not index.has_visits
    assert "training.csv has no visit column: add one" in index.notes[0]
    only_visits = _dataset(tmp_path / "v", ["P1-V2-LH.jpg"], [{"Patient_ID": "P1"}])
    with pytest.raises(DatasetError, match="no image .* belongs to a patient .*add one to label each patient visit"):
        index_dataset(only_visits)


def test_a_dashed_patient_id_without_a_visit_is_explained(tmp_path):
    index = index_dataset(_dataset(tmp_path / "d", ["UAB-001-LH.jpg", "P2-LH.jpg"],
                                   [{"Patient_ID": "UAB-001"}, {"Patient_ID": "P2"}]))
    assert "reads as patient UAB, visit 001" in index.notes[0]


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match=r"duplicate Patient_ID 'P1 \(visit V1\)'"):
        index_dataset(_dataset(tmp_path / "a", ["P1-V1-LH.jpg"], [{"Patient_ID": "P1", "visit": "V1"}] * 2))
    with pytest.raises(DatasetError, match="P1-V1.dcm' gives no limb"):
        index_dataset(_dataset(tmp_path / "b", ["P1-V1.dcm"], [{"Patient_ID": "P1", "visit": "V1"}]))
    with pytest.raises(DatasetError, match="two images for P1 visit V1 LH: P1-V1-LH.jpg and P1-V1-lh.png"):
        index_dataset(_dataset(tmp_path / "c", ["P1-V1-LH.jpg", "P1-V1-lh.png"], [{"Patient_ID": "P1", "visit": "V1"}]))


def test_partial_annotations_train_detectors_on_the_annotated_and_joint_models_on_all(tmp_path):
    names = [f"P{p}-{limb}.jpg" for p in (1, 2) for limb in catalogue.LIMBS]
    annotated = tuple(n for n in names if "-L" in n)  # the left limbs: half the radiographs
    index = index_dataset(_dataset(tmp_path / "d", names, [{"Patient_ID": "P1"}, {"Patient_ID": "P2"}], annotated))
    assert detector_images(index, ["P1"], ["P2"]) == {"hand": {"train": 1, "val": 1, "unannotated": 2},
                                                     "foot": {"train": 1, "val": 1, "unannotated": 2}}
    # auto: annotations where a radiograph has them, the trained detectors' boxes elsewhere
    assert box_sources(index.images, "auto") == {n: "annotated" if n in annotated else "detected" for n in names}
    assert box_sources(index.images, "annotated") == {n: "annotated" if n in annotated else None for n in names}
    assert set(box_sources(index.images, "detected").values()) == {"detected"}
    # the preset's default (annotated) becomes auto when annotations are partial; --joint-boxes always wins
    mode, why = joint_boxes_mode(None, "annotated", index)
    assert mode == "auto" and "4 of 8 radiographs have none" in why
    assert joint_boxes_mode("annotated", "annotated", index)[0] == "annotated"
    assert joint_boxes_mode(None, "detected", index)[0] == "detected"
    full = index_dataset(_dataset(tmp_path / "f", names, [{"Patient_ID": "P1"}, {"Patient_ID": "P2"}], tuple(names)))
    assert joint_boxes_mode(None, "annotated", full)[0] == "annotated"
