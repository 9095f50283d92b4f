"""Upper limits and discovery tests on kappa with hepstats, around the bugs of hepstats 0.10.1.

Pipeline position: after a zfit loss with kappa as the parameter of interest has been built
(:func:`tamm.zfit.tamm_nll` on a :class:`~tamm.zfit.TammPDF`, or a binned loss on a
:class:`~tamm.zfit.TopicMixturePDF`), these helpers run hepstats' hypothesis tests on it.

* :func:`upper_limit`: the CLs (or CLs+b) upper limit on kappa from a scan of kappa values,
  with the expected limit and its bands.
* :func:`discovery`: the p-value and significance of kappa > 0.
* :class:`PoissonToys`: the ``sampler`` and ``sample`` callables for hepstats'
  ``FrequentistCalculator`` that draw a new Poisson event count for every toy.

Both helpers take the asymptotic formulae (``calculator="asymptotic"``) or toys
(``calculator="frequentist"``). They work around these defects of hepstats 0.10.1 (with zfit
0.28 and numpy 2.4):

1. ``UpperLimit.upperlimit()`` converts the spline root with ``float(array)``, which numpy 2.4
   rejects for a 1-element array. hepstats catches the ``TypeError``, so the limit comes back
   as None. :func:`upper_limit` interpolates the p-values from
   ``UpperLimit.pvalues()`` itself (:func:`limit_from_pvalues`).
2. For a non-extended model, hepstats scales the Asimov histogram by ``data.n_events``, which
   for zfit binned data is the number of bins, so the expected and observed CLs are wrong. The
   helpers reject losses that are not extended.
3. ``FrequentistCalculator`` fits each toy with the POI fixed and raises "No parameter for
   minimization" when nothing else floats. The helpers check this first.
4. The default toy sampler draws the Poisson event count once per generated POI value and
   reuses it for every toy. :class:`PoissonToys` draws it per toy.
5. The Asimov dataset comes from a fit with kappa fixed at 0. There the parameters that only
   shape the signal (the signal topic weights of a :class:`~tamm.zfit.TopicMixturePDF`) have
   no effect, Minuit reports an invalid minimum, and hepstats refits five times from start
   values perturbed with numpy's global generator before it warns. The helpers keep those
   parameters fixed in fits at kappa = 0, which leaves every fitted value unchanged.

Importing this module imports hepstats; install it with ``pip install hepstats``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zfit
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidModelError
from tamm.zfit.unbinned import _loss_kappa

try:
    from hepstats.hypotests import Discovery, UpperLimit
    from hepstats.hypotests.calculators import AsymptoticCalculator, FrequentistCalculator
    from hepstats.hypotests.parameters import POI, POIarray
except ImportError as err:  # pragma: no cover - depends on the environment
    msg = (
        "tamm.zfit.hepstats needs the hepstats package (tested with 0.10.1); install it with "
        "`pip install hepstats`."
    )
    raise ImportError(msg) from err

__all__ = [
    "CALCULATORS",
    "KappaDiscovery",
    "KappaLimit",
    "PoissonToys",
    "discovery",
    "limit_from_pvalues",
    "upper_limit",
]

log = logging.getLogger(__name__)

CALCULATORS = ("asymptotic", "frequentist")

# Keys of the expected p-values in hepstats' UpperLimit.pvalues(), by shift in standard deviations.
_EXPECTED_KEYS = {
    -2: "expected_m2",
    -1: "expected_m1",
    0: "expected",
    1: "expected_p1",
    2: "expected_p2",
}

_EXTENDED_LOSSES = (zfit.loss.ExtendedUnbinnedNLL, zfit.loss.ExtendedBinnedNLL)


def __dir__() -> list[str]:
    return __all__


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class KappaLimit:
    """An upper limit on kappa with its expected value and bands.

    Attributes:
        observed: The observed upper limit.
        expected: The median expected limit under kappa = 0 (the background-only hypothesis).
        expected_band: Expected limits at -2, -1, +1 and +2 standard deviations, by key
            ``"-2"``, ``"-1"``, ``"+1"``, ``"+2"``; NaN where the p-values never reach alpha.
        alpha: The test size (0.05 for a 95 % confidence level).
        cls: Whether the limit is CLs (True) or CLs+b (False).
        calculator: ``"asymptotic"`` or ``"frequentist"``.
        kappa_values: The scanned kappa values, shape ``(m,)``.
        pvalues: The p-values of hepstats' ``UpperLimit.pvalues()`` at each scanned value, by
            hepstats' keys (``"cls"``, ``"clsb"``, ``"clb"``, ``"expected"``, ...).
    """

    observed: float
    expected: float
    expected_band: dict[str, float]
    alpha: float
    cls: bool
    calculator: str
    kappa_values: NDArray[np.float64] = field(repr=False)
    pvalues: dict[str, NDArray[np.float64]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the limit as a JSON-serialisable dictionary."""
        out = asdict(self)
        out["kappa_values"] = self.kappa_values.tolist()
        out["pvalues"] = {key: np.asarray(value).tolist() for key, value in self.pvalues.items()}
        return out


