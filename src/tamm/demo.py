"""The main job on the built-in Gaussian toy: ``tamm demo``.

One run goes through the whole binned pipeline and compares three estimates of kappa:

1. draw ``n_simulations`` biased simulations per process (distinct, at random);
2. histogram them in the fiducial square and learn ``n_topics`` topics per process;
3. draw one pseudo-dataset from nature;
4. fit kappa with pyhf three times: the topic mixture (TAMM), a single simulation per process
   as fixed templates (the baseline, what an analysis does today), and nature's exact shapes
   (the oracle, the statistical floor that no method can beat);
5. write ``results.json`` and ``demo.png`` into the output directory.

Every random step derives its seed from the one ``seed`` argument, so a run is reproducible.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tamm._version import __version__
from tamm.datasets import GaussianToy, PseudoData
from tamm.exceptions import InvalidModelError
from tamm.metrics import hellinger
from tamm.plotting import FittedShapes, plot_binned_fit
from tamm.results import KappaFit
from tamm.samples import Region

__all__ = ["ENGINES", "DemoConfig", "DemoResult", "run_demo"]

ENGINES = ("binned", "unbinned", "both")

log = logging.getLogger(__name__)


def __dir__() -> list[str]:
    return __all__


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``tamm demo``.

    Attributes:
        seed: Master seed; every random step derives its own stream from it.
        n_simulations: Biased simulations drawn per process; they are the documents of the
            topic model.
        n_topics: Topics learned per process.

    Notes:
        A topic mixture is a convex combination, so it can only reach shapes inside the hull
        of what the simulations span. With 10 simulations per process that hull usually misses
        nature on this toy and kappa comes out high (mean pull about +2.8 over seeds 0-7,
        measured with 4 to 10 topics); with 40 simulations and 10 topics the mean pull over
        the same seeds was +0.8 with a width of 1.2. The binned study of arXiv 2604.02219 used 500
        simulations per process. These defaults may change; set them explicitly in scripts.
        n_events_per_simulation: Events sampled per simulation, before the fiducial cut.
        n_signal: Signal events of the pseudo-data inside the region.
        n_background: Background events of the pseudo-data inside the region.
        bins: Bins per observable of the 2-D histograms.
        engine: ``"binned"`` (topics and pyhf), ``"unbinned"`` (ratio networks and the
            geometric mixture) or ``"both"``.
        unbinned_n_simulations: Simulations per process of the unbinned engine; 10, as in the
            paper's unbinned study.
        unbinned_events_per_simulation: Events per simulation for training the ratio networks
            (the paper used 1e6; fewer keeps the demo within minutes on 2 cores).
        unbinned_members: Bootstrap members of the ratio ensemble (the paper used 4; 2 keep
            the default demo within a few minutes on 2 cores).
        unbinned_max_epochs: Maximum training epochs per member (early stopping may end sooner).
    """

    seed: int = 0
    n_simulations: int = 40
    n_topics: int = 10
    n_events_per_simulation: int = 400_000
    n_signal: int = 5000
    n_background: int = 50_000
    bins: int = 10
    engine: str = "both"
    unbinned_n_simulations: int = 10
    unbinned_events_per_simulation: int = 100_000
    unbinned_members: int = 2
    unbinned_max_epochs: int = 15

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            msg = f"DemoConfig.engine must be one of {list(ENGINES)}; received {self.engine!r}."
            raise InvalidModelError(msg)
        positive = {
            "n_simulations": self.n_simulations,
            "n_topics": self.n_topics,
            "n_events_per_simulation": self.n_events_per_simulation,
            "bins": self.bins,
        }
        for name, value in positive.items():
            if value < 1:
                msg = f"DemoConfig.{name} must be at least 1; received {value}."
                raise InvalidModelError(msg)
        if self.seed < 0:
            msg = f"DemoConfig.seed must be a non-negative integer; received {self.seed}."
            raise InvalidModelError(msg)
        if self.n_topics > self.n_simulations:
            msg = (
                f"{self.n_topics} topics cannot be learned from {self.n_simulations} simulations "
                "per process; ask for at most as many topics as simulations."
            )
            raise InvalidModelError(msg)


