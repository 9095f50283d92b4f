"""Read event samples from ROOT files and write histograms and trees back, with uproot.

Where this sits in the pipeline: it is the first step of a file-based analysis. The readers
turn TTree (or RNTuple) branches into the event arrays and histograms that
:mod:`tamm.samples` and the binned engine use, and the writers store fitted shapes and event
samples for ROOT users.

Which function do I need?

- :func:`histogram_tree`: histogram the branches of a tree in a binned region, chunk by
  chunk, keeping only the histogram in memory. Use it for large simulation samples.
- :func:`read_tree`: the events inside a region, as an array of shape
  ``(n_selected, n_observables)``, read chunk by chunk so that only the selected rows are kept.
- :func:`list_trees`: the names of the trees in a file, optionally filtered by a glob pattern
  such as ``"msd_*"``.
- :func:`read_histogram`: one TH1 or TH2 as a :class:`hist.Hist`.
- :func:`write_histograms` and :func:`write_tree`: TH1D/TH2D histograms and TTrees.

The region cut is applied in numpy on every chunk, never through uproot's ``cut=`` argument,
because uproot 5.7 ignores ``cut=`` on RNTuples and returns every entry. Non-finite values
are rejected in every chunk, inside and outside the region, because an event with a NaN
coordinate cannot be placed inside or outside it.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tamm.exceptions import InputFileError, InvalidSimulationError
from tamm.samples import Region

__all__ = [
    "DEFAULT_STEP_SIZE",
    "InputFileError",
    "TreeHistogram",
    "TreeSelection",
    "histogram_tree",
    "list_trees",
    "read_histogram",
    "read_tree",
    "write_histograms",
    "write_tree",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

DEFAULT_STEP_SIZE = "50 MB"
"""Default chunk size of the readers: an uproot memory size per chunk, or a number of entries."""

# Classes that uproot reads as event tables. The check is on the class name because uproot
# models are generated per streamer version.
_TREE_CLASSES = ("TTree", "ROOT::RNTuple")
_HISTOGRAM_PREFIXES = ("TH1", "TH2", "TH3", "TProfile")


def _where(key: str | None) -> str:
    """Return a prefix naming the configuration key of a request, or nothing."""
    return f"{key}: " if key else ""


@contextmanager
def _open(path: str | Path, *, key: str | None = None) -> Iterator[Any]:
    """Open a ROOT file for reading, turning uproot's errors into :class:`InputFileError`."""
    import uproot

    source = Path(path)
    if not source.is_file():
        msg = (
            f"{_where(key)}ROOT file {str(source)!r} not found. Check the path; relative paths "
            "in a configuration file are resolved against the folder of that file."
        )
        raise InputFileError(msg)
    try:
        handle = uproot.open(source)
    except (OSError, ValueError) as err:
        msg = f"{_where(key)}could not open {str(source)!r} as a ROOT file: {err}"
        raise InputFileError(msg) from err
    with handle:
        yield handle


def _class_names(handle: Any) -> dict[str, str]:
    """Map each object name in a file (without cycle number) to its ROOT class name."""
    names: dict[str, str] = {}
    for name, class_name in handle.classnames().items():
        names.setdefault(name.rsplit(";", 1)[0], class_name)
    return names


def _tree_names(handle: Any) -> list[str]:
    return sorted(name for name, cls in _class_names(handle).items() if cls in _TREE_CLASSES)


def list_trees(path: str | Path, pattern: str = "*", *, key: str | None = None) -> list[str]:
    """List the trees (TTrees and RNTuples) of a ROOT file whose names match a glob pattern.

    Args:
        path: The ROOT file.
        pattern: A shell-style pattern (:mod:`fnmatch`), for example ``"msd_*"``.
        key: Configuration key of the request, used only in error messages.

    Returns:
        The matching names, sorted, without cycle numbers. Trees in sub-folders are listed with
        their path, such as ``"folder/events"``.

    Raises:
        InputFileError: If the file cannot be opened.
    """
    with _open(path, key=key) as handle:
        return [name for name in _tree_names(handle) if fnmatch.fnmatchcase(name, pattern)]


