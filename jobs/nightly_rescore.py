"""Nightly incremental rescoring: ``ray job submit -- python jobs/nightly_rescore.py --input ... --output ...``.

Scores only new, changed or stale radiographs and rebuilds only their patients; ``--full`` rescores all.
"""

import sys

from ra2batch.nightly_cli import run

if __name__ == "__main__":
    sys.exit(run())
