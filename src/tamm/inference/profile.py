r"""Profile-likelihood scans of kappa on a pyhf model, and intervals from their crossings.

Where this sits: after a model has been built (:mod:`tamm.pyhf`) and fitted
(:func:`tamm.pyhf.fit_kappa`), a scan refits every nuisance parameter at fixed values of kappa
and records the profile statistic

.. math::

    q(\kappa) = -2 \ln \frac{L(\kappa, \hat{\hat\eta}(\kappa))}{L(\hat\kappa, \hat\eta)} \ge 0 .

By Wilks' theorem, :math:`\{\kappa : q(\kappa) < \chi^2_{1}(\mathrm{cl})\}` is an interval with
coverage ``cl`` (asymptotically). Which function to use:

* :func:`profile_scan` evaluates q on a grid (for plots, ``tamm scan``).
* :func:`profile_interval` places the evaluations at the crossings of the requested levels by
  root finding, about two conditional fits per crossing (for pseudo-experiment studies).

Both return a :class:`ProfileScan`. Its :meth:`~ProfileScan.interval` interpolates the
crossings linearly in the signed root :math:`r = \pm\sqrt{q}`, because r is exactly linear in
kappa when the likelihood is Gaussian.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import iminuit
import numpy as np
import numpy.typing as npt
import pyhf
from scipy import stats

from tamm.exceptions import ConvergenceWarning, InvalidModelError
from tamm.pyhf.fit import _check_model_and_data
from tamm.results import KappaFit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "ONE_SIGMA",
    "TWO_SIGMA",
    "ProfileScan",
    "coverage_probability",
    "profile_interval",
    "profile_scan",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)


def coverage_probability(n_sigma: float) -> float:
    """Return the probability Phi(s) - Phi(-s) that a standard normal lies within +-s."""
    return float(stats.norm.cdf(n_sigma) - stats.norm.cdf(-n_sigma))


ONE_SIGMA = coverage_probability(1.0)
"""Confidence level of a one-standard-deviation interval, 0.6827 ("68.3 %")."""

TWO_SIGMA = coverage_probability(2.0)
"""Confidence level of a two-standard-deviation interval, 0.9545 ("95.4 %")."""

# Relative distance from a parameter bound at which a start value is placed, because Minuit's
# transform for bounded parameters has a zero derivative at the bound itself.
_BOUND_MARGIN = 1e-4

# q values below this are rounding noise of the minimisation, not a better minimum.
_NEGATIVE_Q_TOLERANCE = 1e-3

# Step used when the fit gives no usable sigma, as a fraction of the POI range.
_FALLBACK_STEP = 0.05


def _threshold(cl: float) -> float:
    """Return the signed-root threshold sqrt(chi2_1 quantile) of confidence level ``cl``."""
    if not 0.0 < cl < 1.0:
        msg = f"A confidence level must be in (0, 1), but received {cl!r}. Use e.g. 0.6827."
        raise InvalidModelError(msg)
    return math.sqrt(float(stats.chi2.ppf(cl, df=1)))


# ---------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True, eq=False)
class ProfileScan:
    r"""Profile statistic q(kappa) at scanned values, with the refitted nuisance parameters.

    Attributes:
        poi_name: Name of the scanned parameter.
        kappa: Scanned values in increasing order, including the best fit, shape (n,).
        q: Profile statistic :math:`-2\Delta\ln L` at each value, shape (n,); 0 at the best fit.
        parameters: Conditional best-fit parameters, in pyhf's order, shape (n, n_pars).
        converged: Whether Migrad reported a valid minimum at each value, shape (n,).
        kappa_hat: Best-fit kappa.
        twice_nll_min: Twice the negative log-likelihood at the best fit (pyhf convention).
        bounds: Lower and upper bound of kappa in the model.
        n_fits: Conditional fits run to build the scan (including those of the best fit).
    """

    poi_name: str
    kappa: npt.NDArray[np.float64]
    q: npt.NDArray[np.float64]
    parameters: npt.NDArray[np.float64]
    converged: npt.NDArray[np.bool_]
    kappa_hat: float
    twice_nll_min: float
    bounds: tuple[float, float]
    n_fits: int = 0

    def signed_root(self, kappa: float) -> float:
        """Return ``sign(kappa - kappa_hat) * sqrt(q(kappa))``, interpolated between scan points.

        The value is exact at a scanned point. Between points it is linearly interpolated,
        and outside the scanned range it is NaN.
        """
        roots = np.sign(self.kappa - self.kappa_hat) * np.sqrt(np.maximum(self.q, 0.0))
        if not self.kappa[0] <= kappa <= self.kappa[-1]:
            return math.nan
        return float(np.interp(kappa, self.kappa, roots))

    def interval(self, cl: float = ONE_SIGMA) -> tuple[float, float]:
        """Return the interval ``{kappa : q(kappa) < chi2_1 quantile of cl}``.

        Each end is the first crossing of the threshold when walking away from the best fit,
        interpolated linearly in sqrt(q) between the two bracketing scan points. Where q stays
        below the threshold up to the model's bound of kappa, that end is the bound, so the
        interval is truncated to the bounds ([0, 1] for a fraction).

        Args:
            cl: Confidence level in (0, 1), for example :data:`ONE_SIGMA` or :data:`TWO_SIGMA`.

        Returns:
            ``(lower, upper)``. An end is NaN when the scan stops before both the crossing and
            the bound; scan a wider range to get it.
        """
        threshold = _threshold(cl)
        upper = self._crossing(threshold, direction=+1)
        lower = self._crossing(threshold, direction=-1)
        return lower, upper

    def _crossing(self, threshold: float, *, direction: int) -> float:
        index = int(np.argmin(np.abs(self.kappa - self.kappa_hat)))
        order = range(index + 1, self.kappa.size) if direction > 0 else range(index - 1, -1, -1)
        previous_kappa, previous_root = self.kappa[index], 0.0
        for i in order:
            root = math.sqrt(max(float(self.q[i]), 0.0))
            if root >= threshold:
                if root == previous_root:
                    return float(self.kappa[i])
                fraction = (threshold - previous_root) / (root - previous_root)
                return float(previous_kappa + fraction * (self.kappa[i] - previous_kappa))
            previous_kappa, previous_root = self.kappa[i], root
        bound = self.bounds[1] if direction > 0 else self.bounds[0]
        if math.isclose(float(previous_kappa), bound, rel_tol=0.0, abs_tol=1e-12):
            return bound
        return math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return the scan as a JSON-serialisable dictionary."""
        return {
            "poi_name": self.poi_name,
            "kappa": self.kappa.tolist(),
            "q": self.q.tolist(),
            "converged": self.converged.tolist(),
            "kappa_hat": self.kappa_hat,
            "twice_nll_min": self.twice_nll_min,
            "bounds": list(self.bounds),
            "n_fits": self.n_fits,
        }

    def plot(
        self,
        ax: Axes | None = None,
        *,
        cls: Sequence[float] = (ONE_SIGMA, TWO_SIGMA),
        label: str | None = None,
    ) -> Axes:
        """Draw q(kappa) with the threshold of each level and the interval ends.

        Args:
            ax: Axes to draw into; a new figure is made when None.
            cls: Confidence levels whose thresholds and intervals are marked.
            label: Legend label of the curve.

        Returns:
            The axes.
        """
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6.4, 4.8)).add_subplot()
        (line,) = ax.plot(self.kappa, self.q, marker="o", ms=3, label=label or "profile")
        for cl in cls:
            threshold = _threshold(cl) ** 2
            ax.axhline(threshold, color="0.5", lw=0.8, ls="--")
            lower, upper = self.interval(cl)
            for end in (lower, upper):
                if math.isfinite(end):
                    ax.axvline(end, color=line.get_color(), lw=0.8, ls=":")
            ax.text(
                self.kappa[0],
                threshold,
                f" {100 * cl:.1f} %: [{lower:.4g}, {upper:.4g}]",
                va="bottom",
                fontsize="small",
            )
        ax.set_xlabel(self.poi_name)
        ax.set_ylabel(r"$-2\Delta\ln L$ (profiled)")
        ax.set_ylim(bottom=0.0)
        return ax


