"""Event samples: the fiducial region, one biased simulation, and the simulations of a process.

This module is the entry point of the pipeline. Everything downstream (the topic model, the
pyhf and zfit adapters, the studies) receives its events through these three classes, so the
input checks live here and run once, at construction:

* :class:`Region`: named observables, box limits (the fiducial region) and, for the binned
  engine, a binning.
* :class:`Simulation`: the events of one biased simulation (an "MSD"), optional per-event
  weights, a name and the generator settings that produced it.
* :class:`SimulationSet`: the simulations of one process (signal, or a background).

Histograms are flattened in C order over the observables (the last observable varies fastest),
the same order as ``numpy.ravel`` of a boost-histogram view.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import boost_histogram as bh
import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidRegionError, InvalidSimulationError

__all__ = ["Region", "Simulation", "SimulationSet"]


def __dir__() -> list[str]:
    return __all__


def _describe_bad_values(values: NDArray[np.float64]) -> str:
    """Describe where the first non-finite entries of an array are, for error messages."""
    bad = np.argwhere(~np.isfinite(values))
    shown = ", ".join(f"{tuple(int(i) for i in idx)}={values[tuple(idx)]}" for idx in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{shown}{more}"


@dataclass(frozen=True)
class Region:
    """A box-shaped fiducial region in named observables, optionally binned.

    Args:
        observables: Names of the observables, in the column order of the event arrays.
        limits: ``(lower, upper)`` per observable, as a mapping from name or a sequence in the
            order of ``observables``. Both bounds are inside the region (closed box), so an
            event exactly on the boundary is kept.
        bins: Binning for the binned engine, per observable: a number of equal-width bins
            between the limits, or an increasing sequence of edges that starts at the lower
            and ends at the upper limit. ``None`` for an unbinned region.

    Raises:
        InvalidRegionError: If names repeat, a limit is not finite, a lower limit is not below
            its upper limit, or a binning does not match the limits.

    Examples:
        >>> region = Region(["x1", "x2"], {"x1": (-2, 2), "x2": (-2, 2)}, bins=10)
        >>> region.n_bins
        100
        >>> region.contains([[0.0, 2.0], [0.0, 2.1]]).tolist()
        [True, False]
    """

    observables: tuple[str, ...]
    limits: tuple[tuple[float, float], ...]
    edges: tuple[NDArray[np.float64], ...] | None = field(default=None, compare=False)

    def __init__(
        self,
        observables: Sequence[str],
        limits: Mapping[str, tuple[float, float]] | Sequence[tuple[float, float]],
        bins: int | Sequence[float] | Mapping[str, int | Sequence[float]] | None = None,
    ) -> None:
        names = (observables,) if isinstance(observables, str) else tuple(observables)
        if not names:
            msg = "Region needs at least one observable name; received an empty list."
            raise InvalidRegionError(msg)
        if len(set(names)) != len(names):
            msg = f"Observable names must be unique; received {list(names)}."
            raise InvalidRegionError(msg)

        box = self._parse_limits(names, limits)
        object.__setattr__(self, "observables", names)
        object.__setattr__(self, "limits", box)
        object.__setattr__(self, "edges", None if bins is None else self._parse_bins(bins))

    @staticmethod
    def _parse_limits(
        names: tuple[str, ...],
        limits: Mapping[str, tuple[float, float]] | Sequence[tuple[float, float]],
    ) -> tuple[tuple[float, float], ...]:
        if isinstance(limits, Mapping):
            missing = [name for name in names if name not in limits]
            extra = [key for key in limits if key not in names]
            if missing or extra:
                msg = (
                    f"Region limits must name exactly the observables {list(names)}; "
                    f"missing {missing}, unknown {extra}."
                )
                raise InvalidRegionError(msg)
            pairs = [limits[name] for name in names]
        else:
            pairs = list(limits)
            if len(pairs) != len(names):
                msg = (
                    f"Number of (lower, upper) pairs ({len(pairs)}) differs from the number of "
                    f"observables {list(names)}; give one pair per observable."
                )
                raise InvalidRegionError(msg)

        box = []
        for name, pair in zip(names, pairs, strict=True):
            try:
                lower, upper = (float(v) for v in pair)
            except (TypeError, ValueError) as err:
                msg = f"Limits of {name!r} must be a (lower, upper) pair of numbers; received {pair!r}."
                raise InvalidRegionError(msg) from err
            if not (math.isfinite(lower) and math.isfinite(upper)):
                msg = f"Limits of {name!r} must be finite; received ({lower}, {upper})."
                raise InvalidRegionError(msg)
            if lower >= upper:
                msg = (
                    f"Lower limit of {name!r} must be below its upper limit; received "
                    f"lower={lower} >= upper={upper}. Swap or correct the pair."
                )
                raise InvalidRegionError(msg)
            box.append((lower, upper))
        return tuple(box)

    def _parse_bins(
        self, bins: int | Sequence[float] | Mapping[str, int | Sequence[float]]
    ) -> tuple[NDArray[np.float64], ...]:
        if isinstance(bins, Mapping):
            missing = [name for name in self.observables if name not in bins]
            if missing:
                msg = (
                    f"Binning is missing for observables {missing}; give bins for every observable."
                )
                raise InvalidRegionError(msg)
            per_observable = [bins[name] for name in self.observables]
        elif isinstance(bins, int | np.integer):
            per_observable = [int(bins)] * len(self.observables)
        else:
            per_observable = [bins] * len(self.observables)

        edges = []
        for name, (lower, upper), spec in zip(
            self.observables, self.limits, per_observable, strict=True
        ):
            if isinstance(spec, int | np.integer):
                if spec < 1:
                    msg = f"Number of bins of {name!r} must be at least 1; received {spec}."
                    raise InvalidRegionError(msg)
                edges.append(np.linspace(lower, upper, int(spec) + 1))
                continue
            array = np.asarray(spec, dtype=np.float64)
            if array.ndim != 1 or array.size < 2 or np.any(np.diff(array) <= 0):
                msg = f"Bin edges of {name!r} must be a strictly increasing 1-D sequence; received {spec!r}."
                raise InvalidRegionError(msg)
            if not (np.isclose(array[0], lower) and np.isclose(array[-1], upper)):
                msg = (
                    f"Bin edges of {name!r} must span the region limits ({lower}, {upper}); "
                    f"received edges from {array[0]} to {array[-1]}."
                )
                raise InvalidRegionError(msg)
            edges.append(array)
        return tuple(edges)

    @property
    def n_observables(self) -> int:
        """Number of observables (columns of an event array)."""
        return len(self.observables)

    @property
    def is_binned(self) -> bool:
        """Whether the region carries a binning."""
        return self.edges is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """Number of bins per observable."""
        return tuple(len(e) - 1 for e in self._require_edges())

    @property
    def n_bins(self) -> int:
        """Total number of bins (the product of :attr:`shape`)."""
        return math.prod(self.shape)

    def _require_edges(self) -> tuple[NDArray[np.float64], ...]:
        if self.edges is None:
            msg = "This region has no binning; create it with Region(..., bins=...) to histogram events."
            raise InvalidRegionError(msg)
        return self.edges

    def with_bins(
        self, bins: int | Sequence[float] | Mapping[str, int | Sequence[float]]
    ) -> Region:
        """Return a copy of this region with another binning."""
        return Region(self.observables, self.limits, bins=bins)

    def check_events(self, events: ArrayLike, *, what: str = "events") -> NDArray[np.float64]:
        """Return ``events`` as a float64 array of shape ``(n, n_observables)``, or raise.

        Raises:
            InvalidSimulationError: If the array is empty, has the wrong number of columns, or
                contains NaN or infinite values.
        """
        return _as_event_array(events, n_columns=self.n_observables, what=what)

    def contains(self, events: ArrayLike) -> NDArray[np.bool_]:
        """Return a boolean mask of the events inside the closed box, shape ``(n,)``."""
        array = np.asarray(events, dtype=np.float64)
        if array.ndim == 1 and self.n_observables == 1:
            array = array[:, None]
        lower = np.array([lo for lo, _ in self.limits])
        upper = np.array([hi for _, hi in self.limits])
        mask: NDArray[np.bool_] = np.all((array >= lower) & (array <= upper), axis=1)
        return mask

    def axes(self) -> list[bh.axis.Variable]:
        """Boost-histogram axes of the binning, named after the observables, without flow bins."""
        return [
            bh.axis.Variable(e, metadata=name, underflow=False, overflow=False)
            for name, e in zip(self.observables, self._require_edges(), strict=True)
        ]

    def histogram(self, events: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.float64]:
        """Histogram the events inside the region; return the flattened counts, shape ``(n_bins,)``.

        Events outside the region are dropped. An event on the upper limit of the region falls
        into the last bin (the region is closed), unlike boost-histogram's half-open bins.
        """
        array = self.check_events(events)
        inside = self.contains(array)
        storage = bh.storage.Double() if weights is None else bh.storage.Weight()
        hist = bh.Histogram(*self.axes(), storage=storage)

        # NB: nudge values on an upper limit just below it so the closed region keeps them.
        selected = array[inside].copy()
        for column, e in enumerate(self._require_edges()):
            on_edge = selected[:, column] == e[-1]
            selected[on_edge, column] = np.nextafter(e[-1], -np.inf)
        if weights is None:
            hist.fill(*selected.T)
            return np.asarray(hist.view(), dtype=np.float64).ravel()
        hist.fill(*selected.T, weight=np.asarray(weights, dtype=np.float64)[inside])
        return np.asarray(hist.view().value, dtype=np.float64).ravel()  # type: ignore[union-attr]

    def bin_centers(self) -> tuple[NDArray[np.float64], ...]:
        """Bin centres per observable."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self._require_edges())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description of the region."""
        out: dict[str, Any] = {
            "observables": list(self.observables),
            "limits": [list(pair) for pair in self.limits],
        }
        if self.edges is not None:
            out["edges"] = [e.tolist() for e in self.edges]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Region:
        """Rebuild a region written by :meth:`to_dict`."""
        edges = data.get("edges")
        bins = None if edges is None else dict(zip(data["observables"], edges, strict=True))
        return cls(data["observables"], [tuple(p) for p in data["limits"]], bins=bins)


