from __future__ import annotations

import numpy as np
import pytest

from tamm.exceptions import InvalidSimulationError


def test_toy_has_500_simulations(gaussian_toy):
    assert gaussian_toy.n_simulations == 500


def test_no_simulation_equals_nature(gaussian_toy):
    for process in ("signal", "background"):
        true_mean, true_cov = gaussian_toy.true_parameters(process)
        means = np.array([gaussian_toy.simulation_parameters(process, i)[0] for i in range(500)])
        diag = np.array(
            [gaussian_toy.simulation_parameters(process, i)[1][0, 0] for i in range(500)]
        )
        assert np.min(np.linalg.norm(means - true_mean, axis=1)) > 0.1
        assert np.min(np.abs(diag - true_cov[0, 0])) >= 0.1 - 1e-9


def test_pseudo_data_counts_and_kappa(gaussian_toy):
    data = gaussian_toy.pseudo_data(seed=4)
    assert data.n_signal == 5000
    assert data.n_background == 50_000
    assert data.kappa_true == pytest.approx(5000 / 55_000)
    assert gaussian_toy.region().contains(data.events).all()


def test_pseudo_data_poisson_kappa_from_counts(gaussian_toy):
    data = gaussian_toy.pseudo_data(1000, 9000, poisson=True, seed=5)
    assert data.n_signal != 1000 or data.n_background != 9000
    assert data.kappa_true == data.n_signal / (data.n_signal + data.n_background)
    assert int(data.is_signal.sum()) == data.n_signal


def test_pseudo_data_is_seeded(gaussian_toy):
    a = gaussian_toy.pseudo_data(100, 100, seed=7)
    b = gaussian_toy.pseudo_data(100, 100, seed=7)
    np.testing.assert_array_equal(a.events, b.events)


def test_pseudo_data_rejects_negative(gaussian_toy):
    with pytest.raises(InvalidSimulationError, match=r"n_signal=-1"):
        gaussian_toy.pseudo_data(-1, 10, seed=0)


def test_choose_simulations_distinct(gaussian_toy):
    indices = gaussian_toy.choose_simulations(50, seed=1)
    assert len(np.unique(indices)) == 50


def test_choose_too_many_simulations(gaussian_toy):
    with pytest.raises(InvalidSimulationError, match=r"\[1, 500\]; received 501"):
        gaussian_toy.choose_simulations(501, seed=1)


def test_unknown_process(gaussian_toy):
    with pytest.raises(InvalidSimulationError, match=r"Unknown process 'higgs'"):
        gaussian_toy.true_parameters("higgs")


def test_true_bin_probabilities_match_monte_carlo(gaussian_toy):
    region = gaussian_toy.region(bins=10)
    n = 1_000_000
    for process in ("signal", "background"):
        exact = gaussian_toy.true_bin_probabilities(process, region)
        counts = region.histogram(gaussian_toy.sample_truth(process, n, seed=11))
        # Multinomial standard deviation per bin; 5 sigma over 100 bins fails by chance
        # with probability ~6e-5.
        sigma = np.sqrt(n * exact * (1 - exact))
        assert np.max(np.abs(counts - n * exact) / sigma) < 5
        assert exact.sum() == pytest.approx(1.0, abs=1e-12)


def test_simulation_sample_matches_parameters(gaussian_toy):
    sim = gaussian_toy.simulation("background", 17, n_events=200_000, seed=2)
    mean, cov = gaussian_toy.simulation_parameters("background", 17)
    # Standard error of a mean with variance ~3 over 2e5 events is ~0.004.
    np.testing.assert_allclose(sim.events.mean(axis=0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(sim.events.T), cov, atol=0.05)
    assert sim.settings["index"] == 17
