"""``ra2batch report``: a static HTML review site from a scoring job's output."""

from __future__ import annotations

import argparse

from ra2batch.cliutil import USAGE, add_renamed, add_storage_options, error


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_renamed(p, "--input", "--results", required=True, metavar="OUT",
                help="a scoring job's --output (local or s3://)")
    add_renamed(p, "--output", "--dest", required=True, metavar="DIR", help="local folder to write the site into")
    p.add_argument("--patients", nargs="+", metavar="ID",
                   help="only these Patient_IDs (space or comma separated; default: all)")
    p.add_argument("--bundle", metavar="URI",
                   help="the model bundle that scored the results: its bundle.json gives the exact crop "
                        "size and margin of each joint model (default: the built-in plan's)")
    p.add_argument("--crop-size", type=int, metavar="PX",
                   help="draw every joint crop at this height instead, aspect kept (pixels, >= 16; smaller pages)")
    add_storage_options(p)


def main(args: argparse.Namespace) -> int:
    from ra2batch.report.results import ResultsError, load_results
    from ra2batch.report.site import CropGeometry, build_site, geometry_from_bundle

    if args.crop_size is not None and args.crop_size < 16:
        return error("report", f"--crop-size must be at least 16 pixels, got {args.crop_size}", USAGE)
    wanted = [p for arg in args.patients for p in arg.split(",") if p] if args.patients else None
    try:
        results = load_results(args.input, args.storage_options, wanted)
        geometry = (geometry_from_bundle(args.bundle, args.storage_options, args.crop_size) if args.bundle
                    else CropGeometry(override=args.crop_size))
    except (ResultsError, OSError, ValueError) as e:
        return error("report", e, USAGE)
    if results.patients.empty:
        return error("report", f"{args.input} has no patients to report", USAGE)
    index = build_site(results, args.output, geometry=geometry, storage_options=args.storage_options,
                       source=args.input)
    print(f"wrote {len(results.patients)} patient page(s); open {index.resolve().as_uri()}")
    return 0
