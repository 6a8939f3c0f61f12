"""Cohort queries over the scoring job's outputs (``ra2batch query``).

``open_results`` opens ``patients/``, ``joints/`` and ``images/`` (local or ``s3://``) as DuckDB
views without copying them; :mod:`.named` holds the named queries (distribution by cohort,
patients above a threshold, progression between visits, per-joint prevalence, comparison of two
model versions) and free SQL.
"""

from .cli import add_arguments, main
from .named import above, compare, distribution, prevalence, progression, sql
from .results import QueryError, Results, open_results

__all__ = [
    "QueryError", "Results", "above", "add_arguments", "compare", "distribution", "main", "open_results",
    "prevalence", "progression", "sql",
]
