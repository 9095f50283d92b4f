r"""Multiclass ratio networks: one class per biased simulation, trained on the uncut events.

Where this sits in the pipeline: the unbinned engine describes every process by the log
density ratios :math:`\ell_j(x) = \log p_j(x) / p_\mathrm{ref}(x)` of its simulations to the
equal-weight pool :math:`p_\mathrm{ref} = \frac{1}{C} \sum_i p_i` of all ``C`` simulations of all
processes. This module learns those ratios with an ensemble of bootstrap classifiers.
:mod:`tamm.ratios.calibration` then combines the members on held-out events (the
:math:`w_i f_i` calibration) and applies the acceptance of a fiducial region, and the mixture
model fits the data with the calibrated ratios.

Mathematical details:
    A classifier trained with softmax cross-entropy on classes with prior probabilities
    :math:`\pi_i` (the share of the training events of class ``i``) converges to logits
    :math:`s_j(x) = \log \pi_j + \log p_j(x) + c(x)` with a common :math:`c(x)`. Hence

    .. math::

        \ell_j(x) = (s_j - \log \pi_j) - \log \sum_i \exp(s_i - \log \pi_i) + \log C,

    which reduces to :math:`s_j - \operatorname{logsumexp}_i s_i + \log C` for equal class
    sizes. The binary variant (one signal and one background simulation, one logit ``s``)
    returns :math:`s - \log(\pi_s / \pi_b) \approx \log p_s / p_b`.

Training recipe (the defaults of :class:`TrainingSettings`, the recipe of arXiv 2604.02219):
a dense network ``n_obs -> 64 -> 64 -> 64 -> C`` with LeakyReLU(0.2) and softmax
cross-entropy, trained with Adam (learning rate 1e-3) on batches of 4096 for at most 100
epochs. Early stopping with patience 10 restores the weights of the best validation epoch.
The ensemble has 4 members, each trained on its own bootstrap resample of the training split. Every simulation is split once into training,
validation and calibration events, and the calibration events are never used in training.

Events stay in the caller's arrays: batches are gathered by index, and bootstrap resamples are
index arrays, so training never keeps a second copy of all events. TensorFlow and Keras are imported
on the first training or evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import numbers
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import (
    InvalidModelError,
    InvalidRegionError,
    InvalidSimulationError,
    TammWarning,
)
from tamm.samples import Region, Simulation, SimulationSet

__all__ = ["ClassInfo", "MemberRecord", "RatioEnsemble", "TrainingSettings"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

# Rows per network call when evaluating log ratios. One block contains
# n_members * _EVALUATION_BATCH * n_classes float64 values.
_EVALUATION_BATCH = 65_536
# Keeps the Keras initializer seeds, drawn from a SeedSequence, in the non-negative int32 range.
_SEED_MASK = 0x7FFF_FFFF


@dataclass(frozen=True)
class TrainingSettings:
    """Options of the ratio networks and of their training.

    Args:
        n_members: Number of bootstrap members ``M`` of the ensemble.
        hidden_units: Width of each hidden dense layer.
        negative_slope: Slope of LeakyReLU for negative inputs.
        learning_rate: Adam learning rate.
        batch_size: Events per gradient step.
        max_epochs: Maximum number of passes over the training split.
        patience: Epochs without a lower validation loss before training stops. The weights
            of the epoch with the lowest validation loss are restored at the end.
        validation_fraction: Share of each simulation's non-calibration events used for
            validation (early stopping).
        calibration_fraction: Share of each simulation's events held out for the calibration.
            Small held-out samples make the calibration noisy (see
            :class:`~tamm.ratios.CalibratedEnsemble`).
        max_calibration_events: Upper limit of the held-out calibration events per simulation,
            or ``None`` for no limit. Events above the limit go to training.
        standardize: Subtract the mean and divide by the standard deviation of the pooled
            training events before the network (stored with the model).

    Raises:
        InvalidModelError: If a value is out of range.
    """

    n_members: int = 4
    hidden_units: tuple[int, ...] = (64, 64, 64)
    negative_slope: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 4096
    max_epochs: int = 100
    patience: int = 10
    validation_fraction: float = 0.1
    calibration_fraction: float = 0.1
    max_calibration_events: int | None = 100_000
    standardize: bool = True

    def __post_init__(self) -> None:
        for name in ("n_members", "batch_size", "max_epochs", "patience"):
            _require_int(name, getattr(self, name), minimum=1)
        if self.max_calibration_events is not None:
            _require_int("max_calibration_events", self.max_calibration_events, minimum=1)

        raw_units: Any = self.hidden_units
        units = (raw_units,) if isinstance(raw_units, numbers.Integral) else tuple(raw_units)
        for value in units:
            _require_int("hidden_units", value, minimum=1)
        object.__setattr__(self, "hidden_units", tuple(int(v) for v in units))

        _require_float("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _require_float("negative_slope", self.negative_slope, low=0.0)
        _require_float(
            "validation_fraction",
            self.validation_fraction,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        )
        _require_float(
            "calibration_fraction",
            self.calibration_fraction,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        )
        if self.validation_fraction + self.calibration_fraction >= 1.0:
            msg = (
                f"TrainingSettings: validation_fraction + calibration_fraction must leave events "
                f"for training; received {self.validation_fraction} + {self.calibration_fraction} >= 1."
            )
            raise InvalidModelError(msg)
        standardize: object = self.standardize
        if not isinstance(standardize, bool):
            msg = f"TrainingSettings.standardize must be True or False; received {self.standardize!r}."
            raise InvalidModelError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dictionary."""
        out = {item.name: getattr(self, item.name) for item in fields(self)}
        out["hidden_units"] = list(self.hidden_units)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSettings:
        """Build settings from a dictionary such as :meth:`to_dict` returns.

        Raises:
            InvalidModelError: If a key is unknown or a value is out of range.
        """
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"Unknown training settings {unknown}; valid names are {sorted(known)}."
            raise InvalidModelError(msg)
        values = dict(data)
        if "hidden_units" in values and not isinstance(values["hidden_units"], int):
            values["hidden_units"] = tuple(values["hidden_units"])
        return cls(**values)


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        msg = f"TrainingSettings.{name} must be an integer >= {minimum}; received {value!r}."
        raise InvalidModelError(msg)


