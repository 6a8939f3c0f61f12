"""``ra2batch synth``: write a synthetic RA2 cohort (radiographs, labels, boxes, joint sites)."""

from __future__ import annotations

import argparse
import sys

from ra2batch.cliutil import USAGE, add_renamed, error

#: ``--formats`` names (``synth.encode.FORMATS`` holds their encoders; a test keeps the two equal).
FORMAT_NAMES = ("jpg", "png16", "dcm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_renamed(parser, "--output", "--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (4 radiographs each)")
    parser.add_argument("--seed", type=int, required=True, help="random seed; same arguments give identical files")
    parser.add_argument("--formats", default="jpg",
                        help=f"comma-separated image formats to draw from: {','.join(FORMAT_NAMES)} (default jpg)")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="fraction of damaged joints whose training.csv label is one point off (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes to render with (default 1)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="image size factor; 1.0 gives a long side of 1000-2500 px (default 1.0)")
    parser.add_argument("--id-prefix", default="SYN", help="Patient_ID prefix (default SYN -> SYN0001)")
    parser.add_argument("--start-index", type=int, default=1, help="number of the first patient (default 1)")


def main(args: argparse.Namespace) -> int:
    from .cohort import generate_cohort

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    every = max(1, args.patients // 20)

    def progress(done: int, total: int, seconds: float) -> None:
        if done % every == 0 or done == total:
            print(f"  {done}/{total} patients, {4 * done / seconds:.1f} radiographs/s", file=sys.stderr, flush=True)

    try:
        summary = generate_cohort(args.output, args.patients, args.seed, formats=formats, label_noise=args.label_noise,
                                  workers=args.workers, scale=args.scale, id_prefix=args.id_prefix,
                                  start_index=args.start_index, progress=progress)
    except ValueError as e:
        return error("synth", e, USAGE)
    counts = ", ".join(f"{n} {f}" for f, n in summary.formats.items())
    print(f"wrote {summary.images} radiographs ({counts}) for {summary.patients} patients to {summary.out}/images "
          f"in {summary.seconds:.1f} s ({summary.images_per_second:.1f}/s)")
    print(f"labels: {summary.training_csv} (rendered truth: {summary.truth_csv}); boxes: {summary.out}/annotations; "
          f"joint sites: {summary.out}/joints.csv; preview: {summary.preview}")
    return 0
