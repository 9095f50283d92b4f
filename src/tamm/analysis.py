"""A configuration-driven analysis: ``tamm fit CONFIG``.

Where this sits in the pipeline: it joins the readers of :mod:`tamm.io`, the topic model of
:mod:`tamm.topics` and the pyhf adapter of :mod:`tamm.pyhf` into the main job, and writes the
results. With ``engines: [unbinned]`` (alone or beside ``binned``) it also runs the unbinned
engine of :mod:`tamm.unbinned_analysis` on the same data and writes its results into the same
files (methods ``tamm-unbinned`` and ``baseline-unbinned``). The binned engine's run does:

1. read the simulations of each process and the observed data (or draw pseudo-data) inside
   the binned region (:func:`prepare_inputs`);
2. learn ``n_topics`` topics per process, or reload the topics saved by an earlier run in the
   output folder (:func:`learn_or_load_topics`); saved topics are reused only when they were
   learned from the same histograms with the same settings;
3. fit kappa with the topic mixture (TAMM) and with one simulation per process as fixed
   templates (the baseline), and scan the profile likelihood of kappa for both
   (:func:`fit_binned`, :func:`profile_scan`);
4. write ``results.json``, ``fit.root``, ``fit.png`` and ``kappa_scan.png`` (:func:`run_analysis`).

For simulations and data that are already histograms, :func:`fit_hists` runs steps 2 and 3 on
:class:`hist.Hist` objects and returns fitted shapes as :class:`hist.Hist`.

Output files:

- ``results.json``: kappa, sigma, the profile-likelihood interval, fit status and yields per
  method, the true kappa of pseudo-data, the seeds, software versions and the resolved
  configuration.
- ``fit.root``: ``data`` (observed counts with Poisson variances) and, per method (``tamm_binned``,
  ``baseline``, and with the unbinned engine ``tamm_unbinned``, ``baseline_unbinned``), the folder ``<method>/`` with ``signal``, ``background`` and ``total``: the fitted
  expected counts, so each histogram sums to the fitted yield. With two observables these are
  TH2D, with one TH1D, and with more a TH1D over the flattened bins whose labels give each bin's
  intervals (C order, the last observable fastest).
- ``fit.png``: the observed data against each fitted mixture, and the fitted shapes against the
  spread of the simulations (:func:`tamm.plotting.plot_binned_fit`).
- ``kappa_scan.png``: the profile scans.
- ``topics_signal.json``, ``topics_background.json``: the topic fits and the fingerprint of the
  inputs they were learned from.
- ``ratio_models/`` (or ``unbinned.model_dir``): the saved ratio ensemble and baseline network of
  the unbinned engine.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm._version import __version__
from tamm.exceptions import (
    InvalidModelError,
    InvalidSimulationError,
    ModelFileError,
)
from tamm.io.config import AnalysisConfig, BaselineConfig, ConfigError, ScanConfig, SourceConfig
from tamm.io.hists import HistogramSet, counts_from_hist, hist_from_counts
from tamm.io.root import (
    InputFileError,
    histogram_tree,
    list_trees,
    read_histogram,
    read_tree,
    write_histograms,
)
from tamm.plotting import FittedShapes
from tamm.results import KappaFit
from tamm.samples import Region, SimulationSet
from tamm.topics import TopicFit

if TYPE_CHECKING:
    from tamm.unbinned_analysis import RatioModels

__all__ = [
    "AnalysisInputs",
    "AnalysisResult",
    "MethodResult",
    "ProfileScan",
    "fit_binned",
    "fit_hists",
    "learn_or_load_topics",
    "prepare_inputs",
    "profile_scan",
    "run_analysis",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

TAMM_METHOD = "tamm-binned"
BASELINE_METHOD = "baseline"

# Relative distance from a parameter bound at which a scan's start value is placed, because
# Minuit's transform for bounded parameters has a zero derivative at the bound itself.
_BOUND_MARGIN = 1e-4

# -2 ln(likelihood ratio) that bounds the 68.27 % profile-likelihood interval of one parameter.
_ONE_SIGMA_LEVEL = 1.0

_TOPICS_FORMAT = "tamm-topics"
_TOPICS_FORMAT_VERSION = 1

_VERSIONED_PACKAGES = (
    "numpy",
    "scipy",
    "pyhf",
    "iminuit",
    "uproot",
    "hist",
    "tensorflow",
    "pyyaml",
)

Progress = Callable[[str], None]

_DEFAULT_BASELINE = BaselineConfig()
_DEFAULT_SCAN = ScanConfig()


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class AnalysisInputs:
    """Histogrammed inputs of a binned analysis.

    Attributes:
        region: The binned region.
        simulations: The simulation histograms per process (``"signal"``, ``"background"``).
        observed: Observed counts, shape ``(n_bins,)``.
        data: Description of the data: source, number of events and, for pseudo-data, the
            drawn counts and the true kappa.
        simulation_info: Per process, one record per simulation: name, file, tree or
            histogram, entries read and selected, acceptance.
        data_events: The data events inside the region, shape ``(N, n_observables)``, when
            the data come from a tree or are pseudo-data; None for a data histogram. The
            unbinned engine fits these.
    """

    region: Region
    simulations: dict[str, HistogramSet]
    observed: NDArray[np.float64]
    data: dict[str, Any]
    simulation_info: dict[str, list[dict[str, Any]]]
    data_events: NDArray[np.float64] | None = None

    @property
    def kappa_true(self) -> float | None:
        """True signal fraction of pseudo-data inside the region; None for observed data."""
        value = self.data.get("kappa_true")
        return None if value is None else float(value)


@dataclass(frozen=True)
class _Entry:
    """One simulation or data input after glob expansion."""

    key: str
    file: Path
    tree: str | None
    histogram: str | None
    weight: str | None
    name: str
    settings: dict[str, Any]


def _expand(source: SourceConfig) -> list[_Entry]:
    """Expand the file glob and the ``trees`` pattern of an entry, in sorted order."""
    if glob.has_magic(str(source.file)):
        # NB: glob.glob, not Path.glob, because the pattern is an absolute path that may
        # contain wildcards in any folder.
        files = [Path(path) for path in sorted(glob.glob(str(source.file)))]  # noqa: PTH207
        if not files:
            msg = f"no file matches the pattern {str(source.file)!r}."
            raise InputFileError(f"{source.key}.file: {msg}")
    else:
        files = [source.file]

    entries = []
    for file in files:
        if not file.is_file():
            msg = (
                f"{source.key}.file: ROOT file {str(file)!r} not found. Check the path; relative "
                "paths are resolved against the folder of the configuration file."
            )
            raise InputFileError(msg)
        if source.trees is not None:
            names = list_trees(file, source.trees, key=f"{source.key}.trees")
            if not names:
                available = list_trees(file, key=f"{source.key}.trees")
                msg = (
                    f"{source.key}.trees: no tree in {str(file)!r} matches {source.trees!r}; "
                    f"the file contains the trees {available}."
                )
                raise InputFileError(msg)
        else:
            names = [source.tree or source.histogram or ""]
        for name in names:
            label = source.name if source.name and len(files) * len(names) == 1 else None
            entries.append(
                _Entry(
                    key=source.key,
                    file=file,
                    tree=name if source.histogram is None else None,
                    histogram=source.histogram,
                    weight=source.weight,
                    name=label or f"{file.stem}:{name}",
                    settings=dict(source.settings),
                )
            )
    return entries


def _read_counts(
    entry: _Entry, region: Region, step_size: int | str
) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, Any]]:
    """Histogram one entry in the region; return counts, variances and a record of the read."""
    record: dict[str, Any] = {"name": entry.name, "file": str(entry.file)}
    if entry.histogram is not None:
        key = f"{entry.key}.histogram"
        histogram = read_histogram(entry.file, entry.histogram, key=key)
        try:
            counts, variances = counts_from_hist(
                histogram, region, what=f"histogram {entry.histogram!r} in {str(entry.file)!r}"
            )
        except (InvalidModelError, InvalidSimulationError, ValueError) as err:
            raise InvalidSimulationError(f"{key}: {err}") from err
        record.update(histogram=entry.histogram, n_selected=float(counts.sum()))
        return counts, variances, record

    filled = histogram_tree(
        entry.file,
        entry.tree or "",
        region,
        weight=entry.weight,
        step_size=step_size,
        key=entry.key,
    )
    record.update(
        tree=entry.tree,
        n_entries=filled.n_entries,
        n_selected=filled.n_selected,
        acceptance=filled.acceptance,
    )
    if entry.weight is not None:
        record["weight"] = entry.weight
    return filled.counts, filled.sumw2, record


def _read_process(
    process: str, sources: Sequence[SourceConfig], region: Region, step_size: int | str
) -> tuple[HistogramSet, list[dict[str, Any]]]:
    entries = [entry for source in sources for entry in _expand(source)]
    counts, variances, records = [], [], []
    for entry in entries:
        values, errors, record = _read_counts(entry, region, step_size)
        counts.append(values)
        variances.append(errors)
        records.append({**record, "settings": entry.settings} if entry.settings else record)
        log.info("%s: %s, %d events in the region", process, entry.name, values.sum())
    names = [entry.name for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        msg = f"the simulations {repeated} are listed more than once; list each only once."
        raise ConfigError(f"processes.{process}.simulations", msg)
    acceptance = np.array([record.get("acceptance", 1.0) for record in records])
    histograms = HistogramSet(
        np.stack(counts),
        np.stack(variances),
        region,
        names,
        process=process,
        acceptance=acceptance,
        settings=[entry.settings for entry in entries],
    )
    return histograms, records


def _draw_pseudo_data(
    config: AnalysisConfig,
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """Draw pseudo-data events without replacement from the signal and background trees.

    The draw is among the events inside the region, so the true kappa of the events is
    exactly ``n_signal / n_events``. Returns the events (signal first) and a description.
    """
    settings = config.pseudo_data
    if settings is None:
        msg = "the configuration has no pseudo_data section to draw from."
        raise ConfigError("pseudo_data", msg)
    region = config.region
    pools = {}
    for process, source in (("signal", settings.signal), ("background", settings.background)):
        pools[process] = read_tree(
            source.file,
            source.tree or "",
            region.observables,
            region=region,
            step_size=config.step_size,
            key=source.key,
        ).events

    n_signal = round(settings.kappa * settings.n_events)
    wanted = {"signal": n_signal, "background": settings.n_events - n_signal}
    for process, n_wanted in wanted.items():
        available = pools[process].shape[0]
        if n_wanted > available:
            msg = (
                f"{n_wanted} {process} events are needed for kappa = {settings.kappa} and "
                f"n_events = {settings.n_events}, but only {available} {process} events lie inside "
                "the region; lower n_events or change kappa."
            )
            raise ConfigError("pseudo_data.n_events", msg)

    rng = np.random.default_rng(settings.seed)
    drawn = [
        pools[process][rng.choice(pools[process].shape[0], size=n_wanted, replace=False)]
        for process, n_wanted in wanted.items()
    ]
    events = np.concatenate(drawn)
    info = {
        "source": "pseudo_data",
        "n_events": int(settings.n_events),
        "n_signal": int(n_signal),
        "n_background": int(settings.n_events - n_signal),
        "kappa_requested": settings.kappa,
        "kappa_true": n_signal / settings.n_events,
        "seed": settings.seed,
        "pool_sizes": {process: int(pool.shape[0]) for process, pool in pools.items()},
    }
    return events, info


def prepare_inputs(config: AnalysisConfig) -> AnalysisInputs:
    """Read and histogram the simulations and the data that a configuration names.

    Args:
        config: A validated configuration.

    Returns:
        The histograms of every simulation and the observed (or pseudo-) data.

    Raises:
        InputFileError: If a file, tree, branch or histogram is missing.
        InvalidSimulationError: If a branch has non-finite values, or a tree has no entries
            inside the region.
        ConfigError: If pseudo-data need more events than the trees hold inside the region.
    """
    region = config.region
    simulations, records = {}, {}
    for process, sources in config.processes.items():
        simulations[process], records[process] = _read_process(
            process, sources, region, config.step_size
        )

    events = None
    if config.data is not None:
        (entry,) = _expand(config.data)
        if entry.histogram is None and entry.weight is None:
            selected = read_tree(
                entry.file,
                entry.tree or "",
                region.observables,
                region=region,
                step_size=config.step_size,
                key=entry.key,
            )
            events = selected.events
            observed = region.histogram(events)
            data = {
                "source": "data",
                "name": entry.name,
                "file": str(entry.file),
                "tree": entry.tree,
                "n_entries": selected.n_entries,
                "n_selected": selected.n_selected,
                "acceptance": selected.n_selected / max(selected.n_entries, 1),
                "n_events": float(observed.sum()),
            }
        else:
            observed, _, record = _read_counts(entry, region, config.step_size)
            data = {"source": "data", **record, "n_events": float(observed.sum())}
    else:
        events, data = _draw_pseudo_data(config)
        observed = region.histogram(events)
    return AnalysisInputs(region, simulations, observed, data, records, events)


# ---------------------------------------------------------------------------------------------
# Topics


def _fingerprint(
    histograms: HistogramSet, n_topics: int, seed: int, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Describe what a topic fit was learned from, to decide whether a saved fit can be reused."""
    digest = hashlib.sha256(np.ascontiguousarray(histograms.counts).tobytes()).hexdigest()
    return {
        "region": histograms.region.to_dict(),
        "simulations": list(histograms.names),
        "counts_sha256": digest,
        "n_topics": int(n_topics),
        "seed": int(seed),
        "options": dict(sorted(options.items())),
    }


