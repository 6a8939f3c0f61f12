"""Package attributes imported on first use, so that importing a package (as the command line's
parsers do) does not import torch, Ray or pandas behind it."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def attributes(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each of ``names`` (name -> submodule)
    from its submodule when first asked for."""
    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
