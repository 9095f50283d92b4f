"""Tests of tamm.metrics: the Hellinger distance between histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tamm.exceptions import InvalidModelError
from tamm.metrics import hellinger


def test_hellinger_known_values():
    assert hellinger([1.0, 0.0], [0.0, 1.0]) == 1.0
    assert hellinger([3.0, 3.0], [1.0, 1.0]) == 0.0
    # p = (1, 0), q = (1/2, 1/2): H^2 = 1/2 [(1 - sqrt(1/2))^2 + 1/2] = 1 - sqrt(1/2).
    assert hellinger([1.0, 0.0], [1.0, 1.0]) == pytest.approx(
        math.sqrt(1 - math.sqrt(0.5)), rel=1e-14
    )


def test_hellinger_returns_float_for_one_dimensional_inputs():
    assert isinstance(hellinger([1, 2, 3], [3, 2, 1]), float)


def test_hellinger_normalises_each_histogram():
    p = np.array([1.0, 4.0, 2.0, 0.5])
    q = np.array([2.0, 1.0, 1.0, 3.0])
    assert hellinger(1e6 * p, q) == pytest.approx(hellinger(p, q), rel=1e-13)
    assert hellinger(p, 1e-6 * q) == pytest.approx(hellinger(p, q), rel=1e-13)


def test_hellinger_matches_bhattacharyya_form():
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(20), size=5)
    q = rng.dirichlet(np.ones(20), size=5)
    expected = np.sqrt(1 - np.sum(np.sqrt(p * q), axis=1))
    np.testing.assert_allclose(hellinger(p, q), expected, rtol=1e-12)


def test_hellinger_keeps_precision_for_nearly_equal_histograms():
    p = np.array([0.5, 0.5])
    q = np.array([0.5 + 1e-10, 0.5 - 1e-10])
    # First-order expansion: H^2 = 1/8 sum (dp)^2 / p = 1/8 * 2 * 1e-20 / 0.5 = 5e-21.
    assert hellinger(p, q) == pytest.approx(math.sqrt(5e-21), rel=1e-5)


def test_hellinger_broadcasts_leading_axes():
    rng = np.random.default_rng(3)
    many = rng.uniform(0.1, 1.0, size=(4, 3, 6))
    reference = rng.uniform(0.1, 1.0, size=6)
    distances = hellinger(many, reference)
    assert distances.shape == (4, 3)
    assert distances[2, 1] == pytest.approx(hellinger(many[2, 1], reference), rel=1e-14)

    pairwise = hellinger(many[0][:, np.newaxis], many[1][np.newaxis])
    assert pairwise.shape == (3, 3)
    assert pairwise[0, 2] == pytest.approx(hellinger(many[0, 0], many[1, 2]), rel=1e-14)


def test_hellinger_keeps_zero_bins():
    assert hellinger([0.0, 1.0, 1.0], [0.0, 1.0, 1.0]) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, 5, elements=st.floats(0.0, 1e6)),
    hnp.arrays(np.float64, 5, elements=st.floats(0.0, 1e6)),
)
def test_hellinger_is_a_bounded_symmetric_distance(p, q):
    if p.sum() == 0 or q.sum() == 0:
        return
    distance = hellinger(p, q)
    assert 0.0 <= distance <= 1.0
    assert distance == hellinger(q, p)
    assert hellinger(p, p) == 0.0


@pytest.mark.parametrize(
    ("p", "q", "pattern"),
    [
        (
            [1.0, -2.0, 1.0],
            [1.0, 1.0, 1.0],
            r"Histogram p has the invalid entry -2\.0 at index \(1,\)",
        ),
        (
            [1.0, 1.0, 1.0],
            [1.0, np.nan, 1.0],
            r"Histogram q has the invalid entry nan at index \(1,\)",
        ),
        ([np.inf, 1.0], [1.0, 1.0], r"Histogram p has the invalid entry inf at index \(0,\)"),
        ([[1.0, 1.0], [0.0, 0.0]], [1.0, 1.0], r"Histogram p at leading index \(1,\) sums to zero"),
        ([1.0, 1.0], [0.0, 0.0], r"Histogram q sums to zero"),
        (
            [1.0, 1.0],
            [1.0, 1.0, 1.0],
            r"same number of bins; received p with shape \(2,\) and q with shape \(3,\)",
        ),
        (
            np.ones((2, 4)),
            np.ones((3, 4)),
            r"leading axes of p \(2,\) and q \(3,\) do not broadcast",
        ),
        (1.0, [1.0], r"at least one axis \(the bins\); received the scalar 1\.0"),
        (np.ones((3, 0)), np.ones((3, 0)), r"Histogram p has no bins \(shape \(3, 0\)\)"),
        (["a", "b"], [1.0, 1.0], r"Histogram p must be a numeric array"),
    ],
)
def test_hellinger_rejects_invalid_histograms(p, q, pattern):
    with pytest.raises(InvalidModelError, match=pattern):
        hellinger(p, q)


def test_hellinger_error_is_a_value_error():
    with pytest.raises(ValueError, match="invalid entry"):
        hellinger([-1.0, 1.0], [1.0, 1.0])
