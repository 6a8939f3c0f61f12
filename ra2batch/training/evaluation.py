"""End-to-end evaluation of a bundle on labelled radiographs, the way the scoring job uses it.

For every radiograph: decode, detect with the bundle's own detector (best box per class), cut the
crops with ``models.crops``, score them with the joint models. Predictions are assembled per
patient (a joint the detector missed is filled from the same joint on the other side, else from the
bundle's label medians) and scored with the challenge scorer against the seeded random baseline.
The detectors' AP at IoU 0.6 is measured on the same radiographs against their annotations.
Runs in-process (no Ray): it is meant for held-out sets of tens of patients.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from .. import catalogue
from ..imaging.readers import decode
from ..models.bundle import limb_confidence
from ..models.crops import joint_crops
from ..scorer import random_baseline, score
from .dataset import DatasetIndex, index_dataset
from .metrics import average_precision, summarise


def predict_joints(bundle: Any, index: DatasetIndex, patients: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Joint predictions ``{patient: {column: score}}`` (only the joints found) and detector metrics."""
    records = index.select(patients)
    found: dict[str, list[tuple[str, tuple, float]]] = {}
    pending: dict[str, list[tuple[str, str, str, np.ndarray]]] = defaultdict(list)  # group -> (patient, limb, crop, crop)
    missed = 0
    confidence: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        image = decode(index.location.read_bytes("images", rec.name), rec.name).pixels
        detections = bundle.detect([image], rec.kind)[0]
        confidence[rec.kind].append(limb_confidence(detections, rec.kind))
        found[rec.name] = [(c, d.box, d.score) for c, d in detections.items()]
        missed += len(catalogue.detector_classes(rec.kind)) - len(detections)
        for jc in joint_crops(image, detections, rec.limb, bundle.plan, margin=bundle.preprocessing.crop_margin):
            pending[jc.group].append((rec.patient, rec.limb, jc.crop_class, jc.crop))
    predictions: dict[str, dict[str, float]] = defaultdict(dict)
    for group_name, items in pending.items():
        scores, _ = bundle.score(group_name, np.stack([it[3] for it in items]))
        group = bundle.plan.group(group_name)
        for (patient, limb, crop_class, _), row in zip(items, scores):
            for column, value in zip(group.columns(limb, crop_class), row):
                predictions[patient][column] = float(value)
    metrics: dict[str, Any] = {"n_images": len(records), "missed_detections": missed,
                               "limb_confidence": {k: _quantiles(v) for k, v in sorted(confidence.items())}}
    for kind in ("hand", "foot"):
        recs = [r for r in records if r.kind == kind and r.boxes]
        if recs:
            ap = average_precision([found[r.name] for r in recs], [[(b.label, b.box) for b in r.boxes] for r in recs],
                                   catalogue.detector_classes(kind), 0.6)
            metrics.update(summarise(ap, kind))
    return dict(predictions), metrics


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"min": float(np.min(values)), "p5": float(np.percentile(values, 5)), "median": float(np.median(values))}


#: A detector's ``limb_min_confidence`` is this share of the lowest limb confidence it gave a held-out
#: radiograph: on the demo bundle's held-out phantoms, hands scored 0.82 and up and feet 0.83 and up,
#: noise, gradients and blurred blobs at most 0.55.
LIMB_CALIBRATION = 0.75


def calibrated_limb_thresholds(metrics: dict[str, Any]) -> dict[str, float]:
    """Each detector's ``limb_min_confidence`` from an evaluation's ``limb_confidence`` (:func:`predict_joints`)."""
    return {kind: round(LIMB_CALIBRATION * q["min"], 3) for kind, q in metrics["limb_confidence"].items()}


def _other_side(column: str) -> str:
    limb = column[:2]
    return {"LH": "RH", "RH": "LH", "LF": "RF", "RF": "LF"}[limb] + column[2:]


def assemble(predictions: dict[str, dict[str, float]], patients: list[str], medians: dict[str, float]) -> tuple[pd.DataFrame, int]:
    """An RA2-layout table for ``patients``; returns it and the number of filled values."""
    rows, filled = [], 0
    for p in patients:
        found = predictions.get(p, {})
        row: dict[str, Any] = {catalogue.ID_COLUMN: p}
        for c in catalogue.COLUMNS:
            if c in found:
                row[c] = found[c]
            else:
                filled += 1
                row[c] = found.get(_other_side(c), medians.get(c, 0.0))
        row.update(catalogue.totals(row))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(catalogue.TEMPLATE_ORDER)), filled


def evaluate_bundle(bundle: Any, data: str | DatasetIndex, *, patients: list[str] | None = None,
                    baseline_labels: pd.DataFrame | None = None, storage_options: dict[str, Any] | None = None,
                    medians: dict[str, float] | None = None, seed: int = 0) -> dict[str, Any]:
    """SC1-3 of ``bundle`` on ``data`` (an RA2-layout dataset or its index), the seeded random baseline
    drawn from ``baseline_labels`` (default: the evaluated patients' own labels), their ratios, and
    the detectors' AP at IoU 0.6 (``hand_mAP``, ``foot_mAP``, ``hand_AP_wrist``...). Joints not
    found are filled from ``medians`` (default: the bundle's label medians)."""
    index = data if isinstance(data, DatasetIndex) else index_dataset(data, storage_options)
    patients = sorted(patients if patients is not None else index.patients())
    predictions, metrics = predict_joints(bundle, index, patients)
    pred, filled = assemble(predictions, patients, medians if medians is not None else bundle.label_medians)
    truth = index.labels.loc[patients].reset_index(drop=True)
    ours = score(pred, truth).as_dict()
    reference = baseline_labels if baseline_labels is not None else truth
    base = score(random_baseline(reference.reset_index(drop=True), patients, seed=seed), truth).as_dict()
    metrics.update(ours)
    metrics.update({f"baseline_{k}": v for k, v in base.items()})
    metrics.update({f"ratio_{k}": ours[k] / base[k] if base[k] else float("nan") for k in ours})
    metrics.update(n_patients=len(patients), filled_values=filled)
    return metrics
