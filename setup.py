"""The package list, found rather than written: every ``prunenas*`` package plus the search spaces.

pyproject's ``[tool.setuptools.packages.find]`` cannot add ``prunenas.search_spaces``, which lives outside the
package folder (``search_spaces/``, mapped by ``package-dir`` in pyproject.toml); everything else is in pyproject.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["prunenas*"]), "prunenas.search_spaces"])
