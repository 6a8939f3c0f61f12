"""Explainability and review: a static HTML site over a scoring job's output (``ra2batch report``).

``results.load_results`` reads the job's tables, ``site.build_site`` writes the pages, ``charts`` draws
the hand/foot score charts, ``overlay`` the attention heat maps and ``layout`` holds the schematic
joint positions that the evaluate plots share. The command line is in ``cli`` (re-exported here, so
the console script can name either module; heavy imports wait until ``main`` runs).
"""

from ra2batch.report.cli import add_arguments, main

__all__ = ["add_arguments", "main"]
