"""The unbinned engine of ``tamm fit``: saved ratio models, reference samples and the fits.

Where this sits in the pipeline: :func:`tamm.analysis.run_analysis` calls this module when a
configuration lists ``engines: [unbinned]``. It joins the ROOT readers of :mod:`tamm.io`, the
ratio networks of :mod:`tamm.ratios` and the geometric mixture of :mod:`tamm.mixture`:

1. read the uncut events of every simulation (:func:`read_simulations`); the networks learn
   the uncut densities, and the acceptances of the region come from the same events;
2. load the ratio models saved in the model folder, or train and save them
   (:func:`train_ratio_models`, :func:`load_or_train_ratio_models`): a calibrated ensemble with
   one class per simulation of both processes (``ensemble/``), and the binary network of the
   single-simulation baseline (``baseline/``). A saved model is used only when it was trained
   on exactly the configured simulations (same names, event counts and event values);
3. fit kappa with the adapted mixture (``tamm-unbinned``) and with the baseline network
   (``baseline-unbinned``) on the data events inside the region, with the sandwich sigma and
   the corrected profile scan (:func:`fit_unbinned_methods`). The fitted shapes are
   histogrammed in the region's bins by weighting reference events, so both engines share
   one plot and one ROOT file.

``tamm train --analysis CONFIG`` runs steps 1 and 2 only; ``tamm fit CONFIG`` then reloads the
models.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tamm.exceptions import (
    ConfigError,
    InvalidModelError,
    InvalidRegionError,
    InvalidSimulationError,
    ModelFileError,
)
from tamm.io.config import AnalysisConfig
from tamm.io.root import read_tree
from tamm.samples import Region, Simulation, SimulationSet

if TYPE_CHECKING:
    from tamm.analysis import AnalysisInputs, MethodResult
    from tamm.mixture import UnbinnedFit
    from tamm.ratios import BaselineRatio, CalibratedEnsemble

__all__ = [
    "TAMM_UNBINNED_METHOD",
    "UNBINNED_BASELINE_METHOD",
    "RatioModels",
    "baseline_counts",
    "check_config",
    "check_model_dir",
    "fit_unbinned_methods",
    "fitted_counts",
    "load_or_train_ratio_models",
    "read_simulations",
    "train_ratio_models",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

TAMM_UNBINNED_METHOD = "tamm-unbinned"
UNBINNED_BASELINE_METHOD = "baseline-unbinned"

_ENSEMBLE_FOLDER = "ensemble"
_BASELINE_FOLDER = "baseline"
_TRAINING_RECORD = "training.json"
# A scan point whose profiled q is below the free fit's by more than this (in units of
# 2 Delta loss) shows that the free fit stopped in a local minimum.
_LOWER_MINIMUM_TOLERANCE = 1e-3

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RatioModels:
    """The trained ratio models of one analysis, with their acceptances set to its region.

    Attributes:
        ensemble: The calibrated multiclass ensemble, signal classes first.
        baseline: The calibrated binary network of the baseline simulations.
        directory: The model folder they were read from or saved to; None when kept in memory.
        reloaded: Whether they were read from ``directory`` instead of trained.
        training: What the training reported: settings, seed, epochs and wall times.
    """

    ensemble: CalibratedEnsemble
    baseline: BaselineRatio
    directory: Path | None
    reloaded: bool
    training: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly record of where the models are and how they were made."""
        return {
            "directory": None if self.directory is None else str(self.directory),
            "reloaded": self.reloaded,
            "n_classes": self.ensemble.n_classes,
            "n_members": self.ensemble.n_members,
            "calibration_converged": all(fit.converged for fit in self.ensemble.fits),
            "baseline_calibration_converged": self.baseline.fit.converged,
            "training": self.training,
        }


# ---------------------------------------------------------------------------------------------
# Inputs


def check_config(config: AnalysisConfig) -> None:
    """Raise a :class:`ConfigError` unless the simulations are unweighted trees and the data are events.

    :func:`tamm.analysis.run_analysis` calls this before reading any file.
    """
    for process, sources in config.processes.items():
        for index, source in enumerate(sources):
            key = f"processes.{process}.simulations[{index}]"
            if source.histogram is not None:
                msg = (
                    f"is the histogram {source.histogram!r}, but the unbinned engine learns from "
                    "events; give a tree (tree: or trees:) or run only engines: [binned]."
                )
                raise ConfigError(key, msg)
            if source.weight is not None:
                msg = (
                    f"has the weight branch {source.weight!r}; the unbinned engine does not "
                    "support weighted simulations yet. Remove the weight or run only "
                    "engines: [binned]."
                )
                raise ConfigError(f"{key}.weight", msg)
    if config.data is not None and (config.data.histogram is not None or config.data.weight):
        msg = (
            "the unbinned engine fits data events; give the data as an unweighted tree "
            "(data: {file, tree}) or run only engines: [binned]."
        )
        raise ConfigError("data", msg)


