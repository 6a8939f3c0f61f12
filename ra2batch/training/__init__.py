"""Ray Train training of the detectors and joint models into a model bundle (``ra2batch train``).

``pipeline.train`` runs everything; ``presets`` holds the ``paper`` and ``demo`` configurations;
``evaluation.evaluate_bundle`` scores a bundle end to end on labelled radiographs.
"""

from ra2batch.lazy import attributes

#: name -> the submodule it comes from, imported on first use (``ra2batch.lazy``)
_NAMES = {
    "DatasetError": "dataset",
    "DatasetIndex": "dataset",
    "ImageRecord": "dataset",
    "index_dataset": "dataset",
    "split_patients": "dataset",
    "evaluate_bundle": "evaluation",
    "average_precision": "metrics",
    "RunSettings": "pipeline",
    "TrainingError": "pipeline",
    "train": "pipeline",
    "DEMO": "presets",
    "PAPER": "presets",
    "PRESETS": "presets",
    "DetectorTraining": "presets",
    "JointTraining": "presets",
    "TrainPreset": "presets",
    "get_preset": "presets",
}
__all__ = sorted(_NAMES)

__getattr__ = attributes(__name__, _NAMES)
