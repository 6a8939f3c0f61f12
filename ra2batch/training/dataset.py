"""An RA2-layout training dataset indexed in memory: images, labels, Pascal VOC boxes, splits.

Layout (local directory or ``s3://`` prefix)::

    images/{Patient_ID}-{limb}.{jpg|png|dcm}    one radiograph per patient and limb
    training.csv                                RA2 layout: Patient_ID, totals, the 86 columns
    annotations/{image stem}.xml                Pascal VOC boxes (classes of catalogue.detector_classes)

Only the small things live here (names, labels, boxes); pixels are read by Ray Data later.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..catalogue import COLUMNS, ID_COLUMN, LIMBS, detector_classes, limb_kind
from ..scorer import ScoringError, check_table
from ..storage import Location, resolve

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")


class DatasetError(ValueError):
    """A training dataset that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Box:
    """One annotated object: a detector class and its ``(x0, y0, x1, y1)`` corners in image pixels."""

    label: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageRecord:
    """One radiograph of the dataset; ``boxes`` is empty when it has no annotation file."""

    name: str  # file name under images/, e.g. "P001-LH.jpg"
    patient: str
    limb: str
    boxes: tuple[Box, ...] = ()

    @property
    def kind(self) -> str:
        return limb_kind(self.limb)

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass
class DatasetIndex:
    """Everything about a dataset except the pixels."""

    location: Location
    labels: pd.DataFrame  # RA2 layout, Patient_ID as str, one row per patient
    images: list[ImageRecord]
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def image_uri(self, record: ImageRecord) -> str:
        return self.location.join("images", record.name)

    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.images})

    def select(self, patients: list[str] | set[str]) -> list[ImageRecord]:
        keep = set(patients)
        return [r for r in self.images if r.patient in keep]

    def label_row(self, patient: str) -> pd.Series:
        return self.labels.loc[patient]


def parse_name(name: str) -> tuple[str, str]:
    """``("P001", "LH")`` from ``"P001-LH.jpg"``; raises :class:`DatasetError` on another pattern."""
    stem = name.rsplit(".", 1)[0]
    patient, _, limb = stem.rpartition("-")
    if not patient or limb not in LIMBS:
        raise DatasetError(f"image {name!r} is not named {{Patient_ID}}-{{LH|RH|LF|RF}}.ext")
    return patient, limb


def parse_voc(xml: bytes | str, what: str, kind: str) -> tuple[Box, ...]:
    """The boxes of a Pascal VOC annotation, checked against the limb kind's detector classes."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DatasetError(f"{what}: not valid XML ({e})") from e
    allowed = detector_classes(kind)
    boxes = []
    for obj in root.iter("object"):
        label = (obj.findtext("name") or "").strip()
        if label not in allowed:
            raise DatasetError(f"{what}: class {label!r} is not a {kind} class ({', '.join(allowed)})")
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError) as e:
            raise DatasetError(f"{what}: object {label!r} has no numeric bndbox") from e
        if not (x1 > x0 and y1 > y0):
            raise DatasetError(f"{what}: object {label!r} has an empty box {(x0, y0, x1, y1)}")
        boxes.append(Box(label, (x0, y0, x1, y1)))
    return tuple(boxes)


def read_labels(loc: Location) -> pd.DataFrame:
    """``training.csv`` checked with the challenge scorer's rules, indexed by Patient_ID."""
    if not loc.exists("training.csv"):
        raise DatasetError(f"{loc.uri_of('training.csv')} does not exist")
    df = pd.read_csv(io.BytesIO(loc.read_bytes("training.csv")), dtype={ID_COLUMN: str})
    try:
        check_table(df, "training.csv")
    except ScoringError as e:
        raise DatasetError(str(e)) from e
    df[list(COLUMNS)] = df[list(COLUMNS)].astype(float)
    return df.set_index(ID_COLUMN, drop=False)


def index_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> DatasetIndex:
    """Index an RA2-layout dataset. Images of patients without labels are left out and noted."""
    import pyarrow.fs as pafs

    loc = resolve(uri, storage_options)
    labels = read_labels(loc)
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.join("images"), allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                   and i.base_name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {loc.uri_of('images')}")
    notes: list[str] = []
    records: list[ImageRecord] = []
    unlabelled: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for name in names:
        patient, limb = parse_name(name)
        if patient not in labels.index:
            unlabelled.append(name)
            continue
        if (patient, limb) in seen:
            raise DatasetError(f"two images for {patient} {limb}: {seen[patient, limb]} and {name}")
        seen[patient, limb] = name
        stem = name.rsplit(".", 1)[0]
        boxes: tuple[Box, ...] = ()
        if loc.exists("annotations", f"{stem}.xml"):
            boxes = parse_voc(loc.read_bytes("annotations", f"{stem}.xml"), f"annotations/{stem}.xml",
                              limb_kind(limb))
        records.append(ImageRecord(name, patient, limb, boxes))
    if unlabelled:
        notes.append(f"{len(unlabelled)} image(s) without a training.csv row left out, e.g. {unlabelled[0]}")
    if not records:
        raise DatasetError(f"no image under {loc.uri_of('images')} belongs to a patient in training.csv")
    return DatasetIndex(loc, labels, records, notes)


def split_patients(patients: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split by patient (train, validation): no patient is on both sides.

    At least one patient goes to each side when there are two or more patients.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {val_fraction}")
    ordered = sorted(set(patients))
    if len(ordered) < 2:
        raise DatasetError(f"need at least 2 patients to split into training and validation, got {len(ordered)}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(max(1, round(val_fraction * len(ordered))), len(ordered) - 1)
    val = sorted(ordered[i] for i in perm[:n_val])
    train = sorted(ordered[i] for i in perm[n_val:])
    return train, val
