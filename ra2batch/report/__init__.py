"""Explainability and review: a static HTML site over a scoring job's output (``ra2batch report``).

``results.load_results`` reads the job's tables and run manifest, ``site.build_site`` writes the
patient pages and ``index`` the patient list; ``review`` is the rule that flags joints and ranks
patients, ``overlay`` cuts each joint crop as the model saw it (geometry from the run manifest) and
draws its attention map, ``charts`` the hand/foot score charts and radiographs, ``names`` the clinical
words for limbs and crops, ``pages`` the shared HTML shell, and ``layout`` the schematic joint
positions that the evaluate plots share. The command line is in ``cli`` (re-exported here, so the
console script can name either module; heavy imports wait until ``main`` runs).
"""

from ra2batch.report.cli import add_arguments, main

__all__ = ["add_arguments", "main"]
