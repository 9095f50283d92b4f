"""Tests of tamm.zfit: the unbinned TAMM PDF, the topic-mixture PDF and the hepstats helpers."""

from __future__ import annotations

import math
import os

# NB: zfit warns on import unless this is set, so set it for the test process before zfit loads.
os.environ.setdefault("ZFIT_DISABLE_TF_WARNINGS", "1")

import numpy as np
import pytest
import tensorflow as tf
import zfit
from hepstats.hypotests import UpperLimit
from hepstats.hypotests.calculators import AsymptoticCalculator, FrequentistCalculator
from hepstats.hypotests.parameters import POI, POIarray
from hepstats.utils import base_sample
from scipy import interpolate, stats

from tamm.datasets.gaussian_ratios import ExactGaussianRatios
from tamm.exceptions import InvalidModelError, InvalidRegionError, InvalidSimulationError
from tamm.mixture import MixtureSamples, TemplateAdaptedLikelihood, fit_unbinned
from tamm.pyhf import build_model, fit_kappa, hypotest_kappa, tamm_spec, topic_weights
from tamm.samples import Region
from tamm.topics import TopicFit
from tamm.zfit import (
    BinnedTammPDF,
    TammPDF,
    TopicMixturePDF,
    binned_data,
    exact_gaussian_log_ratio_fn,
    profile_scan,
    region_space,
    stick_breaking_weights,
    tamm_constraints,
    tamm_nll,
)
from tamm.zfit.hepstats import (
    PoissonToys,
    discovery,
    limit_from_pvalues,
    upper_limit,
)

# zfit 0.28 calls its own deprecated Space API internally (rect_limits, __len__); nothing in tamm
# can act on these warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:zfit.*")


@pytest.fixture(autouse=True)
def _restore_zfit_state():
    yield
    zfit.run.set_mode_default()


def _minuit(tol: float = 1e-3) -> zfit.minimize.Minuit:
    return zfit.minimize.Minuit(gradient="zfit", tol=tol)


# ---------------------------------------------------------------------------------------------
# Fixtures: the Gaussian toy with exact ratios


class ToySetup:
    """Exact ratios of chosen toy simulations with data, reference and penalty samples."""

    def __init__(self, toy, k: int, n_signal: int, n_background: int, n_pool: int, seed: int):
        streams = np.random.SeedSequence(seed).spawn(4)
        self.region = toy.region(None)
        self.ratios = ExactGaussianRatios.from_toy(
            toy,
            toy.choose_simulations(k, seed=streams[0]),
            toy.choose_simulations(k, seed=streams[1]),
        )
        self.log_ratio_fn = exact_gaussian_log_ratio_fn(self.ratios)
        pseudo = toy.pseudo_data(n_signal, n_background, seed=streams[2])
        self.data = pseudo.events
        self.kappa_true = pseudo.kappa_true
        pool = self.ratios.sample_reference(2 * n_pool, seed=streams[3])
        self.reference = pool[:n_pool]
        self.penalty = pool[n_pool:]

    def samples(self) -> MixtureSamples:
        return MixtureSamples(
            self.ratios(self.data), self.ratios(self.reference), self.ratios(self.penalty)
        )


@pytest.fixture(scope="module")
def small(gaussian_toy):
    """K = 3 per process, 5000 data events, 20 000 reference and penalty events."""
    return ToySetup(gaussian_toy, 3, 500, 4500, 20_000, seed=11)


@pytest.fixture(scope="module")
def agreement(gaussian_toy):
    """K = 4 per process, 20 000 data events, 50 000 reference and penalty events."""
    return ToySetup(gaussian_toy, 4, 2000, 18_000, 50_000, seed=12)


def numpy_ratio(setup: ToySetup, events: np.ndarray, theta: dict[str, float], k: int) -> np.ndarray:
    """R(x) = kappa c_s R_s + (1 - kappa) c_b R_b from the numpy exact ratios."""
    features = setup.ratios(events)
    a = np.array([theta[f"a_{i}"] for i in range(1, k)])
    b = np.array([theta[f"b_{i}"] for i in range(1, k)])
    a = np.append(a, 1 - a.sum())
    b = np.append(b, 1 - b.sum())
    signal = np.exp(features[:, :k] @ a)
    background = np.exp(features[:, k:] @ b)
    kappa = theta["kappa"]
    return kappa * theta["c_s"] * signal + (1 - kappa) * theta["c_b"] * background


THETA_SMALL = {
    "kappa": 0.2,
    "c_s": 1.1,
    "c_b": 0.95,
    "a_1": 0.5,
    "a_2": -0.1,
    "b_1": 0.2,
    "b_2": 0.45,
}


def set_parameters(pdf: TammPDF, theta: dict[str, float]) -> None:
    for name, value in theta.items():
        parameter = pdf.params[name]
        if parameter.independent:
            parameter.set_value(value)


