"""Per-patient assembly: missing joints stay NaN in their own columns, duplicates and fills are stated."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ra2batch import catalogue
from ra2batch.job.assemble import assemble_patients, choose_images, predictions, with_fill_flags

MEDIANS = {c: 0.5 for c in catalogue.COLUMNS}


def _images(*rows, header_limbs=None):
    df = pd.DataFrame(rows, columns=["path", "Patient_ID", "visit", "limb", "status"])
    df["header_limb"] = header_limbs or [None] * len(df)
    df["chosen"], messages = choose_images(df)
    return df, messages


def _joints(path, pid, limb, skip_crops=(), value=1.0, visit=None):
    """Joint rows of one radiograph as the model stages emit them, minus the crop classes ``skip_crops``."""
    rows = [(pid, visit, limb, path, j.column, value, j.crop) for j in catalogue.joints_for(limb=limb)
            if j.crop not in skip_crops]
    return pd.DataFrame(rows, columns=["Patient_ID", "visit", "limb", "path", "joint", "score", "crop_class"])


def test_the_first_readable_duplicate_is_chosen_and_the_choice_is_stated():
    images, messages = _images(("/a/P1-LH.jpg", "P1", None, "LH", "error"), ("/b/P1-LH.jpg", "P1", None, "LH", "ok"),
                               ("/c/P1-LH.jpg", "P1", None, "LH", "ok"), ("/x.jpg", None, None, None, "error"))
    assert images["chosen"].tolist() == [False, True, False, False]
    assert len(messages) == 1 and "3 LH files: used /b/P1-LH.jpg" in messages[0] and "/c/P1-LH.jpg" in messages[0]


def test_undetected_crop_leaves_its_own_joints_nan_and_flags_them():
    images, _ = _images(*[(f"/{limb}.jpg", "P1", None, limb, "ok") for limb in catalogue.LIMBS])
    joints = pd.concat([_joints(f"/{limb}.jpg", "P1", limb, skip_crops=("fin_2",) if limb == "LH" else ())
                        for limb in catalogue.LIMBS])
    (row,) = assemble_patients(images, joints).to_dict("records")
    lost = {j.column for j in catalogue.joints_for(limb="LH", crop="fin_2")}
    assert lost == {"LH_pip_E__3", "LH_mcp_E__3", "LH_pip_J__3", "LH_mcp_J__3"}
    assert all(np.isnan(row[c]) for c in lost)
    assert all(row[c] == 1.0 for c in catalogue.COLUMNS if c not in lost)
    assert row["Overall_Tol"] == len(catalogue.COLUMNS) - len(lost)
    assert row["qc_flags"] == ["not_detected:LH:fin_2", "partial_totals"]
    assert (row["limbs"], row["n_images"]) == ("LF,LH,RF,RH", 4)


def test_missing_limb_and_failed_file_are_flagged_and_totals_partial():
    images, _ = _images(("/LH.jpg", "P2", None, "LH", "ok"), ("/RH.jpg", "P2", None, "RH", "error"),
                        ("/a/LF.jpg", "P2", None, "LF", "ok"), ("/b/LF.jpg", "P2", None, "LF", "ok"))
    joints = pd.concat([_joints("/LH.jpg", "P2", "LH", value=2.0), _joints("/a/LF.jpg", "P2", "LF"),
                        _joints("/b/LF.jpg", "P2", "LF", value=9.0)])
    (row,) = assemble_patients(images, joints).to_dict("records")
    assert row["qc_flags"] == ["missing_limb:RH", "image_error:RH", "duplicate_image:LF", "missing_limb:RF",
                               "partial_totals"]
    assert row["LF_mtp_E__1"] == 1.0  # from the chosen file, not the duplicate
    assert np.isnan(row["RH_mcp_E__1"]) and np.isnan(row["RF_mtp_J__ip"])
    assert row["Overall_erosion"] == 2.0 * 16 + 6 and row["limbs"] == "LF,LH"


def test_a_dicom_header_naming_another_limb_is_flagged_and_the_name_s_limb_scored():
    """P3's RH file says LH in its header: scored as RH, flagged; its LH file came from the header (named
    without a limb: header and limb agree, no flag); a file whose limb nothing gives is ``limb_unknown``."""
    images, _ = _images(("/P3.dcm", "P3", None, "LH", "ok"), ("/P3-RH.dcm", "P3", None, "RH", "ok"),
                        ("/P3-LF.jpg", "P3", None, "LF", "ok"), ("/P3-V1.dcm", "P3", "V1", None, "error"),
                        ("/P3-RF.dcm", "P3", None, "RF", "rejected"),
                        header_limbs=["LH", "LH", None, None, "LH"])
    joints = pd.concat([_joints("/P3.dcm", "P3", "LH"), _joints("/P3-RH.dcm", "P3", "RH"),
                        _joints("/P3-LF.jpg", "P3", "LF")])
    no_visit, v1 = assemble_patients(images, joints).to_dict("records")
    assert no_visit["qc_flags"] == ["limb_header_mismatch:RH", "missing_limb:RF", "no_limb_found:RF",
                                    "limb_header_mismatch:RF", "partial_totals"]
    assert no_visit["limbs"] == "LF,LH,RH" and no_visit["RH_mcp_E__1"] == 1.0
    assert v1["visit"] == "V1" and v1["n_images"] == 1
    assert v1["qc_flags"] == [f"missing_limb:{limb}" for limb in catalogue.LIMBS] + ["limb_unknown", "partial_totals"]


def test_predictions_fill_from_the_other_side_then_the_median_and_say_so():
    images, _ = _images(("/LH.jpg", "P3", None, "LH", "ok"))
    patients = assemble_patients(images, _joints("/LH.jpg", "P3", "LH", value=3.0))
    pred, patients = predictions(patients, MEDIANS, visits=False), with_fill_flags(patients, MEDIANS)
    assert list(pred.columns) == [*catalogue.TEMPLATE_ORDER, "qc"]
    row = pred.iloc[0]
    assert row["qc"] == f"filled:{len(catalogue.COLUMNS) - len(catalogue.joints_for(limb='LH'))}"  # all but LH's
    assert row["RH_wrist_E__lunate"] == 3.0 and row["LF_mtp_E__ip"] == 0.5
    assert not pred.isna().any().any()
    assert catalogue.validate_row(row.to_dict()) == []
    flags = patients.iloc[0]["qc_flags"]
    assert "filled:RH_wrist_E__lunate" in flags and "filled:LF_mtp_E__ip" in flags
    assert "filled:LH_mcp_E__1" not in flags
    assert np.isnan(patients.iloc[0]["RH_wrist_E__lunate"])  # the patients table keeps the truth: not scored


def test_visits_are_separate_patient_rows_and_a_predictions_column():
    images, _ = _images(("/P4-V1-LH.jpg", "P4", "V1", "LH", "ok"), ("/P4-V2-LH.jpg", "P4", "V2", "LH", "ok"))
    joints = pd.concat([_joints("/P4-V1-LH.jpg", "P4", "LH", value=1.0, visit="V1"),
                        _joints("/P4-V2-LH.jpg", "P4", "LH", value=2.0, visit="V2")])
    patients = assemble_patients(images, joints)
    assert patients[["Patient_ID", "visit", "LH_mcp_E__1"]].values.tolist() == [["P4", "V1", 1.0], ["P4", "V2", 2.0]]
    pred = predictions(patients, MEDIANS, visits=True)
    assert list(pred.columns[:2]) == ["Patient_ID", "visit"]


def test_joints_flagged_by_test_time_augmentation_are_listed_for_review():
    images, _ = _images(*[(f"/{limb}.jpg", "P3", None, limb, "ok") for limb in catalogue.LIMBS])
    joints = pd.concat([_joints(f"/{limb}.jpg", "P3", limb) for limb in catalogue.LIMBS], ignore_index=True)
    joints["review"] = joints["joint"].isin(["RF_mtp_E__3", "LH_wrist_J__mna"])
    (row,) = assemble_patients(images, joints).to_dict("records")
    assert row["qc_flags"] == ["review:LH_wrist_J__mna", "review:RF_mtp_E__3"]


def test_predictions_quote_text_a_spreadsheet_would_run(tmp_path):
    from ra2batch.evaluate import read_table

    images, _ = _images(("/a.jpg", "=HYPERLINK(1)", None, "LH", "ok"), ("/b.jpg", "P5", None, "LH", "ok"),
                        ("/c.jpg", "-7", None, "LH", "ok"))
    joints = pd.concat([_joints("/a.jpg", "=HYPERLINK(1)", "LH"), _joints("/b.jpg", "P5", "LH"),
                        _joints("/c.jpg", "-7", "LH")])
    pred = predictions(assemble_patients(images, joints), MEDIANS, visits=False)
    assert sorted(pred["Patient_ID"]) == ["'-7", "'=HYPERLINK(1)", "P5"]
    pred.to_csv(tmp_path / "p.csv", index=False)
    assert sorted(read_table(str(tmp_path / "p.csv"), "predictions")["Patient_ID"]) == ["-7", "=HYPERLINK(1)", "P5"]
