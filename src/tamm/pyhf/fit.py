"""Fit the signal fraction kappa of a pyhf model, and test values of it.

This module is the top of tamm's pyhf adapter: it takes a model from
:mod:`tamm.pyhf.workspace` (or any pyhf model with a POI) and runs the fits.

- :func:`fit_kappa` minimises pyhf's negative log-likelihood with Minuit and returns a
  :class:`~tamm.results.KappaFit`.
- :func:`hypotest_kappa` computes CLs for one value of kappa with :func:`pyhf.infer.hypotest`.
- :func:`initial_parameters` computes the start values that both use.
- :func:`use_numpy_backend` is the context manager both use: pyhf's numpy backend with a chosen
  optimizer, restoring the caller's backend on exit.

Both functions run on pyhf's numpy backend in float64, whatever backend is active, so their
results do not depend on the caller's backend.

Notes:
    Models with tamm's two-process layout (see :func:`initial_parameters`) have an expectation
    that is linear in non-negative mixture weights
    ``w = norm * (kappa * theta_signal, (1 - kappa) * theta_background)``. Two steps use it:

    - Start values. Minuit has no analytic gradient on the numpy backend, and from pyhf's
      uniform topic weights its fast strategy 0 can stop early on the flat topic directions.
      The maximum-likelihood weights solve a convex problem (scipy's TNC, a few
      milliseconds), and Migrad started there converges with strategy 0.
    - The uncertainty of kappa. After a fast Migrad, Minuit's Hesse is unreliable when topic
      weights sit at the edge of the simplex. With 2 x 20 topics over 100 bins it returned
      0.003 and 0.013 for two of eight data sets, where a profile scan gave 0.053 and 0.060
      (``python benchmarks/bench_pyhf.py --sigma-study``). ``sigma`` is therefore the
      delta-method uncertainty of kappa from the observed information of the non-zero
      weights. It matched the profile scan within 3 % for all eight data sets and needs no
      extra likelihood calls.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import iminuit
import numpy as np
import numpy.typing as npt
import pyhf
import scipy.optimize

from tamm.exceptions import ConvergenceWarning, InvalidModelError
from tamm.pyhf.modifiers import FRACTION, PARAMETRIZATIONS, TOPICMIX, topic_weights
from tamm.pyhf.workspace import _is_number_between
from tamm.results import KappaFit

__all__ = [
    "KappaHypotest",
    "fit_kappa",
    "hypotest_kappa",
    "initial_parameters",
    "use_numpy_backend",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

_TEST_STATISTICS = ("qtilde", "q")
_CALCULATORS = ("asymptotics", "toybased")

# Relative distance from a parameter bound at which a start value is placed, because Minuit's
# transform for bounded parameters has a zero derivative at the bound itself.
_BOUND_MARGIN = 1e-4

# Relative distance from a bound within which the POI counts as at the bound.
_AT_BOUND = 1e-3

# Mixture weights below this fraction of the total count as zero (a boundary solution).
_ZERO_WEIGHT = 1e-6

# Floor for Poisson means in the start-value fit, so log(0) never occurs.
_TINY_RATE = 1e-300


# ---------------------------------------------------------------------------------------------
# Backend


class _NumpyBackend(pyhf.tensor.numpy_backend):  # type: ignore[misc]
    """pyhf's numpy backend, with ``percentile`` working on numpy 2.4 and later."""

    # NOTE: pyhf 0.7.6 calls np.percentile(..., interpolation=...), an argument that numpy 2.4
    # removed, so every toy-based hypotest raises TypeError. The `method` argument takes the
    # same values and exists since numpy 1.22. Remove this class once pyhf passes `method`.
    def percentile(
        self, tensor_in: Any, q: Any, axis: Any = None, interpolation: Any = "linear"
    ) -> Any:
        return np.percentile(tensor_in, q, axis=axis, method=interpolation)


@contextmanager
def use_numpy_backend(optimizer: Any = "minuit") -> Iterator[None]:
    """Switch pyhf to its numpy backend (float64) inside a ``with`` block.

    The backend and optimizer that were active before are restored on exit, also when the
    block raises. The numpy backend set here also makes pyhf's toy-based calculator work with
    numpy 2.4 and later.

    Args:
        optimizer: A pyhf optimizer name (``"minuit"``, ``"scipy"``) or instance, such as
            ``pyhf.optimize.minuit_optimizer(strategy=0)``.

    Yields:
        None.

    Examples:
        >>> import pyhf
        >>> with use_numpy_backend():
        ...     pyhf.get_backend()[1].name
        'minuit'
    """
    previous_tensorlib, previous_optimizer = pyhf.get_backend()
    pyhf.set_backend(_NumpyBackend(), optimizer)
    try:
        yield
    finally:
        pyhf.set_backend(previous_tensorlib, previous_optimizer)


