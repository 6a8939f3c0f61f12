"""``ra2batch report``: a static HTML review site from a scoring job's output."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ra2batch.cliutil import USAGE, add_renamed, add_storage_options, error

if TYPE_CHECKING:
    from ra2batch.report.overlay import CropGeometry


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_renamed(p, "--input", "--results", required=True, metavar="OUT",
                help="a scoring job's --output (local or s3://)")
    add_renamed(p, "--output", "--dest", required=True, metavar="DIR", help="local folder to write the site into")
    p.add_argument("--patients", nargs="+", metavar="ID",
                   help="only these Patient_IDs (space or comma separated; default: all)")
    p.add_argument("--bundle", metavar="URI",
                   help="cut the joint crops as this model bundle does (its bundle.json) instead of as the output's "
                        "run manifest records; only needed for an output that records no crop geometry")
    p.add_argument("--crop-size", type=int, metavar="PX",
                   help="height of every joint crop on the pages (CSS pixels, >= 16, aspect kept; default 176); "
                        "the crop itself is always the one the model scored")
    p.add_argument("--review-threshold", type=float, metavar="POINTS",
                   help="flip disagreement (score points) at or above which a joint is flagged for review; "
                        "patients are ranked by flagged joints (default: the threshold the output was scored with, "
                        "its JobConfig.review_threshold: 0.75 unless set)")
    add_storage_options(p)


def _geometry(args: argparse.Namespace, run: dict) -> CropGeometry:
    """The crop geometry: ``--bundle``'s, else the run manifest's, else the plan's with a warning."""
    from ra2batch.report.overlay import (
        geometry_from_bundle,
        geometry_from_run,
        plan_geometry,
    )

    if args.bundle:
        return geometry_from_bundle(args.bundle, args.storage_options)
    geometry = geometry_from_run(run)
    if geometry is None:
        geometry = plan_geometry()
        print(f"ra2batch report: warning: {args.input} does not record how its joint crops were cut (no "
              "crop_geometry in its run manifest); they are drawn at the built-in plan's sizes, which may not be "
              "the model's: pass --bundle URI of the bundle that scored it", file=sys.stderr)
    return geometry


def main(args: argparse.Namespace) -> int:
    from ra2batch.report.results import ResultsError, load_results
    from ra2batch.report.review import run_threshold
    from ra2batch.report.site import CROP_HEIGHT, build_site

    if args.crop_size is not None and args.crop_size < 16:
        return error("report", f"--crop-size must be at least 16 pixels, got {args.crop_size}", USAGE)
    if args.review_threshold is not None and not args.review_threshold >= 0:
        return error("report", f"--review-threshold must be at least 0, got {args.review_threshold}", USAGE)
    wanted = [p for arg in args.patients for p in arg.split(",") if p] if args.patients else None
    try:
        results = load_results(args.input, args.storage_options, wanted)
        geometry = _geometry(args, dict(results.run))
    except (ResultsError, OSError, ValueError) as e:
        return error("report", e, USAGE)
    if results.patients.empty:
        return error("report", f"{args.input} has no patients to report", USAGE)
    threshold = args.review_threshold if args.review_threshold is not None else run_threshold(results.run)
    index = build_site(results, args.output, geometry=geometry, storage_options=args.storage_options,
                       source=args.input, threshold=threshold, crop_height=args.crop_size or CROP_HEIGHT)
    print(f"wrote {len(results.patients)} patient page(s); open {index.resolve().as_uri()}")
    return 0
