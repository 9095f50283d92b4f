"""Tests of tamm.topics: the variational topic model of simulation histograms."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special
from scipy.optimize import linear_sum_assignment

from tamm.exceptions import (
    ConvergenceWarning,
    InvalidModelError,
    InvalidRegionError,
    InvalidSimulationError,
)
from tamm.metrics import hellinger
from tamm.samples import Region, Simulation, SimulationSet
from tamm.topics import TopicFit, TopicModel, learn_topics
from tamm.topics.vb import _elbo

N_DOCUMENTS = 60
N_BINS = 50
N_TOPICS = 4
COUNTS_PER_DOCUMENT = 20_000


@pytest.fixture(scope="module")
def mixture_data():
    """Documents drawn from random convex mixtures of 4 known smooth topics.

    The Dirichlet(0.3) mixing gives every topic documents with weights near 0.8 to 0.99, which
    pins the topics down (without such documents, other topic sets fit equally well).

    Returns ``(counts (60, 50), true topics (4, 50), true document shapes (60, 50))``.
    """
    rng = np.random.default_rng(20260402)
    x = (np.arange(N_BINS) + 0.5) / N_BINS
    means = np.array([0.15, 0.4, 0.6, 0.85])
    widths = np.array([0.08, 0.07, 0.09, 0.08])
    topics = np.exp(-0.5 * ((x[np.newaxis] - means[:, np.newaxis]) / widths[:, np.newaxis]) ** 2)
    topics /= topics.sum(axis=1, keepdims=True)

    mixing = rng.dirichlet(np.full(N_TOPICS, 0.3), size=N_DOCUMENTS)
    shapes = mixing @ topics
    shapes /= shapes.sum(axis=1, keepdims=True)
    counts = np.stack([rng.multinomial(COUNTS_PER_DOCUMENT, p) for p in shapes])
    return counts.astype(np.float64), topics, shapes


@pytest.fixture(scope="module")
def mixture_fit(mixture_data):
    counts, _, _ = mixture_data
    return TopicModel(N_TOPICS, seed=11).fit(counts)


def test_fit_reconstruction_matches_sklearn(mixture_data, mixture_fit):
    from sklearn.decomposition import LatentDirichletAllocation

    counts, _, shapes = mixture_data
    reference = LatentDirichletAllocation(
        n_components=N_TOPICS,
        doc_topic_prior=mixture_fit.doc_topic_prior,
        topic_word_prior=mixture_fit.topic_word_prior,
        learning_method="batch",
        max_iter=100,
        random_state=0,
    ).fit(counts)
    reference_topics = reference.components_ / reference.components_.sum(axis=1, keepdims=True)
    reference_reconstruction = reference.transform(counts) @ reference_topics

    tamm_distance = np.mean(hellinger(counts, mixture_fit.reconstruct()))
    sklearn_distance = np.mean(hellinger(counts, reference_reconstruction))
    # Sampling noise alone puts each document about sqrt((V - 1) / (8 N)) = 0.0175 in Hellinger
    # distance from its true shape. Two fits whose mean distances differ by under 2 % of that
    # describe the documents equally well; both fits land about 0.017 from the documents.
    noise = np.mean(hellinger(counts, shapes))
    assert tamm_distance <= sklearn_distance + 0.02 * noise


def test_fit_recovers_known_topics(mixture_data, mixture_fit):
    _, true_topics, _ = mixture_data
    distances = hellinger(true_topics[:, np.newaxis], mixture_fit.topics[np.newaxis])  # (K, K)
    rows, columns = linear_sum_assignment(distances)
    # Even a fit started at the true topics ends up to 0.045 away from them, because late
    # iterations fit the sampling noise. A swapped or merged topic would be at least 0.7 away.
    assert np.max(distances[rows, columns]) < 0.08


def test_fit_reconstructs_true_shapes(mixture_data, mixture_fit):
    counts, _, shapes = mixture_data
    # The fit averages the noise of many documents, so it is closer to the true shapes than
    # the documents themselves.
    assert np.mean(hellinger(shapes, mixture_fit.reconstruct())) < 0.5 * np.mean(
        hellinger(counts, shapes)
    )


def test_warm_start_stays_at_optimum(mixture_data, mixture_fit):
    counts, _, _ = mixture_data
    # Started at the converged topics of the same counts, the run ends where it started, up to
    # the convergence tolerance (relative ELBO gain 1e-7 per iteration).
    again = TopicModel(N_TOPICS, seed=11).fit(counts, initial_topics=mixture_fit.topics)
    assert again.converged
    assert np.max(hellinger(again.topics, mixture_fit.topics)) < 0.01
    assert again.elbo == pytest.approx(mixture_fit.elbo, rel=1e-6)


def test_warm_start_follows_topics_order(mixture_data, mixture_fit):
    counts, _, _ = mixture_data
    # Without one document the optimum moves a little; a warm start keeps the topic order,
    # so each topic stays close to its own start.
    reduced = TopicModel(N_TOPICS, seed=11).fit(counts[1:], initial_topics=mixture_fit.topics)
    distances = hellinger(reduced.topics, mixture_fit.topics)
    assert np.max(distances) < 0.05


def test_warm_start_rejects_bad_topics(mixture_data):
    counts, _, _ = mixture_data
    model = TopicModel(N_TOPICS, seed=11)
    with pytest.raises(InvalidModelError, match=r"initial_topics must be .* shape \(4, 50\)"):
        model.fit(counts, initial_topics=np.ones((3, N_BINS)))
    with pytest.raises(InvalidModelError, match=r"a topic without weight"):
        model.fit(counts, initial_topics=np.zeros((N_TOPICS, N_BINS)))


def test_fit_results_are_distributions(mixture_fit):
    assert mixture_fit.topics.shape == (N_TOPICS, N_BINS)
    assert mixture_fit.document_weights.shape == (N_DOCUMENTS, N_TOPICS)
    assert np.all(mixture_fit.topics >= 0)
    assert np.all(mixture_fit.document_weights >= 0)
    np.testing.assert_allclose(mixture_fit.topics.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mixture_fit.document_weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    mixture_fit.validate()


def test_fit_records_options_and_convergence(mixture_fit):
    assert mixture_fit.converged
    assert 0 < mixture_fit.n_iter < 5000
    assert mixture_fit.doc_topic_prior == 1.0
    assert mixture_fit.topic_word_prior == 1.0
    assert mixture_fit.seed == 11
    assert (mixture_fit.n_topics, mixture_fit.n_bins, mixture_fit.n_documents) == (4, 50, 60)


def test_fit_elbo_trace_non_decreasing(mixture_fit):
    trace = mixture_fit.elbo_trace
    assert len(trace) == math.ceil(mixture_fit.n_iter / 10) + 1
    assert trace[-1] == mixture_fit.elbo
    # Coordinate ascent never lowers the bound; allow rounding at 1e-12 of its size.
    assert np.all(np.diff(trace) >= -1e-12 * abs(mixture_fit.elbo))
    assert trace[-1] > trace[0]


def test_fit_arrays_are_read_only(mixture_fit):
    with pytest.raises(ValueError, match="read-only"):
        mixture_fit.topics[0, 0] = 0.5


def test_elbo_matches_explicit_bound():
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 30, size=(5, 6)).astype(np.float64)
    gamma = rng.uniform(0.5, 20.0, size=(5, 3))
    lam = rng.uniform(0.5, 20.0, size=(3, 6))
    alpha, eta = 0.7, 1.3

    # Uncollapsed mean-field bound with explicit responsibilities phi of shape (D, V, K).
    log_theta = special.digamma(gamma) - special.digamma(gamma.sum(axis=1, keepdims=True))
    log_topic = special.digamma(lam) - special.digamma(lam.sum(axis=1, keepdims=True))
    log_joint = log_theta[:, np.newaxis, :] + log_topic.T[np.newaxis, :, :]
    phi = np.exp(log_joint - special.logsumexp(log_joint, axis=2, keepdims=True))
    assignments = np.sum(counts[..., np.newaxis] * phi * (log_joint - np.log(phi)))

    def dirichlet_terms(concentration, prior, expected_log):
        n = concentration.shape[1]
        log_prior = special.gammaln(n * prior) - n * special.gammaln(prior)
        log_prior = log_prior + np.sum((prior - 1) * expected_log, axis=1)
        entropy = -(
            special.gammaln(concentration.sum(axis=1))
            - special.gammaln(concentration).sum(axis=1)
            + np.sum((concentration - 1) * expected_log, axis=1)
        )
        return np.sum(log_prior + entropy)

    expected = (
        assignments
        + dirichlet_terms(gamma, alpha, log_theta)
        + dirichlet_terms(lam, eta, log_topic)
    )
    assert _elbo(counts, gamma, lam, alpha, eta) == pytest.approx(expected, rel=1e-12)


def test_same_seed_gives_identical_fit(mixture_data):
    counts, _, _ = mixture_data
    model = TopicModel(N_TOPICS, n_restarts=2, seed=5)
    first = model.fit(counts)
    second = TopicModel(N_TOPICS, n_restarts=2, seed=5).fit(counts)
    assert np.array_equal(first.topics, second.topics)
    assert np.array_equal(first.document_weights, second.document_weights)
    assert np.array_equal(first.elbo_trace, second.elbo_trace)
    assert first.elbo == second.elbo
    assert first.n_iter == second.n_iter


@pytest.mark.filterwarnings("ignore::tamm.exceptions.ConvergenceWarning")
def test_different_seed_starts_elsewhere(mixture_data):
    counts, _, _ = mixture_data
    first = TopicModel(N_TOPICS, n_restarts=1, max_iter=10, seed=5).fit(counts)
    second = TopicModel(N_TOPICS, n_restarts=1, max_iter=10, seed=6).fit(counts)
    assert first.elbo_trace[0] != second.elbo_trace[0]


@pytest.mark.filterwarnings("ignore::tamm.exceptions.ConvergenceWarning")
def test_seed_none_records_reproducible_entropy(mixture_data):
    counts, _, _ = mixture_data
    first = TopicModel(N_TOPICS, n_restarts=1, max_iter=20, seed=None).fit(counts)
    assert isinstance(first.seed, int)
    repeat = TopicModel(N_TOPICS, n_restarts=1, max_iter=20, seed=first.seed).fit(counts)
    assert np.array_equal(first.topics, repeat.topics)


def test_unconverged_fit_warns(mixture_data):
    counts, _, _ = mixture_data
    with pytest.warns(ConvergenceWarning, match=r"did not converge.*max_iter=3") as record:
        fit = TopicModel(N_TOPICS, max_iter=3, n_restarts=2).fit(counts)
    assert not fit.converged
    assert fit.n_iter == 3
    assert len(fit.elbo_trace) == 2
    # stacklevel points at the caller of fit.
    assert record[0].filename == __file__


def test_fit_logs_each_restart(mixture_data, caplog):
    counts, _, _ = mixture_data
    with caplog.at_level(logging.INFO, logger="tamm.topics.vb"):
        TopicModel(N_TOPICS, n_restarts=2, seed=1).fit(counts)
    messages = [record.getMessage() for record in caplog.records]
    assert any("restart 1/2" in message for message in messages)
    assert any("restart 2/2" in message for message in messages)


def test_fit_allows_empty_bin(mixture_data):
    counts, _, _ = mixture_data
    with_empty_bin = counts.copy()
    with_empty_bin[:, 7] = 0.0
    fit = TopicModel(N_TOPICS, n_restarts=1, seed=2).fit(with_empty_bin)
    fit.validate()
    # The only mass left in an empty bin is the prior's pseudo-count, eta / sum(lambda_k).
    assert np.all(fit.topics[:, 7] < 1e-5)


@pytest.mark.filterwarnings("ignore::tamm.exceptions.ConvergenceWarning")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fit_topics_valid_for_random_counts(data):
    n_documents = data.draw(st.integers(1, 6), label="n_documents")
    n_bins = data.draw(st.integers(1, 6), label="n_bins")
    n_topics = data.draw(st.integers(1, n_documents), label="n_topics")
    counts = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 1000), min_size=n_bins, max_size=n_bins).filter(any),
                min_size=n_documents,
                max_size=n_documents,
            ),
            label="counts",
        ),
        dtype=np.float64,
    )
    fit = TopicModel(n_topics, n_restarts=1, max_iter=100).fit(counts)
    assert fit.topics.shape == (n_topics, n_bins)
    assert np.all(np.isfinite(fit.topics))
    assert np.all(fit.topics >= 0)
    np.testing.assert_allclose(fit.topics.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(np.isfinite(fit.document_weights))
    assert math.isfinite(fit.elbo)
    fit.validate()


def _counts_with(index, value):
    counts = np.ones((6, 5))
    counts[index] = value
    return counts


@pytest.mark.parametrize(
    ("counts", "pattern"),
    [
        (_counts_with((2, 3), -3.0), r"counts\[2, 3\] is -3\.0, a negative count"),
        (_counts_with((1, 0), np.nan), r"counts\[1, 0\] is nan"),
        (_counts_with((4, 4), np.inf), r"counts\[4, 4\] is inf"),
        (_counts_with((3, slice(None)), 0.0), r"Document 3 \(row 3 of counts\) has no counts"),
        (np.ones(5), r"2-D array .* received an array of shape \(5,\)"),
        (np.ones((2, 3, 4)), r"received an array of shape \(2, 3, 4\)"),
        (np.ones((3, 5)), r"counts has 3 documents, fewer than the 4 topics"),
        (np.ones((6, 0)), r"counts has no bins \(shape \(6, 0\)\)"),
        ([["a", "b"]], r"counts must be a numeric array"),
    ],
)
def test_fit_rejects_invalid_counts(counts, pattern):
    with pytest.raises(InvalidModelError, match=pattern):
        TopicModel(4).fit(counts)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"n_topics": 0}, r"n_topics must be between 1 and .*; received 0"),
        ({"n_topics": 2.5}, r"n_topics must be an integer; received 2\.5"),
        ({"n_topics": True}, r"n_topics must be an integer; received True"),
        ({"doc_topic_prior": 0.0}, r"doc_topic_prior must be finite and > 0; received 0\.0"),
        ({"topic_word_prior": -1.0}, r"topic_word_prior must be finite and > 0; received -1\.0"),
        ({"topic_word_prior": math.nan}, r"topic_word_prior must be finite and > 0; received nan"),
        (
            {"doc_topic_prior": "1"},
            r"doc_topic_prior must be a positive number or None; received '1'",
        ),
        ({"max_iter": 0}, r"max_iter must be between 1 and .*; received 0"),
        ({"tol": -1e-3}, r"tol must be a real number >= 0; received -0\.001"),
        ({"tol": math.inf}, r"tol must be finite; received inf"),
        ({"n_restarts": 0}, r"n_restarts must be between 1 and .*; received 0"),
        ({"seed": -1}, r"seed must be an integer >= 0 or None; received -1"),
        ({"seed": 1.5}, r"seed must be an integer >= 0 or None; received 1\.5"),
    ],
)
def test_model_rejects_invalid_options(options, pattern):
    arguments = {"n_topics": 2, **options}
    with pytest.raises(InvalidModelError, match=pattern):
        TopicModel(**arguments)


def test_model_default_priors_are_one():
    model = TopicModel(3)
    assert model.doc_topic_prior == 1.0
    assert model.topic_word_prior == 1.0


def test_fit_round_trips_through_json(mixture_fit):
    restored = TopicFit.from_dict(json.loads(json.dumps(mixture_fit.to_dict())))
    assert np.array_equal(restored.topics, mixture_fit.topics)
    assert np.array_equal(restored.document_weights, mixture_fit.document_weights)
    assert np.array_equal(restored.elbo_trace, mixture_fit.elbo_trace)
    for name in ("elbo", "converged", "n_iter", "doc_topic_prior", "topic_word_prior", "seed"):
        assert getattr(restored, name) == getattr(mixture_fit, name), name


def test_from_dict_rejects_missing_key(mixture_fit):
    data = mixture_fit.to_dict()
    del data["elbo_trace"]
    with pytest.raises(InvalidModelError, match=r"missing \['elbo_trace'\]"):
        TopicFit.from_dict(data)


def test_from_dict_rejects_doctored_topic(mixture_fit):
    data = mixture_fit.to_dict()
    data["topics"][1][0] += 0.01
    with pytest.raises(InvalidModelError, match=r"Topic 1 sums to"):
        TopicFit.from_dict(data)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.nan, r"Topic 2 has the non-finite entry nan at bin 5"),
        (-0.01, r"Topic 2 has the negative entry -0\.01 at bin 5"),
    ],
)
def test_validate_rejects_invalid_topic_entry(mixture_fit, value, pattern):
    doctored = mixture_fit.topics.copy()
    doctored[2, 5] = value
    with pytest.raises(InvalidModelError, match=pattern):
        dataclasses.replace(mixture_fit, topics=doctored).validate()


def test_validate_rejects_unnormalised_topic(mixture_fit):
    doctored = mixture_fit.topics.copy()
    doctored[3] *= 1.001
    with pytest.raises(InvalidModelError, match=r"Topic 3 sums to 1\.00"):
        dataclasses.replace(mixture_fit, topics=doctored).validate()
    # A looser tolerance accepts the same topics.
    dataclasses.replace(mixture_fit, topics=doctored).validate(atol=1e-2)


def test_validate_rejects_unnormalised_document_weights(mixture_fit):
    doctored = mixture_fit.document_weights.copy()
    doctored[7] *= 0.5
    with pytest.raises(InvalidModelError, match=r"Document 7 sums to 0\.5"):
        dataclasses.replace(mixture_fit, document_weights=doctored).validate()


def test_fit_rejects_mismatched_shapes(mixture_fit):
    with pytest.raises(InvalidModelError, match=r"document_weights has shape \(60, 3\)"):
        dataclasses.replace(mixture_fit, document_weights=np.full((60, 3), 1 / 3))


def _gaussian_simulations(n_simulations, *, seed=0, n_events=4000):
    """Simulations that mix two 2-D Gaussian components in random proportions."""
    rng = np.random.default_rng(seed)
    simulations = []
    for index in range(n_simulations):
        n_first = rng.binomial(n_events, rng.uniform())
        first = rng.normal((-1.0, -1.0), 0.7, size=(n_first, 2))
        second = rng.normal((1.0, 0.5), 0.9, size=(n_events - n_first, 2))
        events = np.concatenate([first, second])
        simulations.append(Simulation(events, name=f"msd-{index}"))
    return SimulationSet(simulations, process="signal")


@pytest.fixture(scope="module")
def binned_region():
    return Region(["x1", "x2"], {"x1": (-3, 3), "x2": (-3, 3)}, bins=5)


def test_learn_topics_from_gaussian_simulations(binned_region):
    simulations = _gaussian_simulations(8)
    fit = learn_topics(simulations, binned_region, 2, seed=4, n_restarts=2)
    assert (fit.n_documents, fit.n_topics, fit.n_bins) == (8, 2, 25)
    assert fit.seed == 4
    fit.validate()

    histograms = simulations.histograms(binned_region)
    direct = TopicModel(2, seed=4, n_restarts=2).fit(histograms)
    assert np.array_equal(fit.topics, direct.topics)
    # Two topics describe every mixture of the two components. With about 4000 events in 25
    # bins, sampling noise alone gives Hellinger distances near sqrt(24 / 32000) = 0.027.
    assert np.max(hellinger(histograms, fit.reconstruct())) < 0.05


def test_learn_topics_rejects_fewer_simulations_than_topics(binned_region):
    simulations = _gaussian_simulations(3)
    with pytest.raises(InvalidSimulationError, match=r"holds 3 simulations, but learning 4 topics"):
        learn_topics(simulations, binned_region, 4)


def test_learn_topics_rejects_simulation_outside_region(binned_region):
    simulations = list(_gaussian_simulations(3))
    simulations.append(Simulation(np.full((10, 2), 5.0), name="far-away"))
    with pytest.raises(
        InvalidSimulationError, match=r"'far-away' \(index 3\) of 'signal' has no events"
    ):
        learn_topics(SimulationSet(simulations, process="signal"), binned_region, 2)


def test_learn_topics_rejects_unbinned_region():
    region = Region(["x1", "x2"], {"x1": (-3, 3), "x2": (-3, 3)})
    with pytest.raises(InvalidRegionError, match="no binning"):
        learn_topics(_gaussian_simulations(3), region, 2)


def test_learn_topics_rejects_invalid_option(binned_region):
    with pytest.raises(InvalidModelError, match=r"n_restarts must be between 1"):
        learn_topics(_gaussian_simulations(3), binned_region, 2, n_restarts=0)
