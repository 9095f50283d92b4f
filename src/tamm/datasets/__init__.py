"""Built-in inputs: the paper's Gaussian toy (shipped with the package)."""

from __future__ import annotations

from tamm.datasets.gaussian import GaussianToy, PseudoData

__all__ = ["GaussianToy", "PseudoData"]


def __dir__() -> list[str]:
    return __all__