def _describe_change(name: str, saved: Any, now: Any) -> str:
    """Describe how one fingerprint entry changed, naming list entries instead of cutting text."""
    if isinstance(saved, list) and isinstance(now, list):
        removed = [item for item in saved if item not in now]
        added = [item for item in now if item not in saved]
        if removed or added:
            return f"{name}: {len(saved)} saved, {len(now)} now (removed {removed}, added {added})"
        return f"{name}: the same {len(now)} entries in another order"
    return f"{name}: saved {saved!r:.80}, now {now!r:.80}"


def _load_topics(path: Path, expected: Mapping[str, Any]) -> TopicFit:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"could not read the saved topics {str(path)!r}: {err}. Rerun with --retrain."
        raise ModelFileError(msg) from err
    if not isinstance(stored, dict) or stored.get("format") != _TOPICS_FORMAT:
        msg = f"{str(path)!r} is not a tamm topics file. Remove it or rerun with --retrain."
        raise ModelFileError(msg)
    saved = stored.get("fingerprint", {})
    changed = [name for name in expected if saved.get(name) != expected[name]]
    if changed:
        details = "; ".join(
            _describe_change(name, saved.get(name), expected[name]) for name in changed
        )
        msg = (
            f"the topics saved in {str(path)!r} were learned from other inputs or settings "
            f"({details}). Rerun with --retrain to learn them again, or choose another output_dir."
        )
        raise ModelFileError(msg)
    try:
        return TopicFit.from_dict(stored["fit"])
    except (KeyError, TypeError, InvalidModelError) as err:
        msg = f"the saved topics in {str(path)!r} are damaged ({err}). Rerun with --retrain."
        raise ModelFileError(msg) from err


