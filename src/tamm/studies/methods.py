"""Methods of a study: what one draw provides, what one fit returns, and the registry.

A method is a :class:`Method`, registered under its name with :func:`register_method`:

- ``prepare(draw)`` (optional) runs once per draw, anywhere, and returns a mapping of numpy
  arrays (for example learned topics). The runner stores them with the draw, so they are
  computed once even when many workers fit that draw.
- ``build(draw)`` runs once per draw in each worker process that fits it and returns a
  :class:`Fitter`: a callable that fits one :class:`Experiment` and returns a
  :class:`MethodOutcome`. The fitter is reused for every pseudo-experiment of the draw, so
  expensive objects (pyhf models, compiled samplers) are built once per draw and worker.

``prepare`` and ``build`` travel to worker processes by reference, so they must be functions
defined at module level in an importable module (not lambdas, not in ``__main__``).

Built-in methods, all fitted with pyhf on the numpy backend:

====================  =========================================================================
``tamm-binned``       topic mixtures: ``n_topics`` topics per process learned from the draw's
                      simulations (:func:`tamm.pyhf.tamm_spec`)
``tamm-binned-jk``    the topic mixture with sigma = the pyhf sigma and the jackknife over the
                      simulations in quadrature (:func:`tamm.inference.jackknife_binned`;
                      topics learned again without each simulation, once per draw)
``baseline``          the draw's first simulation of each process as fixed templates
``histosys``          mean templates with principal shape systematics
                      (:func:`tamm.inference.histosys_spec`)
``oracle``            nature's exact shapes (:func:`tamm.inference.oracle_spec`)
``tamm-unbinned-exact``  the unbinned geometric mixture (:func:`tamm.mixture.fit_unbinned`) on
                      the exact log ratios of the draw's first ``min(10, n_simulations)``
                      simulations per process, so it measures the method without network
                      error; sandwich sigma and profile intervals; about 2 s per fit
``tamm-unbinned-exact-jk``  the ``tamm-unbinned-exact`` fit, with sigma the sandwich sigma and the linearised
                      jackknife over the simulations in quadrature
                      (:func:`tamm.mixture.jackknife_simulations`); no profile intervals
``tamm-posterior``    the topic mixture sampled with NUTS
                      (:func:`tamm.inference.sample_posterior`); not run by default, about
                      2 s per fit
====================  =========================================================================
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from tamm.datasets import GaussianToy, PseudoData
from tamm.exceptions import InvalidModelError, TammWarning
from tamm.results import KappaFit
from tamm.samples import Region, SimulationSet
from tamm.studies.config import StudyConfig

__all__ = [
    "Draw",
    "Experiment",
    "Fitter",
    "Method",
    "MethodOutcome",
    "available_methods",
    "get_method",
    "register_method",
    "unregister_method",
]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

PROCESSES = ("signal", "background")

# Confidence levels of the stored intervals: Phi(s) - Phi(-s) for s = 1 and 2.
INTERVAL_LEVELS = {"68.3": math.erf(1 / math.sqrt(2)), "95.4": math.erf(2 / math.sqrt(2))}


# ---------------------------------------------------------------------------------------------
# Data handed to methods


@dataclass(eq=False)
class Draw:
    """One random choice of biased simulations, and everything derived from it.

    Attributes:
        config: The study settings.
        index: Index of the draw in the study.
        region: The binned fiducial region.
        simulation_indices: Indices of the chosen simulations per process, shape (n_sims,).
        histograms: Histograms of the chosen simulations per process, shape (n_sims, V).
        truth: Nature's exact bin probabilities per process, shape (V,).
        artifacts: Arrays returned by each method's ``prepare``, by method name.
    """

    config: StudyConfig
    index: int
    region: Region
    simulation_indices: dict[str, NDArray[np.int64]]
    histograms: dict[str, NDArray[np.float64]]
    truth: dict[str, NDArray[np.float64]]
    artifacts: dict[str, dict[str, NDArray[np.float64]]] = field(default_factory=dict)
    _simulations: dict[str, SimulationSet] = field(default_factory=dict, repr=False)
    _topics: dict[str, NDArray[np.float64]] | None = field(default=None, repr=False)

    def simulations(self, process: str) -> SimulationSet:
        """Return the events of the chosen simulations of ``process``.

        They are regenerated from the draw's seed on first use in a process (about 1 s per
        process for 10 x 400 000 events), identical to those the histograms were made from.
        """
        if process not in self._simulations:
            self._simulations.update(_sample_simulations(self.config, self.index))
        return self._simulations[process]

    def topics(self) -> dict[str, NDArray[np.float64]]:
        """Return ``n_topics`` topics per process, shape (K, V), learned once per process.

        Methods that share topics call this in ``prepare``, so the topics are learned once.
        """
        if self._topics is None:
            from tamm.studies._threads import configure_tensorflow_threads
            from tamm.topics import learn_topics

            configure_tensorflow_threads()
            topic_seeds = self.config.draw_seed(self.index).spawn(5)[4].generate_state(2)
            self._topics = {
                f"{process}_topics": learn_topics(
                    self.simulations(process), self.region, self.config.n_topics, seed=int(seed)
                ).topics
                for process, seed in zip(PROCESSES, topic_seeds, strict=True)
            }
        return self._topics

    def to_payload(self) -> dict[str, Any]:
        """Return the draw as plain data (lists and numpy arrays) for another process."""
        return {
            "index": self.index,
            "simulation_indices": {
                key: value.tolist() for key, value in self.simulation_indices.items()
            },
            "histograms": dict(self.histograms),
            "truth": dict(self.truth),
            "artifacts": {name: dict(arrays) for name, arrays in self.artifacts.items()},
        }

    @classmethod
    def from_payload(cls, config: StudyConfig, payload: Mapping[str, Any]) -> Draw:
        """Rebuild a draw sent by :meth:`to_payload`."""
        return cls(
            config=config,
            index=int(payload["index"]),
            region=_toy(config).region(bins=config.bins),
            simulation_indices={
                key: np.asarray(value, dtype=np.int64)
                for key, value in payload["simulation_indices"].items()
            },
            histograms={key: np.asarray(value) for key, value in payload["histograms"].items()},
            truth={key: np.asarray(value) for key, value in payload["truth"].items()},
            artifacts={
                name: {key: np.asarray(value) for key, value in arrays.items()}
                for name, arrays in payload["artifacts"].items()
            },
        )


def _toy(config: StudyConfig) -> GaussianToy:
    if config.dataset != "gaussian-toy":  # pragma: no cover - guarded by StudyConfig
        msg = f"Unknown dataset {config.dataset!r}."
        raise InvalidModelError(msg)
    return GaussianToy()


def _sample_simulations(config: StudyConfig, index: int) -> dict[str, SimulationSet]:
    """Choose and sample the simulations of draw ``index`` from its seed."""
    toy = _toy(config)
    choice_signal, choice_background, signal_seed, background_seed, _ = config.draw_seed(
        index
    ).spawn(5)
    chosen = {
        "signal": toy.choose_simulations(config.n_simulations, seed=choice_signal),
        "background": toy.choose_simulations(config.n_simulations, seed=choice_background),
    }
    seeds = {"signal": signal_seed, "background": background_seed}
    return {
        process: toy.simulations(
            process,  # type: ignore[arg-type]
            chosen[process],
            n_events=config.n_events_per_simulation,
            seed=seeds[process],
        )
        for process in PROCESSES
    }


def make_draw(config: StudyConfig, index: int) -> Draw:
    """Sample the simulations of draw ``index`` and histogram them (no method artifacts)."""
    toy = _toy(config)
    region = toy.region(bins=config.bins)
    simulations = _sample_simulations(config, index)
    return Draw(
        config=config,
        index=index,
        region=region,
        simulation_indices={
            process: np.array([int(sim.settings["index"]) for sim in sims], dtype=np.int64)
            for process, sims in simulations.items()
        },
        histograms={process: sims.histograms(region) for process, sims in simulations.items()},
        truth={
            process: toy.true_bin_probabilities(process, region)  # type: ignore[arg-type]
            for process in PROCESSES
        },
        _simulations=simulations,
    )


@dataclass(frozen=True, eq=False)
class Experiment:
    """One pseudo-dataset of a draw.

    Attributes:
        draw: Index of the draw.
        index: Index of the pseudo-experiment within the draw.
        data: The pseudo-data: events, generator truth and counts.
        observed: Histogram of the events in the draw's region, shape (V,).
        kappa_true: Signal fraction of the pseudo-data, from its counts.
        config: The study settings (for :meth:`seed`).
    """

    draw: int
    index: int
    data: PseudoData
    observed: NDArray[np.float64]
    kappa_true: float
    config: StudyConfig

    def seed(self, method: str) -> np.random.SeedSequence:
        """Return the seed sequence that ``method`` may use in this fit."""
        return self.config.method_seed(self.draw, self.index, method)


def make_experiment(draw: Draw, index: int) -> Experiment:
    """Draw pseudo-experiment ``index`` of ``draw`` from nature, from its seed."""
    config = draw.config
    data = _toy(config).pseudo_data(
        config.n_signal,
        config.n_background,
        poisson=config.poisson,
        seed=config.experiment_seed(draw.index, index),
    )
    return Experiment(
        draw=draw.index,
        index=index,
        data=data,
        observed=draw.region.histogram(data.events),
        kappa_true=data.kappa_true,
        config=config,
    )


@dataclass(frozen=True)
class MethodOutcome:
    """Result of one method on one pseudo-experiment.

    Attributes:
        fit: The point estimate, its symmetric uncertainty and the fit status.
        intervals: The method's own intervals by level label (``"68.3"``, ``"95.4"``), for
            example profile-likelihood or highest-density intervals; empty if not computed.
        z_interval: Signed distance of kappa_true from the estimate in units of the method's
            interval, so that ``|z| < s`` means that kappa_true lies inside the interval of
            level ``Phi(s) - Phi(-s)``. For profile intervals this is the signed root of q at
            kappa_true. NaN if not computed.
        shapes: Fitted signal and background shapes over the region's bins, shape (V,) each,
            any normalisation; None if the method has none.
    """

    fit: KappaFit
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    z_interval: float = math.nan
    shapes: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None


class Fitter(Protocol):
    """Fits one pseudo-experiment; built once per draw by :attr:`Method.build`."""

    def __call__(self, experiment: Experiment) -> MethodOutcome: ...


@dataclass(frozen=True)
class Method:
    """A fitting method that a study can run.

    Attributes:
        name: Unique name, used in configurations and result files.
        build: Called once per draw and worker; returns the :class:`Fitter`.
        prepare: Called once per draw; returns arrays stored with the draw in
            ``draw.artifacts[name]``. None if the method needs nothing prepared.
        description: One line for listings.
    """

    name: str
    build: Callable[[Draw], Fitter]
    prepare: Callable[[Draw], Mapping[str, NDArray[np.float64]]] | None = None
    description: str = ""


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> None:
    """Make ``method`` available to studies under ``method.name``.

    The process that runs the study resolves names, and worker processes import ``build``
    and ``prepare`` from their modules, so a method registered at run time works on every
    scheduler as long as those two functions are importable.

    Args:
        method: The method.
        replace: Replace a method already registered under the same name.

    Raises:
        InvalidModelError: If the name is taken and ``replace`` is False, or the name is empty.
    """
    if not method.name or not isinstance(method.name, str):
        msg = f"A method needs a non-empty name, but received {method.name!r}."
        raise InvalidModelError(msg)
    if method.name in _REGISTRY and not replace:
        msg = (
            f"A method named {method.name!r} is already registered; pass replace=True to "
            "replace it or choose another name."
        )
        raise InvalidModelError(msg)
    _REGISTRY[method.name] = method


def unregister_method(name: str) -> None:
    """Remove the method ``name`` from the registry; unknown names are ignored."""
    _REGISTRY.pop(name, None)


def available_methods() -> list[str]:
    """Return the names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """Return the registered method ``name``.

    Raises:
        InvalidModelError: If no method has that name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        msg = f"Unknown method {name!r}; the registered methods are {available_methods()}."
        raise InvalidModelError(msg) from None


# ---------------------------------------------------------------------------------------------
# pyhf-based methods


class PyhfFitter:
    """Fits kappa on one pyhf model: Minuit fit, then profile intervals and fitted shapes.

    Args:
        method: Label stored in the fits.
        spec: A workspace specification built with the draw's templates. Its observed counts
            only set the nominal normalisation; each experiment passes its own counts.
        profile: Also compute the profile-likelihood intervals and q at kappa_true.
    """

    def __init__(self, method: str, spec: Mapping[str, Any], *, profile: bool) -> None:
        from tamm.pyhf import build_workspace, model_and_data

        self.method = method
        self.model, _ = model_and_data(build_workspace(spec))
        self.auxdata = [float(value) for value in self.model.config.auxdata]
        self.profile = profile

    def __call__(self, experiment: Experiment) -> MethodOutcome:
        from tamm.inference.profile import profile_interval
        from tamm.pyhf import fit_kappa

        data = [float(value) for value in experiment.observed] + self.auxdata
        fit = fit_kappa(self.model, data, method=self.method)
        intervals: dict[str, tuple[float, float]] = {}
        z_interval = math.nan
        if self.profile and fit.converged:
            scan = profile_interval(
                self.model,
                data,
                cls=tuple(INTERVAL_LEVELS.values()),
                fit=fit,
                include=(experiment.kappa_true,),
            )
            intervals = {label: scan.interval(cl) for label, cl in INTERVAL_LEVELS.items()}
            z_interval = -scan.signed_root(experiment.kappa_true)
        return MethodOutcome(fit, intervals, z_interval, self._shapes(fit))

    def _shapes(self, fit: KappaFit) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        from tamm.pyhf import use_numpy_backend

        values = np.asarray(self.model.config.suggested_init(), dtype=np.float64)
        for name, value in fit.parameters.items():
            values[self.model.config.par_slice(name)] = value
        with use_numpy_backend():
            by_sample = np.asarray(
                self.model.main_model.expected_data(values, return_by_sample=True)
            )
        samples = list(self.model.config.samples)
        return by_sample[samples.index("signal")], by_sample[samples.index("background")]


def _nominal_counts(draw: Draw) -> NDArray[np.float64]:
    """Return flat counts with the expected total, used to build models once per draw."""
    total = draw.config.n_signal + draw.config.n_background
    return np.full(draw.region.n_bins, total / draw.region.n_bins)


def prepare_topics(draw: Draw) -> dict[str, NDArray[np.float64]]:
    """Learn the topics of both processes (``signal_topics``, ``background_topics``)."""
    return draw.topics()


def build_tamm_binned(draw: Draw) -> Fitter:
    """Build the topic-mixture fitter of a draw from its prepared topics."""
    from tamm.pyhf import tamm_spec

    topics = draw.artifacts["tamm-binned"]
    spec = tamm_spec(topics["signal_topics"], topics["background_topics"], _nominal_counts(draw))
    return PyhfFitter("tamm-binned", spec, profile=draw.config.profile)


def prepare_jackknife_topics(draw: Draw) -> dict[str, NDArray[np.float64]]:
    """Learn the topics and, per process, the topics without each simulation."""
    from tamm.inference.jackknife import leave_one_out_topics

    topics = draw.topics()
    prepared = dict(topics)
    for process in PROCESSES:
        reduced, converged = leave_one_out_topics(
            draw.histograms[process], topics[f"{process}_topics"], seed=0
        )
        prepared[f"{process}_leave_one_out"] = reduced
        prepared[f"{process}_leave_one_out_converged"] = converged.astype(np.float64)
    return prepared


class BinnedJackknifeFitter:
    """Fits the topic mixture and widens sigma with the jackknife over the simulations."""

    def __init__(self, draw: Draw) -> None:
        from tamm.pyhf import tamm_spec

        self.prepared = draw.artifacts[_BINNED_JACKKNIFE_METHOD]
        spec = tamm_spec(
            self.prepared["signal_topics"],
            self.prepared["background_topics"],
            _nominal_counts(draw),
        )
        self.fitter = PyhfFitter(_BINNED_JACKKNIFE_METHOD, spec, profile=False)

    def __call__(self, experiment: Experiment) -> MethodOutcome:
        from tamm.inference.jackknife import jackknife_from_topics

        outcome = self.fitter(experiment)
        fit = outcome.fit
        if not fit.converged:
            return outcome
        jackknife = jackknife_from_topics(
            {p: self.prepared[f"{p}_topics"] for p in PROCESSES},
            {p: self.prepared[f"{p}_leave_one_out"] for p in PROCESSES},
            experiment.observed,
            fit,
            topics_converged={
                p: self.prepared[f"{p}_leave_one_out_converged"] > 0.5 for p in PROCESSES
            },
        )
        parameters = {
            **fit.parameters,
            "sigma_statistical": fit.sigma,
            "sigma_simulations": jackknife.sigma_simulations,
        }
        total = replace(fit, sigma=jackknife.sigma_total, parameters=parameters)
        return MethodOutcome(total, shapes=outcome.shapes)


_BINNED_JACKKNIFE_METHOD = "tamm-binned-jk"


def build_tamm_binned_jackknife(draw: Draw) -> Fitter:
    """Build the topic-mixture fitter whose sigma includes the simulation jackknife."""
    return BinnedJackknifeFitter(draw)


def build_baseline(draw: Draw) -> Fitter:
    """Build the fitter with the draw's first simulation of each process as templates."""
    from tamm.pyhf import baseline_spec

    spec = baseline_spec(
        draw.histograms["signal"][0], draw.histograms["background"][0], _nominal_counts(draw)
    )
    return PyhfFitter("baseline", spec, profile=draw.config.profile)


