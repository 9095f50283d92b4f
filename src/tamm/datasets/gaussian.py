"""The two-dimensional Gaussian toy of the TAMM paper (arXiv 2604.02219).

Nature is a mixture of two Gaussians in (x1, x2), observed in the square |x1| <= 2, |x2| <= 2:

* signal: mean (0, 0), covariance [[1, 0], [0, 1]];
* background: mean (0, 1), covariance [[3, 0.4], [0.4, 3]].

The biased simulations are 500 signal and 500 background Gaussians whose means and covariances
are each off by at least 0.1 from nature (their parameters are shipped as package data,
``gaussian_toy_msds.json``, converted from the paper's public files). No simulation equals
nature, so a fit with any single simulation as template gives a biased signal fraction.

This module is the default input of ``tamm demo`` and of the tests: it draws simulations,
pseudo-data and exact bin probabilities of nature, all from explicit seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from tamm.exceptions import InvalidSimulationError
from tamm.samples import Region, Simulation, SimulationSet

__all__ = ["GaussianToy", "PseudoData"]

Process = Literal["signal", "background"]
_PROCESSES: tuple[Process, ...] = ("signal", "background")
_QUADRATURE_NODES = 24


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True, eq=False)
class PseudoData:
    """One pseudo-experiment: observed events and the true composition they were drawn with.

    Attributes:
        events: Events inside the region, shuffled, shape ``(n_signal + n_background, 2)``.
        is_signal: Generator truth per event, shape ``(n_events,)``; never used in fits.
        n_signal: Number of signal events in ``events``.
        n_background: Number of background events in ``events``.
    """

    events: NDArray[np.float64]
    is_signal: NDArray[np.bool_]
    n_signal: int
    n_background: int

    @property
    def kappa_true(self) -> float:
        """Signal fraction of this sample, from the generated counts."""
        return self.n_signal / (self.n_signal + self.n_background)


def _seed_sequence(seed: int | np.random.SeedSequence | None) -> np.random.SeedSequence:
    """Return ``seed`` as a SeedSequence (an int or None starts a new one)."""
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


@cache
def _load_parameters() -> dict[str, Any]:
    text = resources.files("tamm.datasets").joinpath("data/gaussian_toy_msds.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True, eq=False)
class GaussianToy:
    """The paper's Gaussian toy: nature, its 500 + 500 biased simulations and the region.

    Examples:
        >>> toy = GaussianToy()
        >>> toy.n_simulations
        500
        >>> data = toy.pseudo_data(n_signal=50, n_background=500, seed=1)
        >>> data.events.shape
        (550, 2)
        >>> round(data.kappa_true, 4)
        0.0909
    """

    observables: tuple[str, str] = ("x1", "x2")

    @property
    def _parameters(self) -> dict[str, Any]:
        return _load_parameters()

    @property
    def n_simulations(self) -> int:
        """Number of biased simulations per process (500)."""
        return len(self._parameters["signal_means"])

    def region(self, bins: int | None = 10) -> Region:
        """Return the fiducial square ``|x1| <= 2, |x2| <= 2``, with ``bins`` x ``bins`` bins by default."""
        limits = self._parameters["fiducial_region"]
        return Region(
            self.observables, {name: tuple(limits[name]) for name in self.observables}, bins=bins
        )

    def true_parameters(self, process: Process) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the mean ``(2,)`` and covariance ``(2, 2)`` of nature for ``process``."""
        key = f"true_{self._check_process(process)}"
        truth = self._parameters[key]
        return np.array(truth["mean"], dtype=np.float64), np.array(truth["cov"], dtype=np.float64)

    def simulation_parameters(
        self, process: Process, index: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the mean ``(2,)`` and covariance ``(2, 2)`` of biased simulation ``index`` of ``process``."""
        process = self._check_process(process)
        if not 0 <= index < self.n_simulations:
            msg = f"Simulation index must be in [0, {self.n_simulations}); received {index}."
            raise InvalidSimulationError(msg)
        mean = self._parameters[f"{process}_means"][index]
        cov = self._parameters[f"{process}_covs"][index]
        return np.array(mean, dtype=np.float64), np.array(cov, dtype=np.float64)

    def choose_simulations(
        self, n: int, *, seed: int | np.random.SeedSequence | None
    ) -> NDArray[np.int64]:
        """Draw ``n`` distinct simulation indices at random (without replacement), sorted."""
        if not 1 <= n <= self.n_simulations:
            msg = f"Number of simulations must be in [1, {self.n_simulations}]; received {n}."
            raise InvalidSimulationError(msg)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.n_simulations, size=n, replace=False))

    def simulation(
        self,
        process: Process,
        index: int,
        *,
        n_events: int = 400_000,
        seed: int | np.random.SeedSequence | None,
    ) -> Simulation:
        """Sample ``n_events`` events (no fiducial cut) from biased simulation ``index``."""
        mean, cov = self.simulation_parameters(process, index)
        rng = np.random.default_rng(seed)
        events = rng.multivariate_normal(mean, cov, size=n_events, method="cholesky")
        settings = {"index": int(index), "mean": mean.tolist(), "cov": cov.tolist()}
        return Simulation(
            events, name=f"{process}_{index:03d}", settings=settings, observables=self.observables
        )

    def simulations(
        self,
        process: Process,
        indices: NDArray[np.int64] | list[int],
        *,
        n_events: int = 400_000,
        seed: int | np.random.SeedSequence | None,
    ) -> SimulationSet:
        """Sample the biased simulations ``indices`` of ``process``, one independent stream each."""
        streams = _seed_sequence(seed).spawn(len(indices))
        sims = [
            self.simulation(process, int(i), n_events=n_events, seed=stream)
            for i, stream in zip(indices, streams, strict=True)
        ]
        return SimulationSet(sims, process=process)

    def sample_truth(
        self, process: Process, n_inside: int, *, seed: int | np.random.SeedSequence | None
    ) -> NDArray[np.float64]:
        """Draw exactly ``n_inside`` events of nature's ``process`` inside the region.

        Events are drawn from the full Gaussian and those outside the region are rejected, so
        the kept events follow the truncated density.
        """
        mean, cov = self.true_parameters(process)
        region = self.region(bins=None)
        rng = np.random.default_rng(seed)
        kept: list[NDArray[np.float64]] = []
        n_kept = 0
        while n_kept < n_inside:
            batch = rng.multivariate_normal(mean, cov, size=max(2 * (n_inside - n_kept), 1024))
            batch = batch[region.contains(batch)]
            kept.append(batch)
            n_kept += len(batch)
        return np.concatenate(kept)[:n_inside]

    def pseudo_data(
        self,
        n_signal: int = 5000,
        n_background: int = 50_000,
        *,
        poisson: bool = False,
        seed: int | np.random.SeedSequence | None,
    ) -> PseudoData:
        """Draw one pseudo-experiment from nature inside the region.

        Args:
            n_signal: Signal events inside the region (the expected number if ``poisson``).
            n_background: Background events inside the region (likewise).
            poisson: Draw the two counts from Poisson distributions with these means instead of
                fixing them (the paper fixes them).
            seed: Seed of this pseudo-experiment.
        """
        if n_signal < 0 or n_background < 0 or n_signal + n_background == 0:
            msg = (
                f"Pseudo-data need non-negative counts with a positive total; received "
                f"n_signal={n_signal}, n_background={n_background}."
            )
            raise InvalidSimulationError(msg)
        count_seed, signal_seed, background_seed, shuffle_seed = _seed_sequence(seed).spawn(4)
        if poisson:
            count_rng = np.random.default_rng(count_seed)
            n_signal = int(count_rng.poisson(n_signal))
            n_background = int(count_rng.poisson(n_background))
        signal = self.sample_truth("signal", n_signal, seed=signal_seed)
        background = self.sample_truth("background", n_background, seed=background_seed)
        events = np.concatenate([signal, background])
        is_signal = np.concatenate([np.ones(n_signal, bool), np.zeros(n_background, bool)])
        order = np.random.default_rng(shuffle_seed).permutation(len(events))
        return PseudoData(events[order], is_signal[order], n_signal, n_background)

    def true_bin_probabilities(self, process: Process, region: Region) -> NDArray[np.float64]:
        """Exact probability of each bin of ``region`` under nature, given the region.

        Computed from the bivariate normal CDF (no Monte Carlo); flattened in C order, shape
        ``(region.n_bins,)``, sums to one.
        """
        mean, cov = self.true_parameters(process)
        return _box_probabilities(mean, cov, region)

    def simulation_bin_probabilities(
        self, process: Process, index: int, region: Region
    ) -> NDArray[np.float64]:
        """Exact bin probabilities of biased simulation ``index`` inside ``region`` (sums to one)."""
        mean, cov = self.simulation_parameters(process, index)
        return _box_probabilities(mean, cov, region)

    @staticmethod
    def _check_process(process: str) -> Process:
        if process not in _PROCESSES:
            msg = f"Unknown process {process!r}; the Gaussian toy has {list(_PROCESSES)}."
            raise InvalidSimulationError(msg)
        return process


def _box_probabilities(
    mean: NDArray[np.float64], cov: NDArray[np.float64], region: Region
) -> NDArray[np.float64]:
    """Bin probabilities of a bivariate normal on a 2-D binned region, normalised inside it.

    Notes:
        Each bin is integrated as the x-integral of the x-marginal density times the conditional
        probability of the y-interval given x, with Gauss-Legendre quadrature in x. The
        integrand is smooth, so 24 nodes per bin give about 1e-12 relative accuracy; this
        avoids the randomised (quasi-Monte-Carlo) algorithm of ``scipy.stats.multivariate_normal.cdf``.
    """
    edges_x, edges_y = region.edges or ()
    nodes, node_weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    half_width = 0.5 * np.diff(edges_x)
    centre = 0.5 * (edges_x[1:] + edges_x[:-1])
    x = centre[:, None] + half_width[:, None] * nodes[None, :]
    sigma_x, sigma_y = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    rho = cov[0, 1] / (sigma_x * sigma_y)
    conditional_mean = mean[1] + rho * sigma_y / sigma_x * (x - mean[0])
    conditional_sigma = sigma_y * math.sqrt(1.0 - rho**2)
    # y-interval probabilities given x: shape (n_x_bins, n_nodes, n_y_bins)
    cdf_y = stats.norm.cdf(
        (edges_y[None, None, :] - conditional_mean[..., None]) / conditional_sigma
    )
    interval = np.diff(cdf_y, axis=-1)
    density_x = stats.norm.pdf(x, loc=mean[0], scale=sigma_x) * half_width[:, None]
    probabilities = np.einsum("n,in,inj->ij", node_weights, density_x, interval).ravel()
    total = probabilities.sum()
    if not math.isfinite(total) or total <= 0:
        msg = "The region holds no probability of this Gaussian; check the region limits."
        raise InvalidSimulationError(msg)
    normalised: NDArray[np.float64] = probabilities / total
    return normalised
