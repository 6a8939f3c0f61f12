"""Detector average precision at a fixed IoU (the paper's Table 1 uses IoU 0.6).

VOC-style all-point interpolated AP per class: detections of a class are ranked by score across
all images; a detection is a true positive when it overlaps a not-yet-matched ground-truth box of
its class in its image with IoU >= the threshold. mAP is the mean over the classes that have
ground truth.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

BoxT = Sequence[float]  # (x0, y0, x1, y1) pixels


def iou(a: BoxT, b: BoxT) -> float:
    """Intersection over union of two corner boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _ap(scores: list[float], hits: list[bool], n_truth: int) -> float:
    if n_truth == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(hits, dtype=float)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_truth
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def average_precision(
    detections: Iterable[Iterable[tuple[str, BoxT, float]]],
    truths: Iterable[Iterable[tuple[str, BoxT]]],
    classes: Sequence[str],
    iou_threshold: float = 0.6,
) -> dict[str, float]:
    """Per-class AP and ``"mAP"`` over images given as parallel lists.

    ``detections[i]`` is ``[(class, box, score), ...]`` for image i, ``truths[i]`` its
    ``[(class, box), ...]``. A class without any ground truth gets NaN and is left out of mAP.
    """
    scores: dict[str, list[float]] = defaultdict(list)
    hits: dict[str, list[bool]] = defaultdict(list)
    n_truth: dict[str, int] = defaultdict(int)
    for dets, gts in zip(detections, truths, strict=True):
        by_class: dict[str, list[BoxT]] = defaultdict(list)
        for label, box in gts:
            by_class[label].append(box)
            n_truth[label] += 1
        used: dict[str, set[int]] = defaultdict(set)
        for label, box, score in sorted(dets, key=lambda d: -d[2]):
            best, best_j = 0.0, -1
            for j, gt in enumerate(by_class.get(label, ())):
                if j not in used[label] and (o := iou(box, gt)) > best:
                    best, best_j = o, j
            hit = best >= iou_threshold
            if hit:
                used[label].add(best_j)
            scores[label].append(float(score))
            hits[label].append(hit)
    out = {c: _ap(scores[c], hits[c], n_truth[c]) for c in classes}
    present = [v for v in out.values() if v == v]
    out["mAP"] = float(np.mean(present)) if present else float("nan")
    return out


def summarise(ap: Mapping[str, float], prefix: str) -> dict[str, float]:
    """Flat metric names, e.g. ``{"hand_mAP": 0.98, "hand_AP_wrist": 0.99}``."""
    return {(f"{prefix}_mAP" if k == "mAP" else f"{prefix}_AP_{k}"): v for k, v in ap.items()}