# ---------------------------------------------------------------------------------------------
# Start values


@dataclass(frozen=True)
class _MixtureLayout:
    """A model whose expectation is linear in non-negative mixture weights.

    For tamm's two-process layout, ``nu = sum_j w_j design_j`` with
    ``w = norm * (kappa * theta_signal, (1 - kappa) * theta_background)``.
    """

    design: np.ndarray  # (J, n_bins): the expected counts of each column at unit weight
    n_signal_columns: int  # the first rows of `design` belong to the signal sample
    norm_name: str
    # (topicmix name or None, parametrization) for the signal and the background sample
    topics: tuple[tuple[str | None, str], tuple[str | None, str]]


def _sample_blocks(
    model: pyhf.Model,
) -> dict[str, tuple[tuple[str, str, str | None, str], np.ndarray]] | None:
    """Return, per sample, its (role, norm, topicmix, parametrization) and design rows."""
    poi = model.config.poi_name
    n_bins = model.config.nmaindata
    blocks: dict[str, tuple[tuple[str, str, str | None, str], np.ndarray]] = {}
    for channel in model.spec["channels"]:
        bins = model.config.channel_slices[channel["name"]]
        for sample in channel["samples"]:
            by_type: dict[str, list[Mapping[str, Any]]] = {}
            for modifier in sample["modifiers"]:
                by_type.setdefault(modifier["type"], []).append(modifier)
            fractions = by_type.pop(FRACTION, [])
            norms = by_type.pop("normfactor", [])
            mixes = by_type.pop(TOPICMIX, [])
            if by_type or len(fractions) != 1 or len(norms) != 1 or len(mixes) > 1:
                return None
            if fractions[0]["name"] != poi:
                return None

            nominal = np.asarray(sample["data"], dtype=np.float64)
            if mixes:
                templates = np.asarray(mixes[0]["data"]["templates"], dtype=np.float64)
                rows = nominal.sum() * templates / templates.sum(axis=1, keepdims=True)
                parametrization = mixes[0]["data"].get("parametrization", PARAMETRIZATIONS[0])
                key = (
                    fractions[0]["data"]["role"],
                    norms[0]["name"],
                    mixes[0]["name"],
                    parametrization,
                )
            else:
                rows = nominal[np.newaxis, :]
                key = (fractions[0]["data"]["role"], norms[0]["name"], None, PARAMETRIZATIONS[0])

            if sample["name"] not in blocks:
                blocks[sample["name"]] = (key, np.zeros((rows.shape[0], n_bins)))
            stored_key, design = blocks[sample["name"]]
            if stored_key != key or design.shape[0] != rows.shape[0]:
                return None
            design[:, bins] = rows
    return blocks


def _mixture_layout(model: pyhf.Model) -> _MixtureLayout | None:
    """Return the linear layout of a tamm two-process model, or None for any other model."""
    if model.config.poi_name is None or any(model.config.suggested_fixed()):
        return None
    blocks = _sample_blocks(model)
    if blocks is None or len(blocks) != 2:
        return None
    by_role = {key[0]: (key, design) for key, design in blocks.values()}
    if set(by_role) != {"signal", "background"}:
        return None
    (signal_key, signal_design), (background_key, background_design) = (
        by_role["signal"],
        by_role["background"],
    )
    if signal_key[1] != background_key[1]:
        return None
    if signal_key[2] is not None and signal_key[2] == background_key[2]:
        return None
    return _MixtureLayout(
        design=np.vstack([signal_design, background_design]),
        n_signal_columns=signal_design.shape[0],
        norm_name=signal_key[1],
        topics=((signal_key[2], signal_key[3]), (background_key[2], background_key[3])),
    )


