"""Calibrate an existing bundle on its held-out radiographs: limb thresholds and held-out figures.

    python -m ra2batch.training.calibrate --bundle DIR --data COHORT

runs the bundle on the held-out patients its provenance names (or ``--patients``) of the RA2-layout
dataset ``COHORT`` through the scoring job's inference path (``evaluation.evaluate_bundle``), sets
each detector's ``limb_min_confidence`` (``evaluation.calibrated_limb_thresholds``) and the
held-out figures (SC1-3 against the random baseline drawn from the other patients' labels, detector
mAP) and their quality check (``quality.check``) in its bundle.json: the same weight files, a new
``model_version``. Training does this itself; this brings a bundle made by an earlier version up to date.
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
    from ..models.bundle import load_bundle, recalibrate
    from .dataset import index_dataset
    from .evaluation import calibrated_limb_thresholds, evaluate_bundle
    from .quality import check

    bundle = load_bundle(args.bundle)
    patients = sorted(args.patients or bundle.manifest.provenance.model_dump().get("held_out_patients") or [])
    if not patients:
        return error("calibrate", "no held-out patients: the bundle's provenance names none; pass --patients", USAGE)
    index = index_dataset(args.data)
    others = index.labels.drop(index=[p for p in patients if p in index.labels.index])
    uncalibrated = bundle.with_limb_min_confidence({kind: 0.0 for kind in bundle.detectors})
    held_out = evaluate_bundle(uncalibrated, index, patients=patients, baseline_labels=others)
    thresholds = calibrated_limb_thresholds(held_out)
    quality = check(held_out)
    version = recalibrate(args.bundle, thresholds, held_out, quality=quality)
    print(f"limb confidence on {len(patients)} held-out patients: {held_out['limb_confidence']}")
    print("held-out " + ", ".join(f"{k} {held_out[k]:.3f}" for k in ("sc1", "sc2", "sc3", "ratio_sc1", "ratio_sc2",
                                                                    "ratio_sc3", "hand_mAP", "foot_mAP")))
    print(f"limb_min_confidence {thresholds}; bundle {version} written to {args.bundle}")
    for problem in quality["problems"]:
        print(f"warning: failed the quality check: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