@dataclass(frozen=True)
class KappaDiscovery:
    """The discovery test of kappa > 0.

    Attributes:
        p_value: p-value of the background-only hypothesis kappa = 0.
        significance: The p-value as a one-sided Gaussian significance Z.
        calculator: ``"asymptotic"`` or ``"frequentist"``.
    """

    p_value: float
    significance: float
    calculator: str

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dictionary."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Toys with a Poisson count per toy


class PoissonToys:
    """Toy sampling for hepstats' ``FrequentistCalculator`` with a new event count per toy.

    hepstats 0.10.1 draws the number of events of an extended model once per sampler, that is
    once per generated POI value, and every toy of that value reuses it, so the toys lack the
    Poisson fluctuation of the total. Pass :meth:`sampler` and :meth:`sample` of one instance
    as the calculator's ``sampler=`` and ``sample=``: every toy then draws
    ``n ~ Poisson(nu)``, with ``nu`` the model's yield at the generating parameter values.

    Args:
        seed: Seed of the event counts. The events themselves are drawn with zfit's TensorFlow
            random generator; seed it with ``zfit.settings.set_seed`` for reproducible toys.

    Examples:
        >>> toys = PoissonToys(seed=1)
        >>> # FrequentistCalculator(loss, minimizer, sampler=toys.sampler, sample=toys.sample)
    """

    def __init__(self, seed: int | np.random.SeedSequence | None) -> None:
        self._rng = np.random.default_rng(seed)
        self._models: dict[int, Any] = {}

    def sampler(self, models: Sequence[Any], nevents: Sequence[int]) -> list[Any]:
        """Create one zfit sampler per model, as hepstats' ``base_sampler`` does.

        Args:
            models: The PDFs of the loss.
            nevents: Initial number of events per sampler.

        Returns:
            The samplers, in the order of ``models``.
        """
        samplers = []
        for model, n in zip(models, nevents, strict=True):
            sampler = model.create_sampler(n=int(n))
            self._models[id(sampler)] = model
            samplers.append(sampler)
        return samplers

    def sample(
        self,
        samplers: Sequence[Any],
        ntoys: int,
        parameter: Any = None,
        value: float | None = None,
        constraints: Sequence[Any] | None = None,
    ) -> Iterator[dict[Any, float]]:
        """Resample every sampler ``ntoys`` times, each time with a new Poisson event count.

        The signature is that of hepstats' ``base_sample``. Constraints that can be sampled
        (such as ``zfit.constraint.GaussianConstraint``) get a new auxiliary value per toy.

        Yields:
            Per toy, the sampled values of the constrained parameters (empty without such
            constraints), to be set while the toy is fitted.

        Raises:
            InvalidModelError: If a sampler was not created by :meth:`sampler`.
        """
        sampled_constraints: dict[Any, NDArray[np.float64]] = {}
        for constraint in constraints or ():
            if hasattr(constraint, "sample"):
                for param, values in constraint.sample(n=ntoys).items():
                    sampled_constraints[param] = np.asarray(values)

        for toy in range(ntoys):
            for sampler in samplers:
                model = self._models.get(id(sampler))
                if model is None:
                    msg = (
                        "PoissonToys.sample received a sampler that PoissonToys.sampler did not "
                        "create; pass both sampler= and sample= of the same PoissonToys."
                    )
                    raise InvalidModelError(msg)
                names = set(sampler.params)
                overrides = {}
                if parameter is not None and value is not None and parameter.name in names:
                    overrides = {parameter: value}
                n_events = self._draw_count(model, sampler.params, overrides)
                sampler.resample(param_values=overrides, n=n_events)
            yield {param: values[toy] for param, values in sampled_constraints.items()}

    def _draw_count(
        self, model: Any, sampler_values: Mapping[str, Any], overrides: Mapping[Any, float]
    ) -> int:
        """Draw a Poisson count with the model's yield at the sampler's parameter values.

        The sampler keeps the values of its creation, while hepstats fits the toys in between
        and so moves the parameters themselves; the yield is evaluated at the former.
        """
        if not model.is_extended:
            msg = f"Poisson toys need an extended model; {model.name} has no yield."
            raise InvalidModelError(msg)
        values = {
            p: sampler_values[p.name]
            for p in model.get_params(floating=None, is_yield=None)
            if p.name in sampler_values
        }
        values.update(overrides)
        with zfit.param.set_values(list(values), list(values.values())):
            expected = float(model.get_yield().value())
        if not (math.isfinite(expected) and expected > 0):
            msg = f"The yield of {model.name} is {expected} at the toy parameters; it must be positive."
            raise InvalidModelError(msg)
        return int(self._rng.poisson(expected))