# ---------------------------------------------------------------------------------------------
# Exact Gaussian log ratios


def test_gaussian_log_ratio_matches_numpy(small):
    events = small.reference[:500]
    expected = small.ratios(events)
    eager = small.log_ratio_fn(tf.constant(events)).numpy()
    traced = tf.function(small.log_ratio_fn)(tf.constant(events)).numpy()
    # Both evaluate the same float64 formula up to summation order, so 1e-12 is a few ulp.
    np.testing.assert_allclose(eager, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(traced, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Density, normalisation, binning


def test_pdf_parameters_and_names(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, name="Named")
    assert sorted(pdf.params) == ["a_1", "a_2", "b_1", "b_2", "c_b", "c_s", "kappa"]
    assert pdf.kappa is pdf.params["kappa"]
    assert pdf.kappa.name.startswith("Named")
    assert not pdf.params["c_s"].independent
    assert pdf.n_signal_classes == 3
    assert pdf.n_background_classes == 3
    assert not pdf.is_extended

    other = TammPDF(small.region, small.log_ratio_fn, small.reference, name="Named")
    assert other.kappa.name != pdf.kappa.name


def test_fixed_weights_are_not_floating(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, fix_weights=True)
    floating = {p.name for p in pdf.get_params(floating=True)}
    assert floating == {pdf.kappa.name}
    assert not pdf.params["a_1"].floating


def test_given_parameters_are_used(small):
    kappa = zfit.Parameter("given_kappa", 0.3)
    a = [zfit.Parameter(f"given_a_{i}", 0.3) for i in (1, 2)]
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, kappa=kappa, signal_weights=a)
    assert pdf.kappa is kappa
    assert pdf.params["a_2"] is a[1]


@pytest.mark.parametrize("n_data", [None, 5000.0])
def test_integrate_region_is_one(small, n_data):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=n_data)
    set_parameters(pdf, THETA_SMALL)
    assert float(pdf.integrate(pdf.space)[0]) == pytest.approx(1.0, abs=1e-6)


def test_integrate_subrange_is_reference_fraction(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=5000.0)
    set_parameters(pdf, THETA_SMALL)
    ratio = numpy_ratio(small, small.reference, THETA_SMALL, 3)
    inside = (small.reference[:, 0] >= -1.0) & (small.reference[:, 1] < 0.5)
    expected = ratio[inside].sum() / ratio.sum()

    box = zfit.Space(["x1", "x2"], lower=[-1.0, -2.0], upper=[2.0, 0.5])
    swapped = zfit.Space(["x2", "x1"], lower=[-2.0, -1.0], upper=[0.5, 2.0])
    complement = zfit.Space(["x1", "x2"], lower=[-1.0, 0.5], upper=[2.0, 2.0])
    assert float(pdf.integrate(box)[0]) == pytest.approx(expected, rel=1e-10)
    assert float(pdf.integrate(swapped)[0]) == pytest.approx(expected, rel=1e-10)
    left = zfit.Space(["x1", "x2"], lower=[-2.0, -2.0], upper=[-1.0, 2.0])
    total = sum(float(pdf.integrate(space)[0]) for space in (box, complement, left))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_pdf_is_ratio_over_reference_mean(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=5000.0)
    set_parameters(pdf, THETA_SMALL)
    events = small.data[:200]
    expected = (
        numpy_ratio(small, events, THETA_SMALL, 3)
        / numpy_ratio(small, small.reference, THETA_SMALL, 3).mean()
    )
    np.testing.assert_allclose(pdf.pdf(events).numpy(), expected, rtol=1e-10)


