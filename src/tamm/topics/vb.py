r"""Topic model of simulation histograms: latent Dirichlet allocation fitted by variational Bayes.

Where this sits in the pipeline: the binned engine histograms every biased simulation of a
process in the fiducial region (:mod:`tamm.samples`). This module learns ``K`` topics from
those histograms, one set per process. The unmixing stage then describes the observed
histogram as :math:`\kappa\,\phi_s + (1 - \kappa)\,\phi_b`, where each :math:`\phi` is a convex
mixture of the topics of its process.

In the language of topic models, each simulation is a document and each bin a word, so the
input is a count matrix of shape ``(n_documents, n_bins)``.

Which name to use:

* :func:`learn_topics` learns topics from a :class:`~tamm.samples.SimulationSet` and a binned
  :class:`~tamm.samples.Region`.
* :class:`TopicModel` stores the options and fits any count matrix.
* :class:`TopicFit` is the result: topics, document weights, the evidence lower bound (ELBO)
  and convergence information. It converts to and from JSON-friendly dictionaries.

TensorFlow and TensorFlow Probability are imported on the first fit, so importing this module
and loading a saved :class:`TopicFit` stay cheap.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import (
    ConvergenceWarning,
    InvalidModelError,
    InvalidSimulationError,
    TammError,
)
from tamm.samples import Region, SimulationSet

__all__ = ["TopicFit", "TopicModel", "learn_topics"]


def __dir__() -> list[str]:
    return __all__


log = logging.getLogger(__name__)

_DEFAULT_PRIOR = 1.0
# Iterations between two ELBO evaluations, which are also the convergence checks.
_CHECK_EVERY = 10
# Relative half-width of the multiplicative noise on the initial topics, and the floor added to
# every bin (in units of 1 / n_bins) so that no topic starts with a zero bin.
_INIT_NOISE = 0.5
_MAX_INT32 = 2**31 - 1
# Guards the relative ELBO gain against division by zero (an ELBO of exactly 0 occurs for a
# single topic over a single bin).
_TINY_FLOAT = float(np.finfo(np.float64).tiny)


@dataclass(frozen=True, eq=False)
class TopicFit:
    """Result of a topic-model fit: posterior-mean topics and document weights.

    Attributes:
        topics: Posterior-mean topics :math:`E[W_k]`, shape ``(n_topics, n_bins)``; each row
            sums to 1.
        document_weights: Posterior-mean topic proportions :math:`E[\\theta_d]` of each
            document, shape ``(n_documents, n_topics)``; each row sums to 1.
        elbo: Evidence lower bound of the best restart at the end of its fit, in nats. It omits
            the multinomial coefficients of the counts, which do not depend on the model.
        elbo_trace: ELBO of the best restart at its starting point and then after every
            convergence check (every 10 iterations, the last one possibly after fewer), shape
            ``(n_checks + 1,)``.
        converged: Whether the best restart met the convergence tolerance before ``max_iter``.
        n_iter: Number of variational iterations of the best restart.
        doc_topic_prior: Concentration :math:`\\alpha` of the symmetric Dirichlet prior on each
            document's topic proportions.
        topic_word_prior: Concentration :math:`\\eta` of the symmetric Dirichlet prior on each
            topic.
        seed: Seed of the fit. When the model was given ``seed=None``, this is the entropy that
            NumPy drew, so passing it as ``seed`` repeats the fit.

    Arrays are stored as read-only float64 copies.
    """

    topics: NDArray[np.float64]
    document_weights: NDArray[np.float64]
    elbo: float
    elbo_trace: NDArray[np.float64]
    converged: bool
    n_iter: int
    doc_topic_prior: float
    topic_word_prior: float
    seed: int | None

    def __post_init__(self) -> None:
        topics = _read_only_array(self.topics, ndim=2, name="topics")
        weights = _read_only_array(self.document_weights, ndim=2, name="document_weights")
        trace = _read_only_array(self.elbo_trace, ndim=1, name="elbo_trace")
        if weights.shape[1] != topics.shape[0]:
            msg = (
                f"document_weights has shape {weights.shape}, so {weights.shape[1]} topics per "
                f"document, but topics has shape {topics.shape} with {topics.shape[0]} topics; "
                "both must describe the same topics."
            )
            raise InvalidModelError(msg)

        object.__setattr__(self, "topics", topics)
        object.__setattr__(self, "document_weights", weights)
        object.__setattr__(self, "elbo_trace", trace)
        object.__setattr__(self, "elbo", float(self.elbo))
        object.__setattr__(self, "converged", bool(self.converged))
        object.__setattr__(self, "n_iter", int(self.n_iter))
        object.__setattr__(self, "doc_topic_prior", float(self.doc_topic_prior))
        object.__setattr__(self, "topic_word_prior", float(self.topic_word_prior))
        object.__setattr__(self, "seed", None if self.seed is None else int(self.seed))

    @property
    def n_topics(self) -> int:
        """Number of topics ``K``."""
        return int(self.topics.shape[0])

    @property
    def n_bins(self) -> int:
        """Number of bins ``V`` of each topic."""
        return int(self.topics.shape[1])

    @property
    def n_documents(self) -> int:
        """Number of documents ``D`` the topics were learned from."""
        return int(self.document_weights.shape[0])

    def reconstruct(self) -> NDArray[np.float64]:
        """Return each document's fitted shape, ``document_weights @ topics``.

        Returns:
            Array of shape ``(n_documents, n_bins)`` whose rows sum to 1. Multiply a row by the
            document's total count to compare it with the document's histogram.
        """
        return self.document_weights @ self.topics

    def validate(self, *, atol: float = 1e-9) -> None:
        """Raise InvalidModelError unless every topic and document weight row is a distribution.

        A valid row has no NaN or infinite entry, no negative entry, and sums to 1 within
        ``atol``.

        Args:
            atol: Absolute tolerance on each row sum.

        Raises:
            InvalidModelError: Naming the first topic (or document) that fails and how.
        """
        _validate_rows(self.topics, atol=atol, row_name="Topic", column_name="bin")
        _validate_rows(self.document_weights, atol=atol, row_name="Document", column_name="topic")

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as a JSON-friendly dictionary of lists, floats, ints and bools.

        Floats are stored as Python floats, which JSON writes with enough digits to read them
        back exactly, so ``TopicFit.from_dict(json.loads(json.dumps(fit.to_dict())))`` equals
        ``fit`` bit for bit.
        """
        return {
            "topics": self.topics.tolist(),
            "document_weights": self.document_weights.tolist(),
            "elbo": self.elbo,
            "elbo_trace": self.elbo_trace.tolist(),
            "converged": self.converged,
            "n_iter": self.n_iter,
            "doc_topic_prior": self.doc_topic_prior,
            "topic_word_prior": self.topic_word_prior,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopicFit:
        """Rebuild a fit written by :meth:`to_dict` and validate it.

        Raises:
            InvalidModelError: If a key is missing or unknown, an array has the wrong shape, or
                a topic or document weight row is not a distribution (see :meth:`validate`).
        """
        expected = set(_FIELD_NAMES)
        missing = sorted(expected - set(data))
        unknown = sorted(set(data) - expected)
        if missing or unknown:
            msg = (
                f"A TopicFit dictionary needs exactly the keys {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}."
            )
            raise InvalidModelError(msg)

        fit = cls(**{name: data[name] for name in _FIELD_NAMES})
        fit.validate()
        return fit


_FIELD_NAMES = (
    "topics",
    "document_weights",
    "elbo",
    "elbo_trace",
    "converged",
    "n_iter",
    "doc_topic_prior",
    "topic_word_prior",
    "seed",
)


def _read_only_array(values: ArrayLike, *, ndim: int, name: str) -> NDArray[np.float64]:
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"TopicFit.{name} must be a numeric array; conversion failed: {err}"
        raise InvalidModelError(msg) from err
    if array.ndim != ndim:
        msg = f"TopicFit.{name} must be a {ndim}-D array; received shape {array.shape}."
        raise InvalidModelError(msg)
    array.setflags(write=False)
    return array


def _validate_rows(
    rows: NDArray[np.float64], *, atol: float, row_name: str, column_name: str
) -> None:
    """Raise InvalidModelError naming the first row that is not a probability distribution."""
    for index, row in enumerate(rows):
        not_finite = ~np.isfinite(row)
        if np.any(not_finite):
            column = int(np.flatnonzero(not_finite)[0])
            msg = (
                f"{row_name} {index} has the non-finite entry {row[column]} at {column_name} "
                f"{column}; entries must be finite probabilities."
            )
            raise InvalidModelError(msg)
        if np.any(row < 0):
            column = int(np.flatnonzero(row < 0)[0])
            msg = (
                f"{row_name} {index} has the negative entry {row[column]} at {column_name} "
                f"{column}; entries must be probabilities >= 0."
            )
            raise InvalidModelError(msg)
        total = math.fsum(row.tolist())
        if abs(total - 1.0) > atol:
            msg = (
                f"{row_name} {index} sums to {total!r}, not 1 within atol={atol}; normalise it "
                "or refit the topic model."
            )
            raise InvalidModelError(msg)


class TopicModel:
    r"""Latent Dirichlet allocation over a count matrix, fitted by batch variational Bayes.

    Each document ``d`` (a simulation histogram) has topic proportions
    :math:`\theta_d \sim \mathrm{Dirichlet}(\alpha \mathbf{1}_K)`, each topic is a distribution
    over bins :math:`W_k \sim \mathrm{Dirichlet}(\eta \mathbf{1}_V)`, and the counts
    :math:`n_{dv}` have the log-likelihood
    :math:`\sum_{dv} n_{dv} \log \sum_k \theta_{dk} W_{kv}` (topic assignments marginalised).

    Args:
        n_topics: Number of topics ``K``, at least 1.
        doc_topic_prior: Concentration :math:`\alpha` of the symmetric Dirichlet prior on each
            document's topic proportions, > 0. ``None`` selects 1 (see Notes).
        topic_word_prior: Concentration :math:`\eta` of the symmetric Dirichlet prior on each
            topic, > 0. ``None`` selects 1 (see Notes).
        max_iter: Maximum number of variational iterations per restart.
        tol: Convergence tolerance on the relative ELBO gain per iteration. Every 10 iterations
            the fit computes :math:`(L_t - L_{t-10}) / (10 |L_t|)` and stops once it is below
            ``tol``.
        n_restarts: Number of independent initialisations. The fit keeps the one with the
            highest final ELBO.
        seed: Seed of the initialisations; each restart gets its own stream derived from it
            with :class:`numpy.random.SeedSequence`. ``None`` draws fresh entropy, which
            :attr:`TopicFit.seed` records. The same seed repeats a fit exactly with the same
            TensorFlow build and machine. TensorFlow warns that its oneDNN kernels can change
            the last digits between builds and thread counts.

    Raises:
        InvalidModelError: If an option is out of range or of the wrong type.

    Mathematical details:
        The variational family is fully factorised:
        :math:`q(\theta_d) = \mathrm{Dirichlet}(\gamma_d)` with ``gamma`` of shape ``(D, K)``,
        :math:`q(W_k) = \mathrm{Dirichlet}(\lambda_k)` with ``lambda`` of shape ``(K, V)``,
        and one categorical factor per count over the topics. With
        :math:`E[\log\theta_{dk}] = \psi(\gamma_{dk}) - \psi(\sum_j \gamma_{dj})` and
        :math:`E[\log W_{kv}] = \psi(\lambda_{kv}) - \psi(\sum_u \lambda_{ku})`, the optimal
        categorical factors are :math:`\exp(E[\log\theta_{dk}] + E[\log W_{kv}]) / s_{dv}` with
        the normaliser :math:`s_{dv} = \sum_k \exp(E[\log\theta_{dk}]) \exp(E[\log W_{kv}])`.
        One iteration sets them from the current ``gamma`` and ``lambda`` and then updates
        both from them:

        .. math::

            \gamma_{dk} &\leftarrow \alpha + e^{E[\log\theta_{dk}]}
                \sum_v \frac{n_{dv}}{s_{dv}} e^{E[\log W_{kv}]}, \\
            \lambda_{kv} &\leftarrow \eta + e^{E[\log W_{kv}]}
                \sum_d \frac{n_{dv}}{s_{dv}} e^{E[\log\theta_{dk}]}.

        These are two matrix products of ``counts / s``, so the ``(D, V, K)`` responsibilities
        are never stored. Given the categorical factors, the bound separates into a ``gamma``
        part and a ``lambda`` part, so updating both at once is an exact coordinate ascent
        step and the ELBO never decreases. With the categorical factors at their optimum, the
        ELBO is

        .. math::

            L = \sum_{dv} n_{dv} \log s_{dv}
                - \sum_d \mathrm{KL}(\mathrm{Dir}(\gamma_d) \,\|\, \mathrm{Dir}(\alpha \mathbf{1}))
                - \sum_k \mathrm{KL}(\mathrm{Dir}(\lambda_k) \,\|\, \mathrm{Dir}(\eta \mathbf{1})),

        which :class:`TopicFit` reports. These are the batch updates of M. D. Hoffman, D. M.
        Blei and F. Bach, "Online learning for latent Dirichlet allocation", Advances in Neural
        Information Processing Systems 23 (2010), written for a count matrix.

    Notes:
        *Priors.* Both priors default to 1, the flat Dirichlet that the Stan implementation of
        the method used (scikit-learn's default is ``1 / n_topics``). With 1e4 to 1e6 counts
        per document, a prior adds pseudo-counts of order one to totals of order 1e5, so it
        hardly changes the topics at a given optimum. It does change which optimum the fit
        reaches: for :math:`x < 1` the factor :math:`\exp\psi(x)` is much smaller than
        :math:`x`, so priors below 1 switch off weakly used topics early. In the prior
        comparison of ``benchmarks/bench_topics.py`` (20 well separated topics), priors of
        ``1 / K`` left topics stuck in poor optima, and the Hellinger distance from the true
        document shapes to their reconstructions was several times larger than with priors
        of 1.

        *Initialisation.* With this many counts the fit behaves like a non-negative matrix
        factorisation with the Kullback-Leibler loss, which has poor local optima. Each
        restart sets ``lambda`` to ``eta`` plus ``total_counts / K`` times a noisy copy of
        ``K`` normalised documents. The documents are chosen by k-means++ seeding in the
        Hellinger distance: the first at random, each further one with probability
        proportional to its squared distance from the nearest document already chosen, which
        makes it less likely that two topics start on the same component. The copies get
        multiplicative noise of +-50 % and a floor of 0.5 / V per bin, because the
        multiplicative updates cannot revive a bin that starts at zero. ``gamma`` starts flat
        at ``alpha + N_d / K``.

        *Convergence.* The ELBO keeps rising slowly for thousands of iterations while the
        topics drift along nearly flat directions of the likelihood (a matrix factorisation is
        not unique). Those late iterations mostly fit the sampling noise of the documents, so
        ``tol`` stops well before full convergence. The defaults stop each restart of the
        benchmark (500 documents, 20 topics) after 1600 to 1700 iterations.

        The defaults of ``max_iter``, ``tol`` and ``n_restarts`` may change; set them
        explicitly where results must be reproducible across tamm versions.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> shapes = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.1, 0.2, 0.7]])
        >>> mixing = rng.dirichlet([1.0, 1.0], size=12)  # (12, 2)
        >>> counts = np.stack([rng.multinomial(10_000, p) for p in mixing @ shapes])  # (12, 4)
        >>> fit = TopicModel(2, n_restarts=1, seed=3).fit(counts)
        >>> fit.topics.shape, fit.document_weights.shape  # (K, V), (D, K)
        ((2, 4), (12, 2))
        >>> fit.topics.sum(axis=1).round(12).tolist()
        [1.0, 1.0]
        >>> fit.reconstruct().shape  # (D, V)
        (12, 4)
    """

    def __init__(
        self,
        n_topics: int,
        *,
        doc_topic_prior: float | None = None,
        topic_word_prior: float | None = None,
        max_iter: int = 5000,
        tol: float = 1e-9,
        n_restarts: int = 4,
        seed: int | None = 0,
    ) -> None:
        self.n_topics = _check_int(n_topics, name="n_topics", minimum=1)
        self.doc_topic_prior = _check_prior(doc_topic_prior, name="doc_topic_prior")
        self.topic_word_prior = _check_prior(topic_word_prior, name="topic_word_prior")
        self.max_iter = _check_int(max_iter, name="max_iter", minimum=1)
        self.n_restarts = _check_int(n_restarts, name="n_restarts", minimum=1)
        self.tol = _check_tol(tol)
        self.seed = None if seed is None else _check_seed(seed)

    def __repr__(self) -> str:
        return (
            f"TopicModel(n_topics={self.n_topics}, doc_topic_prior={self.doc_topic_prior}, "
            f"topic_word_prior={self.topic_word_prior}, max_iter={self.max_iter}, "
            f"tol={self.tol}, n_restarts={self.n_restarts}, seed={self.seed})"
        )

    def fit(self, counts: ArrayLike, *, initial_topics: ArrayLike | None = None) -> TopicFit:
        """Fit the topic model to a count matrix.

        Args:
            counts: Counts of shape ``(n_documents, n_bins)``: one histogram per row. Entries
                must be finite and >= 0; they need not be integers (weighted histograms are
                fine). Every document needs at least one non-zero bin, while bins that are
                empty in every document are allowed.
            initial_topics: Start from these topics, shape ``(n_topics, n_bins)``, with one
                run instead of ``n_restarts`` random ones. The fit then ends in the optimum
                nearest to them, which is what a leave-one-out refit needs.

        Returns:
            The fit of the restart with the highest ELBO.

        Raises:
            InvalidModelError: If ``counts`` is not a 2-D numeric array, contains a negative,
                NaN or infinite entry, has a document without counts, or has fewer documents
                than topics; or ``initial_topics`` has the wrong shape or a negative or
                non-finite entry.

        Warns:
            ConvergenceWarning: If the best restart reached ``max_iter`` before ``tol``.
        """
        return self._fit(counts, stacklevel=3, initial_topics=initial_topics)

    def _warm_start(
        self, matrix: NDArray[np.float64], initial_topics: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return ``gamma`` and ``lambda`` that start a run at the given topics."""
        topics = np.asarray(initial_topics, dtype=np.float64)
        expected = (self.n_topics, matrix.shape[1])
        if topics.shape != expected or not np.all(np.isfinite(topics)) or np.any(topics < 0):
            msg = (
                f"initial_topics must be finite, non-negative and of shape {expected} "
                f"(n_topics, n_bins); received shape {topics.shape}."
            )
            raise InvalidModelError(msg)
        sums = topics.sum(axis=1, keepdims=True)
        if np.any(sums <= 0):
            msg = "initial_topics has a topic without weight; every row needs a positive sum."
            raise InvalidModelError(msg)
        totals = matrix.sum(axis=1)
        lam = self.topic_word_prior + totals.sum() / self.n_topics * topics / sums
        gamma = np.repeat(
            self.doc_topic_prior + totals[:, np.newaxis] / self.n_topics, self.n_topics, axis=1
        )
        return gamma, lam

    def _fit(
        self, counts: ArrayLike, *, stacklevel: int, initial_topics: ArrayLike | None = None
    ) -> TopicFit:
        matrix = _check_counts(counts, n_topics=self.n_topics)
        seed_sequence = np.random.SeedSequence(self.seed)
        warm = None if initial_topics is None else self._warm_start(matrix, initial_topics)
        n_runs = 1 if warm is not None else self.n_restarts
        log.debug(
            "Fitting %r to %d documents x %d bins (%.6g counts)",
            self,
            matrix.shape[0],
            matrix.shape[1],
            matrix.sum(),
        )

        best: _RestartResult | None = None
        for restart, child in enumerate(seed_sequence.spawn(n_runs)):
            if warm is not None:
                gamma, lam = warm
            else:
                rng = np.random.default_rng(child)
                gamma, lam = _initial_parameters(
                    matrix, self.n_topics, self.doc_topic_prior, self.topic_word_prior, rng
                )
            result = _run_restart(
                matrix,
                gamma,
                lam,
                self.doc_topic_prior,
                self.topic_word_prior,
                max_iter=self.max_iter,
                tol=self.tol,
            )
            log.info(
                "Topic model restart %d/%d: ELBO %.10g after %d iterations (converged: %s)",
                restart + 1,
                n_runs,
                result.elbo,
                result.n_iter,
                result.converged,
            )
            if not math.isfinite(result.elbo):
                # NOTE: no test reaches this branch. It needs priors so small that
                # exp(digamma(eta)) underflows to zero in a bin with counts.
                log.warning("Topic model restart %d has a non-finite ELBO; skipping it.", restart)
                continue
            if best is None or result.elbo > best.elbo:
                best = result

        if best is None:
            msg = (
                f"Every one of the {n_runs} topic-model restarts ended with a "
                "non-finite ELBO; check the counts and use priors of order 1."
            )
            raise TammError(msg)
        if not best.converged:
            msg = (
                f"The best of {n_runs} topic-model restarts did not converge: the "
                f"relative ELBO gain per iteration stayed above tol={self.tol} for "
                f"max_iter={self.max_iter} iterations. Increase max_iter or tol."
            )
            warnings.warn(msg, ConvergenceWarning, stacklevel=stacklevel)

        return TopicFit(
            topics=best.lam / best.lam.sum(axis=1, keepdims=True),
            document_weights=best.gamma / best.gamma.sum(axis=1, keepdims=True),
            elbo=best.elbo,
            elbo_trace=best.elbo_trace,
            converged=best.converged,
            n_iter=best.n_iter,
            doc_topic_prior=self.doc_topic_prior,
            topic_word_prior=self.topic_word_prior,
            seed=int(seed_sequence.entropy),  # type: ignore[arg-type]
        )


def learn_topics(
    simulations: SimulationSet,
    region: Region,
    n_topics: int,
    *,
    seed: int | None = 0,
    **model_options: Any,
) -> TopicFit:
    """Learn topics from the histograms of a process's simulations in a binned region.

    Args:
        simulations: The biased simulations of one process; one document each.
        region: Binned fiducial region; each simulation is histogrammed in it.
        n_topics: Number of topics ``K``.
        seed: Seed of the topic model's initialisations (see :class:`TopicModel`).
        **model_options: Further keyword options of :class:`TopicModel`, such as
            ``doc_topic_prior``, ``max_iter``, ``tol`` or ``n_restarts``.

    Returns:
        The topic fit; its documents are the simulations in the order of ``simulations``.

    Raises:
        InvalidModelError: If a model option is invalid.
        InvalidSimulationError: If the set has fewer simulations than topics, or a simulation
            has no events inside the region.
        InvalidRegionError: If the region has no binning.

    Warns:
        ConvergenceWarning: If the best restart did not converge.
    """
    model = TopicModel(n_topics, seed=seed, **model_options)
    simulations.require_at_least(n_topics, purpose=f"learning {n_topics} topics")

    counts = simulations.histograms(region)
    empty = np.flatnonzero(counts.sum(axis=1) == 0)
    if empty.size:
        first = int(empty[0])
        msg = (
            f"Simulation {simulations[first].name!r} (index {first}) of {simulations.process!r} "
            f"has no events inside the region (simulations without events there: {empty.size}); it cannot "
            "inform the topics. Remove it or widen the region."
        )
        raise InvalidSimulationError(msg)

    log.info(
        "Learning %d topics from %d simulations of %r in %d bins",
        n_topics,
        len(simulations),
        simulations.process,
        region.n_bins,
    )
    return model._fit(counts, stacklevel=3)


def _check_int(value: Any, *, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"{name} must be an integer; received {value!r} of type {type(value).__name__}."
        raise InvalidModelError(msg)
    number = int(value)
    if not minimum <= number <= _MAX_INT32:
        msg = f"{name} must be between {minimum} and {_MAX_INT32}; received {number}."
        raise InvalidModelError(msg)
    return number


def _check_tol(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        msg = f"tol must be a real number >= 0; received {value!r}."
        raise InvalidModelError(msg)
    if not math.isfinite(value):
        msg = f"tol must be finite; received {value!r}."
        raise InvalidModelError(msg)
    return float(value)


def _check_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        msg = f"seed must be an integer >= 0 or None; received {value!r}."
        raise InvalidModelError(msg)
    return int(value)


def _check_prior(value: Any, *, name: str) -> float:
    if value is None:
        return _DEFAULT_PRIOR
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a positive number or None; received {value!r}."
        raise InvalidModelError(msg)
    if not (math.isfinite(value) and float(value) > 0):
        msg = f"{name} must be finite and > 0; received {value!r}. Use None for the default 1."
        raise InvalidModelError(msg)
    return float(value)


def _check_counts(counts: ArrayLike, *, n_topics: int) -> NDArray[np.float64]:
    """Return ``counts`` as a float64 ``(D, V)`` array, or raise InvalidModelError."""
    try:
        matrix = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"counts must be a numeric array of shape (n_documents, n_bins); conversion failed: {err}"
        raise InvalidModelError(msg) from err
    if matrix.ndim != 2:
        msg = (
            f"counts must be a 2-D array of shape (n_documents, n_bins); received an array of "
            f"shape {matrix.shape}. Stack one histogram per row."
        )
        raise InvalidModelError(msg)
    if matrix.shape[1] == 0:
        msg = f"counts has no bins (shape {matrix.shape}); give at least one bin per document."
        raise InvalidModelError(msg)

    not_finite = ~np.isfinite(matrix)
    if np.any(not_finite):
        d, v = (int(i) for i in np.argwhere(not_finite)[0])
        msg = (
            f"counts[{d}, {v}] is {matrix[d, v]} ({int(not_finite.sum())} non-finite entries in "
            "total); counts must be finite and >= 0."
        )
        raise InvalidModelError(msg)
    if np.any(matrix < 0):
        d, v = (int(i) for i in np.argwhere(matrix < 0)[0])
        msg = (
            f"counts[{d}, {v}] is {matrix[d, v]}, a negative count ({int((matrix < 0).sum())} "
            "negative entries in total); counts must be finite and >= 0."
        )
        raise InvalidModelError(msg)

    empty = np.flatnonzero(matrix.sum(axis=1) == 0)
    if empty.size:
        msg = (
            f"Document {int(empty[0])} (row {int(empty[0])} of counts) has no counts "
            f"({empty.size} empty documents: {empty[:5].tolist()}); every document needs at "
            "least one non-zero bin. Remove the empty rows."
        )
        raise InvalidModelError(msg)
    if matrix.shape[0] < n_topics:
        msg = (
            f"counts has {matrix.shape[0]} documents, fewer than the {n_topics} topics "
            "requested; give at least as many documents as topics or ask for fewer topics."
        )
        raise InvalidModelError(msg)
    return matrix


def _spread_documents(
    documents: NDArray[np.float64], n_topics: int, rng: np.random.Generator
) -> NDArray[np.intp]:
    """Choose ``n_topics`` distinct rows by k-means++ seeding in the Hellinger distance.

    Args:
        documents: Normalised histograms, shape ``(D, V)``.

    Returns:
        Row indices, shape ``(n_topics,)``.
    """
    n_documents = documents.shape[0]
    roots = np.sqrt(documents)
    chosen = [int(rng.integers(n_documents))]
    squared_distance = 0.5 * np.sum((roots - roots[chosen[0]]) ** 2, axis=1)
    for _ in range(1, n_topics):
        total = squared_distance.sum()
        if total > 0:
            # Chosen rows have distance exactly 0, so they cannot be drawn again.
            index = int(rng.choice(n_documents, p=squared_distance / total))
        else:
            # Every remaining document equals a chosen one, so any unchosen row will do.
            index = int(rng.choice(np.setdiff1d(np.arange(n_documents), chosen)))
        chosen.append(index)
        distance_to_new = 0.5 * np.sum((roots - roots[index]) ** 2, axis=1)
        squared_distance = np.minimum(squared_distance, distance_to_new)
    return np.array(chosen, dtype=np.intp)


def _initial_parameters(
    counts: NDArray[np.float64],
    n_topics: int,
    alpha: float,
    eta: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return starting ``gamma`` of shape ``(D, K)`` and ``lambda`` of shape ``(K, V)``."""
    totals = counts.sum(axis=1)
    n_bins = counts.shape[1]
    documents = counts / totals[:, np.newaxis]

    chosen = _spread_documents(documents, n_topics, rng)
    noise = rng.uniform(1 - _INIT_NOISE, 1 + _INIT_NOISE, size=(n_topics, n_bins))
    shapes = documents[chosen] * noise + _INIT_NOISE / n_bins
    shapes /= shapes.sum(axis=1, keepdims=True)
    log.debug("Initial topics from documents %s", chosen.tolist())

    lam = eta + totals.sum() / n_topics * shapes
    gamma = np.repeat(alpha + totals[:, np.newaxis] / n_topics, n_topics, axis=1)
    return gamma, lam


class _RestartResult(NamedTuple):
    gamma: NDArray[np.float64]
    lam: NDArray[np.float64]
    elbo: float
    elbo_trace: NDArray[np.float64]
    n_iter: int
    converged: bool


def _run_restart(
    counts: NDArray[np.float64],
    gamma: NDArray[np.float64],
    lam: NDArray[np.float64],
    alpha: float,
    eta: float,
    *,
    max_iter: int,
    tol: float,
) -> _RestartResult:
    import tensorflow as tf

    loop = _compiled_variational_loop()
    outputs = loop(
        tf.constant(counts, tf.float64),
        tf.constant(gamma, tf.float64),
        tf.constant(lam, tf.float64),
        tf.constant(alpha, tf.float64),
        tf.constant(eta, tf.float64),
        tf.constant(max_iter, tf.int32),
        tf.constant(_CHECK_EVERY, tf.int32),
        tf.constant(tol, tf.float64),
    )
    gamma_out, lam_out, elbo, trace, n_iter, converged = (value.numpy() for value in outputs)
    return _RestartResult(
        gamma=gamma_out,
        lam=lam_out,
        elbo=float(elbo),
        elbo_trace=trace,
        n_iter=int(n_iter),
        converged=bool(converged),
    )


def _elbo(
    counts: NDArray[np.float64],
    gamma: NDArray[np.float64],
    lam: NDArray[np.float64],
    alpha: float,
    eta: float,
) -> float:
    """Return the ELBO at variational parameters ``gamma`` ``(D, K)`` and ``lambda`` ``(K, V)``.

    The categorical factors are at their optimum for the given parameters.
    """
    import tensorflow as tf

    functions = _variational_functions()
    value = functions.compiled_elbo(
        tf.constant(counts, tf.float64),
        tf.constant(gamma, tf.float64),
        tf.constant(lam, tf.float64),
        tf.constant(alpha, tf.float64),
        tf.constant(eta, tf.float64),
    )
    return float(value.numpy())


class _VariationalFunctions(NamedTuple):
    elbo: Callable[..., Any]
    update: Callable[..., Any]
    compiled_elbo: Callable[..., Any]


@functools.cache
def _variational_functions() -> _VariationalFunctions:
    """Build the TensorFlow ELBO and update functions (imports TensorFlow on the first call)."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    dirichlet = tfp.distributions.Dirichlet

    def scaled_exp_expectations(gamma: Any, lam: Any) -> tuple[Any, Any, Any, Any]:
        """Return exp(E[log theta]) and exp(E[log W]) scaled to a maximum of 1 over topics.

        Returns ``(theta_factor (D, K), topic_factor (K, V), theta_shift (D, 1),
        topic_shift (1, V))`` with ``exp(E[log theta]) = theta_factor * exp(theta_shift)`` and
        ``exp(E[log W]) = topic_factor * exp(topic_shift)``.
        """
        log_theta = tf.math.digamma(gamma) - tf.math.digamma(
            tf.reduce_sum(gamma, axis=1, keepdims=True)
        )
        log_topic = tf.math.digamma(lam) - tf.math.digamma(
            tf.reduce_sum(lam, axis=1, keepdims=True)
        )
        theta_shift = tf.reduce_max(log_theta, axis=1, keepdims=True)
        topic_shift = tf.reduce_max(log_topic, axis=0, keepdims=True)
        return (
            tf.exp(log_theta - theta_shift),
            tf.exp(log_topic - topic_shift),
            theta_shift,
            topic_shift,
        )

    def elbo(counts: Any, gamma: Any, lam: Any, alpha: Any, eta: Any) -> Any:
        theta_factor, topic_factor, theta_shift, topic_shift = scaled_exp_expectations(gamma, lam)
        # log s_dv = theta_shift_d + topic_shift_v + log(scaled normaliser). xlogy returns 0 for
        # empty bins, even where the scaled normaliser underflows.
        scaled_normaliser = tf.linalg.matmul(theta_factor, topic_factor)
        data_term = tf.reduce_sum(counts * (theta_shift + topic_shift)) + tf.reduce_sum(
            tf.math.xlogy(counts, scaled_normaliser)
        )
        kl_theta = dirichlet(gamma).kl_divergence(dirichlet(alpha * tf.ones_like(gamma)))
        kl_topics = dirichlet(lam).kl_divergence(dirichlet(eta * tf.ones_like(lam)))
        return data_term - tf.reduce_sum(kl_theta) - tf.reduce_sum(kl_topics)

    def update(counts: Any, gamma: Any, lam: Any, alpha: Any, eta: Any) -> tuple[Any, Any]:
        theta_factor, topic_factor, _, _ = scaled_exp_expectations(gamma, lam)
        # NB: the shifts cancel. exp(theta_shift_d + topic_shift_v) divides out of
        # n_dv / s_dv, and multiplying back by exp(E[log theta_dk]) and exp(E[log W_kv])
        # restores exactly that factor, so the updates need only the scaled factors.
        ratio = tf.math.divide_no_nan(counts, tf.linalg.matmul(theta_factor, topic_factor))
        new_gamma = alpha + theta_factor * tf.linalg.matmul(ratio, topic_factor, transpose_b=True)
        new_lam = eta + topic_factor * tf.linalg.matmul(theta_factor, ratio, transpose_a=True)
        return new_gamma, new_lam

    scalar = tf.TensorSpec([], tf.float64)
    matrix = tf.TensorSpec([None, None], tf.float64)
    compiled_elbo = tf.function(elbo, input_signature=[matrix, matrix, matrix, scalar, scalar])
    return _VariationalFunctions(elbo=elbo, update=update, compiled_elbo=compiled_elbo)


@functools.cache
def _compiled_variational_loop() -> Callable[..., Any]:
    """Build the compiled iteration loop of one restart (imports TensorFlow on the first call).

    The input signature leaves every dimension open, so the loop is traced once per process.
    """
    import tensorflow as tf

    functions = _variational_functions()
    scalar = tf.TensorSpec([], tf.float64)
    matrix = tf.TensorSpec([None, None], tf.float64)
    count = tf.TensorSpec([], tf.int32)

    def run(
        counts: Any,
        gamma: Any,
        lam: Any,
        alpha: Any,
        eta: Any,
        max_iter: Any,
        check_every: Any,
        tol: Any,
    ) -> tuple[Any, ...]:
        elbo = functions.elbo
        update = functions.update
        trace = tf.TensorArray(tf.float64, size=0, dynamic_size=True)
        initial_elbo = elbo(counts, gamma, lam, alpha, eta)
        trace = trace.write(0, initial_elbo)

        def not_done(n_iter: Any, _gamma: Any, _lam: Any, converged: Any, *_: Any) -> Any:
            return (n_iter < max_iter) & tf.logical_not(converged)

        def iterate_and_check(
            n_iter: Any, gamma: Any, lam: Any, _converged: Any, previous: Any, trace: Any
        ) -> tuple[Any, ...]:
            n_steps = tf.minimum(check_every, max_iter - n_iter)

            def step_not_done(step: Any, *_: Any) -> Any:
                return step < n_steps

            def step(step: Any, gamma: Any, lam: Any) -> tuple[Any, Any, Any]:
                return (step + 1, *update(counts, gamma, lam, alpha, eta))

            _, gamma, lam = tf.while_loop(step_not_done, step, (tf.constant(0), gamma, lam))
            current = elbo(counts, gamma, lam, alpha, eta)
            # Relative gain per iteration. A decrease, which only rounding can cause, also stops.
            scale = tf.maximum(tf.abs(current), _TINY_FLOAT) * tf.cast(n_steps, tf.float64)
            gain = (current - previous) / scale
            trace = trace.write(trace.size(), current)
            return n_iter + n_steps, gamma, lam, gain < tol, current, trace

        n_iter, gamma, lam, converged, final_elbo, trace = tf.while_loop(
            not_done,
            iterate_and_check,
            (tf.constant(0), gamma, lam, tf.constant(False), initial_elbo, trace),
        )
        return gamma, lam, final_elbo, trace.stack(), n_iter, converged

    signature = [matrix, matrix, matrix, scalar, scalar, count, count, scalar]
    compiled: Callable[..., Any] = tf.function(run, input_signature=signature)
    return compiled