# ---------------------------------------------------------------------------------------------
# Fits at kappa = 0


class _ZeroKappaMinimizer:
    """A zfit minimiser that keeps the signal-shape parameters fixed while kappa is fixed at 0.

    At kappa = 0 these parameters have no effect on the loss, so fixing them changes no fitted
    value, but it keeps the Hessian positive definite and Minuit's minimum valid.
    """

    def __init__(self, minimizer: Any, poi: zfit.Parameter, signal_shape: Sequence[Any]) -> None:
        self._minimizer = minimizer
        self._poi = poi
        self._signal_shape = list(signal_shape)

    @property
    def verbosity(self) -> int:
        """Verbosity of the wrapped minimiser (hepstats sets it)."""
        return int(self._minimizer.verbosity)

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        self._minimizer.verbosity = value

    def minimize(self, loss: Any, params: Any = None, init: Any = None) -> Any:
        """Minimise ``loss`` with the wrapped minimiser (see the class docstring)."""
        at_zero = not self._poi.floating and float(self._poi.value()) == 0.0
        held = [p for p in self._signal_shape if p.floating] if at_zero else []
        for parameter in held:
            parameter.floating = False
        try:
            return self._minimizer.minimize(loss, params=params, init=init)
        finally:
            for parameter in held:
                parameter.floating = True


@contextmanager
def _restored_floating(poi: zfit.Parameter) -> Iterator[None]:
    """Restore the floating state of the POI, which hepstats leaves changed when a fit raises."""
    floating = poi.floating
    try:
        yield
    finally:
        poi.floating = floating


def _signal_shape_parameters(loss: Any) -> list[Any]:
    """Collect the parameters that the loss models declare as acting only through the signal."""
    found: dict[int, Any] = {}
    for model in loss.model:
        for parameter in getattr(model, "signal_shape_parameters", ()):
            found[id(parameter)] = parameter
    return list(found.values())


# ---------------------------------------------------------------------------------------------
# Checks


