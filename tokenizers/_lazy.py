"""Lazy package exports: names that import their submodule on first use (keeps imports light)."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, table: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` from ``table``: public name -> ``"submodule:attr"``.

    A resolved name is cached in ``namespace`` (the package's ``globals()``).
    """

    def __getattr__(name: str):
        if name in table:
            module, attr = table[name].split(":")
            value = getattr(importlib.import_module(f"{package}.{module}"), attr)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(table) | {n for n in namespace if not n.startswith("_")})

    return __getattr__, __dir__
