"""Finding the modules that register parts: every registry (sampling parts, distillers,
rewards) imports its built-in package's modules and the modules a user names in an
environment variable, so a part defined outside the package works like a built-in one."""

from __future__ import annotations

import importlib
import os
import pkgutil


def import_modules(packages: tuple[str, ...], env_var: str) -> None:
    """Imports every module of ``packages`` and the modules named in ``$env_var``
    (comma-separated): the files that register parts."""
    for package in packages:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
    for name in filter(None, (m.strip() for m in os.environ.get(env_var, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"${env_var} names module {name!r}, which cannot be imported: {e}") from None
