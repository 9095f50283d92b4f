"""Binned TAMM on the paper's Gaussian toy, step by step.

Run from the repository root after `make install`:

    .venv/bin/python examples/gaussian_toy/binned_fit.py --seed 1 --output-dir example-output
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tamm.datasets import GaussianToy
from tamm.pyhf import (
    baseline_spec,
    build_workspace,
    fit_kappa,
    model_and_data,
    read_workspace,
    tamm_spec,
    write_workspace,
)
from tamm.topics import learn_topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="master seed")
    parser.add_argument("--n-simulations", type=int, default=40, help="simulations per process")
    parser.add_argument("--n-topics", type=int, default=10, help="topics per process")
    parser.add_argument("--output-dir", type=Path, default=Path("example-output"))
    args = parser.parse_args()
    seeds = np.random.SeedSequence(args.seed).spawn(6)

    toy = GaussianToy()
    region = toy.region(bins=10)
    signal = toy.simulations(
        "signal", toy.choose_simulations(args.n_simulations, seed=seeds[0]), seed=seeds[1]
    )
    background = toy.simulations(
        "background", toy.choose_simulations(args.n_simulations, seed=seeds[2]), seed=seeds[3]
    )

    signal_topics = learn_topics(
        signal, region, args.n_topics, seed=int(seeds[4].generate_state(1)[0])
    )
    background_topics = learn_topics(
        background, region, args.n_topics, seed=int(seeds[4].generate_state(2)[1])
    )
    print(f"topic ELBO: signal {signal_topics.elbo:.6g}, background {background_topics.elbo:.6g}")

    data = toy.pseudo_data(seed=seeds[5])
    observed = region.histogram(data.events)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = write_workspace(
        args.output_dir / "workspace.json",
        build_workspace(tamm_spec(signal_topics.topics, background_topics.topics, observed)),
    )
    model, observations = model_and_data(read_workspace(path))
    tamm_fit = fit_kappa(model, observations)

    baseline_model, baseline_data = model_and_data(
        build_workspace(
            baseline_spec(signal.histograms(region)[0], background.histograms(region)[0], observed)
        )
    )
    baseline_fit = fit_kappa(baseline_model, baseline_data, method="baseline")

    print(f"kappa_true = {data.kappa_true:.5f}")
    for fit in (tamm_fit, baseline_fit):
        print(
            f"{fit.method:<12} kappa = {fit.kappa:.5f} +- {fit.sigma:.5f}  "
            f"pull = {fit.pull(data.kappa_true):+.2f}  converged = {fit.converged}"
        )
    print(f"workspace written to {path}")


if __name__ == "__main__":
    main()
