"""Standalone fitter of the unbinned TAMM loss: profiled and free fits, profile intervals, baseline.

One pseudo-experiment runs the frequentist neural estimation (FNE) procedure of
arXiv 2604.02219:

1. a profiled fit at a tested kappa (``kappa_test``, the true value in studies): every other
   parameter free (:func:`profile_kappa`);
2. the free fit, started from the profiled point;
3. the sandwich covariance at the best fit (:mod:`tamm.mixture.sandwich`) and the corrected
   profile statistic ``z`` at ``kappa_test``.

:func:`fit_unbinned` does all three. :func:`profile_scan` and :func:`profile_intervals` then
re-profile the nuisance parameters on a kappa grid and read off the 68.3 % and 95.4 % intervals
from the corrected statistic. :func:`fit_baseline_unbinned` is the single-simulation baseline.

The optimiser is a trust-region Newton method with the exact Hessian (the trust region is
measured in the Hessian norm, so a trial step is the Newton step, shortened when the quadratic
model has been unreliable). It stops when the estimated distance to the minimum,
``EDM = g^T H^-1 g / 2`` in loss units, is below ``tolerance`` with a positive-definite Hessian,
and reports it. Otherwise the result carries ``converged=False`` and a
:class:`~tamm.exceptions.ConvergenceWarning` is emitted.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize

from tamm.exceptions import ConvergenceWarning, InvalidModelError
from tamm.mixture.likelihood import TemplateAdaptedLikelihood, _log_abs, _sign, _signed_log_sum
from tamm.mixture.sandwich import SandwichCovariance, sandwich_covariance
from tamm.results import KappaFit

__all__ = [
    "BaselineFit",
    "OptimizerStatus",
    "ProfileFit",
    "ProfileIntervals",
    "ProfileScan",
    "UnbinnedFit",
    "baseline_scan",
    "fit_baseline_unbinned",
    "fit_unbinned",
    "profile_intervals",
    "profile_kappa",
    "profile_scan",
]

log = logging.getLogger(__name__)

# Rejected steps allowed within one Newton iteration before the optimiser gives up.
_MAX_STEP_ATTEMPTS = 40
# Initial trust radius in the Hessian norm (standard deviations). Large enough that a
# well-behaved fit takes full Newton steps from the start; a rejected step shrinks it.
_INITIAL_RADIUS = 30.0
# A predicted decrease below this fraction of |loss| is at the level of floating-point noise of
# sums over ~1e6 events, so failing to realise it is no evidence against the minimum.
_ROUNDOFF = 1e-12

Evaluate = Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64], NDArray[np.float64]]]
Value = Callable[[NDArray[np.float64]], float]


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True)
class OptimizerStatus:
    """Final state of the Newton optimiser.

    Attributes:
        converged: Whether EDM fell below the tolerance with a positive-definite Hessian.
        n_iterations: Accepted Newton steps.
        n_evaluations: Loss evaluations, with and without derivatives.
        edm: Estimated distance to the minimum, ``g^T H^-1 g / 2`` over the free parameters
            (loss units); ``inf`` where the Hessian is not positive definite.
        gradient_norm: Largest absolute gradient entry of the free parameters.
        message: What stopped the optimiser.
    """

    converged: bool
    n_iterations: int
    n_evaluations: int
    edm: float
    gradient_norm: float
    message: str


@dataclass(frozen=True)
class _NewtonResult:
    x: NDArray[np.float64]
    value: float
    gradient: NDArray[np.float64]
    hessian: NDArray[np.float64]
    status: OptimizerStatus


def _newton_step(
    hessian: NDArray[np.float64], gradient: NDArray[np.float64]
) -> tuple[NDArray[np.float64], bool]:
    """Return the Newton step ``-H^-1 g`` and whether ``H`` is positive definite.

    Where ``H`` is not positive definite, its eigenvalues are replaced by their absolute values
    (floored at 1e-10 of the largest), which keeps the step a descent direction.
    """
    try:
        factor = np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(hessian)
        magnitude = np.abs(eigenvalues)
        magnitude = np.maximum(magnitude, 1e-10 * max(float(magnitude.max()), 1e-300))
        return np.asarray(-(eigenvectors @ ((eigenvectors.T @ gradient) / magnitude))), False
    return np.asarray(-np.linalg.solve(factor.T, np.linalg.solve(factor, gradient))), True


def _minimize_newton(
    evaluate: Evaluate,
    value: Value,
    x0: NDArray[np.float64],
    free: NDArray[np.bool_],
    *,
    max_iter: int,
    tolerance: float,
) -> _NewtonResult:
    """Minimise with Newton steps in a trust region on the ``free`` entries; fixed entries stay.

    The trust region is measured in the norm of the Hessian, ``|p|_H = sqrt(p^T H p)`` (one unit
    is one standard deviation), so it is independent of how the parameters are scaled and the
    trial step is the Newton step shortened to the radius. The radius grows after a step that
    the quadratic model predicted well and shrinks after a poor or rejected one.
    """
    x = np.array(x0, dtype=np.float64)
    f, g, h = evaluate(x)
    n_evaluations = 1
    if not math.isfinite(f):
        status = OptimizerStatus(
            False, 0, 1, math.inf, math.nan, "the loss is not finite at the start point"
        )
        return _NewtonResult(x, f, g, h, status)

    radius = _INITIAL_RADIUS
    well_predicted = False
    edm = math.inf
    converged = False
    n_iterations = 0
    while True:
        gf = g[free]
        step, positive_definite = _newton_step(h[np.ix_(free, free)], gf)
        decrement = math.sqrt(max(float(-gf @ step), 0.0))
        edm = 0.5 * decrement**2 if positive_definite else math.inf
        if edm < tolerance:
            converged = True
            message = f"converged: EDM {edm:.3g} < tolerance {tolerance:.3g}"
            break
        if n_iterations >= max_iter:
            message = f"stopped after max_iter={max_iter} Newton steps with EDM {edm:.3g}"
            break
        if decrement == 0.0:
            message = (
                "stopped: the gradient vanishes where the Hessian is not positive definite "
                "(a saddle point)"
            )
            break

        accepted = False
        for _ in range(_MAX_STEP_ATTEMPTS):
            fraction = min(1.0, radius / decrement)
            trial = x.copy()
            trial[free] += fraction * step
            # After a well-predicted step the next one is usually accepted, so its derivatives
            # are computed at once; otherwise the cheaper value alone decides first.
            derivatives = evaluate(trial) if well_predicted else None
            f_trial = derivatives[0] if derivatives is not None else value(trial)
            n_evaluations += 1
            # Decrease predicted by the quadratic model along the (modified) Newton direction.
            predicted = decrement**2 * (fraction - 0.5 * fraction**2)
            ratio = (f - f_trial) / predicted if math.isfinite(f_trial) else -math.inf
            well_predicted = ratio > 0.75
            if ratio < 0.25:
                radius = 0.25 * fraction * decrement
            elif well_predicted and fraction * decrement >= 0.9 * radius:
                radius *= 2.0
            if math.isfinite(f_trial) and f_trial < f:
                accepted = True
                break
            if predicted < _ROUNDOFF * max(abs(f), 1.0):
                break
        if not accepted:
            message = (
                f"stopped: no step decreases the loss (EDM {edm:.3g}); the minimum is reached "
                "within floating-point precision or the loss is not smooth here"
            )
            break

        x = trial
        if derivatives is None:
            derivatives = evaluate(x)
            n_evaluations += 1
        f, g, h = derivatives
        n_iterations += 1
        if not math.isfinite(f):
            # value() and evaluate() can disagree only where exp() overflows.
            message = "stopped: the loss derivatives are not finite at the accepted point"
            break

    gradient_norm = float(np.max(np.abs(g[free]))) if np.any(free) else 0.0
    status = OptimizerStatus(converged, n_iterations, n_evaluations, edm, gradient_norm, message)
    return _NewtonResult(x, f, g, h, status)


def _warn_not_converged(what: str, status: OptimizerStatus) -> None:
    msg = (
        f"The {what} did not converge: {status.message} (gradient max {status.gradient_norm:.3g}). "
        "Raise max_iter, or check the log-ratio features for outliers."
    )
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


def _check_fit_settings(max_iter: int, tolerance: float) -> None:
    if max_iter < 0:
        msg = f"max_iter must be >= 0; received {max_iter}."
        raise InvalidModelError(msg)
    if not (math.isfinite(tolerance) and tolerance > 0):
        msg = f"tolerance must be a positive number (loss units); received {tolerance}."
        raise InvalidModelError(msg)


@dataclass(frozen=True, eq=False)
class ProfileFit:
    """The loss minimised over every parameter except kappa, at a fixed kappa.

    Attributes:
        kappa: The fixed kappa.
        parameters: Best parameters with ``parameters[0] == kappa``, shape ``(P,)``.
        loss: The profiled loss ``L(kappa, eta_hat(kappa))``.
        hessian: Hessian of the loss at ``parameters``, shape ``(P, P)``.
        status: Final state of the optimiser.
    """

    kappa: float
    parameters: NDArray[np.float64]
    loss: float
    hessian: NDArray[np.float64]
    status: OptimizerStatus


def _predicted_start(profile: ProfileFit, kappa: float) -> NDArray[np.float64]:
    """Return a start point at ``kappa`` moved along the nuisance response of ``profile``.

    At a profiled minimum the nuisances move with kappa as ``d eta / d kappa = -A_ee^-1 A_ek``
    (from the Hessian blocks), so one linear step lands close to the new profiled point.
    """
    start = profile.parameters.copy()
    start[0] = kappa
    try:
        response = np.linalg.solve(profile.hessian[1:, 1:], profile.hessian[1:, 0])
    except np.linalg.LinAlgError:
        return start
    start[1:] -= response * (kappa - profile.kappa)
    return start


def profile_kappa(
    likelihood: TemplateAdaptedLikelihood,
    kappa: float,
    *,
    start: ArrayLike | None = None,
    max_iter: int = 50,
    tolerance: float = 1e-6,
) -> ProfileFit:
    """Minimise the loss over all parameters except kappa, which stays fixed.

    Args:
        likelihood: The TAMM loss.
        kappa: The fixed signal fraction.
        start: Start parameters ``(P,)`` (entry 0 is replaced by ``kappa``); by default
            ``c_s = c_b = 1`` and equal weights.
        max_iter: Maximum number of Newton steps.
        tolerance: Convergence threshold on the EDM, in loss units.

    Returns:
        The profiled fit. A :class:`~tamm.exceptions.ConvergenceWarning` is emitted when it
        did not converge.
    """
    _check_fit_settings(max_iter, tolerance)
    free = np.ones(likelihood.n_parameters, dtype=bool)
    free[0] = False
    x0 = (
        likelihood.default_parameters(kappa) if start is None else np.array(start, dtype=np.float64)
    )
    x0[0] = kappa
    result = _minimize_newton(
        likelihood.value_and_derivatives,
        likelihood.value,
        x0,
        free,
        max_iter=max_iter,
        tolerance=tolerance,
    )
    if not result.status.converged:
        _warn_not_converged(f"profiled fit at kappa={kappa:.6g}", result.status)
    log.debug("Profiled fit at kappa=%.6g: %s", kappa, result.status.message)
    return ProfileFit(float(kappa), result.x, result.value, result.hessian, result.status)


@dataclass(frozen=True, eq=False)
class UnbinnedFit:
    """Result of one unbinned TAMM fit: best parameters, sandwich covariance, profile statistic.

    Attributes:
        parameters: Best-fit parameters ``(P,)``, in the order of ``parameter_names``.
        parameter_names: kappa, c_s, c_b, a_1.., b_1.. (the last weights are dependent).
        loss: Loss at the best fit.
        status: Final state of the free fit.
        sandwich: ``A``, ``B`` and ``V`` at the best fit.
        weights: All mixture weights ``(a, b)``, the dependent last ones included.
        profile: The profiled fit at ``kappa_test``; None when no kappa was tested.
        timings: Wall time of each step in seconds.
    """

    parameters: NDArray[np.float64]
    parameter_names: tuple[str, ...]
    loss: float
    status: OptimizerStatus
    sandwich: SandwichCovariance
    weights: tuple[NDArray[np.float64], NDArray[np.float64]]
    profile: ProfileFit | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kappa(self) -> float:
        """Best-fit signal fraction."""
        return float(self.parameters[0])

    @property
    def sigma(self) -> float:
        """Sandwich uncertainty of kappa."""
        return self.sandwich.sigma_kappa

    @property
    def covariance(self) -> NDArray[np.float64]:
        """Sandwich covariance of all parameters, shape ``(P, P)``."""
        return self.sandwich.covariance

    @property
    def lambda_corr(self) -> float:
        """Correction of the profile statistic, ``A~_kk V_kk``."""
        return self.sandwich.lambda_corr

    @property
    def kappa_test(self) -> float:
        """The tested kappa, NaN when none was tested."""
        return math.nan if self.profile is None else self.profile.kappa

    @property
    def q(self) -> float:
        """``2 [L(kappa_test, eta_hat) - L(theta_hat)]``; NaN when no kappa was tested."""
        return math.nan if self.profile is None else 2.0 * (self.profile.loss - self.loss)

    @property
    def z(self) -> float:
        """Corrected signed root ``sign(kappa_hat - kappa_test) sqrt(max(q / lambda_corr, 0))``."""
        return _signed_root(self.kappa - self.kappa_test, self.q, self.lambda_corr)

    @property
    def converged(self) -> bool:
        """Whether the free fit (and the profiled fit, if any) converged."""
        return self.status.converged and (self.profile is None or self.profile.status.converged)

    @property
    def kappa_fit(self) -> KappaFit:
        """The result as a :class:`~tamm.results.KappaFit` with method ``"tamm-unbinned"``."""
        a, b = self.weights
        names = self.parameter_names
        parameters: dict[str, object] = {
            name: float(v) for name, v in zip(names[:3], self.parameters[:3], strict=True)
        }
        parameters["a"] = a.tolist()
        parameters["b"] = b.tolist()
        parameters["lambda_corr"] = self.lambda_corr
        if self.profile is not None:
            parameters["kappa_test"] = self.kappa_test
            parameters["z"] = self.z
        message = self.status.message
        if self.profile is not None and not self.profile.status.converged:
            message += f"; profiled fit: {self.profile.status.message}"
        return KappaFit(
            method="tamm-unbinned",
            kappa=self.kappa,
            sigma=self.sigma,
            converged=self.converged,
            nll=self.loss,
            parameters=parameters,
            message=message,
        )


def _signed_root(difference: float, q: float, lambda_corr: float) -> float:
    if not (math.isfinite(q) and math.isfinite(lambda_corr)) or lambda_corr <= 0:
        return math.nan
    return math.copysign(math.sqrt(max(q / lambda_corr, 0.0)), difference)


def fit_unbinned(
    likelihood: TemplateAdaptedLikelihood,
    *,
    kappa_test: float | None = None,
    kappa_start: float = 0.1,
    max_iter: int = 50,
    tolerance: float = 1e-6,
) -> UnbinnedFit:
    """Fit kappa and every nuisance parameter; compute the sandwich covariance and ``z``.

    Args:
        likelihood: The TAMM loss of one pseudo-experiment.
        kappa_test: The kappa to test with the profile statistic (the true value in studies).
            When given, the nuisances are first profiled at this kappa from the default start,
            and the free fit starts from that profiled point.
        kappa_start: Start value of kappa when ``kappa_test`` is None.
        max_iter: Maximum number of Newton steps per fit.
        tolerance: Convergence threshold on the EDM, in loss units.

    Returns:
        The fit. Use ``.kappa_fit`` for a :class:`~tamm.results.KappaFit`.

    Examples:
        >>> from tamm.mixture import MixtureSamples, TemplateAdaptedLikelihood
        >>> rng = np.random.default_rng(2)
        >>> reference = rng.normal(scale=0.3, size=(4000, 4))  # (N_ref, C) log ratios
        >>> samples = MixtureSamples(reference[:1000], reference[1000:2500], reference[2500:])
        >>> fit = fit_unbinned(TemplateAdaptedLikelihood(samples), kappa_test=0.5)
        >>> fit.converged
        True
    """
    _check_fit_settings(max_iter, tolerance)
    timings: dict[str, float] = {}
    profile = None
    start_time = time.perf_counter()
    if kappa_test is not None:
        profile = profile_kappa(likelihood, kappa_test, max_iter=max_iter, tolerance=tolerance)
        start = profile.parameters
        timings["profiled_fit"] = time.perf_counter() - start_time
    else:
        start = likelihood.default_parameters(kappa_start)

    free_time = time.perf_counter()
    free = np.ones(likelihood.n_parameters, dtype=bool)
    result = _minimize_newton(
        likelihood.value_and_derivatives,
        likelihood.value,
        start,
        free,
        max_iter=max_iter,
        tolerance=tolerance,
    )
    if not result.status.converged:
        _warn_not_converged("free fit", result.status)
    timings["free_fit"] = time.perf_counter() - free_time

    sandwich_time = time.perf_counter()
    sandwich = sandwich_covariance(likelihood, result.x, hessian=result.hessian)
    timings["sandwich"] = time.perf_counter() - sandwich_time
    timings["total"] = time.perf_counter() - start_time

    fit = UnbinnedFit(
        parameters=result.x,
        parameter_names=likelihood.parameter_names,
        loss=result.value,
        status=result.status,
        sandwich=sandwich,
        weights=likelihood.mixture_weights(result.x),
        profile=profile,
        timings=timings,
    )
    log.info(
        "Unbinned TAMM fit: kappa=%.5f sigma=%.5f lambda_corr=%.3f z=%.3f (%s, %.2f s)",
        fit.kappa,
        fit.sigma,
        fit.lambda_corr,
        fit.z,
        result.status.message,
        timings["total"],
    )
    return fit


@dataclass(frozen=True, eq=False)
class ProfileScan:
    """The corrected profile statistic of kappa on a grid.

    Attributes:
        kappa: Grid values, increasing, shape ``(m,)``.
        loss: Profiled loss at each grid value, shape ``(m,)``.
        converged: Whether each profiled fit converged, shape ``(m,)``.
        kappa_hat: Best-fit kappa.
        loss_min: Loss at the best fit.
        lambda_corr: Correction ``A~_kk V_kk`` at the best fit, used at every grid value.
        fits: The profiled fits, in grid order.
    """

    kappa: NDArray[np.float64]
    loss: NDArray[np.float64]
    converged: NDArray[np.bool_]
    kappa_hat: float
    loss_min: float
    lambda_corr: float
    fits: tuple[ProfileFit, ...]

    @property
    def q(self) -> NDArray[np.float64]:
        """``2 [L(kappa, eta_hat) - L_min]``, shape ``(m,)``."""
        return np.asarray(2.0 * (self.loss - self.loss_min))

    @property
    def signed_root(self) -> NDArray[np.float64]:
        """``sign(kappa - kappa_hat) sqrt(max(q / lambda_corr, 0))``, increasing in kappa."""
        corrected = np.maximum(self.q / self.lambda_corr, 0.0)
        return np.asarray(np.sign(self.kappa - self.kappa_hat) * np.sqrt(corrected))

    def interval(self, level: float = 1.0) -> tuple[float, float]:
        """Return the kappa interval where the corrected statistic stays below ``level**2``.

        The endpoints are linear interpolations of :attr:`signed_root` between grid values
        (close to linear in kappa, so a grid step of sigma / 2 is accurate to about 1 % of sigma).
        An endpoint beyond the grid is NaN; extend the grid to find it.

        Args:
            level: Number of standard deviations: 1 for 68.3 %, 2 for 95.4 %.
        """
        root = self.signed_root
        return _crossing(self.kappa, root, -level), _crossing(self.kappa, root, level)


def _crossing(kappa: NDArray[np.float64], root: NDArray[np.float64], target: float) -> float:
    """Interpolate where ``root`` crosses ``target``, on the side of kappa_hat given by its sign."""
    above = root >= target
    for i in range(len(kappa) - 1):
        # NB: a point where the model is invalid (infinite loss) has no usable statistic.
        if not (math.isfinite(root[i]) and math.isfinite(root[i + 1])):
            continue
        if above[i] != above[i + 1]:
            if (target > 0) != (
                root[i] + root[i + 1] > 0
            ):  # skip noise crossings on the other side
                continue
            fraction = (target - root[i]) / (root[i + 1] - root[i])
            return float(kappa[i] + fraction * (kappa[i + 1] - kappa[i]))
    return math.nan


def _profile_along(
    likelihood: TemplateAdaptedLikelihood,
    fit: UnbinnedFit,
    kappa_values: Sequence[float] | NDArray[np.float64],
    *,
    max_iter: int,
    tolerance: float,
) -> list[ProfileFit]:
    """Profile at each kappa in order, warm-starting each fit from the previous one."""
    previous = ProfileFit(fit.kappa, fit.parameters, fit.loss, fit.sandwich.hessian, fit.status)
    fits = []
    for kappa in kappa_values:
        start = _predicted_start(previous, float(kappa))
        previous = profile_kappa(
            likelihood, float(kappa), start=start, max_iter=max_iter, tolerance=tolerance
        )
        fits.append(previous)
    return fits


def profile_scan(
    likelihood: TemplateAdaptedLikelihood,
    fit: UnbinnedFit,
    kappa_values: ArrayLike,
    *,
    max_iter: int = 50,
    tolerance: float = 1e-6,
) -> ProfileScan:
    """Re-profile the nuisance parameters at each kappa of a grid.

    Grid values above and below the best fit are visited outward from it, each profiled fit
    starting from its neighbour moved along the linear nuisance response.

    Args:
        likelihood: The TAMM loss.
        fit: The free fit of the same loss.
        kappa_values: Grid of kappa values, shape ``(m,)``.
        max_iter: Maximum number of Newton steps per profiled fit.
        tolerance: Convergence threshold on the EDM, in loss units.
    """
    grid = np.unique(np.asarray(kappa_values, dtype=np.float64))
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        msg = f"kappa_values must be finite and non-empty; received {np.asarray(kappa_values)!r}."
        raise InvalidModelError(msg)
    upper = grid[grid >= fit.kappa]
    lower = grid[grid < fit.kappa][::-1]
    fits = _profile_along(likelihood, fit, upper, max_iter=max_iter, tolerance=tolerance)
    fits += _profile_along(likelihood, fit, lower, max_iter=max_iter, tolerance=tolerance)
    fits.sort(key=lambda profile: profile.kappa)
    return ProfileScan(
        kappa=grid,
        loss=np.array([profile.loss for profile in fits]),
        converged=np.array([profile.status.converged for profile in fits]),
        kappa_hat=fit.kappa,
        loss_min=fit.loss,
        lambda_corr=fit.lambda_corr,
        fits=tuple(fits),
    )


@dataclass(frozen=True, eq=False)
class ProfileIntervals:
    """Profile-likelihood intervals of kappa from the corrected statistic.

    Attributes:
        levels: Numbers of standard deviations, e.g. ``(1.0, 2.0)`` for 68.3 % and 95.4 %.
        lower: Lower endpoint per level; NaN when the scan did not reach it.
        upper: Upper endpoint per level; NaN when the scan did not reach it.
        scan: The grid scan the endpoints were read from.
    """

    levels: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    scan: ProfileScan

    def contains(self, kappa: float, level: float = 1.0) -> bool:
        """Return whether ``kappa`` lies inside the interval of ``level`` (False for a NaN end)."""
        index = self.levels.index(level)
        return bool(self.lower[index] <= kappa <= self.upper[index])


def profile_intervals(
    likelihood: TemplateAdaptedLikelihood,
    fit: UnbinnedFit,
    *,
    levels: Sequence[float] = (1.0, 2.0),
    step: float = 0.5,
    max_extent: float = 8.0,
    refine: bool = False,
    max_iter: int = 50,
    tolerance: float = 1e-6,
) -> ProfileIntervals:
    """Scan kappa around the best fit and return the profile intervals at ``levels``.

    The grid runs from the best fit outward in steps of ``step * sigma`` (the sandwich sigma)
    until the corrected signed root passes the largest level on each side, or until
    ``max_extent * sigma``. The endpoints are interpolated on the grid; with ``refine`` each is
    then solved to ``1e-3 sigma`` by Brent's method on freshly profiled points.

    Args:
        likelihood: The TAMM loss.
        fit: The free fit of the same loss.
        levels: Numbers of standard deviations of the intervals.
        step: Grid step in units of sigma.
        max_extent: Furthest grid point from the best fit, in units of sigma.
        refine: Solve each endpoint by root finding instead of interpolating.
        max_iter: Maximum number of Newton steps per profiled fit.
        tolerance: Convergence threshold on the EDM, in loss units.

    Raises:
        InvalidModelError: If the sandwich sigma of ``fit`` is not a positive number.
    """
    sigma = fit.sigma
    if not (math.isfinite(sigma) and sigma > 0):
        msg = f"The profile scan needs a positive sandwich sigma to size its grid; the fit has sigma={sigma}."
        raise InvalidModelError(msg)
    target = max(levels)
    best = ProfileFit(fit.kappa, fit.parameters, fit.loss, fit.sandwich.hessian, fit.status)

    sides: dict[float, list[ProfileFit]] = {}
    invalid_at: list[float] = []
    for direction in (1.0, -1.0):
        fits: list[ProfileFit] = []
        previous = best
        offset = step
        while offset <= max_extent + 1e-9:
            kappa = fit.kappa + direction * offset * sigma
            previous = profile_kappa(
                likelihood,
                kappa,
                start=_predicted_start(previous, kappa),
                max_iter=max_iter,
                tolerance=tolerance,
            )
            fits.append(previous)
            if not math.isfinite(previous.loss):
                # The model is negative on a data event here. Points further out start from
                # this invalid point, so the walk on this side ends.
                invalid_at.append(kappa)
                break
            reached = _signed_root(1.0, 2.0 * (previous.loss - fit.loss), fit.lambda_corr)
            if reached > target:
                break
            offset += step
        sides[direction] = fits

    ordered = [*sides[-1.0][::-1], *sides[1.0]]
    scan = ProfileScan(
        kappa=np.array([p.kappa for p in ordered]),
        loss=np.array([p.loss for p in ordered]),
        converged=np.array([p.status.converged for p in ordered]),
        kappa_hat=fit.kappa,
        loss_min=fit.loss,
        lambda_corr=fit.lambda_corr,
        fits=tuple(ordered),
    )
    # NB: the best fit itself is a grid point with signed root 0 for the interpolation.
    grid = np.concatenate(
        [scan.kappa[: len(sides[-1.0])], [fit.kappa], scan.kappa[len(sides[-1.0]) :]]
    )
    root = np.concatenate(
        [scan.signed_root[: len(sides[-1.0])], [0.0], scan.signed_root[len(sides[-1.0]) :]]
    )
    lower = [_crossing(grid, root, -level) for level in levels]
    upper = [_crossing(grid, root, level) for level in levels]
    open_levels = [
        level
        for level, low, high in zip(levels, lower, upper, strict=True)
        if not (math.isfinite(low) and math.isfinite(high))
    ]
    if open_levels and invalid_at:
        log.warning(
            "The profile interval at %s sigma of kappa_hat=%.6g has a NaN endpoint: the model "
            "turns negative on a data event at kappa=%s before the statistic reaches that "
            "level, so the interval is open on that side",
            open_levels,
            fit.kappa,
            [round(v, 6) for v in invalid_at],
        )
    elif open_levels:
        log.warning(
            "The profile interval at %s sigma of kappa_hat=%.6g has an endpoint beyond %.3g "
            "sigma, which is NaN; raise max_extent to find it",
            open_levels,
            fit.kappa,
            max_extent,
        )

    if refine:
        lower = [
            _refine_endpoint(
                likelihood, fit, ordered, value, -level, max_iter=max_iter, tolerance=tolerance
            )
            for value, level in zip(lower, levels, strict=True)
        ]
        upper = [
            _refine_endpoint(
                likelihood, fit, ordered, value, level, max_iter=max_iter, tolerance=tolerance
            )
            for value, level in zip(upper, levels, strict=True)
        ]
    return ProfileIntervals(tuple(float(v) for v in levels), tuple(lower), tuple(upper), scan)


def _refine_endpoint(
    likelihood: TemplateAdaptedLikelihood,
    fit: UnbinnedFit,
    grid_fits: list[ProfileFit],
    guess: float,
    target: float,
    *,
    max_iter: int,
    tolerance: float,
) -> float:
    """Solve ``signed_root(kappa) = target`` near ``guess`` by Brent's method."""
    if not math.isfinite(guess):
        return guess
    sigma = fit.sigma
    nearest = min(grid_fits, key=lambda profile: abs(profile.kappa - guess))

    def excess(kappa: float) -> float:
        profile = profile_kappa(
            likelihood,
            kappa,
            start=_predicted_start(nearest, kappa),
            max_iter=max_iter,
            tolerance=tolerance,
        )
        return (
            _signed_root(kappa - fit.kappa, 2.0 * (profile.loss - fit.loss), fit.lambda_corr)
            - target
        )

    low, high = guess - 0.25 * sigma, guess + 0.25 * sigma
    try:
        return float(optimize.brentq(excess, low, high, xtol=1e-3 * sigma))
    except ValueError:
        log.debug(
            "Endpoint %.3g sigma not bracketed near kappa=%.6g; keeping the grid value",
            target,
            guess,
        )
        return guess


