"""Train a ra2batch model bundle with Ray Train (same options as ``ra2batch train``).

Example (the built-in demo bundle)::

    python jobs/train.py --data cohort/ --out bundle/ --preset demo
"""

import argparse
import sys

from ra2batch.training import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    sys.exit(cli.main(parser.parse_args()))