# ---------------------------------------------------------------------------------------------
# Conditional fits


class _Profiler:
    """Minimise pyhf's twice-NLL over the nuisance parameters with kappa held fixed.

    Must be used inside :func:`tamm.pyhf.use_numpy_backend`.
    """

    def __init__(self, model: pyhf.Model, data: np.ndarray, *, tolerance: float, strategy: int):
        tensorlib, _ = pyhf.get_backend()
        data_tensor = tensorlib.astensor(data)

        def objective(pars: np.ndarray) -> float:
            value = pyhf.infer.mle.twice_nll(tensorlib.astensor(pars), data_tensor, model)
            return float(value[0])

        self.poi = model.config.poi_index
        bounds = np.asarray(model.config.suggested_bounds(), dtype=np.float64)
        self.low, self.high = bounds[:, 0], bounds[:, 1]
        self.margin = _BOUND_MARGIN * (self.high - self.low)
        self.user_fixed = list(model.config.suggested_fixed())
        self.minuit = iminuit.Minuit(
            objective, model.config.suggested_init(), name=model.config.par_names
        )
        self.minuit.errordef = iminuit.Minuit.LEAST_SQUARES  # the objective is twice the NLL
        self.minuit.limits = [tuple(pair) for pair in bounds]
        self.minuit.strategy = strategy
        self.minuit.tol = tolerance
        self.n_fits = 0

    def minimize(self, start: np.ndarray, kappa: float | None) -> tuple[float, np.ndarray, bool]:
        """Return (twice NLL, parameters, valid); kappa is free when ``kappa`` is None."""
        inside = np.clip(start, self.low + self.margin, self.high - self.margin)
        values = np.where(self.user_fixed, start, inside)
        fixed = list(self.user_fixed)
        if kappa is not None:
            values[self.poi] = kappa
            fixed[self.poi] = True
        self.minuit.values = values
        self.minuit.fixed = fixed
        # NB: with strategy 0, Migrad's first Hessian estimate can be indefinite next to a
        # parameter bound. Minuit then prints "Initial matrix not pos.def." to stderr and
        # repairs the matrix, so the message is noise. Print level -1 silences it. The level
        # is global in iminuit, so it is restored at once.
        previous_level = self.minuit.print_level
        self.minuit.print_level = -1
        try:
            self.minuit.migrad()
        finally:
            self.minuit.print_level = previous_level
        self.n_fits += 1
        result = np.asarray(self.minuit.values, dtype=np.float64)
        return float(self.minuit.fval), result, bool(self.minuit.fmin.is_valid)