def build_histosys(draw: Draw) -> Fitter:
    """Build the HistFactory fitter: mean templates with principal shape systematics."""
    from tamm.inference.competitors import histosys_spec

    spec = histosys_spec(
        draw.histograms["signal"],
        draw.histograms["background"],
        _nominal_counts(draw),
        n_components=draw.config.n_components,
    )
    return PyhfFitter("histosys", spec, profile=draw.config.profile)


def build_oracle(draw: Draw) -> Fitter:
    """Build the fitter with nature's exact shapes."""
    from tamm.inference.competitors import oracle_spec

    spec = oracle_spec(draw.truth["signal"], draw.truth["background"], _nominal_counts(draw))
    return PyhfFitter("oracle", spec, profile=draw.config.profile)


# ---------------------------------------------------------------------------------------------
# Posterior method


class PosteriorFitter:
    """Samples the posterior of the topic mixture for each pseudo-experiment."""

    def __init__(self, topics: Mapping[str, NDArray[np.float64]]) -> None:
        from tamm.studies._threads import configure_tensorflow_threads

        configure_tensorflow_threads()
        self.signal = np.asarray(topics["signal_topics"])
        self.background = np.asarray(topics["background_topics"])

    def __call__(self, experiment: Experiment) -> MethodOutcome:
        from scipy import stats

        from tamm.inference.posterior import sample_posterior

        seed = int(experiment.seed("tamm-posterior").generate_state(1)[0])
        posterior = sample_posterior(self.signal, self.background, experiment.observed, seed=seed)
        intervals = {label: posterior.hdi(cl) for label, cl in INTERVAL_LEVELS.items()}
        # Posterior CDF at the truth as a normal quantile: |z| < s exactly when kappa_true is
        # inside the central (equal-tailed) credible interval of level Phi(s) - Phi(-s).
        below = (np.sum(posterior.kappa < experiment.kappa_true) + 0.5) / (posterior.kappa.size + 1)
        z_interval = float(-stats.norm.ppf(below))
        return MethodOutcome(posterior.to_kappa_fit(), intervals, z_interval, posterior.shapes())


