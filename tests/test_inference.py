"""Tests of tamm.inference: profile scans, CLs limits, the NUTS posterior and the competitors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyhf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from tamm.exceptions import ConvergenceWarning, InvalidModelError
from tamm.inference import (
    ONE_SIGMA,
    TWO_SIGMA,
    ProfileScan,
    discovery_significance,
    highest_density_interval,
    histosys_spec,
    jackknife_binned,
    leave_one_out_topics,
    limit_from_scan,
    oracle_spec,
    principal_variations,
    profile_interval,
    profile_scan,
    sample_posterior,
    upper_limit,
)
from tamm.pyhf import (
    baseline_spec,
    build_workspace,
    fit_kappa,
    model_and_data,
    tamm_spec,
    use_numpy_backend,
)

N_BINS = 30
CENTERS = (np.arange(N_BINS) + 0.5) / N_BINS


def normalised(values: np.ndarray) -> np.ndarray:
    return values / values.sum()


SIGNAL = normalised(np.exp(-0.5 * ((CENTERS - 0.5) / 0.1) ** 2))
BACKGROUND = normalised(np.exp(-2.0 * CENTERS))
BACKGROUND_FLAT = normalised(np.ones(N_BINS))


def model_for(spec: dict) -> tuple[pyhf.Model, list[float]]:
    return model_and_data(build_workspace(spec))


def poisson_counts(kappa: float, total: float, seed: int, background=BACKGROUND) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(total * (kappa * SIGNAL + (1 - kappa) * background)).astype(np.float64)


def multinomial_q(kappa_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Exact profile statistic of the single-template model: norm profiles out analytically.

    With unit-sum templates the expected total is norm * N, so norm_hat = n / N at every kappa
    and -2 ln L reduces to the multinomial term -2 sum n_i ln p_i(kappa) up to a constant.
    """
    kappa = np.atleast_1d(kappa_values)[:, np.newaxis]
    log_likelihood = np.sum(counts * np.log(kappa * SIGNAL + (1 - kappa) * BACKGROUND), axis=1)
    best = optimize.minimize_scalar(
        lambda k: -np.sum(counts * np.log(k * SIGNAL + (1 - k) * BACKGROUND)),
        bounds=(0.0, 1.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return -2.0 * (log_likelihood - (-best.fun))


def multinomial_interval(counts: np.ndarray, level: float) -> tuple[float, float]:
    best = optimize.minimize_scalar(
        lambda k: -np.sum(counts * np.log(k * SIGNAL + (1 - k) * BACKGROUND)),
        bounds=(0.0, 1.0),
        method="bounded",
        options={"xatol": 1e-12},
    ).x
    threshold = stats.chi2.ppf(level, 1)

    def excess(k: float) -> float:
        return float(multinomial_q(np.array([k]), counts)[0] - threshold)

    lower = 0.0 if excess(0.0) < 0 else optimize.brentq(excess, 0.0, best, xtol=1e-12)
    upper = optimize.brentq(excess, best, 1.0, xtol=1e-12)
    return lower, upper


# ---------------------------------------------------------------------------------------------
# Profile likelihood


def test_profile_scan_matches_analytic_profile():
    counts = poisson_counts(0.2, 5000, seed=1)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))
    grid = np.linspace(0.12, 0.28, 9)

    scan = profile_scan(model, data, grid)

    on_grid = np.isin(scan.kappa, grid)
    expected = multinomial_q(scan.kappa[on_grid], counts)
    # Migrad stops at an estimated distance of 2e-5 from the minimum of twice the NLL
    # (tolerance 0.01), so q is accurate to about 1e-4.
    np.testing.assert_allclose(scan.q[on_grid], expected, atol=1e-3)
    assert scan.converged.all()