def test_default_normalisations_make_unit_templates(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    set_parameters(pdf, THETA_SMALL)
    features = small.ratios(small.reference)
    a, b = pdf.mixture_weights()
    assert float(pdf.params["c_s"].value()) * np.exp(features[:, :3] @ a).mean() == pytest.approx(
        1.0
    )
    assert float(pdf.params["c_b"].value()) * np.exp(features[:, 3:] @ b).mean() == pytest.approx(
        1.0
    )


def test_extended_yield_is_n_data_times_reference_mean(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=5000.0)
    set_parameters(pdf, THETA_SMALL)
    expected = 5000.0 * numpy_ratio(small, small.reference, THETA_SMALL, 3).mean()
    assert pdf.is_extended
    assert float(pdf.get_yield().value()) == pytest.approx(expected, rel=1e-12)


def test_to_binned_matches_zfit_bin_integrals(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference[:4000], n_data=5000.0)
    set_parameters(pdf, THETA_SMALL)
    space = pdf.space.with_binning([4, 3])
    binned = pdf.to_binned(space)
    reference = zfit.pdf.BinnedFromUnbinnedPDF(pdf, space)
    assert isinstance(binned, BinnedTammPDF)
    # Both sum R over the same reference events per bin, so only the summation order differs.
    np.testing.assert_allclose(
        binned.rel_counts().numpy(), reference.rel_counts().numpy(), atol=1e-14
    )
    np.testing.assert_allclose(
        binned.counts().numpy().sum(), float(pdf.get_yield().value()), rtol=1e-12
    )


def test_sample_draws_reference_events_inside_limits(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    zfit.settings.set_seed(3)
    first = pdf.sample(2000).value().numpy()
    second = pdf.sample(2000).value().numpy()
    assert first.shape == (2000, 2)
    assert not np.array_equal(first, second)
    reference_rows = {tuple(row) for row in small.reference}
    assert all(tuple(row) in reference_rows for row in first[:200])

    box = zfit.Space(["x1", "x2"], lower=[0.0, -2.0], upper=[2.0, 0.0])
    inside = pdf.sample(500, limits=box).value().numpy()
    assert np.all(inside[:, 0] >= 0.0)
    assert np.all(inside[:, 1] < 0.0)


def test_sample_follows_model_weights(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    set_parameters(pdf, {"kappa": 0.6})
    zfit.settings.set_seed(4)
    events = pdf.sample(20_000).value().numpy()
    box = zfit.Space(["x1", "x2"], lower=[-0.5, -0.5], upper=[0.5, 0.5])
    probability = float(pdf.integrate(box)[0])
    inside = np.mean(np.all(np.abs(events) < 0.5, axis=1))
    # The tolerance is 4 binomial standard errors of the fraction, robust for a fixed seed.
    assert abs(inside - probability) < 4 * math.sqrt(probability * (1 - probability) / len(events))


# ---------------------------------------------------------------------------------------------
# The standalone loss, reproduced


def test_loss_equals_standalone_up_to_constant(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    loss = tamm_nll(pdf, small.data, penalty=small.penalty)
    likelihood = TemplateAdaptedLikelihood(small.samples())
    names = likelihood.parameter_names
    offsets = []
    for theta in (
        likelihood.default_parameters(0.1),
        np.array([0.2, 1.1, 0.95, 0.5, -0.1, 0.2, 0.45]),
    ):
        zfit.param.set_values([pdf.params[n] for n in names], theta)
        offsets.append(float(loss.value(full=True)) - likelihood.value(theta))
    # Same function up to a constant: the offsets agree to the float64 noise of sums over 1e4
    # events (about 1e-9 for a loss of order 1e4).
    assert offsets[0] == pytest.approx(offsets[1], abs=1e-7)


def test_minuit_agrees_with_standalone_fit(agreement):
    """Minuit on the zfit loss and tamm.mixture minimise the same function.

    Tolerances: Minuit stops at EDM ~1e-7 with tol=1e-6, so kappa is within
    sqrt(2 EDM) sigma ~ 2e-5 of the minimum, and 1e-4 leaves a factor 5. Minuit's Hesse uses
    finite differences of the autodiff gradient, whose relative error on sigma is far below 1 %.
    """
    likelihood = TemplateAdaptedLikelihood(agreement.samples())
    standalone = fit_unbinned(likelihood)
    sigma_hesse = math.sqrt(np.linalg.inv(standalone.sandwich.hessian)[0, 0])

    pdf = TammPDF(
        agreement.region, agreement.log_ratio_fn, agreement.reference, n_data=len(agreement.data)
    )
    loss = tamm_nll(pdf, agreement.data, penalty=agreement.penalty)
    result = _minuit(tol=1e-6).minimize(loss)
    result.hesse()
    result.hesse(method="hesse_np", name="autodiff")

    assert zfit.run.get_graph_mode() == "auto"
    assert result.valid
    assert result.params[pdf.kappa]["value"] == pytest.approx(standalone.kappa, abs=1e-4)
    assert result.params[pdf.kappa]["hesse"]["error"] == pytest.approx(sigma_hesse, rel=0.01)
    assert result.params[pdf.kappa]["autodiff"]["error"] == pytest.approx(sigma_hesse, rel=0.01)
    a, b = pdf.mixture_weights()
    np.testing.assert_allclose(a, standalone.weights[0], atol=5e-3)
    np.testing.assert_allclose(b, standalone.weights[1], atol=5e-3)


# ---------------------------------------------------------------------------------------------
# zfit workflows


@pytest.fixture(scope="module")
def fitted_small(small):
    """The non-extended PDF fitted to the small data set with UnbinnedNLL."""
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    loss = tamm_nll(pdf, small.data)
    result = _minuit(tol=1e-5).minimize(loss)
    result.hesse()
    return pdf, loss, result


def test_unbinned_nll_fit_and_hesse(small, fitted_small):
    pdf, loss, result = fitted_small
    kappa = result.params[pdf.kappa]
    assert isinstance(loss, zfit.loss.UnbinnedNLL)
    assert result.valid
    assert 0 < kappa["hesse"]["error"] < 0.2
    # TAMM with K = 3 need not reach the truth, so 4 sigma only catches gross failures.
    assert abs(kappa["value"] - small.kappa_true) < 4 * kappa["hesse"]["error"]


def test_profile_scan_is_parabolic_near_minimum(fitted_small):
    pdf, loss, result = fitted_small
    kappa_hat = result.params[pdf.kappa]["value"]
    sigma = result.params[pdf.kappa]["hesse"]["error"]
    scan = profile_scan(loss, [kappa_hat - sigma, kappa_hat, kappa_hat + sigma])
    assert np.all(scan.converged)
    assert scan.q[1] == pytest.approx(0.0, abs=1e-3)
    # At one Hesse sigma the profile statistic is 1 for a parabolic minimum. The K = 3 toy is
    # not exactly parabolic, so allow 25 %.
    np.testing.assert_allclose(scan.q[[0, 2]], 1.0, rtol=0.25)
    assert pdf.kappa.floating
    assert float(pdf.kappa.value()) == pytest.approx(scan.kappa_hat)


def test_toy_refit_returns_kappa_within_errors(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    set_parameters(pdf, {"kappa": 0.3})
    zfit.settings.set_seed(7)
    toy = pdf.sample(len(small.data)).value().numpy()
    loss = tamm_nll(pdf, toy, penalty=small.penalty)
    result = _minuit().minimize(loss)
    result.hesse()
    kappa = result.params[pdf.kappa]
    assert result.valid
    # The toy is drawn from the model itself (kappa = 0.3, equal weights), so 3 sigma suffices.
    assert abs(kappa["value"] - 0.3) < 3 * kappa["hesse"]["error"]


def test_extended_sample_draws_poisson_count(small):
    yield_ = zfit.Parameter("extended_sample_yield", 1000.0)
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, extended=yield_)
    zfit.settings.set_seed(8)
    sizes = {int(pdf.sample().num_entries) for _ in range(4)}
    assert len(sizes) > 1


def test_eager_mode_gives_same_loss_and_gradient(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    loss = tamm_nll(pdf, small.data, penalty=small.penalty)
    set_parameters(pdf, THETA_SMALL)
    params = list(loss.get_params())
    value, gradient = loss.value_gradient(params)
    zfit.run.set_graph_mode(False)
    eager_value, eager_gradient = loss.value_gradient(params)
    assert float(eager_value) == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(np.asarray(eager_gradient), np.asarray(gradient), rtol=1e-9)


def test_constraints_reproduce_penalty_and_ridge(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    set_parameters(pdf, THETA_SMALL)
    penalty, ridge = tamm_constraints(pdf, small.penalty, penalty_strength=2.0, ridge_strength=3.0)
    features = small.ratios(small.penalty)
    a, b = pdf.mixture_weights()
    h = (
        THETA_SMALL["c_b"] * np.exp(features[:, 3:] @ b).mean()
        - THETA_SMALL["c_s"] * np.exp(features[:, :3] @ a).mean()
    )
    assert float(penalty.value()) == pytest.approx(0.5 * 2.0 * len(small.data) * h**2, rel=1e-10)
    squares = np.sum((a - 1 / 3) ** 2) + np.sum((b - 1 / 3) ** 2)
    assert float(ridge.value()) == pytest.approx(0.5 * 3.0 * squares, rel=1e-12)
    assert tamm_constraints(pdf, None, ridge_strength=0.0) == []


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_rejects_wrong_feature_width(small):
    def seven_columns(x):
        return tf.concat([small.log_ratio_fn(x), x[:, :1]], axis=1)

    with pytest.raises(InvalidModelError, match="returned 7 columns"):
        TammPDF(small.region, seven_columns, small.reference)
    with pytest.raises(InvalidModelError, match="returned 6 columns, but 4 signal and 3"):
        TammPDF(
            small.region,
            small.log_ratio_fn,
            small.reference,
            n_signal_classes=4,
            n_background_classes=3,
        )


def test_rejects_one_simulation_per_process(small):
    def two_columns(x):
        return small.log_ratio_fn(x)[:, :2]

    with pytest.raises(InvalidModelError, match="K_s=1"):
        TammPDF(small.region, two_columns, small.reference)


def test_rejects_non_finite_features(small):
    def broken(x):
        features = small.log_ratio_fn(x)
        return tf.where(x[:, :1] > 1.9, np.inf, features)

    with pytest.raises(
        InvalidModelError, match=r"NaN or infinite log ratios .* \(event \d+, class 0\)=inf"
    ):
        TammPDF(small.region, broken, small.reference)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        (np.zeros((10, 3)), r"shape \(n_events, 2\).*received shape \(10, 3\)"),
        (np.zeros((0, 2)), "contains no events"),
        (np.array([[0.0, 0.0], [np.nan, 1.0]]), r"NaN or infinite values at row 1"),
        (np.array([[0.0, 0.0], [2.5, 1.0]]), r"1 events outside the region"),
    ],
)
def test_rejects_bad_reference(small, reference, match):
    with pytest.raises(InvalidSimulationError, match=match):
        TammPDF(small.region, small.log_ratio_fn, reference)


def test_rejects_bad_options(small):
    with pytest.raises(InvalidModelError, match="1 a-weights were given, but 3 simulations"):
        TammPDF(
            small.region,
            small.log_ratio_fn,
            small.reference,
            signal_weights=[zfit.Parameter("only_a", 0.5)],
        )
    with pytest.raises(InvalidModelError, match="not both"):
        TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=10.0, extended=10.0)
    with pytest.raises(InvalidModelError, match="n_data must be a positive"):
        TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=-1.0)
    with pytest.raises(InvalidModelError, match=r"zfit\.Space or a tamm Region"):
        TammPDF("x", small.log_ratio_fn, small.reference)


def test_nll_keeps_weighted_zfit_data(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    weights = np.full(len(small.data), 0.5)
    data = zfit.Data.from_numpy(obs=pdf.space, array=small.data, weights=weights)
    loss = tamm_nll(pdf, data)
    assert loss.data[0] is data
    unweighted = tamm_nll(pdf, small.data)
    # Halving every weight halves the NLL; the ridge term is the same in both losses.
    ridge = float(tamm_constraints(pdf)[0].value())
    full = float(loss.value(full=True))
    assert full - ridge == pytest.approx(0.5 * (float(unweighted.value(full=True)) - ridge))


def test_nll_rejects_bad_data(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference)
    with pytest.raises(InvalidSimulationError, match=r"data contains NaN .* row 1"):
        tamm_nll(pdf, np.array([[0.0, 0.0], [np.nan, 0.0]]))
    with pytest.raises(InvalidModelError, match="penalty_strength must be a finite number >= 0"):
        tamm_nll(pdf, small.data, penalty=small.penalty, penalty_strength=-1.0)


# ---------------------------------------------------------------------------------------------
# Binned topic mixture


@pytest.fixture(scope="module")
def topic_setup(gaussian_toy):
    """3 signal and 4 background simulation histograms as topics, and a Poisson observation."""
    region = gaussian_toy.region(5)
    signal = np.array(
        [gaussian_toy.simulation_bin_probabilities("signal", i, region) for i in (3, 40, 77)]
    )
    background = np.array(
        [
            gaussian_toy.simulation_bin_probabilities("background", i, region)
            for i in (5, 18, 260, 401)
        ]
    )
    truth = 0.1 * gaussian_toy.true_bin_probabilities("signal", region)
    truth += 0.9 * gaussian_toy.true_bin_probabilities("background", region)
    observed = np.random.default_rng(21).poisson(20_000 * truth).astype(float)
    return region, signal, background, observed


def test_stick_breaking_matches_pyhf_topic_weights():
    for values in ([0.3], [0.2, 0.7, 0.5], [1.0, 0.4], [0.0, 0.0]):
        np.testing.assert_allclose(
            stick_breaking_weights(values).numpy(), topic_weights(values), atol=1e-15
        )


def test_topic_pdf_rel_counts_formula(topic_setup):
    region, signal, background, _ = topic_setup
    pdf = TopicMixturePDF(region, 3 * signal, background)
    values = {"kappa": 0.25, "signal_topics_1": 0.2, "signal_topics_2": 0.6}
    for name, value in values.items():
        pdf.params[name].set_value(value)
    theta_s = topic_weights([0.2, 0.6])
    theta_b = np.full(4, 0.25)
    expected = 0.25 * theta_s @ signal + 0.75 * theta_b @ background
    np.testing.assert_allclose(pdf.rel_counts().numpy().ravel(), expected, atol=1e-15)
    assert pdf.rel_counts().numpy().shape == region.shape


@pytest.mark.parametrize("extended", [True, False])
def test_topic_fit_agrees_with_pyhf(topic_setup, extended):
    """zfit and pyhf fit the same Poisson likelihood (the multinomial one profiles the total).

    Tolerance: both run Migrad, and pyhf's fit_kappa stops at EDM < 2e-4 (tolerance 0.1,
    strategy 0). kappa then lies within sqrt(2 EDM) sigma ~ 0.02 sigma ~ 4e-4 of the shared
    minimum, so 1e-3 covers both stopping points.
    """
    region, signal, background, observed = topic_setup
    model = build_model(tamm_spec(signal, background, observed))
    reference = fit_kappa(model, observed.tolist() + model.config.auxdata)

    if extended:
        total = zfit.Parameter("topic_total", observed.sum(), 0.0, 10 * observed.sum())
        pdf = TopicMixturePDF(region, signal, background, extended=total)
        loss = zfit.loss.ExtendedBinnedNLL(pdf, binned_data(region, observed))
    else:
        pdf = TopicMixturePDF(region, signal, background)
        loss = zfit.loss.BinnedNLL(pdf, binned_data(region, observed))
    result = _minuit(tol=1e-5).minimize(loss)
    # Some topic weights end at the edge of the simplex, where zfit calls a fit not valid.
    assert result.converged
    assert result.params[pdf.kappa]["value"] == pytest.approx(reference.kappa, abs=1e-3)


def test_topic_pdf_accepts_topic_fit(topic_setup):
    region, signal, background, _ = topic_setup
    fit = TopicFit(
        topics=signal,
        document_weights=np.full((2, 3), 1 / 3),
        elbo=0.0,
        elbo_trace=np.zeros(1),
        converged=True,
        n_iter=1,
        doc_topic_prior=1.0,
        topic_word_prior=1.0,
        seed=0,
    )
    pdf = TopicMixturePDF(region, fit, background[0])
    np.testing.assert_allclose(pdf.signal_topics, signal)
    assert "background_topics_1" not in pdf.params


def test_topic_pdf_rejects_bad_topics(topic_setup):
    region, signal, background, _ = topic_setup
    with pytest.raises(InvalidModelError, match=r"shape \(K, 25\).*received shape \(3, 24\)"):
        TopicMixturePDF(region, signal[:, :24], background)
    negative = background.copy()
    negative[1, 7] = -0.1
    with pytest.raises(InvalidModelError, match=r"invalid value -0\.1 in topic 1, bin 7"):
        TopicMixturePDF(region, signal, negative)
    with pytest.raises(InvalidRegionError, match="binned Region"):
        TopicMixturePDF(Region(["x1", "x2"], region.limits), signal, background)
    with pytest.raises(InvalidModelError, match="counts has 24 bins"):
        binned_data(region, np.ones(24))


# ---------------------------------------------------------------------------------------------
# hepstats helpers and the hepstats 0.10.1 defects they work around


def limit_loss(topic_setup, signal_topics, name):
    """Extended topic mixture of an Asimov-like observation with 1 % signal, for limits.

    The observation is the expectation itself (interior topic weights, no Poisson noise), so
    the best fit is inside the parameter limits. kappa may go to -1 so that it is not at a
    limit either.
    """
    region, signal, background, _ = topic_setup
    observed = 5000 * (
        0.01 * signal.mean(axis=0) + 0.99 * np.array([0.4, 0.3, 0.2, 0.1]) @ background
    )
    kappa = zfit.Parameter(f"{name}_kappa", 0.1, -1.0, 1.0)
    total = zfit.Parameter(f"{name}_total", observed.sum(), 0.0, 10 * observed.sum())
    pdf = TopicMixturePDF(region, signal_topics, background, kappa=kappa, extended=total, name=name)
    return pdf, zfit.loss.ExtendedBinnedNLL(pdf, binned_data(region, observed)), observed


@pytest.fixture(scope="module")
def topic_limit_loss(topic_setup):
    """Three signal topics, whose weights have no effect at kappa = 0."""
    return limit_loss(topic_setup, topic_setup[1], "LimitPDF")


@pytest.fixture(scope="module")
def single_signal_loss(topic_setup):
    """One signal template, so that every parameter matters at kappa = 0."""
    return limit_loss(topic_setup, topic_setup[1].mean(axis=0), "SingleSignalPDF")


LIMIT_SCAN = np.linspace(0.0, 0.2, 11)


def test_limit_from_pvalues_interpolates_first_crossing():
    values = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert limit_from_pvalues(values, [1.0, 0.5, 0.05, 0.01, 0.2], 0.05) == pytest.approx(0.2)
    assert limit_from_pvalues(values, [1.0, 0.5, 0.1, 0.0, 0.0], 0.05) == pytest.approx(0.25)
    assert limit_from_pvalues(values, [1.0, 0.5, 0.1, 0.0, 0.0], 0.05, start=0.25) != 0.25
    assert math.isnan(limit_from_pvalues(values, [1.0, 0.9, 0.8, 0.7, 0.6], 0.05))


def test_upperlimit_none_is_recovered(single_signal_loss):
    """hepstats 0.10.1 loses the limit on numpy >= 2.4; upper_limit recovers it from p-values."""
    pdf, loss, _ = single_signal_loss
    result = _minuit().minimize(loss)
    raw = UpperLimit(
        AsymptoticCalculator(result, _minuit()),
        POIarray(pdf.kappa, LIMIT_SCAN),
        POI(pdf.kappa, 0.0),
        qtilde=True,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        pvalues = raw.pvalues(CLs=True)
        raw_limits = raw.upperlimit(alpha=0.05, CLs=True, printlevel=0)
    assert raw_limits["observed"] is None
    assert raw_limits["expected"] is None

    limit = upper_limit(loss, LIMIT_SCAN)
    assert 0.0 < limit.expected_band["-2"] < limit.expected < limit.expected_band["+2"] < 0.2
    # The interpolated CLs at the limit is alpha, and hepstats' own spline root (taken as the
    # first element, the step that numpy 2.4 rejects) lies within one grid step.
    keep = result.params[pdf.kappa]["value"] <= LIMIT_SCAN
    helper_cls = limit.pvalues["cls"][keep]
    crossing = np.interp(limit.observed, LIMIT_SCAN[keep], helper_cls)
    assert crossing == pytest.approx(0.05)
    # The helper refits with its own minimiser, so its p-values agree with the raw ones only to
    # the precision of the fits.
    np.testing.assert_allclose(helper_cls, pvalues["cls"][keep], atol=1e-3)
    spline = interpolate.splrep(LIMIT_SCAN[keep], pvalues["cls"][keep] - 0.05, s=0)
    root = float(interpolate.sproot(spline)[0])
    assert limit.observed == pytest.approx(root, abs=LIMIT_SCAN[1] - LIMIT_SCAN[0])


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_asimov_fit_at_zero_kappa(topic_limit_loss):
    """At kappa = 0 the signal topic weights are flat: raw hepstats retries and warns."""
    pdf, loss, _ = topic_limit_loss
    result = _minuit().minimize(loss)
    calculator = AsymptoticCalculator(result, _minuit())
    with pytest.warns(UserWarning, match="No valid minimum was found"):
        calculator.asimov_dataset(POI(pdf.kappa, 0.0))
    assert pdf.kappa.floating

    # Any warning fails this test (filterwarnings = error), so the helper's fits must be valid.
    limit = upper_limit(loss, LIMIT_SCAN)
    assert 0.0 < limit.expected < limit.observed < 0.2
    assert all(p.floating for p in pdf.signal_shape_parameters)


def test_helper_cls_matches_pyhf_asymptotics(topic_setup, topic_limit_loss):
    """The same Poisson likelihood through hepstats and pyhf gives the same asymptotic CLs.

    Tolerance: both evaluate the same asymptotic formulae, but pyhf profiles with SLSQP and
    hepstats with Minuit. The CLs values differed by up to 0.004.
    """
    _, signal, background, _ = topic_setup
    _, loss, observed = topic_limit_loss
    limit = upper_limit(loss, LIMIT_SCAN)
    model = build_model(tamm_spec(signal, background, observed))
    data = observed.tolist() + model.config.auxdata
    for index in (2, 4):
        test = hypotest_kappa(model, data, float(LIMIT_SCAN[index]))
        assert limit.pvalues["cls"][index] == pytest.approx(test.cls_observed, abs=0.01)
        assert limit.pvalues["expected"][index] == pytest.approx(test.cls_expected[2], abs=0.01)


def test_non_extended_loss_rejected(topic_setup, single_signal_loss):
    region, signal, background, _ = topic_setup
    observed = single_signal_loss[2]
    pdf = TopicMixturePDF(region, signal.mean(axis=0), background, name="NonExtended")
    loss = zfit.loss.BinnedNLL(pdf, binned_data(region, observed))
    calculator = AsymptoticCalculator(loss, _minuit())
    (asimov,) = calculator.asimov_dataset(POI(pdf.kappa, 0.0))
    # hepstats scales the Asimov histogram by data.n_events, which for binned data is the number
    # of bins.
    assert float(np.sum(asimov.values())) == pytest.approx(region.n_bins)
    assert float(np.sum(asimov.values())) != pytest.approx(observed.sum(), rel=0.1)

    with pytest.raises(
        InvalidModelError, match="hepstats needs an extended loss, but received BinnedNLL"
    ):
        upper_limit(loss, np.linspace(0, 0.1, 5))
    with pytest.raises(InvalidModelError, match="non-extended models"):
        discovery(loss)


def test_extended_asimov_total_is_yield(single_signal_loss):
    pdf, loss, observed = single_signal_loss
    result = _minuit().minimize(loss)
    calculator = AsymptoticCalculator(result, _minuit())
    (asimov,) = calculator.asimov_dataset(POI(pdf.kappa, 0.0))
    assert float(np.sum(asimov.values())) == pytest.approx(observed.sum(), rel=1e-3)


def test_frequentist_without_nuisance_is_rejected(topic_setup):
    region, signal, background, observed = topic_setup
    pdf = TopicMixturePDF(
        region, signal[0], background[0], extended=float(observed.sum()), name="NoNuisance"
    )
    loss = zfit.loss.ExtendedBinnedNLL(pdf, binned_data(region, observed))
    assert [p.name for p in loss.get_params(floating=True)] == [pdf.kappa.name]

    result = _minuit().minimize(loss)
    raw = FrequentistCalculator(result, _minuit(), ntoysnull=1, ntoysalt=1)
    with pytest.raises(RuntimeError, match="No parameter for minimization"):
        raw.get_toys_null(POIarray(pdf.kappa, [0.1]), POIarray(pdf.kappa, [0.1]))

    with pytest.raises(InvalidModelError, match="at least one floating parameter besides the POI"):
        upper_limit(loss, [0.1, 0.2], calculator="frequentist")


def test_poisson_toys_draw_new_count_per_toy(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    toys = PoissonToys(seed=3)
    (sampler,) = toys.sampler([pdf], [len(small.data)])
    expected = float(pdf.get_yield().value())
    # hepstats fits toys between two draws, which moves the parameters away from the values
    # the sampler was created with; the count must still follow the creation-time yield.
    pdf.params["c_s"].set_value(3.0)
    zfit.settings.set_seed(9)

    # Both generators resample the sampler in place before each yield.
    counts = [
        int(sampler.num_entries) for _ in toys.sample([sampler], 6, parameter=pdf.kappa, value=0.1)
    ]
    default_counts = [
        int(sampler.num_entries) for _ in base_sample([sampler], 6, parameter=pdf.kappa, value=0.1)
    ]

    assert len(set(default_counts)) == 1
    assert len(set(counts)) > 1
    # Every count within 5 Poisson standard deviations of the yield.
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in counts)


def test_frequentist_helper_uses_poisson_toys(single_signal_loss, monkeypatch):
    _, loss, _ = single_signal_loss
    drawn = []
    draw = PoissonToys._draw_count

    def recording_draw(self, model, sampler_values, overrides):
        count = draw(self, model, sampler_values, overrides)
        drawn.append(count)
        return count

    monkeypatch.setattr(PoissonToys, "_draw_count", recording_draw)
    zfit.settings.set_seed(11)
    result = discovery(loss, calculator="frequentist", n_toys=3, seed=2)
    assert result.calculator == "frequentist"
    # Every toy draws its own count.
    assert len(drawn) >= 3
    assert len(set(drawn)) > 1


def test_poisson_toys_reject_foreign_sampler(small):
    pdf = TammPDF(small.region, small.log_ratio_fn, small.reference, n_data=len(small.data))
    sampler = pdf.create_sampler(n=10)
    with pytest.raises(InvalidModelError, match="did not create"):
        next(PoissonToys(seed=1).sample([sampler], 1))


def test_unbinned_upper_limit_and_discovery(small):
    """The asymptotic limit on the unbinned TAMM PDF, with the mixture weights fixed.

    Fixed weights keep the profile in kappa monotonic for this small K = 3 sample; c_s and c_b
    stay floating.
    """
    signal_poor = small.data[:2000]
    pdf = TammPDF(
        small.region, small.log_ratio_fn, small.reference, n_data=len(signal_poor), fix_weights=True
    )
    loss = tamm_nll(pdf, signal_poor, penalty=small.penalty)
    limit = upper_limit(loss, np.linspace(0.0, 0.4, 11), asimov_bins=[[10, 10]])
    assert limit.calculator == "asymptotic"
    assert 0.0 < limit.expected < 0.4
    assert limit.observed > 0.0
    assert math.isfinite(limit.to_dict()["observed"])

    result = discovery(loss, asimov_bins=[[10, 10]])
    best = _minuit().minimize(loss)
    scan = profile_scan(loss, [0.0])
    # The asymptotic discovery significance is Z = sqrt(q0) when kappa_hat > 0.
    assert best.params[pdf.kappa]["value"] > 0
    assert result.significance == pytest.approx(math.sqrt(scan.q[0]), rel=1e-3)
    assert result.p_value == pytest.approx(stats.norm.sf(result.significance), rel=1e-6)


@pytest.mark.slow
def test_frequentist_limit_with_poisson_toys(single_signal_loss):
    _, loss, _ = single_signal_loss
    zfit.settings.set_seed(10)
    # The scan starts just above the best fit (kappa_hat ~ 0.010), where the observed CLs is
    # close to 1, and ends beyond the asymptotic limit (~0.09).
    scan = np.array([0.02, 0.06, 0.10, 0.14])
    limit = upper_limit(loss, scan, calculator="frequentist", n_toys_null=15, n_toys_alt=15, seed=4)
    asymptotic = upper_limit(loss, scan)
    assert limit.calculator == "frequentist"
    assert scan[0] < limit.observed < scan[-1]
    # With 15 toys a p-value near 0.05 has a binomial error of about 0.06. That can move the
    # crossing by about one scan step (0.04), so the tolerance is a little larger.
    assert limit.observed == pytest.approx(asymptotic.observed, abs=0.05)


def test_region_space_matches_region(small):
    space = region_space(Region(["u", "v"], [(-1.0, 1.0), (0.0, 3.0)]))
    assert space.obs == ("u", "v")
    np.testing.assert_allclose(np.asarray(space.v1.upper), [1.0, 3.0])
