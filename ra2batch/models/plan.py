"""The model plan: which joint model scores which detector crop, as one declarative table.

This is DeepRA's Table 2 plus its crop-to-column mapping. Each :class:`JointGroup` is one joint model:
the (limb kind, detector class) crops that feed it, its damage type, crop shape, timm backbone and
number of outputs. Output ``k`` of a group on a crop means ``catalogue.column_for(limb, crop, damage, k)``
(slot 0 = the distal joint), so left and right limbs share a model and every column comes from the
catalogue. The plan is a frozen pydantic model so it is saved inside every bundle's ``bundle.json``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ra2batch import catalogue

Kind = Literal["hand", "foot"]
Damage = Literal["E", "J"]

_FINGERS = ("fin_1", "fin_2", "fin_3", "fin_4")


class JointGroup(BaseModel):
    """One joint model: the crops it scores and how (``crop_shape`` pixels, ``n_outputs`` scores).

    Crops are square (``crop_size``) unless ``crop_width`` is set: a tall ``crop_size x crop_width``
    crop spends its pixels on one finger or toe instead of its neighbours (see ``models.crops``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    damage: Damage
    members: tuple[tuple[Kind, str], ...] = Field(min_length=1)
    n_outputs: int = Field(ge=1)
    crop_size: int = Field(ge=32, description="crop height in pixels (and width unless crop_width is set)")
    crop_width: int | None = Field(None, ge=32, description="crop width in pixels; None: square crops")
    backbone: str

    @property
    def crop_shape(self) -> tuple[int, int]:
        """``(height, width)`` of this group's crops, pixels."""
        return self.crop_size, self.crop_width or self.crop_size

    def feeds(self, kind: str, crop: str) -> bool:
        return (kind, crop) in self.members

    def columns(self, limb: str, crop: str) -> tuple[str, ...]:
        """RA2 columns of outputs ``0..n_outputs-1`` for a ``crop`` of ``limb`` (e.g. ``"RH"``, ``"fin_2"``)."""
        kind = catalogue.limb_kind(limb)
        if not self.feeds(kind, crop):
            raise ValueError(f"group {self.name} does not score {kind} {crop} crops")
        return tuple(catalogue.column_for(limb, crop, self.damage, s) for s in range(self.n_outputs))

    @model_validator(mode="after")
    def _members_match_outputs(self) -> JointGroup:
        for kind, crop in self.members:
            if crop not in catalogue.detector_classes(kind):
                raise ValueError(f"group {self.name}: {crop!r} is not a {kind} detector class")
            limb = "LH" if kind == "hand" else "LF"
            n = len(catalogue.joints_for(limb=limb, crop=crop, damage=self.damage))
            if n != self.n_outputs:
                raise ValueError(
                    f"group {self.name}: {kind} {crop} has {n} {self.damage} columns but the group has "
                    f"{self.n_outputs} outputs"
                )
        return self


class ModelPlan(BaseModel):
    """All joint groups; validated to cover each of the 86 RA2 columns exactly once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: tuple[JointGroup, ...]

    def group(self, name: str) -> JointGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no joint group {name!r}; the plan has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def groups_for(self, kind: str, crop: str) -> tuple[JointGroup, ...]:
        """The groups that a ``crop`` class of a limb ``kind`` feeds (empty if none)."""
        return tuple(g for g in self.groups if g.feeds(kind, crop))

    def column_owners(self) -> dict[str, tuple[str, str, int]]:
        """Every column the plan predicts -> ``(group name, crop class, output index)``."""
        out: dict[str, tuple[str, str, int]] = {}
        for g in self.groups:
            for kind, crop in g.members:
                limbs = catalogue.HANDS if kind == "hand" else catalogue.FEET
                for limb in limbs:
                    for i, col in enumerate(g.columns(limb, crop)):
                        out[col] = (g.name, crop, i)
        return out

    def variant(
        self,
        backbones: str | Mapping[str, str] | None = None,
        crop_sizes: int | Mapping[str, int] | None = None,
        crop_widths: int | Mapping[str, int] | None = None,
    ) -> ModelPlan:
        """The same plan with other backbones, crop sizes (heights) and/or crop widths (one value for
        all, or by group name). A new crop size alone keeps crops square."""

        def pick(value, name: str, current):
            if value is None:
                return current
            if isinstance(value, Mapping):
                return value.get(name, current)
            return value

        for value in (backbones, crop_sizes, crop_widths):
            if isinstance(value, Mapping) and (unknown := set(value) - set(self.names)):
                raise KeyError(f"no joint group(s) {', '.join(sorted(unknown))}; the plan has {', '.join(self.names)}")
        return ModelPlan(groups=tuple(
            JointGroup.model_validate({
                **g.model_dump(),
                "backbone": pick(backbones, g.name, g.backbone),
                "crop_size": (size := pick(crop_sizes, g.name, g.crop_size)),
                "crop_width": pick(crop_widths, g.name, g.crop_width if size == g.crop_size else None)})
            for g in self.groups
        ))

    @model_validator(mode="after")
    def _covers_each_column_once(self) -> ModelPlan:
        dupes = [n for n, c in Counter(self.names).items() if c > 1]
        if dupes:
            raise ValueError(f"duplicate joint group names: {', '.join(dupes)}")
        seen: Counter[str] = Counter()
        for g in self.groups:
            for kind, crop in g.members:
                for limb in catalogue.HANDS if kind == "hand" else catalogue.FEET:
                    seen.update(g.columns(limb, crop))
        twice = sorted(c for c, n in seen.items() if n > 1)
        missing = [c for c in catalogue.COLUMNS if c not in seen]
        if twice:
            raise ValueError(f"columns predicted by more than one group: {', '.join(twice)}")
        if missing:
            raise ValueError(f"columns no group predicts: {', '.join(missing)}")
        return self


def _hand(*crops: str) -> tuple[tuple[Kind, str], ...]:
    return tuple(("hand", c) for c in crops)


def _foot(*crops: str) -> tuple[tuple[Kind, str], ...]:
    return tuple(("foot", c) for c in crops)


#: DeepRA's six joint models (Table 2). One row per model; edit a backbone or crop size here.
PLAN = ModelPlan(groups=(
    JointGroup(name="erosion_fingers", damage="E", members=_hand(*_FINGERS, "fin_ip") + _foot("fin_ip"),
               n_outputs=2, crop_size=256, backbone="efficientnet_b3"),
    JointGroup(name="narrowing_fingers", damage="J", members=_hand(*_FINGERS) + _foot("fin_ip"),
               n_outputs=2, crop_size=256, backbone="efficientnet_b3"),
    JointGroup(name="narrowing_toes", damage="J", members=_foot(*_FINGERS) + _hand("fin_ip"),
               n_outputs=1, crop_size=256, backbone="efficientnet_b4"),
    JointGroup(name="erosion_toes", damage="E", members=_foot(*_FINGERS),
               n_outputs=1, crop_size=256, backbone="efficientnet_b4"),
    JointGroup(name="wrist_erosion", damage="E", members=_hand("wrist"),
               n_outputs=6, crop_size=300, backbone="efficientnet_b5"),
    JointGroup(name="wrist_narrowing", damage="J", members=_hand("wrist"),
               n_outputs=6, crop_size=300, backbone="efficientnet_b5"),
))
