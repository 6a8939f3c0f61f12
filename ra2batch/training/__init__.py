"""Ray Train training of the detectors and joint models into a model bundle (``ra2batch train``).

``pipeline.train`` runs everything; ``presets`` holds the ``paper`` and ``demo`` configurations;
``evaluation.evaluate_bundle`` scores a bundle end to end on labelled radiographs.
"""

from .dataset import DatasetError, DatasetIndex, ImageRecord, index_dataset, split_patients
from .evaluation import evaluate_bundle
from .metrics import average_precision
from .pipeline import RunSettings, TrainingError, train
from .presets import DEMO, PAPER, PRESETS, DetectorTraining, JointTraining, TrainPreset, get_preset

__all__ = [
    "DEMO", "PAPER", "PRESETS", "DatasetError", "DatasetIndex", "DetectorTraining", "ImageRecord", "JointTraining",
    "RunSettings", "TrainPreset", "TrainingError", "average_precision", "evaluate_bundle", "get_preset",
    "index_dataset", "split_patients", "train",
]
