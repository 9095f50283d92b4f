"""The unbinned TAMM model as a zfit PDF, its loss terms, and exact Gaussian log ratios in TensorFlow.

Pipeline position: the ratio engine (or, for the Gaussian toy, the exact densities) gives the log
ratio of every chosen simulation to the pooled reference. :mod:`tamm.mixture` fits kappa on
cached matrices of these features with its own Newton optimiser. This module hands the same
model to zfit, so that zfit's losses, Minuit, profile scans, toys and hepstats limits work on it.

Which object do I need?

* :class:`TammPDF`: the zfit PDF, with kappa and the nuisance parameters as ``zfit.Parameter``.
* :func:`tamm_nll`: a zfit loss on the PDF, with the ridge and (optionally) the
  equal-normalisation penalty as constraints. With ``TammPDF(..., n_data=N)`` it is the
  standalone TAMM loss of :mod:`tamm.mixture` up to a constant.
* :func:`tamm_constraints`: the ridge and penalty terms alone, to add to a loss of your own.
* :class:`BinnedTammPDF`: what :meth:`TammPDF.to_binned` returns (hepstats' asymptotic
  calculator bins the PDF through it).
* :func:`exact_gaussian_log_ratio_fn`: the exact log ratios of the Gaussian toy's simulations
  as a TensorFlow function, the ``log_ratio_fn`` for tests and oracle fits.

Mathematical details (arXiv 2604.02219, the template-adapted "exponential" parametrisation).
The model ratio of the data density to the reference density is

.. math::

    R(x; \\theta) = \\kappa c_s R_s(x) + (1 - \\kappa) c_b R_b(x), \\qquad
    \\log R_s(x) = \\sum_{k=1}^{K_s} a_k \\log \\tilde r_{s,k}(x), \\qquad
    a_{K_s} = 1 - \\sum_{k<K_s} a_k,

and likewise for :math:`R_b` with the weights :math:`b`. The PDF is the density relative to
the reference sample :math:`y_1 .. y_{N_\\mathrm{ref}}`, normalised by Monte Carlo over it:

.. math::

    p(x \\mid \\theta) = \\frac{R(x; \\theta)}{\\langle R \\rangle_\\mathrm{ref}}, \\qquad
    \\langle R \\rangle_\\mathrm{ref} = \\frac{1}{N_\\mathrm{ref}} \\sum_j R(y_j; \\theta).

Its negative log-likelihood differs from the one of the absolute density
:math:`p_\\mathrm{ref}(x) p(x \\mid \\theta)` by :math:`-\\sum_i \\log p_\\mathrm{ref}(x_i)`, which
does not depend on the parameters, so fits, scans and intervals are the same.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
import zfit
import zfit.z.numpy as znp
from numpy.typing import ArrayLike, NDArray
from zfit import z

from tamm.datasets.gaussian_ratios import ExactGaussianRatios
from tamm.exceptions import InvalidModelError, InvalidSimulationError
from tamm.samples import Region

__all__ = [
    "BinnedTammPDF",
    "KappaScan",
    "LogRatioFunction",
    "TammPDF",
    "exact_gaussian_log_ratio_fn",
    "profile_scan",
    "region_space",
    "tamm_constraints",
    "tamm_nll",
]

log = logging.getLogger(__name__)

# Number appended to the name of each TammPDF, so that the parameters it creates have unique
# names (zfit rejects two parameters of the same name in one loss).
_PDF_NUMBERS = itertools.count(1)


def __dir__() -> list[str]:
    return __all__


class LogRatioFunction(Protocol):
    """A TensorFlow-traceable map from events to log ratios.

    Called with a float64 tensor of events ``(n, n_obs)`` (columns in the order of the PDF's
    observables), it returns a float64 tensor ``(n, K_s + K_b)`` of the calibrated,
    acceptance-corrected log ratios :math:`\\log \\tilde r_k(x)` of each simulation to the pooled
    reference: the ``K_s`` signal simulations first, then the ``K_b`` background simulations.
    It must use TensorFlow operations only, because zfit traces the loss into a graph.
    """

    def __call__(self, x: tf.Tensor, /) -> tf.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Input checks


def region_space(region: Region) -> zfit.Space:
    """Return the unbinned zfit space of a tamm region: its observables and box limits."""
    lower = [low for low, _ in region.limits]
    upper = [high for _, high in region.limits]
    return zfit.Space(list(region.observables), lower=lower, upper=upper)


def _as_space(obs: zfit.Space | Region) -> zfit.Space:
    if isinstance(obs, Region):
        return region_space(obs)
    if not isinstance(obs, zfit.Space):
        msg = f"obs must be a zfit.Space or a tamm Region; received {type(obs).__name__}."
        raise InvalidModelError(msg)
    if obs.is_binned or not obs.has_limits:
        msg = (
            f"obs must be an unbinned zfit.Space with limits (the region); received {obs}. "
            "Build it with zfit.Space(names, lower=..., upper=...) or pass a tamm Region."
        )
        raise InvalidModelError(msg)
    return obs


def _box_limits(space: zfit.Space) -> tuple[Any, Any]:
    """Return the lower and upper limits of a rectangular space, each of shape ``(n_obs,)``.

    The limits may be tensors (zfit integrates bins with traced limits).
    """
    return space.v1.lower, space.v1.upper


def _space_bounds(space: zfit.Space) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    lower, upper = _box_limits(space)
    return (
        np.asarray(lower, dtype=np.float64).reshape(-1),
        np.asarray(upper, dtype=np.float64).reshape(-1),
    )


def _describe_bad_rows(values: NDArray[np.float64], bad: NDArray[np.bool_]) -> str:
    rows = np.flatnonzero(bad)
    shown = ", ".join(f"row {int(i)}: {values[i].tolist()}" for i in rows[:3])
    more = f" and {rows.size - 3} more" if rows.size > 3 else ""
    return shown + more


def _check_events(events: ArrayLike, space: zfit.Space, what: str) -> NDArray[np.float64]:
    """Return ``events`` as a finite float64 array ``(n, n_obs)`` inside ``space``, or raise."""
    try:
        array = np.asarray(events, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{what} must be a numeric array of shape (n_events, {space.n_obs}); conversion failed: {err}"
        raise InvalidSimulationError(msg) from err
    if array.ndim == 1 and space.n_obs == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != space.n_obs:
        msg = (
            f"{what} must have shape (n_events, {space.n_obs}), one column per observable "
            f"{list(space.obs)}; received shape {array.shape}."
        )
        raise InvalidSimulationError(msg)
    if array.shape[0] == 0:
        msg = f"{what} contains no events (shape {array.shape}); it needs at least one."
        raise InvalidSimulationError(msg)
    finite = np.all(np.isfinite(array), axis=1)
    if not np.all(finite):
        msg = f"{what} contains NaN or infinite values at {_describe_bad_rows(array, ~finite)}."
        raise InvalidSimulationError(msg)
    lower, upper = _space_bounds(space)
    outside = ~np.all((array >= lower) & (array <= upper), axis=1)
    if np.any(outside):
        msg = (
            f"{what} has {int(outside.sum())} events outside the region {list(space.obs)} with "
            f"limits {lower.tolist()} to {upper.tolist()}, for example "
            f"{_describe_bad_rows(array, outside)}. Cut the events to the region first."
        )
        raise InvalidSimulationError(msg)
    return array


def _evaluate_features(
    log_ratio_fn: LogRatioFunction, events: NDArray[np.float64], what: str
) -> NDArray[np.float64]:
    """Run ``log_ratio_fn`` eagerly on ``events`` and return the finite float64 matrix ``(n, C)``."""
    output = log_ratio_fn(tf.constant(events, dtype=tf.float64))
    features = np.asarray(output, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != events.shape[0]:
        msg = (
            f"log_ratio_fn must return shape (n_events, K_s + K_b); on the {what} of shape "
            f"{events.shape} it returned shape {features.shape}."
        )
        raise InvalidModelError(msg)
    if not np.all(np.isfinite(features)):
        bad = np.argwhere(~np.isfinite(features))
        shown = ", ".join(f"(event {int(i)}, class {int(j)})={features[i, j]}" for i, j in bad[:3])
        msg = (
            f"log_ratio_fn returned NaN or infinite log ratios on the {what} at {shown}"
            f"{' and more' if len(bad) > 3 else ''}; every log ratio must be finite."
        )
        raise InvalidModelError(msg)
    return features


def _class_counts(
    n_columns: int,
    n_signal_classes: int | None,
    n_background_classes: int | None,
) -> tuple[int, int]:
    """Split the feature columns into signal and background simulations, or raise."""
    if n_signal_classes is None and n_background_classes is None:
        if n_columns % 2:
            msg = (
                f"log_ratio_fn returned {n_columns} columns, an odd number; pass "
                "n_signal_classes to say how many of them are signal simulations."
            )
            raise InvalidModelError(msg)
        n_signal_classes = n_columns // 2
    if n_signal_classes is None:
        n_signal_classes = n_columns - int(n_background_classes or 0)
    if n_background_classes is None:
        n_background_classes = n_columns - n_signal_classes
    if n_signal_classes + n_background_classes != n_columns:
        msg = (
            f"log_ratio_fn returned {n_columns} columns, but {n_signal_classes} signal and "
            f"{n_background_classes} background simulations need "
            f"{n_signal_classes + n_background_classes}; the feature width must be K_s + K_b."
        )
        raise InvalidModelError(msg)
    if n_signal_classes < 2 or n_background_classes < 2:
        msg = (
            f"TammPDF needs at least 2 simulations per process; received K_s={n_signal_classes} "
            f"signal and K_b={n_background_classes} background columns. Use more simulations."
        )
        raise InvalidModelError(msg)
    return int(n_signal_classes), int(n_background_classes)


def _free_weight_parameters(
    given: Sequence[zfit.Parameter] | None,
    n_classes: int,
    prefix: str,
    letter: str,
    fixed: bool,
) -> list[zfit.Parameter]:
    """Return the K - 1 free mixture weights of one process, created when not given."""
    if given is not None:
        weights = list(given)
        if len(weights) != n_classes - 1:
            msg = (
                f"{len(weights)} {letter}-weights were given, but {n_classes} simulations of this "
                f"process need {n_classes - 1} free weights (the last one is 1 minus their sum)."
            )
            raise InvalidModelError(msg)
        return weights
    return [
        zfit.Parameter(f"{prefix}_{letter}_{k}", 1.0 / n_classes, floating=not fixed)
        for k in range(1, n_classes)
    ]


def _all_weights(free: Sequence[Any]) -> tf.Tensor:
    """Return the full weight vector ``(K,)``: the K - 1 free weights and 1 minus their sum."""
    stacked = znp.stack([znp.asarray(w, dtype=znp.float64) for w in free])
    return znp.concatenate([stacked, znp.reshape(1.0 - znp.sum(stacked), (1,))], axis=0)


# ---------------------------------------------------------------------------------------------
# The PDF


class TammPDF(zfit.pdf.BasePDF):  # type: ignore[misc]
    """The unbinned template-adapted mixture as a zfit PDF, with kappa as a ``zfit.Parameter``.

    The density is taken relative to the pooled reference sample (see the module docstring), and
    that sample also normalises and samples it. :meth:`integrate` is a Monte Carlo sum over the
    reference events inside the limits, and :meth:`sample` draws reference events with
    probabilities proportional to :math:`R(y_j; \\theta)`.

    There are two parametrisations of the template normalisations ``c_s`` and ``c_b``:

    * Default (``n_data=None``): ``c_s = 1 / <R_s>_ref`` and ``c_b = 1 / <R_b>_ref`` are
      ``zfit.ComposedParameter`` objects, so each template integrates to one over the
      reference sample and kappa is the signal fraction. The free parameters are kappa and the
      mixture weights; a yield can be added with ``extended``.
    * ``n_data=N``: the parametrisation of :mod:`tamm.mixture`. ``c_s`` and ``c_b`` are free
      parameters, and the PDF is extended with the yield
      :math:`\\nu(\\theta) = N \\langle R \\rangle_\\mathrm{ref}`. Then ``zfit.loss.ExtendedUnbinnedNLL``
      equals :math:`-\\sum_i \\log R(x_i) + N \\langle R \\rangle_\\mathrm{ref} - N \\log N`,
      the data and reference terms of the standalone TAMM loss up to a constant. With the
      constraints of :func:`tamm_constraints` (or through :func:`tamm_nll`), Minuit minimises
      the same function as :func:`tamm.mixture.fit_unbinned`.

    Args:
        obs: The region: an unbinned ``zfit.Space`` with limits, or a :class:`tamm.samples.Region`.
        log_ratio_fn: TensorFlow function from events ``(n, n_obs)`` to log ratios
            ``(n, K_s + K_b)``, signal simulations first (see :class:`LogRatioFunction`). It runs
            once on the reference sample here, and on the data at every loss evaluation.
        reference: The reference sample, the pooled simulations cut to the region, shape
            ``(N_ref, n_obs)``. Its log ratios are computed once and kept as a constant.
        n_signal_classes: Number of signal columns :math:`K_s`; half of the columns by default.
        n_background_classes: Number of background columns :math:`K_b`; the rest by default.
        kappa: The signal fraction (the POI). Created as ``"<name><n>_kappa"`` with value 0.1
            and no limits when not given.
        signal_weights: The :math:`K_s - 1` free weights :math:`a_k`; created with value
            :math:`1/K_s` when not given.
        background_weights: The :math:`K_b - 1` free weights :math:`b_k`; likewise.
        fix_weights: Create the mixture weights as fixed parameters (``floating=False``).
        n_data: Number of observed events N for the ``n_data`` parametrisation above; None
            for the default one.
        extended: A yield (``zfit.Parameter`` or number) for the default parametrisation, as in
            every zfit PDF. Not allowed together with ``n_data``, which sets the yield itself.
        norm: Normalisation range; the whole region by default.
        name: Name of the PDF, also the start of the names of the parameters it creates.
        label: Human-readable label.

    Raises:
        InvalidSimulationError: If ``reference`` is empty, has the wrong number of columns,
            contains NaN or infinite values, or has events outside the region.
        InvalidModelError: If ``log_ratio_fn`` returns the wrong shape or non-finite values on
            the reference, a process has fewer than 2 simulations, the number of given weights
            does not match, or both ``n_data`` and ``extended`` are given.

    Notes:
        kappa, ``c_s`` and ``c_b`` have no limits, as in :mod:`tamm.mixture`. Where a parameter
        point makes ``R(x_i) <= 0`` on a data event, the PDF is clipped to zero there and zfit's
        loss takes the log of its floor (about -707 per event), so Minuit steps back.

        Fitting: with K = 10 simulations per process, ``zfit.minimize.Minuit(gradient="zfit")``
        spends most of its calls on numerical second derivatives, and its numerical Hesse gave
        a kappa uncertainty 8 % above the exact inverse Hessian (55 000 data and 100 000
        reference events, 2-core machine). ``Minuit(gradient="zfit", mode=0, tol=1e-7)`` took
        about a quarter of the calls to the same minimum, and
        ``result.hesse(method="hesse_np")``, which uses zfit's autodiff Hessian, agreed with
        the exact value to 0.3 %.

        The log ratios of the data are recomputed by ``log_ratio_fn`` at every loss evaluation
        (zfit passes the events, not cached features), which dominates the cost when
        ``log_ratio_fn`` is a network.

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> from tamm.datasets.gaussian_ratios import ExactGaussianRatios
        >>> ratios = ExactGaussianRatios.from_toy(GaussianToy(), [0, 1], [0, 1])
        >>> reference = ratios.sample_reference(2000, seed=1)  # (2000, 2)
        >>> pdf = TammPDF(GaussianToy().region(None), exact_gaussian_log_ratio_fn(ratios), reference)
        >>> sorted(pdf.params)
        ['a_1', 'b_1', 'c_b', 'c_s', 'kappa']
        >>> round(float(pdf.integrate(pdf.space)[0]), 12)
        1.0
    """

    def __init__(
        self,
        obs: zfit.Space | Region,
        log_ratio_fn: LogRatioFunction,
        reference: ArrayLike,
        *,
        n_signal_classes: int | None = None,
        n_background_classes: int | None = None,
        kappa: zfit.Parameter | None = None,
        signal_weights: Sequence[zfit.Parameter] | None = None,
        background_weights: Sequence[zfit.Parameter] | None = None,
        fix_weights: bool = False,
        n_data: float | None = None,
        extended: Any = None,
        norm: Any = None,
        name: str = "TammPDF",
        label: str | None = None,
    ) -> None:
        space = _as_space(obs)
        events = _check_events(reference, space, "reference")
        features = _evaluate_features(log_ratio_fn, events, "reference sample")
        k_signal, k_background = _class_counts(
            features.shape[1], n_signal_classes, n_background_classes
        )
        if n_data is not None and not (math.isfinite(n_data) and n_data > 0):
            msg = f"n_data must be a positive number of observed events; received {n_data}."
            raise InvalidModelError(msg)
        if n_data is not None and extended is not None and extended is not False:
            msg = (
                "Pass either n_data (the yield is then N <R>_ref) or extended (a yield of your "
                f"own), not both; received n_data={n_data} and extended={extended}."
            )
            raise InvalidModelError(msg)

        prefix = f"{name}{next(_PDF_NUMBERS)}"
        if kappa is None:
            kappa = zfit.Parameter(f"{prefix}_kappa", 0.1)
        a_free = _free_weight_parameters(signal_weights, k_signal, prefix, "a", fix_weights)
        b_free = _free_weight_parameters(background_weights, k_background, prefix, "b", fix_weights)
        a_params = {f"a_{k}": p for k, p in enumerate(a_free, start=1)}
        b_params = {f"b_{k}": p for k, p in enumerate(b_free, start=1)}

        reference_signal = tf.constant(features[:, :k_signal], dtype=tf.float64)
        reference_background = tf.constant(features[:, k_signal:], dtype=tf.float64)
        if n_data is None:
            c_s = _inverse_mean_template(f"{prefix}_c_s", reference_signal, a_params)
            c_b = _inverse_mean_template(f"{prefix}_c_b", reference_background, b_params)
        else:
            c_s = zfit.Parameter(f"{prefix}_c_s", 1.0)
            c_b = zfit.Parameter(f"{prefix}_c_b", 1.0)
        params = {"kappa": kappa, "c_s": c_s, "c_b": c_b, **a_params, **b_params}

        if n_data is not None:
            extended = _reference_yield(
                f"{prefix}_yield", float(n_data), reference_signal, reference_background, params
            )
        super().__init__(
            obs=space, params=params, extended=extended, norm=norm, name=name, label=label
        )

        self._log_ratio_fn = log_ratio_fn
        self._n_signal_classes = k_signal
        self._n_background_classes = k_background
        self._n_data = None if n_data is None else float(n_data)
        self._reference_events_numpy = events
        self._reference_features = features
        self._reference_events = tf.constant(events, dtype=tf.float64)
        self._reference_signal = reference_signal
        self._reference_background = reference_background
        self._space_upper = tf.constant(_space_bounds(space)[1], dtype=tf.float64)
        log.debug(
            "TammPDF %s: %d reference events, K_s=%d, K_b=%d, n_data=%s",
            prefix,
            len(events),
            k_signal,
            k_background,
            n_data,
        )

    # --- properties ---------------------------------------------------------------------------

    @property
    def kappa(self) -> zfit.Parameter:
        """The signal fraction parameter (the POI)."""
        return self.params["kappa"]

    @property
    def n_signal_classes(self) -> int:
        """Number of signal simulations :math:`K_s` (the first feature columns)."""
        return self._n_signal_classes

    @property
    def n_background_classes(self) -> int:
        """Number of background simulations :math:`K_b`."""
        return self._n_background_classes

    @property
    def n_data(self) -> float | None:
        """N of the ``n_data`` parametrisation, or None for the default one."""
        return self._n_data

    @property
    def n_reference(self) -> int:
        """Number of reference events :math:`N_\\mathrm{ref}`."""
        return int(self._reference_events_numpy.shape[0])

    @property
    def log_ratio_fn(self) -> LogRatioFunction:
        """The function from events to log-ratio features."""
        return self._log_ratio_fn

    @property
    def reference_events(self) -> NDArray[np.float64]:
        """A copy of the reference sample, shape ``(N_ref, n_obs)``."""
        return self._reference_events_numpy.copy()

    @property
    def reference_features(self) -> NDArray[np.float64]:
        """A copy of the log ratios on the reference sample, shape ``(N_ref, K_s + K_b)``."""
        return self._reference_features.copy()

    def features(self, events: ArrayLike, *, what: str = "events") -> NDArray[np.float64]:
        """Compute the log-ratio features of events inside the region, shape ``(n, K_s + K_b)``.

        Raises:
            InvalidSimulationError: If the events are empty, have the wrong columns, are not
                finite, or lie outside the region.
            InvalidModelError: If the features have the wrong width or are not finite.
        """
        array = _check_events(events, self.space, what)
        features = _evaluate_features(self._log_ratio_fn, array, what)
        if features.shape[1] != self._n_signal_classes + self._n_background_classes:
            msg = (
                f"log_ratio_fn returned {features.shape[1]} columns on the {what}, but "
                f"{self._n_signal_classes + self._n_background_classes} on the reference sample."
            )
            raise InvalidModelError(msg)
        return features

    def mixture_weights(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the current weights ``a`` ``(K_s,)`` and ``b`` ``(K_b,)``, last ones included."""
        a = [float(self.params[f"a_{k}"].value()) for k in range(1, self._n_signal_classes)]
        b = [float(self.params[f"b_{k}"].value()) for k in range(1, self._n_background_classes)]
        return np.append(a, 1.0 - sum(a)), np.append(b, 1.0 - sum(b))

    # --- TensorFlow pieces --------------------------------------------------------------------

    def _ratio(
        self, signal_features: tf.Tensor, background_features: tf.Tensor, params: Mapping[str, Any]
    ) -> tf.Tensor:
        """Return ``R = kappa c_s R_s + (1 - kappa) c_b R_b`` per event, shape ``(n,)``."""
        a = _all_weights([params[f"a_{k}"] for k in range(1, self._n_signal_classes)])
        b = _all_weights([params[f"b_{k}"] for k in range(1, self._n_background_classes)])
        kappa = params["kappa"]
        signal = znp.exp(tf.linalg.matvec(signal_features, a))
        background = znp.exp(tf.linalg.matvec(background_features, b))
        return kappa * params["c_s"] * signal + (1.0 - kappa) * params["c_b"] * background

    def _reference_ratio(self, params: Mapping[str, Any]) -> tf.Tensor:
        return self._ratio(self._reference_signal, self._reference_background, params)

    def _inside(self, limits: zfit.Space) -> tf.Tensor:
        """Return a float mask ``(N_ref,)`` of the reference events inside ``limits``.

        Bins are half-open ``[lower, upper)`` so that adjacent bins never share an event,
        except that an upper limit on the region's own upper edge is closed, as the region is.
        The limits may be tensors (zfit integrates bins with traced limits).
        """
        lower, upper = _box_limits(limits)
        lower = znp.asarray(lower, dtype=znp.float64)
        upper = znp.asarray(upper, dtype=znp.float64)
        events = self._reference_events
        closed = upper >= self._space_upper
        below = tf.where(closed, events <= upper, events < upper)
        inside = tf.reduce_all((events >= lower) & below, axis=1)
        return tf.cast(inside, tf.float64)

    def _reference_sum(self, limits: zfit.Space, params: Mapping[str, Any]) -> tf.Tensor:
        return znp.sum(self._inside(limits) * self._reference_ratio(params))

    # --- zfit hooks ---------------------------------------------------------------------------

    @zfit.supports()  # type: ignore[untyped-decorator]
    def _unnormalized_pdf(self, x: Any, params: Mapping[str, Any]) -> tf.Tensor:
        features = self._log_ratio_fn(x.value())
        k = self._n_signal_classes
        ratio = self._ratio(features[:, :k], features[:, k:], params)
        return znp.maximum(ratio, 0.0)

    @zfit.supports(norm=True)  # type: ignore[untyped-decorator]
    def _normalization(
        self, norm: zfit.Space, options: Any, params: Mapping[str, Any]
    ) -> tf.Tensor:
        del options
        return self._reference_sum(norm, params) / self.n_reference

    @zfit.supports(norm=True)  # type: ignore[untyped-decorator]
    def _integrate(
        self, limits: zfit.Space, norm: Any, options: Any, params: Mapping[str, Any]
    ) -> tf.Tensor:
        del options
        inside = self._reference_sum(limits, params)
        if norm is None or norm is False or norm.limits_are_false:
            value = inside / self.n_reference
        else:
            value = inside / self._reference_sum(norm, params)
        return znp.reshape(value, (1,))

    @zfit.supports()  # type: ignore[untyped-decorator]
    def _sample(self, n: Any, limits: zfit.Space, params: Mapping[str, Any]) -> tf.Tensor:
        probability = self._inside(limits) * znp.maximum(self._reference_ratio(params), 0.0)
        cumulative = znp.cumsum(probability)
        uniform = z.random.uniform(shape=(n,), dtype=tf.float64) * cumulative[-1]
        index = tf.searchsorted(cumulative, uniform, side="right")
        index = znp.minimum(index, self.n_reference - 1)
        return tf.gather(self._reference_events, index, axis=0)

    def to_binned(
        self,
        space: Any,
        extended: Any = None,
        norm: Any = None,
        name: str | None = None,
        label: str | None = None,
    ) -> BinnedTammPDF:
        """Return the PDF binned in ``space``, as a :class:`BinnedTammPDF`.

        The bin contents equal zfit's per-bin integration of this PDF, but come from one
        weighted histogram of the reference sample instead of one pass per bin.

        Args:
            space: A binned ``zfit.Space`` over the PDF's observables, or a binning for
                ``self.space.with_binning``.
            extended: Yield of the binned PDF; this PDF's yield by default.
            norm: Normalisation range; the binned space by default.
            name: Name of the binned PDF.
            label: Label of the binned PDF.
        """
        return BinnedTammPDF(self, space, extended=extended, norm=norm, name=name, label=label)


