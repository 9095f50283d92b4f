"""Histogram objects in and out of the binned engine: :class:`hist.Hist` and boost-histogram.

Where this sits in the pipeline: the binned engine works on flattened bin contents of a
binned :class:`~tamm.samples.Region` (C order, the last observable varying fastest). This
module converts between those arrays and histogram objects:

- :func:`region_from_hist` builds the region that a histogram's axes describe.
- :func:`counts_from_hist` returns a histogram's flattened contents after checking that its
  binning equals the region's.
- :class:`HistogramSet` contains the histograms of one process's simulations when they arrive
  as histograms instead of events. It offers the ``histograms`` and ``acceptances`` methods of
  :class:`~tamm.samples.SimulationSet`.
- :func:`hist_from_counts` makes a :class:`hist.Hist` with axes named after the observables,
  for fitted shapes and for writing to ROOT.
- :func:`flatten_hist` turns a histogram with any number of axes into a 1-D histogram with one
  labelled bin per original bin.

Flow bins: inputs may have them. They never enter a fit, and :class:`HistogramSet` uses them
only for the acceptance. Outputs have none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidRegionError, InvalidSimulationError
from tamm.samples import Region

__all__ = [
    "HistogramSet",
    "counts_from_hist",
    "flatten_hist",
    "hist_from_counts",
    "region_from_hist",
]


def __dir__() -> list[str]:
    return __all__


# Axis names that uproot gives to histograms read from ROOT files; they carry no observable name.
_GENERIC_AXIS_NAMES = ("", "xaxis", "yaxis", "zaxis")


def _axes(histogram: Any, what: str) -> list[Any]:
    axes = getattr(histogram, "axes", None)
    if axes is None or not hasattr(histogram, "view"):
        msg = (
            f"{what} must be a hist.Hist or boost_histogram.Histogram; received "
            f"{type(histogram).__name__}."
        )
        raise InvalidSimulationError(msg)
    return list(axes)


def _axis_name(axis: Any) -> str:
    name = getattr(axis, "name", None)
    if name is None:  # boost-histogram axes keep a name only in their metadata
        metadata = getattr(axis, "metadata", None)
        name = metadata if isinstance(metadata, str) else ""
    return str(name)


def _axis_edges(axis: Any, what: str, index: int) -> NDArray[np.float64]:
    edges = np.asarray(getattr(axis, "edges", []), dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)):
        msg = (
            f"axis {index} of {what} has no finite numeric bin edges (a category axis?); only "
            "Regular, Variable and Integer axes describe a region."
        )
        raise InvalidRegionError(msg)
    return edges


def region_from_hist(histogram: Any, observables: Sequence[str] | None = None) -> Region:
    """Build the binned region that a histogram's axes describe.

    Args:
        histogram: A :class:`hist.Hist` or boost-histogram object with numeric axes.
        observables: Observable names, one per axis. By default the axis names, which must then
            be set and not the generic ``xaxis``/``yaxis`` names of histograms read by uproot.

    Returns:
        The region whose limits are the outer edges of each axis and whose binning is the axis
        edges.

    Raises:
        InvalidRegionError: If the names are missing or repeat, or an axis has no numeric edges.

    Examples:
        >>> import hist
        >>> h = hist.Hist(hist.axis.Regular(4, 0, 2, name="x"), hist.axis.Regular(2, 0, 1, name="y"))
        >>> region_from_hist(h).shape
        (4, 2)
    """
    axes = _axes(histogram, "the histogram")
    if observables is None:
        names = [_axis_name(axis) for axis in axes]
        unnamed = [i for i, name in enumerate(names) if name in _GENERIC_AXIS_NAMES]
        if unnamed:
            msg = (
                f"axes {unnamed} of the histogram have no observable name (names {names}); pass "
                "observables=[...] or name the axes."
            )
            raise InvalidRegionError(msg)
    else:
        names = [observables] if isinstance(observables, str) else list(observables)
        if len(names) != len(axes):
            msg = (
                f"received {len(names)} observable names {names} for a histogram with "
                f"{len(axes)} axes; give one name per axis."
            )
            raise InvalidRegionError(msg)
    edges = [_axis_edges(axis, "the histogram", i) for i, axis in enumerate(axes)]
    limits = [(float(e[0]), float(e[-1])) for e in edges]
    return Region(
        names, limits, bins={name: e.tolist() for name, e in zip(names, edges, strict=True)}
    )


def _values_and_variances(
    histogram: Any, *, flow: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    view = histogram.view(flow=flow)
    fields = getattr(view, "dtype", np.dtype(np.float64)).names or ()
    if "value" in fields and "variance" in fields:
        return np.asarray(view["value"], np.float64), np.asarray(view["variance"], np.float64)
    if "sum_of_weights" in fields:  # Mean storages: the count of entries acts as the content
        values = np.asarray(view["sum_of_weights"], np.float64)
        return values, values.copy()
    values = np.asarray(view, dtype=np.float64)
    return values, values.copy()


def counts_from_hist(
    histogram: Any, region: Region, *, what: str = "histogram", check_names: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return a histogram's flattened bin contents and variances in a region's bin order.

    Args:
        histogram: A :class:`hist.Hist` or boost-histogram object whose axes follow the
            region's observables, in order.
        region: A binned region; the histogram's edges must equal its edges (to a relative
            1e-9).
        what: How to name the histogram in error messages.
        check_names: Whether named axes must carry the region's observable names. Generic names
            (empty, ``xaxis``, ``yaxis``, ``zaxis``) always pass.

    Returns:
        ``(counts, variances)``, each of shape ``(region.n_bins,)``, without flow bins.
        Storages without variances (Double, Int64) get variances equal to the counts.

    Raises:
        InvalidRegionError: If the number of axes, an axis name or the edges differ from the
            region.
        InvalidSimulationError: If a bin content is negative, NaN or infinite.
    """
    axes = _axes(histogram, what)
    if len(axes) != region.n_observables:
        msg = (
            f"{what} has {len(axes)} axes, but the region has {region.n_observables} observables "
            f"{list(region.observables)}; give one axis per observable."
        )
        raise InvalidRegionError(msg)
    region_edges = region.edges if region.edges is not None else ()
    for index, (axis, observable, expected) in enumerate(
        zip(axes, region.observables, region_edges, strict=True)
    ):
        name = _axis_name(axis)
        if check_names and name not in _GENERIC_AXIS_NAMES and name != observable:
            msg = (
                f"axis {index} of {what} is named {name!r}, but the region's observable "
                f"{index} is {observable!r}; order the axes as {list(region.observables)}."
            )
            raise InvalidRegionError(msg)
        edges = _axis_edges(axis, what, index)
        if edges.shape != expected.shape or not np.allclose(edges, expected, rtol=1e-9, atol=0):
            msg = (
                f"axis {index} ({observable!r}) of {what} has the edges {edges.tolist()}, but the "
                f"region has {expected.tolist()}; histogram with the region's binning (tamm does "
                "not rebin)."
            )
            raise InvalidRegionError(msg)

    values, variances = _values_and_variances(histogram, flow=False)
    counts = values.ravel()
    bad = np.flatnonzero(~np.isfinite(counts) | (counts < 0))
    if bad.size:
        msg = (
            f"{what} has the content {counts[bad[0]]} in flattened bin {int(bad[0])}; bin "
            "contents must be finite and >= 0."
        )
        raise InvalidSimulationError(msg)
    return counts, np.maximum(variances.ravel(), 0.0)