def check_model_dir(config: AnalysisConfig, *, write: bool, retrain: bool) -> None:
    """Raise :class:`ModelFileError` if ``unbinned.model_dir`` names a folder without models.

    :func:`tamm.analysis.run_analysis` calls this before reading any file, so a wrong path
    fails at once instead of after the binned engine has run.
    """
    if not write or retrain or config.unbinned.model_dir is None:
        return
    directory = config.unbinned.model_dir
    if not (directory / _ENSEMBLE_FOLDER / "manifest.json").is_file():
        msg = (
            f"unbinned.model_dir is {str(directory)!r}, but no saved ratio ensemble is there "
            f"({_ENSEMBLE_FOLDER}/manifest.json is missing). Train the models with "
            "`tamm train --analysis CONFIG` first, pass --retrain to train them in `tamm fit`, "
            "or remove model_dir to use <output_dir>/ratio_models."
        )
        raise ModelFileError(msg)


def read_simulations(config: AnalysisConfig) -> dict[str, SimulationSet]:
    """Read the uncut events of every configured simulation tree.

    Args:
        config: A validated configuration whose simulations are unweighted trees.

    Returns:
        ``{"signal": SimulationSet, "background": SimulationSet}``, the simulations in the
        order of the configuration, named as in the binned engine (``file-stem:tree``).

    Raises:
        ConfigError: If a simulation is a histogram or weighted.
        InputFileError: If a file, tree or branch is missing.
        InvalidSimulationError: If a branch has non-finite values or a tree is empty.
    """
    from tamm.analysis import _expand

    check_config(config)
    sets = {}
    for process, sources in config.processes.items():
        simulations = []
        for source in sources:
            for entry in _expand(source):
                selected = read_tree(
                    entry.file,
                    entry.tree or "",
                    config.observables,
                    step_size=config.step_size,
                    key=entry.key,
                )
                simulations.append(
                    Simulation(
                        selected.events,
                        name=entry.name,
                        settings=entry.settings,
                        observables=config.observables,
                    )
                )
        sets[process] = SimulationSet(simulations, process=process)
    return sets


def _baseline_pair(
    config: AnalysisConfig, simulations: Mapping[str, SimulationSet]
) -> tuple[Simulation, Simulation]:
    from tamm.analysis import _choose

    signal = _choose(simulations["signal"], config.baseline.signal, "baseline.simulation.signal")
    background = _choose(
        simulations["background"], config.baseline.background, "baseline.simulation.background"
    )
    return simulations["signal"][signal], simulations["background"][background]


# ---------------------------------------------------------------------------------------------
# Ratio models


