"""Unbinned template-adapted mixture: the TAMM likelihood on cached log ratios and its fitter.

Pipeline position: the ratio networks (or, for the Gaussian toy, the exact densities in
:mod:`tamm.datasets.gaussian_ratios`) give the log ratio of each simulation to the pooled
reference on the data, reference and penalty samples. This package turns those matrices into
kappa with a sandwich uncertainty and profile-likelihood intervals; it never calls a network.

* :mod:`tamm.mixture.likelihood`: :class:`MixtureSamples`, :func:`build_samples`, the loss
  :class:`TemplateAdaptedLikelihood` (exact gradient and Hessian) and :func:`tensorflow_loss`.
* :mod:`tamm.mixture.sandwich`: :func:`sandwich_covariance`.
* :mod:`tamm.mixture.jackknife`: :func:`jackknife_simulations`, the uncertainty from the choice
  of simulations.
* :mod:`tamm.mixture.fit`: :func:`fit_unbinned`, :func:`profile_kappa`, :func:`profile_scan`,
  :func:`profile_intervals` and the single-simulation :func:`fit_baseline_unbinned` with its
  :func:`baseline_scan`.
"""

from __future__ import annotations

from tamm.mixture.fit import (
    BaselineFit,
    OptimizerStatus,
    ProfileFit,
    ProfileIntervals,
    ProfileScan,
    UnbinnedFit,
    baseline_scan,
    fit_baseline_unbinned,
    fit_unbinned,
    profile_intervals,
    profile_kappa,
    profile_scan,
)
from tamm.mixture.jackknife import SimulationJackknife, jackknife_simulations
from tamm.mixture.likelihood import (
    LogRatioFunction,
    MixtureSamples,
    TemplateAdaptedLikelihood,
    build_samples,
    split_pool,
    tensorflow_loss,
)
from tamm.mixture.sandwich import SandwichCovariance, sandwich_covariance

__all__ = [
    "BaselineFit",
    "LogRatioFunction",
    "MixtureSamples",
    "OptimizerStatus",
    "ProfileFit",
    "ProfileIntervals",
    "ProfileScan",
    "SandwichCovariance",
    "SimulationJackknife",
    "TemplateAdaptedLikelihood",
    "UnbinnedFit",
    "baseline_scan",
    "build_samples",
    "fit_baseline_unbinned",
    "fit_unbinned",
    "jackknife_simulations",
    "profile_intervals",
    "profile_kappa",
    "profile_scan",
    "sandwich_covariance",
    "split_pool",
    "tensorflow_loss",
]


def __dir__() -> list[str]:
    return __all__