def _same_binning(first: Region, second: Region) -> bool:
    """Return whether two regions have the same observables, limits and bin edges."""
    # NB: Region equality ignores the edges, so they are compared here.
    if first != second or first.shape != second.shape:
        return False
    pairs = zip(first.edges or (), second.edges or (), strict=True)
    return all(np.array_equal(a, b) for a, b in pairs)


def _flow_acceptance(histogram: Any) -> float:
    """Fraction of the histogram's total (flow bins included) that lies inside its range."""
    inside, _ = _values_and_variances(histogram, flow=False)
    total, _ = _values_and_variances(histogram, flow=True)
    all_content = float(np.sum(total))
    return float(np.sum(inside)) / all_content if all_content > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class HistogramSet:
    """The simulations of one process, given as histograms in one binned region.

    This is the histogram-based counterpart of :class:`~tamm.samples.SimulationSet` for the
    binned engine: it offers :meth:`histograms`, :meth:`acceptances`, :meth:`require_at_least`,
    ``names`` and ``process``.

    Attributes:
        counts: Bin contents of each simulation, shape ``(n_simulations, n_bins)``.
        variances: Variances of the contents, shape ``(n_simulations, n_bins)``.
        region: The binned region of the histograms.
        names: A label per simulation.
        process: Name of the process.
        acceptance: Fraction of each simulation inside the region, shape ``(n_simulations,)``,
            from the flow bins of the input histograms (1 where they had none).
        settings: Generator settings per simulation (free-form).
    """

    counts: NDArray[np.float64]
    variances: NDArray[np.float64]
    region: Region
    names: list[str]
    process: str = "process"
    acceptance: NDArray[np.float64] = field(default_factory=lambda: np.ones(0))
    settings: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] != self.region.n_bins:
            msg = (
                f"HistogramSet {self.process!r} needs counts of shape (n_simulations, "
                f"{self.region.n_bins}); received {counts.shape}."
            )
            raise InvalidSimulationError(msg)
        empty = np.flatnonzero(counts.sum(axis=1) <= 0)
        if empty.size:
            msg = (
                f"histogram {int(empty[0])} of {self.process!r} has no entries inside the region; "
                "every simulation needs at least one event in it."
            )
            raise InvalidSimulationError(msg)
        if len(self.names) != counts.shape[0]:
            msg = (
                f"HistogramSet {self.process!r} has {counts.shape[0]} histograms but "
                f"{len(self.names)} names; give one name per histogram."
            )
            raise InvalidSimulationError(msg)
        acceptance = np.asarray(self.acceptance, dtype=np.float64)
        if acceptance.size == 0:
            acceptance = np.ones(counts.shape[0])
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "variances", np.asarray(self.variances, dtype=np.float64))
        object.__setattr__(self, "acceptance", acceptance)
        object.__setattr__(self, "names", list(self.names))
        settings = list(self.settings) or [{} for _ in self.names]
        object.__setattr__(self, "settings", settings)

    @classmethod
    def from_hists(
        cls,
        histograms: Sequence[Any],
        *,
        process: str = "process",
        names: Sequence[str] | None = None,
        region: Region | None = None,
    ) -> HistogramSet:
        """Build the set from :class:`hist.Hist` (or boost-histogram) objects.

        Args:
            histograms: One histogram per simulation, all with the same binning.
            process: Name of the process, for labels and messages.
            names: A label per histogram; by default ``hist.name`` where set, else
                ``"<process>_<index>"``.
            region: The binned region; by default the one the first histogram describes
                (:func:`region_from_hist`).

        Raises:
            InvalidSimulationError: If no histogram is given, one is not a histogram, has no
                entries inside the region, or has invalid contents.
            InvalidRegionError: If the binnings differ.

        Examples:
            >>> import hist, numpy as np
            >>> rng = np.random.default_rng(0)
            >>> hists = [hist.Hist(hist.axis.Regular(5, 0, 1, name="x")).fill(rng.random(100))
            ...          for _ in range(3)]
            >>> HistogramSet.from_hists(hists, process="signal").histograms().shape
            (3, 5)
        """
        items = list(histograms)
        if not items:
            msg = f"HistogramSet {process!r} received no histograms; give at least one."
            raise InvalidSimulationError(msg)
        if region is None:
            region = region_from_hist(items[0])
        counts, variances, acceptance, labels = [], [], [], []
        for index, histogram in enumerate(items):
            what = f"histogram {index} of {process!r}"
            values, errors = counts_from_hist(histogram, region, what=what)
            counts.append(values)
            variances.append(errors)
            acceptance.append(_flow_acceptance(histogram))
            label = getattr(histogram, "name", None)
            labels.append(str(label) if label else f"{process}_{index}")
        if names is not None:
            labels = [str(name) for name in names]
        return cls(
            np.stack(counts),
            np.stack(variances),
            region,
            labels,
            process=process,
            acceptance=np.asarray(acceptance),
        )

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __iter__(self) -> Iterator[NDArray[np.float64]]:
        return iter(self.counts)

    def __repr__(self) -> str:
        return f"HistogramSet(process={self.process!r}, n_simulations={len(self)})"

    def _check_region(self, region: Region | None) -> None:
        if region is None or _same_binning(region, self.region):
            return
        msg = (
            f"HistogramSet {self.process!r} was filled in the region {self.region.to_dict()}, "
            f"not in {region.to_dict()}; tamm does not rebin histograms."
        )
        raise InvalidRegionError(msg)

    def histograms(self, region: Region | None = None) -> NDArray[np.float64]:
        """Return the bin contents, shape ``(n_simulations, n_bins)``; ``region`` must match."""
        self._check_region(region)
        return self.counts.copy()

    def acceptances(self, region: Region | None = None) -> NDArray[np.float64]:
        """Return each simulation's fraction inside the region, shape ``(n_simulations,)``."""
        self._check_region(region)
        return self.acceptance.copy()

    def require_at_least(self, n: int, *, purpose: str) -> None:
        """Raise InvalidSimulationError unless the set contains at least ``n`` histograms."""
        if len(self) < n:
            msg = (
                f"HistogramSet {self.process!r} holds {len(self)} histograms, but {purpose} "
                f"needs at least {n}. Add histograms or ask for fewer."
            )
            raise InvalidSimulationError(msg)


