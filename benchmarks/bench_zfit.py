"""Time the zfit workflows on the unbinned TAMM PDF at the size of the Gaussian toy study.

Run from the repository root:

    python benchmarks/bench_zfit.py [--n-reference 250000] [--repeats 2] [--skip-limit]

One pseudo-experiment of the Gaussian toy at the sizes of arXiv 2604.02219: K = 10 simulations
per process, 55 000 data events (kappa = 1/11), a reference and a penalty sample of ``--n-reference`` events each, and the
exact log ratios of the simulation Gaussians in TensorFlow. The script builds
``TammPDF(..., n_data=N)`` and ``tamm_nll`` (the standalone TAMM loss as a zfit loss), then
prints the wall time of:

* building the PDF and the loss (log ratios of the reference and penalty samples);
* the first Minuit fit (which includes tracing the TensorFlow graphs) and repeated fits from
  the same start point, with ``Minuit(gradient="zfit", mode=0, tol=1e-7)``, and optionally
  one fit with zfit's default settings (``--default-minuit``);
* ``result.hesse()`` with Minuit's numerical Hesse and with zfit's autodiff Hessian
  (``method="hesse_np"``);
* a 10-point profile scan of kappa from max(kappa_hat - 2 sigma, 0) to kappa_hat + 2 sigma;
* ``pdf.sample(100_000)``, first call (traced) and repeated;
* the asymptotic CLs upper limit from ``tamm.zfit.hepstats.upper_limit`` (10 kappa values
  from 0 to 0.9, Asimov dataset in 20 x 20 bins).

It also fits the same samples with :func:`tamm.mixture.fit_unbinned` and prints the difference
in kappa and the ratios of both Hesse uncertainties to its inverse-Hessian uncertainty. Wall times depend on the machine and on
other processes; the load average at the start is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

# NB: zfit warns on import unless this is set, and this script needs no TensorFlow logs.
os.environ.setdefault("ZFIT_DISABLE_TF_WARNINGS", "1")

import numpy as np
import tensorflow as tf
import zfit

from tamm.datasets import GaussianToy
from tamm.datasets.gaussian_ratios import ExactGaussianRatios
from tamm.mixture import MixtureSamples, TemplateAdaptedLikelihood, fit_unbinned
from tamm.zfit import TammPDF, exact_gaussian_log_ratio_fn, profile_scan, tamm_nll
from tamm.zfit.hepstats import upper_limit

ROOT_SEED = 20261204
K = 10
N_SIGNAL = 5000
N_BACKGROUND = 50_000


def describe_machine() -> None:
    print(
        f"python {platform.python_version()}, zfit {zfit.__version__}, tensorflow {tf.__version__}, "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


def timed(label: str, function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    print(f"{label:<44s} {time.perf_counter() - start:8.2f} s")
    return out


def build_inputs(n_reference: int):
    toy = GaussianToy()
    streams = np.random.SeedSequence(ROOT_SEED).spawn(4)
    ratios = ExactGaussianRatios.from_toy(
        toy,
        toy.choose_simulations(K, seed=streams[0]),
        toy.choose_simulations(K, seed=streams[1]),
    )
    data = toy.pseudo_data(N_SIGNAL, N_BACKGROUND, seed=streams[2]).events
    pool = ratios.sample_reference(2 * n_reference, seed=streams[3])
    return toy, ratios, data, pool[:n_reference], pool[n_reference:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n-reference", type=int, default=250_000, help="reference and penalty events (each)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeated fits to time")
    parser.add_argument("--skip-limit", action="store_true", help="skip the hepstats limit")
    parser.add_argument(
        "--default-minuit",
        action="store_true",
        help="also time one fit with zfit's default Minuit settings (slow: about a thousand calls)",
    )
    args = parser.parse_args()

    describe_machine()
    print(
        f"K = {K} per process, {N_SIGNAL + N_BACKGROUND} data events, "
        f"{args.n_reference} reference + {args.n_reference} penalty events"
    )
    toy, ratios, data, reference, penalty = timed(
        "draw the samples (numpy)", build_inputs, args.n_reference
    )
    log_ratio_fn = exact_gaussian_log_ratio_fn(ratios)
    pdf = timed(
        "TammPDF (log ratios of the reference)",
        TammPDF,
        toy.region(None),
        log_ratio_fn,
        reference,
        n_data=len(data),
    )
    loss = timed("tamm_nll (log ratios of the penalty)", tamm_nll, pdf, data, penalty=penalty)
    params = list(loss.get_params())
    start = [float(p.value()) for p in params]

    # Strategy 0 skips Minuit's numerical second derivatives, which take most of its calls
    # with 19 parameters. The small tolerance lets the flat weight directions converge.
    minimizer = zfit.minimize.Minuit(gradient="zfit", mode=0, tol=1e-7)
    result = timed("first Minuit fit, mode=0 tol=1e-7 (tracing)", minimizer.minimize, loss)
    repeats = []
    for _ in range(args.repeats):
        zfit.param.set_values(params, start)
        begin = time.perf_counter()
        result = minimizer.minimize(loss)
        repeats.append(time.perf_counter() - begin)
    label = f"repeated Minuit fit (median of {args.repeats})"
    print(f"{label:<44s} {statistics.median(repeats):8.2f} s")
    original = result.info["original"]
    print(
        f"  valid={result.valid}, edm={result.edm:.2g}, calls={original.nfcn}, gradients={original.ngrad}"
    )
    if args.default_minuit:
        zfit.param.set_values(params, start)
        default = timed(
            "Minuit fit, zfit defaults (mode=1 tol=1e-3)",
            zfit.minimize.Minuit(gradient="zfit").minimize,
            loss,
        )
        original = default.info["original"]
        print(f"  edm={default.edm:.2g}, calls={original.nfcn}, gradients={original.ngrad}")
        zfit.param.set_values(params, [result.params[p]["value"] for p in params])

    timed("hesse (minuit_hesse, numerical)", result.hesse, name="minuit_hesse")
    timed("hesse (hesse_np, autodiff Hessian)", result.hesse, method="hesse_np", name="hesse_np")
    kappa = result.params[pdf.kappa]
    print(
        f"  kappa = {kappa['value']:.5f} +- {kappa['hesse_np']['error']:.5f} (hesse_np), "
        f"+- {kappa['minuit_hesse']['error']:.5f} (minuit_hesse); true "
        f"{N_SIGNAL / (N_SIGNAL + N_BACKGROUND):.5f}"
    )
    sigma = kappa["hesse_np"]["error"]

    # Below kappa = 0 the model ratio turns negative on signal-like events, so the grid stops
    # at 0.
    grid = np.linspace(max(kappa["value"] - 2.0 * sigma, 0.0), kappa["value"] + 2.0 * sigma, 10)
    scan = timed("profile scan, 10 kappa values", profile_scan, loss, grid, minimizer=minimizer)
    print(
        f"  q = {scan.q[0]:.3f} at kappa = {grid[0]:.4f}, q = {scan.q[-1]:.3f} at kappa = "
        f"{grid[-1]:.4f} (+2 sigma; 4 for a parabola)"
    )

    zfit.param.set_values(params, [result.params[p]["value"] for p in params])
    timed("sample(100 000), first call", pdf.sample, 100_000)
    timed("sample(100 000), repeated", pdf.sample, 100_000)

    samples = timed(
        "standalone features (numpy exact ratios)",
        lambda: MixtureSamples(ratios(data), ratios(reference), ratios(penalty)),
    )
    standalone = timed("standalone fit_unbinned", fit_unbinned, TemplateAdaptedLikelihood(samples))
    sigma_hesse = math.sqrt(np.linalg.inv(standalone.sandwich.hessian)[0, 0])
    print(
        f"  standalone kappa = {standalone.kappa:.6f} +- {sigma_hesse:.6f} (inverse Hessian); "
        f"zfit - standalone = {kappa['value'] - standalone.kappa:.2e} in kappa; sigma ratio "
        f"{kappa['hesse_np']['error'] / sigma_hesse:.4f} (hesse_np), "
        f"{kappa['minuit_hesse']['error'] / sigma_hesse:.4f} (minuit_hesse)"
    )

    if not args.skip_limit:
        values = np.linspace(0.0, 0.9, 10)
        limit = timed(
            "asymptotic CLs upper limit, 10 kappa values",
            upper_limit,
            loss,
            values,
            minimizer=minimizer,
            asimov_bins=[[20, 20]],
        )
        print(f"  observed {limit.observed:.4f}, expected {limit.expected:.4f}")


if __name__ == "__main__":
    main()
