"""Synthetic RA2 cohorts: hand and foot radiographs whose joint damage matches their labels.

``generate_cohort`` writes images, RA2-layout labels, Pascal VOC boxes and joint sites;
``sample_labels`` draws the labels alone (fast, for statistics); ``render_limb`` renders one
radiograph in memory.
"""

from ra2batch.lazy import attributes

#: name -> the submodule it comes from, imported on first use (``ra2batch.lazy``)
_NAMES = {
    "CohortSummary": "cohort",
    "generate_cohort": "cohort",
    "sample_labels": "labels",
    "RenderedLimb": "render",
    "render_limb": "render",
}
__all__ = sorted(_NAMES)

__getattr__ = attributes(__name__, _NAMES)