@pytest.mark.parametrize("level", [ONE_SIGMA, TWO_SIGMA])
def test_profile_interval_matches_analytic_interval(level):
    counts = poisson_counts(0.2, 5000, seed=2)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    lower, upper = profile_interval(model, data).interval(level)

    expected_lower, expected_upper = multinomial_interval(counts, level)
    sigma = (expected_upper - expected_lower) / 2
    # The search stops within 0.01 of the threshold in sqrt(q) and interpolates linearly in
    # sqrt(q) from there, so the ends are accurate to far better than 1 % of sigma.
    assert lower == pytest.approx(expected_lower, abs=0.01 * sigma)
    assert upper == pytest.approx(expected_upper, abs=0.01 * sigma)


def test_profile_interval_agrees_with_hesse_when_parabolic():
    # With 1e7 events the likelihood of kappa is Gaussian to high accuracy, so the 68.3 %
    # profile interval is kappa_hat +- the Hesse sigma. The histosys model has Gaussian
    # constraints and its sigma comes from Minuit's Hesse step.
    rng = np.random.default_rng(3)
    shapes = {
        "signal": np.array([normalised(SIGNAL * rng.uniform(0.9, 1.1, N_BINS)) for _ in range(5)]),
        "background": np.array(
            [normalised(BACKGROUND * rng.uniform(0.9, 1.1, N_BINS)) for _ in range(5)]
        ),
    }
    expected = 1e7 * (0.1 * SIGNAL + 0.9 * BACKGROUND)
    spec = histosys_spec(shapes["signal"], shapes["background"], expected, n_components=2)
    model, data = model_for(spec)
    fit = fit_kappa(model, data, method="histosys")

    lower, upper = profile_interval(model, data, fit=fit).interval(ONE_SIGMA)

    # Asymmetry of a Poisson likelihood scales as 1/sqrt(N); 2 % of sigma is ample at 1e7.
    assert fit.kappa - lower == pytest.approx(fit.sigma, rel=0.02)
    assert upper - fit.kappa == pytest.approx(fit.sigma, rel=0.02)


def test_profile_interval_truncated_at_lower_bound():
    counts = poisson_counts(0.0, 5000, seed=4)
    counts[np.argmax(SIGNAL)] = 0.0  # push the best fit onto kappa = 0
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    scan = profile_interval(model, data)
    lower, upper = scan.interval(TWO_SIGMA)

    assert scan.kappa_hat == pytest.approx(0.0, abs=1e-6)
    assert lower == 0.0
    assert upper == pytest.approx(multinomial_interval(counts, TWO_SIGMA)[1], rel=0.01)


def test_profile_signed_root_exact_at_included_value():
    counts = poisson_counts(0.2, 5000, seed=5)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    scan = profile_interval(model, data, include=(0.25,))

    expected = math.sqrt(multinomial_q(np.array([0.25]), counts)[0])
    assert scan.signed_root(0.25) == pytest.approx(expected, abs=1e-3)
    assert math.isnan(scan.signed_root(0.99))


