"""Cohort queries over the scoring job's outputs (``ra2batch query``).

``open_results`` opens ``patients/``, ``joints/`` and ``images/`` (local or ``s3://``) as DuckDB
views without copying them; :mod:`.named` holds the named queries (distribution by cohort,
patients above a threshold, progression between visits, per-joint prevalence, comparison of two
model versions) and free SQL.
"""

from ra2batch.lazy import attributes

#: name -> the submodule it comes from, imported on first use (``ra2batch.lazy``)
_NAMES = {
    "add_arguments": "cli",
    "main": "cli",
    "above": "named",
    "compare": "named",
    "distribution": "named",
    "prevalence": "named",
    "progression": "named",
    "sql": "named",
    "QueryError": "results",
    "Results": "results",
    "open_results": "results",
}
__all__ = sorted(_NAMES)

__getattr__ = attributes(__name__, _NAMES)