def _fit_mixture_weights(design: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Maximise the Poisson likelihood of ``observed`` over ``w >= 0`` with ``nu = w @ design``.

    The negative log-likelihood is convex in w because nu is linear in w. The solver works on
    columns scaled to unit sum, so its variables are expected event counts of similar size.
    """
    column_totals = np.maximum(design.sum(axis=1), _TINY_RATE)
    unit_design = design / column_totals[:, np.newaxis]
    n_columns = design.shape[0]

    def objective(counts: np.ndarray) -> tuple[float, np.ndarray]:
        rates = np.maximum(counts @ unit_design, _TINY_RATE)
        value = float(np.sum(rates - observed * np.log(rates)))
        gradient = unit_design @ (1.0 - observed / rates)
        return value, gradient

    # NB: TNC, not L-BFGS-B. L-BFGS-B calls into scipy's OpenBLAS, whose thread pool competes
    # with numpy's, and on a 2-core machine it took 150-240 ms instead of 2 ms for a 40 x 100
    # design.
    result = scipy.optimize.minimize(
        objective,
        np.full(n_columns, observed.sum() / n_columns),
        jac=True,
        method="TNC",
        bounds=[(0.0, None)] * n_columns,
    )
    log.debug("start-value mixture fit: %s after %d evaluations", result.message, result.nfev)
    weights: np.ndarray = np.asarray(result.x, dtype=np.float64) / column_totals
    return weights


def _free_topic_parameters(weights: np.ndarray, parametrization: str) -> np.ndarray:
    """Invert the map of :func:`tamm.pyhf.modifiers.topic_weights` for weights (K,)."""
    if parametrization == "alr":
        safe = np.maximum(weights, _TINY_RATE)
        log_ratios: np.ndarray = np.log(safe[:-1] / safe[-1])
        return log_ratios
    remaining = 1.0 - np.concatenate([[0.0], np.cumsum(weights)[:-2]])
    fractions = np.full(weights.size - 1, 0.5)
    positive = remaining > 1e-12
    fractions[positive] = weights[:-1][positive] / remaining[positive]
    return fractions


def _mixture_start(
    model: pyhf.Model, layout: _MixtureLayout, observed: np.ndarray
) -> list[float] | None:
    """Return start values from the mixture fit; None if no event is expected."""
    weights = _fit_mixture_weights(layout.design, observed[: model.config.nmaindata])
    signal_weights = weights[: layout.n_signal_columns]
    background_weights = weights[layout.n_signal_columns :]
    signal_total, background_total = signal_weights.sum(), background_weights.sum()
    norm = signal_total + background_total
    if not norm > 0:
        return None

    start = np.asarray(model.config.suggested_init(), dtype=np.float64)
    start[model.config.par_slice(layout.norm_name)] = norm
    start[model.config.poi_index] = signal_total / norm
    for (name, parametrization), sample_weights, total in zip(
        layout.topics,
        (signal_weights, background_weights),
        (signal_total, background_total),
        strict=True,
    ):
        if name is None or name not in model.config.par_map:
            continue
        if total > 0:
            theta = sample_weights / total
        else:
            theta = np.full(sample_weights.size, 1.0 / sample_weights.size)
        start[model.config.par_slice(name)] = _free_topic_parameters(theta, parametrization)

    bounds = np.asarray(model.config.suggested_bounds(), dtype=np.float64)
    margin = _BOUND_MARGIN * (bounds[:, 1] - bounds[:, 0])
    start = np.clip(start, bounds[:, 0] + margin, bounds[:, 1] - margin)
    return [float(value) for value in start]


def initial_parameters(model: pyhf.Model, data: npt.ArrayLike) -> list[float]:
    """Compute start values for a fit of ``model`` to ``data``.

    For a model with tamm's two-process layout (as built by
    :func:`~tamm.pyhf.workspace.tamm_spec` or :func:`~tamm.pyhf.workspace.baseline_spec`:
    one signal and one background sample, each with the POI ``fraction``, one shared
    ``normfactor`` and at most one ``topicmix``, nothing fixed), the expectation is linear in
    the mixture weights ``norm * kappa * theta_signal`` and ``norm * (1 - kappa) *
    theta_background``. Their maximum-likelihood values are found with scipy's TNC and
    converted to the model's parameters, each moved inside its bounds by 1e-4 of the range.
    For any other model this returns ``model.config.suggested_init()``.

    Args:
        model: The model.
        data: Observed counts followed by auxiliary data, shape (n_bins + n_aux,).

    Returns:
        One start value per model parameter, in pyhf's parameter order.

    Raises:
        InvalidModelError: If the model has no POI or ``data`` has the wrong length.
    """
    values = _check_model_and_data(model, data)
    layout = _mixture_layout(model)
    start = None if layout is None else _mixture_start(model, layout, values)
    if start is None:
        return [float(value) for value in model.config.suggested_init()]
    return start


# ---------------------------------------------------------------------------------------------
# Fitting


def _check_model_and_data(model: pyhf.Model, data: npt.ArrayLike) -> np.ndarray:
    if model.config.poi_index is None:
        msg = (
            "The model has no parameter of interest. Build it with tamm.pyhf.build_model, or "
            "pass poi_name='kappa' to pyhf.Model."
        )
        raise InvalidModelError(msg)
    values = np.asarray(data, dtype=np.float64)
    expected = model.config.nmaindata + model.config.nauxdata
    if values.ndim != 1 or values.size != expected:
        msg = (
            f"data has shape {values.shape}, but the model expects ({expected},): "
            f"{model.config.nmaindata} observed counts followed by {model.config.nauxdata} "
            "auxiliary values. Append model.config.auxdata to the observed counts."
        )
        raise InvalidModelError(msg)
    return values


def _check_init_pars(model: pyhf.Model, init_pars: npt.ArrayLike | None) -> list[float] | None:
    if init_pars is None:
        return None
    values = [float(value) for value in np.asarray(init_pars, dtype=np.float64).ravel()]
    if len(values) != model.config.npars:
        msg = (
            f"init_pars has {len(values)} values, but the model has {model.config.npars} "
            f"parameters ({model.config.par_names}). Start from model.config.suggested_init()."
        )
        raise InvalidModelError(msg)
    return values


def _parameters_by_name(model: pyhf.Model, values: np.ndarray) -> dict[str, float | list[float]]:
    parameters: dict[str, float | list[float]] = {}
    for name in model.config.par_order:
        selected = values[model.config.par_slice(name)]
        if model.config.param_set(name).is_scalar:
            parameters[name] = float(selected[0])
        else:
            parameters[name] = [float(value) for value in selected]
    return parameters


def _mixture_sigma(
    model: pyhf.Model, layout: _MixtureLayout, values: np.ndarray, observed: np.ndarray
) -> float | None:
    """Return the delta-method uncertainty of kappa from the mixture weights, or None.

    With rates ``nu = w @ design``, the observed information of the weights is
    ``I = design diag(n / nu^2) design^T``, and ``kappa = W_s / (W_s + W_b)`` with the signal
    and background totals W. Weights at zero are boundary solutions and are held fixed. None
    means that I is not positive definite on the non-zero weights.
    """
    thetas = []
    for name, parametrization in layout.topics:
        if name is None or name not in model.config.par_map:
            thetas.append(np.ones(1))
        else:
            free_parameters = values[model.config.par_slice(name)]
            thetas.append(topic_weights(free_parameters, parametrization=parametrization))
    norm = float(values[model.config.par_slice(layout.norm_name)][0])
    kappa = float(values[model.config.poi_index])
    weights = np.concatenate([norm * kappa * thetas[0], norm * (1.0 - kappa) * thetas[1]])
    total = weights.sum()
    if not total > 0:
        return None

    counts = observed[: model.config.nmaindata]
    rates = weights @ layout.design
    if np.any((rates <= 0) & (counts > 0)):
        return None
    safe_rates = np.where(rates > 0, rates, 1.0)
    information = (layout.design * (counts / safe_rates**2)) @ layout.design.T
    signal_total = weights[: layout.n_signal_columns].sum()
    gradient = np.full(weights.size, -signal_total / total**2)
    gradient[: layout.n_signal_columns] = (total - signal_total) / total**2

    free = weights > _ZERO_WEIGHT * total
    try:
        factor = np.linalg.cholesky(information[np.ix_(free, free)])
    except np.linalg.LinAlgError:
        return None
    projected = np.linalg.solve(factor, gradient[free])
    return float(np.sqrt(projected @ projected))


def _minos_sigma(minuit: iminuit.Minuit, poi: int) -> tuple[float, str]:
    """Return the Minos uncertainty of the POI and a sentence for the fit message.

    Away from the bounds this is the mean of the two Minos errors. At a bound only the error
    that points away from it is meaningful, so that one is used. An error that Minos marks
    invalid gives NaN.
    """
    name = minuit.parameters[poi]
    try:
        minuit.minos(name)
    except RuntimeError as err:
        log.debug("Minos failed for %s: %s", name, err)
        return math.nan, "Minos failed, so sigma is NaN."
    interval = minuit.merrors[name]
    low, high = minuit.limits[poi]
    value = minuit.values[poi]
    if value - low < _AT_BOUND * (high - low):
        valid, sigma = interval.upper_valid, float(interval.upper)
        note = f"Sigma is the upper Minos error ({name} at its lower bound)."
    elif high - value < _AT_BOUND * (high - low):
        valid, sigma = interval.lower_valid, float(-interval.lower)
        note = f"Sigma is the lower Minos error ({name} at its upper bound)."
    else:
        valid = interval.lower_valid and interval.upper_valid
        sigma = 0.5 * float(interval.upper - interval.lower)
        note = (
            f"Sigma is the mean of the Minos errors {interval.lower:.4g} and +{interval.upper:.4g}."
        )
    if not valid:
        return math.nan, "Minos did not find a valid interval, so sigma is NaN."
    return sigma, note


@dataclass(frozen=True)
class _MinuitOutcome:
    """Result of one Minuit run, as fit_kappa reports it."""

    values: np.ndarray  # (n_pars,)
    fval: float  # twice the NLL at the minimum
    migrad_valid: bool
    sigma: float  # uncertainty of the POI; NaN when it could not be computed
    message: str


def _minimize(
    model: pyhf.Model,
    data: np.ndarray,
    start: Sequence[float],
    options: tuple[int, float],
    layout: _MixtureLayout | None,
) -> _MinuitOutcome:
    """Run Migrad on pyhf's objective and compute the uncertainty of the POI.

    ``options`` contains Minuit's strategy and tolerance.
    """
    tensorlib, _ = pyhf.get_backend()
    data_tensor = tensorlib.astensor(data)

    def objective(pars: np.ndarray) -> float:
        return float(pyhf.infer.mle.twice_nll(tensorlib.astensor(pars), data_tensor, model)[0])

    poi = model.config.poi_index
    minuit = iminuit.Minuit(objective, list(start), name=model.config.par_names)
    minuit.errordef = iminuit.Minuit.LEAST_SQUARES  # the objective is twice the NLL
    minuit.limits = model.config.suggested_bounds()
    minuit.fixed = model.config.suggested_fixed()
    minuit.strategy, minuit.tol = options
    minuit.migrad()

    fmin = minuit.fmin
    values = np.asarray(minuit.values, dtype=np.float64)
    fval = float(minuit.fval)
    if not fmin.is_valid:
        message = f"Migrad failed after {minuit.nfcn} calls (EDM {fmin.edm:.3g}"
        message += ", call limit reached)." if fmin.has_reached_call_limit else ")."
        return _MinuitOutcome(values, fval, False, math.nan, message + " Sigma is NaN.")
    message = f"Migrad converged after {minuit.nfcn} calls."

    low, high = minuit.limits[poi]
    interior = (
        _AT_BOUND * (high - low) < values[poi] - low
        and _AT_BOUND * (high - low) < high - values[poi]
    )
    if layout is not None and interior:
        sigma = _mixture_sigma(model, layout, values, data)
        if sigma is not None:
            note = " Sigma is from the observed information of the mixture weights."
            return _MinuitOutcome(values, fval, True, sigma, message + note)
    elif layout is None:
        minuit.hesse()
        if not minuit.fmin.hesse_failed:
            return _MinuitOutcome(values, fval, True, float(minuit.errors[poi]), message)
        message += " Hesse failed."
        # Minos needs a valid minimum, and the failed Hesse marked it invalid.
        minuit.migrad()

    sigma, note = _minos_sigma(minuit, poi)
    return _MinuitOutcome(values, fval, True, sigma, f"{message} {note}")


def fit_kappa(
    model: pyhf.Model,
    data: npt.ArrayLike,
    *,
    method: str = "tamm-binned",
    init_pars: npt.ArrayLike | None = None,
    strategy: int | None = None,
    tolerance: float = 0.1,
) -> KappaFit:
    """Fit kappa by maximum likelihood with Minuit on pyhf's objective.

    Migrad minimises :func:`pyhf.infer.mle.twice_nll` within pyhf's parameter bounds, with
    pyhf's fixed parameters held, as :func:`pyhf.infer.mle.fit` does with its Minuit
    optimizer. The fit runs on pyhf's numpy backend (float64), and the caller's backend is
    restored afterwards.

    ``sigma`` has three sources. For tamm's two-process layout it comes from the observed
    information of the mixture weights (see the module notes), and for other models from
    Minuit's Hesse. Where kappa is at a bound or that first source fails, the Minos interval
    of kappa is used. The message names the source.

    Args:
        model: A model with kappa as POI, for example from
            :func:`~tamm.pyhf.workspace.build_model`.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        method: Label stored in the result, for example ``"baseline"``.
        init_pars: Start values, shape (n_pars,). By default :func:`initial_parameters`.
        strategy: Minuit strategy. By default 0 when the start comes from the mixture fit of
            :func:`initial_parameters`, and 1 otherwise, because strategy 0 from uniform
            topic weights can stop before the minimum.
        tolerance: Minuit's tolerance; Migrad stops when the estimated distance to the
            minimum is below ``0.002 * tolerance``.

    Returns:
        The fit. ``nll`` is pyhf's ``-model.logpdf`` at the minimum, which includes the
        constant ``log(n!)`` terms. ``parameters`` maps each pyhf parameter set to its value
        (a list for the topic parameters).

    Raises:
        InvalidModelError: If the model has no POI, or ``data`` or ``init_pars`` has the
            wrong length.

    Warns:
        ConvergenceWarning: If Migrad reports an invalid minimum; the result then has
            ``converged=False`` and ``sigma=nan``.

    Notes:
        pyhf 0.7.6's own Minuit optimizer (``pyhf.infer.mle.fit``) always runs Hesse after
        Migrad and raises ``AttributeError`` when Hesse fails, which happens in topic fits,
        for example when kappa is fixed at 0 so that the signal weights have no effect.
        Calling Minuit directly on the same objective avoids the failure and the cost of a
        Hesse step that is unreliable there (see the module notes).

    Examples:
        >>> from tamm.pyhf.workspace import baseline_spec, build_workspace, model_and_data
        >>> spec = baseline_spec([1, 2, 3, 4], [4, 3, 2, 1], [22, 24, 26, 28])
        >>> model, data = model_and_data(build_workspace(spec))
        >>> result = fit_kappa(model, data, method="baseline")
        >>> result.converged, round(result.kappa, 3), round(result.sigma, 2)
        (True, 0.6, 0.11)
    """
    values = _check_model_and_data(model, data)
    start = _check_init_pars(model, init_pars)
    layout = _mixture_layout(model)
    from_mixture = False
    if start is None and layout is not None:
        start = _mixture_start(model, layout, values)
        from_mixture = start is not None
    if start is None:
        start = [float(value) for value in model.config.suggested_init()]
    if strategy is None:
        strategy = 0 if from_mixture else 1

    with use_numpy_backend():
        outcome = _minimize(model, values, start, (strategy, tolerance), layout)

    kappa = float(outcome.values[model.config.poi_index])
    log.debug("fit_kappa(%s): kappa = %g; %s", method, kappa, outcome.message)
    if not outcome.migrad_valid:
        warnings.warn(
            f"The {method} fit did not converge, so kappa = {kappa:.6g} is not a minimum: "
            f"{outcome.message} Try other init_pars or strategy=2, or check the model.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return KappaFit(
        method=method,
        kappa=kappa,
        sigma=outcome.sigma,
        converged=outcome.migrad_valid,
        nll=outcome.fval / 2.0,
        parameters=_parameters_by_name(model, outcome.values),
        message=outcome.message,
    )


# ---------------------------------------------------------------------------------------------
# Hypothesis tests


@dataclass(frozen=True)
class KappaHypotest:
    """CLs of one tested value of kappa.

    Attributes:
        kappa_test: The tested signal fraction.
        cls_observed: CLs of the observed data.
        cls_expected: Expected CLs under the background-only hypothesis at -2, -1, 0, +1 and
            +2 standard deviations.
        test_stat: Test statistic, ``"qtilde"`` or ``"q"``.
        calctype: ``"asymptotics"`` or ``"toybased"``.
    """

    kappa_test: float
    cls_observed: float
    cls_expected: tuple[float, float, float, float, float]
    test_stat: str
    calctype: str

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary."""
        return asdict(self)