@dataclass(frozen=True, eq=False)
class BaselineFit:
    """Result of the unbinned single-simulation baseline fit.

    Attributes:
        kappa: Best-fit kappa.
        loss: Loss at the best fit.
        hessian: ``A = sum_i (r_i - 1)^2 / R_i^2`` at the best fit.
        meat: ``B = N Var_i[(r_i - 1) / R_i] + c_ref^2 N_ref Var_j[r_j - 1]``.
        status: Final state of the optimiser.
        kappa_test: The tested kappa, NaN when none.
        loss_test: Loss at ``kappa_test``, NaN when none.
    """

    kappa: float
    loss: float
    hessian: float
    meat: float
    status: OptimizerStatus
    kappa_test: float = math.nan
    loss_test: float = math.nan

    @property
    def sigma(self) -> float:
        """Sandwich uncertainty ``sqrt(B) / A``."""
        return (
            math.sqrt(self.meat) / self.hessian if self.hessian > 0 and self.meat >= 0 else math.nan
        )

    @property
    def lambda_corr(self) -> float:
        """``A sigma^2 = B / A``."""
        return self.meat / self.hessian if self.hessian > 0 else math.nan

    @property
    def q(self) -> float:
        """``2 [L(kappa_test) - L(kappa_hat)]``; NaN when no kappa was tested."""
        return 2.0 * (self.loss_test - self.loss)

    @property
    def z(self) -> float:
        """``sign(kappa_hat - kappa_test) sqrt(max(q / lambda_corr, 0))``."""
        return _signed_root(self.kappa - self.kappa_test, self.q, self.lambda_corr)

    @property
    def kappa_fit(self) -> KappaFit:
        """The result as a :class:`~tamm.results.KappaFit` with method ``"baseline-unbinned"``."""
        parameters: dict[str, object] = {"kappa": self.kappa, "lambda_corr": self.lambda_corr}
        if math.isfinite(self.kappa_test):
            parameters["kappa_test"] = self.kappa_test
            parameters["z"] = self.z
        return KappaFit(
            method="baseline-unbinned",
            kappa=self.kappa,
            sigma=self.sigma,
            converged=self.status.converged,
            nll=self.loss,
            parameters=parameters,
            message=self.status.message,
        )


