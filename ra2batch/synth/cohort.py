"""Generate a synthetic RA2 cohort on disk: radiographs, labels, boxes, joint sites, preview.

Layout of ``out``::

    images/{Patient_ID}-{LH,RH,LF,RF}.{jpg,png,dcm}
    annotations/{stem}.xml     Pascal VOC boxes (labelImg layout)
    training.csv               labels in RA2 layout (with --label-noise: one point off for some)
    truth.csv                  the scores actually rendered
    joints.csv                 stem, column, x, y, score: where each scored joint is drawn
    images.csv                 stem, file, format, width, height
    preview.png                contact sheet with boxes and joint scores

Every patient draws from generators seeded by ``(seed, patient index)``, so the files do not
depend on ``workers`` and the same arguments give byte-identical output.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ..catalogue import COLUMNS, LIMBS, TEMPLATE_ORDER, joints_for
from .encode import FORMATS, encode
from .labels import add_label_noise, label_row, patient_rng, sample_patient
from .render import render_limb
from .voc import voc_xml

_LIMB_COLUMNS = {limb: [j.column for j in joints_for(limb)] for limb in LIMBS}


@dataclass
class CohortSummary:
    """What ``generate_cohort`` wrote and how fast."""

    out: str
    patients: int
    images: int
    formats: dict[str, int]
    seconds: float
    training_csv: str
    truth_csv: str
    preview: str | None
    files: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    index: int
    patient_id: str
    formats: tuple[str, ...]
    label_noise: float
    scale: float


def _make_patient(job: _Job) -> dict:
    """Render, encode and write one patient's four radiographs; return its table rows."""
    truth = sample_patient(patient_rng(job.seed, job.index, 0))
    labels = add_label_noise(truth, job.label_noise, patient_rng(job.seed, job.index, 2)) if job.label_noise else truth
    scores = dict(zip(COLUMNS, (int(v) for v in truth)))
    file_rng = patient_rng(job.seed, job.index, 3)
    images, joints = [], []
    for k, limb in enumerate(LIMBS):
        limb_scores = {c: scores[c] for c in _LIMB_COLUMNS[limb]}
        r = render_limb(limb, limb_scores, (job.seed, job.index, 1, k), job.scale)
        fmt = job.formats[int(file_rng.integers(len(job.formats)))]
        stem = f"{job.patient_id}-{limb}"
        name = stem + FORMATS[fmt]
        data = encode(r.pixels, fmt, patient_id=job.patient_id, limb=limb, px_per_mm=r.px_per_mm, rng=file_rng)
        Path(job.out, "images", name).write_bytes(data)
        Path(job.out, "annotations", f"{stem}.xml").write_text(voc_xml(name, r.width, r.height, r.boxes))
        images.append({"stem": stem, "file": f"images/{name}", "format": fmt, "width": r.width, "height": r.height})
        joints += [{"stem": stem, "column": c, "x": round(r.joints[c][0], 1), "y": round(r.joints[c][1], 1),
                    "score": limb_scores[c]} for c in _LIMB_COLUMNS[limb]]
    return {"truth": label_row(job.patient_id, truth), "label": label_row(job.patient_id, labels),
            "images": images, "joints": joints}


def generate_cohort(out: str, patients: int, seed: int, formats: Iterable[str] = ("jpg",), label_noise: float = 0.0,
                    workers: int = 1, scale: float = 1.0, id_prefix: str = "SYN", start_index: int = 1,
                    progress: Callable[[int, int, float], None] | None = None, preview: bool = True) -> CohortSummary:
    """Write a synthetic cohort of ``patients`` patients (4 radiographs each) under ``out``.

    ``formats`` are the file formats to draw from (``jpg``, ``png16``, ``dcm``); each radiograph is
    written once in one of them. ``label_noise`` moves that fraction of the damaged joints' labels in
    ``training.csv`` one point off the rendered truth. ``scale`` multiplies the image size (long side
    1000-2500 px at 1.0). ``progress(done, total, seconds)`` is called after every patient.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ValueError(f"unknown image format(s) {unknown or '(none given)'}; choose from {', '.join(FORMATS)}")
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label noise must be a fraction in [0, 1], got {label_noise}")
    if not 0.05 <= scale <= 4.0:
        raise ValueError(f"scale must be between 0.05 and 4, got {scale}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    jobs = [_Job(str(root), seed, i, f"{id_prefix}{i:04d}", formats, label_noise, scale)
            for i in range(start_index, start_index + patients)]

    start = time.perf_counter()
    results = []
    if workers == 1:
        mapped: Iterable[dict] = map(_make_patient, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        mapped = pool.map(_make_patient, jobs)
    try:
        for result in mapped:
            results.append(result)
            if progress:
                progress(len(results), patients, time.perf_counter() - start)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    order = list(TEMPLATE_ORDER)
    pd.DataFrame([r["label"] for r in results], columns=order).to_csv(root / "training.csv", index=False)
    pd.DataFrame([r["truth"] for r in results], columns=order).to_csv(root / "truth.csv", index=False)
    images = pd.DataFrame([i for r in results for i in r["images"]])
    images.to_csv(root / "images.csv", index=False)
    pd.DataFrame([j for r in results for j in r["joints"]]).to_csv(root / "joints.csv", index=False)
    seconds = time.perf_counter() - start
    sheet = None
    if preview:
        from .preview import contact_sheet

        sheet = str(root / "preview.png")
        contact_sheet(str(root), sheet)
    counts = {f: int((images["format"] == f).sum()) for f in formats}
    return CohortSummary(str(root), patients, len(images), counts, seconds, str(root / "training.csv"),
                         str(root / "truth.csv"), sheet, [os.path.join(str(root), f) for f in images["file"]])

