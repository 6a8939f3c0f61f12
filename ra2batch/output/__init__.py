"""The scoring outputs: versioned Delta tables, the run manifests that tie them together, one reader.

Under an output folder (local or ``s3://``)::

    images/ joints/ patients/ catalogue/   Delta tables, partitioned by bucket (output.schema)
    runs/                                  Delta table: every run's record; ``published`` rows are manifests
    predictions.csv                        the RA2 template, a copy of the published run's
    _ra2batch/                             leases of running writers, staged predictions

Read an output with :func:`open_output` (every table at the version its newest manifest names, or
an earlier one with ``as_of``); write one through ``output.writer``.

The names below are imported on first use: ``output.buckets`` (pure Python) stays light for the
command line, which must not wait for pyarrow or delta-rs to print its help.
"""

from ra2batch.lazy import attributes

_NAMES = {"OutputError": "reader", "Snapshot": "reader", "history": "reader", "open_output": "reader",
          "OutputBusy": "runs", "TABLES": "schema"}
__all__ = sorted(_NAMES)

__getattr__ = attributes(__name__, _NAMES)
