"""Inference on kappa beyond the best fit: profile scans, limits, posteriors and competitors.

Which module to use:

- :mod:`tamm.inference.profile`: profile-likelihood scans of kappa on a pyhf model and the
  68.3 % / 95.4 % intervals read from their crossings (:func:`profile_scan`,
  :func:`profile_interval`, :class:`ProfileScan`).
- :mod:`tamm.inference.limits`: CLs upper limits and discovery significance through
  ``pyhf.infer`` (:func:`upper_limit`, :func:`discovery_significance`).
- :mod:`tamm.inference.posterior`: the Bayesian posterior of kappa for a topic mixture,
  sampled with TensorFlow Probability's No-U-Turn sampler (:func:`sample_posterior`).
- :mod:`tamm.inference.jackknife`: the spread of the binned kappa from the choice of
  simulations, a jackknife that learns the topics again without each one
  (:func:`jackknife_binned`).
- :mod:`tamm.inference.competitors`: the reference models of the studies, a HistFactory fit
  with principal shape systematics (:func:`histosys_spec`) and the oracle fit with the true
  shapes (:func:`oracle_spec`).

The names below load their module on first use, so importing this package stays cheap and
TensorFlow is only imported by the posterior.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ONE_SIGMA",
    "TWO_SIGMA",
    "DiscoveryResult",
    "PosteriorSample",
    "ProfileScan",
    "ShapeVariations",
    "UpperLimit",
    "coverage_probability",
    "discovery_significance",
    "highest_density_interval",
    "histosys_spec",
    "jackknife_binned",
    "jackknife_from_topics",
    "leave_one_out_topics",
    "limit_from_scan",
    "oracle_spec",
    "principal_variations",
    "profile_interval",
    "profile_scan",
    "sample_posterior",
    "upper_limit",
]

_MODULES = {
    "ONE_SIGMA": "profile",
    "TWO_SIGMA": "profile",
    "ProfileScan": "profile",
    "coverage_probability": "profile",
    "profile_interval": "profile",
    "profile_scan": "profile",
    "DiscoveryResult": "limits",
    "UpperLimit": "limits",
    "discovery_significance": "limits",
    "limit_from_scan": "limits",
    "upper_limit": "limits",
    "PosteriorSample": "posterior",
    "highest_density_interval": "posterior",
    "sample_posterior": "posterior",
    "ShapeVariations": "competitors",
    "histosys_spec": "competitors",
    "oracle_spec": "competitors",
    "principal_variations": "competitors",
    "jackknife_binned": "jackknife",
    "jackknife_from_topics": "jackknife",
    "leave_one_out_topics": "jackknife",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        module = importlib.import_module(f"tamm.inference.{_MODULES[name]}")
        return getattr(module, name)
    msg = f"module 'tamm.inference' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return __all__
