"""Package list for the mapped layout (see pyproject.toml [tool.setuptools] package-dir).

Every folder with an ``__init__.py`` below a mapped root becomes a subpackage, so a new
subfolder is never silently left out of the wheel (tests/test_packaging.py checks the wheel).
"""
import os

from setuptools import setup

ROOTS = {
    "speechtok": "tokenizers",
    "speechtok.codec": "codec",
    "speechtok.units": "units",
    "speechtok.cli": "cli",
    "speechtok.benchmarks": "benchmarks",
}


def _packages():
    pkgs = []
    for name, root in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, root)
            pkgs.append(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    return sorted(set(pkgs))


setup(packages=_packages())