def _get_tree(handle: Any, path: str | Path, tree: str, key: str | None) -> Any:
    classes = _class_names(handle)
    if tree not in classes:
        msg = (
            f"{_where(key)}tree {tree!r} not found in {str(path)!r}; the file contains the trees "
            f"{_tree_names(handle)}."
        )
        raise InputFileError(msg)
    if classes[tree] not in _TREE_CLASSES:
        msg = (
            f"{_where(key)}{tree!r} in {str(path)!r} is a {classes[tree]}, not a TTree or "
            f"RNTuple; the file contains the trees {_tree_names(handle)}."
        )
        raise InputFileError(msg)
    return handle[tree]


def _check_branches(tree: Any, branches: Sequence[str], where: str, key: str | None) -> None:
    available = list(tree.keys())
    missing = [name for name in branches if name not in available]
    if missing:
        msg = (
            f"{_where(key)}branch {missing[0]!r} not found in {where}; its branches are "
            f"{available}. Check the observable or weight names."
        )
        raise InputFileError(msg)


def _check_finite(
    values: NDArray[np.float64], branch: str, first_entry: int, where: str, key: str | None
) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        entry = first_entry + int(bad[0])
        msg = (
            f"{_where(key)}branch {branch!r} of {where} has the value {values[bad[0]]} at entry "
            f"{entry} ({bad.size} non-finite values in entries {first_entry} to "
            f"{first_entry + values.size - 1}). Remove or fix these entries before the analysis."
        )
        raise InvalidSimulationError(msg)


@dataclass(frozen=True)
class _Chunk:
    """The selected rows of one chunk: events (n, n_observables) and weights (n,) or None."""

    events: NDArray[np.float64]
    weights: NDArray[np.float64] | None
    n_entries: int


def _iterate_selected(
    path: str | Path,
    tree: str,
    branches: Sequence[str],
    *,
    region: Region | None,
    weight: str | None,
    step_size: int | str,
    key: str | None,
) -> Iterator[_Chunk]:
    """Yield the rows of each chunk that lie inside ``region`` (all rows if it is None)."""
    names = list(branches)
    if not names:
        msg = (
            f"{_where(key)}no branches requested from tree {tree!r}; name at least one observable."
        )
        raise InputFileError(msg)
    if region is not None and tuple(names) != region.observables:
        msg = (
            f"{_where(key)}the branches {names} must be the region's observables "
            f"{list(region.observables)}, in the same order."
        )
        raise InputFileError(msg)
    requested = names + ([weight] if weight is not None and weight not in names else [])

    with _open(path, key=key) as handle:
        table = _get_tree(handle, path, tree, key)
        where = f"tree {tree!r} in {str(path)!r}"
        _check_branches(table, requested, where, key)
        for arrays, report in table.iterate(
            requested, step_size=step_size, library="np", report=True
        ):
            first_entry = int(report.tree_entry_start)
            columns = []
            for name in names:
                column = np.asarray(arrays[name], dtype=np.float64)
                _check_finite(column, name, first_entry, where, key)
                columns.append(column)
            events = np.column_stack(columns)
            weights = None
            if weight is not None:
                weights = np.asarray(arrays[weight], dtype=np.float64)
                _check_finite(weights, weight, first_entry, where, key)
                if np.any(weights < 0):
                    entry = first_entry + int(np.flatnonzero(weights < 0)[0])
                    msg = (
                        f"{_where(key)}weight branch {weight!r} of {where} is negative at entry "
                        f"{entry}; tamm needs weights >= 0."
                    )
                    raise InvalidSimulationError(msg)
            if region is not None:
                inside = region.contains(events)
                events = events[inside]
                weights = None if weights is None else weights[inside]
            yield _Chunk(events, weights, int(report.tree_entry_stop) - first_entry)


