r"""CLs upper limits on kappa and the discovery significance of a signal, through pyhf.infer.

Where this sits: after a model has been built (:mod:`tamm.pyhf`), these functions compute the
two frequentist results of a search for a small signal:

* :func:`upper_limit`: the CLs upper limit on kappa at a confidence level (95 % by default),
  observed and expected (median and +-1, +-2 standard deviations under kappa = 0), from
  :func:`pyhf.infer.intervals.upper_limits.upper_limit` with a linear scan.
* :func:`discovery_significance`: the p-value of kappa = 0 with the discovery statistic
  :math:`q_0`, and its significance :math:`Z = \Phi^{-1}(1 - p_0)`.

Both run asymptotically (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727) or with
pseudo-experiments (``calctype="toybased"``), always on pyhf's numpy backend with pyhf's scipy
optimizer, and restore the caller's backend afterwards.

Notes:
    Two pyhf 0.7.6 problems are handled here (checked with numpy 2.4.6):

    - Every toy-based test raises ``TypeError`` on numpy 2.4, because pyhf passes the removed
      ``interpolation`` argument to ``numpy.percentile``. The backend of
      :func:`tamm.pyhf.use_numpy_backend` fixes it.
    - pyhf's scan interpolates the level crossing with ``numpy.interp`` on the reversed CLs
      values, which is only valid for a strictly decreasing CLs curve. Toy-based CLs values
      are noisy, and then the result can lie anywhere in the scan. The limits here are the
      first downward crossing of the level instead (:func:`limit_from_scan`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyhf
from scipy import stats

from tamm.exceptions import InvalidModelError
from tamm.pyhf.fit import _check_model_and_data, _seeded_global_numpy

__all__ = [
    "DiscoveryResult",
    "UpperLimit",
    "discovery_significance",
    "limit_from_scan",
    "upper_limit",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

_CALCULATORS = ("asymptotics", "toybased")
_TEST_STATISTICS = ("qtilde", "q")

# Default scan: from 0 to the best fit plus this many sigma, which reaches the +2 sigma
# expected limit (about 1.96 + 2 sigma above 0) and the observed one.
_DEFAULT_SCAN_SIGMA = 5.0
_DEFAULT_SCAN_POINTS = 26


@dataclass(frozen=True)
class UpperLimit:
    """A CLs upper limit on kappa with the scan it was read from.

    Attributes:
        observed: Observed upper limit; NaN if CLs never falls below ``1 - cl`` in the scan.
        expected: Expected limits under kappa = 0 at -2, -1, 0, +1, +2 standard deviations.
        cl: Confidence level, for example 0.95.
        scan: Tested values of kappa, shape (n,).
        cls_observed: Observed CLs at each tested value, shape (n,).
        cls_expected: Expected CLs at each tested value, shape (n, 5).
        calctype: ``"asymptotics"`` or ``"toybased"``.
        test_stat: ``"qtilde"`` or ``"q"``.
        ntoys: Pseudo-experiments per hypothesis and tested value (0 for asymptotics).
    """

    observed: float
    expected: tuple[float, float, float, float, float]
    cl: float
    scan: tuple[float, ...]
    cls_observed: tuple[float, ...]
    cls_expected: tuple[tuple[float, ...], ...]
    calctype: str
    test_stat: str
    ntoys: int

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class DiscoveryResult:
    """The p-value of the background-only hypothesis kappa = 0 and its significance.

    Attributes:
        p_value: Observed p-value of kappa = 0 with the statistic q0.
        significance: ``Phi^-1(1 - p_value)`` in standard deviations; infinite when the
            p-value is 0 (toys: no pseudo-experiment was as signal-like as the data).
        calctype: ``"asymptotics"`` or ``"toybased"``.
        ntoys: Pseudo-experiments used (0 for asymptotics). A toy-based p-value below
            ``1 / ntoys`` is not resolved.
        kappa_expected: The signal fraction of the expected significance, or None.
        expected_significance: Median significance expected if kappa were ``kappa_expected``
            (Asimov data set, asymptotic formula); NaN when not requested.
    """

    p_value: float
    significance: float
    calctype: str
    ntoys: int
    kappa_expected: float | None = None
    expected_significance: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary."""
        return asdict(self)


