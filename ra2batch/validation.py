"""Pydantic validation errors as one line a user can act on: which setting, and what is wrong with it."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(e: ValidationError) -> str:
    """``"detector_actors: Input should be greater than or equal to 1; ..."``: every error, by setting."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
