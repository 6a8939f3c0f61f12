"""The scoring outputs: versioned Delta tables, the run manifests that tie them together, one reader.

Under an output folder (local or ``s3://``)::

    images/ joints/ patients/ catalogue/   Delta tables, partitioned by bucket (output.schema)
    runs/                                  Delta table: every run's record; ``published`` rows are manifests
    predictions.csv                        the RA2 template, a copy of the published run's
    _ra2batch/                             leases of running writers, staged predictions

Read an output with :func:`open_output` (every table at the version its newest manifest names, or
an earlier one with ``as_of``); write one through ``output.writer``.
"""

from ra2batch.output.reader import OutputError, Snapshot, history, open_output
from ra2batch.output.runs import OutputBusy
from ra2batch.output.schema import TABLES

__all__ = ["OutputBusy", "OutputError", "Snapshot", "TABLES", "history", "open_output"]