def _check_extended(loss: Any) -> None:
    """Reject losses whose asymptotic Asimov dataset hepstats 0.10.1 scales wrongly."""
    not_extended = [m.name for m in loss.model if not m.is_extended]
    if not isinstance(loss, _EXTENDED_LOSSES) or not_extended:
        msg = (
            f"hepstats needs an extended loss, but received {type(loss).__name__} with "
            f"non-extended models {not_extended}. hepstats 0.10.1 scales the Asimov dataset of a "
            "non-extended model by the number of bins instead of the number of events, which "
            "makes expected and observed CLs wrong. Build the PDF with a yield "
            "(TammPDF(..., n_data=N) or extended=..., TopicMixturePDF(..., extended=...)) and "
            "use ExtendedUnbinnedNLL or ExtendedBinnedNLL (tamm_nll does this for an extended PDF)."
        )
        raise InvalidModelError(msg)


def _check_floating_nuisance(loss: Any, poi: zfit.Parameter) -> None:
    floating = [p for p in loss.get_params(floating=True) if p is not poi]
    if not floating:
        msg = (
            f"The frequentist calculator needs at least one floating parameter besides the POI "
            f"{poi.name!r}: hepstats 0.10.1 fits each toy with the POI fixed and fails with 'No "
            "parameter for minimization' otherwise. Leave a nuisance parameter floating (a "
            "yield, c_s or c_b) or use calculator='asymptotic'."
        )
        raise InvalidModelError(msg)


def _check_calculator(calculator: str) -> None:
    if calculator not in CALCULATORS:
        msg = f"calculator must be one of {list(CALCULATORS)}; received {calculator!r}."
        raise InvalidModelError(msg)


def _check_alpha(alpha: float) -> float:
    if not (0.0 < alpha < 1.0):
        msg = f"alpha must be in (0, 1), for example 0.05 for a 95 % limit; received {alpha}."
        raise InvalidModelError(msg)
    return float(alpha)


def _default_minimizer() -> zfit.minimize.Minuit:
    return zfit.minimize.Minuit(gradient="zfit")


def _best_fit(loss: Any, minimizer: Any) -> Any:
    """Minimise the loss once; hepstats then takes this as its best fit."""
    result = minimizer.minimize(loss)
    # NB: zfit does not call a fit valid when a parameter ends at its limit (a topic weight at
    # the edge of the simplex), but such a minimum is still the best fit.
    if not result.converged:
        msg = (
            f"The best fit of the loss did not converge ({result.message or 'no message'}), so "
            "no test statistic can be computed. Check the fit with zfit first."
        )
        raise InvalidModelError(msg)
    return result


def _calculator(
    loss: Any,
    poi: zfit.Parameter,
    *,
    calculator: str,
    minimizer: Any,
    asimov_bins: int | list[int] | list[list[int]] | None,
    n_toys_null: int,
    n_toys_alt: int,
    seed: int | np.random.SeedSequence | None,
) -> Any:
    """Build the hepstats calculator for an extended loss, after computing the best fit."""
    _check_calculator(calculator)
    _check_extended(loss)
    if calculator == "frequentist":
        _check_floating_nuisance(loss, poi)
    minimizer = _ZeroKappaMinimizer(minimizer, poi, _signal_shape_parameters(loss))
    best = _best_fit(loss, minimizer)
    log.info(
        "Best fit for hepstats: %s = %.6g (%s calculator)",
        poi.name,
        best.params[poi]["value"],
        calculator,
    )
    if calculator == "asymptotic":
        return AsymptoticCalculator(best, minimizer, asimov_bins=asimov_bins)
    toys = PoissonToys(seed)
    return FrequentistCalculator(
        best,
        minimizer,
        ntoysnull=n_toys_null,
        ntoysalt=n_toys_alt,
        sampler=toys.sampler,
        sample=toys.sample,
    )


# ---------------------------------------------------------------------------------------------
# Limits


