import pytest

from ra2batch import catalogue as cat


def test_column_counts_and_types():
    assert len(cat.COLUMNS) == 86 and len(set(cat.COLUMNS)) == 86
    assert len(cat.EROSION) == 44 and all("_E__" in c for c in cat.EROSION)
    assert len(cat.NARROWING) == 42 and all("_J__" in c for c in cat.NARROWING)
    per_limb = {(limb, d): len(cat.joints_for(limb=limb, damage=d)) for limb in cat.LIMBS for d in "EJ"}
    assert per_limb == {("LH", "E"): 16, ("RH", "E"): 16, ("LF", "E"): 6, ("RF", "E"): 6,
                        ("LH", "J"): 15, ("RH", "J"): 15, ("LF", "J"): 6, ("RF", "J"): 6}


def test_ranges():
    for j in cat.JOINTS:
        if j.damage == "J":
            assert j.max_score == 4, j.column
        elif j.kind == "hand":
            assert j.max_score == 5, j.column
        else:
            assert j.max_score == 10, j.column
    assert cat.max_total() == 448


def test_template_order_is_published_layout():
    t = cat.TEMPLATE_ORDER
    assert t[:4] == ("Patient_ID", "Overall_Tol", "Overall_erosion", "Overall_narrowing")
    assert sorted(t[4:]) == sorted(cat.COLUMNS)
    assert t[4:20] == tuple(f"LH_{s}" for s in [
        "mcp_E__ip", "pip_E__2", "pip_E__3", "pip_E__4", "pip_E__5", "mcp_E__1", "mcp_E__2", "mcp_E__3",
        "mcp_E__4", "mcp_E__5", "wrist_E__mc1", "wrist_E__mul", "wrist_E__nav", "wrist_E__lunate",
        "wrist_E__radius", "wrist_E__ulna"])
    # the feet narrowing block is shuffled in the published template
    assert t[-12:] == ("RF_mtp_J__ip", "LF_mtp_J__1", "LF_mtp_J__2", "LF_mtp_J__3", "LF_mtp_J__4",
                       "LF_mtp_J__5", "LF_mtp_J__ip", "RF_mtp_J__1", "RF_mtp_J__2", "RF_mtp_J__3",
                       "RF_mtp_J__4", "RF_mtp_J__5")


@pytest.mark.parametrize("crop,damage,columns", [
    ("fin_1", "E", ["LH_pip_E__2", "LH_mcp_E__2"]),
    ("fin_4", "J", ["LH_pip_J__5", "LH_mcp_J__5"]),
    ("fin_ip", "E", ["LH_mcp_E__ip", "LH_mcp_E__1"]),
    ("fin_ip", "J", ["LH_mcp_J__1"]),
    ("wrist", "J", ["LH_wrist_J__cmc3", "LH_wrist_J__cmc4", "LH_wrist_J__cmc5", "LH_wrist_J__mna",
                    "LH_wrist_J__capnlun", "LH_wrist_J__radcar"]),
])
def test_crop_to_column_mapping_hand(crop, damage, columns):
    got = sorted(cat.joints_for(limb="LH", crop=crop, damage=damage), key=lambda j: j.slot)
    assert [j.column for j in got] == columns
    assert [j.slot for j in got] == list(range(len(columns)))


def test_crop_to_column_mapping_foot():
    assert [cat.column_for("RF", "fin_ip", "E", s) for s in (0, 1)] == ["RF_mtp_E__ip", "RF_mtp_E__1"]
    assert [cat.column_for("RF", "fin_ip", "J", s) for s in (0, 1)] == ["RF_mtp_J__ip", "RF_mtp_J__1"]
    assert cat.column_for("LF", "fin_3", "J", 0) == "LF_mtp_J__4"
    with pytest.raises(KeyError):
        cat.column_for("LF", "wrist", "E", 0)


def test_totals_and_validation():
    row = {c: 0 for c in cat.COLUMNS}
    row.update({"LH_mcp_E__2": 3, "RF_mtp_E__5": 10, "LF_mtp_J__ip": 2})
    t = cat.totals(row)
    assert t == {"Overall_Tol": 15.0, "Overall_erosion": 13.0, "Overall_narrowing": 2.0}
    assert cat.validate_row({**row, **t}) == []
    bad = {**row, **t, "LH_mcp_J__1": 5, "Overall_Tol": 1}
    problems = cat.validate_row(bad)
    assert problems == ["LH_mcp_J__1: 5 outside 0..4"]
    assert cat.validate_row({**row, "Overall_Tol": 99}) == ["Overall_Tol is 99 but its joints sum to 15"]
    row.pop("RH_wrist_E__nav")
    assert cat.validate_row(row) == ["missing column RH_wrist_E__nav"]