def learn_or_load_topics(
    simulations: Mapping[str, HistogramSet],
    *,
    n_topics: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
    directory: str | Path | None = None,
    retrain: bool = False,
) -> dict[str, tuple[TopicFit, bool]]:
    """Learn topics per process, or reload those saved in ``directory`` by an earlier run.

    A saved fit is reused only if it was learned from histograms with identical contents,
    region and simulation names, with the same ``n_topics``, ``seed`` and options; otherwise
    this raises instead of silently learning again.

    Args:
        simulations: The simulation histograms per process.
        n_topics: Topics per process.
        seed: Seed of the topic model; process ``i`` (in mapping order) uses ``seed + i``.
        options: Further :class:`~tamm.topics.TopicModel` options.
        directory: Folder of ``topics_<process>.json``; None neither reads nor writes files.
        retrain: Learn the topics even if saved ones exist, and overwrite them.

    Returns:
        Per process, ``(fit, reloaded)``.

    Raises:
        ConfigError: If a process has fewer simulations than ``n_topics``.
        ModelFileError: If a saved file is damaged or was learned from other inputs.

    Warns:
        ConvergenceWarning: If a topic fit did not converge.
    """
    from tamm.topics import TopicModel

    extra = dict(options or {})
    fits = {}
    for offset, (process, histograms) in enumerate(simulations.items()):
        if len(histograms) < n_topics:
            msg = (
                f"asks for {n_topics} topics per process, but {process!r} has only "
                f"{len(histograms)} simulations; use at most {len(histograms)} topics or add "
                "simulations."
            )
            raise ConfigError("binned.n_topics", msg)
        process_seed = seed + offset
        expected = _fingerprint(histograms, n_topics, process_seed, extra)
        path = None if directory is None else Path(directory) / f"topics_{process}.json"
        if path is not None and path.exists() and not retrain:
            fits[process] = (_load_topics(path, expected), True)
            log.info("reloaded the %s topics from %s", process, path)
            continue

        fit = TopicModel(n_topics, seed=process_seed, **extra).fit(histograms.counts)
        fits[process] = (fit, False)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "format": _TOPICS_FORMAT,
                "format_version": _TOPICS_FORMAT_VERSION,
                "tamm_version": __version__,
                "process": process,
                "fingerprint": expected,
                "fit": fit.to_dict(),
            }
            path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            log.info("saved the %s topics to %s", process, path)
    return fits