@dataclass(frozen=True)
class TreeSelection:
    """Events of a tree that passed the region cut.

    Attributes:
        events: Selected events, shape ``(n_selected, n_observables)``, float64.
        weights: Their weights, shape ``(n_selected,)``, or None for unweighted trees.
        n_entries: Number of entries read from the tree, before the cut.
    """

    events: NDArray[np.float64]
    weights: NDArray[np.float64] | None
    n_entries: int

    @property
    def n_selected(self) -> int:
        """Number of selected events."""
        return int(self.events.shape[0])

    @property
    def acceptance(self) -> float:
        """Fraction of the entries (unweighted) that passed the cut."""
        return self.n_selected / self.n_entries if self.n_entries else float("nan")


@dataclass(frozen=True)
class TreeHistogram:
    """Histogram of a tree's selected entries in a binned region.

    Attributes:
        counts: Sum of weights per bin, flattened in C order, shape ``(n_bins,)``.
        sumw2: Sum of squared weights per bin, shape ``(n_bins,)`` (equal to ``counts`` for
            unweighted trees).
        n_entries: Number of entries read from the tree, before the cut.
        n_selected: Number of entries inside the region.
    """

    counts: NDArray[np.float64]
    sumw2: NDArray[np.float64]
    n_entries: int
    n_selected: int

    @property
    def acceptance(self) -> float:
        """Fraction of the entries (unweighted) inside the region."""
        return self.n_selected / self.n_entries if self.n_entries else float("nan")


def _empty_selection_error(
    path: str | Path, tree: str, n_entries: int, region: Region | None, key: str | None
) -> InvalidSimulationError:
    if n_entries == 0:
        msg = f"{_where(key)}tree {tree!r} in {str(path)!r} has no entries."
        return InvalidSimulationError(msg)
    limits = (
        ""
        if region is None
        else ", ".join(
            f"{name} in [{lo:g}, {hi:g}]"
            for name, (lo, hi) in zip(region.observables, region.limits, strict=True)
        )
    )
    msg = (
        f"{_where(key)}none of the {n_entries} entries of tree {tree!r} in {str(path)!r} passes "
        f"the region cut ({limits}). Check the region limits against the branch values."
    )
    return InvalidSimulationError(msg)


def read_tree(
    path: str | Path,
    tree: str,
    branches: Sequence[str],
    *,
    region: Region | None = None,
    weight: str | None = None,
    step_size: int | str = DEFAULT_STEP_SIZE,
    key: str | None = None,
) -> TreeSelection:
    """Read the entries of a tree that lie inside a region, chunk by chunk.

    Only the selected rows of each chunk are kept, so a file larger than memory can be read
    when the selection fits.

    Args:
        path: The ROOT file.
        tree: Name of the TTree or RNTuple.
        branches: Branch names, one per column of the result. With a region they must be its
            observables, in order.
        region: Keep only entries inside this region; None keeps every entry.
        weight: Optional name of a branch of per-entry weights (finite and >= 0).
        step_size: Entries per chunk, or a memory size such as ``"50 MB"`` (uproot's
            ``step_size``).
        key: Configuration key of the request, used only in error messages.

    Returns:
        The selected events and weights, and the number of entries read.

    Raises:
        InputFileError: If the file, tree or a branch is missing, or the file is not ROOT.
        InvalidSimulationError: If a branch has a NaN or infinite value, a weight is negative,
            or no entry passes the cut.
    """
    chunks: list[_Chunk] = []
    n_entries = 0
    for chunk in _iterate_selected(
        path, tree, branches, region=region, weight=weight, step_size=step_size, key=key
    ):
        n_entries += chunk.n_entries
        if chunk.events.shape[0]:
            chunks.append(chunk)
    if not chunks:
        raise _empty_selection_error(path, tree, n_entries, region, key)

    events = np.concatenate([chunk.events for chunk in chunks])
    weights = None
    if weight is not None:
        weights = np.concatenate([chunk.weights for chunk in chunks if chunk.weights is not None])
    log.debug("read %d of %d entries of %s:%s", events.shape[0], n_entries, path, tree)
    return TreeSelection(events, weights, n_entries)


