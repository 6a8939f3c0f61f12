"""Train a ra2batch model bundle with Ray Train (same options as ``ra2batch train``).

Example (the built-in demo bundle)::

    python jobs/train.py --input cohort/ --output bundle/ --preset demo
"""

import argparse
import sys

from ra2batch.cli import EPILOG, run
from ra2batch.training import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.splitlines()[0], epilog=EPILOG)
    cli.add_arguments(parser)
    sys.exit(run(parser, cli))