def _check_log_ratio_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        msg = f"{name} must be a non-empty 1-D array of log ratios (n_events,); received shape {array.shape}."
        raise InvalidModelError(msg)
    if not np.all(np.isfinite(array)):
        first = int(np.flatnonzero(~np.isfinite(array))[0])
        msg = f"{name} contains a non-finite log ratio at index {first} ({array[first]}); log ratios must be finite."
        raise InvalidModelError(msg)
    return array


class _BaselineLoss:
    """Baseline loss ``-sum_i log(kappa r_i + 1 - kappa) + c_ref kappa sum_j (r_j - 1)``."""

    def __init__(
        self, data_log_ratio: NDArray[np.float64], reference_log_ratio: NDArray[np.float64]
    ) -> None:
        self.log_ratio = data_log_ratio
        self.reference_scale = data_log_ratio.size / reference_log_ratio.size
        self.reference_excess = float(np.sum(np.expm1(reference_log_ratio)))
        self.reference_deviation = np.expm1(reference_log_ratio)

    def log_model(self, kappa: float) -> NDArray[np.float64]:
        if 0 < kappa < 1:
            return np.logaddexp(math.log(kappa) + self.log_ratio, math.log1p(-kappa))
        with np.errstate(over="ignore"):
            return _signed_log_sum(
                _log_abs(kappa) + self.log_ratio,
                _sign(kappa),
                _log_abs(1.0 - kappa),
                _sign(1.0 - kappa),
            )

    def value(self, x: NDArray[np.float64]) -> float:
        log_model = self.log_model(float(x[0]))
        if not np.all(np.isfinite(log_model)):
            return math.inf
        return (
            -float(np.sum(log_model)) + self.reference_scale * float(x[0]) * self.reference_excess
        )

    def score(self, kappa: float) -> NDArray[np.float64]:
        """``(r_i - 1) / R_i`` per data event."""
        log_model = self.log_model(kappa)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(np.exp(self.log_ratio - log_model) - np.exp(-log_model))

    def evaluate(
        self, x: NDArray[np.float64]
    ) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        value = self.value(x)
        if not math.isfinite(value):
            return math.inf, np.full(1, np.nan), np.full((1, 1), np.nan)
        score = self.score(float(x[0]))
        gradient = -score.sum() + self.reference_scale * self.reference_excess
        return value, np.array([gradient]), np.array([[float(np.sum(score**2))]])