@dataclass
class _Point:
    kappa: float
    twice_nll: float
    parameters: np.ndarray
    converged: bool


def _parameter_vector(model: pyhf.Model, fit: KappaFit) -> np.ndarray:
    values = np.asarray(model.config.suggested_init(), dtype=np.float64)
    for name, value in fit.parameters.items():
        if name in model.config.par_map:
            values[model.config.par_slice(name)] = value
    return values


class _Scanner:
    """State shared by both scan functions: the best fit and every evaluated point."""

    def __init__(
        self,
        model: pyhf.Model,
        data: np.ndarray,
        fit: KappaFit | None,
        *,
        tolerance: float,
        strategy: int,
    ):
        from tamm.pyhf import fit_kappa

        if fit is None:
            fit = fit_kappa(model, data, method="profile")
        self.model = model
        self.fit = fit
        self.profiler = _Profiler(model, data, tolerance=tolerance, strategy=strategy)
        # NB: the best fit is repeated with the scan's own Minuit settings, so that q compares
        # two minimisations with the same stopping rule.
        twice_nll, parameters, converged = self.profiler.minimize(
            _parameter_vector(model, fit), None
        )
        self.best = _Point(float(parameters[self.poi]), twice_nll, parameters, converged)
        self.points: dict[float, _Point] = {self.best.kappa: self.best}
        bounds = model.config.suggested_bounds()[self.poi]
        self.bounds = (float(bounds[0]), float(bounds[1]))

    @property
    def poi(self) -> int:
        index: int = self.model.config.poi_index
        return index

    def step(self) -> float:
        """Return a first guess of one standard deviation of kappa."""
        if math.isfinite(self.fit.sigma) and self.fit.sigma > 0:
            return float(self.fit.sigma)
        return _FALLBACK_STEP * (self.bounds[1] - self.bounds[0])

    def nearest(self, kappa: float) -> _Point:
        """Return the evaluated point nearest to ``kappa`` on the same side of the best fit."""
        side = np.sign(kappa - self.best.kappa)
        candidates = [
            point
            for point in self.points.values()
            if np.sign(point.kappa - self.best.kappa) in (side, 0)
        ]
        return min(candidates, key=lambda point: abs(point.kappa - kappa))

    def evaluate(self, kappa: float) -> _Point:
        kappa = float(min(max(kappa, self.bounds[0]), self.bounds[1]))
        if kappa in self.points:
            return self.points[kappa]
        start = self.nearest(kappa).parameters.copy()
        twice_nll, parameters, converged = self.profiler.minimize(start, kappa)
        point = _Point(kappa, twice_nll, parameters, converged)
        self.points[kappa] = point
        if not converged:
            log.debug("profile fit at %s = %g did not converge", self.poi_name, kappa)
        return point

    @property
    def poi_name(self) -> str:
        name: str = self.model.config.poi_name
        return name

    def root(self, point: _Point) -> float:
        """Return the signed root of q at ``point`` (q clipped at zero)."""
        q = max(point.twice_nll - self.best.twice_nll, 0.0)
        return math.copysign(math.sqrt(q), point.kappa - self.best.kappa)

    def result(self) -> ProfileScan:
        points = sorted(self.points.values(), key=lambda point: point.kappa)
        twice_nll = np.array([point.twice_nll for point in points])
        lowest = int(np.argmin(twice_nll))
        best = self.best
        if twice_nll[lowest] < best.twice_nll - _NEGATIVE_Q_TOLERANCE:
            best = points[lowest]
            warnings.warn(
                f"The profile scan found a lower minimum at {self.poi_name} = {best.kappa:.6g} "
                f"than the fit at {self.best.kappa:.6g} (twice NLL lower by "
                f"{self.best.twice_nll - best.twice_nll:.3g}), so the scan is centred there. "
                "Refit from other start values to check for several minima.",
                ConvergenceWarning,
                stacklevel=3,
            )
        q = twice_nll - best.twice_nll
        return ProfileScan(
            poi_name=self.poi_name,
            kappa=np.array([point.kappa for point in points]),
            q=np.maximum(q, 0.0),
            parameters=np.stack([point.parameters for point in points]),
            converged=np.array([point.converged for point in points]),
            kappa_hat=best.kappa,
            twice_nll_min=best.twice_nll,
            bounds=self.bounds,
            n_fits=self.profiler.n_fits,
        )