def _inverse_mean_template(
    name: str, features: tf.Tensor, weights: Mapping[str, zfit.Parameter]
) -> zfit.ComposedParameter:
    """Return ``1 / <exp(features @ w)>_ref`` as a composed parameter of the free weights."""
    ordered = list(weights)

    def inverse_mean(params: Mapping[str, Any]) -> tf.Tensor:
        full = _all_weights([params[key] for key in ordered])
        return 1.0 / znp.mean(znp.exp(tf.linalg.matvec(features, full)))

    return zfit.ComposedParameter(name, inverse_mean, params=dict(weights))


def _reference_yield(
    name: str,
    n_data: float,
    signal_features: tf.Tensor,
    background_features: tf.Tensor,
    params: Mapping[str, zfit.Parameter],
) -> zfit.ComposedParameter:
    """Return the yield ``N <R>_ref`` as a composed parameter of all model parameters."""
    n_signal = signal_features.shape[1]
    n_background = background_features.shape[1]

    def expected_events(values: Mapping[str, Any]) -> tf.Tensor:
        a = _all_weights([values[f"a_{k}"] for k in range(1, n_signal)])
        b = _all_weights([values[f"b_{k}"] for k in range(1, n_background)])
        kappa = values["kappa"]
        signal = znp.mean(znp.exp(tf.linalg.matvec(signal_features, a)))
        background = znp.mean(znp.exp(tf.linalg.matvec(background_features, b)))
        mean_ratio = kappa * values["c_s"] * signal + (1.0 - kappa) * values["c_b"] * background
        return n_data * mean_ratio

    return zfit.ComposedParameter(name, expected_events, params=dict(params))