def topic_mixture_problem(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return signal topics (3, V), background topics (3, V) and counts (V,)."""
    rng = np.random.default_rng(seed)
    signal = np.array([normalised(SIGNAL * rng.uniform(0.6, 1.4, N_BINS)) for _ in range(3)])
    background = np.array(
        [normalised(BACKGROUND * rng.uniform(0.6, 1.4, N_BINS)) for _ in range(3)]
    )
    shape = (
        0.15 * rng.dirichlet(np.ones(3)) @ signal + 0.85 * rng.dirichlet(np.ones(3)) @ background
    )
    return signal, background, rng.poisson(20000 * shape).astype(np.float64)


def profiled_mixture_nll(kappa: float, signal, background, counts, iterations=20000) -> float:
    """Profile the topic weights at fixed kappa by EM, independently of pyhf and Minuit.

    With kappa fixed the model is a mixture with known components kappa * S_k and
    (1 - kappa) * B_k. EM's multiplicative updates increase the likelihood monotonically. They
    converge to the global maximum because the problem is concave in the weights.
    """
    a = np.full(len(signal), 1 / len(signal))
    b = np.full(len(background), 1 / len(background))
    for _ in range(iterations):
        mixture = kappa * a @ signal + (1 - kappa) * b @ background
        ratio = counts / mixture
        a_new = a * (signal @ ratio)
        b_new = b * (background @ ratio)
        a, b = a_new / a_new.sum(), b_new / b_new.sum()
    mixture = kappa * a @ signal + (1 - kappa) * b @ background
    return float(-np.sum(counts * np.log(mixture)))


def test_profile_of_topic_mixture_matches_em_profile():
    signal, background, counts = topic_mixture_problem(seed=6)
    model, data = model_for(tamm_spec(signal, background, counts))
    fit = fit_kappa(model, data)
    grid = np.array([fit.kappa - 0.02, fit.kappa + 0.02])

    scan = profile_scan(model, data, grid, fit=fit)

    reference_min = profiled_mixture_nll(fit.kappa, signal, background, counts)
    for kappa in grid:
        expected = 2 * (profiled_mixture_nll(kappa, signal, background, counts) - reference_min)
        got = scan.q[np.argmin(np.abs(scan.kappa - kappa))]
        # Both minimisations stop within about 1e-4 of the minimum of twice the NLL, and
        # kappa_hat itself differs from the EM optimum by a second-order amount.
        assert got == pytest.approx(expected, abs=5e-3)


def test_profile_grid_and_root_finding_agree():
    signal, background, counts = topic_mixture_problem(seed=7)
    model, data = model_for(tamm_spec(signal, background, counts))
    fit = fit_kappa(model, data)

    grid = profile_scan(model, data, n_points=61, fit=fit)
    roots = profile_interval(model, data, fit=fit)

    for level in (ONE_SIGMA, TWO_SIGMA):
        for from_grid, from_roots in zip(grid.interval(level), roots.interval(level), strict=True):
            # Grid spacing is 0.1 sigma and the curve is close to parabolic, so linear
            # interpolation in sqrt(q) is accurate to well under 3 % of sigma.
            assert from_grid == pytest.approx(from_roots, abs=0.03 * fit.sigma)
    assert roots.n_fits < grid.n_fits


@settings(max_examples=50, deadline=None)
@given(
    centre=st.floats(0.2, 0.8),
    width=st.floats(0.005, 0.05),
    n_points=st.integers(5, 40),
    level=st.sampled_from([ONE_SIGMA, TWO_SIGMA, 0.9]),
)
def test_interval_of_parabola_is_exact(centre, width, n_points, level):
    kappa = np.union1d(np.linspace(centre - 4 * width, centre + 4 * width, n_points), [centre])
    scan = ProfileScan(
        poi_name="kappa",
        kappa=kappa,
        q=((kappa - centre) / width) ** 2,
        parameters=np.zeros((kappa.size, 1)),
        converged=np.ones(kappa.size, bool),
        kappa_hat=centre,
        twice_nll_min=0.0,
        bounds=(0.0, 1.0),
    )

    lower, upper = scan.interval(level)

    half_width = width * math.sqrt(stats.chi2.ppf(level, 1))
    assert lower == pytest.approx(centre - half_width, abs=1e-9)
    assert upper == pytest.approx(centre + half_width, abs=1e-9)


def test_interval_nan_when_scan_too_short():
    counts = poisson_counts(0.2, 5000, seed=8)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    scan = profile_scan(model, data, np.linspace(0.19, 0.21, 5))

    assert all(math.isnan(end) for end in scan.interval(TWO_SIGMA))


def test_profile_plot_draws_curve(tmp_path):
    counts = poisson_counts(0.2, 5000, seed=9)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))
    scan = profile_scan(model, data, n_points=11)

    axes = scan.plot()
    axes.figure.savefig(tmp_path / "scan.png")

    assert (tmp_path / "scan.png").stat().st_size > 0
    assert len(axes.lines) >= 3


def test_profile_rejects_bad_inputs():
    counts = poisson_counts(0.2, 500, seed=10)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    with pytest.raises(InvalidModelError, match="data has shape"):
        profile_scan(model, data[:-1])
    with pytest.raises(InvalidModelError, match="inside the POI bounds"):
        profile_scan(model, data, [0.1, 1.5])
    with pytest.raises(InvalidModelError, match="confidence level"):
        profile_interval(model, data, cls=(1.2,))


def test_profile_restores_backend():
    counts = poisson_counts(0.2, 500, seed=11)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))
    pyhf.set_backend("numpy", "scipy")
    before = pyhf.get_backend()

    profile_interval(model, data)

    assert pyhf.get_backend()[0] is before[0]
    assert pyhf.get_backend()[1] is before[1]


# ---------------------------------------------------------------------------------------------
# Limits and discovery


def test_limit_from_scan_takes_first_crossing():
    scan = [0.0, 0.1, 0.2, 0.3, 0.4]
    cls_values = [1.0, 0.2, 0.04, 0.06, 0.01]

    assert limit_from_scan(scan, cls_values, 0.05) == pytest.approx(0.1 + 0.15 / 0.16 * 0.1)
    assert math.isnan(limit_from_scan(scan, [1.0, 0.9, 0.8, 0.7, 0.6], 0.05))
    with pytest.raises(InvalidModelError, match="strictly increasing"):
        limit_from_scan([0.0, 0.2, 0.1], [1.0, 0.5, 0.1])


def small_signal_model(total: float = 20000, seed: int = 12):
    counts = poisson_counts(0.01, total, seed=seed)
    return model_for(baseline_spec(SIGNAL, BACKGROUND, counts))


def test_upper_limit_matches_pyhf_interpolation_when_monotonic():
    model, data = small_signal_model()
    scan = np.linspace(0.0, 0.06, 13)

    result = upper_limit(model, data, scan=scan)

    with use_numpy_backend("scipy"):
        observed, expected = pyhf.infer.intervals.upper_limits.upper_limit(
            data, model, scan, level=0.05, init_pars=None
        )
    assert result.observed == pytest.approx(float(observed), rel=1e-6)
    np.testing.assert_allclose(result.expected, [float(value) for value in expected], rtol=1e-6)
    assert result.expected[0] < result.expected[2] < result.expected[4]


def test_upper_limit_uses_first_crossing_of_noisy_cls(monkeypatch):
    # A toy-like, non-monotonic CLs curve: it first drops below 0.05 between 0.02 and 0.03.
    noisy = {0.0: 1.0, 0.01: 0.3, 0.02: 0.07, 0.03: 0.03, 0.04: 0.06, 0.05: 0.01}

    def fake_hypotest(poi, *args, **kwargs):
        value = noisy[round(float(poi), 6)]
        return np.array(value), [np.array(value)] * 5

    monkeypatch.setattr(pyhf.infer.intervals.upper_limits, "hypotest", fake_hypotest)
    model, data = small_signal_model()
    scan = np.array(sorted(noisy))

    result = upper_limit(model, data, scan=scan)

    assert result.observed == pytest.approx(0.02 + 0.02 / 0.04 * 0.01)
    with use_numpy_backend("scipy"):
        pyhf_observed, _ = pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan)
    # pyhf 0.7.6 interpolates the reversed curve with numpy.interp, which assumes it is
    # monotonic; this documents why tamm finds the crossing itself.
    assert float(pyhf_observed) != pytest.approx(result.observed, abs=1e-3)


def test_toybased_hypotest_needs_percentile_fix():
    # pyhf 0.7.6 passes numpy.percentile the `interpolation` argument that numpy 2.4 removed.
    # When this test fails, pyhf or numpy changed, and tamm's backend override can go.
    model, data = small_signal_model(total=2000)
    previous = pyhf.get_backend()
    pyhf.set_backend("numpy", "scipy")
    try:
        with pytest.raises(TypeError, match="interpolation"):
            pyhf.infer.hypotest(
                0.02, data, model, calctype="toybased", ntoys=30, track_progress=False
            )
    finally:
        pyhf.set_backend(*previous)


def test_toybased_limit_runs_and_is_reproducible():
    model, data = small_signal_model(total=2000)
    scan = np.linspace(0.0, 0.2, 5)

    first = upper_limit(model, data, scan=scan, calctype="toybased", ntoys=30, seed=1)
    second = upper_limit(model, data, scan=scan, calctype="toybased", ntoys=30, seed=1)

    assert first.ntoys == 30
    assert first.cls_observed == second.cls_observed
    assert math.isfinite(first.observed)


@pytest.mark.slow
def test_toybased_limit_agrees_with_asymptotic():
    model, data = small_signal_model(total=200000, seed=13)
    fit = fit_kappa(model, data)
    scan = np.linspace(0.0, max(fit.kappa, 0) + 4 * fit.sigma, 9)
    ntoys = 1000

    asymptotic = upper_limit(model, data, scan=scan)
    toys = upper_limit(model, data, scan=scan, calctype="toybased", ntoys=ntoys, seed=2)

    # Toy error of CLs near 0.05 with CLb near 0.5: the binomial error of CLsb (about 0.025)
    # over ntoys toys, divided by CLb. sqrt(0.05 * 0.95 / ntoys) / 0.5 bounds it from above.
    # The asymptotic slope of CLs at the crossing converts it to kappa.
    cls_values = np.array(asymptotic.cls_observed)
    slope = np.gradient(cls_values, scan)[np.argmin(np.abs(scan - asymptotic.observed))]
    cls_error = math.sqrt(0.05 * 0.95 / ntoys) / 0.5
    limit_error = cls_error / abs(slope)
    assert toys.observed == pytest.approx(asymptotic.observed, abs=3 * limit_error)
    assert toys.expected[2] == pytest.approx(asymptotic.expected[2], abs=3 * limit_error)


def test_discovery_significance_matches_profile_at_zero():
    counts = poisson_counts(0.03, 20000, seed=14)
    model, data = model_for(baseline_spec(SIGNAL, BACKGROUND, counts))

    result = discovery_significance(model, data)

    # Asymptotically Z = sqrt(q0), with q0 the profile statistic at kappa = 0.
    q0 = multinomial_q(np.array([0.0]), counts)[0]
    assert result.significance == pytest.approx(math.sqrt(q0), rel=1e-3)
    assert result.p_value == pytest.approx(stats.norm.sf(math.sqrt(q0)), rel=1e-2)


def test_discovery_expected_significance_from_asimov():
    counts = poisson_counts(0.0, 20000, seed=15)
    model, data = model_for(oracle_spec(SIGNAL, BACKGROUND, counts))

    result = discovery_significance(model, data, kappa_expected=0.03)

    # For a Gaussian likelihood the Asimov significance is kappa / sigma(kappa); sigma from
    # the Fisher information of 20000 events with these shapes, at kappa = 0.03.
    mixture = 0.03 * SIGNAL + 0.97 * BACKGROUND
    sigma = 1 / math.sqrt(20000 * np.sum((SIGNAL - BACKGROUND) ** 2 / mixture))
    assert result.expected_significance == pytest.approx(0.03 / sigma, rel=0.05)


def test_limits_reject_bad_inputs():
    model, data = small_signal_model(total=500)

    with pytest.raises(InvalidModelError, match="cl must be"):
        upper_limit(model, data, cl=1.5)
    with pytest.raises(InvalidModelError, match="scan must hold"):
        upper_limit(model, data, scan=[0.0, 2.0])
    with pytest.raises(InvalidModelError, match="calctype"):
        discovery_significance(model, data, calctype="bootstrap")
    with pytest.raises(InvalidModelError, match="ntoys"):
        upper_limit(model, data, calctype="toybased", ntoys=0)


# ---------------------------------------------------------------------------------------------
# Posterior


def beta_hdi(a: float, b: float, mass: float) -> tuple[float, float]:
    """Shortest interval of a unimodal Beta(a, b) with the given mass."""

    def width(lower_tail: float) -> float:
        return stats.beta.ppf(lower_tail + mass, a, b) - stats.beta.ppf(lower_tail, a, b)

    tail = optimize.minimize_scalar(width, bounds=(0.0, 1 - mass), method="bounded").x
    return float(stats.beta.ppf(tail, a, b)), float(stats.beta.ppf(tail + mass, a, b))


@pytest.mark.parametrize("mass", [0.683, 0.954])
def test_hdi_matches_beta_distribution(mass):
    draws = stats.beta.rvs(3, 20, size=200_000, random_state=np.random.default_rng(16))

    lower, upper = highest_density_interval(draws, mass)

    expected_lower, expected_upper = beta_hdi(3, 20, mass)
    # Sampling error of an end: sqrt(p (1 - p) / n) / density, below 2e-4 here.
    assert lower == pytest.approx(expected_lower, abs=1e-3)
    assert upper == pytest.approx(expected_upper, abs=1e-3)


def test_hdi_rejects_bad_mass():
    with pytest.raises(InvalidModelError, match="mass"):
        highest_density_interval([0.1, 0.2, 0.3], mass=1.0)


@pytest.fixture(scope="module")
def known_shape_posterior():
    """Posterior with two identical topics per process, so the shapes are known exactly."""
    counts = poisson_counts(0.2, 20000, seed=17)
    signal = np.array([SIGNAL, SIGNAL])
    background = np.array([BACKGROUND, BACKGROUND])
    return counts, sample_posterior(signal, background, counts, seed=3)


def test_posterior_of_known_shapes_matches_likelihood(known_shape_posterior):
    counts, posterior = known_shape_posterior
    lower, upper = multinomial_interval(counts, ONE_SIGMA)
    sigma = (upper - lower) / 2
    mle = optimize.minimize_scalar(
        lambda k: multinomial_q(np.array([k]), counts)[0], bounds=(0, 1), method="bounded"
    ).x

    # Flat prior and 20000 events: the posterior is Gaussian around the MLE to O(1/sqrt(N)).
    # Monte Carlo error of the mean with ESS > 1000 is below 0.03 sigma.
    assert posterior.mean() == pytest.approx(mle, abs=0.1 * sigma)
    assert posterior.std() == pytest.approx(sigma, rel=0.05)
    hdi_lower, hdi_upper = posterior.hdi(0.683)
    assert hdi_lower == pytest.approx(lower, abs=0.1 * sigma)
    assert hdi_upper == pytest.approx(upper, abs=0.1 * sigma)


def test_posterior_reports_convergence(known_shape_posterior):
    _, posterior = known_shape_posterior

    assert posterior.kappa.shape == (1000, 4)
    assert posterior.signal_weights.shape == (1000, 4, 2)
    assert posterior.r_hat["kappa"] < 1.01
    assert posterior.ess["kappa"] > 400
    assert posterior.converged
    assert set(posterior.summary()) >= {"kappa_mean", "hdi_68.3", "r_hat", "ess"}


def test_posterior_is_reproducible(known_shape_posterior):
    counts, posterior = known_shape_posterior
    signal = np.array([SIGNAL, SIGNAL])
    background = np.array([BACKGROUND, BACKGROUND])

    again = sample_posterior(signal, background, counts, seed=3)

    np.testing.assert_array_equal(again.kappa, posterior.kappa)


def test_posterior_warns_for_short_chains():
    counts = poisson_counts(0.2, 2000, seed=18)
    signal, background, _ = topic_mixture_problem(seed=19)

    with pytest.warns(ConvergenceWarning, match="effective sample size"):
        sample_posterior(
            signal,
            background,
            counts,
            n_warmup=4,
            n_draws=8,
            n_chains=2,
            max_tree_depth=3,
            jit_compile=False,
        )


def test_posterior_rejects_single_topic():
    counts = poisson_counts(0.2, 2000, seed=20)

    with pytest.raises(InvalidModelError, match="K >= 2"):
        sample_posterior(SIGNAL, np.array([BACKGROUND, BACKGROUND_FLAT]), counts)


@pytest.mark.xfail(
    np.lib.NumpyVersion(np.__version__) >= "2.4.0",
    raises=TypeError,
    strict=True,
    reason="TFP 0.25's Pad bijector calls numpy.reshape(newshape=), removed in numpy 2.4",
)
def test_softmax_centered_bijector_builds():
    # The posterior uses IteratedSigmoidCentered because of this failure. When this test
    # passes (XPASS fails the run), SoftmaxCentered works again.
    import tensorflow_probability as tfp

    tfp.bijectors.SoftmaxCentered()


# ---------------------------------------------------------------------------------------------
# Competitors


def test_principal_variations_reconstruct_histograms():
    rng = np.random.default_rng(21)
    histograms = rng.gamma(5.0, size=(4, N_BINS))

    variations = principal_variations(histograms, n_components=3)

    shapes = histograms / histograms.sum(axis=1, keepdims=True)
    centred = shapes - variations.nominal
    coefficients = centred @ variations.components.T
    # Four histograms span three directions around their mean, so three components
    # reconstruct them exactly.
    np.testing.assert_allclose(coefficients @ variations.components, centred, atol=1e-12)
    np.testing.assert_allclose(
        variations.components @ variations.components.T, np.eye(3), atol=1e-12
    )
    np.testing.assert_allclose(variations.components.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(variations.eigenvalues, np.var(coefficients, axis=0, ddof=1))
    assert variations.explained.sum() == pytest.approx(1.0)


def test_principal_variations_keep_nonzero_components():
    histograms = [[1, 2, 3, 4], [2, 2, 3, 3], [3, 2, 2, 3]]

    variations = principal_variations(histograms, n_components=5)

    assert variations.components.shape[0] == 2


def test_histosys_model_reproduces_up_and_down():
    rng = np.random.default_rng(22)
    signal = rng.gamma(5.0, size=(6, N_BINS))
    background = rng.gamma(5.0, size=(6, N_BINS))
    counts = np.full(N_BINS, 100.0)
    spec = histosys_spec(signal, background, counts, n_components=2)
    model, _ = model_for(spec)
    variations = principal_variations(signal, 2)
    values = np.asarray(model.config.suggested_init(), dtype=np.float64)
    values[model.config.poi_index] = 1.0  # only the signal sample contributes

    with use_numpy_backend():
        nominal = model.expected_actualdata(values)
        values[model.config.par_slice("signal_pc1")] = 1.0
        up = model.expected_actualdata(values)
        values[model.config.par_slice("signal_pc1")] = -1.0
        down = model.expected_actualdata(values)

    total = counts.sum()
    np.testing.assert_allclose(nominal, total * variations.nominal, rtol=1e-10)
    np.testing.assert_allclose(up, total * np.maximum(variations.up[0], 1e-9), rtol=1e-10)
    np.testing.assert_allclose(down, total * np.maximum(variations.down[0], 1e-9), rtol=1e-10)


def test_histosys_rejects_single_simulation():
    with pytest.raises(InvalidModelError, match="D >= 2"):
        histosys_spec([SIGNAL], [BACKGROUND, BACKGROUND_FLAT], np.ones(N_BINS))


def test_oracle_sigma_on_gaussian_toy(gaussian_toy):
    region = gaussian_toy.region(bins=10)
    truth = {
        process: gaussian_toy.true_bin_probabilities(process, region)
        for process in ("signal", "background")
    }
    asimov = 55000 * (truth["signal"] / 11 + truth["background"] * 10 / 11)
    model, data = model_for(oracle_spec(truth["signal"], truth["background"], asimov))

    fit = fit_kappa(model, data, method="oracle")

    # The unbinned Fisher information of 55 000 events gives sigma = 0.0076; binning into
    # 10 x 10 loses a little information, so the binned sigma lies slightly above.
    assert fit.kappa == pytest.approx(1 / 11, abs=1e-6)
    assert 0.0076 <= fit.sigma < 0.0080


# ---------------------------------------------------------------------------------------------
# Command-line interface


@pytest.fixture
def workspace_file(tmp_path):
    from tamm.pyhf import write_workspace

    counts = poisson_counts(0.02, 20000, seed=23)
    return write_workspace(
        tmp_path / "workspace.json", build_workspace(baseline_spec(SIGNAL, BACKGROUND, counts))
    )


def test_scan_command_prints_intervals(workspace_file, tmp_path):
    from click.testing import CliRunner

    from tamm.cli.scan import scan

    plot = tmp_path / "scan.png"
    output = tmp_path / "scan.json"
    result = CliRunner().invoke(
        scan,
        [str(workspace_file), "--points", "11", "--plot", str(plot), "--output-file", str(output)],
    )

    assert result.exit_code == 0, result.output
    assert "68.3 % profile interval" in result.output
    assert plot.stat().st_size > 0
    record = json.loads(output.read_text())
    lower, upper = record["intervals"]["68.3"]
    assert lower < record["fit"]["kappa"] < upper


def test_limit_command_prints_limits(workspace_file):
    from click.testing import CliRunner

    from tamm.cli.limit import limit

    result = CliRunner().invoke(limit, [str(workspace_file), "--points", "11"])

    assert result.exit_code == 0, result.output
    assert "observed" in result.output
    assert "Discovery test" in result.output


def test_limit_command_reports_missing_file(tmp_path):
    from click.testing import CliRunner

    from tamm.cli.limit import limit

    result = CliRunner().invoke(limit, [str(tmp_path / "missing.json")])

    assert result.exit_code != 0
    assert "does not exist" in result.output


# ---------------------------------------------------------------------------------------------
# Jackknife over the simulations (binned engine)


def _jackknife_inputs(seed: int, copies: bool):
    from tamm.datasets import GaussianToy
    from tamm.topics import TopicModel

    toy = GaussianToy()
    region = toy.region(bins=5)
    histograms = {}
    for offset, process in enumerate(("signal", "background")):
        indices = toy.choose_simulations(4, seed=seed + offset)
        sims = toy.simulations(process, indices, n_events=50_000, seed=seed + 10 + offset)
        counts = np.stack([region.histogram(sim.events) for sim in sims])
        histograms[process] = np.repeat(counts[:1], 4, axis=0) if copies else counts
    topics = {process: TopicModel(2, seed=3).fit(counts) for process, counts in histograms.items()}
    data = toy.pseudo_data(seed=seed + 20)
    observed = region.histogram(data.events)
    model, model_data = model_for(
        tamm_spec(topics["signal"].topics, topics["background"].topics, observed)
    )
    return histograms, topics, observed, fit_kappa(model, model_data)


def test_binned_jackknife_reports_every_simulation():
    histograms, topics, observed, fit = _jackknife_inputs(1, copies=False)
    jackknife = jackknife_binned(histograms, topics, observed, fit)
    assert jackknife.leave_one_out.shape == (8,)
    # With 3 documents for 2 topics a topic fit can stop at max_iter (here 1 of 8). Such a
    # simulation is reported as failed and left out of the variance.
    assert np.sum(jackknife.converged) >= 6
    assert np.all(np.isnan(jackknife.leave_one_out[~jackknife.converged]))
    assert np.all(np.isfinite(jackknife.leave_one_out[jackknife.converged]))
    assert jackknife.sigma_simulations > 0
    assert jackknife.sigma_total == pytest.approx(
        math.hypot(fit.sigma, jackknife.sigma_simulations)
    )


def test_binned_jackknife_zero_for_identical_simulations():
    # Four copies of one simulation per process: leaving one out changes nothing, so every
    # leave-one-out kappa equals the full fit's up to the topic fit's tolerance. The warm
    # start iterates on from the converged topics, which moved kappa by 0.01 sigma here.
    histograms, topics, observed, fit = _jackknife_inputs(2, copies=True)
    jackknife = jackknife_binned(histograms, topics, observed, fit)
    assert jackknife.all_converged
    np.testing.assert_allclose(jackknife.leave_one_out, fit.kappa, atol=0.05 * fit.sigma)
    assert jackknife.sigma_simulations < 0.1 * fit.sigma


def test_leave_one_out_needs_more_simulations_than_topics():
    counts = np.random.default_rng(0).integers(1, 50, size=(3, 10)).astype(float)
    with pytest.raises(InvalidModelError, match=r"one more simulation than topics \(3\)"):
        leave_one_out_topics(counts, np.full((3, 10), 0.1))
