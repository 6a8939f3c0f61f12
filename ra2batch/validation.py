"""Settings files and pydantic validation errors as one line a user can act on: which setting, and what
is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def one_line(e: ValidationError) -> str:
    """``"detector_actors: Input should be greater than or equal to 1; ..."``: every error, by setting."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def read_settings(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a ``.json``, ``.yaml`` or ``.yml`` file; a ``ValueError`` of one line, ``"{what}
    {path}: ..."``, when it cannot be read or parsed. YAML is read with ``safe_load``: plain data only, a
    tag that would construct an object is an error."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{what} {path}: expected a .json, .yaml or .yml file")
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {path}: not valid JSON: {e}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = str(getattr(e, "problem", None) or e).replace("\n", " ")
            raise ValueError(f"{what} {path}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a mapping of settings, got {type(data).__name__}")
    return data