# ---------------------------------------------------------------------------------------------
# The binned view


class BinnedTammPDF(zfit.pdf.BaseBinnedPDF):  # type: ignore[misc]
    """A :class:`TammPDF` binned by histogramming its reference sample with weights R(y_j).

    The relative count of a bin is the sum of :math:`R(y_j; \\theta)` over the reference events
    in it, divided by the sum over the binned space: the same Monte Carlo integral that
    :meth:`TammPDF.integrate` gives per bin. Bins are half-open, and the region's upper edge
    belongs to the last bin. An extended :class:`TammPDF` gives an extended binned PDF with the
    same yield.

    Args:
        pdf: The unbinned TAMM PDF.
        space: A binned ``zfit.Space`` over the PDF's observables, or a binning accepted by
            ``pdf.space.with_binning``.
        extended: Yield; the PDF's own yield by default (None when it is not extended).
        norm: Normalisation range; the binned space by default.
        name: Name; ``"Binned_<pdf name>"`` by default.
        label: Label.

    Raises:
        InvalidModelError: If the binned space has observables that the PDF does not have.
    """

    def __init__(
        self,
        pdf: TammPDF,
        space: Any,
        *,
        extended: Any = None,
        norm: Any = None,
        name: str | None = None,
        label: str | None = None,
    ) -> None:
        if not isinstance(space, zfit.Space) or not space.is_binned:
            space = pdf.space.with_binning(space)
        unknown = [name for name in space.obs if name not in pdf.obs]
        if unknown or len(space.obs) != len(pdf.obs):
            msg = (
                f"The binned space has observables {list(space.obs)}, but the PDF has "
                f"{list(pdf.obs)}; bin every observable of the PDF."
            )
            raise InvalidModelError(msg)
        if extended is None and pdf.is_extended:
            extended = pdf.get_yield()
        name = f"Binned_{pdf.name}" if name is None else name
        super().__init__(
            obs=space,
            extended=extended,
            norm=norm,
            params=dict(pdf.params),
            name=name,
            label=name if label is None else label,
        )
        self._unbinned = pdf
        index, inside, shape = _reference_bin_index(pdf, space)
        self._bin_shape = shape
        self._bin_index = tf.constant(index, dtype=tf.int64)
        self._bin_inside = tf.constant(inside, dtype=tf.float64)

    @property
    def unbinned_pdf(self) -> TammPDF:
        """The unbinned PDF that this one bins."""
        return self._unbinned

    @zfit.supports(norm="space")  # type: ignore[untyped-decorator]
    def _rel_counts(self, x: Any, norm: Any, params: Mapping[str, Any]) -> tf.Tensor:
        del x, norm
        weights = self._bin_inside * znp.maximum(self._unbinned._reference_ratio(params), 0.0)
        n_bins = math.prod(self._bin_shape)
        counts = tf.math.unsorted_segment_sum(weights, self._bin_index, n_bins)
        return znp.reshape(counts / znp.sum(counts), self._bin_shape)