def histogram_tree(
    path: str | Path,
    tree: str,
    region: Region,
    *,
    weight: str | None = None,
    step_size: int | str = DEFAULT_STEP_SIZE,
    key: str | None = None,
) -> TreeHistogram:
    """Histogram the region's observables of a tree, chunk by chunk.

    Only the histogram is kept between chunks, so memory does not grow with the size of the
    tree. The branches are the region's observables.

    Args:
        path: The ROOT file.
        tree: Name of the TTree or RNTuple.
        region: A binned region; its observable names are the branch names.
        weight: Optional name of a branch of per-entry weights (finite and >= 0).
        step_size: Entries per chunk, or a memory size such as ``"50 MB"``.
        key: Configuration key of the request, used only in error messages.

    Returns:
        The flattened counts and sums of squared weights, shape ``(region.n_bins,)`` each, and
        the numbers of entries read and selected.

    Raises:
        InputFileError: If the file, tree or a branch is missing, or the file is not ROOT.
        InvalidSimulationError: If a branch has a NaN or infinite value, a weight is negative,
            or no entry passes the cut.
        InvalidRegionError: If the region has no binning.
    """
    counts = np.zeros(region.n_bins)
    sumw2 = np.zeros(region.n_bins)
    n_entries = n_selected = 0
    for chunk in _iterate_selected(
        path,
        tree,
        region.observables,
        region=region,
        weight=weight,
        step_size=step_size,
        key=key,
    ):
        n_entries += chunk.n_entries
        if not chunk.events.shape[0]:
            continue
        n_selected += chunk.events.shape[0]
        if chunk.weights is None:
            filled = region.histogram(chunk.events)
            counts += filled
            sumw2 += filled
        else:
            counts += region.histogram(chunk.events, chunk.weights)
            sumw2 += region.histogram(chunk.events, chunk.weights**2)
    if n_selected == 0:
        raise _empty_selection_error(path, tree, n_entries, region, key)
    log.debug("histogrammed %d of %d entries of %s:%s", n_selected, n_entries, path, tree)
    return TreeHistogram(counts, sumw2, n_entries, n_selected)


def read_histogram(path: str | Path, name: str, *, key: str | None = None) -> Any:
    """Read a TH1 or TH2 (or any histogram uproot converts) as a :class:`hist.Hist`.

    uproot names the axes ``"xaxis"``, ``"yaxis"`` and ``"zaxis"``; rename them to observable
    names before comparing with a region (see :func:`tamm.io.hists.region_from_hist`).

    Args:
        path: The ROOT file.
        name: Path of the histogram inside the file.
        key: Configuration key of the request, used only in error messages.

    Returns:
        A :class:`hist.Hist` with Weight storage.

    Raises:
        InputFileError: If the file or the histogram is missing, or the object is not a
            histogram.
    """
    with _open(path, key=key) as handle:
        classes = _class_names(handle)
        histograms = sorted(n for n, c in classes.items() if c.startswith(_HISTOGRAM_PREFIXES))
        if name not in classes:
            msg = (
                f"{_where(key)}histogram {name!r} not found in {str(path)!r}; the file contains "
                f"the histograms {histograms}."
            )
            raise InputFileError(msg)
        if not classes[name].startswith(_HISTOGRAM_PREFIXES):
            msg = (
                f"{_where(key)}{name!r} in {str(path)!r} is a {classes[name]}, not a histogram; "
                f"the file contains the histograms {histograms}."
            )
            raise InputFileError(msg)
        return handle[name].to_hist()