def _branches(values: np.ndarray, centre: float) -> Iterator[float]:
    """Yield ``values`` walking outwards from ``centre``: upwards first, then downwards."""
    yield from np.sort(values[values > centre])
    yield from np.sort(values[values < centre])[::-1]


# ---------------------------------------------------------------------------------------------
# Public functions


def profile_scan(
    model: pyhf.Model,
    data: npt.ArrayLike,
    kappa_values: npt.ArrayLike | None = None,
    *,
    n_points: int = 41,
    n_sigma: float = 3.0,
    fit: KappaFit | None = None,
    tolerance: float = 0.01,
    strategy: int = 0,
) -> ProfileScan:
    """Scan the profile statistic q(kappa) on a grid, refitting all nuisances at each value.

    The grid is walked outwards from the best fit, and each conditional fit starts from the
    nuisance parameters of its neighbour nearer the best fit (a warm start). The scan runs
    on pyhf's numpy backend; the caller's backend is restored afterwards.

    Args:
        model: A pyhf model with kappa as POI, for example from
            :func:`tamm.pyhf.build_model`.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        kappa_values: Values of kappa to scan, shape (n,). By default ``n_points`` values
            spaced evenly over the best fit +- ``n_sigma`` of its sigma, clipped to the POI
            bounds.
        n_points: Number of grid values when ``kappa_values`` is None.
        n_sigma: Half-width of the default grid in units of the fitted sigma.
        fit: The best fit, as returned by :func:`tamm.pyhf.fit_kappa`; fitted here when None.
        tolerance: Minuit's tolerance for every fit; Migrad stops when the estimated distance
            to the minimum of twice the NLL is below ``0.002 * tolerance``.
        strategy: Minuit's strategy for the conditional fits. Warm starts make the fast
            strategy 0 enough: on the Gaussian toy's topic and histosys models its interval
            ends differed from strategy 2 by less than 3e-5 sigma, at 60 % of the cost.

    Returns:
        The scan, with the best fit included as a scanned point.

    Raises:
        InvalidModelError: If the model has no POI, ``data`` has the wrong length, or a value
            of ``kappa_values`` lies outside the POI bounds.

    Warns:
        ConvergenceWarning: If a conditional fit finds a lower minimum than the best fit.

    Examples:
        >>> from tamm.pyhf import baseline_spec, build_workspace, model_and_data
        >>> spec = baseline_spec([1, 2, 3, 4], [4, 3, 2, 1], [220, 240, 260, 280])
        >>> model, data = model_and_data(build_workspace(spec))
        >>> scan = profile_scan(model, data, n_points=20)
        >>> scan.kappa.shape  # 20 grid values and the best fit
        (21,)
        >>> [round(end, 3) for end in scan.interval(ONE_SIGMA)]
        [0.565, 0.635]
    """
    from tamm.pyhf import use_numpy_backend

    values = _check_model_and_data(model, data)
    if n_points < 2:
        msg = f"n_points must be at least 2, but received {n_points!r}."
        raise InvalidModelError(msg)
    with use_numpy_backend():
        scanner = _Scanner(model, values, fit, tolerance=tolerance, strategy=strategy)
        low, high = scanner.bounds
        if kappa_values is None:
            half_width = n_sigma * scanner.step()
            grid = np.linspace(
                max(low, scanner.best.kappa - half_width),
                min(high, scanner.best.kappa + half_width),
                n_points,
            )
        else:
            grid = np.atleast_1d(np.asarray(kappa_values, dtype=np.float64))
            outside = grid[(grid < low) | (grid > high) | ~np.isfinite(grid)]
            if outside.size:
                msg = (
                    f"kappa_values must lie inside the POI bounds [{low}, {high}], but "
                    f"{outside[0]!r} does not. Clip the grid to the bounds."
                )
                raise InvalidModelError(msg)
        for kappa in _branches(grid, scanner.best.kappa):
            scanner.evaluate(float(kappa))
        return scanner.result()