def limit_from_pvalues(
    values: ArrayLike, pvalues: ArrayLike, alpha: float, *, start: float = -math.inf
) -> float:
    """Return where the p-values first fall to ``alpha``, by linear interpolation.

    Args:
        values: Scanned POI values, increasing, shape ``(m,)``.
        pvalues: p-values at ``values``, shape ``(m,)``.
        alpha: The test size.
        start: Ignore the values below this one (the best fit, for an observed limit).

    Returns:
        The interpolated POI value of the first crossing from above alpha to alpha or below;
        NaN when the p-values in the scan never go from above alpha to alpha or below.

    Examples:
        >>> limit_from_pvalues([0.0, 0.1, 0.2, 0.3], [1.0, 0.5, 0.1, 0.01], 0.05)
        0.25555555555555554
    """
    x = np.asarray(values, dtype=np.float64)
    p = np.asarray(pvalues, dtype=np.float64)
    keep = (x >= start) & np.isfinite(p)
    x, p = x[keep], p[keep]
    for i in range(1, len(x)):
        if p[i - 1] > alpha >= p[i]:
            fraction = (p[i - 1] - alpha) / (p[i - 1] - p[i])
            return float(x[i - 1] + fraction * (x[i] - x[i - 1]))
    return math.nan


def upper_limit(
    loss: Any,
    kappa_values: ArrayLike,
    *,
    poi: zfit.Parameter | None = None,
    alpha: float = 0.05,
    cls: bool = True,
    calculator: str = "asymptotic",
    minimizer: Any = None,
    asimov_bins: int | list[int] | list[list[int]] | None = None,
    n_toys_null: int = 100,
    n_toys_alt: int = 100,
    seed: int | np.random.SeedSequence | None = None,
) -> KappaLimit:
    """Compute the upper limit on kappa with hepstats' ``UpperLimit``.

    hepstats computes the p-values at each scanned kappa from profile fits of the loss and from
    Asimov fits or toys. The limit is where they cross ``alpha``, interpolated linearly between
    the two scan points around the first crossing. The observed limit only considers kappa values
    at or above the best fit, as hepstats does. The test statistic is
    :math:`\\tilde q_\\kappa` (kappa >= 0 by physics), and the expected limits assume kappa = 0.

    Args:
        loss: An extended zfit loss, for example :func:`tamm.zfit.tamm_nll` on an extended
            :class:`~tamm.zfit.TammPDF`. It is minimised once here for the best fit.
        kappa_values: Scanned kappa values, increasing, shape ``(m,)``. They must bracket the
            limits; use about 10-20 values.
        poi: The kappa parameter; by default the ``kappa`` of the loss models.
        alpha: Test size; 0.05 gives a 95 % confidence level limit.
        cls: CLs limit (True) or CLs+b (False).
        calculator: ``"asymptotic"`` (asymptotic formulae with an Asimov dataset) or
            ``"frequentist"`` (toys). Each toy takes ``2 + m`` fits: about 1.6 s per toy for
            m = 4 and a 25-bin topic mixture on a shared 2-core machine.
        minimizer: A zfit minimiser; ``zfit.minimize.Minuit(gradient="zfit")`` by default.
        asimov_bins: Bins per observable of the Asimov dataset (asymptotic only); hepstats'
            default (``ceil(100 / sqrt(n_obs))``) when None.
        n_toys_null: Toys per scanned value (frequentist only).
        n_toys_alt: Toys of the alternative hypothesis (frequentist only).
        seed: Seed of the toys' event counts (frequentist only).

    Returns:
        The limit. The expected limit and bands are NaN where their p-values do not cross
        ``alpha`` within the scan (the expected limit then also logs a warning).

    Raises:
        InvalidModelError: If the loss is not extended, the POI is not found, the best fit did
            not converge, the frequentist calculator has no floating nuisance parameter, the
            values are not increasing, or the observed p-values do not cross ``alpha`` within
            the scan (extend the scan).
    """
    alpha = _check_alpha(alpha)
    values = np.asarray(kappa_values, dtype=np.float64).reshape(-1)
    if values.size < 2 or np.any(np.diff(values) <= 0) or not np.all(np.isfinite(values)):
        msg = f"kappa_values must be at least 2 finite, increasing values; received {values.tolist()}."
        raise InvalidModelError(msg)
    poi = _loss_kappa(loss, poi)
    minimizer = _default_minimizer() if minimizer is None else minimizer
    calc = _calculator(
        loss,
        poi,
        calculator=calculator,
        minimizer=minimizer,
        asimov_bins=asimov_bins,
        n_toys_null=n_toys_null,
        n_toys_alt=n_toys_alt,
        seed=seed,
    )

    test = UpperLimit(calc, POIarray(poi, values), POI(poi, 0.0), qtilde=True)
    # NB: hepstats divides p-values that underflow to 0 (CLs = p_s+b / p_b far from the best
    # fit); the resulting inf and NaN entries are handled below.
    with np.errstate(divide="ignore", invalid="ignore"), _restored_floating(poi):
        pvalues = {key: np.asarray(v, dtype=np.float64) for key, v in test.pvalues(CLs=cls).items()}
    best = float(calc.bestfit.params[poi]["value"])

    observed_key = "cls" if cls else "clsb"
    observed = limit_from_pvalues(values, pvalues[observed_key], alpha, start=best)
    expected = limit_from_pvalues(values, pvalues["expected"], alpha)
    if math.isnan(observed):
        msg = (
            f"The observed p-values ({observed_key}) do not fall from above alpha={alpha} to "
            f"below it within the scan from the best fit {best:.6g} to {values.max():.6g}: "
            f"{np.round(pvalues[observed_key], 4).tolist()} at {values.tolist()}. Extend "
            "kappa_values."
        )
        raise InvalidModelError(msg)
    if math.isnan(expected):
        log.warning(
            "The expected p-values do not cross alpha=%g within kappa_values %s: %s; the "
            "expected limit is NaN. Extend kappa_values (or use more toys).",
            alpha,
            values.tolist(),
            np.round(pvalues["expected"], 4).tolist(),
        )
    band = {
        f"{shift:+d}": limit_from_pvalues(values, pvalues[key], alpha)
        for shift, key in _EXPECTED_KEYS.items()
        if shift != 0
    }
    limit = KappaLimit(observed, expected, band, alpha, cls, calculator, values, pvalues)
    log.info(
        "Upper limit on %s at CL %.3g: observed %.6g, expected %.6g",
        poi.name,
        1.0 - alpha,
        observed,
        expected,
    )
    return limit


