"""tamm: Template-Adapted Mixture Models for HEP.

Estimate the signal fraction kappa of an observed sample from many biased simulations of each
process: the data choose the combination of simulations that describes them, so kappa is not
biased by any single wrong simulation (Alvarez, Benevedes, Szewc, Thaler, arXiv 2604.02219).

Heavy submodules (TensorFlow, pyhf, zfit) load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from tamm._version import __version__

__all__ = [
    "GaussianToy",
    "KappaFit",
    "Region",
    "Simulation",
    "SimulationSet",
    "TopicFit",
    "TopicModel",
    "__version__",
    "exceptions",
    "learn_topics",
]

_LAZY = {
    "GaussianToy": "tamm.datasets",
    "KappaFit": "tamm.results",
    "Region": "tamm.samples",
    "Simulation": "tamm.samples",
    "SimulationSet": "tamm.samples",
    "TopicFit": "tamm.topics",
    "TopicModel": "tamm.topics",
    "learn_topics": "tamm.topics",
    "exceptions": "tamm.exceptions",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if name == "exceptions" else getattr(module, name)
    msg = f"module 'tamm' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return __all__