def fit_baseline_unbinned(
    data_log_ratio: ArrayLike,
    reference_log_ratio: ArrayLike,
    *,
    kappa_test: float | None = None,
    kappa_start: float = 0.5,
    max_iter: int = 100,
    tolerance: float = 1e-6,
) -> BaselineFit:
    """Fit kappa with one signal and one background simulation as fixed templates.

    The model is ``p_data / p_b = kappa r + (1 - kappa)`` with ``r = p_s / p_b`` the
    acceptance-corrected ratio of the signal simulation to the background simulation, and the
    loss ``-sum_i log(kappa r_i + 1 - kappa) + (N / N_ref) kappa sum_j (r_j - 1)`` over the data
    ``x_i`` and a reference sample ``y_j`` of the cut background simulation. Nothing adapts to
    the data, so a wrong simulation biases kappa: this is the method TAMM improves on.

    Args:
        data_log_ratio: ``log r(x_i)`` on the data, shape ``(N,)``.
        reference_log_ratio: ``log r(y_j)`` on the background reference sample, shape ``(N_ref,)``.
        kappa_test: The kappa to test with the profile statistic (the true value in studies).
        kappa_start: Start value of kappa.
        max_iter: Maximum number of Newton steps.
        tolerance: Convergence threshold on the EDM, in loss units.

    Returns:
        The fit; ``.kappa_fit`` gives a :class:`~tamm.results.KappaFit`.

    Raises:
        InvalidModelError: If an input is empty, not 1-D or not finite.

    Notes:
        The variances in ``B`` are unbiased (divided by n - 1). Where kappa leaves [0, 1] and
        ``kappa r + 1 - kappa <= 0`` on a data event, the loss is ``+inf``.
    """
    _check_fit_settings(max_iter, tolerance)
    data = _check_log_ratio_vector(data_log_ratio, "data_log_ratio")
    reference = _check_log_ratio_vector(reference_log_ratio, "reference_log_ratio")
    loss = _BaselineLoss(data, reference)

    result = _minimize_newton(
        loss.evaluate,
        loss.value,
        np.array([kappa_start]),
        np.ones(1, dtype=bool),
        max_iter=max_iter,
        tolerance=tolerance,
    )
    if not result.status.converged:
        _warn_not_converged("baseline fit", result.status)
    kappa = float(result.x[0])

    score = loss.score(kappa)
    hessian = float(np.sum(score**2))
    meat = data.size * float(
        np.var(score, ddof=1)
    ) + loss.reference_scale**2 * reference.size * float(np.var(loss.reference_deviation, ddof=1))
    loss_test = math.nan if kappa_test is None else loss.value(np.array([kappa_test]))
    return BaselineFit(
        kappa=kappa,
        loss=result.value,
        hessian=hessian,
        meat=meat,
        status=result.status,
        kappa_test=math.nan if kappa_test is None else float(kappa_test),
        loss_test=loss_test,
    )


