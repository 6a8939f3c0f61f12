"""An RA2-layout training dataset indexed in memory: images, labels, Pascal VOC boxes, splits.

Layout (local directory or ``s3://`` prefix)::

    images/{Patient_ID}-{limb}.{ext}            a radiograph of a patient's limb
    images/{Patient_ID}-{visit}-{limb}.{ext}    ... of one visit of the patient
    training.csv                                RA2 layout: Patient_ID, totals, the 86 columns (+ visit)
    annotations/{image stem}.xml                Pascal VOC boxes (classes of catalogue.detector_classes)

Names follow the scoring job's one convention (``ra2batch.job.inputs.parse_names``): the stem split at
its last two dashes (``Patient_ID`` may hold dashes only when the name has a visit), the limb
``LH|RH|LF|RF`` in any case, the suffixes the readers decode (``inputs.RADIOGRAPH_SUFFIXES``).
A misnamed image is refused with the job's own reason. A DICOM named without a limb
(``{Patient_ID}[-{visit}].dcm``), which the scoring job places by its header, is refused here:
training picks a detector by the limb before any file is decoded, so name the limb.

Labels: each patient visit (a patient's images without a visit are one more) is a sample, labelled by
one ``training.csv`` row. Without a ``visit`` column (RA2's layout: one row per patient) a row labels
its patient's images named without a visit; images named with one are left out, with a note, since
their damage may differ from visit to visit. With a ``visit`` column, each row labels one patient
visit (an empty cell: the images named without a visit); a ``(Patient_ID, visit)`` pair appears once.
Patients, never visits, are split into training and validation (:func:`split_patients`), so a
patient's visits are never on both sides.

Annotations are optional per image: an image with boxes trains its detector, every labelled image
trains the joint models (see ``training.data.crop_dataset`` for where their boxes come from).

Only the small things live here (names, labels, boxes); pixels are read by Ray Data later.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..catalogue import COLUMNS, ID_COLUMN, detector_classes, limb_kind
from ..job.inputs import NAMING, RADIOGRAPH_SUFFIXES, is_radiograph, parse_names
from ..scorer import ScoringError, check_table
from ..storage import Location, resolve

VISIT = "visit"


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

    name: str  # file name under images/, e.g. "P001-LH.jpg" or "P001-V2-LH.jpg"
    patient: str
    limb: str
    boxes: tuple[Box, ...] = ()
    visit: str | None = None

    @property
    def kind(self) -> str:
        return limb_kind(self.limb)

    @property
    def sample(self) -> tuple[str, str | None]:
        """The patient visit it belongs to, ``(Patient_ID, visit)``: the unit that has labels."""
        return self.patient, self.visit

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass
class DatasetIndex:
    """Everything about a dataset except the pixels."""

    location: Location
    #: RA2 layout indexed by Patient_ID (str), with a ``visit`` column (None without visits): one row per
    #: patient visit, so a patient with visits has several rows
    labels: pd.DataFrame
    images: list[ImageRecord]
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def image_uri(self, record: ImageRecord) -> str:
        return self.location.join("images", record.name)

    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.images})

    def select(self, patients: list[str] | set[str]) -> list[ImageRecord]:
        keep = set(patients)
        return [r for r in self.images if r.patient in keep]

    @property
    def has_visits(self) -> bool:
        return any(r.visit is not None for r in self.images)

    def label_row(self, patient: str, visit: str | None = None) -> pd.Series:
        """The labels of one patient visit (``visit`` None: the patient's images without a visit)."""
        rows = self.labels.loc[[patient]]
        rows = rows[rows[VISIT].isna()] if visit is None else rows[rows[VISIT] == visit]
        if len(rows) != 1:
            raise KeyError((patient, visit))
        return rows.iloc[0]

    def targets(self, record: ImageRecord) -> dict[str, float]:
        """The 86 RA2 labels of ``record``'s patient visit."""
        row = self.label_row(record.patient, record.visit)
        return {c: float(row[c]) for c in COLUMNS}

    def sample_labels(self, patients: list[str] | set[str]) -> pd.DataFrame:
        """The label rows of ``patients``' samples that have images, one per patient visit, in sample
        order, with the ``visit`` column (None without visits)."""
        samples = sorted({r.sample for r in self.select(patients)}, key=lambda s: (s[0], s[1] or ""))
        return pd.DataFrame([self.label_row(p, v) for p, v in samples]).reset_index(drop=True)


def parse_name(name: str) -> tuple[str, str | None, str]:
    """``(Patient_ID, visit, limb)`` of an image by the scoring job's rule (``job.inputs.parse_names``):
    ``("P001", None, "LH")`` from ``"P001-LH.jpg"``, ``("P001", "V2", "RH")`` from ``"P001-V2-rh.png"``.
    Raises :class:`DatasetError` with the job's reason for another pattern, and for a DICOM named
    without a limb (training needs the limb before decoding)."""
    row = _parsed([name])[0]
    problem = _name_problem(name, row)
    if problem:
        raise DatasetError(problem)
    return row[ID_COLUMN], row[VISIT], row["limb"]


def _parsed(names: list[str]) -> list[dict[str, str | None]]:
    """:func:`parse_names` of ``names`` as one dict per name, None where a part is missing."""
    return [{k: None if pd.isna(v) else v for k, v in row.items()}
            for row in parse_names(pd.Series(names, dtype=object)).to_dict("records")]


def _name_problem(name: str, row: dict[str, str | None]) -> str | None:
    """Why training cannot use an image of this name (``row``: its :func:`_parsed` row), or None."""
    if row["problem"] is not None:
        return f"image file name '{name}' gives no patient and limb (expected {NAMING})"
    if row["limb"] is None:
        return (f"image file name '{name}' gives no limb: the scoring job takes a DICOM's limb from its header, "
                f"but training picks the detector by the limb before decoding; name it {NAMING}")
    return None


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
    """``training.csv`` checked with the challenge scorer's rules, indexed by Patient_ID, with a
    ``visit`` column (None where the file has none): one row per patient, or per patient visit."""
    if not loc.exists("training.csv"):
        raise DatasetError(f"{loc.uri_of('training.csv')} does not exist")
    df = pd.read_csv(io.BytesIO(loc.read_bytes("training.csv")), dtype={ID_COLUMN: str, VISIT: str})
    if VISIT not in df.columns:
        df[VISIT] = None
    df[VISIT] = [None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in df[VISIT]]
    try:
        # a patient visit is one row, as `ra2batch evaluate` keys them ("ID (visit V)")
        check_table(scorer_table(df), "training.csv")
    except ScoringError as e:
        raise DatasetError(str(e)) from e
    df[list(COLUMNS)] = df[list(COLUMNS)].astype(float)
    return df.set_index(ID_COLUMN, drop=False)


def scorer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Label (or prediction) rows as the challenge scorer takes them: with a ``visit`` column, one row per
    patient visit, ``Patient_ID`` ``ID (visit V)`` where there is a visit (``ra2batch evaluate``'s key)."""
    from ..evaluate import by_visit

    return (by_visit(df) if VISIT in df.columns else df).reset_index(drop=True)


def _listed(loc: Location, folder: str, keep) -> list[str]:
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.join(folder), allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and keep(i.base_name))


def index_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> DatasetIndex:
    """Index an RA2-layout dataset (see the module's notes). Images whose patient visit has no
    label row are left out and noted; a misnamed image, or two of one patient visit's limb, are refused."""
    loc = resolve(uri, storage_options)
    labels = read_labels(loc)
    names = _listed(loc, "images", is_radiograph)
    if not names:
        raise DatasetError(f"no images ({', '.join(RADIOGRAPH_SUFFIXES)}) under {loc.uri_of('images')}")
    annotated = set(_listed(loc, "annotations", lambda n: n.lower().endswith(".xml")))
    parsed = dict(zip(names, _parsed(names)))
    for name, row in parsed.items():
        problem = _name_problem(name, row)
        if problem:
            raise DatasetError(f"{loc.uri_of('images', name)}: {problem}")
    samples = {(p, None if pd.isna(v) else v) for p, v in zip(labels[ID_COLUMN], labels[VISIT])}
    notes: list[str] = []
    records: list[ImageRecord] = []
    unlabelled: list[str] = []
    seen: dict[tuple[str, str | None, str], str] = {}
    for name, row in parsed.items():
        patient, visit, limb = row[ID_COLUMN], row[VISIT], row["limb"]
        if (patient, visit) not in samples:
            unlabelled.append(name)
            continue
        if (patient, visit, limb) in seen:
            of = f"{patient} visit {visit}" if visit is not None else patient
            raise DatasetError(f"two images for {of} {limb}: {seen[patient, visit, limb]} and {name}")
        seen[patient, visit, limb] = name
        stem = name.rsplit(".", 1)[0]
        boxes: tuple[Box, ...] = ()
        if f"{stem}.xml" in annotated:
            boxes = parse_voc(loc.read_bytes("annotations", f"{stem}.xml"), f"annotations/{stem}.xml",
                              limb_kind(limb))
        records.append(ImageRecord(name, patient, limb, boxes, visit))
    if unlabelled:
        notes.append(_unlabelled_note(unlabelled, parsed, labels))
    if not records:
        raise DatasetError(f"no image under {loc.uri_of('images')} belongs to a patient (visit) in training.csv"
                           + (f" ({notes[0]})" if notes else ""))
    return DatasetIndex(loc, labels, records, notes)


def _unlabelled_note(names: list[str], parsed: dict[str, dict[str, str | None]], labels: pd.DataFrame) -> str:
    """Why images were left out: no label row for their patient visit, with a hint where a visit column is
    missing or a Patient_ID with dashes was read as patient and visit."""
    note = f"{len(names)} image(s) without a training.csv row for their patient (visit) left out, e.g. {names[0]}"
    first = parsed[names[0]]
    has_visits = labels[VISIT].notna().any()
    if first[VISIT] is not None and f"{first[ID_COLUMN]}-{first[VISIT]}" in labels.index:
        note += (f" (its name reads as patient {first[ID_COLUMN]}, visit {first[VISIT]}: a name's last two dashes "
                 "set off visit and limb, as in scoring; a Patient_ID with a dash needs a visit in the name)")
    elif first[VISIT] is not None and not has_visits:
        note += (f" (named with visit {first[VISIT]}, but training.csv has no visit column: add one to label "
                 "each patient visit)")
    return note


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
