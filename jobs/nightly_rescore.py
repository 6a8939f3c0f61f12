"""Nightly incremental rescoring: ``ray job submit -- python jobs/nightly_rescore.py --input ... --output ...``.

The same command as ``ra2batch nightly``: scores only new, changed or stale radiographs and rebuilds
only their patients; ``--full`` rescores all.
"""

import argparse
import sys

from ra2batch import nightly_cli
from ra2batch.cli import EPILOG, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="nightly_rescore.py", description=nightly_cli.DESCRIPTION, epilog=EPILOG)
    nightly_cli.add_arguments(parser)
    sys.exit(run(parser, nightly_cli))