def baseline_scan(
    data_log_ratio: ArrayLike,
    reference_log_ratio: ArrayLike,
    fit: BaselineFit,
    kappa_values: ArrayLike,
) -> NDArray[np.float64]:
    """Return ``q(kappa) = 2 [L(kappa) - L(kappa_hat)]`` of the baseline on a grid.

    The baseline has kappa as its only parameter, so this is its profile statistic. Divide it
    by ``fit.lambda_corr`` for the sandwich-corrected statistic.

    Args:
        data_log_ratio: ``log r(x_i)`` on the data, as passed to :func:`fit_baseline_unbinned`.
        reference_log_ratio: ``log r(y_j)`` on the background reference sample, likewise.
        fit: The fit of the same inputs.
        kappa_values: Grid of kappa values, shape ``(m,)``.

    Returns:
        ``q`` at each grid value, shape ``(m,)``; ``+inf`` where the model is negative on a
        data event.

    Raises:
        InvalidModelError: If an input is empty, not 1-D or not finite.
    """
    loss = _BaselineLoss(
        _check_log_ratio_vector(data_log_ratio, "data_log_ratio"),
        _check_log_ratio_vector(reference_log_ratio, "reference_log_ratio"),
    )
    grid = np.asarray(kappa_values, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        msg = f"kappa_values must be a finite, non-empty 1-D array; received {grid!r}."
        raise InvalidModelError(msg)
    values = np.array([loss.value(np.array([kappa])) for kappa in grid])
    return np.asarray(2.0 * (values - fit.loss), dtype=np.float64)
