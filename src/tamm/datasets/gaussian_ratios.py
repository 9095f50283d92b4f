"""Exact log density ratios of the Gaussian toy's simulations, for tests and oracle studies.

The unbinned engine consumes, per event, the log ratio of each chosen simulation's density to
the pooled reference, corrected for the fiducial acceptance. The pooled reference is the equal
mixture of all chosen simulations of both processes, uncut (arXiv 2604.02219, sections on the
multiclass ratios and the acceptance correction):

.. math::

    \\log \\tilde r_k(x) = \\log p_k(x) - \\log p_\\mathrm{ref}(x) + \\log(\\bar e / e_k),
    \\qquad p_\\mathrm{ref} = \\frac{1}{C} \\sum_{k=1}^{C} p_k,
    \\qquad \\bar e = \\frac{1}{C} \\sum_k e_k,

where :math:`e_k` is the probability of simulation :math:`k` inside the region. Inside the
region this equals the ratio of the two cut, normalised densities. A trained ratio network
estimates these numbers; for the Gaussian toy they are known in closed form, so
:class:`ExactGaussianRatios` replaces the network wherever the network's error should not
enter (likelihood tests, oracle fits). Columns are ordered signal simulations first, then
background simulations, the convention of :mod:`tamm.mixture`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from tamm.datasets.gaussian import GaussianToy
from tamm.exceptions import InvalidSimulationError
from tamm.samples import Region

__all__ = ["ExactGaussianRatios", "gaussian_box_probability"]

# Gauss-Legendre nodes for the x-integral of a box probability. The integrand is smooth
# (a normal density times a difference of normal CDFs), so 64 nodes reach double precision
# for boxes a few standard deviations wide.
_BOX_QUADRATURE_NODES = 64
# Rows per block when evaluating log densities, to bound the (rows, simulations) temporaries.
_CHUNK_ROWS = 65_536


def __dir__() -> list[str]:
    return __all__


def gaussian_box_probability(
    mean: ArrayLike, cov: ArrayLike, lower: ArrayLike, upper: ArrayLike
) -> float:
    """Return the probability that a bivariate normal falls inside the box [lower, upper].

    Args:
        mean: Mean, shape ``(2,)``.
        cov: Covariance, shape ``(2, 2)``, positive definite.
        lower: Lower corner of the box, shape ``(2,)``.
        upper: Upper corner of the box, shape ``(2,)``.

    Returns:
        The (unnormalised) probability mass inside the box.

    Notes:
        The mass is the x-integral of the x-marginal density times the conditional probability
        of the y-interval given x, by Gauss-Legendre quadrature: deterministic, unlike the
        quasi-Monte-Carlo algorithm behind ``scipy.stats.multivariate_normal.cdf``.

    Examples:
        >>> round(gaussian_box_probability([0, 0], [[1, 0], [0, 1]], [-2, -2], [2, 2]), 6)
        0.91107
    """
    mu = np.asarray(mean, dtype=np.float64)
    sigma = np.asarray(cov, dtype=np.float64)
    low = np.asarray(lower, dtype=np.float64)
    high = np.asarray(upper, dtype=np.float64)

    nodes, weights = np.polynomial.legendre.leggauss(_BOX_QUADRATURE_NODES)
    half_width = 0.5 * (high[0] - low[0])
    x = 0.5 * (high[0] + low[0]) + half_width * nodes
    sigma_x, sigma_y = math.sqrt(sigma[0, 0]), math.sqrt(sigma[1, 1])
    rho = sigma[0, 1] / (sigma_x * sigma_y)
    conditional_mean = mu[1] + rho * sigma_y / sigma_x * (x - mu[0])
    conditional_sigma = sigma_y * math.sqrt(1.0 - rho**2)

    interval = stats.norm.cdf((high[1] - conditional_mean) / conditional_sigma) - stats.norm.cdf(
        (low[1] - conditional_mean) / conditional_sigma
    )
    density_x = stats.norm.pdf(x, loc=mu[0], scale=sigma_x)
    return float(half_width * np.sum(weights * density_x * interval))


@dataclass(frozen=True, eq=False)
class ExactGaussianRatios:
    """Exact, acceptance-corrected log ratios of chosen toy simulations to their pooled reference.

    Build it with :meth:`from_toy`, or with :meth:`from_gaussians` for any Gaussians (nature's own
    densities, say). Calling the object maps events ``(n, 2)`` to the log ratios
    ``(n, C)``, so it can be passed wherever :mod:`tamm.mixture` expects a ``log_ratio_fn``.

    Attributes:
        means: Simulation means, shape ``(C, 2)``; the first ``n_signal_classes`` rows are the
            signal simulations.
        covariances: Simulation covariances, shape ``(C, 2, 2)``.
        n_signal_classes: Number of signal simulations (columns ``0 .. n_signal_classes - 1``).
        region: The fiducial box.
        acceptances: Probability of each simulation inside ``region``, shape ``(C,)``
            (:math:`e_k`).

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> toy = GaussianToy()
        >>> ratios = ExactGaussianRatios.from_toy(toy, [0, 1, 2], [0, 1, 2])
        >>> ratios.n_classes
        6
        >>> reference = ratios.sample_reference(1000, seed=1)  # (1000, 2), cut pooled simulations
        >>> ratios(reference).shape
        (1000, 6)
    """

    means: NDArray[np.float64]
    covariances: NDArray[np.float64]
    n_signal_classes: int
    region: Region
    acceptances: NDArray[np.float64]

    @classmethod
    def from_toy(
        cls,
        toy: GaussianToy,
        signal_indices: Sequence[int] | NDArray[np.int64],
        background_indices: Sequence[int] | NDArray[np.int64],
        *,
        region: Region | None = None,
    ) -> ExactGaussianRatios:
        """Collect the Gaussians of the chosen toy simulations and their exact acceptances.

        Args:
            toy: The Gaussian toy.
            signal_indices: Indices of the signal simulations, one column each.
            background_indices: Indices of the background simulations, one column each.
            region: Fiducial box; the toy's region by default.

        Raises:
            InvalidSimulationError: If either index list is empty or an index is out of range.
        """
        signal = [int(i) for i in signal_indices]
        background = [int(i) for i in background_indices]
        if not signal or not background:
            msg = (
                f"Exact ratios need at least one simulation per process; received "
                f"{len(signal)} signal and {len(background)} background indices."
            )
            raise InvalidSimulationError(msg)
        parameters = [toy.simulation_parameters("signal", i) for i in signal]
        parameters += [toy.simulation_parameters("background", i) for i in background]
        return cls.from_gaussians(
            [mean for mean, _ in parameters],
            [cov for _, cov in parameters],
            n_signal_classes=len(signal),
            region=toy.region(bins=None) if region is None else region,
        )

    @classmethod
    def from_gaussians(
        cls,
        means: ArrayLike,
        covariances: ArrayLike,
        *,
        n_signal_classes: int,
        region: Region,
    ) -> ExactGaussianRatios:
        """Use any bivariate Gaussians as the simulations, for example nature's own densities.

        Args:
            means: Means, shape ``(C, 2)``, signal simulations first.
            covariances: Covariances, shape ``(C, 2, 2)``.
            n_signal_classes: Number of signal simulations among the ``C``.
            region: Fiducial box.

        Raises:
            InvalidSimulationError: If the shapes do not match or ``n_signal_classes`` is not
                in ``[1, C - 1]``.
        """
        mean_array = np.asarray(means, dtype=np.float64)
        cov_array = np.asarray(covariances, dtype=np.float64)
        n_classes = mean_array.shape[0] if mean_array.ndim == 2 else 0
        if (
            mean_array.shape != (n_classes, 2)
            or cov_array.shape != (n_classes, 2, 2)
            or n_classes < 2
        ):
            msg = (
                f"means must have shape (C, 2) and covariances (C, 2, 2) with C >= 2; received "
                f"{mean_array.shape} and {cov_array.shape}."
            )
            raise InvalidSimulationError(msg)
        if not 1 <= n_signal_classes < n_classes:
            msg = f"n_signal_classes must be in [1, {n_classes - 1}]; received {n_signal_classes}."
            raise InvalidSimulationError(msg)

        lower = np.array([lo for lo, _ in region.limits])
        upper = np.array([hi for _, hi in region.limits])
        acceptances = np.array(
            [
                gaussian_box_probability(m, c, lower, upper)
                for m, c in zip(mean_array, cov_array, strict=True)
            ]
        )
        return cls(mean_array, cov_array, int(n_signal_classes), region, acceptances)

    @property
    def n_classes(self) -> int:
        """Number of simulations (columns), signal and background together."""
        return int(self.means.shape[0])

    def log_densities(self, events: ArrayLike) -> NDArray[np.float64]:
        """Return the uncut log density of every simulation at each event, shape ``(n, C)``."""
        x = self.region.check_events(events)
        precisions = np.linalg.inv(self.covariances)
        log_norm = -np.log(2.0 * np.pi) - 0.5 * np.linalg.slogdet(self.covariances)[1]

        out = np.empty((len(x), self.n_classes))
        for start in range(0, len(x), _CHUNK_ROWS):
            block = x[start : start + _CHUNK_ROWS]
            delta = block[:, None, :] - self.means[None, :, :]
            quadratic = np.einsum("nci,cij,ncj->nc", delta, precisions, delta)
            out[start : start + _CHUNK_ROWS] = log_norm - 0.5 * quadratic
        return out

    def log_ratios(
        self, events: ArrayLike, *, acceptance_corrected: bool = True
    ) -> NDArray[np.float64]:
        """Return the log ratio of each simulation to the pooled reference, shape ``(n, C)``.

        Args:
            events: Events, shape ``(n, 2)``.
            acceptance_corrected: Add :math:`\\log(\\bar e / e_k)`, so that the ratios refer to
                the densities normalised inside the region (what the fit needs).
        """
        log_p = self.log_densities(events)
        log_reference = special.logsumexp(log_p, axis=1, keepdims=True) - math.log(self.n_classes)
        out: NDArray[np.float64] = np.asarray(log_p - log_reference, dtype=np.float64)
        if acceptance_corrected:
            out += np.log(self.acceptances.mean() / self.acceptances)[None, :]
        return out

    def __call__(self, events: ArrayLike) -> NDArray[np.float64]:
        """Return :meth:`log_ratios` with the acceptance correction, shape ``(n, C)``."""
        return self.log_ratios(events)

    def sample_reference(
        self, n_events: int, *, seed: int | np.random.SeedSequence | None
    ) -> NDArray[np.float64]:
        """Draw ``n_events`` events of the pooled simulations inside the region, shape ``(n, 2)``.

        Each candidate picks a simulation uniformly and is kept only inside the region, which
        is the same distribution as pooling equal numbers of events per simulation before the
        cut and shuffling the survivors.

        Raises:
            InvalidSimulationError: If ``n_events`` is not positive.
        """
        if n_events < 1:
            msg = f"n_events must be a positive number of events; received {n_events}."
            raise InvalidSimulationError(msg)
        rng = np.random.default_rng(seed)
        cholesky = np.linalg.cholesky(self.covariances)
        mean_acceptance = float(self.acceptances.mean())

        kept: list[NDArray[np.float64]] = []
        n_kept = 0
        while n_kept < n_events:
            n_draw = max(int(1.1 * (n_events - n_kept) / mean_acceptance), 1024)
            labels = rng.integers(self.n_classes, size=n_draw)
            normal = rng.standard_normal((n_draw, 2))
            batch = self.means[labels] + np.einsum("nij,nj->ni", cholesky[labels], normal)
            batch = batch[self.region.contains(batch)]
            kept.append(batch)
            n_kept += len(batch)
        return np.concatenate(kept)[:n_events]
