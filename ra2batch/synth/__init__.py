"""Synthetic RA2 cohorts: hand and foot radiographs whose joint damage matches their labels.

``generate_cohort`` writes images, RA2-layout labels, Pascal VOC boxes and joint sites;
``sample_labels`` draws the labels alone (fast, for statistics); ``render_limb`` renders one
radiograph in memory.
"""

from .cohort import CohortSummary, generate_cohort
from .labels import sample_labels
from .render import RenderedLimb, render_limb

__all__ = ["CohortSummary", "generate_cohort", "sample_labels", "render_limb", "RenderedLimb"]
