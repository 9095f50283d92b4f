"""Sandwich covariance of the unbinned TAMM fit and the correction of its profile statistic.

The TAMM loss is not a plain likelihood: the reference term is a Monte Carlo estimate of a
normalisation integral, the penalty is evaluated on a finite simulated sample, and the ridge
is a prior-like term. The inverse Hessian therefore misstates the variance of the estimates.
The sandwich (Huber-White) covariance does not:

.. math::

    V = A^{-1} B A^{-1}, \\qquad \\sigma_\\kappa = \\sqrt{V_{\\kappa\\kappa}},

with ``A`` the Hessian of the full loss at the minimum (all terms, ridge included) and ``B``
the covariance of the loss gradient, summed over the three independent samples
(arXiv 2604.02219, the FNE uncertainty):

* data: :math:`B_\\mathrm{data} = N\\,\\mathrm{Cov}_i[\\nabla R(x_i) / R(x_i)]`;
* reference: :math:`B_\\mathrm{ref} = c_\\mathrm{ref}^2 N_\\mathrm{ref}\\,\\mathrm{Cov}_j[\\nabla R(y_j)]`
  with :math:`c_\\mathrm{ref} = N / N_\\mathrm{ref}`;
* penalty: :math:`B_\\mathrm{pen} = \\lambda_\\mathrm{pen}^2 c_\\mathrm{pen}^2 N_\\mathrm{pen}
  \\mathrm{Var}_l[h_l]\\, m m^T` with :math:`h_l = c_b R_b(z_l) - c_s R_s(z_l)`,
  :math:`m = \\overline{\\nabla h}` and :math:`c_\\mathrm{pen} = N / N_\\mathrm{pen}`.

The ridge enters ``A`` only. Covariances are population covariances (divided by the sample
size). ``B`` leaves out the statistical noise of trained ratio networks and the choice of
simulations; a study that varies those must add their spread separately.

The profile statistic :math:`q = 2[L(\\kappa_0, \\hat\\eta(\\kappa_0)) - L(\\hat\\theta)]` is
divided by :math:`\\lambda_\\mathrm{corr} = \\tilde A_{\\kappa\\kappa} V_{\\kappa\\kappa}`, where
:math:`\\tilde A_{\\kappa\\kappa} = 1 / (A^{-1})_{\\kappa\\kappa}` is the Schur complement (the
profiled curvature). For a correctly specified likelihood :math:`\\lambda_\\mathrm{corr} = 1`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.mixture.likelihood import TemplateAdaptedLikelihood

__all__ = ["SandwichCovariance", "sandwich_covariance"]

log = logging.getLogger(__name__)


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True, eq=False)
class SandwichCovariance:
    """The pieces of the sandwich covariance at one parameter point.

    Attributes:
        hessian: ``A``, Hessian of the full loss, shape ``(P, P)``.
        meat_data: ``B_data``, shape ``(P, P)``.
        meat_reference: ``B_ref``, shape ``(P, P)``.
        meat_penalty: ``B_pen``, shape ``(P, P)``.
        covariance: ``V = A^-1 B A^-1``, shape ``(P, P)``; NaN when ``A`` is singular.
    """

    hessian: NDArray[np.float64]
    meat_data: NDArray[np.float64]
    meat_reference: NDArray[np.float64]
    meat_penalty: NDArray[np.float64]
    covariance: NDArray[np.float64]

    @property
    def meat(self) -> NDArray[np.float64]:
        """``B = B_data + B_ref + B_pen``, shape ``(P, P)``."""
        return self.meat_data + self.meat_reference + self.meat_penalty

    @property
    def sigma_kappa(self) -> float:
        """Sandwich uncertainty of kappa, ``sqrt(V_kk)``; NaN if not positive."""
        variance = float(self.covariance[0, 0])
        return math.sqrt(variance) if variance > 0 else math.nan

    @property
    def profiled_curvature(self) -> float:
        """Schur complement ``A~_kk = 1 / (A^-1)_kk``, the curvature of the profiled loss."""
        try:
            inverse = np.linalg.inv(self.hessian)
        except np.linalg.LinAlgError:
            return math.nan
        return 1.0 / float(inverse[0, 0])

    @property
    def lambda_corr(self) -> float:
        """Correction ``A~_kk V_kk`` of the profile statistic (1 for a correct likelihood)."""
        return self.profiled_curvature * float(self.covariance[0, 0])


def sandwich_covariance(
    likelihood: TemplateAdaptedLikelihood,
    theta: ArrayLike,
    *,
    hessian: ArrayLike | None = None,
) -> SandwichCovariance:
    """Compute the sandwich covariance of the TAMM loss at ``theta`` (normally the best fit).

    Args:
        likelihood: The loss and its samples.
        theta: Parameters, shape ``(P,)``.
        hessian: The Hessian of the loss at ``theta``, shape ``(P, P)``, when the caller has it
            (a fitter does); computed otherwise.

    Returns:
        ``A``, the three parts of ``B`` and ``V``.

    Examples:
        >>> from tamm.mixture import MixtureSamples, TemplateAdaptedLikelihood
        >>> rng = np.random.default_rng(0)
        >>> features = rng.normal(scale=0.1, size=(3, 500, 4))  # data, reference, penalty
        >>> likelihood = TemplateAdaptedLikelihood(MixtureSamples(*features))
        >>> sandwich = sandwich_covariance(likelihood, likelihood.default_parameters(0.5))
        >>> sandwich.covariance.shape
        (5, 5)
    """
    vector = np.asarray(theta, dtype=np.float64)
    hessian = (
        likelihood.hessian(vector) if hessian is None else np.asarray(hessian, dtype=np.float64)
    )
    n_data = likelihood.n_data

    score = likelihood.data_score(vector)
    mean_score = score.mean(axis=0)
    meat_data = score.T @ score - n_data * np.outer(mean_score, mean_score)

    total, gram = likelihood.reference_gradients(vector)
    mean_gradient = total / likelihood.n_reference
    scale = likelihood.reference_scale
    meat_reference = scale**2 * (
        gram - likelihood.n_reference * np.outer(mean_gradient, mean_gradient)
    )

    _, penalty_gradient, _ = likelihood.penalty_moments(vector)
    penalty_variance = float(np.var(likelihood.penalty_values(vector)))
    penalty_scale = n_data / likelihood.n_penalty
    meat_penalty = (
        likelihood.penalty_strength**2
        * penalty_scale**2
        * likelihood.n_penalty
        * penalty_variance
        * np.outer(penalty_gradient, penalty_gradient)
    )

    meat = meat_data + meat_reference + meat_penalty
    covariance: NDArray[np.float64]
    try:
        half = np.linalg.solve(hessian, meat)
        product = np.linalg.solve(hessian, half.T)
        covariance = np.asarray(0.5 * (product + product.T), dtype=np.float64)
    except np.linalg.LinAlgError:
        log.warning("The Hessian at the best fit is singular; the sandwich covariance is NaN")
        covariance = np.full(hessian.shape, np.nan)
    return SandwichCovariance(hessian, meat_data, meat_reference, meat_penalty, covariance)