def _reference_bin_index(
    pdf: TammPDF, space: zfit.Space
) -> tuple[NDArray[np.int64], NDArray[np.float64], tuple[int, ...]]:
    """Bin the reference events of ``pdf`` in the binned ``space``.

    Returns the flat (C-order) bin index of every event, a float mask of the events inside a
    bin, and the number of bins per axis.
    """
    events = pdf._reference_events_numpy
    _, region_upper = _space_bounds(pdf.space)
    per_axis = []
    shape = []
    inside = np.ones(len(events), dtype=bool)
    for obs_name, axis_edges in zip(space.obs, space.binning.edges, strict=True):
        # NB: zfit returns the edges of each axis broadcastable against the others, e.g. (11, 1).
        edges = np.asarray(axis_edges, dtype=np.float64).reshape(-1)
        column = pdf.obs.index(obs_name)
        values = events[:, column]
        index = np.searchsorted(edges, values, side="right") - 1
        closed_edge = (values == edges[-1]) & (edges[-1] >= region_upper[column])
        index = np.where(closed_edge, edges.size - 2, index)
        inside &= (index >= 0) & (index < edges.size - 1)
        per_axis.append(np.clip(index, 0, edges.size - 2))
        shape.append(edges.size - 1)
    flat = np.ravel_multi_index(tuple(per_axis), tuple(shape))
    return flat.astype(np.int64), inside.astype(np.float64), tuple(shape)