def _find_crossing(
    scanner: _Scanner, target: float, direction: int, z_tolerance: float, max_iter: int
) -> None:
    """Evaluate points until one lies just beyond ``target`` in |signed root|.

    The search runs on one side of the best fit (``direction`` +1 or -1) by secant steps in
    the signed root, which is linear in kappa for a Gaussian likelihood. It ends when a point
    has ``target <= |root| < target + z_tolerance``, so the crossing is bracketed tightly, or
    when the bound of kappa is reached with q still below the target.
    """
    bound = scanner.bounds[1] if direction > 0 else scanner.bounds[0]
    # Aim half a tolerance beyond the target, so a good step lands inside the accepted band.
    target_root = direction * (target + 0.5 * z_tolerance)
    for _ in range(max_iter):
        side = [
            (point.kappa, scanner.root(point))
            for point in scanner.points.values()
            if direction * (point.kappa - scanner.best.kappa) >= 0
        ]
        side.sort(key=lambda item: direction * item[0])
        below = [item for item in side if direction * item[1] < target]
        above = [item for item in side if direction * item[1] >= target]
        if any(0.0 <= direction * root - target < z_tolerance for _, root in side):
            return
        inner = below[-1]
        if above:
            outer = above[0]
            slope = (outer[1] - inner[1]) / (outer[0] - inner[0])
        elif len(below) >= 2 and below[-1][0] != below[-2][0]:
            previous = below[-2]
            slope = (inner[1] - previous[1]) / (inner[0] - previous[0])
        else:
            slope = 1.0 / scanner.step()
        # NB: the signed root increases with kappa on both sides of the best fit.
        if not slope > 0:
            slope = 1.0 / scanner.step()
        kappa = inner[0] + (target_root - inner[1]) / slope
        if above:
            # NB: stay strictly inside the bracket, so the search cannot stall on one side.
            low_end, high_end = sorted((inner[0], above[0][0]))
            margin = 1e-3 * (high_end - low_end)
            kappa = min(max(kappa, low_end + margin), high_end - margin)
        elif direction * (kappa - bound) >= 0:
            if math.isclose(inner[0], bound, rel_tol=0.0, abs_tol=1e-12):
                return
            kappa = bound
        scanner.evaluate(kappa)


