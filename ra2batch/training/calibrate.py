"""Calibrate an existing bundle's limb thresholds on its held-out radiographs (training does this itself).

    python -m ra2batch.training.calibrate --bundle DIR --data COHORT

runs the bundle's detectors on the held-out patients its provenance names (or ``--patients``) of the
RA2-layout dataset ``COHORT``, sets each detector's ``limb_min_confidence``
(``evaluation.calibrated_limb_thresholds``) in its bundle.json: the same weight files, a new
``model_version``.
"""

from __future__ import annotations

import argparse
import sys

from ..cliutil import USAGE, error


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ra2batch.training.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="the model bundle to calibrate, rewritten in place")
    p.add_argument("--data", required=True, help="the RA2-layout dataset it was trained on (or one like it)")
    p.add_argument("--patients", nargs="+", help="held-out Patient_IDs (default: the bundle's provenance's)")
    args = p.parse_args(argv)
    from ..models.bundle import load_bundle, set_limb_min_confidence
    from .dataset import index_dataset
    from .evaluation import calibrated_limb_thresholds, detector_metrics, score_dataset

    bundle = load_bundle(args.bundle)
    patients = args.patients or bundle.manifest.provenance.model_dump().get("held_out_patients") or []
    if not patients:
        return error("calibrate", "no held-out patients: the bundle's provenance names none; pass --patients", USAGE)
    index, patients = index_dataset(args.data), sorted(patients)
    metrics = detector_metrics(score_dataset(bundle, index, patients), index, patients)
    thresholds = calibrated_limb_thresholds(metrics)
    version = set_limb_min_confidence(args.bundle, thresholds)
    print(f"limb confidence on {len(patients)} held-out patients: {metrics['limb_confidence']}")
    print(f"limb_min_confidence {thresholds}; bundle {version} written to {args.bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