def _is_positive_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value > 0)


@contextmanager
def _seeded_global_numpy(seed: int | None) -> Iterator[None]:
    """Seed numpy's global generator inside the block and restore its state afterwards.

    pyhf 0.7.6 draws toys through scipy.stats without a generator argument, so the global
    generator is the only way to make them reproducible.
    """
    if seed is None:
        yield
        return
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def hypotest_kappa(
    model: pyhf.Model,
    data: npt.ArrayLike,
    kappa_test: float,
    *,
    test_stat: str = "qtilde",
    calctype: str = "asymptotics",
    ntoys: int = 1000,
    seed: int | None = None,
    init_pars: npt.ArrayLike | None = None,
) -> KappaHypotest:
    """Compute CLs for ``kappa = kappa_test`` with :func:`pyhf.infer.hypotest`.

    The test runs on pyhf's numpy backend with pyhf's scipy optimizer (SLSQP), and the
    caller's backend is restored afterwards. The asymptotic formulae of Cowan et al.
    (arXiv:1007.1727) are the default. ``calctype="toybased"`` uses pseudo-experiments, which
    pyhf 0.7.6 cannot run on numpy 2.4 or later without the backend that
    :func:`use_numpy_backend` sets.

    Args:
        model: A model with kappa as POI whose lower bound is 0.
        data: Observed counts followed by the auxiliary data, shape (n_bins + n_aux,).
        kappa_test: The signal fraction to test, inside the POI bounds.
        test_stat: ``"qtilde"`` (for a POI bounded at zero, the usual choice) or ``"q"``.
        calctype: ``"asymptotics"`` or ``"toybased"``.
        ntoys: Number of pseudo-experiments per hypothesis for ``"toybased"``.
        seed: Seed for the toys; numpy's global generator is seeded inside the call and
            restored afterwards, so concurrent threads that draw from it interfere.
        init_pars: Start values of the fits, shape (n_pars,). By default
            :func:`initial_parameters`.

    Returns:
        Observed and expected CLs.

    Raises:
        InvalidModelError: If the model has no POI, ``data`` has the wrong length, or an
            option is invalid.

    Notes:
        The optimizer is SLSQP rather than Minuit because pyhf 0.7.6's Minuit optimizer
        raises ``AttributeError`` when Hesse fails, and Hesse fails in the kappa = 0 fits of
        every topic model, where the signal weights have no effect. SLSQP needs no Hesse step.
        With the default start values, a test took about 0.8 s for 2 x 20 topics over 100
        bins (``python benchmarks/bench_pyhf.py`` on a 2-core x86_64 machine).
    """
    values = _check_model_and_data(model, data)
    low, high = model.config.suggested_bounds()[model.config.poi_index]
    if not _is_number_between(kappa_test, low, high):
        msg = (
            f"kappa_test must be a number inside the POI bounds [{low}, {high}], but received "
            f"{kappa_test!r}."
        )
        raise InvalidModelError(msg)
    if test_stat not in _TEST_STATISTICS:
        msg = f"test_stat must be one of {list(_TEST_STATISTICS)}, but received {test_stat!r}."
        raise InvalidModelError(msg)
    if calctype not in _CALCULATORS:
        msg = f"calctype must be one of {list(_CALCULATORS)}, but received {calctype!r}."
        raise InvalidModelError(msg)
    if calctype == "toybased" and not _is_positive_integer(ntoys):
        msg = f"ntoys must be a positive integer, but received {ntoys!r}."
        raise InvalidModelError(msg)
    start = _check_init_pars(model, init_pars)
    if start is None:
        start = initial_parameters(model, values)

    calculator_options: dict[str, Any] = {"test_stat": test_stat}
    if calctype == "toybased":
        calculator_options |= {"ntoys": ntoys, "track_progress": False}
    with (
        use_numpy_backend("scipy"),
        _seeded_global_numpy(seed),
    ):
        cls_observed, cls_expected = pyhf.infer.hypotest(
            float(kappa_test),
            values.tolist(),
            model,
            init_pars=start,
            calctype=calctype,
            return_expected_set=True,
            **calculator_options,
        )
    return KappaHypotest(
        kappa_test=float(kappa_test),
        cls_observed=float(cls_observed),
        cls_expected=tuple(float(value) for value in cls_expected),  # type: ignore[arg-type]
        test_stat=test_stat,
        calctype=calctype,
    )