# ---------------------------------------------------------------------------------------------
# Loss terms


def _check_strength(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        msg = f"{name} must be a finite number >= 0; received {value}."
        raise InvalidModelError(msg)
    return float(value)


def tamm_constraints(
    pdf: TammPDF,
    penalty: ArrayLike | None = None,
    *,
    n_data: float | None = None,
    penalty_strength: float = 1.0,
    ridge_strength: float = 1.0,
) -> list[zfit.constraint.SimpleConstraint]:
    """Build the equal-normalisation penalty and the ridge of the TAMM loss as zfit constraints.

    .. math::

        \\frac{\\lambda_\\mathrm{pen}}{2} N
            \\Big[c_b \\overline{R_b(z)} - c_s \\overline{R_s(z)}\\Big]^2
        + \\frac{\\lambda_\\mathrm{ridge}}{2}
            \\Big[\\sum_{k=1}^{K_s} (a_k - 1/K_s)^2 + \\sum_{k=1}^{K_b} (b_k - 1/K_b)^2\\Big]

    with the means over the penalty sample :math:`z_l` (features computed here, once) and the
    dependent last weights included in the ridge. The same terms as in :mod:`tamm.mixture`.

    Args:
        pdf: The TAMM PDF whose parameters the terms use.
        penalty: Penalty sample, pooled simulation events cut to the region and disjoint from the
            reference sample, shape ``(N_pen, n_obs)``. No penalty term when None.
        n_data: N in the penalty; ``pdf.n_data`` by default.
        penalty_strength: :math:`\\lambda_\\mathrm{pen}`.
        ridge_strength: :math:`\\lambda_\\mathrm{ridge}`; no ridge term when 0.

    Returns:
        The constraints, penalty first; an empty list when neither term applies.

    Raises:
        InvalidModelError: If a strength is negative or not finite, or a penalty sample is
            given but N is unknown (``pdf.n_data`` is None and ``n_data`` is not given).
        InvalidSimulationError: If the penalty sample is empty, has the wrong columns or lies
            outside the region.
    """
    penalty_strength = _check_strength("penalty_strength", penalty_strength)
    ridge_strength = _check_strength("ridge_strength", ridge_strength)
    constraints: list[zfit.constraint.SimpleConstraint] = []
    k_signal, k_background = pdf.n_signal_classes, pdf.n_background_classes
    a_names = [f"a_{k}" for k in range(1, k_signal)]
    b_names = [f"b_{k}" for k in range(1, k_background)]

    if penalty is not None and penalty_strength > 0:
        n_events = pdf.n_data if n_data is None else n_data
        if n_events is None or not (math.isfinite(n_events) and n_events > 0):
            msg = (
                f"The penalty term is scaled by the number of observed events N; received "
                f"n_data={n_data} and the PDF has n_data={pdf.n_data}. Pass n_data=len(data)."
            )
            raise InvalidModelError(msg)
        features = pdf.features(penalty, what="penalty sample")
        signal = tf.constant(features[:, :k_signal], dtype=tf.float64)
        background = tf.constant(features[:, k_signal:], dtype=tf.float64)
        scale = 0.5 * penalty_strength * float(n_events)

        def penalty_term(params: Mapping[str, Any]) -> tf.Tensor:
            a = _all_weights([params[key] for key in a_names])
            b = _all_weights([params[key] for key in b_names])
            signal_mean = znp.mean(znp.exp(tf.linalg.matvec(signal, a)))
            background_mean = znp.mean(znp.exp(tf.linalg.matvec(background, b)))
            difference = params["c_b"] * background_mean - params["c_s"] * signal_mean
            return scale * difference**2

        penalty_params = {key: pdf.params[key] for key in ("c_s", "c_b", *a_names, *b_names)}
        constraints.append(
            zfit.constraint.SimpleConstraint(
                penalty_term, params=penalty_params, name=f"{pdf.name}_penalty"
            )
        )

    if ridge_strength > 0:

        def ridge_term(params: Mapping[str, Any]) -> tf.Tensor:
            a = _all_weights([params[key] for key in a_names])
            b = _all_weights([params[key] for key in b_names])
            squares = znp.sum((a - 1.0 / k_signal) ** 2) + znp.sum((b - 1.0 / k_background) ** 2)
            return 0.5 * ridge_strength * squares

        ridge_params = {key: pdf.params[key] for key in (*a_names, *b_names)}
        constraints.append(
            zfit.constraint.SimpleConstraint(
                ridge_term, params=ridge_params, name=f"{pdf.name}_ridge"
            )
        )
    return constraints


def tamm_nll(
    pdf: TammPDF,
    data: ArrayLike | zfit.Data,
    *,
    penalty: ArrayLike | None = None,
    penalty_strength: float = 1.0,
    ridge_strength: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> zfit.loss.UnbinnedNLL | zfit.loss.ExtendedUnbinnedNLL:
    """Build the zfit loss of a TAMM fit: the NLL of the data plus the ridge and penalty.

    For a PDF built with ``n_data=N`` and a penalty sample, the loss equals the standalone
    :class:`tamm.mixture.TemplateAdaptedLikelihood` up to a constant (see :class:`TammPDF`).

    Args:
        pdf: The TAMM PDF.
        data: Observed events inside the region, shape ``(N, n_obs)``, or a ``zfit.Data``
            (used as it is, with its weights; N is then the sum of the weights).
        penalty: Penalty sample for the equal-normalisation penalty, see :func:`tamm_constraints`.
        penalty_strength: :math:`\\lambda_\\mathrm{pen}`.
        ridge_strength: :math:`\\lambda_\\mathrm{ridge}`.
        options: zfit loss options.

    Returns:
        ``ExtendedUnbinnedNLL`` when the PDF is extended, ``UnbinnedNLL`` otherwise.

    Raises:
        InvalidSimulationError: If the data are empty, have the wrong columns, contain NaN or
            infinite values, or lie outside the region.
        InvalidModelError: If the log ratios of the data are not finite or a strength is
            invalid.
    """
    if isinstance(data, zfit.Data):
        # A zfit.Data is used as it is, so that its event weights are kept.
        array = np.asarray(data.value(obs=pdf.obs), dtype=np.float64)
        pdf.features(array, what="data")
        zfit_data = data
        n_events = float(np.asarray(data.samplesize))
    else:
        array = np.asarray(data, dtype=np.float64)
        pdf.features(array, what="data")
        zfit_data = zfit.Data.from_numpy(obs=pdf.space, array=array.reshape(len(array), -1))
        n_events = float(len(array))
    constraints = tamm_constraints(
        pdf,
        penalty,
        n_data=pdf.n_data if pdf.n_data is not None else n_events,
        penalty_strength=penalty_strength,
        ridge_strength=ridge_strength,
    )
    loss_class = zfit.loss.ExtendedUnbinnedNLL if pdf.is_extended else zfit.loss.UnbinnedNLL
    return loss_class(
        model=pdf,
        data=zfit_data,
        constraints=constraints or None,
        options=None if options is None else dict(options),
    )


# ---------------------------------------------------------------------------------------------
# Profile scan


@dataclass(frozen=True, eq=False)
class KappaScan:
    """The profile likelihood of kappa on a grid, from zfit fits.

    Attributes:
        kappa: Grid values, shape ``(m,)``.
        nll: Loss minimised over the other floating parameters at each grid value, ``(m,)``.
        converged: Whether each profiled fit converged, shape ``(m,)``. A fit that ends with a
            parameter at its limit (a topic weight at the edge of the simplex) counts as
            converged, although zfit does not call it valid.
        kappa_hat: kappa at the global minimum.
        nll_min: Loss at the global minimum.
    """

    kappa: NDArray[np.float64]
    nll: NDArray[np.float64]
    converged: NDArray[np.bool_]
    kappa_hat: float
    nll_min: float

    @property
    def q(self) -> NDArray[np.float64]:
        """The profile likelihood-ratio statistic ``2 [nll - nll_min]``, shape ``(m,)``."""
        return np.asarray(2.0 * (self.nll - self.nll_min))


def profile_scan(
    loss: Any,
    kappa_values: ArrayLike,
    *,
    poi: zfit.Parameter | None = None,
    minimizer: Any = None,
) -> KappaScan:
    """Profile a zfit loss in kappa: fix kappa at each grid value and minimise the rest.

    The global fit runs first. Each profiled fit starts from the previous one (the grid is
    visited in the given order), and kappa is restored to its global best-fit value and
    floating state at the end.

    Args:
        loss: A zfit loss containing kappa, for example from :func:`tamm_nll`.
        kappa_values: Grid values, shape ``(m,)``.
        poi: The kappa parameter; by default the ``kappa`` of the loss models.
        minimizer: A zfit minimiser; ``zfit.minimize.Minuit(gradient="zfit")`` by default.

    Returns:
        The scan. NLL values are zfit's full loss values (``loss.value(full=True)``), so
        differences between grid points are the profile log-likelihood differences.

    Raises:
        InvalidModelError: If the POI cannot be found, or the global fit did not converge.
    """
    grid = np.asarray(kappa_values, dtype=np.float64).reshape(-1)
    kappa = _loss_kappa(loss, poi)
    minimizer = zfit.minimize.Minuit(gradient="zfit") if minimizer is None else minimizer
    best = minimizer.minimize(loss)
    if not best.converged:
        msg = (
            f"The global fit of the loss did not converge ({best.message}); fix it before scanning."
        )
        raise InvalidModelError(msg)
    best_values = {p: best.params[p]["value"] for p in best.params}
    kappa_hat = float(best.params[kappa]["value"])
    nll_min = float(loss.value(full=True))

    nll = np.empty(grid.size)
    converged = np.empty(grid.size, dtype=bool)
    was_floating = kappa.floating
    kappa.floating = False
    try:
        for i, value in enumerate(grid):
            kappa.set_value(float(value))
            result = minimizer.minimize(loss)
            nll[i] = float(loss.value(full=True))
            converged[i] = bool(result.converged)
    finally:
        kappa.floating = was_floating
        zfit.param.set_values(list(best_values), list(best_values.values()))
    return KappaScan(grid, nll, converged, kappa_hat, nll_min)


def _loss_kappa(loss: Any, poi: zfit.Parameter | None) -> zfit.Parameter:
    """Return ``poi``, or the one ``kappa`` parameter that the models of ``loss`` share."""
    if poi is not None:
        names = sorted(p.name for p in loss.get_params(floating=None))
        if poi.name not in names:
            msg = (
                f"The POI {poi.name!r} is not a parameter of the loss; its parameters are {names}."
            )
            raise InvalidModelError(msg)
        return poi
    candidates = {id(m.kappa): m.kappa for m in loss.model if hasattr(m, "kappa")}
    if len(candidates) != 1:
        msg = (
            "Pass poi=<the kappa zfit.Parameter>: the models of the loss do not share exactly "
            f"one kappa parameter (found {len(candidates)})."
        )
        raise InvalidModelError(msg)
    return next(iter(candidates.values()))


# ---------------------------------------------------------------------------------------------
# Exact Gaussian log ratios


def exact_gaussian_log_ratio_fn(ratios: ExactGaussianRatios) -> Callable[[tf.Tensor], tf.Tensor]:
    """Return the exact log ratios of Gaussian simulations as a TensorFlow function.

    The TensorFlow twin of calling ``ratios`` (:class:`tamm.datasets.gaussian_ratios.ExactGaussianRatios`):
    for events ``(n, 2)`` it returns ``(n, C)`` with
    :math:`\\log p_k(x) - \\log p_\\mathrm{ref}(x) + \\log(\\bar e / e_k)`, where
    :math:`p_\\mathrm{ref}` is the equal mixture of the C uncut simulation densities and
    :math:`e_k` their acceptances in the region, signal simulations first.

    Args:
        ratios: The chosen simulations, their acceptances and the region.

    Returns:
        A function of a float64 tensor ``(n, 2)``, traceable by ``tf.function``.

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> ratios = ExactGaussianRatios.from_toy(GaussianToy(), [0, 1], [0, 1])
        >>> log_ratio = exact_gaussian_log_ratio_fn(ratios)
        >>> events = ratios.sample_reference(5, seed=2)  # (5, 2)
        >>> bool(np.allclose(log_ratio(tf.constant(events)).numpy(), ratios(events)))
        True
    """
    precisions = np.linalg.inv(ratios.covariances)
    log_norm = -math.log(2.0 * math.pi) - 0.5 * np.linalg.slogdet(ratios.covariances)[1]
    offsets = np.log(ratios.acceptances.mean() / ratios.acceptances)
    means = tf.constant(ratios.means.T, dtype=tf.float64)  # (2, C)
    p00 = tf.constant(precisions[:, 0, 0], dtype=tf.float64)
    p01 = tf.constant(precisions[:, 0, 1], dtype=tf.float64)
    p11 = tf.constant(precisions[:, 1, 1], dtype=tf.float64)
    constant = tf.constant(log_norm + offsets + math.log(ratios.n_classes), dtype=tf.float64)
    log_norm_tensor = tf.constant(log_norm, dtype=tf.float64)

    def log_ratio(x: tf.Tensor) -> tf.Tensor:
        # The 2x2 quadratic form written out keeps the temporaries at (n, C).
        dx = x[:, 0:1] - means[0]
        dy = x[:, 1:2] - means[1]
        quadratic = p00 * dx * dx + 2.0 * p01 * dx * dy + p11 * dy * dy
        log_reference = tf.reduce_logsumexp(
            log_norm_tensor - 0.5 * quadratic, axis=1, keepdims=True
        )
        return constant - 0.5 * quadratic - log_reference

    return log_ratio
