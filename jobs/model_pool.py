"""Warm model pools on a running cluster: the same command as ``ra2batch pool``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/model_pool.py start --models s3://models/v3
    ray job submit ... -- python jobs/model_pool.py stop
"""

import argparse
import sys

from ra2batch.cli import EPILOG, run
from ra2batch.job import pool_cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="model_pool.py", description="Start, list or stop the warm model actors "
                                     "that scoring jobs with the same bundle share.", epilog=EPILOG)
    pool_cli.add_arguments(parser)
    sys.exit(run(parser, pool_cli))