def _is_integer(value: object) -> bool:
    """Return whether ``value`` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _start_values(
    model: pyhf.Model, values: np.ndarray, init_pars: npt.ArrayLike | None
) -> list[float]:
    from tamm.pyhf import initial_parameters

    if init_pars is None:
        return initial_parameters(model, values)
    start = [float(value) for value in np.asarray(init_pars, dtype=np.float64).ravel()]
    if len(start) != model.config.npars:
        msg = (
            f"init_pars has {len(start)} values, but the model has {model.config.npars} "
            f"parameters ({model.config.par_names})."
        )
        raise InvalidModelError(msg)
    return start


def _significance(p_value: float) -> float:
    if p_value <= 0.0:
        return math.inf
    return float(stats.norm.isf(p_value))


def limit_from_scan(scan: npt.ArrayLike, cls_values: npt.ArrayLike, level: float = 0.05) -> float:
    """Return where a CLs curve first falls below ``level``, by linear interpolation.

    Walking up the scan, the limit lies between the last value with CLs >= level and the
    first with CLs < level. Unlike pyhf's own interpolation, this stays correct when the
    curve is not monotonic, as with toy-based CLs values.

    Args:
        scan: Tested values of the POI in increasing order, shape (n,).
        cls_values: CLs at each tested value, shape (n,).
        level: The CLs level, ``1 - cl``.

    Returns:
        The crossing; NaN if CLs stays at or above ``level`` over the whole scan; the first
        scan value if CLs is already below ``level`` there.

    Raises:
        InvalidModelError: If the arrays differ in shape, are not 1-D, or ``scan`` is not
            increasing.

    Examples:
        >>> limit_from_scan([0.0, 1.0, 2.0, 3.0], [1.0, 0.2, 0.04, 0.06])
        1.9375
    """
    points = np.asarray(scan, dtype=np.float64)
    values = np.asarray(cls_values, dtype=np.float64)
    if points.ndim != 1 or points.shape != values.shape:
        msg = (
            f"scan and cls_values must be 1-D arrays of one shape, but received shapes "
            f"{points.shape} and {values.shape}."
        )
        raise InvalidModelError(msg)
    if np.any(np.diff(points) <= 0):
        msg = "scan must be strictly increasing; sort the tested values first."
        raise InvalidModelError(msg)
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return math.nan
    first = int(below[0])
    if first == 0:
        return float(points[0])
    x0, x1 = points[first - 1], points[first]
    y0, y1 = values[first - 1], values[first]
    return float(x0 + (y0 - level) / (y0 - y1) * (x1 - x0))


def _check_inputs(model: pyhf.Model, data: npt.ArrayLike, calctype: str, ntoys: int) -> np.ndarray:
    values = _check_model_and_data(model, data)
    if calctype not in _CALCULATORS:
        msg = f"calctype must be one of {list(_CALCULATORS)}, but received {calctype!r}."
        raise InvalidModelError(msg)
    if calctype == "toybased" and (not _is_integer(ntoys) or ntoys < 1):
        msg = f"ntoys must be a positive integer for toy-based tests, but received {ntoys!r}."
        raise InvalidModelError(msg)
    low = model.config.suggested_bounds()[model.config.poi_index][0]
    if low != 0.0:
        msg = (
            f"The POI {model.config.poi_name!r} has the lower bound {low}, but CLs limits and "
            "discovery tests need it at 0. Set its bounds to [0, 1] in the measurement."
        )
        raise InvalidModelError(msg)
    return values


def _calculator_options(calctype: str, ntoys: int) -> dict[str, Any]:
    if calctype == "toybased":
        return {"calctype": calctype, "ntoys": int(ntoys), "track_progress": False}
    return {"calctype": calctype}


def _default_scan(model: pyhf.Model, values: np.ndarray, n_points: int) -> np.ndarray:
    from tamm.pyhf import fit_kappa

    fit = fit_kappa(model, values, method="limit scan")
    high = float(model.config.suggested_bounds()[model.config.poi_index][1])
    sigma = fit.sigma if math.isfinite(fit.sigma) and fit.sigma > 0 else 0.05 * high
    top = min(high, max(fit.kappa, 0.0) + _DEFAULT_SCAN_SIGMA * sigma)
    return np.linspace(0.0, top, n_points)


def upper_limit(
    model: pyhf.Model,
    data: npt.ArrayLike,
    *,
    cl: float = 0.95,
    scan: npt.ArrayLike | None = None,
    n_points: int = _DEFAULT_SCAN_POINTS,
    calctype: str = "asymptotics",
    ntoys: int = 1000,
    seed: int | None = None,
    test_stat: str = "qtilde",
    init_pars: npt.ArrayLike | None = None,
) -> UpperLimit:
    """Compute the CLs upper limit on kappa with pyhf's linear scan.

    Each tested value runs :func:`pyhf.infer.hypotest`; the limits are the first downward
    crossings of ``1 - cl`` by the observed and by each expected CLs curve
    (:func:`limit_from_scan`).

    Args:
        model: A pyhf model with kappa as POI and lower bound 0.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        cl: Confidence level of the limit.
        scan: Tested values of kappa, increasing, shape (n,). By default ``n_points`` values
            from 0 to the best fit plus 5 of its sigma (clipped to the POI bound).
        n_points: Number of tested values of the default scan.
        calctype: ``"asymptotics"`` or ``"toybased"``.
        ntoys: Pseudo-experiments per hypothesis and tested value, for ``"toybased"``.
        seed: Seed of numpy's global generator for the toys (restored afterwards); toys are
            not reproducible without it.
        test_stat: ``"qtilde"`` (the usual choice for a POI bounded at 0) or ``"q"``.
        init_pars: Start values of every fit, shape (n_pars,). By default
            :func:`tamm.pyhf.initial_parameters`.

    Returns:
        The observed and expected limits with the CLs values of the scan.

    Raises:
        InvalidModelError: If the model has no POI or its lower bound is not 0, ``data`` has
            the wrong length, an option is invalid, or ``scan`` leaves the POI bounds.

    Examples:
        >>> from tamm.pyhf import baseline_spec, build_workspace, model_and_data
        >>> import numpy as np
        >>> spec = baseline_spec([1, 2, 3, 4], [4, 3, 2, 1], [400, 300, 205, 105])
        >>> model, data = model_and_data(build_workspace(spec))
        >>> limit = upper_limit(model, data, scan=np.linspace(0.0, 0.15, 16))
        >>> round(limit.observed, 3)
        0.069
        >>> [round(value, 3) for value in limit.expected]  # -2, -1, 0, +1, +2 sigma
        [0.031, 0.042, 0.059, 0.083, 0.112]
    """
    from tamm.pyhf import use_numpy_backend

    values = _check_inputs(model, data, calctype, ntoys)
    if not 0.0 < cl < 1.0:
        msg = f"cl must be in (0, 1), but received {cl!r}; use e.g. 0.95."
        raise InvalidModelError(msg)
    if test_stat not in _TEST_STATISTICS:
        msg = f"test_stat must be one of {list(_TEST_STATISTICS)}, but received {test_stat!r}."
        raise InvalidModelError(msg)
    if scan is None:
        if not _is_integer(n_points) or n_points < 2:
            msg = f"n_points must be an integer >= 2, but received {n_points!r}."
            raise InvalidModelError(msg)
        points = _default_scan(model, values, n_points)
    else:
        points = np.asarray(scan, dtype=np.float64).ravel()
        low, high = model.config.suggested_bounds()[model.config.poi_index]
        if points.size < 2 or np.any(points < low) or np.any(points > high):
            msg = (
                f"scan must hold at least two values inside the POI bounds [{low}, {high}], "
                f"but received {points.tolist()}."
            )
            raise InvalidModelError(msg)
        points = np.sort(points)
    start = _start_values(model, values, init_pars)

    level = 1.0 - cl
    # NB: with few toys the background-only p-value CLb can be 0, and pyhf's CLsb / CLb then
    # warns and gives inf or NaN; such a point never counts as below the level.
    with (
        use_numpy_backend("scipy"),
        _seeded_global_numpy(seed),
        np.errstate(divide="ignore", invalid="ignore"),
    ):
        _, _, (_, results) = pyhf.infer.intervals.upper_limits.upper_limit(
            values.tolist(),
            model,
            points,
            level=level,
            return_results=True,
            init_pars=start,
            test_stat=test_stat,
            **_calculator_options(calctype, ntoys),
        )
    cls_observed = np.array([float(result[0]) for result in results])
    cls_expected = np.array([[float(value) for value in result[1]] for result in results])

    observed = limit_from_scan(points, cls_observed, level)
    expected = tuple(limit_from_scan(points, cls_expected[:, i], level) for i in range(5))
    if not math.isfinite(observed) or not all(math.isfinite(value) for value in expected):
        log.warning(
            "CLs did not fall below %g within the scan up to %g for every curve (observed "
            "limit %s, expected %s); extend the scan.",
            level,
            points[-1],
            observed,
            expected,
        )
    return UpperLimit(
        observed=observed,
        expected=expected,  # type: ignore[arg-type]
        cl=float(cl),
        scan=tuple(float(value) for value in points),
        cls_observed=tuple(float(value) for value in cls_observed),
        cls_expected=tuple(tuple(float(value) for value in row) for row in cls_expected),
        calctype=calctype,
        test_stat=test_stat,
        ntoys=int(ntoys) if calctype == "toybased" else 0,
    )


def discovery_significance(
    model: pyhf.Model,
    data: npt.ArrayLike,
    *,
    calctype: str = "asymptotics",
    ntoys: int = 1000,
    seed: int | None = None,
    kappa_expected: float | None = None,
    init_pars: npt.ArrayLike | None = None,
) -> DiscoveryResult:
    """Test kappa = 0 with the discovery statistic q0 and convert the p-value to Z.

    Args:
        model: A pyhf model with kappa as POI and lower bound 0.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        calctype: ``"asymptotics"`` or ``"toybased"``.
        ntoys: Pseudo-experiments for ``"toybased"``. pyhf also throws as many toys at
            kappa = 1, which the observed p-value does not use.
        seed: Seed of numpy's global generator for the toys (restored afterwards).
        kappa_expected: If given, also compute the median significance expected for this
            signal fraction, from the Asimov data set with the nuisance parameters fitted to
            the data at that kappa.
        init_pars: Start values of every fit, shape (n_pars,). By default
            :func:`tamm.pyhf.initial_parameters`.

    Returns:
        The p-value and significance.

    Raises:
        InvalidModelError: If the model has no POI or its lower bound is not 0, ``data`` has
            the wrong length, or an option is invalid.

    Notes:
        pyhf's own "expected" q0 p-values assume POI = 1, which for a fraction means a sample
        of pure signal, so they are not reported.

    Examples:
        >>> from tamm.pyhf import baseline_spec, build_workspace, model_and_data
        >>> spec = baseline_spec([1, 2, 3, 4], [4, 3, 2, 1], [360, 300, 230, 140])
        >>> model, data = model_and_data(build_workspace(spec))
        >>> result = discovery_significance(model, data)
        >>> round(result.significance, 2)
        4.56
    """
    from tamm.pyhf import use_numpy_backend

    values = _check_inputs(model, data, calctype, ntoys)
    start = _start_values(model, values, init_pars)
    with (
        use_numpy_backend("scipy"),
        _seeded_global_numpy(seed),
        np.errstate(divide="ignore", invalid="ignore"),
    ):
        p_value = float(
            pyhf.infer.hypotest(
                0.0,
                values.tolist(),
                model,
                init_pars=start,
                test_stat="q0",
                **_calculator_options(calctype, ntoys),
            )
        )
        expected_significance = math.nan
        if kappa_expected is not None:
            low, high = model.config.suggested_bounds()[model.config.poi_index]
            if not low < kappa_expected <= high:
                msg = f"kappa_expected must be in ({low}, {high}], but received {kappa_expected!r}."
                raise InvalidModelError(msg)
            asimov = pyhf.infer.calculators.generate_asimov_data(
                float(kappa_expected),
                values.tolist(),
                model,
                start,
                model.config.suggested_bounds(),
                model.config.suggested_fixed(),
            )
            asimov_p = float(
                pyhf.infer.hypotest(
                    0.0, asimov, model, init_pars=start, test_stat="q0", calctype="asymptotics"
                )
            )
            expected_significance = _significance(asimov_p)
    return DiscoveryResult(
        p_value=p_value,
        significance=_significance(p_value),
        calctype=calctype,
        ntoys=int(ntoys) if calctype == "toybased" else 0,
        kappa_expected=None if kappa_expected is None else float(kappa_expected),
        expected_significance=expected_significance,
    )
