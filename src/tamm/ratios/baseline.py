r"""Baseline ratio: one signal simulation against one background simulation, without adaptation.

Where this sits in the pipeline: the baseline of arXiv 2604.02219 models the data
with a single simulation per process, :math:`p_\mathrm{data}/p_b = \kappa r + (1 - \kappa)`
with :math:`r \approx p_s / p_b`. Its kappa is biased whenever the simulations are wrong, which
is what the template-adapted model corrects; the baseline is kept for comparison studies.

The ratio comes from a binary version of the ensemble in :mod:`tamm.ratios.ensemble` (same
dense body, one logit, sigmoid cross-entropy with the signal as the positive class, the same
bootstrap and early-stopping recipe). The members are combined with the
:math:`w_i f_i` calibration of :mod:`tamm.ratios.calibration`, now with the signal held-out
events as positives and the background held-out events as reference, so that
:math:`L(x) \approx \log p_s(x)/p_b(x)` for the uncut densities. Inside a fiducial region
with acceptances :math:`e_s, e_b`, the ratio of the truncated densities is
:math:`\log r = L + \log e_b - \log e_s`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidModelError, InvalidRegionError
from tamm.ratios.calibration import (
    CalibrationFit,
    _check_acceptances,
    _check_region_before_training,
    _check_same_simulations,
    _class_weights,
    _compute_acceptances,
    _held_out_features,
    _is_ensemble,
    fit_calibration,
)
from tamm.ratios.ensemble import (
    _EVALUATION_BATCH,
    ClassInfo,
    RatioEnsemble,
    TrainingSettings,
    _require_positive_int,
)
from tamm.samples import Region, Simulation, SimulationSet

__all__ = ["BaselineRatio"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)


def _both_simulations(signal: object, background: object) -> bool:
    return isinstance(signal, Simulation) and isinstance(background, Simulation)


class BaselineRatio:
    r"""Calibrated :math:`\log p_s/p_b` of one signal and one background simulation.

    Build one with :meth:`train` or :meth:`load`.

    Args:
        ensemble: A binary ensemble from :meth:`RatioEnsemble.train_binary`.
        fit: The calibration fit of the members.
        region: Fiducial region of ``acceptances``, or ``None``.
        acceptances: ``(e_s, e_b)``, the fractions of the signal and the background
            simulation inside ``region``, or ``None``.

    Raises:
        InvalidModelError: If the ensemble is not binary or the fit has the wrong size.
        InvalidRegionError: If only one of ``region`` and ``acceptances`` is given.

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> toy = GaussianToy()
        >>> signal = toy.simulation("signal", 0, n_events=500, seed=1)
        >>> background = toy.simulation("background", 0, n_events=500, seed=2)
        >>> settings = TrainingSettings(n_members=2, hidden_units=(8,), max_epochs=1)
        >>> baseline = BaselineRatio.train(signal, background, settings=settings, seed=0, progress=False)
        >>> baseline.log_ratio([[0.0, 0.0], [0.0, 1.0]]).shape  # (n_events,)
        (2,)
    """

    def __init__(
        self,
        ensemble: RatioEnsemble,
        fit: CalibrationFit,
        *,
        region: Region | None = None,
        acceptances: ArrayLike | None = None,
    ) -> None:
        if not _is_ensemble(ensemble, binary=True):
            msg = "BaselineRatio needs a binary RatioEnsemble (from RatioEnsemble.train_binary)."
            raise InvalidModelError(msg)
        if fit.weights.shape != (ensemble.n_members,):
            msg = (
                f"The calibration fit has {fit.weights.shape[0]} member weights but the ensemble "
                f"has {ensemble.n_members} members."
            )
            raise InvalidModelError(msg)
        if (region is None) != (acceptances is None):
            msg = "Give both region and acceptances, or neither."
            raise InvalidRegionError(msg)
        self._ensemble = ensemble
        self._fit = fit
        self._region = region
        self._acceptances = None
        if region is not None:
            ensemble.check_region(region)
            self._acceptances = _check_acceptances(acceptances, 2)  # type: ignore[arg-type]

    @classmethod
    def train(
        cls,
        signal: Simulation,
        background: Simulation,
        *,
        region: Region | None = None,
        settings: TrainingSettings | None = None,
        seed: int | None,
        progress: bool = True,
    ) -> BaselineRatio:
        """Train the binary ensemble and calibrate it on the held-out events.

        Args:
            signal: The signal simulation (uncut events).
            background: The background simulation (uncut events).
            region: Optional fiducial region for the acceptance correction.
            settings: Network and training options; defaults to :class:`TrainingSettings`.
            seed: Master seed of the training (``None`` draws fresh entropy).
            progress: Show progress bars (on stderr).

        Raises:
            InvalidSimulationError: On unusable simulations.
            InvalidRegionError: If the region does not fit the simulations or contains no events
                of one of them.

        Warns:
            ConvergenceWarning: If the calibration fit did not converge.
        """
        if region is not None and _both_simulations(signal, background):
            pair = [
                SimulationSet([signal], process="signal"),
                SimulationSet([background], process="background"),
            ]
            _check_region_before_training(region, pair)
        ensemble = RatioEnsemble.train_binary(
            signal, background, settings=settings, seed=seed, progress=progress
        )
        return cls.calibrate(ensemble, signal, background, region=region)

    @classmethod
    def calibrate(
        cls,
        ensemble: RatioEnsemble,
        signal: Simulation,
        background: Simulation,
        *,
        region: Region | None = None,
    ) -> BaselineRatio:
        """Fit the member weights of a binary ensemble on its held-out events.

        Raises:
            InvalidModelError: For a multiclass or a loaded ensemble.
            InvalidSimulationError: If the simulations are not the ones of the training.
        """
        if not _is_ensemble(ensemble, binary=True):
            msg = "BaselineRatio.calibrate needs a binary RatioEnsemble (from RatioEnsemble.train_binary)."
            raise InvalidModelError(msg)
        _check_same_simulations(ensemble, [("signal", signal), ("background", background)])
        acceptances = None
        if region is not None:
            ensemble.check_region(region)
            acceptances = _compute_acceptances(region, [signal, background])

        features, offsets, weights = _held_out_features(ensemble, [signal, background])
        logits = features[0].astype(np.float64)
        signal_rows = slice(0, int(offsets[1]))
        background_rows = slice(int(offsets[1]), int(offsets[2]))
        fit = fit_calibration(
            logits[signal_rows],
            logits[background_rows],
            weights_positive=_class_weights(weights[0], signal_rows.stop),
            weights_reference=_class_weights(
                weights[1], background_rows.stop - background_rows.start
            ),
            label=f"baseline {signal.name} vs {background.name}",
        )
        log.info(
            "calibrated baseline %s vs %s: loss %.6f -> %.6f",
            signal.name,
            background.name,
            fit.loss_initial,
            fit.loss,
        )
        return cls(ensemble, fit, region=region, acceptances=acceptances)

    @property
    def ensemble(self) -> RatioEnsemble:
        """The underlying binary ensemble."""
        return self._ensemble

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The signal (index 0) and background (index 1) classes."""
        return self._ensemble.classes

    @property
    def fit(self) -> CalibrationFit:
        """The calibration fit of the members."""
        return self._fit

    @property
    def region(self) -> Region | None:
        """Region of :attr:`acceptances`, if set."""
        return self._region

    @property
    def acceptances(self) -> NDArray[np.float64] | None:
        """``(e_s, e_b)`` inside :attr:`region`, if set."""
        return self._acceptances

    def with_region(
        self, region: Region, signal: Simulation, background: Simulation
    ) -> BaselineRatio:
        """Return a copy whose acceptances refer to ``region``, computed from the simulations."""
        _check_same_simulations(self._ensemble, [("signal", signal), ("background", background)])
        self._ensemble.check_region(region)
        acceptances = _compute_acceptances(region, [signal, background])
        return type(self)(self._ensemble, self._fit, region=region, acceptances=acceptances)

    def log_ratio(
        self,
        events: ArrayLike,
        region: Region | None = None,
        *,
        batch_size: int = _EVALUATION_BATCH,
    ) -> NDArray[np.float64]:
        """Return the calibrated :math:`\\log p_s/p_b` of each event, shape ``(n,)``, float64.

        Args:
            events: Events, shape ``(n, n_observables)``.
            region: ``None`` for the uncut densities; a region (equal to :attr:`region`) adds
                :math:`\\log e_b - \\log e_s`, the ratio of the densities truncated to it.
            batch_size: Events per network call.

        Raises:
            InvalidSimulationError: If ``events`` has the wrong shape or non-finite values.
            InvalidRegionError: If ``region`` differs from :attr:`region` or none is set.
        """
        correction = 0.0
        if region is not None:
            if self._region is None or self._acceptances is None or region != self._region:
                stored = None if self._region is None else self._region.to_dict()
                msg = (
                    f"The acceptances refer to region {stored}, but region {region.to_dict()} was "
                    "requested; call with_region(region, signal, background) first."
                )
                raise InvalidRegionError(msg)
            correction = math.log(self._acceptances[1]) - math.log(self._acceptances[0])
        _require_positive_int("batch_size", batch_size)

        array = self._ensemble.check_events(events)
        out = np.empty(len(array), dtype=np.float64)
        for start, block in self._ensemble.iter_log_ratios(array, batch_size=batch_size):
            out[start : start + block.shape[1]] = self._fit.weights @ block[:, :, 0]
        return out + (self._fit.offset + correction)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to the directory ``path`` (see :mod:`tamm.ratios.persistence`)."""
        from tamm.ratios.persistence import save_baseline

        return save_baseline(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> BaselineRatio:
        """Read a model written by :meth:`save`.

        Raises:
            ModelFileError: If a file is missing, altered or inconsistent with the manifest.
        """
        from tamm.ratios.persistence import load_baseline

        return load_baseline(path)