def profile_interval(
    model: pyhf.Model,
    data: npt.ArrayLike,
    *,
    cls: Sequence[float] = (ONE_SIGMA, TWO_SIGMA),
    fit: KappaFit | None = None,
    include: Sequence[float] = (),
    z_tolerance: float = 0.01,
    max_iter: int = 8,
    tolerance: float = 0.01,
    strategy: int = 0,
) -> ProfileScan:
    """Locate the profile-likelihood interval ends of kappa by root finding.

    For each level and each side of the best fit, conditional fits (warm-started from the
    nearest evaluated point) are placed by secant steps in the signed root of q until one lies
    less than ``z_tolerance`` beyond the threshold ``sqrt(chi2_1 quantile)``. For a Gaussian likelihood
    the first step lands on the crossing. :meth:`ProfileScan.interval` then interpolates
    between the bracketing points.

    Args:
        model: A pyhf model with kappa as POI.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        cls: Confidence levels whose interval ends are located.
        fit: The best fit from :func:`tamm.pyhf.fit_kappa`; fitted here when None.
        include: Further kappa values to evaluate exactly, for example the true value in a
            coverage study (:meth:`ProfileScan.signed_root` is then exact there).
        z_tolerance: Accepted distance in |signed root| of the point beyond the threshold that
            ends the search. The interpolated interval end is more accurate than this.
        max_iter: Maximum conditional fits per interval end.
        tolerance: Minuit's tolerance for every fit (see :func:`profile_scan`).
        strategy: Minuit's strategy for the conditional fits (see :func:`profile_scan`).

    Returns:
        The scan, holding the best fit and every evaluated point.

    Raises:
        InvalidModelError: If the model has no POI, ``data`` has the wrong length, or a level
            is not in (0, 1).

    Warns:
        ConvergenceWarning: If a conditional fit finds a lower minimum than the best fit.

    Examples:
        >>> from tamm.pyhf import baseline_spec, build_workspace, model_and_data
        >>> spec = baseline_spec([1, 2, 3, 4], [4, 3, 2, 1], [220, 240, 260, 280])
        >>> model, data = model_and_data(build_workspace(spec))
        >>> scan = profile_interval(model, data)
        >>> [round(end, 3) for end in scan.interval(TWO_SIGMA)]
        [0.529, 0.67]
    """
    from tamm.pyhf import use_numpy_backend

    values = _check_model_and_data(model, data)
    targets = sorted(_threshold(cl) for cl in cls)
    with use_numpy_backend():
        scanner = _Scanner(model, values, fit, tolerance=tolerance, strategy=strategy)
        for direction in (+1, -1):
            for target in targets:
                _find_crossing(scanner, target, direction, z_tolerance, max_iter)
        for kappa in include:
            scanner.evaluate(float(kappa))
        return scanner.result()