def train_ratio_models(
    config: AnalysisConfig,
    simulations: Mapping[str, SimulationSet],
    *,
    directory: Path | None = None,
    progress: bool = False,
) -> RatioModels:
    """Train and calibrate the ensemble and the baseline network; save them to ``directory``.

    Args:
        config: The configuration (region, baseline choice, ``unbinned`` settings).
        simulations: The uncut simulations per process (:func:`read_simulations`).
        directory: Model folder to write ``ensemble/``, ``baseline/`` and ``training.json``
            into, replacing models saved there before; None keeps the models in memory.
        progress: Show the per-epoch progress bars of the networks.

    Raises:
        ConfigError: If ``unbinned.training`` is invalid.
        InvalidRegionError: If a simulation has no events inside the region.

    Warns:
        ConvergenceWarning: If a calibration fit did not converge.
    """
    from tamm.ratios import BaselineRatio, CalibratedEnsemble, RatioEnsemble, TrainingSettings

    try:
        settings = TrainingSettings.from_dict(config.unbinned.training)
    except (InvalidModelError, TypeError) as err:
        raise ConfigError("unbinned.training", str(err)) from err
    ensemble_seed, baseline_seed = np.random.SeedSequence(config.unbinned.seed).generate_state(2)
    sets = [simulations["signal"], simulations["background"]]
    region = config.region

    started = time.perf_counter()
    trained = RatioEnsemble.train(
        sets, settings=settings, seed=int(ensemble_seed), progress=progress
    )
    ensemble_time = time.perf_counter()
    ensemble = CalibratedEnsemble.calibrate(trained, sets, region=region, progress=progress)
    calibration_time = time.perf_counter()
    signal, background = _baseline_pair(config, simulations)
    baseline = BaselineRatio.train(
        signal,
        background,
        region=region,
        settings=settings,
        seed=int(baseline_seed),
        progress=progress,
    )
    finished = time.perf_counter()

    training = {
        "seed": config.unbinned.seed,
        "settings": settings.to_dict(),
        "members": [
            {
                "index": record.index,
                "n_epochs": record.n_epochs,
                "best_epoch": record.best_epoch,
                "best_validation_loss": record.best_validation_loss,
            }
            for record in trained.records
        ],
        "baseline_simulations": {"signal": signal.name, "background": background.name},
        "timings_s": {
            "ensemble_training": ensemble_time - started,
            "calibration": calibration_time - ensemble_time,
            "baseline_training": finished - calibration_time,
        },
    }
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        ensemble.save(directory / _ENSEMBLE_FOLDER, overwrite=True)
        baseline.save(directory / _BASELINE_FOLDER, overwrite=True)
        text = json.dumps(training, indent=2, allow_nan=False)
        (directory / _TRAINING_RECORD).write_text(text + "\n", encoding="utf-8")
        log.info("saved the ratio models to %s", directory)
    return RatioModels(ensemble, baseline, directory, False, training)


def _load_ratio_models(
    config: AnalysisConfig, simulations: Mapping[str, SimulationSet], directory: Path
) -> RatioModels:
    from tamm.ratios import BaselineRatio, CalibratedEnsemble

    retrain = (
        "Train them again for these inputs with `tamm train --analysis CONFIG` or "
        "`tamm fit --retrain CONFIG`, or point unbinned.model_dir at models trained on them."
    )
    ensemble = CalibratedEnsemble.load(directory / _ENSEMBLE_FOLDER)
    baseline = BaselineRatio.load(directory / _BASELINE_FOLDER)
    signal, background = _baseline_pair(config, simulations)
    try:
        ensemble = ensemble.with_region(
            config.region, [simulations["signal"], simulations["background"]]
        )
    except (InvalidSimulationError, InvalidRegionError) as err:
        msg = (
            f"the ratio ensemble in {str(directory)!r} was trained on other simulations than "
            f"this analysis lists. {err} {retrain}"
        )
        raise ModelFileError(msg) from err
    try:
        baseline = baseline.with_region(config.region, signal, background)
    except (InvalidSimulationError, InvalidRegionError) as err:
        msg = (
            f"the baseline network in {str(directory)!r} was trained on other simulations than "
            f"the baseline simulations {signal.name!r} and {background.name!r} of this "
            f"analysis. {err} {retrain}"
        )
        raise ModelFileError(msg) from err
    training: dict[str, Any] = {}
    record = directory / _TRAINING_RECORD
    if record.is_file():
        try:
            training = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("could not read %s (%s); the training record is left out", record, err)
    log.info("reloaded the ratio models from %s", directory)
    return RatioModels(ensemble, baseline, directory, True, training)


def load_or_train_ratio_models(
    config: AnalysisConfig,
    simulations: Mapping[str, SimulationSet],
    *,
    write: bool = True,
    retrain: bool = False,
    progress: bool = False,
) -> RatioModels:
    """Reload the ratio models from the model folder, or train (and save) them.

    The folder is ``unbinned.model_dir`` or ``<output_dir>/ratio_models``
    (:attr:`AnalysisConfig.ratio_model_dir`). Models saved there are reused only when they
    were trained on exactly the configured simulations; otherwise this raises instead of
    silently training again.

    Args:
        config: The configuration.
        simulations: The uncut simulations per process (:func:`read_simulations`).
        write: Save newly trained models to the folder; False keeps them in memory and, as in
            the binned engine, always trains.
        retrain: Train even if saved models exist, and replace them.
        progress: Show the per-epoch progress bars of the networks.

    Raises:
        ModelFileError: If saved models are damaged, or were trained on other simulations, or
            ``unbinned.model_dir`` names a folder without models and ``retrain`` is false.
    """
    directory = config.ratio_model_dir
    saved = (directory / _ENSEMBLE_FOLDER / "manifest.json").is_file()
    if write and saved and not retrain:
        return _load_ratio_models(config, simulations, directory)
    check_model_dir(config, write=write, retrain=retrain)
    return train_ratio_models(
        config, simulations, directory=directory if write else None, progress=progress
    )


