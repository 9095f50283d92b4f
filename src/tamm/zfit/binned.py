"""Binned zfit PDF of the topic engine: kappa times a signal topic mixture plus background.

Pipeline position: the binned engine learns K topic histograms per process from the biased
simulations (:mod:`tamm.topics`). This module turns them into a zfit binned PDF whose shape is

.. math::

    \\kappa \\sum_{k=1}^{K_s} \\theta_{s,k} T_{s,k}
    + (1 - \\kappa) \\sum_{k=1}^{K_b} \\theta_{b,k} T_{b,k},

with each topic :math:`T` normalised to unit sum over the bins and the weights :math:`\\theta`
on the simplex. It is the zfit twin of the pyhf model of :func:`tamm.pyhf.tamm_spec` (same
stick-breaking parameters, same bounds), so zfit's binned losses, Minuit and hepstats apply.

Stick breaking maps :math:`K - 1` parameters :math:`v_j \\in [0, 1]` onto the simplex:
:math:`\\theta_1 = v_1`, :math:`\\theta_k = v_k \\prod_{j<k} (1 - v_j)`,
:math:`\\theta_K = \\prod_{j<K} (1 - v_j)`. The start values :math:`v_j = 1 / (K - j + 1)`
(counting j from 1) give equal weights.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import zfit
import zfit.z.numpy as znp
from numpy.typing import ArrayLike, NDArray

from tamm.exceptions import InvalidModelError, InvalidRegionError
from tamm.samples import Region
from tamm.topics import TopicFit

__all__ = ["TopicMixturePDF", "binned_data", "binned_space", "stick_breaking_weights"]

log = logging.getLogger(__name__)

# Number appended to the name of each TopicMixturePDF, so that the parameters it creates have
# unique names (zfit rejects two parameters of the same name in one loss).
_PDF_NUMBERS = itertools.count(1)


def __dir__() -> list[str]:
    return __all__


def binned_space(region: Region) -> zfit.Space:
    """Return the binned zfit space of a binned tamm region, one axis per observable.

    Raises:
        InvalidRegionError: If the region has no binning.
    """
    if not region.is_binned:
        msg = "binned_space needs a binned Region; create it with Region(..., bins=...)."
        raise InvalidRegionError(msg)
    binnings = [
        zfit.binned.VariableBinning(list(edges), name=name)
        for name, edges in zip(region.observables, region.edges or (), strict=True)
    ]
    return zfit.Space(list(region.observables), binning=binnings)


def binned_data(region: Region, counts: ArrayLike) -> zfit.data.BinnedData:
    """Wrap flat bin counts of a binned region as zfit binned data.

    Args:
        region: The binned region.
        counts: Counts per bin, shape ``(region.n_bins,)`` in the C order of
            :meth:`tamm.samples.Region.histogram`, or the histogram shape ``region.shape``.

    Raises:
        InvalidModelError: If the number of bins differs or a count is negative or not finite.
    """
    values = np.asarray(counts, dtype=np.float64)
    if values.size != region.n_bins:
        msg = (
            f"counts has {values.size} bins (shape {values.shape}), but the region has "
            f"{region.n_bins} bins of shape {region.shape}."
        )
        raise InvalidModelError(msg)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = int(np.flatnonzero(~np.isfinite(values.ravel()) | (values.ravel() < 0))[0])
        msg = f"counts has the invalid value {values.ravel()[bad]} in bin {bad}; counts must be finite and >= 0."
        raise InvalidModelError(msg)
    return zfit.data.BinnedData.from_tensor(binned_space(region), values.reshape(region.shape))


def stick_breaking_weights(fractions: Any) -> tf.Tensor:
    """Map stick-breaking fractions ``v`` ``(K - 1,)`` to simplex weights ``theta`` ``(K,)``.

    Works on numbers and tensors (TensorFlow ops); ``K = 1`` takes an empty ``v``.

    Examples:
        >>> stick_breaking_weights([0.5, 0.5]).numpy().tolist()
        [0.5, 0.25, 0.25]
    """
    v = znp.asarray(fractions, dtype=znp.float64)
    # The remaining stick before break k is prod_{j<k} (1 - v_j). An exclusive cumulative
    # product gives all of them at once, and the last weight is the full product.
    remaining = tf.math.cumprod(1.0 - v, exclusive=True)
    last = znp.reshape(znp.prod(1.0 - v), (1,))
    return znp.concatenate([v * remaining, last], axis=0)


def _as_topics(values: ArrayLike | TopicFit, n_bins: int, argument: str) -> NDArray[np.float64]:
    """Return topics ``(K, V)`` normalised to unit sum, or raise naming ``argument``."""
    if isinstance(values, TopicFit):
        values = values.topics
    try:
        topics = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{argument} must be an array of shape (K, {n_bins}); conversion failed: {err}"
        raise InvalidModelError(msg) from err
    if topics.ndim == 1:
        topics = topics[None, :]
    if topics.ndim != 2 or topics.shape[0] == 0 or topics.shape[1] != n_bins:
        msg = (
            f"{argument} must have shape (K, {n_bins}) with one column per bin of the region; "
            f"received shape {np.shape(values)}."
        )
        raise InvalidModelError(msg)
    bad = np.argwhere(~np.isfinite(topics) | (topics < 0))
    if bad.size:
        topic, bin_index = (int(i) for i in bad[0])
        msg = (
            f"{argument} has the invalid value {topics[topic, bin_index]} in topic {topic}, "
            f"bin {bin_index}; topic contents must be finite and >= 0."
        )
        raise InvalidModelError(msg)
    sums = topics.sum(axis=1)
    if np.any(sums <= 0):
        msg = f"{argument} topic {int(np.flatnonzero(sums <= 0)[0])} sums to zero; every topic needs content."
        raise InvalidModelError(msg)
    return np.asarray(topics / sums[:, None], dtype=np.float64)


def _fraction_parameters(
    given: Sequence[zfit.Parameter] | None, n_topics: int, prefix: str
) -> list[zfit.Parameter]:
    if given is not None:
        fractions = list(given)
        if len(fractions) != n_topics - 1:
            msg = (
                f"{len(fractions)} stick-breaking parameters were given for {prefix}, but "
                f"{n_topics} topics need {n_topics - 1}."
            )
            raise InvalidModelError(msg)
        return fractions
    return [
        zfit.Parameter(f"{prefix}_{j}", 1.0 / (n_topics - j + 1), 0.0, 1.0)
        for j in range(1, n_topics)
    ]


class TopicMixturePDF(zfit.pdf.BaseBinnedPDF):  # type: ignore[misc]
    """Binned PDF of a signal fraction kappa with topic mixtures as the process shapes.

    The relative count of bin ``i`` is
    ``kappa * sum_k theta_s[k] T_s[k, i] + (1 - kappa) * sum_k theta_b[k] T_b[k, i]``, with the
    weights ``theta`` from stick-breaking parameters in [0, 1] (see the module docstring). The
    parameters are named ``kappa``, ``signal_topics_<j>`` and ``background_topics_<j>`` inside
    the PDF; the ``zfit.Parameter`` objects it creates carry a unique prefix.

    Args:
        region: A binned :class:`tamm.samples.Region`; the PDF's axes are named after its
            observables.
        signal_topics: Signal topics, shape ``(K_s, V)`` with ``V = region.n_bins`` in the C
            order of :meth:`~tamm.samples.Region.histogram`, or a :class:`~tamm.topics.TopicFit`.
            Any normalisation; each is scaled to unit sum. A 1-D array is one fixed template.
        background_topics: Background topics, shape ``(K_b, V)``, or a ``TopicFit``.
        kappa: The signal fraction (the POI); created with value 0.1 and limits [0, 1] when not
            given.
        signal_fractions: The :math:`K_s - 1` stick-breaking parameters of the signal; created
            with limits [0, 1] and start values that give equal weights.
        background_fractions: Likewise for the background.
        extended: A yield (``zfit.Parameter`` or number), as for every zfit PDF; not extended
            when None.
        norm: Normalisation range; the binned space by default.
        name: Name of the PDF, also the start of the names of the parameters it creates.
        label: Human-readable label.

    Raises:
        InvalidRegionError: If the region has no binning.
        InvalidModelError: If the topics have the wrong number of bins or invalid contents, or
            the number of given fractions does not match.

    Examples:
        >>> region = Region(["x"], [(0.0, 3.0)], bins=3)
        >>> pdf = TopicMixturePDF(region, [[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 1, 1]])
        >>> sorted(pdf.params)
        ['background_topics_1', 'kappa', 'signal_topics_1']
        >>> [round(v, 4) for v in pdf.rel_counts().numpy().tolist()]
        [0.2, 0.2, 0.6]
    """

    def __init__(
        self,
        region: Region,
        signal_topics: ArrayLike | TopicFit,
        background_topics: ArrayLike | TopicFit,
        *,
        kappa: zfit.Parameter | None = None,
        signal_fractions: Sequence[zfit.Parameter] | None = None,
        background_fractions: Sequence[zfit.Parameter] | None = None,
        extended: Any = None,
        norm: Any = None,
        name: str = "TopicMixturePDF",
        label: str | None = None,
    ) -> None:
        space = binned_space(region)
        signal = _as_topics(signal_topics, region.n_bins, "signal_topics")
        background = _as_topics(background_topics, region.n_bins, "background_topics")

        prefix = f"{name}{next(_PDF_NUMBERS)}"
        if kappa is None:
            kappa = zfit.Parameter(f"{prefix}_kappa", 0.1, 0.0, 1.0)
        signal_free = _fraction_parameters(
            signal_fractions, signal.shape[0], f"{prefix}_signal_topics"
        )
        background_free = _fraction_parameters(
            background_fractions, background.shape[0], f"{prefix}_background_topics"
        )
        params = {"kappa": kappa}
        params.update({f"signal_topics_{j}": p for j, p in enumerate(signal_free, start=1)})
        params.update({f"background_topics_{j}": p for j, p in enumerate(background_free, start=1)})
        super().__init__(
            obs=space, extended=extended, norm=norm, params=params, name=name, label=label
        )

        self._region = region
        self._signal_topics = tf.constant(signal, dtype=tf.float64)
        self._background_topics = tf.constant(background, dtype=tf.float64)
        self._n_signal_topics = int(signal.shape[0])
        self._n_background_topics = int(background.shape[0])
        log.debug(
            "TopicMixturePDF %s: %d signal and %d background topics over %d bins",
            prefix,
            signal.shape[0],
            background.shape[0],
            region.n_bins,
        )

    @property
    def kappa(self) -> zfit.Parameter:
        """The signal fraction parameter (the POI)."""
        return self.params["kappa"]

    @property
    def signal_shape_parameters(self) -> list[zfit.Parameter]:
        """The signal stick-breaking parameters: they act only through the signal term, so they
        have no effect at kappa = 0 (:mod:`tamm.zfit.hepstats` fixes them there)."""
        return [self.params[f"signal_topics_{j}"] for j in range(1, self._n_signal_topics)]

    @property
    def region(self) -> Region:
        """The binned region."""
        return self._region

    @property
    def signal_topics(self) -> NDArray[np.float64]:
        """Signal topics normalised to unit sum, shape ``(K_s, V)``."""
        return np.asarray(self._signal_topics)

    @property
    def background_topics(self) -> NDArray[np.float64]:
        """Background topics normalised to unit sum, shape ``(K_b, V)``."""
        return np.asarray(self._background_topics)

    def topic_weights(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the current weights ``theta_s`` ``(K_s,)`` and ``theta_b`` ``(K_b,)``."""
        values = {key: p.value() for key, p in self.params.items()}
        signal, background = self._weights(values)
        return np.asarray(signal), np.asarray(background)

    def _weights(self, params: Mapping[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
        signal = [params[f"signal_topics_{j}"] for j in range(1, self._n_signal_topics)]
        background = [params[f"background_topics_{j}"] for j in range(1, self._n_background_topics)]
        return _weights_from_list(signal), _weights_from_list(background)

    @zfit.supports(norm="space")  # type: ignore[untyped-decorator]
    def _rel_counts(self, x: Any, norm: Any, params: Mapping[str, Any]) -> tf.Tensor:
        del x, norm
        signal_weights, background_weights = self._weights(params)
        signal = tf.linalg.matvec(self._signal_topics, signal_weights, transpose_a=True)
        background = tf.linalg.matvec(self._background_topics, background_weights, transpose_a=True)
        kappa = params["kappa"]
        mixture = kappa * signal + (1.0 - kappa) * background
        return znp.reshape(mixture, self._region.shape)


def _weights_from_list(fractions: Sequence[Any]) -> tf.Tensor:
    if not fractions:
        return znp.ones((1,), dtype=znp.float64)
    return stick_breaking_weights(znp.stack([znp.asarray(v, dtype=znp.float64) for v in fractions]))
