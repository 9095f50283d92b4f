"""Built-in inputs: the paper's Gaussian toy (shipped with the package) and its exact log ratios."""

from __future__ import annotations

from tamm.datasets.gaussian import GaussianToy, PseudoData
from tamm.datasets.gaussian_ratios import ExactGaussianRatios

__all__ = ["ExactGaussianRatios", "GaussianToy", "PseudoData"]


def __dir__() -> list[str]:
    return __all__