# ---------------------------------------------------------------------------------------------
# Fits


def _pool(
    simulations: Mapping[str, SimulationSet], region: Region, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Pool an equal number of uncut events of every simulation, then cut to the region.

    The ratio networks are log ratios to the equal-weight mixture of all simulations, so the
    reference sample must be drawn from that mixture: every simulation contributes the same
    number of events before the cut (the size of the smallest one).
    """
    sims = [sim for process in ("signal", "background") for sim in simulations[process]]
    size = min(sim.n_events for sim in sims)
    blocks = []
    for sim in sims:
        events = sim.events
        if sim.n_events > size:
            events = events[np.sort(rng.choice(sim.n_events, size=size, replace=False))]
        blocks.append(events[region.contains(events)])
    return np.concatenate(blocks)


def _projected(
    region: Region, events: NDArray[np.float64], log_weights: NDArray[np.float64], total: float
) -> NDArray[np.float64]:
    """Histogram events weighted by ``exp(log_weights)`` in the region's bins, summing to ``total``."""
    counts = region.histogram(events, np.exp(log_weights - log_weights.max()))
    norm = counts.sum()
    return np.asarray(counts * (total / norm) if norm > 0 else counts, dtype=np.float64)


def fitted_counts(
    region: Region,
    reference_events: NDArray[np.float64],
    reference_features: NDArray[np.float64],
    fit: UnbinnedFit,
    n_events: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the fitted signal and background of an unbinned fit as counts in the region's bins.

    The fitted signal density is ``R_s`` times the reference density, so the reference events
    weighted by ``R_s = exp(F_s a)`` sample it (likewise for the background). The weights'
    normalisations ``c_s`` and ``c_b`` drop out, because each histogram is scaled to its fitted
    yield, ``kappa N`` and ``(1 - kappa) N``.

    Args:
        region: The binned region.
        reference_events: The reference sample, shape ``(N_ref, n_observables)``.
        reference_features: Its log-ratio features, shape ``(N_ref, K_s + K_b)``, signal first.
        fit: The fit.
        n_events: Number of data events ``N``.

    Returns:
        ``(signal, background)``, each of shape ``(n_bins,)``.
    """
    a, b = fit.weights
    k_signal = a.size
    kappa = fit.kappa
    signal = _projected(
        region, reference_events, reference_features[:, :k_signal] @ a, kappa * n_events
    )
    background = _projected(
        region, reference_events, reference_features[:, k_signal:] @ b, (1.0 - kappa) * n_events
    )
    return signal, background


def baseline_counts(
    region: Region,
    background_events: NDArray[np.float64],
    log_ratio: NDArray[np.float64],
    kappa: float,
    n_events: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the fitted signal and background of the baseline as counts in the region's bins.

    The baseline's signal density is ``r p_b``, so the background simulation's events
    weighted by ``r`` sample it, and unweighted they sample the background.
    """
    signal = _projected(region, background_events, log_ratio, kappa * n_events)
    background = _projected(
        region, background_events, np.zeros(len(background_events)), (1.0 - kappa) * n_events
    )
    return signal, background


def _corrected_scan(likelihood: Any, fit: Any, grid: NDArray[np.float64]) -> Any:
    """Scan ``q / lambda_corr`` of TAMM on a grid and return it as the binned engine's scan record.

    Points whose profiled fit failed are left out of the interval. Their convergence warnings
    are summarised in one log line, because far from the best fit many points can have an
    invalid model (negative on a data event).
    """
    from tamm.exceptions import ConvergenceWarning
    from tamm.mixture import profile_scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        profile = profile_scan(likelihood, fit, grid)
    converged = np.asarray(profile.converged, dtype=bool) & np.isfinite(profile.q)
    if not np.all(converged):
        log.warning(
            "profile scan of %s: the profiled fit failed at kappa = %s; those points are left "
            "out of the interval",
            TAMM_UNBINNED_METHOD,
            np.round(profile.kappa[~converged], 6).tolist(),
        )
    return _as_scan_record(profile.kappa, profile.q, converged, fit.kappa, profile.lambda_corr)


def _as_scan_record(
    kappa: NDArray[np.float64],
    q: NDArray[np.float64],
    converged: NDArray[np.bool_],
    kappa_hat: float,
    lambda_corr: float,
) -> Any:
    """Return ``q / lambda_corr`` with the best fit added, as the binned engine's scan record.

    The minimum is the lowest of the best fit (``q = 0``) and the converged grid points. A
    grid point below the best fit shows that the fit stopped in a local minimum, and the
    interval is then taken around that point (with a warning).
    """
    from tamm.analysis import ProfileScan

    values = np.append(q, 0.0)
    ok = np.append(converged, True)
    grid = np.append(kappa, kappa_hat)
    lowest = float(np.min(values[ok]))
    if lowest < -_LOWER_MINIMUM_TOLERANCE:
        log.warning(
            "profile scan: the loss at kappa = %.6g is %.3g below the fit at kappa = %.6g, so the "
            "fit stopped in a local minimum; the interval is taken around the lower point",
            float(grid[ok][np.argmin(values[ok])]),
            -0.5 * lowest,
            kappa_hat,
        )
    corrected = (values - min(lowest, 0.0)) / lambda_corr
    order = np.argsort(grid, kind="stable")
    return ProfileScan(grid[order], corrected[order], ok[order])


def _scan_grid(kappa: float, sigma: float, points: int, width: float) -> NDArray[np.float64]:
    """Grid of ``points`` values within ``width`` sigma of kappa, without the best fit itself.

    Unlike the binned engine's grid, this grid is not clipped to [0, 1], because the unbinned
    model leaves kappa unbounded and a fitted kappa may lie outside. A point where the model
    turns negative on a data event has an infinite loss and drops out as not converged.
    """
    half = width * (sigma if math.isfinite(sigma) and sigma > 0 else 0.125)
    grid = np.linspace(kappa - half, kappa + half, points)
    return np.asarray(grid[~np.isclose(grid, kappa, rtol=0.0, atol=1e-12)], dtype=np.float64)


def fit_unbinned_methods(
    config: AnalysisConfig,
    inputs: AnalysisInputs,
    simulations: Mapping[str, SimulationSet],
    models: RatioModels,
    *,
    scan: bool = True,
    progress: Progress | None = None,
) -> dict[str, MethodResult]:
    """Fit kappa on the data events with the adapted mixture and with the baseline network.

    Args:
        config: The configuration (region, ``unbinned`` and ``scan`` settings).
        inputs: The analysis inputs; ``inputs.data_events`` must hold the data events.
        simulations: The uncut simulations per process, as the models were trained on.
        models: The ratio models, with acceptances for ``config.region``.
        scan: Scan the corrected profile statistic of TAMM on the ``config.scan`` grid.
        progress: Called with a short description before each fit.

    Returns:
        ``{"tamm-unbinned": ..., "baseline-unbinned": ...}``. The fitted shapes are expected
        counts in the region's bins. The TAMM scan contains the sandwich-corrected profile
        statistic ``q / lambda_corr``, so its 68.3 % interval is where it crosses 1.

    Raises:
        ConfigError: If the data are a histogram, or the pooled simulations hold too few
            events for the requested reference and penalty samples.

    Warns:
        ConvergenceWarning: If a fit did not converge.
    """
    from tamm.analysis import MethodResult
    from tamm.mixture import (
        MixtureSamples,
        TemplateAdaptedLikelihood,
        fit_unbinned,
        jackknife_simulations,
        split_pool,
    )

    if inputs.data_events is None:
        msg = (
            "the unbinned engine fits data events, but the data are a histogram; give the data "
            "as an unweighted tree (data: {file, tree}) or run only engines: [binned]."
        )
        raise ConfigError("data", msg)
    region = config.region
    settings = config.unbinned
    data = inputs.data_events
    n_data = data.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 1]))
    pool = _pool(simulations, region, rng)
    k_signal = len(simulations["signal"])
    n_reference = settings.n_reference or min(k_signal * n_data, pool.shape[0] // 2)
    n_penalty = settings.n_penalty or n_reference
    if n_reference + n_penalty > pool.shape[0]:
        msg = (
            f"asks for {n_reference} reference and {n_penalty} penalty events, but the pooled "
            f"simulations contain {pool.shape[0]} events inside the region (equal numbers per "
            "simulation before the cut); lower n_reference and n_penalty, or simulate more."
        )
        raise ConfigError("unbinned.n_reference", msg)

    if progress is not None:
        progress(f"fitting kappa ({TAMM_UNBINNED_METHOD})")
    reference_events, penalty_events = split_pool(pool, n_reference, n_penalty, seed=rng)
    ensemble = models.ensemble
    samples = MixtureSamples(
        ensemble.log_ratios(data, region),
        ensemble.log_ratios(reference_events, region),
        ensemble.log_ratios(penalty_events, region),
        n_signal_classes=k_signal,
    )
    likelihood = TemplateAdaptedLikelihood(
        samples,
        penalty_strength=settings.penalty_strength,
        ridge_strength=settings.ridge_strength,
    )
    tamm_fit = fit_unbinned(likelihood)
    kappa_fit = tamm_fit.kappa_fit
    profile_record = None
    if scan and tamm_fit.converged:
        grid = _scan_grid(tamm_fit.kappa, tamm_fit.sigma, config.scan.points, config.scan.width)
        profile_record = _corrected_scan(likelihood, tamm_fit, grid)

    signal, background = fitted_counts(
        region, reference_events, samples.reference, tamm_fit, n_data
    )
    details: dict[str, Any] = {
        "n_reference": n_reference,
        "n_penalty": n_penalty,
        "lambda_corr": tamm_fit.lambda_corr,
        "ridge_strength": settings.ridge_strength,
        "penalty_strength": settings.penalty_strength,
    }
    if tamm_fit.converged and min(k_signal, len(simulations["background"])) >= 3:
        # The sandwich sigma treats the simulations as fixed, so the jackknife adds the spread
        # from which simulations were drawn.
        jackknife = jackknife_simulations(likelihood, tamm_fit)
        if not jackknife.all_converged:
            log.warning(
                "%s: %d of %d leave-one-out estimates of the jackknife failed; "
                "sigma_simulations comes from the others",
                TAMM_UNBINNED_METHOD,
                int(np.sum(~jackknife.converged)),
                jackknife.converged.size,
            )
        details["simulation_uncertainty"] = {
            "method": "linearised delete-one jackknife over the simulations",
            **jackknife.to_dict(),
        }
    results = {
        TAMM_UNBINNED_METHOD: MethodResult(
            kappa_fit,
            region,
            signal,
            background,
            profile_record,
            details,
        )
    }
    log.info(
        "%s: kappa = %.5f +- %.5f (%s)",
        TAMM_UNBINNED_METHOD,
        kappa_fit.kappa,
        kappa_fit.sigma,
        kappa_fit.message,
    )

    if progress is not None:
        progress(f"fitting kappa ({UNBINNED_BASELINE_METHOD})")
    results[UNBINNED_BASELINE_METHOD] = _fit_baseline(config, data, simulations, models, scan=scan)
    return results


def _fit_baseline(
    config: AnalysisConfig,
    data: NDArray[np.float64],
    simulations: Mapping[str, SimulationSet],
    models: RatioModels,
    *,
    scan: bool,
) -> MethodResult:
    """Fit kappa with the baseline network of one signal and one background simulation."""
    from tamm.analysis import MethodResult
    from tamm.mixture import baseline_scan, fit_baseline_unbinned

    region = config.region
    signal_sim, background_sim = _baseline_pair(config, simulations)
    background_events = background_sim.events[region.contains(background_sim.events)]
    baseline_ratio = models.baseline
    data_log_ratio = baseline_ratio.log_ratio(data, region)
    reference_log_ratio = baseline_ratio.log_ratio(background_events, region)
    baseline_result = fit_baseline_unbinned(data_log_ratio, reference_log_ratio)
    baseline_fit = baseline_result.kappa_fit
    kappa_b = baseline_fit.kappa
    baseline_profile = None
    if scan and baseline_fit.converged:
        grid = _scan_grid(kappa_b, baseline_fit.sigma, config.scan.points, config.scan.width)
        q = baseline_scan(data_log_ratio, reference_log_ratio, baseline_result, grid)
        baseline_profile = _as_scan_record(
            grid, q, np.isfinite(q), baseline_result.kappa, baseline_result.lambda_corr
        )
    baseline_signal, baseline_background = baseline_counts(
        region, background_events, reference_log_ratio, kappa_b, float(len(data))
    )
    log.info(
        "%s: kappa = %.5f +- %.5f (%s)",
        UNBINNED_BASELINE_METHOD,
        baseline_fit.kappa,
        baseline_fit.sigma,
        baseline_fit.message,
    )
    return MethodResult(
        baseline_fit,
        region,
        baseline_signal,
        baseline_background,
        baseline_profile,
        {"simulations": {"signal": signal_sim.name, "background": background_sim.name}},
    )