def discovery(
    loss: Any,
    *,
    poi: zfit.Parameter | None = None,
    calculator: str = "asymptotic",
    minimizer: Any = None,
    asimov_bins: int | list[int] | list[list[int]] | None = None,
    n_toys: int = 100,
    seed: int | np.random.SeedSequence | None = None,
) -> KappaDiscovery:
    """Test kappa = 0 against kappa > 0 with hepstats' ``Discovery``.

    Args:
        loss: An extended zfit loss with kappa as a parameter.
        poi: The kappa parameter; by default the ``kappa`` of the loss models.
        calculator: ``"asymptotic"`` or ``"frequentist"``.
        minimizer: A zfit minimiser; ``zfit.minimize.Minuit(gradient="zfit")`` by default.
        asimov_bins: Bins per observable of the Asimov dataset (asymptotic only).
        n_toys: Toys under kappa = 0 (frequentist only).
        seed: Seed of the toys' event counts (frequentist only).

    Returns:
        The p-value of kappa = 0 and its significance. hepstats returns (0, inf) when the
        p-value underflows or no toy exceeds the observed statistic.

    Raises:
        InvalidModelError: If the loss is not extended, the POI is not found, the best fit did not
            converge, or the frequentist calculator has no floating nuisance parameter.
    """
    poi = _loss_kappa(loss, poi)
    minimizer = _default_minimizer() if minimizer is None else minimizer
    calc = _calculator(
        loss,
        poi,
        calculator=calculator,
        minimizer=minimizer,
        asimov_bins=asimov_bins,
        n_toys_null=n_toys,
        n_toys_alt=n_toys,
        seed=seed,
    )
    with np.errstate(divide="ignore", invalid="ignore"), _restored_floating(poi):
        p_value, significance = Discovery(calc, POI(poi, 0.0)).result(printlevel=0)
    return KappaDiscovery(float(p_value), float(significance), calculator)