@dataclass(frozen=True)
class DemoResult:
    """Output of ``tamm demo``: the configuration, the true kappa and one fit per method."""

    config: DemoConfig
    kappa_true: float
    fits: dict[str, KappaFit]
    hellinger: dict[str, dict[str, float]]
    simulation_indices: dict[str, list[int]]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable record, with the software versions."""
        return {
            "tamm_version": __version__,
            "python": platform.python_version(),
            "config": asdict(self.config),
            "kappa_true": self.kappa_true,
            "fits": {
                name: {**fit.to_dict(), "pull": fit.pull(self.kappa_true)}
                for name, fit in self.fits.items()
            },
            "hellinger_to_truth": self.hellinger,
            "simulation_indices": self.simulation_indices,
            "timings_s": self.timings,
        }

    def table(self) -> str:
        """Format the fits as a fixed-width text table."""
        header = f"{'method':<18} {'kappa':>8} {'sigma':>8} {'pull':>7}  {'status':<10}"
        lines = [f"kappa_true = {self.kappa_true:.5f}", header, "-" * len(header)]
        for name, fit in self.fits.items():
            status = "converged" if fit.converged else "FAILED"
            lines.append(
                f"{name:<18} {fit.kappa:8.5f} {fit.sigma:8.5f} {fit.pull(self.kappa_true):7.2f}  {status:<10}"
            )
        return "\n".join(lines)


def _fitted_shapes(model: Any, fit: KappaFit) -> FittedShapes:
    """Expected signal and background counts of a pyhf model at the fitted parameters."""
    values = np.zeros(model.config.npars)
    for name, value in fit.parameters.items():
        values[model.config.par_slice(name)] = value
    by_sample = np.asarray(model.main_model.expected_data(values, return_by_sample=True))
    samples = model.config.samples
    return FittedShapes(
        by_sample[samples.index("signal")],
        by_sample[samples.index("background")],
        fit.kappa,
        fit.sigma,
    )


def run_demo(
    config: DemoConfig = DemoConfig(),
    *,
    output_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo pipeline and optionally write ``results.json`` and ``demo.png``.

    Args:
        config: Settings; the defaults are those of ``tamm demo``.
        output_dir: Directory for the outputs (created if missing); ``None`` writes nothing.
        progress: Called with a short description before each step (for progress bars).

    Returns:
        The fits of each engine's TAMM and baseline methods (and the binned oracle), with the
        true kappa.
    """

    def step(text: str) -> None:
        log.info("%s", text)
        if progress is not None:
            progress(text)

    toy = GaussianToy()
    region = toy.region(bins=config.bins)
    # NB: the first five streams keep their order, so binned results of a seed do not change
    # when the unbinned engine runs too.
    choice_seed, signal_seed, background_seed, topic_seed, data_seed, unbinned_seed = (
        np.random.SeedSequence(config.seed).spawn(6)
    )
    timings: dict[str, float] = {}
    fits: dict[str, KappaFit] = {}
    distances: dict[str, dict[str, float]] = {}
    indices: dict[str, list[int]] = {}
    data = toy.pseudo_data(config.n_signal, config.n_background, seed=data_seed)
    binned: _BinnedOutcome | None = None
    if config.engine in ("binned", "both"):
        binned = _run_binned(
            config,
            toy,
            region,
            data,
            (choice_seed, signal_seed, background_seed, topic_seed),
            step,
            timings,
        )
        fits.update(binned.fits)
        distances = _hellinger_table(binned.shapes, binned.histograms, binned.truth)
        indices.update({f"binned {p}": idx for p, idx in binned.indices.items()})
    unbinned: _UnbinnedOutcome | None = None
    if config.engine in ("unbinned", "both"):
        unbinned = _run_unbinned(config, toy, data, unbinned_seed, step, timings)
        fits.update(unbinned.fits)
        indices.update({f"unbinned {p}": idx for p, idx in unbinned.indices.items()})

    result = DemoResult(
        config=config,
        kappa_true=data.kappa_true,
        fits=fits,
        hellinger=distances,
        simulation_indices=indices,
        timings=timings,
    )
    if output_dir is not None:
        step("writing results.json and demo.png")
        _write_outputs(Path(output_dir), result, toy, region, data, binned, unbinned)
    return result


@dataclass(frozen=True)
class _BinnedOutcome:
    fits: dict[str, KappaFit]
    shapes: dict[str, FittedShapes]
    histograms: dict[str, NDArray[np.float64]]
    truth: dict[str, NDArray[np.float64]]
    indices: dict[str, list[int]]


