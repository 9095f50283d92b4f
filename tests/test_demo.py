from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tamm.cli import cli
from tamm.metrics import hellinger
from tamm.pyhf import baseline_spec, build_workspace, fit_kappa, model_and_data, tamm_spec
from tamm.samples import Simulation, SimulationSet
from tamm.topics import learn_topics


def _fit(spec, method):
    model, data = model_and_data(build_workspace(spec))
    return model, fit_kappa(model, data, method=method)


def test_oracle_fit_recovers_kappa_true(gaussian_toy):
    region = gaussian_toy.region(bins=10)
    truth = [gaussian_toy.true_bin_probabilities(p, region) for p in ("signal", "background")]
    pulls = []
    for seed in range(12):
        data = gaussian_toy.pseudo_data(seed=seed)
        _, fit = _fit(baseline_spec(*truth, region.histogram(data.events)), "oracle")
        assert fit.converged
        pulls.append(fit.pull(data.kappa_true))
    pulls = np.asarray(pulls)
    # Each pull is N(0, 1) up to the fixed-count effect, which only narrows it; |pull| < 3 for
    # all 12 seeds fails by chance with probability ~3 %, and the mean of 12 unit pulls has a
    # standard error of 0.29, so |mean| < 1 is a 3.5-sigma bound.
    assert np.all(np.abs(pulls) < 3)
    assert abs(pulls.mean()) < 1.0
    # The statistical floor quoted for this toy (Fisher information of 55 000 events).
    assert fit.sigma == pytest.approx(0.0076, rel=0.1)


def test_topics_recover_truth_inside_the_simulations(gaussian_toy):
    region = gaussian_toy.region(bins=10)
    seeds = np.random.SeedSequence(21).spawn(5)
    sets = {}
    for process, choice_seed, sample_seed in (
        ("signal", seeds[0], seeds[1]),
        ("background", seeds[2], seeds[3]),
    ):
        sims = list(
            gaussian_toy.simulations(
                process,
                gaussian_toy.choose_simulations(7, seed=choice_seed),
                n_events=200_000,
                seed=sample_seed,
            )
        )
        mean, cov = gaussian_toy.true_parameters(process)
        events = np.random.default_rng(5).multivariate_normal(mean, cov, size=200_000)
        sims.append(Simulation(events, name=f"{process}_truth"))
        sets[process] = SimulationSet(sims, process=process)
    topics = {process: learn_topics(sims, region, 4, seed=3) for process, sims in sets.items()}
    data = gaussian_toy.pseudo_data(seed=seeds[4])
    observed = region.histogram(data.events)

    model, fit = _fit(
        tamm_spec(topics["signal"].topics, topics["background"].topics, observed), "tamm-binned"
    )

    assert fit.converged
    values = np.zeros(model.config.npars)
    for name, value in fit.parameters.items():
        values[model.config.par_slice(name)] = value
    by_sample = np.asarray(model.main_model.expected_data(values, return_by_sample=True))
    for process in ("signal", "background"):
        truth = gaussian_toy.true_bin_probabilities(process, region)
        fitted = by_sample[model.config.samples.index(process)]
        single = hellinger(sets[process].histograms(region)[:-1], truth)
        assert hellinger(fitted, truth) < single.mean(), process


def test_cli_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "tamm" in result.output


def test_cli_demo_writes_table_and_files(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "demo",
            "--engine",
            "binned",
            "--seed",
            "3",
            "--n-simulations",
            "5",
            "--n-topics",
            "2",
            "--output-dir",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    for method in ("tamm-binned", "baseline", "oracle"):
        assert method in result.output
    assert "kappa_true = 0.09091" in result.output
    record = json.loads((tmp_path / "results.json").read_text())
    assert set(record["fits"]) == {"tamm-binned", "baseline", "oracle"}
    assert record["config"]["seed"] == 3
    assert record["kappa_true"] == pytest.approx(5000 / 55_000)
    for fit in record["fits"].values():
        assert np.isfinite(fit["kappa"])
        assert "converged" in fit
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_cli_demo_rejects_zero_topics():
    result = CliRunner().invoke(cli, ["demo", "--n-topics", "0"])
    assert result.exit_code != 0
    assert "--n-topics" in result.output


def test_cli_demo_rejects_negative_seed():
    result = CliRunner().invoke(cli, ["demo", "--seed", "-1"])
    assert result.exit_code == 2
    assert "--seed" in result.output
    assert "-1" in result.output


def test_cli_demo_rejects_more_topics_than_simulations():
    result = CliRunner().invoke(cli, ["demo", "--n-topics", "41", "--n-simulations", "40"])
    assert result.exit_code == 2
    assert "41 topics cannot be learned from 40 simulations" in result.output


def test_cli_demo_rejects_uncreatable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["demo", "--output-dir", str(blocker / "sub")])
    assert result.exit_code == 2
    assert "cannot create the output directory" in result.output


def test_demo_unbinned_engine_runs_small():
    from tamm.demo import DemoConfig, run_demo

    # Tiny networks and samples: this checks the unbinned path end to end, not its accuracy.
    config = DemoConfig(
        seed=2,
        engine="unbinned",
        unbinned_n_simulations=3,
        unbinned_events_per_simulation=4000,
        unbinned_members=1,
        unbinned_max_epochs=2,
        n_signal=500,
        n_background=5000,
    )
    result = run_demo(config)
    assert set(result.fits) == {"tamm-unbinned", "baseline-unbinned"}
    for fit in result.fits.values():
        assert np.isfinite(fit.kappa)
    assert result.kappa_true == pytest.approx(500 / 5500)
    assert result.hellinger == {}