def build_posterior(draw: Draw) -> Fitter:
    """Build the posterior sampler of a draw from its prepared topics."""
    return PosteriorFitter(draw.artifacts["tamm-posterior"])


# ---------------------------------------------------------------------------------------------
# Unbinned method on exact ratios

# The unbinned study of arXiv 2604.02219 used 10 simulations per process.
_UNBINNED_SIMULATIONS = 10


class ExactUnbinnedFitter:
    """Fits the unbinned mixture with the exact log ratios of the draw's simulations.

    The reference and penalty samples (``K * n_background`` events each, disjoint, from the
    pooled simulations inside the region) and their log ratios are computed once per draw.
    """

    def __init__(self, draw: Draw, *, jackknife: bool = False) -> None:
        from tamm.datasets.gaussian_ratios import ExactGaussianRatios

        self.jackknife = jackknife

        n_sims = min(_UNBINNED_SIMULATIONS, draw.config.n_simulations)
        self.n_signal_classes = n_sims
        self.ratios = ExactGaussianRatios.from_toy(
            _toy(draw.config),
            draw.simulation_indices["signal"][:n_sims],
            draw.simulation_indices["background"][:n_sims],
            region=draw.region,
        )
        n_pool = n_sims * draw.config.n_background
        # The draw's sixth seed stream; the first five choose and sample its simulations.
        pool_seed = draw.config.draw_seed(draw.index).spawn(6)[5]
        pooled = self.ratios.sample_reference(2 * n_pool, seed=pool_seed)
        self.reference = self.ratios(pooled[:n_pool])
        self.penalty = self.ratios(pooled[n_pool:])

    def __call__(self, experiment: Experiment) -> MethodOutcome:
        from tamm.mixture import (
            MixtureSamples,
            TemplateAdaptedLikelihood,
            fit_unbinned,
            profile_intervals,
        )

        samples = MixtureSamples(
            self.ratios(experiment.data.events), self.reference, self.penalty, self.n_signal_classes
        )
        likelihood = TemplateAdaptedLikelihood(samples)
        result = fit_unbinned(likelihood, kappa_test=experiment.kappa_true)
        if self.jackknife:
            return self._with_jackknife(likelihood, result)
        intervals: dict[str, tuple[float, float]] = {}
        if experiment.config.profile and result.converged:
            found = profile_intervals(likelihood, result)
            intervals = {
                label: (float(found.lower[i]), float(found.upper[i]))
                for i, label in enumerate(INTERVAL_LEVELS)
            }
        return MethodOutcome(result.kappa_fit, intervals, float(result.z))

    @staticmethod
    def _with_jackknife(likelihood: Any, result: Any) -> MethodOutcome:
        """Return the fit with sigma = the sandwich and jackknife sigmas in quadrature."""
        from tamm.mixture import jackknife_simulations

        fit = result.kappa_fit
        if not result.converged:
            return MethodOutcome(replace(fit, method=_JACKKNIFE_METHOD))
        jackknife = jackknife_simulations(likelihood, result)
        parameters = {
            **fit.parameters,
            "sigma_statistical": fit.sigma,
            "sigma_simulations": jackknife.sigma_simulations,
        }
        total = replace(
            fit, method=_JACKKNIFE_METHOD, sigma=jackknife.sigma_total, parameters=parameters
        )
        return MethodOutcome(total)


