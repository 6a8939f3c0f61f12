"""The scoring job for ``ray job submit``: the same command as ``ra2batch score``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/score_archive.py --input s3://archive/radiographs --output s3://results/run1
"""

import argparse
import sys

from ra2batch.cli import EPILOG, run
from ra2batch.job import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="score_archive.py", description="Score an archive of hand and foot "
                                     "radiographs into per-patient RA2 scores (Ray Data).", epilog=EPILOG)
    cli.add_arguments(parser)
    sys.exit(run(parser, cli))