def _as_event_array(events: ArrayLike, *, n_columns: int | None, what: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(events, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{what} must be a numeric array of shape (n_events, n_observables); conversion failed: {err}"
        raise InvalidSimulationError(msg) from err
    if array.ndim == 1 and n_columns in (None, 1):
        array = array[:, None]
    if array.ndim != 2:
        msg = f"{what} must have shape (n_events, n_observables); received an array of shape {array.shape}."
        raise InvalidSimulationError(msg)
    if array.shape[0] == 0:
        msg = f"{what}: received an empty array; a sample needs at least one event."
        raise InvalidSimulationError(msg)
    if n_columns is not None and array.shape[1] != n_columns:
        msg = (
            f"{what} have {array.shape[1]} columns but {n_columns} observables were expected; "
            "pass one column per observable, in the order of the region's observables."
        )
        raise InvalidSimulationError(msg)
    if not np.all(np.isfinite(array)):
        msg = (
            f"{what} contain NaN or infinite values at (row, column) {_describe_bad_values(array)}; "
            "drop or fix these events before building the sample."
        )
        raise InvalidSimulationError(msg)
    return array


@dataclass(frozen=True, eq=False)
class Simulation:
    """One biased simulation of a process: its events and how they were generated.

    Args:
        events: Event array of shape ``(n_events, n_observables)`` (a 1-D array is one
            observable).
        weights: Optional per-event weights, shape ``(n_events,)``; finite and non-negative.
        name: A label, used in plots and saved models.
        settings: Generator settings that produced this simulation (free-form, JSON-friendly).
        observables: Optional observable names, in column order; when given, their number must
            match the columns.

    Raises:
        InvalidSimulationError: On empty, non-finite or wrongly shaped events, or on weights that
            are negative, NaN or of the wrong length.
    """

    events: NDArray[np.float64]
    weights: NDArray[np.float64] | None = None
    name: str = "simulation"
    settings: dict[str, Any] = field(default_factory=dict)
    observables: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n_columns = None if self.observables is None else len(self.observables)
        label = f"Simulation {self.name!r}: events"
        events = _as_event_array(self.events, n_columns=n_columns, what=label)
        object.__setattr__(self, "events", events)
        if self.observables is not None:
            object.__setattr__(self, "observables", tuple(self.observables))
        if self.weights is not None:
            object.__setattr__(self, "weights", self._check_weights(self.weights, len(events)))
        object.__setattr__(self, "settings", dict(self.settings))

    def _check_weights(self, weights: ArrayLike, n_events: int) -> NDArray[np.float64]:
        array = np.asarray(weights, dtype=np.float64)
        if array.shape != (n_events,):
            msg = (
                f"Simulation {self.name!r}: weights have shape {array.shape} but the simulation "
                f"has {n_events} events; give one weight per event."
            )
            raise InvalidSimulationError(msg)
        if np.any(np.isnan(array)):
            first = int(np.flatnonzero(np.isnan(array))[0])
            msg = f"Simulation {self.name!r}: weight of event {first} is NaN; weights must be numbers >= 0."
            raise InvalidSimulationError(msg)
        if np.any(array < 0) or np.any(np.isinf(array)):
            first = int(np.flatnonzero((array < 0) | np.isinf(array))[0])
            msg = (
                f"Simulation {self.name!r}: weight of event {first} is {array[first]}; weights must "
                "be finite and >= 0 (negative-weight generators need their events merged first)."
            )
            raise InvalidSimulationError(msg)
        return array

    @property
    def n_events(self) -> int:
        """Number of events (rows)."""
        return int(self.events.shape[0])

    def acceptance(self, region: Region) -> float:
        """Fraction of the (weighted) events inside ``region``."""
        inside = region.contains(region.check_events(self.events, what=f"Simulation {self.name!r}"))
        if self.weights is None:
            return float(np.mean(inside))
        return float(np.sum(self.weights[inside]) / np.sum(self.weights))

    def histogram(self, region: Region) -> NDArray[np.float64]:
        """Histogram of the events inside ``region``, flattened, shape ``(region.n_bins,)``."""
        region.check_events(self.events, what=f"Simulation {self.name!r}: events")
        return region.histogram(self.events, self.weights)


class SimulationSet(Sequence[Simulation]):
    """The biased simulations of one process (for example the signal).

    Args:
        simulations: The simulations; at least one, all with the same number of observables.
        process: Name of the process, for labels and error messages.

    Raises:
        InvalidSimulationError: If the set is empty or its simulations disagree on the number
            of observables.
    """

    def __init__(self, simulations: Sequence[Simulation], *, process: str = "process") -> None:
        sims = list(simulations)
        if not sims:
            msg = f"SimulationSet {process!r} received no simulations; give at least one."
            raise InvalidSimulationError(msg)
        widths = {sim.events.shape[1] for sim in sims}
        if len(widths) != 1:
            msg = (
                f"Simulations of {process!r} have different numbers of observables {sorted(widths)}; "
                "every simulation of a process must use the same columns."
            )
            raise InvalidSimulationError(msg)
        self._simulations = sims
        self.process = process

    def __len__(self) -> int:
        return len(self._simulations)

    def __getitem__(self, index: int) -> Simulation:  # type: ignore[override]
        return self._simulations[index]

    def __iter__(self) -> Iterator[Simulation]:
        return iter(self._simulations)

    def __repr__(self) -> str:
        return f"SimulationSet(process={self.process!r}, n_simulations={len(self)})"

    @property
    def names(self) -> list[str]:
        """Names of the simulations, in order."""
        return [sim.name for sim in self._simulations]

    def require_at_least(self, n: int, *, purpose: str) -> None:
        """Raise unless the set contains at least ``n`` simulations.

        Raises:
            InvalidSimulationError: Naming the process, the count and the purpose.
        """
        if len(self) < n:
            msg = (
                f"SimulationSet {self.process!r} holds {len(self)} simulations, but {purpose} "
                f"needs at least {n}. Add simulations or ask for fewer."
            )
            raise InvalidSimulationError(msg)

    def histograms(self, region: Region) -> NDArray[np.float64]:
        """Histogram every simulation in ``region``; shape ``(n_simulations, region.n_bins)``."""
        return np.stack([sim.histogram(region) for sim in self._simulations])

    def acceptances(self, region: Region) -> NDArray[np.float64]:
        """Fraction of each simulation's events inside ``region``; shape ``(n_simulations,)``."""
        return np.array([sim.acceptance(region) for sim in self._simulations])
