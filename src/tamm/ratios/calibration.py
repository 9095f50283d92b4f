r"""Calibration of the ratio ensemble (the :math:`w_i f_i` fit) and the acceptance correction.

Where this sits in the pipeline: :mod:`tamm.ratios.ensemble` trains ``M`` bootstrap members that
each estimate the log ratio :math:`\ell_{m,j}(x)` of every class ``j`` to the pooled
reference. This module combines them, per class, into one calibrated log ratio

.. math::

    L_j(x) = \sum_{m=1}^{M} w_{m,j}\, \ell_{m,j}(x) + w_{0,j},

fitted on the held-out calibration events, which the networks never trained on. The mixture
model then uses :meth:`CalibratedEnsemble.log_ratios`, with the acceptance correction of a
fiducial region.

Which name to use:

* :func:`train_ratios` trains the ensemble and calibrates it in one call.
* :meth:`CalibratedEnsemble.calibrate` calibrates an already trained :class:`RatioEnsemble`.
* :func:`fit_calibration` is the numerical kernel, for any matrix of member log ratios.

Mathematical details:
    For class ``j`` the weights minimise the balanced logistic loss

    .. math::

        \mathcal{L}(w) = \mathrm{E}_{x \sim p_j}\big[-\log \sigma(L_j(x))\big]
            + \mathrm{E}_{x \sim p_\mathrm{ref}}\big[-\log(1 - \sigma(L_j(x)))\big],

    whose population minimiser is :math:`L_j = \log p_j / p_\mathrm{ref}`. The loss is
    convex in :math:`w`; it is written with softplus, :math:`-\log\sigma(L) =
    \operatorname{softplus}(-L)` and :math:`-\log(1-\sigma(L)) = \operatorname{softplus}(L)`, so
    it never takes the logarithm of an exponential. The fit starts at the plain member average
    (:math:`w_{m,j} = 1/M`, :math:`w_{0,j} = 0`) and uses BFGS with the analytic gradient.

    The reference sample is the union of the calibration events of all classes. Each event of
    class ``k`` has weight :math:`w/(C\, W_k)`, with :math:`W_k` the total event weight of the
    class. The reference is then the equal-weight pool even when the classes hold out
    different numbers of events.

    Acceptance correction: the networks learn uncut densities. Let :math:`e_k` be the
    fraction of class ``k``'s simulation inside the region and :math:`\bar e` the mean over
    all classes, which is the acceptance of the equal-weight pool. The ratio of the densities
    truncated to the region is then :math:`\log \tilde r_k = L_k + \log \bar e - \log e_k`.

Reference: the frequentist neural estimation of arXiv 2604.02219 (Alvarez, Benevedes, Szewc,
Thaler).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import (
    ConvergenceWarning,
    InvalidModelError,
    InvalidRegionError,
    InvalidSimulationError,
)
from tamm.ratios.ensemble import (
    _EVALUATION_BATCH,
    ClassInfo,
    RatioEnsemble,
    TrainingSettings,
    _as_simulation_sets,
    _fingerprint,
    _require_positive_int,
)
from tamm.samples import Region, Simulation, SimulationSet

__all__ = ["CalibratedEnsemble", "CalibrationFit", "fit_calibration", "train_ratios"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

# A BFGS run that ends with "precision loss" still counts as converged when every component of
# the gradient of the (mean-normalised) loss is below this value.
_ACCEPTED_GRADIENT = 1e-4
_TINY_FLOAT = float(np.finfo(np.float64).tiny)
# Default memory for the cached member outputs during the calibration (256 MiB).
_FEATURE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CalibrationFit:
    """Result of the calibration fit of one class.

    Attributes:
        weights: Member weights :math:`w_{m}`, shape ``(n_members,)``.
        offset: Constant :math:`w_0` added in log space.
        loss_initial: Loss at the start, the plain member average.
        loss: Loss at the fitted weights.
        converged: Whether the optimiser reported success, or stopped with every gradient
            component below 1e-4.
        n_iterations: BFGS iterations.
        message: The optimiser's message.
    """

    weights: NDArray[np.float64]
    offset: float
    loss_initial: float
    loss: float
    converged: bool
    n_iterations: int
    message: str

    def __post_init__(self) -> None:
        weights = np.array(self.weights, dtype=np.float64)
        weights.setflags(write=False)
        object.__setattr__(self, "weights", weights)

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as a JSON-serialisable dictionary."""
        return {
            "weights": self.weights.tolist(),
            "offset": self.offset,
            "loss_initial": self.loss_initial,
            "loss": self.loss,
            "converged": self.converged,
            "n_iterations": self.n_iterations,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationFit:
        """Rebuild a fit written by :meth:`to_dict`."""
        return cls(
            weights=np.array(data["weights"], dtype=np.float64),
            offset=float(data["offset"]),
            loss_initial=float(data["loss_initial"]),
            loss=float(data["loss"]),
            converged=bool(data["converged"]),
            n_iterations=int(data["n_iterations"]),
            message=str(data["message"]),
        )


def _normalised_weights(weights: ArrayLike | None, n: int, what: str) -> NDArray[np.float64]:
    if weights is None:
        return np.full(n, 1.0 / n)
    array = np.asarray(weights, dtype=np.float64)
    if (
        array.shape != (n,)
        or not np.all(np.isfinite(array))
        or np.any(array < 0)
        or not array.sum() > 0
    ):
        msg = (
            f"{what} must be {n} finite non-negative numbers with a positive sum; received an "
            f"array of shape {array.shape}."
        )
        raise InvalidModelError(msg)
    normalised: NDArray[np.float64] = array / array.sum()
    return normalised


def _softplus(logit: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``log(1 + exp(L))`` as ``max(L, 0) + log1p(exp(-|L|))``, which cannot overflow."""
    out = np.abs(logit)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(logit, 0.0)
    return out


def _calibration_loss(
    params: NDArray[np.float64],
    features_positive: NDArray[np.float64],
    weights_positive: NDArray[np.float64],
    features_reference: NDArray[np.float64],
    weights_reference: NDArray[np.float64],
) -> tuple[float, NDArray[np.float64]]:
    """Return the balanced logistic loss and its gradient with respect to ``(w_1..w_M, w_0)``.

    Args:
        params: Member weights followed by the offset, shape ``(M + 1,)``.
        features_positive: Member log ratios of the class events, shape ``(n_p, M)``.
        weights_positive: Event weights summing to 1, shape ``(n_p,)``.
        features_reference: Member log ratios of the reference events, shape ``(n_r, M)``.
        weights_reference: Event weights summing to 1, shape ``(n_r,)``.
    """
    member_weights, offset = params[:-1], params[-1]
    logit_positive = features_positive @ member_weights + offset
    logit_reference = features_reference @ member_weights + offset

    # -log sigmoid(L) = softplus(-L) and -log(1 - sigmoid(L)) = softplus(L).
    loss = float(
        weights_positive @ _softplus(-logit_positive)
        + weights_reference @ _softplus(logit_reference)
    )

    # d softplus(-L)/dL = -sigmoid(-L) and d softplus(L)/dL = sigmoid(L).
    slope_positive = -weights_positive * scipy.special.expit(-logit_positive)
    slope_reference = weights_reference * scipy.special.expit(logit_reference)
    gradient = np.empty_like(params)
    gradient[:-1] = features_positive.T @ slope_positive + features_reference.T @ slope_reference
    gradient[-1] = slope_positive.sum() + slope_reference.sum()
    return loss, gradient


def _calibration_hessian(
    params: NDArray[np.float64],
    features_positive: NDArray[np.float64],
    weights_positive: NDArray[np.float64],
    features_reference: NDArray[np.float64],
    weights_reference: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Return the Hessian of :func:`_calibration_loss`, shape ``(M + 1, M + 1)``.

    Both terms have second derivative ``sigmoid(L) (1 - sigmoid(L))`` in ``L``.
    """
    n_members = len(params) - 1
    hessian = np.zeros((n_members + 1, n_members + 1))
    for features, weights in (
        (features_positive, weights_positive),
        (features_reference, weights_reference),
    ):
        logit = features @ params[:-1] + params[-1]
        damped = np.exp(-np.abs(logit))
        curvature = weights * damped / np.square(1.0 + damped)
        hessian[:-1, :-1] += (features * curvature[:, None]).T @ features
        hessian[:-1, -1] += features.T @ curvature
        hessian[-1, -1] += curvature.sum()
    hessian[-1, :-1] = hessian[:-1, -1]
    return hessian


def _inverse_hessian_guess(hessian: NDArray[np.float64]) -> NDArray[np.float64]:
    """Invert a symmetric positive semi-definite Hessian, lifting tiny eigenvalues.

    Members of an ensemble are nearly collinear, so the Hessian can be close to singular.
    Eigenvalues below 1e-8 of the largest are raised to that level.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    floor = max(float(eigenvalues[-1]), _TINY_FLOAT) * 1e-8
    clipped = np.maximum(eigenvalues, floor)
    inverse = (eigenvectors / clipped) @ eigenvectors.T
    symmetric: NDArray[np.float64] = 0.5 * (inverse + inverse.T)
    return symmetric


def fit_calibration(
    features_positive: ArrayLike,
    features_reference: ArrayLike,
    *,
    weights_positive: ArrayLike | None = None,
    weights_reference: ArrayLike | None = None,
    label: str = "class",
) -> CalibrationFit:
    r"""Fit :math:`L(x) = \sum_m w_m f_m(x) + w_0` by the balanced logistic loss.

    The population minimiser is :math:`L = \log p_\mathrm{pos} / p_\mathrm{ref}`. The fit
    starts at :math:`w_m = 1/M`, :math:`w_0 = 0` and runs scipy's BFGS with the analytic
    gradient. BFGS starts from the inverse of the analytic Hessian at that point. The loss is
    convex in :math:`w`.

    Args:
        features_positive: Member log ratios :math:`f_m` of the positive (class) events,
            shape ``(n_p, M)``.
        features_reference: Member log ratios of the reference events, shape ``(n_r, M)``.
        weights_positive: Optional event weights of the positive events, shape ``(n_p,)``.
        weights_reference: Optional event weights of the reference events, shape ``(n_r,)``.
        label: Name of the class in warnings and log messages.

    Returns:
        The fitted weights, the loss before and after, and the optimiser status.

    Raises:
        InvalidModelError: If the feature matrices are empty, differ in ``M`` or are not finite.

    Warns:
        ConvergenceWarning: If BFGS did not converge.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> positive = rng.normal(1.0, 1.0, size=(20_000, 1))  # N(1, 1)
        >>> reference = rng.normal(0.0, 1.0, size=(20_000, 1))  # N(0, 1)
        >>> fit = fit_calibration(2 * positive, 2 * reference)  # true ratio: x - 1/2
        >>> round(float(fit.weights[0]), 1), round(fit.offset, 1)
        (0.5, -0.5)
    """
    positive = _feature_matrix(features_positive, "features_positive")
    reference = _feature_matrix(features_reference, "features_reference")
    if positive.shape[1] != reference.shape[1]:
        msg = (
            f"features_positive has {positive.shape[1]} members but features_reference has "
            f"{reference.shape[1]}; both need one column per ensemble member."
        )
        raise InvalidModelError(msg)
    a = _normalised_weights(weights_positive, len(positive), "weights_positive")
    b = _normalised_weights(weights_reference, len(reference), "weights_reference")

    n_members = positive.shape[1]
    start = np.append(np.full(n_members, 1.0 / n_members), 0.0)
    loss_initial, _ = _calibration_loss(start, positive, a, reference, b)
    # Starting BFGS from the inverse Hessian at the start makes its first step a Newton step.
    # The members are nearly collinear, and from the identity matrix BFGS needs several
    # times more iterations.
    hessian_inverse = _inverse_hessian_guess(_calibration_hessian(start, positive, a, reference, b))
    result = scipy.optimize.minimize(
        _calibration_loss,
        start,
        args=(positive, a, reference, b),
        jac=True,
        method="BFGS",
        options={"hess_inv0": hessian_inverse},
    )
    max_gradient = float(np.max(np.abs(result.jac)))
    converged = bool(result.success) or max_gradient < _ACCEPTED_GRADIENT
    if not converged:
        msg = (
            f"Calibration of {label} did not converge after {result.nit} BFGS iterations "
            f"({result.message}; largest gradient component {max_gradient:.3g}). The ratios of "
            "this class may be poorly calibrated: train longer or hold out more events."
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    log.debug(
        "calibration of %s: loss %.6f -> %.6f in %d iterations (%s)",
        label,
        loss_initial,
        result.fun,
        result.nit,
        result.message,
    )
    return CalibrationFit(
        weights=result.x[:-1],
        offset=float(result.x[-1]),
        loss_initial=float(loss_initial),
        loss=float(result.fun),
        converged=converged,
        n_iterations=int(result.nit),
        message=str(result.message),
    )


def _feature_matrix(features: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        msg = f"{what} must have shape (n_events, n_members) with n_events >= 1; received shape {array.shape}."
        raise InvalidModelError(msg)
    if not np.all(np.isfinite(array)):
        msg = f"{what} contain NaN or infinite log ratios; check the networks' outputs."
        raise InvalidModelError(msg)
    return array


def _is_ensemble(value: object, *, binary: bool) -> bool:
    """Return whether ``value`` is a RatioEnsemble of the requested kind."""
    return isinstance(value, RatioEnsemble) and value.binary == binary


def _check_same_simulations(
    ensemble: RatioEnsemble, simulations: Sequence[tuple[str, Simulation]]
) -> None:
    """Raise unless ``simulations`` are, class by class, the ones ``ensemble`` was trained on."""
    if len(simulations) != ensemble.n_classes:
        msg = (
            f"The ensemble has {ensemble.n_classes} classes but {len(simulations)} simulations "
            "were given; pass the simulations it was trained on, in the same order."
        )
        raise InvalidSimulationError(msg)
    for info, (process, sim) in zip(ensemble.classes, simulations, strict=True):
        same = (
            info.process == process
            and info.simulation == sim.name
            and info.n_events == sim.n_events
            and info.fingerprint == _fingerprint(sim)
        )
        if not same:
            msg = (
                f"Class {info.index} was trained on {info.process}/{info.simulation} "
                f"({info.n_events} events), but received {process}/{sim.name} ({sim.n_events} "
                "events) or other event values. Pass the same simulations, in the same order, "
                "as to the training."
            )
            raise InvalidSimulationError(msg)


def _held_out_features(
    ensemble: RatioEnsemble, simulations: Sequence[Simulation], outputs: slice | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64], list[NDArray[np.float64] | None]]:
    """Evaluate the members on the held-out events of every class.

    Args:
        ensemble: The trained ensemble, with its split.
        simulations: The simulations of its classes, in class order.
        outputs: The network outputs (classes) to keep; all when ``None``.

    Returns:
        ``features`` of shape ``(n_kept_outputs, n_pool, M)``, the pool offset of each class
        ``(C + 1,)``, and the event weights of each class's held-out events (``None`` if
        unweighted). The features are float32, which halves the memory and loses nothing
        because the networks compute in float32.
    """
    kept = range(ensemble.n_outputs)[outputs or slice(None)]
    held_out = [ensemble.calibration_indices(c) for c in range(ensemble.n_classes)]
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in held_out])]).astype(np.int64)
    features = np.empty((len(kept), int(offsets[-1]), ensemble.n_members), dtype=np.float32)
    weights: list[NDArray[np.float64] | None] = []
    for c, (sim, indices) in enumerate(zip(simulations, held_out, strict=True)):
        events = sim.events[indices]
        for start, block in ensemble.iter_log_ratios(events):
            rows = slice(int(offsets[c]) + start, int(offsets[c]) + start + block.shape[1])
            features[:, rows, :] = np.transpose(block[:, :, kept.start : kept.stop], (2, 1, 0))
        weights.append(None if sim.weights is None else sim.weights[indices])
    return features, offsets, weights


def _class_weights(weights: NDArray[np.float64] | None, n: int) -> NDArray[np.float64]:
    return np.full(n, 1.0 / n) if weights is None else weights / weights.sum()


def _compute_acceptances(region: Region, simulations: Sequence[Simulation]) -> NDArray[np.float64]:
    acceptances = np.array([sim.acceptance(region) for sim in simulations])
    empty = [sim.name for sim, e in zip(simulations, acceptances, strict=True) if not e > 0]
    if empty:
        msg = (
            f"Simulations {empty} have no events inside the region {region.to_dict()['limits']}; "
            "their ratios are undefined there. Widen the region or drop these simulations."
        )
        raise InvalidRegionError(msg)
    return acceptances


def _check_acceptances(acceptances: ArrayLike, n: int) -> NDArray[np.float64]:
    array = np.array(acceptances, dtype=np.float64)
    if array.shape != (n,) or not np.all((array > 0) & (array <= 1)):
        msg = (
            f"acceptances must be {n} numbers in (0, 1], one per class; received "
            f"{np.asarray(acceptances).tolist()}."
        )
        raise InvalidRegionError(msg)
    array.setflags(write=False)
    return array


def _fit_class(
    info: ClassInfo,
    features: NDArray[np.float32],
    rows: slice,
    weights: NDArray[np.float64] | None,
    reference_weights: NDArray[np.float64],
) -> CalibrationFit:
    """Calibrate one class: its held-out ``rows`` of the pool against the whole pool.

    Args:
        info: The class.
        features: Member log ratios of this class for every pool event, ``(n_pool, M)``.
        rows: The pool rows of this class's held-out events.
        weights: Event weights of those events, or ``None``.
        reference_weights: Weights of all pool events as the reference, ``(n_pool,)``.
    """
    class_features = features.astype(np.float64)
    fit = fit_calibration(
        class_features[rows],
        class_features,
        weights_positive=_class_weights(weights, rows.stop - rows.start),
        weights_reference=reference_weights,
        label=f"class {info.index} ({info.process}/{info.simulation})",
    )
    log.info(
        "calibrated class %d (%s/%s): loss %.6f -> %.6f, weights %s, offset %.4f",
        info.index,
        info.process,
        info.simulation,
        fit.loss_initial,
        fit.loss,
        np.array2string(fit.weights, precision=3),
        fit.offset,
    )
    return fit


class CalibratedEnsemble:
    r"""Calibrated log density ratios of every simulation to the pooled reference.

    :meth:`log_ratios` returns :math:`L_j(x) = \sum_m w_{m,j} \ell_{m,j}(x) + w_{0,j}`, the
    calibrated :math:`\log p_j(x)/p_\mathrm{ref}(x)` of the uncut densities, or with a region
    the ratio of the densities truncated to it, :math:`L_j + \log \bar e - \log e_j`.

    Build one with :func:`train_ratios`, :meth:`calibrate` or :meth:`load`.

    Notes:
        The calibration fits ``M + 1`` weights per class on the held-out events, so it adds
        statistical noise of roughly :math:`\sqrt{(M + 1)/n_\mathrm{calibration}}` to the log
        ratios (an estimate). On the Gaussian toy with 1e4 held-out events per class, that
        noise outweighed the gain for a well-trained ensemble: the RMS error inside the region
        rose from 0.021 to 0.025. With 1e5 held-out events and a one-epoch ensemble it fell
        from 0.028 to 0.014 (``benchmarks/bench_ratios.py``). Hold out 1e5 events per
        class or more where the simulations allow it.

    Args:
        ensemble: The trained multiclass ensemble.
        fits: The calibration fit of each class, in class order.
        region: Fiducial region of :attr:`acceptances`, or ``None``.
        acceptances: Fraction :math:`e_k` of each class's simulation inside ``region``,
            shape ``(n_classes,)``, or ``None``.

    Raises:
        InvalidModelError: If the fits do not match the ensemble's classes and members.
        InvalidRegionError: If only one of ``region`` and ``acceptances`` is given, or the
            region does not match the observables.

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> toy = GaussianToy()
        >>> sets = [toy.simulations(p, [0, 1], n_events=500, seed=2) for p in ("signal", "background")]
        >>> settings = TrainingSettings(n_members=2, hidden_units=(8,), max_epochs=1)
        >>> ratios = train_ratios(sets, region=toy.region(bins=None), settings=settings, seed=0, progress=False)
        >>> [info.simulation for info in ratios.classes]
        ['signal_000', 'signal_001', 'background_000', 'background_001']
        >>> ratios.log_ratios([[0.0, 0.0]], region=toy.region(bins=None)).shape  # (n_events, n_classes)
        (1, 4)
    """

    def __init__(
        self,
        ensemble: RatioEnsemble,
        fits: Sequence[CalibrationFit],
        *,
        region: Region | None = None,
        acceptances: ArrayLike | None = None,
    ) -> None:
        if not _is_ensemble(ensemble, binary=False):
            msg = "CalibratedEnsemble needs a multiclass RatioEnsemble (from RatioEnsemble.train)."
            raise InvalidModelError(msg)
        fits = tuple(fits)
        if len(fits) != ensemble.n_classes:
            msg = f"Received {len(fits)} calibration fits for {ensemble.n_classes} classes; give one per class."
            raise InvalidModelError(msg)
        for c, fit in enumerate(fits):
            if fit.weights.shape != (ensemble.n_members,):
                msg = (
                    f"Calibration fit of class {c} has {fit.weights.shape[0]} member weights but "
                    f"the ensemble has {ensemble.n_members} members."
                )
                raise InvalidModelError(msg)
        if (region is None) != (acceptances is None):
            msg = "Give both region and acceptances, or neither."
            raise InvalidRegionError(msg)

        self._ensemble = ensemble
        self._fits = fits
        self._weights = np.array([fit.weights for fit in fits])
        self._offsets = np.array([fit.offset for fit in fits])
        self._weights.setflags(write=False)
        self._offsets.setflags(write=False)
        self._region = region
        self._acceptances = None
        if region is not None:
            ensemble.check_region(region)
            self._acceptances = _check_acceptances(acceptances, ensemble.n_classes)  # type: ignore[arg-type]

    @classmethod
    def calibrate(
        cls,
        ensemble: RatioEnsemble,
        simulation_sets: SimulationSet | Sequence[SimulationSet],
        *,
        region: Region | None = None,
        progress: bool = True,
        max_feature_bytes: int = _FEATURE_BYTES,
    ) -> CalibratedEnsemble:
        """Fit the member weights of every class on the held-out calibration events.

        Args:
            ensemble: A multiclass ensemble straight from :meth:`RatioEnsemble.train`.
            simulation_sets: The simulations it was trained on, in the same order.
            region: Optional fiducial region; the acceptances are computed from all events of
                each simulation.
            progress: Show a progress bar over the classes (on stderr).
            max_feature_bytes: Memory for the cached member outputs of the held-out events,
                in bytes. Each class needs ``4 * M * n_held_out`` bytes. When they do not all
                fit, the networks are evaluated again for each group of classes, which costs
                time but no accuracy.

        Raises:
            InvalidSimulationError: If the simulations are not the ones of the training.
            InvalidModelError: For a binary or a loaded ensemble, or a ``max_feature_bytes``
                below 1.
            InvalidRegionError: If the region has other observables, or a simulation has no
                events inside it.

        Warns:
            ConvergenceWarning: For every class whose fit did not converge.
        """
        from tqdm.auto import tqdm

        if not _is_ensemble(ensemble, binary=False):
            msg = "CalibratedEnsemble.calibrate needs a multiclass RatioEnsemble (from RatioEnsemble.train)."
            raise InvalidModelError(msg)
        _require_positive_int("max_feature_bytes", max_feature_bytes)
        entries = [(s.process, sim) for s in _as_simulation_sets(simulation_sets) for sim in s]
        _check_same_simulations(ensemble, entries)
        simulations = [sim for _, sim in entries]
        acceptances = None
        if region is not None:
            ensemble.check_region(region)
            acceptances = _compute_acceptances(region, simulations)

        # The member outputs of all held-out events are cached for the fits, for as many
        # classes per pass over the networks as fit in max_feature_bytes.
        n_classes = ensemble.n_classes
        n_pool = sum(info.n_calibration for info in ensemble.classes)
        bytes_per_class = n_pool * ensemble.n_members * np.dtype(np.float32).itemsize
        classes_per_pass = int(min(n_classes, max(1, max_feature_bytes // bytes_per_class)))
        log.info(
            "calibrating %d classes on %d held-out events, %d class(es) per pass over the networks",
            n_classes,
            n_pool,
            classes_per_pass,
        )

        fits = []
        bar = tqdm(
            total=n_classes, desc="calibration", unit="class", disable=not progress, leave=False
        )
        with bar:
            for first in range(0, n_classes, classes_per_pass):
                outputs = slice(first, min(n_classes, first + classes_per_pass))
                features, offsets, held_out_weights = _held_out_features(
                    ensemble, simulations, outputs
                )
                # The reference is the pool of all held-out events, each class with total
                # weight 1/C.
                reference_weights = np.concatenate(
                    [
                        _class_weights(w, int(offsets[k + 1] - offsets[k])) / n_classes
                        for k, w in enumerate(held_out_weights)
                    ]
                )
                for c in range(outputs.start, outputs.stop):
                    fits.append(
                        _fit_class(
                            ensemble.classes[c],
                            features[c - outputs.start],
                            slice(int(offsets[c]), int(offsets[c + 1])),
                            held_out_weights[c],
                            reference_weights,
                        )
                    )
                    bar.update(1)
                del features
        return cls(ensemble, fits, region=region, acceptances=acceptances)

    @property
    def ensemble(self) -> RatioEnsemble:
        """The underlying ensemble of networks."""
        return self._ensemble

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The classes (process, simulation), in output order."""
        return self._ensemble.classes

    @property
    def n_classes(self) -> int:
        """Number of classes ``C``."""
        return self._ensemble.n_classes

    @property
    def n_members(self) -> int:
        """Number of ensemble members ``M``."""
        return self._ensemble.n_members

    @property
    def processes(self) -> tuple[str, ...]:
        """Process names in the order of their first class."""
        return tuple(dict.fromkeys(info.process for info in self.classes))

    def class_indices(self, process: str) -> NDArray[np.int64]:
        """Return the output indices of the classes of ``process``, shape ``(K,)``.

        Raises:
            InvalidModelError: If no class belongs to ``process``.
        """
        indices = np.array(
            [info.index for info in self.classes if info.process == process], dtype=np.int64
        )
        if indices.size == 0:
            msg = f"No class belongs to process {process!r}; the processes are {list(self.processes)}."
            raise InvalidModelError(msg)
        return indices

    def describe_classes(self) -> list[dict[str, Any]]:
        """Return one JSON-serialisable dictionary per class, in output order.

        Each has the class's ``index``, ``process``, ``simulation``, event counts, its
        ``acceptance`` in :attr:`region` (``None`` without a region) and its calibration fit.
        """
        rows = []
        for info, fit in zip(self.classes, self._fits, strict=True):
            row = info.to_dict()
            del row["fingerprint"]
            row["acceptance"] = (
                None if self._acceptances is None else float(self._acceptances[info.index])
            )
            row["calibration"] = fit.to_dict()
            rows.append(row)
        return rows

    @property
    def fits(self) -> tuple[CalibrationFit, ...]:
        """Calibration fit of each class."""
        return self._fits

    @property
    def weights(self) -> NDArray[np.float64]:
        """Member weights :math:`w_{m,j}`, shape ``(n_classes, n_members)``."""
        return self._weights

    @property
    def offsets(self) -> NDArray[np.float64]:
        """Offsets :math:`w_{0,j}`, shape ``(n_classes,)``."""
        return self._offsets

    @property
    def region(self) -> Region | None:
        """Region of :attr:`acceptances`, if set."""
        return self._region

    @property
    def acceptances(self) -> NDArray[np.float64] | None:
        """Fraction of each class's simulation inside :attr:`region`, shape ``(n_classes,)``."""
        return self._acceptances

    def acceptance_correction(self) -> NDArray[np.float64]:
        r"""Return :math:`\log \bar e - \log e_k` for each class, shape ``(n_classes,)``.

        Raises:
            InvalidRegionError: If no region is set.
        """
        if self._acceptances is None:
            msg = (
                "This ensemble has no acceptances; call with_region(region, simulation_sets) "
                "or pass region= when calibrating."
            )
            raise InvalidRegionError(msg)
        return math.log(float(np.mean(self._acceptances))) - np.log(self._acceptances)

    def with_region(
        self, region: Region, simulation_sets: SimulationSet | Sequence[SimulationSet]
    ) -> CalibratedEnsemble:
        """Return a copy whose acceptances refer to ``region``, computed from the simulations.

        Raises:
            InvalidSimulationError: If the simulations are not the ones of the training.
            InvalidRegionError: If the region has other observables, or a simulation has no
                events inside it.
        """
        entries = [(s.process, sim) for s in _as_simulation_sets(simulation_sets) for sim in s]
        _check_same_simulations(self._ensemble, entries)
        self._ensemble.check_region(region)
        acceptances = _compute_acceptances(region, [sim for _, sim in entries])
        return self.with_acceptances(region, acceptances)

    def with_acceptances(self, region: Region, acceptances: ArrayLike) -> CalibratedEnsemble:
        """Return a copy with given acceptances ``(n_classes,)`` of ``region``."""
        return type(self)(self._ensemble, self._fits, region=region, acceptances=acceptances)

    def log_ratios(
        self,
        events: ArrayLike,
        region: Region | None = None,
        *,
        batch_size: int = _EVALUATION_BATCH,
    ) -> NDArray[np.float64]:
        """Return the calibrated log ratio of every class, shape ``(n, n_classes)``, float64.

        Args:
            events: Events, shape ``(n, n_observables)``.
            region: ``None`` for the ratios of the uncut densities. A region (equal to
                :attr:`region`) adds the acceptance correction, giving the ratios of the
                densities truncated to the region. These are meaningful only for events inside
                it, and events outside are not masked.
            batch_size: Events per network call.

        Raises:
            InvalidSimulationError: If ``events`` has the wrong shape or non-finite values.
            InvalidRegionError: If ``region`` differs from :attr:`region` or none is set.
        """
        correction = None
        if region is not None:
            if self._region is None or region != self._region:
                stored = None if self._region is None else self._region.to_dict()
                msg = (
                    f"The acceptances refer to region {stored}, but region {region.to_dict()} was "
                    "requested; call with_region(region, simulation_sets) first."
                )
                raise InvalidRegionError(msg)
            correction = self.acceptance_correction()
        _require_positive_int("batch_size", batch_size)

        array = self._ensemble.check_events(events)
        out = np.empty((len(array), self.n_classes), dtype=np.float64)
        for start, block in self._ensemble.iter_log_ratios(array, batch_size=batch_size):
            # Contract the member axis of the block (M, b, C) with the class weights (C, M).
            out[start : start + block.shape[1]] = np.einsum("mbc,cm->bc", block, self._weights)
        out += self._offsets
        if correction is not None:
            out += correction
        return out

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to the directory ``path`` (see :mod:`tamm.ratios.persistence`).

        Raises:
            ModelFileError: If ``path`` exists and ``overwrite`` is false, or is not a tamm
                model directory.
        """
        from tamm.ratios.persistence import save_calibrated_ensemble

        return save_calibrated_ensemble(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> CalibratedEnsemble:
        """Read a model written by :meth:`save`.

        Raises:
            ModelFileError: If a file is missing, altered or inconsistent with the manifest.
        """
        from tamm.ratios.persistence import load_calibrated_ensemble

        return load_calibrated_ensemble(path)


def train_ratios(
    simulation_sets: SimulationSet | Sequence[SimulationSet],
    *,
    region: Region | None = None,
    settings: TrainingSettings | None = None,
    seed: int | None,
    progress: bool = True,
) -> CalibratedEnsemble:
    """Train the multiclass ratio ensemble and calibrate it on the held-out events.

    Args:
        simulation_sets: The simulations of each process; one class per simulation.
        region: Optional fiducial region for the acceptance correction.
        settings: Network and training options; defaults to :class:`TrainingSettings`.
        seed: Master seed of the training (``None`` draws fresh entropy, recorded in
            ``result.ensemble.seed``).
        progress: Show progress bars (on stderr).

    Returns:
        The calibrated ensemble.

    Raises:
        InvalidSimulationError: On unusable simulations (see :meth:`RatioEnsemble.train`).
        InvalidRegionError: If the region does not fit the simulations.
    """
    if region is not None:
        _check_region_before_training(region, _as_simulation_sets(simulation_sets))
    ensemble = RatioEnsemble.train(simulation_sets, settings=settings, seed=seed, progress=progress)
    return CalibratedEnsemble.calibrate(ensemble, simulation_sets, region=region, progress=progress)


def _check_region_before_training(region: Any, sets: Sequence[SimulationSet]) -> None:
    """Reject a region that cannot match the simulations, before minutes of training."""
    if not isinstance(region, Region):
        msg = f"region must be a tamm.Region or None; received {type(region).__name__}."
        raise InvalidRegionError(msg)
    for simulation_set in sets:
        for sim in simulation_set:
            if sim.events.shape[1] != region.n_observables:
                msg = (
                    f"The region has {region.n_observables} observables {list(region.observables)} "
                    f"but simulation {simulation_set.process}/{sim.name} has {sim.events.shape[1]} "
                    "columns; use a region over the simulations' observables."
                )
                raise InvalidRegionError(msg)
            if sim.observables is not None and sim.observables != region.observables:
                msg = (
                    f"The region's observables {list(region.observables)} differ from those of "
                    f"simulation {simulation_set.process}/{sim.name} {list(sim.observables)}; use "
                    "the same names in the same order."
                )
                raise InvalidRegionError(msg)
