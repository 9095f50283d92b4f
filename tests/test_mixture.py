"""Tests of the unbinned TAMM likelihood, its fitter, the sandwich covariance and the baseline.

The log ratios come from :class:`tamm.datasets.gaussian_ratios.ExactGaussianRatios`, the exact
Gaussian densities, so the tests check the likelihood and the fitter without network error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from tamm.datasets.gaussian_ratios import ExactGaussianRatios, gaussian_box_probability
from tamm.exceptions import ConvergenceWarning, InvalidModelError, InvalidSimulationError
from tamm.mixture import (
    MixtureSamples,
    SimulationJackknife,
    TemplateAdaptedLikelihood,
    baseline_scan,
    build_samples,
    fit_baseline_unbinned,
    fit_unbinned,
    jackknife_simulations,
    profile_intervals,
    profile_kappa,
    profile_scan,
    sandwich_covariance,
    tensorflow_loss,
)
from tamm.samples import Region

ROOT_SEED = 20260402


def toy_samples(toy, index, *, k=10, n_signal=500, n_background=5000, n_reference=50_000):
    """Exact-ratio samples of one pseudo-experiment of the Gaussian toy; also kappa_true."""
    streams = np.random.SeedSequence([ROOT_SEED, index]).spawn(5)
    signal = toy.choose_simulations(k, seed=streams[0])
    background = toy.choose_simulations(k, seed=streams[1])
    ratios = ExactGaussianRatios.from_toy(toy, signal, background)
    data = toy.pseudo_data(n_signal, n_background, seed=streams[2])
    pool = ratios.sample_reference(2 * n_reference, seed=streams[3])
    samples = build_samples(
        data.events, pool, ratios, n_reference=n_reference, n_penalty=n_reference, seed=streams[4]
    )
    return samples, data.kappa_true


# A well identified mixture whose family contains the truth: columns 0 and 3 are the true
# signal and background densities, the others differ clearly from them.
SEPARATED_REGION = Region(["x1", "x2"], [(-3.0, 3.0), (-3.0, 3.0)])
SEPARATED_MEANS = np.array(
    [[-1, 0], [-0.5, 0], [-1, 0.5], [1, 0.5], [1.5, 0.5], [1, 0]], dtype=float
)
SEPARATED_COVS = np.array([s * np.eye(2) for s in (0.5, 0.5, 0.7, 1.5, 1.5, 1.2)])


def sample_inside(rng, mean, cov, n, region):
    kept = []
    n_kept = 0
    while n_kept < n:
        batch = rng.multivariate_normal(mean, cov, size=2 * n)
        batch = batch[region.contains(batch)]
        kept.append(batch)
        n_kept += len(batch)
    return np.concatenate(kept)[:n]


def separated_samples(index, *, n_events=10_000, kappa=0.3, n_reference=200_000):
    """Samples of the separated mixture; also kappa_true.

    The number of signal events is binomial, so each event is an independent draw from the
    mixture, as the sandwich covariance assumes. Fixed counts (as in the Gaussian toy's
    pseudo-data) would remove the binomial part of the variance, ``kappa (1 - kappa) / N``,
    which is not negligible here.
    """
    rng = np.random.default_rng([ROOT_SEED, 1000 + index])
    n_signal = int(rng.binomial(n_events, kappa))
    n_background = n_events - n_signal
    ratios = ExactGaussianRatios.from_gaussians(
        SEPARATED_MEANS, SEPARATED_COVS, n_signal_classes=3, region=SEPARATED_REGION
    )
    events = np.concatenate(
        [
            sample_inside(rng, SEPARATED_MEANS[0], SEPARATED_COVS[0], n_signal, SEPARATED_REGION),
            sample_inside(
                rng, SEPARATED_MEANS[3], SEPARATED_COVS[3], n_background, SEPARATED_REGION
            ),
        ]
    )
    rng.shuffle(events)
    pool = ratios.sample_reference(2 * n_reference, seed=rng.integers(2**32))
    samples = build_samples(
        events,
        pool,
        ratios,
        n_reference=n_reference,
        n_penalty=n_reference,
        seed=rng.integers(2**32),
    )
    return samples, kappa


@pytest.fixture(scope="module")
def small_likelihood(gaussian_toy):
    samples, kappa_true = toy_samples(
        gaussian_toy, 0, k=3, n_signal=200, n_background=2000, n_reference=10_000
    )
    return TemplateAdaptedLikelihood(samples), kappa_true


@pytest.fixture(scope="module")
def separated_fit():
    samples, kappa_true = separated_samples(0)
    likelihood = TemplateAdaptedLikelihood(samples)
    return likelihood, fit_unbinned(likelihood, kappa_test=kappa_true), kappa_true


def random_features(rng, n=50, n_classes=4):
    return rng.normal(scale=0.2, size=(n, n_classes))


# --- input checks ------------------------------------------------------------------------------


def test_samples_reject_mismatched_columns():
    rng = np.random.default_rng(1)
    with pytest.raises(
        InvalidModelError, match=r"reference has shape \(50, 6\) but data has shape \(50, 4\)"
    ):
        MixtureSamples(
            random_features(rng), random_features(rng, n_classes=6), random_features(rng)
        )


def test_samples_reject_nan_with_position():
    rng = np.random.default_rng(2)
    data = random_features(rng)
    data[3, 1] = np.nan
    with pytest.raises(InvalidModelError, match=r"data contains NaN or infinite .*\(3, 1\)=nan"):
        MixtureSamples(data, random_features(rng), random_features(rng))


def test_samples_reject_inf_in_penalty():
    rng = np.random.default_rng(3)
    penalty = random_features(rng)
    penalty[7, 0] = np.inf
    with pytest.raises(InvalidModelError, match=r"penalty contains NaN or infinite .*\(7, 0\)=inf"):
        MixtureSamples(random_features(rng), random_features(rng), penalty)


def test_samples_reject_one_simulation_per_process():
    rng = np.random.default_rng(4)
    with pytest.raises(
        InvalidModelError, match=r"at least 2 simulations per process.*n_signal_classes=1"
    ):
        MixtureSamples(*(random_features(rng, n_classes=2) for _ in range(3)))
    with pytest.raises(InvalidModelError, match=r"n_signal_classes=4 and 1 background"):
        MixtureSamples(*(random_features(rng, n_classes=5) for _ in range(3)), n_signal_classes=4)


def test_samples_reject_empty_reference():
    rng = np.random.default_rng(5)
    with pytest.raises(
        InvalidModelError, match=r"reference has shape \(0, 4\): it contains no events"
    ):
        MixtureSamples(random_features(rng), np.empty((0, 4)), random_features(rng))


def test_samples_reject_one_dimensional_data():
    rng = np.random.default_rng(6)
    with pytest.raises(
        InvalidModelError, match=r"data must have shape \(n_events, n_classes\); .*\(50,\)"
    ):
        MixtureSamples(rng.normal(size=50), random_features(rng), random_features(rng))


def test_samples_odd_columns_need_signal_count():
    rng = np.random.default_rng(7)
    with pytest.raises(InvalidModelError, match=r"odd number of columns \(5\)"):
        MixtureSamples(*(random_features(rng, n_classes=5) for _ in range(3)))
    samples = MixtureSamples(
        *(random_features(rng, n_classes=5) for _ in range(3)), n_signal_classes=2
    )
    assert samples.n_background_classes == 3


def test_likelihood_rejects_negative_strength():
    rng = np.random.default_rng(8)
    samples = MixtureSamples(*(random_features(rng) for _ in range(3)))
    with pytest.raises(
        InvalidModelError, match=r"ridge_strength must be a finite number >= 0; received -1"
    ):
        TemplateAdaptedLikelihood(samples, ridge_strength=-1.0)


def test_likelihood_rejects_wrong_theta_shape(small_likelihood):
    likelihood, _ = small_likelihood
    with pytest.raises(
        InvalidModelError, match=r"theta must have shape \(7,\) .*received shape \(3,\)"
    ):
        likelihood.value(np.zeros(3))


# --- building the samples ----------------------------------------------------------------------


def test_build_samples_reference_and_penalty_disjoint():
    rng = np.random.default_rng(9)
    pool = np.column_stack([np.arange(1000.0), rng.normal(size=1000)])

    def log_ratio_fn(events):
        # Column 0 carries the event id, so the test can see which events went where.
        return np.column_stack([events[:, 0], events[:, 1], events[:, 1], -events[:, 1]])

    samples = build_samples(pool[:40], pool, log_ratio_fn, n_reference=300, n_penalty=200, seed=1)
    reference_ids = set(samples.reference[:, 0])
    penalty_ids = set(samples.penalty[:, 0])
    assert len(reference_ids) == 300
    assert len(penalty_ids) == 200
    assert reference_ids.isdisjoint(penalty_ids)


def test_build_samples_default_sizes():
    rng = np.random.default_rng(10)
    pool = rng.normal(size=(500, 2))
    samples = build_samples(pool[:20], pool, lambda x: np.column_stack([x, -x]), seed=2)
    # Default size: K_s * N = 2 * 20 events in each of reference and penalty.
    assert samples.reference.shape == (40, 4)
    assert samples.penalty.shape == (40, 4)


def test_build_samples_pool_too_small():
    rng = np.random.default_rng(11)
    pool = rng.normal(size=(100, 2))
    with pytest.raises(InvalidModelError, match=r"pooled_events contains 100 events.*60 \+ 60"):
        build_samples(
            pool[:10],
            pool,
            lambda x: np.column_stack([x, -x]),
            n_reference=60,
            n_penalty=60,
            seed=3,
        )


# --- the loss and its derivatives --------------------------------------------------------------


def perturbed_parameters(likelihood, kappa, seed):
    rng = np.random.default_rng(seed)
    theta = likelihood.default_parameters(kappa)
    theta[1:] += rng.normal(scale=0.05, size=theta.size - 1)
    return theta


@pytest.mark.parametrize("kappa", [0.09, 0.6, -0.02, 1.03])
def test_gradient_matches_finite_differences(small_likelihood, kappa):
    likelihood, _ = small_likelihood
    theta = perturbed_parameters(likelihood, kappa, seed=12)
    value, gradient, _ = likelihood.value_and_derivatives(theta)
    assert math.isfinite(value)

    step = 1e-6
    numeric = np.array(
        [
            (likelihood.value(theta + step * e) - likelihood.value(theta - step * e)) / (2 * step)
            for e in np.eye(theta.size)
        ]
    )
    # Central differences of a loss of size ~1e3 with step 1e-6: truncation ~1e-12 relative,
    # rounding ~1e-16 * 1e3 / 1e-6 = 1e-7 absolute.
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kappa", [0.09, -0.02])
def test_hessian_matches_finite_differences(small_likelihood, kappa):
    likelihood, _ = small_likelihood
    theta = perturbed_parameters(likelihood, kappa, seed=13)
    hessian = likelihood.hessian(theta)

    step = 1e-6
    numeric = np.array(
        [
            (likelihood.gradient(theta + step * e) - likelihood.gradient(theta - step * e))
            / (2 * step)
            for e in np.eye(theta.size)
        ]
    )
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-12)
    np.testing.assert_allclose(hessian, numeric, rtol=1e-6, atol=1e-6 * np.abs(hessian).max())


def test_derivatives_match_tensorflow_autodiff(small_likelihood):
    tf = pytest.importorskip("tensorflow")
    likelihood, _ = small_likelihood
    theta = perturbed_parameters(likelihood, 0.15, seed=14)
    value, gradient, hessian = likelihood.value_and_derivatives(theta)

    variable = tf.Variable(theta, dtype=tf.float64)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tensorflow_loss(likelihood.samples, variable)
        tf_gradient = inner.gradient(loss, variable)
    tf_hessian = outer.jacobian(tf_gradient, variable)

    # Both are exact up to summation order over ~1e4 events.
    assert float(loss) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(tf_gradient.numpy(), gradient, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(
        tf_hessian.numpy(), hessian, rtol=1e-9, atol=1e-8 * np.abs(hessian).max()
    )


def test_loss_infinite_where_model_ratio_negative(small_likelihood):
    likelihood, _ = small_likelihood
    theta = likelihood.default_parameters(-5.0)
    value, gradient, hessian = likelihood.value_and_derivatives(theta)
    assert likelihood.value(theta) == math.inf
    assert value == math.inf
    assert np.all(np.isnan(gradient))
    assert np.all(np.isnan(hessian))


def test_loss_finite_for_slightly_negative_kappa(small_likelihood):
    likelihood, _ = small_likelihood
    theta = likelihood.default_parameters(-0.01)
    # The signed log-sum-exp keeps the loss exact (no clamp): it matches the linear formula.
    a, b = likelihood.mixture_weights(theta)
    k = likelihood.n_signal_classes
    data = likelihood.samples.data
    ratio = -0.01 * np.exp(data[:, :k] @ a) + 1.01 * np.exp(data[:, k:] @ b)
    reference = likelihood.samples.reference
    reference_ratio = -0.01 * np.exp(reference[:, :k] @ a) + 1.01 * np.exp(reference[:, k:] @ b)
    penalty = likelihood.samples.penalty
    penalty_mean = np.mean(np.exp(penalty[:, k:] @ b)) - np.mean(np.exp(penalty[:, :k] @ a))
    expected = (
        -np.sum(np.log(ratio))
        + likelihood.reference_scale * np.sum(reference_ratio - 1)
        + 0.5 * likelihood.n_data * penalty_mean**2
    )
    assert likelihood.value(theta) == pytest.approx(expected, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    kappa=st.floats(0.02, 0.98),
    normalisations=st.tuples(st.floats(0.5, 2.0), st.floats(0.5, 2.0)),
    weights=st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4),
)
def test_loss_symmetric_under_process_swap(kappa, normalisations, weights):
    rng = np.random.default_rng(15)
    features = [rng.normal(scale=0.3, size=(200, 6)) for _ in range(3)]
    swapped = [np.concatenate([f[:, 3:], f[:, :3]], axis=1) for f in features]
    likelihood = TemplateAdaptedLikelihood(MixtureSamples(*features))
    mirror = TemplateAdaptedLikelihood(MixtureSamples(*swapped))

    c_s, c_b = normalisations
    theta = np.array([kappa, c_s, c_b, *weights])
    theta_swapped = np.array([1 - kappa, c_b, c_s, *weights[2:], *weights[:2]])
    # Signal with fraction kappa is background with fraction 1 - kappa in the mirrored model.
    assert likelihood.value(theta) == pytest.approx(mirror.value(theta_swapped), rel=1e-11)
    assert math.isfinite(likelihood.value(theta))


# --- the fitter ------------------------------------------------------------------------------


def test_newton_matches_scipy_trust_exact(small_likelihood):
    likelihood, kappa_true = small_likelihood
    fit = fit_unbinned(likelihood, kappa_test=kappa_true, tolerance=1e-10)
    reference = optimize.minimize(
        likelihood.value,
        likelihood.default_parameters(0.1),
        jac=likelihood.gradient,
        hess=likelihood.hessian,
        method="trust-exact",
        options={"gtol": 1e-6},
    )
    assert fit.converged
    assert reference.success
    assert fit.loss == pytest.approx(reference.fun, abs=1e-8)
    assert fit.kappa == pytest.approx(reference.x[0], abs=1e-3 * fit.sigma)


def test_profiled_fit_keeps_kappa_fixed(small_likelihood):
    likelihood, _ = small_likelihood
    profile = profile_kappa(likelihood, 0.2)
    assert profile.parameters[0] == 0.2
    assert profile.status.converged
    assert profile.status.edm < 1e-6
    # No small move of a nuisance parameter lowers the loss by more than the EDM tolerance.
    for direction in np.eye(likelihood.n_parameters)[1:]:
        for step in (-1e-3, 1e-3):
            assert likelihood.value(profile.parameters + step * direction) > profile.loss - 1e-6


def test_max_iter_one_reports_not_converged(small_likelihood):
    likelihood, kappa_true = small_likelihood
    with pytest.warns(ConvergenceWarning, match=r"did not converge: stopped after max_iter=1"):
        fit = fit_unbinned(likelihood, kappa_test=kappa_true, max_iter=1)
    assert not fit.converged
    assert not fit.kappa_fit.converged
    assert "max_iter=1" in fit.kappa_fit.message
    assert fit.status.n_iterations <= 1


def test_kappa_fit_record(small_likelihood):
    likelihood, kappa_true = small_likelihood
    fit = fit_unbinned(likelihood, kappa_test=kappa_true)
    record = fit.kappa_fit
    assert record.method == "tamm-unbinned"
    assert record.kappa == fit.kappa
    assert record.sigma == fit.sigma
    assert record.sigma > 0
    assert record.converged
    assert len(record.parameters["a"]) == likelihood.n_signal_classes
    assert sum(record.parameters["a"]) == pytest.approx(1.0)
    assert record.parameters["z"] == fit.z
    json.dumps(record.to_dict())


def test_toy_recovery_fast(gaussian_toy):
    # Small samples (5500 events, 50k reference) and four seeds keep this under a few seconds.
    # A pull beyond 3 has probability 0.3 % for a unit normal. An exact-ratio run of 20 seeds at
    # K = 10, 55 000 data and 500 000 reference events gave pulls of mean +0.34 and width 1.13,
    # for which a pull beyond 3 has probability of about 1 %.
    for index in range(4):
        samples, kappa_true = toy_samples(gaussian_toy, index)
        fit = fit_unbinned(TemplateAdaptedLikelihood(samples), kappa_test=kappa_true)
        assert fit.converged
        assert abs(fit.kappa_fit.pull(kappa_true)) < 3.0, f"seed {index}: {fit.kappa_fit}"
        assert abs(fit.z) < 3.0, f"seed {index}: z = {fit.z}"


# --- sandwich and profile statistic ------------------------------------------------------------


def test_sandwich_parts_match_definitions(small_likelihood):
    likelihood, kappa_true = small_likelihood
    fit = fit_unbinned(likelihood, kappa_test=kappa_true)
    theta = fit.parameters
    sandwich = sandwich_covariance(likelihood, theta)

    # Reference part from the per-event gradients of R, written out directly.
    kappa, c_s, c_b = theta[:3]
    a, b = likelihood.mixture_weights(theta)
    k = likelihood.n_signal_classes
    reference = likelihood.samples.reference
    signal_ratio = np.exp(reference[:, :k] @ a)
    background_ratio = np.exp(reference[:, k:] @ b)
    signal_differences = reference[:, : k - 1] - reference[:, k - 1 : k]
    background_differences = reference[:, k:-1] - reference[:, -1:]
    per_event = np.column_stack(
        [
            c_s * signal_ratio - c_b * background_ratio,
            kappa * signal_ratio,
            (1 - kappa) * background_ratio,
            (kappa * c_s * signal_ratio)[:, None] * signal_differences,
            ((1 - kappa) * c_b * background_ratio)[:, None] * background_differences,
        ]
    )
    expected_reference = (
        likelihood.reference_scale**2 * len(reference) * np.cov(per_event.T, bias=True)
    )
    np.testing.assert_allclose(sandwich.meat_reference, expected_reference, rtol=1e-9, atol=1e-12)

    score = likelihood.data_score(theta)
    np.testing.assert_allclose(
        sandwich.meat_data, len(score) * np.cov(score.T, bias=True), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(sandwich.hessian, likelihood.hessian(theta))
    assert sandwich.sigma_kappa == fit.sigma


def test_lambda_corr_near_one_when_family_contains_truth():
    # The separated mixture is correctly specified and well identified, so V = A^-1 up to the
    # reference noise (B_ref, relative size about N / N_ref = 0.05) and the sampling noise of A
    # and B. Over 16 other seeds lambda_corr was 0.998 +- 0.013, so 0.1 is seven standard
    # deviations.
    for index in range(2):
        samples, kappa_true = separated_samples(index)
        fit = fit_unbinned(TemplateAdaptedLikelihood(samples), kappa_test=kappa_true)
        assert fit.lambda_corr == pytest.approx(1.0, abs=0.1), f"seed {index}"
        inverse_hessian = np.linalg.inv(fit.sandwich.hessian)
        assert fit.covariance[0, 0] == pytest.approx(inverse_hessian[0, 0], rel=0.1)
        # Correctly specified, so the pull is unit normal: beyond 3 with probability 0.3 %.
        assert abs(fit.kappa_fit.pull(kappa_true)) < 3.0


def test_profile_intervals_match_sandwich_when_parabolic(separated_fit):
    likelihood, fit, _ = separated_fit
    intervals = profile_intervals(likelihood, fit)
    lower_68, lower_95 = intervals.lower
    upper_68, upper_95 = intervals.upper
    # In the well identified mixture the profile is parabolic within a few per cent, so the
    # corrected intervals are kappa_hat -+ sigma and -+ 2 sigma.
    assert lower_68 == pytest.approx(fit.kappa - fit.sigma, abs=0.1 * fit.sigma)
    assert upper_68 == pytest.approx(fit.kappa + fit.sigma, abs=0.1 * fit.sigma)
    assert lower_95 == pytest.approx(fit.kappa - 2 * fit.sigma, abs=0.2 * fit.sigma)
    assert upper_95 == pytest.approx(fit.kappa + 2 * fit.sigma, abs=0.2 * fit.sigma)
    assert np.all(intervals.scan.converged)


def test_profile_walk_stops_where_model_invalid(separated_fit, caplog):
    likelihood, fit, _ = separated_fit
    # A level far beyond reach sends the walk past kappa = 1, where 1 - kappa < 0 makes the
    # model negative on some data events; the walk stops there instead of running on.
    with (
        caplog.at_level("WARNING", logger="tamm.mixture.fit"),
        pytest.warns(ConvergenceWarning, match="loss is not finite at the start point"),
    ):
        intervals = profile_intervals(
            likelihood, fit, levels=(1.0, 200.0), step=20.0, max_extent=400.0
        )
    assert math.isnan(intervals.upper[1])
    assert "the model turns negative on a data event" in caplog.text
    assert intervals.scan.kappa.max() < fit.kappa + 400.0 * fit.sigma
    assert not np.isfinite(intervals.scan.loss[-1])


def test_profile_interval_refinement_agrees(separated_fit):
    likelihood, fit, _ = separated_fit
    coarse = profile_intervals(likelihood, fit, levels=(1.0,))
    refined = profile_intervals(likelihood, fit, levels=(1.0,), refine=True)
    # Grid interpolation on a sigma / 2 grid is accurate to about 1 % of sigma.
    assert refined.lower[0] == pytest.approx(coarse.lower[0], abs=0.02 * fit.sigma)
    assert refined.upper[0] == pytest.approx(coarse.upper[0], abs=0.02 * fit.sigma)


def test_profile_scan_reproduces_z(separated_fit):
    likelihood, fit, kappa_true = separated_fit
    scan = profile_scan(likelihood, fit, [kappa_true, fit.kappa + fit.sigma])
    index = int(np.flatnonzero(scan.kappa == kappa_true)[0])
    # The scan's signed root has the opposite sign convention (kappa - kappa_hat).
    assert -scan.signed_root[index] == pytest.approx(fit.z, abs=1e-4)
    assert scan.q[index] == pytest.approx(fit.q, abs=1e-4)


def test_profile_scan_rejects_empty_grid(separated_fit):
    likelihood, fit, _ = separated_fit
    with pytest.raises(InvalidModelError, match="kappa_values must be finite and non-empty"):
        profile_scan(likelihood, fit, [])


# --- single-simulation baseline ----------------------------------------------------------------


def baseline_inputs(toy, index, *, n_signal=500, n_background=5000, truth=True):
    """Baseline log ratios on data and on a cut background reference; also kappa_true."""
    streams = np.random.SeedSequence([ROOT_SEED, 2000 + index]).spawn(2)
    if truth:
        parameters = [toy.true_parameters("signal"), toy.true_parameters("background")]
    else:
        parameters = [
            toy.simulation_parameters("signal", index),
            toy.simulation_parameters("background", index),
        ]
    ratios = ExactGaussianRatios.from_gaussians(
        [m for m, _ in parameters],
        [c for _, c in parameters],
        n_signal_classes=1,
        region=toy.region(bins=None),
    )
    data = toy.pseudo_data(n_signal, n_background, seed=streams[0])
    mean, cov = parameters[1]
    region = toy.region(bins=None)
    reference = sample_inside(
        np.random.default_rng(streams[1]), mean, cov, len(data.events), region
    )

    def log_ratio(events):
        features = ratios(events)
        return features[:, 0] - features[:, 1]

    return log_ratio(data.events), log_ratio(reference), data.kappa_true


def test_baseline_matches_direct_formulas(gaussian_toy):
    data, reference, kappa_true = baseline_inputs(gaussian_toy, 0)
    fit = fit_baseline_unbinned(data, reference, kappa_test=kappa_true, tolerance=1e-14)

    r_data, r_reference = np.exp(data), np.exp(reference)
    scale = len(data) / len(reference)

    def loss(kappa):
        return -np.sum(np.log(kappa * r_data + 1 - kappa)) + scale * kappa * np.sum(r_reference - 1)

    direct = optimize.minimize_scalar(
        loss, bounds=(0.0, 0.5), method="bounded", options={"xatol": 1e-10}
    )
    assert fit.kappa == pytest.approx(direct.x, abs=1e-7)
    model = fit.kappa * r_data + 1 - fit.kappa
    hessian = np.sum((r_data - 1) ** 2 / model**2)
    meat = len(data) * np.var((r_data - 1) / model, ddof=1) + scale**2 * len(reference) * np.var(
        r_reference - 1, ddof=1
    )
    assert fit.sigma == pytest.approx(math.sqrt(meat) / hessian, rel=1e-9)
    assert fit.q == pytest.approx(2 * (loss(kappa_true) - loss(fit.kappa)), abs=1e-6)
    assert fit.kappa_fit.method == "baseline-unbinned"
    assert fit.kappa_fit.converged


def test_baseline_with_true_templates_recovers_kappa(gaussian_toy):
    # With nature's own densities the baseline is correctly specified: pulls are unit normal, so
    # |pull| < 3 fails with probability 0.3 % per seed.
    for index in range(3):
        data, reference, kappa_true = baseline_inputs(gaussian_toy, index)
        fit = fit_baseline_unbinned(data, reference, kappa_test=kappa_true)
        assert abs(fit.kappa_fit.pull(kappa_true)) < 3.0
        assert abs(fit.z - fit.kappa_fit.pull(kappa_true)) < 0.2


def test_baseline_scan_matches_loss(gaussian_toy):
    data, reference, kappa_true = baseline_inputs(gaussian_toy, 0)
    fit = fit_baseline_unbinned(data, reference, kappa_test=kappa_true, tolerance=1e-14)
    grid = np.array([kappa_true, fit.kappa, fit.kappa + 0.1 * fit.sigma])
    q = baseline_scan(data, reference, fit, grid)
    assert q[0] == pytest.approx(fit.q, abs=1e-9)
    assert q[1] == pytest.approx(0.0, abs=1e-9)
    # Near the minimum q = A (kappa - kappa_hat)^2 up to a cubic term, which is below 1 % of
    # the quadratic one at 0.1 sigma from the minimum for these 55 000 events.
    assert q[2] == pytest.approx(fit.hessian * (0.1 * fit.sigma) ** 2, rel=0.01)


def test_baseline_scan_rejects_bad_grid(gaussian_toy):
    data, reference, _ = baseline_inputs(gaussian_toy, 0)
    fit = fit_baseline_unbinned(data, reference)
    with pytest.raises(InvalidModelError, match=r"kappa_values must be a finite"):
        baseline_scan(data, reference, fit, [0.1, np.nan])


def test_baseline_rejects_bad_input():
    with pytest.raises(
        InvalidModelError, match=r"data_log_ratio contains a non-finite log ratio at index 2"
    ):
        fit_baseline_unbinned([0.1, 0.2, np.nan], [0.0, 0.1])
    with pytest.raises(
        InvalidModelError, match=r"reference_log_ratio must be a non-empty 1-D array.*\(0,\)"
    ):
        fit_baseline_unbinned([0.1, 0.2], [])


# --- exact Gaussian ratios --------------------------------------------------------------------


def test_gaussian_box_probability_exact():
    expected = (stats.norm.cdf(2) - stats.norm.cdf(-2)) ** 2
    assert gaussian_box_probability([0, 0], np.eye(2), [-2, -2], [2, 2]) == pytest.approx(
        expected, rel=1e-13
    )
    mean, cov = [0.3, 1.0], [[3.0, 0.4], [0.4, 3.0]]
    reference = stats.multivariate_normal(mean, cov)
    inclusion_exclusion = (
        reference.cdf([2, 2])
        - reference.cdf([-2, 2])
        - reference.cdf([2, -2])
        + reference.cdf([-2, -2])
    )
    # scipy's multivariate normal CDF is accurate to about 1e-5 (its default abseps).
    assert gaussian_box_probability(mean, cov, [-2, -2], [2, 2]) == pytest.approx(
        inclusion_exclusion, abs=1e-5
    )


def test_exact_ratios_average_to_one(gaussian_toy):
    ratios = ExactGaussianRatios.from_toy(gaussian_toy, [1, 2, 3], [4, 5])
    events = np.random.default_rng(16).normal(size=(100, 2))
    uncorrected = ratios.log_ratios(events, acceptance_corrected=False)
    # p_ref is the equal mixture, so the mean of the C uncut ratios is one at every event.
    np.testing.assert_allclose(np.exp(uncorrected).mean(axis=1), 1.0, rtol=1e-13)


def test_exact_acceptances_match_monte_carlo(gaussian_toy):
    ratios = ExactGaussianRatios.from_toy(gaussian_toy, [7], [7])
    region = gaussian_toy.region(bins=None)
    for column, process in enumerate(("signal", "background")):
        simulation = gaussian_toy.simulation(process, 7, n_events=200_000, seed=17 + column)
        observed = simulation.acceptance(region)
        expected = ratios.acceptances[column]
        binomial_sigma = math.sqrt(expected * (1 - expected) / 200_000)
        assert abs(observed - expected) < 5 * binomial_sigma


def test_reference_sample_normalises_ratios(gaussian_toy):
    ratios = ExactGaussianRatios.from_toy(gaussian_toy, [0, 9, 20], [3, 11, 30])
    events = ratios.sample_reference(100_000, seed=18)
    assert events.shape == (100_000, 2)
    assert np.all(gaussian_toy.region(bins=None).contains(events))
    values = np.exp(ratios(events))
    # E_ref[r~_k] = 1 inside the region for every simulation; 5 standard errors.
    standard_error = values.std(axis=0) / math.sqrt(len(values))
    assert np.all(np.abs(values.mean(axis=0) - 1.0) < 5 * standard_error)


def test_exact_ratios_reject_bad_input(gaussian_toy):
    with pytest.raises(InvalidSimulationError, match="at least one simulation per process"):
        ExactGaussianRatios.from_toy(gaussian_toy, [], [1])
    ratios = ExactGaussianRatios.from_toy(gaussian_toy, [1], [1])
    with pytest.raises(InvalidSimulationError, match="n_events must be a positive number"):
        ratios.sample_reference(0, seed=1)


# --- slow statistical studies (make test-all) -------------------------------------------------


def twenty_seed_summary(pulls, inside_68, inside_95):
    return (
        f"pull mean {np.mean(pulls):+.3f}, width {np.std(pulls, ddof=1):.3f}; sandwich coverage "
        f"{np.mean(np.abs(pulls) < 1):.2f} / {np.mean(np.abs(pulls) < 2):.2f}; profile coverage "
        f"{np.mean(inside_68):.2f} / {np.mean(inside_95):.2f}"
    )


@pytest.mark.slow
def test_toy_recovery_twenty_seeds_paper_sizes(gaussian_toy):
    """K = 10 per process, 55 000 data events, 500 000 reference and penalty events."""
    pulls, inside_68, inside_95 = [], [], []
    for index in range(20):
        samples, kappa_true = toy_samples(
            gaussian_toy, 100 + index, n_signal=5000, n_background=50_000, n_reference=500_000
        )
        likelihood = TemplateAdaptedLikelihood(samples)
        fit = fit_unbinned(likelihood, kappa_test=kappa_true)
        intervals = profile_intervals(likelihood, fit)
        assert fit.converged
        pulls.append(fit.kappa_fit.pull(kappa_true))
        inside_68.append(intervals.contains(kappa_true, 1.0))
        inside_95.append(intervals.contains(kappa_true, 2.0))
    pulls = np.array(pulls)
    print(twenty_seed_summary(pulls, inside_68, inside_95))

    # The pulls are not unit normal here. The ridge (strength 1) pulls the weights towards the
    # equal mixture, which biases kappa upwards when the simulations alone do not contain
    # nature: a separate run of 20 other seeds gave pull mean +0.34, width 1.13 and mean bias
    # +0.025. For pulls N(0.34, 1.13^2), each bound below is met with probability > 99 %.
    assert np.sum(np.abs(pulls) < 2) >= 15
    assert -0.5 < np.mean(pulls) < 1.0
    assert 0.6 < np.std(pulls, ddof=1) < 1.7
    assert np.sum(inside_95) >= 15


@pytest.mark.slow
def test_separated_recovery_twenty_seeds():
    """Nature inside the family and well identified: pulls should be unit normal."""
    pulls, inside_68, inside_95 = [], [], []
    for index in range(20):
        samples, kappa_true = separated_samples(200 + index)
        likelihood = TemplateAdaptedLikelihood(samples)
        fit = fit_unbinned(likelihood, kappa_test=kappa_true)
        intervals = profile_intervals(likelihood, fit)
        assert fit.converged
        pulls.append(fit.kappa_fit.pull(kappa_true))
        inside_68.append(intervals.contains(kappa_true, 1.0))
        inside_95.append(intervals.contains(kappa_true, 2.0))
    pulls = np.array(pulls)
    print(twenty_seed_summary(pulls, inside_68, inside_95))

    # With unit-normal pulls, 17 or more of 20 inside 2 sigma has probability 98.8 %.
    assert np.sum(np.abs(pulls) < 2) >= 17
    # The mean of 20 unit-normal pulls has standard deviation 0.22; allow three.
    assert abs(np.mean(pulls)) < 0.67
    # The sample width of 20 unit-normal pulls lies in [0.6, 1.45] with probability > 99 %.
    assert 0.6 < np.std(pulls, ddof=1) < 1.45
    assert np.sum(inside_95) >= 17


@pytest.mark.slow
def test_lambda_corr_large_sample():
    # N = 55 000 data and 2 200 000 reference events: N / N_ref = 0.025. The spread of
    # lambda_corr scales as 1 / sqrt(N); scaled from 0.013 at N = 10 000 it is about 0.006 here
    # (an estimate), so 0.05 is eight standard deviations.
    for index in range(3):
        samples, kappa_true = separated_samples(100 + index, n_events=55_000, n_reference=2_200_000)
        fit = fit_unbinned(TemplateAdaptedLikelihood(samples), kappa_test=kappa_true)
        assert fit.lambda_corr == pytest.approx(1.0, abs=0.05), f"seed {index}"


# --- jackknife over the simulations -----------------------------------------------------------


def test_jackknife_linear_matches_refits(separated_fit):
    likelihood, fit, _ = separated_fit
    linear = jackknife_simulations(likelihood, fit)
    refit = jackknife_simulations(likelihood, fit, method="refit")
    assert refit.all_converged
    # The quadratic model is exact to second order, so its error grows with the shift.
    # Dropping the true shape of a process (simulation 0 or 3 here) moves kappa by about
    # 7 sigma, and the linear estimate of that shift was off by 12 %. 20 % of each shift plus
    # 0.1 sigma allows for that and for the ridge centre, which moves from 1/3 to 1/2.
    linear_shift = linear.leave_one_out - fit.kappa
    refit_shift = refit.leave_one_out - fit.kappa
    assert np.all(np.abs(linear_shift - refit_shift) <= 0.2 * np.abs(refit_shift) + 0.1 * fit.sigma)
    assert linear.sigma_simulations == pytest.approx(refit.sigma_simulations, rel=0.2)


def test_jackknife_variance_is_stratified():
    values = np.array([0.10, 0.12, 0.14, 0.20, 0.20, 0.26])
    jackknife = SimulationJackknife(0.15, 0.01, values, np.ones(6, dtype=bool), 3)
    signal = (2 / 3) * np.sum((values[:3] - values[:3].mean()) ** 2)
    background = (2 / 3) * np.sum((values[3:] - values[3:].mean()) ** 2)
    assert jackknife.variance == pytest.approx(signal + background)
    assert jackknife.sigma_total == pytest.approx(math.hypot(0.01, math.sqrt(signal + background)))


def test_jackknife_skips_failed_estimates():
    values = np.array([0.10, 0.12, 5.0, 0.20, 0.20, 0.26])
    converged = np.array([True, True, False, True, True, True])
    jackknife = SimulationJackknife(0.15, 0.01, values, converged, 3)
    signal = (1 / 2) * np.sum((values[:2] - values[:2].mean()) ** 2)
    background = (2 / 3) * np.sum((values[3:] - values[3:].mean()) ** 2)
    assert not jackknife.all_converged
    assert jackknife.variance == pytest.approx(signal + background)


def test_jackknife_needs_three_simulations():
    features = np.random.default_rng(3).normal(scale=0.1, size=(3, 400, 4))  # 2 + 2 columns
    likelihood = TemplateAdaptedLikelihood(MixtureSamples(*features))
    fit = fit_unbinned(likelihood)
    with pytest.raises(InvalidModelError, match=r"at least 3 simulations per process"):
        jackknife_simulations(likelihood, fit)


def test_jackknife_rejects_unknown_method(separated_fit):
    likelihood, fit, _ = separated_fit
    with pytest.raises(InvalidModelError, match=r"method must be 'linear' or 'refit'"):
        jackknife_simulations(likelihood, fit, method="bootstrap")
