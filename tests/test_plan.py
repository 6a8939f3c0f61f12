"""The model plan: DeepRA's Table 2 and its crop-to-column mapping, derived from the catalogue."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from ra2batch import catalogue
from ra2batch.models.plan import PLAN, JointGroup, ModelPlan


def test_plan_predicts_each_of_the_86_columns_exactly_once_over_both_sides():
    seen: Counter[str] = Counter()
    for g in PLAN.groups:
        for kind, crop in g.members:
            for limb in catalogue.HANDS if kind == "hand" else catalogue.FEET:
                seen.update(g.columns(limb, crop))
    assert set(seen) == set(catalogue.COLUMNS)
    assert set(seen.values()) == {1}
    assert set(PLAN.column_owners()) == set(catalogue.COLUMNS)


def test_plan_is_the_papers_table_2():
    rows = {g.name: (g.damage, g.n_outputs, g.backbone, g.crop_size) for g in PLAN.groups}
    assert rows == {
        "erosion_fingers": ("E", 2, "efficientnet_b3", 256),
        "narrowing_fingers": ("J", 2, "efficientnet_b3", 256),
        "narrowing_toes": ("J", 1, "efficientnet_b4", 256),
        "erosion_toes": ("E", 1, "efficientnet_b4", 256),
        "wrist_erosion": ("E", 6, "efficientnet_b5", 300),
        "wrist_narrowing": ("J", 6, "efficientnet_b5", 300),
    }
    assert PLAN.group("erosion_fingers").feeds("foot", "fin_ip")  # the big toe joins the hand fingers
    assert PLAN.group("narrowing_toes").feeds("hand", "fin_ip")  # the thumb joins the toes


@pytest.mark.parametrize("limb, crop, group, columns", [
    ("RH", "fin_2", "erosion_fingers", ("RH_pip_E__3", "RH_mcp_E__3")),
    ("LH", "fin_ip", "erosion_fingers", ("LH_mcp_E__ip", "LH_mcp_E__1")),
    ("LH", "fin_ip", "narrowing_toes", ("LH_mcp_J__1",)),
    ("LF", "fin_ip", "narrowing_fingers", ("LF_mtp_J__ip", "LF_mtp_J__1")),
    ("RF", "fin_4", "erosion_toes", ("RF_mtp_E__5",)),
    ("RH", "wrist", "wrist_narrowing", tuple(f"RH_wrist_J__{s}" for s in catalogue.WRIST_NARROWING_SITES)),
])
def test_output_k_of_a_crop_is_the_catalogue_column_of_slot_k(limb, crop, group, columns):
    assert PLAN.group(group).columns(limb, crop) == columns


def test_groups_for_a_crop_class():
    assert [g.name for g in PLAN.groups_for("hand", "fin_ip")] == ["erosion_fingers", "narrowing_toes"]
    assert [g.name for g in PLAN.groups_for("hand", "wrist")] == ["wrist_erosion", "wrist_narrowing"]
    assert PLAN.groups_for("foot", "wrist") == ()


def test_columns_of_a_crop_the_group_does_not_score_is_an_error():
    with pytest.raises(ValueError, match="erosion_toes does not score hand fin_1"):
        PLAN.group("erosion_toes").columns("LH", "fin_1")


def test_variant_changes_only_what_it_names():
    tiny = PLAN.variant(backbones="test_efficientnet", crop_sizes={"wrist_erosion": 128, "wrist_narrowing": 128})
    assert {g.backbone for g in tiny.groups} == {"test_efficientnet"}
    assert tiny.group("wrist_erosion").crop_size == 128
    assert tiny.group("erosion_fingers").crop_size == 256
    assert [g.members for g in tiny.groups] == [g.members for g in PLAN.groups]
    with pytest.raises(KeyError, match="no joint group"):
        PLAN.variant(crop_sizes={"wrists": 96})


def test_variant_sets_tall_crops_and_a_new_size_alone_makes_them_square_again():
    tall = PLAN.variant(crop_sizes={"erosion_fingers": 160}, crop_widths={"erosion_fingers": 64})
    assert tall.group("erosion_fingers").crop_shape == (160, 64)
    assert tall.group("erosion_toes").crop_shape == (256, 256)
    assert tall.variant(backbones="test_efficientnet").group("erosion_fingers").crop_shape == (160, 64)
    assert tall.variant(crop_sizes=96).group("erosion_fingers").crop_shape == (96, 96)
    assert ModelPlan.model_validate_json(tall.model_dump_json()) == tall
    with pytest.raises(ValidationError, match="greater than or equal to 32"):
        PLAN.variant(crop_widths=8)


def test_plan_round_trips_through_json():
    assert ModelPlan.model_validate_json(PLAN.model_dump_json()) == PLAN


def test_group_whose_outputs_do_not_match_its_members_is_rejected():
    with pytest.raises(ValidationError, match="hand fin_ip has 2 E columns but the group has 1 outputs"):
        JointGroup(name="bad", damage="E", members=(("hand", "fin_ip"),), n_outputs=1, crop_size=64, backbone="x")


def test_plan_that_misses_or_repeats_columns_is_rejected():
    groups = PLAN.groups
    with pytest.raises(ValidationError, match="columns no group predicts: LF_mtp_E__2"):
        ModelPlan(groups=tuple(g for g in groups if g.name != "erosion_toes"))
    twin = groups[3].model_copy(update={"name": "erosion_toes_again"})
    with pytest.raises(ValidationError, match="more than one group"):
        ModelPlan(groups=(*groups, twin))