def _is_real(value: object) -> bool:
    """Return whether ``value`` is a real number other than a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _is_seed(value: object) -> bool:
    """Return whether ``value`` is ``None`` or a non-negative integer other than a bool."""
    if value is None:
        return True
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and int(value) >= 0


def _is_simulation(value: object) -> bool:
    return isinstance(value, Simulation)


def _require_float(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    valid = _is_real(value) and math.isfinite(value)
    if valid:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        valid = above and below
    if not valid:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        msg = f"TrainingSettings.{name} must be a number in {left}{low}, {high}{right}; received {value!r}."
        raise InvalidModelError(msg)


@dataclass(frozen=True)
class ClassInfo:
    """One class of the ensemble: a biased simulation of a process and how its events were split.

    Attributes:
        index: Position of the class in the network output.
        process: Name of the process (the :attr:`SimulationSet.process`).
        simulation: Name of the simulation.
        n_events: Number of events of the simulation.
        n_train: Events in the training split.
        n_validation: Events in the validation split.
        n_calibration: Events held out for the calibration (never trained on).
        fingerprint: SHA-256 of the simulation's events (and weights), used to check that the
            calibration receives the simulations the networks were trained on.
    """

    index: int
    process: str
    simulation: str
    n_events: int
    n_train: int
    n_validation: int
    n_calibration: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """Return the class description as a JSON-serialisable dictionary."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassInfo:
        """Rebuild a class description written by :meth:`to_dict`."""
        return cls(
            index=int(data["index"]),
            process=str(data["process"]),
            simulation=str(data["simulation"]),
            n_events=int(data["n_events"]),
            n_train=int(data["n_train"]),
            n_validation=int(data["n_validation"]),
            n_calibration=int(data["n_calibration"]),
            fingerprint=str(data["fingerprint"]),
        )


