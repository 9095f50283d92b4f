"""Time tamm's pyhf adapter and compare its uncertainty of kappa with Hesse and a profile scan.

Run with ``python benchmarks/bench_pyhf.py`` (timings) and add ``--sigma-study`` for the
comparison of uncertainties. The model has 2 x 20 random topics over 100 bins, and the data are
a Poisson draw of 5000 expected events from a random mixture of those topics. Each fit starts
from scratch on the same model object, as a user's repeated fits would. The script prints
wall-clock times (median, min and max of repeated calls) and asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import iminuit
import numpy as np
import pyhf

from tamm.pyhf import build_model, fit_kappa, hypotest_kappa, initial_parameters, tamm_spec


def make_inputs(
    n_topics: int, n_bins: int, kappa: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return signal topics (K, V), background topics (K, V) and Poisson counts (V,)."""
    rng = np.random.default_rng(seed)
    signal = rng.gamma(2.0, size=(n_topics, n_bins))
    background = rng.gamma(2.0, size=(n_topics, n_bins))
    signal /= signal.sum(axis=1, keepdims=True)
    background /= background.sum(axis=1, keepdims=True)
    shape = kappa * rng.dirichlet(np.ones(n_topics)) @ signal
    shape += (1 - kappa) * rng.dirichlet(np.ones(n_topics)) @ background
    observed = rng.poisson(5000 * shape).astype(np.float64)
    return signal, background, observed


def time_calls(function: Callable[[], object], repeats: int) -> list[float]:
    durations = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function()
        durations.append(time.perf_counter() - begin)
    return durations


def report(label: str, durations: list[float]) -> None:
    print(
        f"{label:<44s} median {statistics.median(durations) * 1e3:8.1f} ms   "
        f"min {min(durations) * 1e3:8.1f} ms   max {max(durations) * 1e3:8.1f} ms   "
        f"(n={len(durations)})"
    )


def run_timings(options: argparse.Namespace) -> None:
    signal, background, observed = make_inputs(options.topics, options.bins, 0.2, options.seed)
    spec = tamm_spec(signal, background, observed)
    report("build_model", time_calls(lambda: build_model(spec), options.repeats))

    model = build_model(spec)
    data = observed.tolist() + model.config.auxdata
    print(f"model: {model.config.npars} parameters, {model.config.nmaindata} bins")
    pyhf.set_backend("numpy")
    pars = np.asarray(model.config.suggested_init())
    report("model.logpdf (one call)", time_calls(lambda: model.logpdf(pars, data), 200))
    report(
        "initial_parameters", time_calls(lambda: initial_parameters(model, data), options.repeats)
    )

    result = fit_kappa(model, data)
    print(f"fit_kappa: kappa = {result.kappa:.4f} +- {result.sigma:.4f}; {result.message}")
    report(
        "fit_kappa (default: mixture start, strategy 0)",
        time_calls(lambda: fit_kappa(model, data), options.repeats),
    )
    report(
        "fit_kappa (mixture start, strategy 1)",
        time_calls(lambda: fit_kappa(model, data, strategy=1), options.repeats),
    )
    suggested = model.config.suggested_init()
    uniform = fit_kappa(model, data, init_pars=suggested)
    print(
        f"fit_kappa from suggested_init: kappa = {uniform.kappa:.4f}, nll {uniform.nll:.4f} "
        f"(default start: nll {result.nll:.4f})"
    )
    report(
        "fit_kappa (suggested_init, strategy 1)",
        time_calls(
            lambda: fit_kappa(model, data, init_pars=suggested), max(2, options.repeats // 3)
        ),
    )
    report(
        "hypotest_kappa (asymptotics, qtilde)",
        time_calls(lambda: hypotest_kappa(model, data, 0.3), 2),
    )


def minuit_on_model(
    model: pyhf.Model, data: list[float], kappa: float | None, strategy: int = 2
) -> iminuit.Minuit:
    """Return Minuit after Migrad on pyhf's objective, with kappa fixed if given."""
    data_array = np.asarray(data)
    minuit = iminuit.Minuit(
        lambda pars: float(pyhf.infer.mle.twice_nll(pars, data_array, model)[0]),
        initial_parameters(model, data),
        name=model.config.par_names,
    )
    minuit.errordef = 1.0
    minuit.strategy = strategy
    minuit.limits = model.config.suggested_bounds()
    if kappa is not None:
        minuit.values["kappa"] = kappa
        minuit.fixed["kappa"] = True
    minuit.migrad()
    return minuit


def run_sigma_study(options: argparse.Namespace) -> None:
    """Print four uncertainties of kappa for several data sets.

    Hesse runs after Migrad with strategy 0 (as fit_kappa runs Migrad) and with strategy 2,
    both from the start values of fit_kappa. The profile scan fixes kappa at
    kappa_hat -+ 0.04, minimises the rest and converts each rise of 2 NLL into
    step / sqrt(rise). The table shows the mean of both sides.
    """
    print("seed  kappa_hat  tamm sigma  Hesse (strategy 0)  Hesse (strategy 2)  profile scan")
    pyhf.set_backend("numpy")
    for seed in range(options.sigma_seeds):
        kappa_true = [0.0, 0.1, 0.2, 0.3][seed % 4]
        signal, background, observed = make_inputs(options.topics, options.bins, kappa_true, seed)
        model = build_model(tamm_spec(signal, background, observed))
        data = observed.tolist()
        result = fit_kappa(model, data)
        pyhf.set_backend("numpy")

        hesse = []
        for strategy in (0, 2):
            free = minuit_on_model(model, data, None, strategy)
            free.hesse()
            hesse.append(math.nan if free.fmin.hesse_failed else free.errors["kappa"])
        step = 0.04
        rises = [
            minuit_on_model(model, data, free.values["kappa"] + sign * step).fval - free.fval
            for sign in (-1, 1)
        ]
        scan = statistics.mean(step / math.sqrt(rise) if rise > 0 else math.nan for rise in rises)
        print(
            f"{seed:4d}  {result.kappa:9.4f}  {result.sigma:10.4f}  {hesse[0]:18.4f}  "
            f"{hesse[1]:18.4f}  {scan:12.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=20, help="topics per process (K)")
    parser.add_argument("--bins", type=int, default=100, help="number of bins (V)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement")
    parser.add_argument("--seed", type=int, default=2604, help="seed of the random inputs")
    parser.add_argument(
        "--sigma-study", action="store_true", help="also compare uncertainties of kappa"
    )
    parser.add_argument("--sigma-seeds", type=int, default=8, help="data sets in the sigma study")
    options = parser.parse_args()

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pyhf {pyhf.__version__}, "
        f"iminuit {iminuit.__version__}, {platform.machine()}"
    )
    run_timings(options)
    if options.sigma_study:
        run_sigma_study(options)


if __name__ == "__main__":
    main()