# ---------------------------------------------------------------------------------------------
# Fits and scans


@dataclass(frozen=True)
class ProfileScan:
    """Profile likelihood of kappa on a grid, the other parameters refitted at every point.

    Attributes:
        kappa: Scanned values, shape ``(n_points,)``, increasing.
        delta_twice_nll: ``-2 ln(L(kappa) / L_max)``, shape ``(n_points,)``; L_max is the best
            of the global fit and the scan points.
        converged: Whether Migrad converged at each point, shape ``(n_points,)``: its estimated
            distance to the minimum met the goal within the call limit. A failed Hesse step
            alone does not count as a failure, because kappa at a bound leaves the topic
            weights of one process without effect.
    """

    kappa: NDArray[np.float64]
    delta_twice_nll: NDArray[np.float64]
    converged: NDArray[np.bool_]

    def interval(self, level: float = _ONE_SIGMA_LEVEL) -> tuple[float, float]:
        """Return the kappa values where the scan crosses ``level``, by linear interpolation.

        The default level 1 gives the 68.27 % profile-likelihood interval. A side on which the
        scan stays below ``level`` up to the physical bound 0 or 1 returns that bound (a
        one-sided interval). A side that stays below ``level`` up to the end of a scan that
        does not reach the bound returns NaN: widen the scan.

        Returns:
            ``(lower, upper)``.
        """
        values = np.where(self.converged, self.delta_twice_nll, np.nan)
        best = int(np.nanargmin(values))
        lower = self._crossing(values, best, -1, level)
        upper = self._crossing(values, best, 1, level)
        return lower, upper

    def _crossing(self, values: NDArray[np.float64], start: int, step: int, level: float) -> float:
        index = start
        while 0 <= index + step < values.size:
            nxt = index + step
            if np.isnan(values[nxt]):
                index = nxt
                continue
            if values[nxt] >= level:
                x0, x1 = self.kappa[index], self.kappa[nxt]
                y0, y1 = values[index], values[nxt]
                return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))
            index = nxt
        edge = float(self.kappa[index])
        bound = 0.0 if step < 0 else 1.0
        return bound if math.isclose(edge, bound, abs_tol=1e-12) else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record."""
        return {
            "kappa": self.kappa.tolist(),
            "delta_twice_nll": [
                None if not math.isfinite(v) else float(v) for v in self.delta_twice_nll
            ],
            "converged": [bool(v) for v in self.converged],
        }


def _parameter_vector(model: Any, parameters: Mapping[str, Any]) -> NDArray[np.float64]:
    values = np.asarray(model.config.suggested_init(), dtype=np.float64)
    for name, value in parameters.items():
        values[model.config.par_slice(name)] = value
    return values


def profile_scan(model: Any, data: ArrayLike, fit: KappaFit, grid: ArrayLike) -> ProfileScan:
    """Scan the profile likelihood of kappa: fix kappa at each grid value and refit the rest.

    Migrad minimises pyhf's ``twice_nll`` on the numpy backend with kappa fixed. The scan
    walks outwards from the best fit in both directions, starting each point from the
    parameters of its neighbour, which keeps the topic weights on the same branch of the
    likelihood.

    Args:
        model: A pyhf model with kappa as POI, such as from
            :func:`tamm.pyhf.model_and_data`.
        data: Observed counts followed by the auxiliary data, shape ``(n_bins + n_aux,)``.
        fit: The global fit of the same model and data (:func:`tamm.pyhf.fit_kappa`).
        grid: Values of kappa, shape ``(n_points,)``; sorted and made unique here.

    Returns:
        The scan.
    """
    import iminuit
    import pyhf

    from tamm.pyhf import use_numpy_backend

    kappas = np.unique(np.asarray(grid, dtype=np.float64))
    poi = model.config.poi_index
    bounds = np.asarray(model.config.suggested_bounds(), dtype=np.float64)
    margin = _BOUND_MARGIN * (bounds[:, 1] - bounds[:, 0])
    best = _parameter_vector(model, fit.parameters)
    twice_nll = np.full(kappas.size, np.nan)
    converged = np.zeros(kappas.size, dtype=bool)

    with use_numpy_backend():
        tensorlib, _ = pyhf.get_backend()
        observed = tensorlib.astensor(np.asarray(data, dtype=np.float64))

        def objective(pars: NDArray[np.float64]) -> float:
            return float(pyhf.infer.mle.twice_nll(tensorlib.astensor(pars), observed, model)[0])

        reference = objective(best)
        start_index = int(np.searchsorted(kappas, fit.kappa))
        for order in (range(start_index, kappas.size), range(start_index - 1, -1, -1)):
            previous = best.copy()
            for index in order:
                start = np.clip(previous, bounds[:, 0] + margin, bounds[:, 1] - margin)
                start[poi] = kappas[index]
                minuit = iminuit.Minuit(objective, start, name=model.config.par_names)
                minuit.errordef = iminuit.Minuit.LEAST_SQUARES  # the objective is twice the NLL
                minuit.limits = model.config.suggested_bounds()
                minuit.fixed = model.config.suggested_fixed()
                minuit.fixed[poi] = True
                minuit.strategy = 1
                minuit.migrad()
                fmin = minuit.fmin
                twice_nll[index] = float(minuit.fval)
                # NB: at kappa = 0 (or 1) the signal (background) topic weights have no effect,
                # so Hesse fails and Migrad marks the minimum invalid although the EDM is met.
                converged[index] = bool(
                    fmin.is_valid or not (fmin.is_above_max_edm or fmin.has_reached_call_limit)
                )
                if converged[index]:
                    previous = np.asarray(minuit.values, dtype=np.float64)

    minimum = min(
        reference, float(np.nanmin(np.where(converged, twice_nll, np.nan), initial=np.inf))
    )
    if not np.all(converged):
        log.warning(
            "profile scan of %s: Migrad failed at kappa = %s; those points are left out of the "
            "interval",
            fit.method,
            kappas[~converged].tolist(),
        )
    return ProfileScan(kappas, twice_nll - minimum, converged)


def _scan_grid(fit: KappaFit, settings: ScanConfig) -> NDArray[np.float64]:
    """Grid of ``settings.points`` values around the fitted kappa, clipped to [0, 1]."""
    # NOTE: without a usable sigma the half-width falls back to width * 0.125, a guess that
    # may be too narrow for the interval; the interval then has NaN on the open side.
    sigma = fit.sigma if math.isfinite(fit.sigma) and fit.sigma > 0 else 0.125
    low = max(0.0, fit.kappa - settings.width * sigma)
    high = min(1.0, fit.kappa + settings.width * sigma)
    grid: NDArray[np.float64] = np.union1d(np.linspace(low, high, settings.points), [fit.kappa])
    return grid


@dataclass(frozen=True)
class MethodResult:
    """One fitted method: kappa, the fitted shapes and the profile scan.

    Attributes:
        fit: The maximum-likelihood fit.
        region: The binned region of the shapes.
        signal: Fitted expected signal counts, shape ``(n_bins,)``; sums to the signal yield.
        background: Fitted expected background counts, shape ``(n_bins,)``.
        scan: The profile scan of kappa, or None when it was not run.
        details: Method-specific information, such as the baseline simulations.
    """

    fit: KappaFit
    region: Region
    signal: NDArray[np.float64]
    background: NDArray[np.float64]
    scan: ProfileScan | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> NDArray[np.float64]:
        """Fitted expected counts of both processes, shape ``(n_bins,)``."""
        return self.signal + self.background

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 68.27 % profile-likelihood interval of kappa, or None without a scan."""
        return None if self.scan is None else self.scan.interval()

    def shapes(self) -> FittedShapes:
        """Return the shapes in the form :func:`tamm.plotting.plot_binned_fit` draws."""
        return FittedShapes(self.signal, self.background, self.fit.kappa, self.fit.sigma)

    def to_hists(self) -> dict[str, Any]:
        """Return the fitted ``signal``, ``background`` and ``total`` as :class:`hist.Hist`.

        The axes are named after the region's observables, and each histogram sums to its
        fitted yield.
        """
        label = f"{self.fit.method}, kappa = {self.fit.kappa:.4f}"
        return {
            part: hist_from_counts(values, self.region, name=part, label=f"fitted {part} ({label})")
            for part, values in (
                ("signal", self.signal),
                ("background", self.background),
                ("total", self.total),
            )
        }

    def to_dict(self, kappa_true: float | None = None) -> dict[str, Any]:
        """Return a JSON-friendly record; with ``kappa_true`` it includes the pull."""
        record = self.fit.to_dict()
        interval = self.interval
        record["interval_68"] = None if interval is None else [_json_float(v) for v in interval]
        record["sigma"] = _json_float(self.fit.sigma)
        record["nll"] = _json_float(self.fit.nll)
        record["yields"] = {
            "signal": float(self.signal.sum()),
            "background": float(self.background.sum()),
            "total": float(self.total.sum()),
        }
        if kappa_true is not None:
            record["pull"] = _json_float(self.fit.pull(kappa_true))
        record.update(self.details)
        if self.scan is not None:
            record["scan"] = self.scan.to_dict()
        return record


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _shapes_of(model: Any, fit: KappaFit) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Expected signal and background counts of a pyhf model at the fitted parameters."""
    values = _parameter_vector(model, fit.parameters)
    by_sample = np.asarray(model.main_model.expected_data(values, return_by_sample=True))
    samples = model.config.samples
    signal = np.asarray(by_sample[samples.index("signal")], dtype=np.float64).ravel()
    background = np.asarray(by_sample[samples.index("background")], dtype=np.float64).ravel()
    return signal, background


def _choose(histograms: HistogramSet | SimulationSet, choice: int | str, key: str) -> int:
    if isinstance(choice, str):
        if choice not in histograms.names:
            msg = f"no {histograms.process} simulation is named {choice!r}; the names are {histograms.names}."
            raise ConfigError(key, msg)
        return histograms.names.index(choice)
    if not 0 <= choice < len(histograms):
        msg = (
            f"simulation index {choice} is out of range; {histograms.process!r} has "
            f"{len(histograms)} simulations (indices 0 to {len(histograms) - 1})."
        )
        raise ConfigError(key, msg)
    return choice


def fit_binned(
    simulations: Mapping[str, HistogramSet],
    observed: ArrayLike,
    topics: Mapping[str, TopicFit],
    *,
    baseline: BaselineConfig = _DEFAULT_BASELINE,
    scan: ScanConfig | None = _DEFAULT_SCAN,
    progress: Progress | None = None,
    jackknife: bool = True,
    topic_options: Mapping[str, Any] | None = None,
) -> dict[str, MethodResult]:
    """Fit kappa with the topic mixture (TAMM) and with the single-simulation baseline.

    Args:
        simulations: Simulation histograms of ``"signal"`` and ``"background"``, in one region.
        observed: Observed counts in that region, shape ``(n_bins,)``.
        topics: The topic fit of each process.
        baseline: Which simulation of each process the baseline uses, and the pseudo-count
            added to each of its bins.
        scan: Settings of the profile scans; None skips them.
        progress: Called with a short description before each fit.
        jackknife: Also estimate the spread of TAMM's kappa from the choice of simulations
            (:func:`tamm.inference.jackknife_binned`; one topic fit and one kappa fit per
            simulation). It is skipped, with a log message, when a process has fewer than 3
            simulations or fewer than ``n_topics + 1``.
        topic_options: The :class:`~tamm.topics.TopicModel` options of the topic fits, used
            again by the jackknife.

    Returns:
        The results of ``"tamm-binned"`` and ``"baseline"``. With the jackknife, TAMM's
        ``details["simulation_uncertainty"]`` has ``sigma_simulations`` and ``sigma_total``.

    Raises:
        ConfigError: If the baseline simulation does not exist.
        InvalidModelError: If the histograms do not fit the observed binning.

    Warns:
        ConvergenceWarning: If a fit did not converge.
    """
    from tamm.pyhf import baseline_spec, build_workspace, fit_kappa, model_and_data, tamm_spec

    counts = np.asarray(observed, dtype=np.float64)
    signal_set, background_set = simulations["signal"], simulations["background"]
    region = signal_set.region
    chosen = {
        "signal": _choose(signal_set, baseline.signal, "baseline.simulation.signal"),
        "background": _choose(
            background_set, baseline.background, "baseline.simulation.background"
        ),
    }
    specs = {
        TAMM_METHOD: tamm_spec(topics["signal"].topics, topics["background"].topics, counts),
        BASELINE_METHOD: baseline_spec(
            signal_set.counts[chosen["signal"]] + baseline.prior,
            background_set.counts[chosen["background"]] + baseline.prior,
            counts,
        ),
    }
    details: dict[str, dict[str, Any]] = {
        TAMM_METHOD: {"n_topics": {p: int(t.topics.shape[0]) for p, t in topics.items()}},
        BASELINE_METHOD: {
            "simulations": {
                "signal": signal_set.names[chosen["signal"]],
                "background": background_set.names[chosen["background"]],
            },
            "prior": baseline.prior,
        },
    }

    results = {}
    for method, spec in specs.items():
        if progress is not None:
            progress(f"fitting kappa ({method})")
        model, data = model_and_data(build_workspace(spec))
        fit = fit_kappa(model, data, method=method)
        signal, background = _shapes_of(model, fit)
        profile = None
        if scan is not None and fit.converged:
            profile = profile_scan(model, data, fit, _scan_grid(fit, scan))
        if method == TAMM_METHOD and jackknife and fit.converged:
            extra = _binned_jackknife(simulations, topics, counts, fit, topic_options, progress)
            if extra is not None:
                details[method]["simulation_uncertainty"] = extra
        results[method] = MethodResult(fit, region, signal, background, profile, details[method])
        log.info("%s: kappa = %.5f +- %.5f (%s)", method, fit.kappa, fit.sigma, fit.message)
    return results


def _binned_jackknife(
    simulations: Mapping[str, HistogramSet],
    topics: Mapping[str, TopicFit],
    observed: NDArray[np.float64],
    fit: KappaFit,
    options: Mapping[str, Any] | None,
    progress: Progress | None,
) -> dict[str, Any] | None:
    """Run the jackknife over the simulations where there are enough of them."""
    from tamm.inference.jackknife import jackknife_binned

    for process, fitted in topics.items():
        n_simulations = len(simulations[process])
        if n_simulations < 3 or n_simulations - 1 < fitted.n_topics:
            log.info(
                "no jackknife over the simulations: %s has %d simulations for %d topics (it "
                "needs at least 3 and one more than the topics)",
                process,
                n_simulations,
                fitted.n_topics,
            )
            return None
    if progress is not None:
        progress("jackknife over the simulations (tamm-binned)")
    jackknife = jackknife_binned(
        {process: histograms.counts for process, histograms in simulations.items()},
        topics,
        observed,
        fit,
        options=options,
    )
    if not jackknife.all_converged:
        log.warning(
            "tamm-binned: %d of %d leave-one-out fits of the jackknife did not converge; "
            "sigma_simulations comes from the others",
            int(np.sum(~jackknife.converged)),
            jackknife.converged.size,
        )
    return {
        "method": "delete-one jackknife over the simulations, topics learned again",
        **jackknife.to_dict(),
    }


def fit_hists(
    signal: Sequence[Any],
    background: Sequence[Any],
    data: Any,
    *,
    n_topics: int = 3,
    seed: int = 0,
    baseline: int | str = 0,
    baseline_prior: float = 1.0,
    scan: ScanConfig | None = None,
    topic_options: Mapping[str, Any] | None = None,
) -> dict[str, MethodResult]:
    """Fit kappa from histograms: simulations per process and the observed data as :class:`hist.Hist`.

    Args:
        signal: One histogram per signal simulation; all with the same named axes and edges.
        background: One histogram per background simulation, with the same binning.
        data: The observed histogram, with the same binning.
        n_topics: Topics per process.
        seed: Seed of the topic model (the background uses ``seed + 1``).
        baseline: Index or name of the simulation of each process that the baseline uses.
        baseline_prior: Pseudo-count added to each bin of the baseline templates.
        scan: Settings of the profile scans; None (the default) skips them.
        topic_options: Further :class:`~tamm.topics.TopicModel` options.

    Returns:
        The results of ``"tamm-binned"`` and ``"baseline"``; :meth:`MethodResult.to_hists`
        gives the fitted shapes as :class:`hist.Hist`.

    Raises:
        InvalidRegionError: If the binnings differ.
        InvalidSimulationError: If a histogram has invalid contents.
        ConfigError: If a process has fewer histograms than ``n_topics``, or the baseline
            simulation does not exist.
    """
    signal_set = HistogramSet.from_hists(signal, process="signal")
    region = signal_set.region
    background_set = HistogramSet.from_hists(background, process="background", region=region)
    observed, _ = counts_from_hist(data, region, what="the data histogram")
    simulations = {"signal": signal_set, "background": background_set}
    topics = learn_or_load_topics(simulations, n_topics=n_topics, seed=seed, options=topic_options)
    return fit_binned(
        simulations,
        observed,
        {process: fit for process, (fit, _) in topics.items()},
        baseline=BaselineConfig(baseline, baseline, baseline_prior),
        scan=scan,
        topic_options=topic_options,
    )


# ---------------------------------------------------------------------------------------------
# The whole analysis


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one ``tamm fit`` run computed.

    Attributes:
        config: The configuration that was run.
        inputs: The histogrammed inputs.
        topics: Per process, the topic fit and whether it was reloaded from the output folder.
        methods: The fit of each method.
        timings: Wall time of each step, in seconds.
        outputs: Paths of the files written, by kind.
        ratio_models: The ratio models of the unbinned engine; None when it did not run.
    """

    config: AnalysisConfig
    inputs: AnalysisInputs
    topics: dict[str, tuple[TopicFit, bool]]
    methods: dict[str, MethodResult]
    timings: dict[str, float]
    outputs: dict[str, str] = field(default_factory=dict)
    ratio_models: RatioModels | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the full record written to ``results.json``."""
        kappa_true = self.inputs.kappa_true
        seeds: dict[str, Any] = {}
        if "binned" in self.config.engines:
            seeds["binned"] = self.config.binned.seed
        if "unbinned" in self.config.engines:
            seeds["unbinned"] = self.config.unbinned.seed
        if self.config.pseudo_data is not None:
            seeds["pseudo_data"] = self.config.pseudo_data.seed
        return {
            "tamm_version": __version__,
            "python": platform.python_version(),
            "versions": _versions(),
            "config": self.config.to_dict(),
            "seeds": seeds,
            "region": self.inputs.region.to_dict(),
            "data": self.inputs.data,
            "kappa_true": kappa_true,
            "simulations": self.inputs.simulation_info,
            "topics": {
                process: {
                    "n_topics": fit.n_topics,
                    "elbo": fit.elbo,
                    "converged": fit.converged,
                    "n_iter": fit.n_iter,
                    "seed": fit.seed,
                    "reloaded": reloaded,
                }
                for process, (fit, reloaded) in self.topics.items()
            },
            "ratio_models": None if self.ratio_models is None else self.ratio_models.to_dict(),
            "fits": {name: result.to_dict(kappa_true) for name, result in self.methods.items()},
            "timings_s": self.timings,
            "outputs": self.outputs,
        }

    def summary(self) -> dict[str, Any]:
        """Return the short record that ``tamm fit`` prints: kappa, sigma, interval, status."""
        fits = {}
        for name, result in self.methods.items():
            interval = result.interval
            fits[name] = {
                "kappa": result.fit.kappa,
                "sigma": _json_float(result.fit.sigma),
                "interval_68": None if interval is None else [_json_float(v) for v in interval],
                "converged": result.fit.converged,
            }
            extra = result.details.get("simulation_uncertainty")
            if extra is not None:
                fits[name]["sigma_simulations"] = extra["sigma_simulations"]
                fits[name]["sigma_total"] = extra["sigma_total"]
            if self.inputs.kappa_true is not None:
                fits[name]["pull"] = _json_float(result.fit.pull(self.inputs.kappa_true))
                total = None if extra is None else extra["sigma_total"]
                if total:
                    fits[name]["pull_total"] = (result.fit.kappa - self.inputs.kappa_true) / total
        return {
            "kappa_true": self.inputs.kappa_true,
            "n_events": float(self.inputs.observed.sum()),
            "fits": fits,
            "topics_reloaded": {
                process: reloaded for process, (_, reloaded) in self.topics.items()
            },
            "ratio_models_reloaded": (
                None if self.ratio_models is None else self.ratio_models.reloaded
            ),
            "outputs": self.outputs,
        }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


# The unbinned scans show the sandwich-corrected statistic q / lambda_corr.
_SCAN_NOTES = {
    "tamm-unbinned": " ($q/\\lambda_\\mathrm{corr}$)",
    "baseline-unbinned": " ($q/\\lambda_\\mathrm{corr}$)",
}


def _plot_scans(methods: Mapping[str, MethodResult], kappa_true: float | None, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    colours = {
        TAMM_METHOD: "tab:red",
        BASELINE_METHOD: "tab:blue",
        "tamm-unbinned": "tab:green",
        "baseline-unbinned": "tab:purple",
    }
    with plt.style.context(mplhep.style.ROOT):
        n_entries = len(methods) + 1 + (kappa_true is not None)
        fig, ax = plt.subplots(figsize=(8, 6 + 0.35 * n_entries), layout="constrained")
        for name, result in methods.items():
            if result.scan is None:
                continue
            valid = result.scan.converged
            ax.plot(
                result.scan.kappa[valid],
                result.scan.delta_twice_nll[valid],
                "-o",
                ms=3,
                color=colours.get(name),
                label=f"{name}{_SCAN_NOTES.get(name, '')}: $\\hat\\kappa$ = {result.fit.kappa:.4f}",
            )
        ax.axhline(_ONE_SIGMA_LEVEL, color="0.4", ls=":", lw=1, label="68.3 % level")
        if kappa_true is not None:
            ax.axvline(
                kappa_true,
                color="black",
                ls="--",
                lw=1.5,
                label=f"true $\\kappa$ = {kappa_true:.4f}",
            )
        ax.set_xlabel("$\\kappa$")
        ax.set_ylabel("$-2\\,\\Delta\\ln L$ (profiled)")
        ax.set_ylim(bottom=0)
        # The legend sits above the axes, because the curves fill the panel.
        fig.legend(loc="outside upper center", ncol=1, fontsize="small", frameon=False)
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _write_outputs(result: AnalysisResult, directory: Path) -> dict[str, str]:
    from tamm.plotting import plot_binned_fit

    directory.mkdir(parents=True, exist_ok=True)
    inputs = result.inputs
    region = inputs.region
    paths = {
        "results": directory / "results.json",
        "root": directory / "fit.root",
        "fit_plot": directory / "fit.png",
        "scan_plot": directory / "kappa_scan.png",
    }

    histograms: dict[str, Any] = {
        "data": hist_from_counts(
            inputs.observed, region, variances=inputs.observed, name="data", label="observed data"
        )
    }
    for method, method_result in result.methods.items():
        folder = method.replace("-", "_")
        for part, histogram in method_result.to_hists().items():
            histograms[f"{folder}/{part}"] = histogram
    write_histograms(paths["root"], histograms)

    plot_binned_fit(
        region,
        inputs.observed,
        {name: method_result.shapes() for name, method_result in result.methods.items()},
        {process: histograms_set.counts for process, histograms_set in inputs.simulations.items()},
        kappa_true=inputs.kappa_true,
        path=paths["fit_plot"],
    )
    _plot_scans(result.methods, inputs.kappa_true, paths["scan_plot"])

    outputs = {kind: str(path) for kind, path in paths.items()}
    for process in result.topics:
        outputs[f"topics_{process}"] = str(directory / f"topics_{process}.json")
    if result.ratio_models is not None and result.ratio_models.directory is not None:
        outputs["ratio_models"] = str(result.ratio_models.directory)
    return outputs


def _write_results(result: AnalysisResult) -> None:
    path = Path(result.outputs["results"])
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    log.info("wrote %s", ", ".join(result.outputs.values()))


def run_analysis(
    config: AnalysisConfig,
    *,
    retrain: bool = False,
    write: bool = True,
    progress: Progress | None = None,
    show_training: bool = False,
) -> AnalysisResult:
    """Run a configured analysis, with either engine or both, from the input files to the outputs.

    Args:
        config: A validated configuration (:func:`tamm.io.load_config`).
        retrain: Learn the topics and train the ratio models even if saved ones exist.
        write: Write the outputs, the topics and the ratio models; False keeps everything in
            memory (topics and ratio models are then always learned).
        progress: Called with a short description before each step.
        show_training: Show the per-epoch progress bars of the ratio networks.

    Returns:
        The result; ``outputs`` lists the files written.

    Raises:
        ConfigError: For inputs that contradict the configuration (too few simulations for
            the topics, an unknown baseline simulation, too few events for pseudo-data).
        InputFileError: If a file, tree, branch or histogram is missing.
        InvalidSimulationError: If an input has non-finite values or no events in the region.
        ModelFileError: If saved topics or ratio models are damaged or were learned from
            other inputs.

    Warns:
        ConvergenceWarning: If a topic fit, a calibration or a kappa fit did not converge.
    """

    def step(text: str) -> None:
        log.info("%s", text)
        if progress is not None:
            progress(text)

    timings: dict[str, float] = {}
    if "unbinned" in config.engines:
        from tamm.unbinned_analysis import check_config, check_model_dir

        check_config(config)
        check_model_dir(config, write=write, retrain=retrain)

    step("reading inputs")
    start = time.perf_counter()
    inputs = prepare_inputs(config)
    timings["read"] = time.perf_counter() - start

    topics: dict[str, tuple[TopicFit, bool]] = {}
    methods: dict[str, MethodResult] = {}
    if "binned" in config.engines:
        directory = config.output_dir if write else None
        step("learning topics" if retrain or directory is None else "learning or loading topics")
        start = time.perf_counter()
        topics = learn_or_load_topics(
            inputs.simulations,
            n_topics=config.binned.n_topics,
            seed=config.binned.seed,
            options=config.binned.options,
            directory=directory,
            retrain=retrain,
        )
        timings["topics"] = time.perf_counter() - start

        start = time.perf_counter()
        methods.update(
            fit_binned(
                inputs.simulations,
                inputs.observed,
                {process: fit for process, (fit, _) in topics.items()},
                baseline=config.baseline,
                scan=config.scan,
                progress=step,
                topic_options=config.binned.options,
            )
        )
        timings["fits_and_scans"] = time.perf_counter() - start

    ratio_models = None
    if "unbinned" in config.engines:
        from tamm.unbinned_analysis import (
            fit_unbinned_methods,
            load_or_train_ratio_models,
            read_simulations,
        )

        step("reading the simulation events (unbinned)")
        start = time.perf_counter()
        events = read_simulations(config)
        timings["read_events"] = time.perf_counter() - start

        step("loading or training the ratio models" if write else "training the ratio models")
        start = time.perf_counter()
        ratio_models = load_or_train_ratio_models(
            config, events, write=write, retrain=retrain, progress=show_training
        )
        timings["ratio_models"] = time.perf_counter() - start

        start = time.perf_counter()
        methods.update(fit_unbinned_methods(config, inputs, events, ratio_models, progress=step))
        timings["unbinned_fits_and_scans"] = time.perf_counter() - start

    result = AnalysisResult(config, inputs, topics, methods, timings, ratio_models=ratio_models)
    if not write:
        return result
    step("writing outputs")
    start = time.perf_counter()
    outputs = _write_outputs(result, config.output_dir)
    timings["write"] = time.perf_counter() - start
    result = replace(result, outputs=outputs)
    _write_results(result)
    return result