def write_histograms(
    path: str | Path, histograms: Mapping[str, Any], *, mode: str = "recreate"
) -> Path:
    """Write histograms to a ROOT file: 1-D as TH1D, 2-D as TH2D, more as a flattened TH1D.

    A histogram with three or more axes is flattened in C order (the last axis varies fastest)
    to a TH1D whose bins carry labels such as ``"a=[0,1) b=[2,3) c=[0,5)"``, because ROOT has
    no general N-dimensional histogram class that uproot 5.7 writes.

    Args:
        path: The ROOT file.
        histograms: Objects to write by path inside the file; ``"fits/signal"`` creates the
            folder ``fits``. Values are :class:`hist.Hist` or boost-histogram objects, or
            anything else uproot writes (a ``numpy.histogram`` tuple).
        mode: ``"recreate"`` to replace the file, ``"update"`` to add to it.

    Returns:
        The path written.

    Raises:
        InputFileError: If the file cannot be written, or ``mode`` is unknown.
    """
    import uproot

    from tamm.io.hists import flatten_hist

    opener = {"recreate": uproot.recreate, "update": uproot.update}.get(mode)
    if opener is None:
        msg = f"mode must be 'recreate' or 'update'; received {mode!r}."
        raise InputFileError(msg)
    destination = Path(path)
    try:
        with opener(destination) as handle:
            for name, histogram in histograms.items():
                n_axes = getattr(histogram, "ndim", None)
                written = (
                    flatten_hist(histogram) if n_axes is not None and n_axes > 2 else histogram
                )
                handle[name] = written
    except OSError as err:
        msg = f"could not write histograms to {str(destination)!r}: {err}"
        raise InputFileError(msg) from err
    log.info("wrote %d histograms to %s", len(histograms), destination)
    return destination


def write_tree(
    path: str | Path,
    name: str,
    chunks: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    mode: str = "recreate",
) -> Path:
    """Write arrays to a TTree, one chunk at a time.

    uproot 5.7 writes an RNTuple, not a TTree, when a dict is assigned to a file key, so this
    function creates the tree with ``mktree`` and appends each chunk with ``extend``.

    Args:
        path: The ROOT file.
        name: Name of the tree.
        chunks: One mapping of branch name to 1-D array, or an iterable of such mappings with
            the same branches and dtypes (for samples larger than memory).
        mode: ``"recreate"`` to replace the file, ``"update"`` to add to it.

    Returns:
        The path written.

    Raises:
        InputFileError: If there is no chunk, chunks disagree on their branches, arrays of one
            chunk differ in length, or the file cannot be written.
    """
    import uproot

    opener = {"recreate": uproot.recreate, "update": uproot.update}.get(mode)
    if opener is None:
        msg = f"mode must be 'recreate' or 'update'; received {mode!r}."
        raise InputFileError(msg)
    iterator = iter([chunks] if isinstance(chunks, Mapping) else chunks)
    first = next(iterator, None)
    if first is None or not first:
        msg = f"no data to write to tree {name!r}; give at least one branch with entries."
        raise InputFileError(msg)

    destination = Path(path)
    branches = {branch: np.asarray(values) for branch, values in first.items()}
    try:
        with opener(destination) as handle:
            tree = handle.mktree(
                name, {branch: values.dtype for branch, values in branches.items()}
            )
            n_written = 0
            for index, chunk in enumerate([branches, *iterator]):
                arrays = {branch: np.asarray(values) for branch, values in chunk.items()}
                if set(arrays) != set(branches):
                    msg = (
                        f"chunk {index} of tree {name!r} has the branches {sorted(arrays)}, but "
                        f"the first chunk has {sorted(branches)}; every chunk needs the same."
                    )
                    raise InputFileError(msg)
                lengths = {len(values) for values in arrays.values()}
                if len(lengths) != 1:
                    msg = (
                        f"chunk {index} of tree {name!r} has arrays of different lengths "
                        f"{sorted(lengths)}; every branch needs one value per entry."
                    )
                    raise InputFileError(msg)
                tree.extend(arrays)
                n_written += lengths.pop()
    except OSError as err:
        if isinstance(err, InputFileError):
            raise
        msg = f"could not write tree {name!r} to {str(destination)!r}: {err}"
        raise InputFileError(msg) from err
    log.info("wrote %d entries to tree %s in %s", n_written, name, destination)
    return destination