_JACKKNIFE_METHOD = "tamm-unbinned-exact-jk"


def build_unbinned_exact(draw: Draw) -> Fitter:
    """Build the exact-ratio unbinned fitter of a draw."""
    return ExactUnbinnedFitter(draw)


def build_unbinned_exact_jackknife(draw: Draw) -> Fitter:
    """Build the exact-ratio unbinned fitter whose sigma includes the simulation jackknife."""
    return ExactUnbinnedFitter(draw, jackknife=True)


def _register_builtin_methods() -> None:
    builtin = [
        Method("tamm-binned", build_tamm_binned, prepare_topics, "topic mixtures, pyhf"),
        Method(
            _BINNED_JACKKNIFE_METHOD,
            build_tamm_binned_jackknife,
            prepare_jackknife_topics,
            "as tamm-binned, sigma adds the jackknife over the simulations",
        ),
        Method("baseline", build_baseline, None, "first simulation per process as template"),
        Method("histosys", build_histosys, None, "mean template with principal shape systematics"),
        Method("oracle", build_oracle, None, "nature's exact shapes"),
        Method("tamm-posterior", build_posterior, prepare_topics, "topic mixtures, NUTS posterior"),
        Method(
            "tamm-unbinned-exact",
            build_unbinned_exact,
            None,
            "geometric mixture on exact log ratios of 10 simulations per process",
        ),
        Method(
            _JACKKNIFE_METHOD,
            build_unbinned_exact_jackknife,
            None,
            "as tamm-unbinned-exact, sigma adds the jackknife over the simulations",
        ),
    ]
    for method in builtin:
        register_method(method, replace=True)


_register_builtin_methods()


def run_method(
    fitter: Fitter, experiment: Experiment, method: str
) -> tuple[MethodOutcome | None, str]:
    """Run one fit, catching its warnings; return (outcome or None, messages).

    tamm's warnings (for example a ConvergenceWarning) and any other warning the process's
    filters show are collected into the returned text, so a study never prints per-fit
    warnings. A warning that the filters turn into an error makes the fit fail.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TammWarning)
        try:
            outcome = fitter(experiment)
        # NB: a study must survive any failure of one fit, so the error is logged with its
        # ids and stored in the results file as a failed fit.
        except Exception as err:  # noqa: BLE001
            log.warning(
                "%s failed on draw %d, experiment %d: %s: %s",
                method,
                experiment.draw,
                experiment.index,
                type(err).__name__,
                err,
            )
            return None, f"{type(err).__name__}: {err}"
    notes = "; ".join(f"{item.category.__name__}: {item.message}" for item in caught)
    return outcome, notes
