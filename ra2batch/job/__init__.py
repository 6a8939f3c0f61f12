"""The Ray Data scoring job: radiograph archive in, per-patient RA2 scores out.

    from ra2batch.job import score_archive
    summary = score_archive("s3://archive/radiographs", "s3://results/run1")
    print(summary.format())

``pipeline`` is the job as one chain of stages; ``inputs`` lists and identifies files; ``plan``
decides what a run scores (everything, or what changed for a nightly merge); ``decode`` (CPU tasks)
and ``predictors`` (model actors) are the model stage; ``reduce`` assembles and writes each bucket on
the cluster with ``assemble``'s rules; ``tables`` holds the pipeline's own schemas (the outputs' are
``ra2batch.output``'s); ``config`` the pool and batch sizes.
The names below are imported on first use, so ``ra2batch --help`` does not start importing Ray.
"""

from ra2batch.lazy import attributes

_NAMES = {"JobConfig": "config", "JobError": "pipeline", "JobInputError": "pipeline", "JobSummary": "pipeline",
          "score_archive": "pipeline"}
__all__ = sorted(_NAMES)
__getattr__ = attributes(__name__, _NAMES)
