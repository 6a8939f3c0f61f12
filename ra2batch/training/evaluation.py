"""End-to-end evaluation of a bundle on labelled radiographs: the scoring job's own inference path.

Every radiograph goes through ``ra2batch.inference`` (the job's decode, detectors, rejection of
radiographs that show no hand or foot, crops, joint models with flip test-time augmentation, scores
clipped to each joint's range) and patients are assembled and filled by the job's rules, so SC1-3
here are what ``ra2batch evaluate`` reports on the job's predictions.csv for the same images. They
are scored with the challenge scorer against the seeded random baseline; the detectors' AP at IoU
0.6 is measured on the boxes the crops were cut from, against the annotations. With visits, each
patient visit is one patient of the challenge scorer, as ``ra2batch evaluate`` scores them. Runs
in-process (no Ray): it is meant for held-out sets of tens of patients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import catalogue
from ..inference import Scored, assemble, filled_values, listing, score_files
from ..job.config import JobConfig
from ..scorer import random_baseline, score
from .dataset import DatasetIndex, index_dataset, scorer_table
from .metrics import average_precision, summarise


def score_dataset(bundle: Any, index: DatasetIndex, patients: list[str], config: JobConfig | None = None) -> Scored:
    """``patients``' radiographs of the dataset, scored and assembled as the scoring job does it."""
    files = listing((index.location.uri_of("images", r.name), r.patient, r.visit, r.limb)
                    for r in index.select(patients))
    return assemble(score_files(bundle, files, index.location.fs, config))


def detector_metrics(scored: Scored, index: DatasetIndex, patients: list[str]) -> dict[str, Any]:
    """``n_images``, ``missed_detections`` (detector classes without a box, over the decoded radiographs),
    ``limb_confidence`` quantiles per limb kind, and AP at IoU 0.6 per class and kind on the annotated ones."""
    images = scored.images
    decoded = images[images["n_detections"].notna()]
    kinds = decoded["limb"].map(catalogue.limb_kind)
    classes = kinds.map(lambda k: len(catalogue.detector_classes(k)))
    metrics: dict[str, Any] = {
        "n_images": len(images), "missed_detections": int((classes - decoded["n_detections"]).sum()),
        "limb_confidence": {k: _quantiles(v.tolist()) for k, v in decoded.groupby(kinds)["limb_confidence"]}}
    found = scored.detections()
    records = {index.location.uri_of("images", r.name): r for r in index.select(patients)}
    for kind in ("hand", "foot"):
        annotated = [(path, r) for path, r in records.items() if r.kind == kind and r.boxes]
        if annotated:
            ap = average_precision([found.get(path, []) for path, _ in annotated],
                                   [[(b.label, b.box) for b in r.boxes] for _, r in annotated],
                                   catalogue.detector_classes(kind), 0.6)
            metrics.update(summarise(ap, kind))
    return metrics


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"min": float(np.min(values)), "p5": float(np.percentile(values, 5)), "median": float(np.median(values))}


#: A detector's ``limb_min_confidence`` is this share of the lowest limb confidence it gave a held-out
#: radiograph: on the demo bundle's held-out phantoms, hands scored 0.82 and up and feet 0.83 and up,
#: noise, gradients and blurred blobs at most 0.55.
LIMB_CALIBRATION = 0.75


def calibrated_limb_thresholds(metrics: dict[str, Any]) -> dict[str, float]:
    """Each detector's ``limb_min_confidence`` from an evaluation's ``limb_confidence`` (:func:`detector_metrics`)."""
    return {kind: round(LIMB_CALIBRATION * q["min"], 3) for kind, q in metrics["limb_confidence"].items()}


def evaluate_bundle(bundle: Any, data: str | DatasetIndex, *, patients: list[str] | None = None,
                    baseline_labels: pd.DataFrame | None = None, storage_options: dict[str, Any] | None = None,
                    medians: dict[str, float] | None = None, seed: int = 0,
                    config: JobConfig | None = None) -> dict[str, Any]:
    """SC1-3 of ``bundle`` on ``data`` (an RA2-layout dataset or its index), the seeded random baseline
    drawn from ``baseline_labels`` (default: the evaluated patients' own labels), their ratios, and
    the detectors' AP at IoU 0.6 (``hand_mAP``, ``foot_mAP``, ``hand_AP_wrist``...). Joints not
    found are filled from ``medians`` (default: the bundle's label medians)."""
    index = data if isinstance(data, DatasetIndex) else index_dataset(data, storage_options)
    patients = sorted(patients if patients is not None else index.patients())
    scored = score_dataset(bundle, index, patients, config)
    metrics = detector_metrics(scored, index, patients)
    pred = scored.predictions(medians if medians is not None else bundle.label_medians)
    # one row per patient visit (a patient without visits: one row), keyed as the scorer takes them
    truth = scorer_table(index.sample_labels(patients))
    pred = scorer_table(pred)
    units = truth[catalogue.ID_COLUMN].tolist()
    pred = pred.set_index(catalogue.ID_COLUMN).reindex(units).rename_axis(catalogue.ID_COLUMN).reset_index()
    ours = score(pred[list(catalogue.TEMPLATE_ORDER)], truth).as_dict()
    reference = baseline_labels if baseline_labels is not None else truth
    reference = scorer_table(reference)
    base = score(random_baseline(reference, units, seed=seed), truth).as_dict()
    metrics.update(ours)
    metrics.update({f"baseline_{k}": v for k, v in base.items()})
    metrics.update({f"ratio_{k}": ours[k] / base[k] if base[k] else float("nan") for k in ours})
    metrics.update(n_patients=len(patients), filled_values=filled_values(scored.patients))
    if index.has_visits:
        metrics["n_patient_visits"] = len(units)
    return metrics
