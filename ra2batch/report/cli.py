"""``ra2batch report``: a static HTML review site from a scoring job's output."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, metavar="OUT",
                   help="the scoring job's --output (local or s3://) holding images/, joints/, patients/")
    p.add_argument("--dest", required=True, metavar="DIR", help="local folder to write the site into")
    p.add_argument("--patients", nargs="+", metavar="ID",
                   help="only these Patient_IDs (space or comma separated; default: all)")
    p.add_argument("--bundle", metavar="URI",
                   help="the model bundle that scored the results: its bundle.json gives the exact crop "
                        "size and margin of each joint model (default: the built-in plan's)")
    p.add_argument("--crop-size", type=int, metavar="PX",
                   help="draw every joint crop at this height instead, aspect kept (pixels, >= 16; smaller pages)")
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help="extra S3 settings for results and images, "
                        "e.g. '{\"endpoint_url\": \"http://127.0.0.1:9000\"}'")


def main(args: argparse.Namespace) -> int:
    from ra2batch.report.results import ResultsError, load_results
    from ra2batch.report.site import CropGeometry, build_site, geometry_from_bundle

    if args.crop_size is not None and args.crop_size < 16:
        print(f"ra2batch report: error: --crop-size must be at least 16 pixels, got {args.crop_size}", file=sys.stderr)
        return 2
    wanted = [p for arg in args.patients for p in arg.split(",") if p] if args.patients else None
    try:
        results = load_results(args.results, args.storage_options, wanted)
        geometry = (geometry_from_bundle(args.bundle, args.storage_options, args.crop_size) if args.bundle
                    else CropGeometry(override=args.crop_size))
    except (ResultsError, OSError, ValueError) as e:
        print(f"ra2batch report: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if results.patients.empty:
        print(f"ra2batch report: error: {args.results} has no patients to report", file=sys.stderr)
        return 2
    index = build_site(results, args.dest, geometry=geometry, storage_options=args.storage_options,
                       source=args.results)
    print(f"wrote {len(results.patients)} patient page(s); open {index.resolve().as_uri()}")
    return 0
