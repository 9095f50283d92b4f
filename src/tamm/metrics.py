"""Distances between histograms, used to judge templates and topics.

The studies compare each estimated shape (a topic, a reconstructed simulation histogram, the
fitted signal template) with a reference histogram. Both are normalised to unit sum first, so
only the shapes are compared, never the numbers of events.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidModelError

__all__ = ["hellinger"]


def __dir__() -> list[str]:
    return __all__


def _as_histograms(values: ArrayLike, *, name: str) -> NDArray[np.float64]:
    """Convert ``values`` to float64 histograms along the last axis, or raise InvalidModelError."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"Histogram {name} must be a numeric array; conversion failed: {err}"
        raise InvalidModelError(msg) from err
    if array.ndim == 0:
        msg = (
            f"Histogram {name} must have at least one axis (the bins); received the scalar "
            f"{array.item()}."
        )
        raise InvalidModelError(msg)
    if array.shape[-1] == 0:
        msg = f"Histogram {name} has no bins (shape {array.shape}); give at least one bin."
        raise InvalidModelError(msg)

    invalid = np.isnan(array) | np.isinf(array) | (array < 0)
    if np.any(invalid):
        index = tuple(int(i) for i in np.argwhere(invalid)[0])
        msg = (
            f"Histogram {name} has the invalid entry {array[index]} at index {index}; "
            "bin contents must be finite and >= 0."
        )
        raise InvalidModelError(msg)

    totals = array.sum(axis=-1)
    if np.any(totals == 0):
        index = tuple(int(i) for i in np.argwhere(totals == 0)[0])
        where = f" at leading index {index}" if index else ""
        msg = (
            f"Histogram {name}{where} sums to zero, so it cannot be normalised; "
            "give at least one non-zero bin."
        )
        raise InvalidModelError(msg)
    normalised: NDArray[np.float64] = array / totals[..., np.newaxis]
    return normalised


def hellinger(p: ArrayLike, q: ArrayLike) -> NDArray[np.float64] | float:
    r"""Compute the Hellinger distance between histograms, after normalising each to unit sum.

    .. math::

        H(p, q) = \sqrt{\tfrac{1}{2} \sum_v \left(\sqrt{p_v} - \sqrt{q_v}\right)^2},

    which lies in ``[0, 1]``: 0 for equal shapes and 1 for histograms with disjoint support.

    Args:
        p: Histogram(s), shape ``(..., n_bins)``. The last axis contains the bins.
        q: Histogram(s), shape ``(..., n_bins)``. The leading axes broadcast against those of
            ``p``, so one reference can be compared with many histograms at once.

    Returns:
        The distances, shape ``broadcast(p.shape[:-1], q.shape[:-1])``; a float when both
        inputs are 1-D.

    Raises:
        InvalidModelError: If an input is not numeric, has no bins, contains a negative, NaN or
            infinite entry, or has a histogram that sums to zero. Also if the numbers of bins
            differ or the leading axes do not broadcast.

    Notes:
        The distance is computed from the squared differences of the square roots, not as
        :math:`\sqrt{1 - \sum_v \sqrt{p_v q_v}}`, which loses all precision for nearly equal
        histograms. Rounding can push the sum a few ulp above 2 for disjoint histograms, so the
        result is clipped to 1.

    Examples:
        >>> hellinger([1, 0], [0, 3])
        1.0
        >>> hellinger([1, 1], [2, 2])
        0.0
        >>> hellinger([[1, 0], [1, 1]], [2, 2]).round(6).tolist()  # shape (2,)
        [0.541196, 0.0]
    """
    p_normalised = _as_histograms(p, name="p")
    q_normalised = _as_histograms(q, name="q")
    if p_normalised.shape[-1] != q_normalised.shape[-1]:
        msg = (
            f"Histograms p and q must have the same number of bins; received p with shape "
            f"{p_normalised.shape} and q with shape {q_normalised.shape}."
        )
        raise InvalidModelError(msg)
    try:
        np.broadcast_shapes(p_normalised.shape, q_normalised.shape)
    except ValueError as err:
        msg = (
            f"The leading axes of p {p_normalised.shape[:-1]} and q {q_normalised.shape[:-1]} "
            "do not broadcast; give matching shapes or a single reference histogram."
        )
        raise InvalidModelError(msg) from err

    squared = np.sum((np.sqrt(p_normalised) - np.sqrt(q_normalised)) ** 2, axis=-1)
    distance: NDArray[np.float64] = np.minimum(np.sqrt(0.5 * squared), 1.0)
    if distance.ndim == 0:
        return float(distance)
    return distance
