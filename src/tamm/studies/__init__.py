"""Pseudo-experiment and coverage studies: many simulation draws, many pseudo-datasets each.

A study repeats the analysis of the paper's coverage test (arXiv 2604.02219): draw biased
simulations at random, prepare every method on them, fit many pseudo-datasets from nature,
and compare the fitted kappa with the true one. Which name to use:

- :class:`StudyConfig`: the settings (draws, pseudo-experiments, methods, seeds).
- :func:`run_study`: runs a study on one process, a local process pool or Dask, appending
  each fit to ``results.jsonl`` so a killed study resumes where it stopped.
- :func:`summarize`, :func:`format_table`: bias, RMSE, pulls, coverage and the between- and
  within-draw scatter per method; :func:`plot_coverage`, :func:`plot_pulls`: figures.
- :func:`register_method` with a :class:`Method`: add a fitting method to the registry.

Modules load on first use of a name. The package itself imports nothing heavy, because study
worker processes import it before limiting their numeric libraries to one thread.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_METHODS",
    "CoverageCurve",
    "Draw",
    "Experiment",
    "Fitter",
    "Method",
    "MethodOutcome",
    "MethodSummary",
    "StudyConfig",
    "StudyRun",
    "available_methods",
    "coverage_curves",
    "format_table",
    "get_method",
    "plot_coverage",
    "plot_pulls",
    "read_results",
    "register_method",
    "run_study",
    "summarize",
    "unregister_method",
]

_MODULES = {
    "DEFAULT_METHODS": "config",
    "StudyConfig": "config",
    "Draw": "methods",
    "Experiment": "methods",
    "Fitter": "methods",
    "Method": "methods",
    "MethodOutcome": "methods",
    "available_methods": "methods",
    "get_method": "methods",
    "register_method": "methods",
    "unregister_method": "methods",
    "StudyRun": "runner",
    "read_results": "runner",
    "run_study": "runner",
    "CoverageCurve": "summary",
    "MethodSummary": "summary",
    "coverage_curves": "summary",
    "format_table": "summary",
    "summarize": "summary",
    "plot_coverage": "plots",
    "plot_pulls": "plots",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        module = importlib.import_module(f"tamm.studies.{_MODULES[name]}")
        return getattr(module, name)
    msg = f"module 'tamm.studies' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return __all__