def hist_from_counts(
    counts: ArrayLike,
    region: Region,
    *,
    variances: ArrayLike | None = None,
    name: str | None = None,
    label: str | None = None,
) -> Any:
    """Make a :class:`hist.Hist` of flattened bin contents, with axes named after the observables.

    Args:
        counts: Flattened contents in the region's bin order, shape ``(region.n_bins,)``.
        region: The binned region.
        variances: Optional variances, shape ``(region.n_bins,)``; with them the histogram has
            Weight storage, without them Double storage.
        name: Name of the histogram (``hist.Hist.name``).
        label: Label of the histogram (``hist.Hist.label``).

    Returns:
        A histogram with one Variable axis per observable, without flow bins.

    Raises:
        InvalidModelError: If the number of contents or variances differs from the number of
            bins.

    Examples:
        >>> region = Region(["x", "y"], [(0, 1), (0, 1)], bins=2)
        >>> h = hist_from_counts([1, 2, 3, 4], region)
        >>> [axis.name for axis in h.axes], h.values().tolist()
        (['x', 'y'], [[1.0, 2.0], [3.0, 4.0]])
    """
    import hist

    from tamm.exceptions import InvalidModelError

    values = np.asarray(counts, dtype=np.float64)
    if values.shape != (region.n_bins,):
        msg = (
            f"counts have shape {values.shape}, but the region has {region.n_bins} bins; give the "
            "flattened contents, shape (n_bins,)."
        )
        raise InvalidModelError(msg)
    axes = [
        hist.axis.Variable(
            edges, name=observable, label=observable, underflow=False, overflow=False
        )
        for observable, edges in zip(region.observables, region.edges or (), strict=True)
    ]
    storage = hist.storage.Double() if variances is None else hist.storage.Weight()
    histogram = hist.Hist(*axes, storage=storage, name=name, label=label)
    if variances is None:
        histogram.view()[...] = values.reshape(region.shape)
        return histogram
    errors = np.asarray(variances, dtype=np.float64)
    if errors.shape != values.shape:
        msg = f"variances have shape {errors.shape}, but counts have {values.shape}."
        raise InvalidModelError(msg)
    view: Any = histogram.view()
    view.value[...] = values.reshape(region.shape)
    view.variance[...] = errors.reshape(region.shape)
    return histogram