def _run_binned(
    config: DemoConfig,
    toy: GaussianToy,
    region: Region,
    data: PseudoData,
    seeds: tuple[np.random.SeedSequence, ...],
    step: Callable[[str], None],
    timings: dict[str, float],
) -> _BinnedOutcome:
    """Learn topics and fit kappa with the topic mixture, the baseline and the oracle (pyhf)."""
    from tamm.pyhf import baseline_spec, build_workspace, fit_kappa, model_and_data, tamm_spec
    from tamm.topics import learn_topics

    choice_seed, signal_seed, background_seed, topic_seed = seeds
    start = time.perf_counter()
    step(f"binned: drawing {config.n_simulations} simulations per process")
    signal_choice, background_choice = choice_seed.spawn(2)
    indices = {
        "signal": toy.choose_simulations(config.n_simulations, seed=signal_choice),
        "background": toy.choose_simulations(config.n_simulations, seed=background_choice),
    }
    n_events = config.n_events_per_simulation
    simulations = {
        "signal": toy.simulations("signal", indices["signal"], n_events=n_events, seed=signal_seed),
        "background": toy.simulations(
            "background", indices["background"], n_events=n_events, seed=background_seed
        ),
    }
    histograms = {process: sims.histograms(region) for process, sims in simulations.items()}
    timings["binned simulations"] = time.perf_counter() - start

    step(f"binned: learning {config.n_topics} topics per process")
    start = time.perf_counter()
    topic_seeds = topic_seed.generate_state(2)
    topics = {
        process: learn_topics(sims, region, config.n_topics, seed=int(s))
        for (process, sims), s in zip(simulations.items(), topic_seeds, strict=True)
    }
    timings["binned topics"] = time.perf_counter() - start

    step("binned: fitting kappa with TAMM, the baseline and the oracle")
    start = time.perf_counter()
    observed = region.histogram(data.events)
    truth = {
        process: toy.true_bin_probabilities(process, region) for process in ("signal", "background")
    }
    specs = {
        "tamm-binned": tamm_spec(topics["signal"].topics, topics["background"].topics, observed),
        "baseline": baseline_spec(histograms["signal"][0], histograms["background"][0], observed),
        "oracle": baseline_spec(truth["signal"], truth["background"], observed),
    }
    fits: dict[str, KappaFit] = {}
    shapes: dict[str, FittedShapes] = {}
    for method, spec in specs.items():
        model, model_data = model_and_data(build_workspace(spec))
        fits[method] = fit_kappa(model, model_data, method=method)
        shapes[method] = _fitted_shapes(model, fits[method])
    timings["binned fits"] = time.perf_counter() - start
    return _BinnedOutcome(
        fits, shapes, histograms, truth, {p: [int(i) for i in idx] for p, idx in indices.items()}
    )