@dataclass(frozen=True)
class MemberRecord:
    """Training record of one ensemble member.

    Attributes:
        index: Member index ``m`` (0-based), also in the saved file name ``member_<m>.keras``.
        init_seed: Seed of the member's weight initialisation.
        log_priors: Log share :math:`\\log \\pi_i` of each class in the member's bootstrap
            training sample, shape ``(n_classes,)``; subtracted from the logits.
        train_loss: Mean training loss of each epoch.
        validation_loss: Validation loss after each epoch.
        epoch_seconds: Wall time of each epoch, in seconds.
        best_epoch: Epoch (0-based) with the lowest validation loss; its weights are the
            member's weights.
    """

    index: int
    init_seed: int
    log_priors: tuple[float, ...]
    train_loss: tuple[float, ...]
    validation_loss: tuple[float, ...]
    epoch_seconds: tuple[float, ...]
    best_epoch: int

    @property
    def n_epochs(self) -> int:
        """Number of epochs run."""
        return len(self.validation_loss)

    @property
    def best_validation_loss(self) -> float:
        """Validation loss of the restored (best) epoch."""
        return self.validation_loss[self.best_epoch]

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary (NaN losses become ``None``)."""
        return {
            "index": self.index,
            "init_seed": self.init_seed,
            "log_priors": list(self.log_priors),
            "train_loss": [_finite_or_none(v) for v in self.train_loss],
            "validation_loss": [_finite_or_none(v) for v in self.validation_loss],
            "epoch_seconds": list(self.epoch_seconds),
            "best_epoch": self.best_epoch,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberRecord:
        """Rebuild a record written by :meth:`to_dict`."""
        return cls(
            index=int(data["index"]),
            init_seed=int(data["init_seed"]),
            log_priors=tuple(float(v) for v in data["log_priors"]),
            train_loss=tuple(math.nan if v is None else float(v) for v in data["train_loss"]),
            validation_loss=tuple(
                math.nan if v is None else float(v) for v in data["validation_loss"]
            ),
            epoch_seconds=tuple(float(v) for v in data["epoch_seconds"]),
            best_epoch=int(data["best_epoch"]),
        )


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class _ClassSplit:
    """Indices (into one simulation's events) of its training, validation and calibration events."""

    train: NDArray[np.integer[Any]]
    validation: NDArray[np.integer[Any]]
    calibration: NDArray[np.integer[Any]]


@dataclass(eq=False)
class _EventStore:
    """Events of all classes, addressed by a global index without concatenating them.

    The global index of event ``r`` of class ``c`` is ``offsets[c] + r``. Weights are scaled to
    a mean of 1 per class, so every class enters training with its number of events.
    """

    events: list[NDArray[np.float64]]
    weights: list[NDArray[np.float64] | None]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    offsets: NDArray[np.int64] = field(init=False)
    weight_factors: NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        sizes = [len(e) for e in self.events]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.weight_factors = np.array(
            [1.0 if w is None else len(w) / float(np.sum(w)) for w in self.weights]
        )

    @property
    def n_classes(self) -> int:
        return len(self.events)

    def gather(
        self, indices: NDArray[np.integer[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]]:
        """Return standardised events ``(b, d)``, class labels ``(b,)`` and weights ``(b,)``.

        ``indices`` are global indices sorted in increasing order, so each class is one slice.
        """
        bounds = np.searchsorted(indices, self.offsets)
        x = np.empty((len(indices), self.mean.shape[0]), dtype=np.float64)
        labels = np.empty(len(indices), dtype=np.int32)
        weights = np.ones(len(indices), dtype=np.float32)
        for c in range(self.n_classes):
            start, stop = int(bounds[c]), int(bounds[c + 1])
            if start == stop:
                continue
            rows = indices[start:stop] - self.offsets[c]
            x[start:stop] = self.events[c][rows]
            labels[start:stop] = c
            class_weights = self.weights[c]
            if class_weights is not None:
                weights[start:stop] = class_weights[rows] * self.weight_factors[c]
        x -= self.mean
        x /= self.scale
        return x.astype(np.float32), labels, weights

    def class_totals(self, indices: NDArray[np.integer[Any]]) -> NDArray[np.float64]:
        """Return the summed (scaled) weight of each class among the sorted global ``indices``."""
        bounds = np.searchsorted(indices, self.offsets)
        totals = np.empty(self.n_classes)
        for c in range(self.n_classes):
            start, stop = int(bounds[c]), int(bounds[c + 1])
            class_weights = self.weights[c]
            if class_weights is None:
                totals[c] = stop - start
            else:
                rows = indices[start:stop] - self.offsets[c]
                totals[c] = float(np.sum(class_weights[rows])) * self.weight_factors[c]
        return totals


class RatioEnsemble:
    r"""Trained ensemble of ratio networks: per-member log density ratios of every class.

    Build one with :meth:`train` (all simulations of all processes, one class each) or
    :meth:`train_binary` (one signal against one background simulation). The constructor takes
    already trained parts and is used when loading a saved model.

    For the multiclass ensemble, :meth:`log_ratios` returns
    :math:`\ell_{m,j}(x) \approx \log p_j(x) / p_\mathrm{ref}(x)` with
    :math:`p_\mathrm{ref} = \frac{1}{C}\sum_i p_i` the equal-weight pool of the uncut
    simulations. For the binary ensemble it returns
    :math:`f_m(x) \approx \log p_s(x) / p_b(x)` in a last axis of length 1.

    Args:
        members: The trained Keras networks, in member order.
        records: Training record of each member, in member order.
        classes: The classes, in network-output order.
        settings: The training settings.
        seed: Entropy of the master seed (repeats the training when passed as ``seed``).
        input_mean: Mean subtracted from the events, shape ``(n_observables,)``.
        input_scale: Scale the events are divided by, shape ``(n_observables,)``.
        observables: Observable names in column order, or ``None`` if the simulations had none.
        binary: Whether the networks have one logit (signal against background).
        splits: Per-class event splits of the training; ``None`` for a loaded ensemble.

    Raises:
        InvalidModelError: If the parts disagree on the number of members, classes or inputs.

    Examples:
        >>> from tamm.datasets import GaussianToy
        >>> toy = GaussianToy()
        >>> sets = [toy.simulations(p, [0, 1], n_events=500, seed=1) for p in ("signal", "background")]
        >>> settings = TrainingSettings(n_members=1, hidden_units=(8,), max_epochs=1)
        >>> ensemble = RatioEnsemble.train(sets, settings=settings, seed=0, progress=False)
        >>> ensemble.log_ratios([[0.0, 0.0], [1.0, 1.0]]).shape  # (n_members, n_events, n_classes)
        (1, 2, 4)
    """

    def __init__(
        self,
        *,
        members: Sequence[Any],
        records: Sequence[MemberRecord],
        classes: Sequence[ClassInfo],
        settings: TrainingSettings,
        seed: int,
        input_mean: ArrayLike,
        input_scale: ArrayLike,
        observables: Sequence[str] | None,
        binary: bool = False,
        splits: Sequence[_ClassSplit] | None = None,
    ) -> None:
        self._members = tuple(members)
        self._records = tuple(records)
        self._classes = tuple(classes)
        self._settings = settings
        self._seed = int(seed)
        self._mean = np.array(input_mean, dtype=np.float64)
        self._scale = np.array(input_scale, dtype=np.float64)
        self._observables = None if observables is None else tuple(observables)
        self._binary = bool(binary)
        self._splits = None if splits is None else tuple(splits)
        self._mean.setflags(write=False)
        self._scale.setflags(write=False)
        self._predictors: list[Any] | None = None
        self._check_consistency()

    def _check_consistency(self) -> None:
        if not self._members:
            msg = "A RatioEnsemble needs at least one trained member; build one with RatioEnsemble.train."
            raise InvalidModelError(msg)
        if len(self._records) != len(self._members):
            msg = f"Received {len(self._members)} networks but {len(self._records)} member records; give one record per network."
            raise InvalidModelError(msg)
        for position, record in enumerate(self._records):
            if record.index != position:
                msg = f"Member record at position {position} carries index {record.index}; records must be in member order 0..{len(self._records) - 1}."
                raise InvalidModelError(msg)
            if len(record.log_priors) != len(self._classes):
                msg = f"Member {position} has {len(record.log_priors)} class priors for {len(self._classes)} classes."
                raise InvalidModelError(msg)
        for position, info in enumerate(self._classes):
            if info.index != position:
                msg = f"Class at position {position} carries index {info.index}; classes must be in output order."
                raise InvalidModelError(msg)
        if self._binary and len(self._classes) != 2:
            msg = f"A binary ensemble has exactly 2 classes (signal, background); received {len(self._classes)}."
            raise InvalidModelError(msg)
        if len(self._classes) < 2:
            msg = f"A ratio ensemble needs at least 2 classes; received {len(self._classes)}."
            raise InvalidModelError(msg)
        if self._mean.shape != self._scale.shape or self._mean.ndim != 1:
            msg = f"input_mean {self._mean.shape} and input_scale {self._scale.shape} must both have shape (n_observables,)."
            raise InvalidModelError(msg)
        if not np.all(np.isfinite(self._scale)) or np.any(self._scale <= 0):
            msg = f"input_scale must be finite and positive; received {self._scale.tolist()}."
            raise InvalidModelError(msg)
        if self._observables is not None and len(self._observables) != self.n_observables:
            msg = f"Received {len(self._observables)} observable names for {self.n_observables} inputs."
            raise InvalidModelError(msg)
        for position, model in enumerate(self._members):
            n_inputs, n_outputs = _network_shape(model)
            if n_inputs != self.n_observables or n_outputs != self.n_outputs:
                msg = (
                    f"Network of member {position} maps {n_inputs} inputs to {n_outputs} outputs, "
                    f"but the ensemble expects {self.n_observables} inputs and {self.n_outputs} outputs."
                )
                raise InvalidModelError(msg)

    @classmethod
    def train(
        cls,
        simulation_sets: SimulationSet | Sequence[SimulationSet],
        *,
        settings: TrainingSettings | None = None,
        seed: int | None,
        progress: bool = True,
    ) -> RatioEnsemble:
        """Train the multiclass ensemble: one class per simulation of every process.

        Classes are ordered process by process, in the order of ``simulation_sets``, and within
        a process in the order of its simulations. Training uses the uncut events.

        Args:
            simulation_sets: The simulations of each process (for example signal and
                background), at least 2 simulations in total.
            settings: Network and training options; defaults to :class:`TrainingSettings`.
            seed: Master seed of the split, the bootstrap resamples, the initialisation and
                the shuffling. ``None`` draws fresh entropy, which :attr:`seed` then records.
            progress: Show a progress bar per member (on stderr).

        Returns:
            The trained ensemble.

        Raises:
            InvalidSimulationError: If fewer than 2 simulations are given, they differ in the
                number or names of observables, or a simulation has too few events to split.
        """
        sets = _as_simulation_sets(simulation_sets)
        entries = [(s.process, sim) for s in sets for sim in s]
        return _train_ensemble(
            entries,
            settings=settings or TrainingSettings(),
            seed=seed,
            binary=False,
            progress=progress,
        )

    @classmethod
    def train_binary(
        cls,
        signal: Simulation,
        background: Simulation,
        *,
        settings: TrainingSettings | None = None,
        seed: int | None,
        progress: bool = True,
    ) -> RatioEnsemble:
        """Train a binary ensemble (one logit) of one signal against one background simulation.

        Class 0 is the signal and class 1 the background. Arguments and errors as in
        :meth:`train`.
        """
        for role, sim in (("signal", signal), ("background", background)):
            if not _is_simulation(sim):
                msg = f"The {role} of a binary ensemble must be a tamm.Simulation; received {type(sim).__name__}."
                raise InvalidSimulationError(msg)
        entries = [("signal", signal), ("background", background)]
        return _train_ensemble(
            entries,
            settings=settings or TrainingSettings(),
            seed=seed,
            binary=True,
            progress=progress,
        )

    @property
    def n_members(self) -> int:
        """Number of members ``M``."""
        return len(self._members)

    @property
    def n_classes(self) -> int:
        """Number of classes ``C`` (2 for a binary ensemble)."""
        return len(self._classes)

    @property
    def n_outputs(self) -> int:
        """Number of log ratios per event: ``C``, or 1 for a binary ensemble."""
        return 1 if self._binary else self.n_classes

    @property
    def n_observables(self) -> int:
        """Number of input observables."""
        return int(self._mean.shape[0])

    @property
    def binary(self) -> bool:
        """Whether this is a binary (signal against background) ensemble."""
        return self._binary

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The classes, in output order."""
        return self._classes

    @property
    def records(self) -> tuple[MemberRecord, ...]:
        """Training record of each member, in member order."""
        return self._records

    @property
    def members(self) -> tuple[Any, ...]:
        """The Keras networks (standardised float32 inputs to logits), in member order."""
        return self._members

    @property
    def settings(self) -> TrainingSettings:
        """The training settings."""
        return self._settings

    @property
    def seed(self) -> int:
        """Entropy of the master seed of the training."""
        return self._seed

    @property
    def observables(self) -> tuple[str, ...] | None:
        """Observable names in column order, if the simulations named them."""
        return self._observables

    @property
    def input_mean(self) -> NDArray[np.float64]:
        """Mean subtracted from the events before the networks, shape ``(n_observables,)``."""
        return self._mean

    @property
    def input_scale(self) -> NDArray[np.float64]:
        """Scale the events are divided by before the networks, shape ``(n_observables,)``."""
        return self._scale

    def calibration_indices(self, class_index: int) -> NDArray[np.integer[Any]]:
        """Return the indices of the held-out calibration events of one class's simulation.

        Raises:
            InvalidModelError: For a loaded ensemble, which does not keep its split.
        """
        if self._splits is None:
            msg = (
                "This ensemble was loaded from disk and does not keep the split of its training "
                "events; calibrate right after RatioEnsemble.train."
            )
            raise InvalidModelError(msg)
        return self._splits[class_index].calibration

    def check_region(self, region: Region) -> None:
        """Raise unless ``region`` has this ensemble's observables.

        Raises:
            InvalidRegionError: If the number or the names of the observables differ.
        """
        candidate: object = region
        if not isinstance(candidate, Region):
            msg = f"region must be a tamm.Region; received {type(region).__name__}."
            raise InvalidRegionError(msg)
        if region.n_observables != self.n_observables:
            msg = (
                f"The region has {region.n_observables} observables {list(region.observables)} "
                f"but the ratio networks take {self.n_observables}; use a region over the same observables."
            )
            raise InvalidRegionError(msg)
        if self._observables is not None and region.observables != self._observables:
            msg = (
                f"The region's observables {list(region.observables)} differ from the ratio "
                f"networks' observables {list(self._observables)}; use the same names in the same order."
            )
            raise InvalidRegionError(msg)

    def check_events(self, events: ArrayLike, *, what: str = "events") -> NDArray[np.float64]:
        """Return ``events`` as float64 of shape ``(n, n_observables)``, or raise.

        An empty array (``n = 0``) is allowed.

        Raises:
            InvalidSimulationError: On the wrong number of columns, a wrong rank, or NaN or
                infinite values.
        """
        try:
            array = np.asarray(events, dtype=np.float64)
        except (TypeError, ValueError) as err:
            msg = f"{what} must be a numeric array of shape (n_events, {self.n_observables}); conversion failed: {err}"
            raise InvalidSimulationError(msg) from err
        if array.ndim == 1 and self.n_observables == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != self.n_observables:
            msg = (
                f"{what} must have shape (n_events, {self.n_observables}) for these ratio "
                f"networks; received shape {array.shape}. Pass one column per observable"
                + (f" {list(self._observables)}." if self._observables else ".")
            )
            raise InvalidSimulationError(msg)
        if not np.all(np.isfinite(array)):
            bad = np.argwhere(~np.isfinite(array))[0]
            msg = (
                f"{what} contain NaN or infinite values, first at row {int(bad[0])}, column "
                f"{int(bad[1])}; drop or fix these events."
            )
            raise InvalidSimulationError(msg)
        return array

    def iter_log_ratios(
        self, events: ArrayLike, *, batch_size: int = _EVALUATION_BATCH
    ) -> Iterator[tuple[int, NDArray[np.float64]]]:
        """Evaluate the members on ``events`` block by block.

        Yields:
            ``(start, block)``: the row of the first event of the block, and the log ratios of
            its events, shape ``(n_members, b, n_outputs)`` with ``b <= batch_size``, float64.

        Raises:
            InvalidSimulationError: If ``events`` has the wrong shape or non-finite values.
        """
        array = self.check_events(events)
        _require_positive_int("batch_size", batch_size)
        predictors = self._predictor_functions()
        for start in range(0, len(array), batch_size):
            chunk = ((array[start : start + batch_size] - self._mean) / self._scale).astype(
                np.float32
            )
            block = np.empty((self.n_members, len(chunk), self.n_outputs), dtype=np.float64)
            for member, predict in enumerate(predictors):
                block[member] = predict(chunk)
            yield start, block

    def log_ratios(
        self, events: ArrayLike, *, batch_size: int = _EVALUATION_BATCH
    ) -> NDArray[np.float64]:
        """Return the log ratio of every member and class, shape ``(n_members, n, n_outputs)``.

        The ratios refer to the uncut densities (no acceptance correction). Evaluation runs in
        blocks of ``batch_size`` events; for very large samples use :meth:`iter_log_ratios`,
        which keeps one block at a time.

        Raises:
            InvalidSimulationError: If ``events`` has the wrong shape or non-finite values.
        """
        array = self.check_events(events)
        out = np.empty((self.n_members, len(array), self.n_outputs), dtype=np.float64)
        for start, block in self.iter_log_ratios(array, batch_size=batch_size):
            out[:, start : start + block.shape[1]] = block
        return out

    def _predictor_functions(self) -> list[Any]:
        if self._predictors is None:
            self._predictors = [
                _compile_predictor(model, record.log_priors, self.n_observables, self._binary)
                for model, record in zip(self._members, self._records, strict=True)
            ]
        return self._predictors


def _require_positive_int(name: str, value: object) -> None:
    """Raise InvalidModelError unless ``value`` is an integer >= 1 (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        msg = f"{name} must be an integer >= 1; received {value!r}."
        raise InvalidModelError(msg)


def _log_ratios_from_logits(logits: Any, log_priors: Sequence[float], *, binary: bool) -> Any:
    """Convert one member's logits to log ratios, removing the class priors (TensorFlow ops).

    See the module docstring for the formula. Runs eagerly or inside ``tf.function``.

    Args:
        logits: Network outputs, shape ``(n, n_outputs)``, any float dtype.
        log_priors: Log class shares of the member's training sample, length ``C``.
        binary: Whether the network has one logit (signal class 0 against background class 1).

    Returns:
        Log ratios, shape ``(n, n_outputs)``, as a float64 tensor.
    """
    import tensorflow as tf

    logits = tf.cast(logits, tf.float64)
    priors = tf.constant(log_priors, dtype=tf.float64)
    if binary:
        return logits - (priors[0] - priors[1])
    shifted = logits - priors
    n_classes = len(log_priors)
    return shifted - tf.reduce_logsumexp(shifted, axis=-1, keepdims=True) + math.log(n_classes)


def _network_shape(model: Any) -> tuple[int, int]:
    """Return ``(n_inputs, n_outputs)`` of a Keras network with one flat input and output."""
    input_shape = model.input_shape
    output_shape = model.output_shape
    return int(input_shape[-1]), int(output_shape[-1])


class _Forward:
    """Log ratios of one member, as a callable object for ``tf.function``.

    TensorFlow counts traces per function code and logs a retracing warning when closures of
    the same function are traced for several networks. A callable object gets statistics of its
    own, so each member's function is counted separately.
    """

    def __init__(self, model: Any, log_priors: Sequence[float], binary: bool) -> None:
        self.model = model
        self.log_priors = tuple(log_priors)
        self.binary = binary

    def __call__(self, x: Any) -> Any:
        logits = self.model(x, training=False)
        return _log_ratios_from_logits(logits, self.log_priors, binary=self.binary)


def _compile_predictor(model: Any, log_priors: Sequence[float], n_inputs: int, binary: bool) -> Any:
    import tensorflow as tf

    # A fixed signature traces the forward pass once for any number of rows. The float64 log
    # ratios are computed in the graph, where TensorFlow spreads them over the CPU threads.
    return tf.function(
        _Forward(model, log_priors, binary),
        input_signature=[tf.TensorSpec([None, n_inputs], tf.float32)],
        autograph=False,
    )


def _as_simulation_sets(simulation_sets: Any) -> list[SimulationSet]:
    if isinstance(simulation_sets, SimulationSet):
        return [simulation_sets]
    if isinstance(simulation_sets, str | bytes) or not isinstance(simulation_sets, Sequence):
        msg = (
            "simulation_sets must be a sequence of tamm.SimulationSet (one per process); received "
            f"{type(simulation_sets).__name__}."
        )
        raise InvalidSimulationError(msg)
    sets = list(simulation_sets)
    for position, item in enumerate(sets):
        if not isinstance(item, SimulationSet):
            msg = (
                f"simulation_sets[{position}] is a {type(item).__name__}; expected a "
                "tamm.SimulationSet (wrap simulations with SimulationSet(sims, process=...))."
            )
            raise InvalidSimulationError(msg)
    processes = [s.process for s in sets]
    if len(set(processes)) != len(processes):
        msg = f"Process names must be unique across simulation sets; received {processes}."
        raise InvalidSimulationError(msg)
    return sets


def _fingerprint(sim: Simulation) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(sim.events, dtype=np.float64).tobytes())
    if sim.weights is not None:
        digest.update(b"weights")
        digest.update(np.ascontiguousarray(sim.weights, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _check_simulations(
    entries: Sequence[tuple[str, Simulation]],
) -> tuple[int, tuple[str, ...] | None]:
    """Check the class list and return the number of observables and their names (if named)."""
    if len(entries) < 2:
        msg = (
            f"A ratio ensemble needs at least 2 simulations (one class each); received "
            f"{len(entries)}. Add simulations of another process or of the same process."
        )
        raise InvalidSimulationError(msg)
    widths = {sim.events.shape[1] for _, sim in entries}
    if len(widths) != 1:
        listing = ", ".join(
            f"{process}/{sim.name}: {sim.events.shape[1]}" for process, sim in entries
        )
        msg = (
            f"All simulations must have the same number of observables; received {listing}. "
            "Select the same columns from every simulation."
        )
        raise InvalidSimulationError(msg)
    for process, sim in entries:
        if sim.weights is not None and not np.sum(sim.weights) > 0:
            msg = (
                f"Simulation {process}/{sim.name} has weights that sum to zero; give it at least "
                "one event with a positive weight."
            )
            raise InvalidSimulationError(msg)
    names = {sim.observables for _, sim in entries if sim.observables is not None}
    if len(names) > 1:
        msg = (
            f"The simulations name different observables {sorted(list(n) for n in names)}; "
            "every simulation must use the same observables in the same order."
        )
        raise InvalidSimulationError(msg)
    return widths.pop(), (names.pop() if names else None)


def _index_dtype(n: int) -> type[np.integer[Any]]:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def _split_events(
    entries: Sequence[tuple[str, Simulation]], settings: TrainingSettings, rng: np.random.Generator
) -> list[_ClassSplit]:
    splits = []
    for process, sim in entries:
        n = sim.n_events
        n_calibration = round(settings.calibration_fraction * n)
        if settings.max_calibration_events is not None:
            n_calibration = min(n_calibration, settings.max_calibration_events)
        n_validation = round(settings.validation_fraction * (n - n_calibration))
        n_train = n - n_calibration - n_validation
        if min(n_calibration, n_validation, n_train) < 1:
            msg = (
                f"Simulation {process}/{sim.name} has {n} events, too few to split into training "
                f"({n_train}), validation ({n_validation}) and calibration ({n_calibration}) "
                "events; give it more events."
            )
            raise InvalidSimulationError(msg)
        order = rng.permutation(n).astype(_index_dtype(n))
        splits.append(
            _ClassSplit(
                train=np.sort(order[n_calibration + n_validation :]),
                validation=np.sort(order[n_calibration : n_calibration + n_validation]),
                calibration=np.sort(order[:n_calibration]),
            )
        )
    return splits


def _standardisation(
    entries: Sequence[tuple[str, Simulation]],
    splits: Sequence[_ClassSplit],
    enabled: bool,
    n_observables: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the mean and standard deviation of the pooled training events, per observable."""
    if not enabled:
        return np.zeros(n_observables), np.ones(n_observables)
    count = 0
    total = np.zeros(n_observables)
    total_squares = np.zeros(n_observables)
    for (_, sim), split in zip(entries, splits, strict=True):
        # One class at a time keeps the temporary copy to one simulation's training events.
        train_events = sim.events[split.train]
        count += len(train_events)
        total += train_events.sum(axis=0)
        total_squares += np.square(train_events).sum(axis=0)
    mean = total / count
    variance = np.maximum(total_squares / count - mean**2, 0.0)
    scale = np.sqrt(variance)
    # NB: a constant observable carries no information; scale 1 avoids a division by zero.
    scale[~(scale > 0)] = 1.0
    return mean, scale


def _bootstrap(
    class_indices: Sequence[NDArray[np.integer[Any]]],
    offsets: NDArray[np.int64],
    rng: np.random.Generator,
) -> NDArray[np.integer[Any]]:
    """Resample each class's indices with replacement (same size) and return sorted global indices."""
    dtype = _index_dtype(int(offsets[-1]))
    parts = []
    for c, indices in enumerate(class_indices):
        positions = rng.integers(0, len(indices), size=len(indices))
        parts.append((indices[positions] + offsets[c]).astype(dtype))
    return np.sort(np.concatenate(parts))


def _train_ensemble(
    entries: Sequence[tuple[str, Simulation]],
    *,
    settings: TrainingSettings,
    seed: int | None,
    binary: bool,
    progress: bool,
) -> RatioEnsemble:
    candidate: object = settings
    if not isinstance(candidate, TrainingSettings):
        msg = f"settings must be a TrainingSettings; received {type(settings).__name__}."
        raise InvalidModelError(msg)
    n_observables, observables = _check_simulations(entries)
    if not _is_seed(seed):
        msg = f"seed must be a non-negative integer or None; received {seed!r}."
        raise InvalidModelError(msg)

    root = np.random.SeedSequence(seed)
    split_seed, *member_seeds = root.spawn(settings.n_members + 1)
    splits = _split_events(entries, settings, np.random.default_rng(split_seed))
    mean, scale = _standardisation(entries, splits, settings.standardize, n_observables)
    store = _EventStore(
        events=[sim.events for _, sim in entries],
        weights=[sim.weights for _, sim in entries],
        mean=mean,
        scale=scale,
    )
    classes = [
        ClassInfo(
            index=c,
            process=process,
            simulation=sim.name,
            n_events=sim.n_events,
            n_train=len(split.train),
            n_validation=len(split.validation),
            n_calibration=len(split.calibration),
            fingerprint=_fingerprint(sim),
        )
        for c, ((process, sim), split) in enumerate(zip(entries, splits, strict=True))
    ]
    _warn_duplicates(classes)
    log.info(
        "Training %d ratio network(s) on %d classes (%d training events, seed %d)",
        settings.n_members,
        len(classes),
        sum(info.n_train for info in classes),
        root.entropy,
    )

    members = []
    records = []
    for index, member_seed in enumerate(member_seeds):
        model, record = _train_member(
            index=index,
            store=store,
            splits=splits,
            n_outputs=1 if binary else len(classes),
            settings=settings,
            seed=member_seed,
            progress=progress,
        )
        members.append(model)
        records.append(record)

    return RatioEnsemble(
        members=members,
        records=records,
        classes=classes,
        settings=settings,
        seed=int(root.entropy),  # type: ignore[arg-type]
        input_mean=mean,
        input_scale=scale,
        observables=observables,
        binary=binary,
        splits=splits,
    )


def _import_keras() -> Any:
    """Import Keras on first use (it imports TensorFlow)."""
    import keras  # type: ignore[import-untyped]

    return keras


def _warn_duplicates(classes: Sequence[ClassInfo]) -> None:
    """Warn when two classes have identical events: their weights in a mixture are not identifiable."""
    first_with: dict[str, ClassInfo] = {}
    for info in classes:
        earlier = first_with.setdefault(info.fingerprint, info)
        if earlier is not info:
            msg = (
                f"Classes {earlier.index} ({earlier.process}/{earlier.simulation}) and {info.index} "
                f"({info.process}/{info.simulation}) have identical events. The networks cannot "
                "tell them apart and their mixture weights are not identifiable; pass each "
                "simulation once."
            )
            warnings.warn(msg, TammWarning, stacklevel=4)


def _build_network(
    n_inputs: int, n_outputs: int, settings: TrainingSettings, *, seed: int, name: str
) -> Any:
    """Build the dense network ``n_inputs -> hidden_units... -> n_outputs`` with linear logits."""
    keras = _import_keras()

    inputs = keras.Input(shape=(n_inputs,), dtype="float32", name="events")
    hidden = inputs
    for layer, units in enumerate(settings.hidden_units):
        initializer = keras.initializers.GlorotUniform(seed=(seed + layer) & _SEED_MASK)
        hidden = keras.layers.Dense(units, kernel_initializer=initializer, name=f"hidden_{layer}")(
            hidden
        )
        hidden = keras.layers.LeakyReLU(
            negative_slope=settings.negative_slope, name=f"leaky_relu_{layer}"
        )(hidden)
    initializer = keras.initializers.GlorotUniform(
        seed=(seed + len(settings.hidden_units)) & _SEED_MASK
    )
    logits = keras.layers.Dense(n_outputs, kernel_initializer=initializer, name="logits")(hidden)
    return keras.Model(inputs, logits, name=name)


def _member_name(index: int) -> str:
    """Return the Keras model name of member ``index``. Loading checks saved files against it."""
    return f"tamm_ratio_member_{index}"


@functools.cache
def _loss_function(binary: bool) -> Any:
    import tensorflow as tf

    def per_event_loss(logits: Any, labels: Any) -> Any:
        if binary:
            # Signal is class 0 and the positive label of the one-logit network.
            targets = tf.cast(tf.equal(labels, 0), logits.dtype)
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits[:, 0])
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    return per_event_loss


class _TrainStep:
    """Callable for one Adam step on a batch, returning the weighted mean loss (see _Forward)."""

    def __init__(self, model: Any, optimizer: Any, binary: bool) -> None:
        self.model = model
        self.optimizer = optimizer
        self.per_event_loss = _loss_function(binary)

    def __call__(self, x: Any, labels: Any, weights: Any) -> Any:
        import tensorflow as tf

        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.per_event_loss(self.model(x, training=True), labels)
            loss = tf.reduce_sum(weights * losses) / tf.reduce_sum(weights)
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss


class _EvaluationStep:
    """Callable for the summed weighted loss of a batch, without updates (see _Forward)."""

    def __init__(self, model: Any, binary: bool) -> None:
        self.model = model
        self.per_event_loss = _loss_function(binary)

    def __call__(self, x: Any, labels: Any, weights: Any) -> Any:
        import tensorflow as tf

        losses = self.per_event_loss(self.model(x, training=False), labels)
        return tf.reduce_sum(weights * losses)


def _make_steps(model: Any, optimizer: Any, n_inputs: int, binary: bool) -> tuple[Any, Any]:
    """Compile one training step and one evaluation step for ``model``.

    The steps have no data-dependent Python control flow, so autograph (which rereads the
    source file) is switched off.
    """
    import tensorflow as tf

    signature = [
        tf.TensorSpec([None, n_inputs], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.float32),
    ]
    return (
        tf.function(
            _TrainStep(model, optimizer, binary), input_signature=signature, autograph=False
        ),
        tf.function(_EvaluationStep(model, binary), input_signature=signature, autograph=False),
    )


class _EarlyStopping:
    """Track the lowest validation loss and keep a copy of the weights of that epoch.

    The weights are copied into new NumPy arrays: references to the live variables would
    follow later updates, and restoring them would keep the last epoch instead of the best.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch = -1
        self.epochs_without_improvement = 0
        self._best_weights: list[NDArray[Any]] | None = None

    def update(self, epoch: int, loss: float, model: Any) -> bool:
        """Record the validation loss of ``epoch`` and return whether training should stop."""
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
            self._best_weights = [np.array(w, copy=True) for w in model.get_weights()]
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement >= self.patience

    def restore(self, model: Any) -> None:
        """Set the weights of the best epoch on ``model``."""
        if self._best_weights is None:
            msg = (
                "Training diverged: the validation loss was never finite. Lower the learning "
                "rate or enable input standardisation."
            )
            raise InvalidModelError(msg)
        model.set_weights(self._best_weights)


def _train_member(
    *,
    index: int,
    store: _EventStore,
    splits: Sequence[_ClassSplit],
    n_outputs: int,
    settings: TrainingSettings,
    seed: np.random.SeedSequence,
    progress: bool,
) -> tuple[Any, MemberRecord]:
    keras = _import_keras()
    from tqdm.auto import tqdm

    bootstrap_seed, shuffle_seed, init_seed_sequence = seed.spawn(3)
    init_seed = int(init_seed_sequence.generate_state(1)[0]) & _SEED_MASK
    bootstrap_rng = np.random.default_rng(bootstrap_seed)
    shuffle_rng = np.random.default_rng(shuffle_seed)

    # Each member trains and validates on its own bootstrap resamples of the two splits.
    train_order = _bootstrap([s.train for s in splits], store.offsets, bootstrap_rng)
    validation = _bootstrap([s.validation for s in splits], store.offsets, bootstrap_rng)
    class_totals = store.class_totals(train_order)
    log_priors = np.log(class_totals / class_totals.sum())

    n_inputs = int(store.mean.shape[0])
    binary = n_outputs == 1
    model = _build_network(n_inputs, n_outputs, settings, seed=init_seed, name=_member_name(index))
    optimizer = keras.optimizers.Adam(learning_rate=settings.learning_rate)
    optimizer.build(model.trainable_variables)
    train_step, evaluation_step = _make_steps(model, optimizer, n_inputs, binary)

    stopper = _EarlyStopping(settings.patience)
    train_losses: list[float] = []
    validation_losses: list[float] = []
    epoch_seconds: list[float] = []
    batch = settings.batch_size
    stop = False
    bar = tqdm(
        total=settings.max_epochs,
        desc=f"member {index + 1}/{settings.n_members}",
        unit="epoch",
        disable=not progress,
        leave=False,
    )
    with bar:
        for epoch in range(settings.max_epochs):
            started = time.perf_counter()
            shuffle_rng.shuffle(train_order)
            loss_sum = 0.0
            weight_sum = 0.0
            for start in range(0, len(train_order), batch):
                # Sorting makes each class one contiguous slice of the batch for the gather.
                x, labels, weights = store.gather(np.sort(train_order[start : start + batch]))
                batch_weight = float(weights.sum())
                loss_sum += float(train_step(x, labels, weights)) * batch_weight
                weight_sum += batch_weight
            train_loss = loss_sum / weight_sum
            validation_loss = _evaluate(evaluation_step, store, validation)
            epoch_seconds.append(time.perf_counter() - started)
            train_losses.append(train_loss)
            validation_losses.append(validation_loss)

            stop = stopper.update(epoch, validation_loss, model)
            log.info(
                "member %d/%d epoch %d/%d: train loss %.6f, validation loss %.6f "
                "(best %.6f at epoch %d), %.1f s",
                index + 1,
                settings.n_members,
                epoch + 1,
                settings.max_epochs,
                train_loss,
                validation_loss,
                stopper.best_loss,
                stopper.best_epoch + 1,
                epoch_seconds[-1],
            )
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", validation=f"{validation_loss:.4f}")
            if stop:
                log.info(
                    "member %d: no lower validation loss for %d epochs; stopping",
                    index + 1,
                    settings.patience,
                )
                break
    if not stop:
        # NOTE: a member that is still improving at max_epochs may be undertrained. With few
        # events and the default batch size, an epoch is only a few gradient steps.
        log.warning(
            "member %d: training reached max_epochs=%d without an early stop (best validation "
            "loss at epoch %d, %d events per batch), so the network may be undertrained; raise "
            "max_epochs or lower batch_size",
            index + 1,
            settings.max_epochs,
            stopper.best_epoch + 1,
            settings.batch_size,
        )
    stopper.restore(model)
    log.info(
        "member %d: restored the weights of epoch %d (validation loss %.6f)",
        index + 1,
        stopper.best_epoch + 1,
        stopper.best_loss,
    )

    record = MemberRecord(
        index=index,
        init_seed=init_seed,
        log_priors=tuple(float(v) for v in log_priors),
        train_loss=tuple(train_losses),
        validation_loss=tuple(validation_losses),
        epoch_seconds=tuple(epoch_seconds),
        best_epoch=stopper.best_epoch,
    )
    return model, record


def _evaluate(evaluation_step: Any, store: _EventStore, indices: NDArray[np.integer[Any]]) -> float:
    """Return the weighted mean loss over the sorted global ``indices``."""
    loss_sum = 0.0
    weight_sum = 0.0
    for start in range(0, len(indices), _EVALUATION_BATCH):
        x, labels, weights = store.gather(indices[start : start + _EVALUATION_BATCH])
        loss_sum += float(evaluation_step(x, labels, weights))
        weight_sum += float(weights.sum())
    return loss_sum / weight_sum