def _bin_label(axis: Any, index: int) -> str:
    low, high = axis.edges[index], axis.edges[index + 1]
    return f"{_axis_name(axis) or 'axis'}=[{low:g},{high:g})"


def flatten_hist(histogram: Any) -> Any:
    """Flatten a histogram with numeric axes into a 1-D histogram with labelled bins.

    The bins are in C order (the last axis varies fastest), the order of
    :meth:`tamm.samples.Region.histogram`. Each label lists the interval of every axis, for
    example ``"nconst=[10,20) ptd=[0.2,0.3)"``. Flow bins are dropped.

    Args:
        histogram: A :class:`hist.Hist` or boost-histogram object with numeric axes.

    Returns:
        A :class:`hist.Hist` with one string-category axis named ``"bin"``; Weight storage when
        the input has variances.

    Raises:
        InvalidRegionError: If an axis has no numeric edges.

    Examples:
        >>> import hist
        >>> h = hist.Hist(hist.axis.Regular(2, 0, 2, name="a"), hist.axis.Regular(2, 0, 1, name="b"))
        >>> list(flatten_hist(h).axes[0])[:2]
        ['a=[0,1) b=[0,0.5)', 'a=[0,1) b=[0.5,1)']
    """
    import hist

    axes = _axes(histogram, "the histogram")
    for index, axis in enumerate(axes):
        _axis_edges(axis, "the histogram", index)
    labels = [
        " ".join(_bin_label(axis, i) for axis, i in zip(axes, position, strict=True))
        for position in np.ndindex(*(len(axis) for axis in axes))
    ]
    values, variances = _values_and_variances(histogram, flow=False)
    flat = hist.Hist(
        hist.axis.StrCategory(labels, name="bin", label="bin"),
        storage=hist.storage.Weight(),
        name=getattr(histogram, "name", None),
        label=getattr(histogram, "label", None),
    )
    view: Any = flat.view()
    view.value[: len(labels)] = values.ravel()
    view.variance[: len(labels)] = variances.ravel()
    return flat