def _run_unbinned(
    config: DemoConfig,
    toy: GaussianToy,
    data: PseudoData,
    seed: np.random.SeedSequence,
    step: Callable[[str], None],
    timings: dict[str, float],
) -> _UnbinnedOutcome:
    """Train the ratio ensemble and fit kappa with the geometric mixture and its baseline."""
    from tamm.mixture import (
        MixtureSamples,
        TemplateAdaptedLikelihood,
        fit_baseline_unbinned,
        fit_unbinned,
        split_pool,
    )
    from tamm.ratios import BaselineRatio, TrainingSettings, train_ratios
    from tamm.unbinned_analysis import baseline_counts, fitted_counts

    region = toy.region(bins=None)
    choice_seed, sample_seed, train_seed, split_seed, baseline_seed = seed.spawn(5)
    n_sims = config.unbinned_n_simulations
    start = time.perf_counter()
    step(f"unbinned: drawing {n_sims} simulations per process")
    signal_choice, background_choice = choice_seed.spawn(2)
    indices = {
        "signal": toy.choose_simulations(n_sims, seed=signal_choice),
        "background": toy.choose_simulations(n_sims, seed=background_choice),
    }
    signal_sample_seed, background_sample_seed = sample_seed.spawn(2)
    simulations = {
        "signal": toy.simulations(
            "signal",
            indices["signal"],
            n_events=config.unbinned_events_per_simulation,
            seed=signal_sample_seed,
        ),
        "background": toy.simulations(
            "background",
            indices["background"],
            n_events=config.unbinned_events_per_simulation,
            seed=background_sample_seed,
        ),
    }
    timings["unbinned simulations"] = time.perf_counter() - start

    step(
        f"unbinned: training {config.unbinned_members} ratio networks over {2 * n_sims} simulations"
    )
    start = time.perf_counter()
    settings = TrainingSettings(
        n_members=config.unbinned_members, max_epochs=config.unbinned_max_epochs
    )
    train_state = int(train_seed.generate_state(1)[0])
    ensemble = train_ratios(
        [simulations["signal"], simulations["background"]],
        region=region,
        settings=settings,
        seed=train_state,
        progress=False,
    )
    baseline = BaselineRatio.train(
        simulations["signal"][0],
        simulations["background"][0],
        region=region,
        settings=settings,
        seed=int(baseline_seed.generate_state(1)[0]),
        progress=False,
    )
    timings["unbinned training"] = time.perf_counter() - start

    step("unbinned: fitting kappa with TAMM and the baseline")
    start = time.perf_counter()
    # Equal numbers of events per simulation before the cut, so the pool is the equal mixture.
    pooled = np.concatenate([sim.events for sims in simulations.values() for sim in sims])
    pooled = pooled[region.contains(pooled)]
    n_reference = min(n_sims * config.n_background, len(pooled) // 2)
    reference_events, penalty_events = split_pool(pooled, n_reference, n_reference, seed=split_seed)
    samples = MixtureSamples(
        ensemble.log_ratios(data.events, region),
        ensemble.log_ratios(reference_events, region),
        ensemble.log_ratios(penalty_events, region),
        n_signal_classes=n_sims,
    )
    unbinned = fit_unbinned(TemplateAdaptedLikelihood(samples))
    background_events = simulations["background"][0].events
    background_events = background_events[region.contains(background_events)]
    reference_log_ratio = baseline.log_ratio(background_events, region)
    baseline_fit = fit_baseline_unbinned(
        baseline.log_ratio(data.events, region), reference_log_ratio
    )
    timings["unbinned fits"] = time.perf_counter() - start

    # Fitted shapes in the binned engine's bins, for the plot.
    binning = toy.region(bins=config.bins)
    n_data = float(len(data.events))
    shapes = {
        "tamm-unbinned": FittedShapes(
            *fitted_counts(binning, reference_events, samples.reference, unbinned, n_data),
            unbinned.kappa,
            unbinned.sigma,
        ),
        "baseline-unbinned": FittedShapes(
            *baseline_counts(
                binning, background_events, reference_log_ratio, baseline_fit.kappa, n_data
            ),
            baseline_fit.kappa,
            baseline_fit.sigma,
        ),
    }
    histograms = {
        process: np.stack([binning.histogram(sim.events) for sim in sims])
        for process, sims in simulations.items()
    }
    return _UnbinnedOutcome(
        {"tamm-unbinned": unbinned.kappa_fit, "baseline-unbinned": baseline_fit.kappa_fit},
        shapes,
        histograms,
        {p: [int(i) for i in idx] for p, idx in indices.items()},
    )


@dataclass(frozen=True)
class _UnbinnedOutcome:
    fits: dict[str, KappaFit]
    shapes: dict[str, FittedShapes]
    histograms: dict[str, NDArray[np.float64]]
    indices: dict[str, list[int]]


def _hellinger_table(
    shapes: dict[str, FittedShapes],
    histograms: dict[str, NDArray[np.float64]],
    truth: dict[str, NDArray[np.float64]],
) -> dict[str, dict[str, float]]:
    """Hellinger distance to nature's shape: per fitted method, and the mean over simulations."""
    table: dict[str, dict[str, float]] = {}
    for process in ("signal", "background"):
        row = {
            method: float(hellinger(getattr(shape, process), truth[process]))
            for method, shape in shapes.items()
        }
        row["mean single simulation"] = float(
            np.mean(hellinger(histograms[process], truth[process]))
        )
        table[process] = row
    return table


def _write_outputs(
    directory: Path,
    result: DemoResult,
    toy: GaussianToy,
    region: Region,
    data: PseudoData,
    binned: _BinnedOutcome | None,
    unbinned: _UnbinnedOutcome | None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    shapes: dict[str, FittedShapes] = {}
    if binned is not None:
        shapes.update({name: binned.shapes[name] for name in ("tamm-binned", "baseline")})
        histograms, truth = binned.histograms, binned.truth
    if unbinned is not None:
        shapes.update(unbinned.shapes)
        if binned is None:
            histograms = unbinned.histograms
            truth = {p: toy.true_bin_probabilities(p, region) for p in ("signal", "background")}
    plot_binned_fit(
        region,
        region.histogram(data.events),
        shapes,
        histograms,
        truth=truth,
        kappa_true=result.kappa_true,
        path=directory / "demo.png",
    )
