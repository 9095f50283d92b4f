"""Time the topic model on 500 documents x 100 bins with 20 topics, and compare priors.

Run from the repository root:

    python benchmarks/bench_topics.py [--skip-priors]

Part 1 times ``TopicModel(20).fit`` with the default options on 500 documents x 100 bins,
each a multinomial draw of 4e5 counts from a random mixture of 20 smooth shapes. The first
fit also imports TensorFlow Probability and traces the TensorFlow loop. A second fit on the
same data shows the cost without either. The TensorFlow import is timed separately.

Part 2 fits 500 documents generated from 20 well separated Gaussian bumps with priors of 1 and
of 1 / K, and prints how well each reconstructs the true document shapes. It backs the choice
of the default priors in :class:`tamm.topics.TopicModel`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

N_DOCUMENTS = 500
N_BINS = 100
N_TOPICS = 20
COUNTS_PER_DOCUMENT = 400_000


def smooth_shapes(rng: np.random.Generator, n_shapes: int, n_bins: int) -> np.ndarray:
    """Return random smooth shapes, each a sum of three Gaussian bumps; shape (n_shapes, n_bins)."""
    x = np.linspace(0.0, 1.0, n_bins)
    shapes = np.full((n_shapes, n_bins), 1e-3)
    for index in range(n_shapes):
        for _ in range(3):
            mean = rng.uniform(-0.1, 1.1)
            width = rng.uniform(0.05, 0.3)
            shapes[index] += rng.uniform(0.2, 1.0) * np.exp(-0.5 * ((x - mean) / width) ** 2)
    return shapes / shapes.sum(axis=1, keepdims=True)


def separated_shapes(rng: np.random.Generator, n_shapes: int, n_bins: int) -> np.ndarray:
    """Return Gaussian bumps spread evenly over the bins, shape (n_shapes, n_bins)."""
    x = (np.arange(n_bins) + 0.5) / n_bins
    means = (np.arange(n_shapes) + 0.5 + rng.uniform(-0.1, 0.1, n_shapes)) / n_shapes
    widths = 0.5 / n_shapes * rng.uniform(0.8, 1.2, n_shapes)
    shapes = np.exp(-0.5 * ((x[np.newaxis] - means[:, np.newaxis]) / widths[:, np.newaxis]) ** 2)
    return shapes / shapes.sum(axis=1, keepdims=True)


def sample_documents(
    rng: np.random.Generator, shapes: np.ndarray, concentration: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw counts (D, V) from random mixtures of ``shapes``; also return the true shapes (D, V)."""
    mixing = rng.dirichlet(np.full(len(shapes), concentration), size=N_DOCUMENTS)
    truth = mixing @ shapes
    truth /= truth.sum(axis=1, keepdims=True)
    counts = np.stack([rng.multinomial(COUNTS_PER_DOCUMENT, p) for p in truth])
    return counts.astype(np.float64), truth


def time_default_fit() -> None:
    # Imported here, not at the top, to time the import of TensorFlow.
    start = time.perf_counter()
    import tensorflow as tf

    from tamm.metrics import hellinger
    from tamm.topics import TopicModel

    print(f"import tensorflow + tamm.topics: {time.perf_counter() - start:.2f} s")
    print(
        f"TensorFlow {tf.__version__}, intra-op threads {tf.config.threading.get_intra_op_parallelism_threads()} (0 = all)"
    )

    rng = np.random.default_rng(20260402)
    counts, truth = sample_documents(rng, smooth_shapes(rng, N_TOPICS, N_BINS), 0.5)
    model = TopicModel(N_TOPICS)
    print(
        f"problem: {N_DOCUMENTS} documents x {N_BINS} bins, {N_TOPICS} topics, "
        f"{COUNTS_PER_DOCUMENT:.0e} counts per document; {model!r}"
    )

    for label in ("first fit (includes tracing)", "second fit (traced)"):
        start = time.perf_counter()
        fit = model.fit(counts)
        elapsed = time.perf_counter() - start
        print(
            f"{label}: {elapsed:.2f} s; best restart: {fit.n_iter} iterations, "
            f"converged {fit.converged}, ELBO {fit.elbo:.10g}"
        )

    print(
        f"mean Hellinger distance, document to reconstruction: "
        f"{np.mean(hellinger(counts, fit.reconstruct())):.5f}; "
        f"true shape to reconstruction: {np.mean(hellinger(truth, fit.reconstruct())):.5f}; "
        f"document to true shape (sampling noise): {np.mean(hellinger(counts, truth)):.5f}"
    )


def compare_priors() -> None:
    from tamm.metrics import hellinger
    from tamm.topics import TopicModel

    rng = np.random.default_rng(3)
    shapes = separated_shapes(rng, N_TOPICS, N_BINS)
    counts, truth = sample_documents(rng, shapes, 0.3)
    print(f"prior comparison: {N_TOPICS} separated topics, {N_DOCUMENTS} documents")
    for prior in (1.0, 1.0 / N_TOPICS):
        start = time.perf_counter()
        fit = TopicModel(N_TOPICS, doc_topic_prior=prior, topic_word_prior=prior).fit(counts)
        distances = hellinger(shapes[:, np.newaxis], fit.topics[np.newaxis])
        rows, columns = linear_sum_assignment(distances)
        print(
            f"  priors {prior:.3g}: {time.perf_counter() - start:.1f} s, ELBO {fit.elbo:.10g}, "
            f"true shape to reconstruction {np.mean(hellinger(truth, fit.reconstruct())):.5f}, "
            f"topic to matched true topic: mean {distances[rows, columns].mean():.3f}, "
            f"max {distances[rows, columns].max():.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-priors", action="store_true", help="run only the timing part")
    arguments = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    time_default_fit()
    if not arguments.skip_priors:
        compare_priors()


if __name__ == "__main__":
    main()
